//! Hostile and odd input: garbage datagrams, glare, oversized offers; and fuzz-seed capture from a
//! real call.

use super::*;

#[test]
fn garbage_datagrams_are_dropped_and_counted_without_disturbing_calls() {
    let mut sim = Sim::new(12);
    sim.join("a", "r", pub_av());
    sim.join("b", "r", pub_av());
    sim.run_for(secs(2));
    let stranger: SocketAddr = "10.9.9.9:999".parse().expect("addr");
    let a_addr = sim.peer("a").peer.local_addr();
    let mut x: u32 = 12345;
    for i in 0..2000usize {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let len = (x as usize >> 8) % 1400;
        let mut data: Vec<u8> = (0..len)
            .map(|j| (x.rotate_left(j as u32) >> 3) as u8)
            .collect();
        if let Some(b) = data.first_mut() {
            // Cover every class: STUN-ish, DTLS-ish, RTP-ish and junk.
            *b = [0u8, 1, 22, 128, 0x90, 200, 7][i % 7];
        }
        // From a stranger, and spoofed from a real participant's address.
        sim.inject(stranger, &data);
        sim.inject(a_addr, &data);
    }
    let c = sim.core.counters().clone();
    assert!(c.dropped(DropReason::UnknownSource) > 0);
    assert!(c.dropped(DropReason::Malformed) > 0);
    assert!(c.dropped(DropReason::UnknownUfrag) + c.dropped(DropReason::Malformed) > 0);
    sim.run_for(secs(3));
    assert_eq!(sim.core.participant_count(), 2);
    let before = sim
        .peer("a")
        .peer
        .received
        .packets_from("b", MediaKind::Video);
    sim.run_for(secs(1));
    assert!(
        sim.peer("a")
            .peer
            .received
            .packets_from("b", MediaKind::Video)
            > before + 50
    );
}

#[test]
fn glare_client_offer_while_server_offer_pending_is_resolved() {
    let mut sim = Sim::new(13);
    sim.join("a", "r", pub_av());
    sim.run_for(secs(1));
    // b joins; its first server offer (a's tracks) is "lost in glare": b sends its own offer.
    sim.add_peer("b");
    sim.peer_mut("b").ignore_offers = 1;
    sim.join("b", "r", pub_av());
    assert!(
        sim.events
            .iter()
            .any(|e| matches!(e, Event::Offer { participant, .. } if participant == "b"))
    );
    // The client renegotiates on its own (e.g. it added a track) while that offer is pending.
    let sdp = {
        let p = &mut sim.peer_mut("b").peer;
        p.create_offer(true, false)
    };
    let resp = sim.command(Request::Offer {
        participant: "b".into(),
        sdp,
    });
    let Response::Answer { sdp } = resp else {
        panic!("client offer not answered: {resp:?}");
    };
    sim.peer_mut("b")
        .peer
        .handle_answer(&sdp)
        .expect("answer applies");
    // The server re-offers a's tracks after answering; relay handles it.
    sim.run_for(secs(4));
    assert!(
        sim.peer("b")
            .peer
            .received
            .packets_from("a", MediaKind::Video)
            > 50
    );
}

/// Defect 1 (hardening): client SDP with more media sections than allowed is refused before it
/// is parsed, with a clear error.
#[test]
fn offers_with_too_many_media_sections_are_refused() {
    let mut sim = Sim::with_config(32, |c| c.max_media_per_offer = 1);
    let r = sim.try_join("a", "r", pub_av());
    match r {
        Response::Error { code, message } => {
            assert_eq!(code, ErrorCode::BadRequest);
            assert!(message.contains("media sections"), "{message}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    assert_eq!(sim.core.participant_count(), 0);
}

/// Not a check: with `SFU_DUMP_SEEDS=<dir>`, records what real str0m peers and the core exchange
/// in a three-party call with chat (datagrams by kind, SDP offers and answers, chat messages) as
/// seed corpora for the fuzz targets (`fuzz/corpus/`). Without the variable it only runs the call.
#[test]
fn capture_fuzz_seeds_from_a_real_call() {
    let mut sim = Sim::new(40);
    sim.capture = Some(Vec::new());
    for id in ["a", "b", "c"] {
        sim.join(id, "r", pub_av());
    }
    assert!(sim.run_until(secs(5), |s| {
        ["a", "b", "c"].iter().all(|i| s.peer(i).peer.chat_open())
    }));
    assert!(sim.peer_mut("a").peer.send_chat(None, "hello everyone"));
    assert!(sim.peer_mut("a").peer.send_chat(Some("b"), "just for b"));
    sim.run_for(secs(2));
    let datagrams = sim.capture.take().unwrap_or_default();
    assert!(datagrams.len() > 100);
    let Ok(dir) = std::env::var("SFU_DUMP_SEEDS") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let mut counts = std::collections::HashMap::new();
    for d in &datagrams {
        let class = match d.first() {
            Some(0..=3) => "stun",
            Some(20..=63) => "dtls",
            Some(128..=191) if d.get(1).is_some_and(|b| (192..=223).contains(b)) => "rtcp",
            Some(128..=191) => "rtp",
            _ => continue,
        };
        let n = counts.entry(class).or_insert(0usize);
        if *n < 12 {
            let path = dir.join("udp_demux").join(format!("{class}-{n}"));
            std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
            std::fs::write(path, d).expect("write");
            if class == "rtp" {
                let path = dir.join("rtp_munger").join(format!("rtp-{n}"));
                std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
                std::fs::write(path, d).expect("write");
            }
        }
        *n += 1;
    }
    let sdp_dir = dir.join("client_sdp");
    std::fs::create_dir_all(&sdp_dir).expect("mkdir");
    let offer = sim.fresh_offer();
    std::fs::write(sdp_dir.join("str0m-offer"), &offer).expect("write");
    for (i, e) in sim.events.iter().enumerate() {
        if let Event::Offer { sdp, .. } = e {
            std::fs::write(sdp_dir.join(format!("server-offer-{i}")), sdp).expect("write");
        }
    }
    let chat_dir = dir.join("chat_message");
    std::fs::create_dir_all(&chat_dir).expect("mkdir");
    for (i, m) in sim.peer("b").peer.received.chat.iter().enumerate() {
        std::fs::write(chat_dir.join(format!("delivered-{i}")), m).expect("write");
    }
    for (i, m) in [
        r#"{"type":"chat","to":null,"text":"hi"}"#,
        r#"{"type":"chat","to":"b","text":"psst"}"#,
        r#"{"type":"state","audio_muted":true,"video_muted":false}"#,
    ]
    .iter()
    .enumerate()
    {
        std::fs::write(chat_dir.join(format!("client-{i}")), m).expect("write");
    }
}
