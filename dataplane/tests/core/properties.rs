//! Property test of the core (hardening): random sequences of joins, leaves, crashes (a peer
//! that goes silent), chat and time steps never panic, never leave the core's tables
//! inconsistent (no track out without its track in), never deliver a whisper to a third party or
//! anyone's own media back to them, and keep every subscriber's sequence numbers continuous.

use super::*;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Join { who: u8, room: u8, publish: bool },
    Leave { who: u8 },
    Crash { who: u8 },
    Chat { from: u8, to: Option<u8> },
    Run { ms: u16 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..5, 0u8..2, any::<bool>()).prop_map(|(who, room, publish)| Op::Join { who, room, publish }),
        1 => (0u8..5).prop_map(|who| Op::Leave { who }),
        1 => (0u8..5).prop_map(|who| Op::Crash { who }),
        2 => (0u8..5, proptest::option::of(0u8..5)).prop_map(|(from, to)| Op::Chat { from, to }),
        3 => (50u16..1500).prop_map(|ms| Op::Run { ms }),
    ]
}

/// The simulation's current id for slot `who` (a slot rejoins under a fresh id).
fn id(who: u8, gens: &[u32]) -> String {
    format!("p{who}g{}", gens[who as usize])
}

fn check(sim: &Sim) -> Result<(), TestCaseError> {
    let v = sim.core.invariant_violations();
    prop_assert!(v.is_empty(), "core invariants: {v:?}");
    for p in &sim.peers {
        let rx = &p.peer.received;
        prop_assert_eq!(
            rx.packets_from(&p.id, MediaKind::Audio) + rx.packets_from(&p.id, MediaKind::Video),
            0,
            "{} received its own media",
            p.id
        );
        for t in rx.tracks.values() {
            prop_assert_eq!(t.lost, 0, "{} saw a sequence gap: {:?}", p.id, t);
        }
        for m in sim.chat_of(&p.id) {
            if let Some(to) = m["to"].as_str() {
                prop_assert!(
                    to == p.id || m["from"] == p.id.as_str(),
                    "{} received a whisper for {to}: {m}",
                    p.id
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(32),
        max_shrink_iters: 64,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_sessions_keep_the_core_consistent(seed in 0u64..1000, ops in proptest::collection::vec(op(), 1..14)) {
        let mut sim = Sim::with_config(seed, |c| c.ice_timeout = secs(3));
        let mut gens = [0u32; 5];
        let mut joined = [false; 5];
        for op in ops {
            match op {
                Op::Join { who, room, publish } => {
                    if joined[who as usize] {
                        continue;
                    }
                    let id = id(who, &gens);
                    let media = publish.then(Publish::default);
                    let r = sim.try_join(&id, &format!("r{room}"), media);
                    prop_assert!(matches!(r, Response::Joined { .. }), "{r:?}");
                    joined[who as usize] = true;
                }
                Op::Leave { who } => {
                    if joined[who as usize] {
                        let id = id(who, &gens);
                        // Ok, or unknown if it timed out (crashed) meanwhile.
                        let _ = sim.leave(&id);
                        sim.peers.retain(|p| p.id != id);
                        gens[who as usize] += 1;
                        joined[who as usize] = false;
                    }
                }
                Op::Crash { who } => {
                    if joined[who as usize] {
                        let id = id(who, &gens);
                        sim.peer_mut(&id).frozen = true;
                        // The core removes it after the ICE timeout; the slot rejoins fresh.
                        gens[who as usize] += 1;
                        joined[who as usize] = false;
                    }
                }
                Op::Chat { from, to } => {
                    let from_id = id(from, &gens);
                    if joined[from as usize] && sim.peer(&from_id).peer.chat_open() {
                        let to_id = to.map(|t| id(t, &gens));
                        sim.peer_mut(&from_id).peer.send_chat(to_id.as_deref(), "hi");
                    }
                }
                Op::Run { ms } => sim.run_for(Duration::from_millis(u64::from(ms))),
            }
            check(&sim)?;
        }
        sim.run_for(secs(4));
        check(&sim)?;
    }
}
