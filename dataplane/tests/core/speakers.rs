//! Active speakers: ranked from the audio-level header extension the publishers send, announced
//! to the room over the chat DataChannel only when the ranking changes.

use super::*;

/// The `active_speakers` lists `id` received, in order.
fn speaker_lists(sim: &Sim, id: &str) -> Vec<Vec<String>> {
    sim.channel_lists(id, "active_speakers", "speakers")
}

#[test]
fn the_loud_participant_is_announced_as_speaker_and_the_change_follows_the_voice() {
    let mut sim = Sim::new(51);
    for id in ["a", "b", "c"] {
        sim.join(id, "r", pub_av());
    }
    sim.join("other-room", "r2", pub_av());
    sim.peer_mut("a").peer.set_audio_level(Some(-20));
    sim.peer_mut("b").peer.set_audio_level(Some(-90));
    // c sends no level at all; other-room is loud in another room.
    sim.peer_mut("other-room").peer.set_audio_level(Some(-10));
    let ok = sim.run_until(secs(5), |s| {
        ["a", "b", "c"]
            .iter()
            .all(|id| speaker_lists(s, id).last() == Some(&vec!["a".to_string()]))
    });
    assert!(ok, "speakers seen by b: {:?}", sim.chat_of("b"));

    // a falls silent, b starts talking: once a's hold through pauses (1.5 s) has passed,
    // everyone hears about b alone.
    sim.peer_mut("a").peer.set_audio_level(Some(-127));
    sim.peer_mut("b").peer.set_audio_level(Some(-25));
    let t0 = sim.now;
    assert!(sim.run_until(secs(3), |s| {
        ["a", "b", "c"]
            .iter()
            .all(|id| speaker_lists(s, id).last() == Some(&vec!["b".to_string()]))
    }));
    let took = sim.now - t0;
    assert!(took <= Duration::from_millis(2000), "took {took:?}");
    sim.run_for(secs(3));

    for id in ["a", "b", "c"] {
        let lists = speaker_lists(&sim, id);
        // Only changes are sent, and not more often than the ranking interval allows.
        for w in lists.windows(2) {
            assert_ne!(
                w[0], w[1],
                "{id} got the same list twice in a row: {lists:?}"
            );
        }
        assert!(
            lists.len() <= 8,
            "{id} got {} lists: {lists:?}",
            lists.len()
        );
        assert!(
            lists.iter().flatten().all(|s| s != "other-room"),
            "another room's speaker leaked into {id}'s: {lists:?}"
        );
    }
    assert_eq!(
        speaker_lists(&sim, "other-room").last(),
        Some(&vec!["other-room".to_string()])
    );
    assert!(sim.core.invariant_violations().is_empty());
}
