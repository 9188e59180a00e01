//! The core is deterministic: the same seed and the same inputs give the same outputs. Two runs of
//! one call (joins, media with loss, chat, a leave, a timeout) log every core output and must be
//! identical line for line; another seed must change the log (the core's ICE credentials and
//! resume keys come from it), so the comparison can fail.

use super::*;

/// A three-party call with lossy media, chat, a whisper, a leave and a silent participant,
/// logging every core output.
fn call(seed: u64) -> Vec<String> {
    // Without send-side BWE: its estimates (and the probes and pacing that follow them) come
    // from the peers' transport-wide feedback, which their str0m times with its own randomness.
    let mut sim = Sim::with_bwe(seed, false);
    sim.log = Some(Vec::new());
    for id in ["a", "b", "c"] {
        sim.join(id, "r", pub_av());
    }
    sim.peer_mut("c").loss_down_permille = 50;
    assert!(sim.run_until(secs(5), |s| {
        ["a", "b", "c"].iter().all(|i| s.peer(i).peer.chat_open())
    }));
    assert!(sim.peer_mut("a").peer.send_chat(None, "hello all"));
    assert!(sim.peer_mut("b").peer.send_chat(Some("a"), "psst"));
    sim.run_for(secs(2));
    assert_eq!(sim.leave("b"), Response::Ok);
    sim.join("d", "r", pub_av());
    sim.run_for(secs(2));
    sim.peer_mut("d").frozen = true; // d crashes: the core times it out
    sim.run_for(secs(12));
    canonical(sim.log.take().expect("log enabled"))
}

/// The log with the lines of each millisecond sorted. The peers and the core's `Rtc`s are str0m
/// instances that draw SSRCs and mids themselves; the order of their tables decides the order of
/// packets sent in the same instant, and the peers' order shifts the core's sends by a few µs.
/// What happens, to whom and in which millisecond is what the core decides, and must not change.
///
/// RTCP to one destination within one millisecond counts once: str0m packs the reports due
/// together into one compound datagram or two depending on the order it queued them (its
/// stream tables, keyed by random SSRCs), which is not the core's decision.
fn canonical(log: Vec<String>) -> Vec<String> {
    let time = |l: &String| l.split(' ').next().unwrap_or("").to_string();
    let mut out = Vec::with_capacity(log.len());
    let mut start = 0;
    while start < log.len() {
        let t = time(&log[start]);
        let end = start + log[start..].iter().take_while(|l| time(l) == t).count();
        let mut ms = log[start..end].to_vec();
        ms.sort();
        ms.dedup_by(|a, b| a == b && a.ends_with(" rtcp"));
        out.extend(ms);
        start = end;
    }
    out
}

#[test]
fn the_same_seed_gives_an_identical_event_log() {
    let first = call(7);
    let second = call(7);
    // The call really happened: joins answered, media forwarded, chat relayed, d timed out.
    let has = |needle: &str| first.iter().any(|l| l.contains(needle));
    assert!(has("Joined"), "no join in the log");
    assert!(first.iter().filter(|l| l.contains(" rtp ")).count() > 1000);
    assert!(has("Timeout"), "d did not time out");
    if first != second {
        if let Ok(dir) = std::env::var("SFU_DETERMINISM_DUMP") {
            let _ = std::fs::write(format!("{dir}/first.log"), first.join("\n"));
            let _ = std::fs::write(format!("{dir}/second.log"), second.join("\n"));
        }
        let at = first
            .iter()
            .zip(&second)
            .position(|(a, b)| a != b)
            .unwrap_or(first.len().min(second.len()));
        let (a, b) = (first.get(at), second.get(at));
        // The first differing stretch of the two lines, to keep the message readable.
        let from = a
            .zip(b)
            .and_then(|(a, b)| a.bytes().zip(b.bytes()).position(|(x, y)| x != y))
            .unwrap_or(0)
            .saturating_sub(40);
        let cut = |l: Option<&String>| {
            l.map(|l| {
                l.get(from..)
                    .unwrap_or(l)
                    .chars()
                    .take(160)
                    .collect::<String>()
            })
        };
        panic!(
            "runs diverge at line {at} of {}/{}:\n  first:  {:?}\n  second: {:?}",
            first.len(),
            second.len(),
            cut(a),
            cut(b)
        );
    }
    let other = call(8);
    assert_ne!(
        first, other,
        "a different seed must change the core's credentials"
    );
}
