//! Viewers that cannot renegotiate (WHEP): the recvonly sections of their offer are filled with
//! the room's tracks (or one participant's), never with server offers; a slot whose publisher
//! leaves is refilled from the room, continuing its stream.

use super::*;

/// Packets and gaps per received m-line of `id`, by kind: (mid, packets, lost).
fn slots_of(sim: &Sim, id: &str, kind: MediaKind) -> Vec<(String, u64, u64)> {
    let mut v: Vec<_> = sim
        .peer(id)
        .peer
        .received
        .tracks
        .iter()
        .filter(|(_, t)| t.kind == Some(kind))
        .map(|(mid, t)| (mid.to_string(), t.packets, t.lost))
        .collect();
    v.sort();
    v
}

fn video_packets(sim: &Sim, id: &str) -> u64 {
    slots_of(sim, id, MediaKind::Video)
        .iter()
        .map(|(_, n, _)| n)
        .sum()
}

fn offers_to(sim: &Sim, id: &str) -> usize {
    sim.events
        .iter()
        .filter(|e| matches!(e, Event::Offer { participant, .. } if participant == id))
        .count()
}

#[test]
fn a_viewer_gets_the_room_in_its_slots_and_a_leaving_publisher_is_replaced() {
    let mut sim = Sim::new(51);
    sim.join("pub1", "r", pub_av());
    sim.run_for(secs(1));
    let resp = sim.join_viewer("viewer", "r", None, 1, 1);
    assert!(matches!(resp, Response::Joined { .. }), "{resp:?}");
    assert!(sim.run_until(secs(5), |s| s.peer("viewer").peer.is_connected()));
    sim.run_for(secs(3));
    let audio = slots_of(&sim, "viewer", MediaKind::Audio);
    let video = slots_of(&sim, "viewer", MediaKind::Video);
    assert_eq!(audio.len(), 1, "{audio:?}");
    assert_eq!(video.len(), 1, "{video:?}");
    assert!(audio[0].1 > 100 && video[0].1 > 200, "{audio:?} {video:?}");

    // A second publisher: no free slot, and no server offer to the viewer, ever.
    sim.join("pub2", "r", pub_av());
    sim.run_for(secs(2));
    assert_eq!(offers_to(&sim, "viewer"), 0);
    assert_eq!(slots_of(&sim, "viewer", MediaKind::Video).len(), 1);

    // The first publisher leaves: the slots carry the second one's tracks, on the same
    // m-lines, with continuous sequence numbers, and it was asked for a keyframe.
    let kf_before = sim.peer("pub2").peer.received.keyframe_requests;
    let before = video_packets(&sim, "viewer");
    sim.leave("pub1");
    sim.run_for(secs(3));
    let video = slots_of(&sim, "viewer", MediaKind::Video);
    assert_eq!(video.len(), 1, "still one video m-line: {video:?}");
    assert!(
        video[0].1 > before + 150,
        "video continues from pub2: {before} -> {video:?}"
    );
    assert_eq!(
        video[0].2, 0,
        "no sequence gap across the switch: {video:?}"
    );
    assert_eq!(slots_of(&sim, "viewer", MediaKind::Audio)[0].2, 0);
    assert!(sim.peer("pub2").peer.received.keyframe_requests > kf_before);
    assert_eq!(offers_to(&sim, "viewer"), 0);
    // The publishers never receive the viewer (it publishes nothing).
    assert_eq!(
        sim.peer("pub2")
            .peer
            .received
            .packets_from("viewer", MediaKind::Video),
        0
    );
}

#[test]
fn a_viewer_of_one_participant_gets_only_that_participant() {
    let mut sim = Sim::new(52);
    sim.join("a", "r", pub_av());
    sim.join("b", "r", pub_av());
    sim.run_for(secs(1));
    let resp = sim.join_viewer("viewer", "r", Some("b"), 1, 2);
    assert!(matches!(resp, Response::Joined { .. }), "{resp:?}");
    sim.run_for(secs(4));
    // Two video slots but only b's one video: one m-line carries media.
    let video = slots_of(&sim, "viewer", MediaKind::Video);
    assert_eq!(video.len(), 1, "only b's video: {video:?}");
    // a leaves: nothing changes for the viewer.
    let before = video_packets(&sim, "viewer");
    sim.leave("a");
    sim.run_for(secs(2));
    assert!(video_packets(&sim, "viewer") > before + 100);
    // b leaves: nothing else may fill the slot (the viewer asked for b only).
    sim.join("c", "r", pub_av());
    sim.leave("b");
    sim.run_for(secs(1));
    let after_b = video_packets(&sim, "viewer");
    sim.run_for(secs(2));
    assert!(
        video_packets(&sim, "viewer") <= after_b + 2,
        "c's video must not reach a viewer of b"
    );
    assert_eq!(offers_to(&sim, "viewer"), 0);
}

#[test]
fn two_video_slots_take_two_publishers_and_refill_from_a_third() {
    let mut sim = Sim::new(53);
    for id in ["p1", "p2", "p3"] {
        sim.join(id, "r", Some(video_only(2, 900)));
    }
    sim.run_for(secs(1));
    sim.join_viewer("viewer", "r", None, 0, 2);
    sim.run_for(secs(3));
    let video = slots_of(&sim, "viewer", MediaKind::Video);
    assert_eq!(video.len(), 2, "{video:?}");
    let before: u64 = video.iter().map(|(_, n, _)| n).sum();
    sim.leave("p1");
    sim.run_for(secs(3));
    let video = slots_of(&sim, "viewer", MediaKind::Video);
    assert_eq!(video.len(), 2, "{video:?}");
    // Both slots still flow (one now carries p3), without gaps.
    assert!(video.iter().all(|(_, _, lost)| *lost == 0), "{video:?}");
    let after: u64 = video.iter().map(|(_, n, _)| n).sum();
    assert!(after > before + 2 * 150, "{before} -> {after}");
}

#[test]
fn a_viewer_join_without_an_offer_or_without_recvonly_sections_is_refused() {
    let mut sim = Sim::new(54);
    sim.add_peer("v");
    let resp = sim.command(Request::Join {
        room: "r".into(),
        participant: "v".into(),
        name: "V".into(),
        offer: None,
        epoch: None,
        grants: Grants::default(),
        identity: None,
        viewer: Some(control::Viewer::default()),
    });
    assert!(
        matches!(&resp, Response::Error { code: ErrorCode::BadRequest, message } if message.contains("offer")),
        "{resp:?}"
    );
    // A publisher's offer (sendonly) has nothing to receive on.
    let offer = sim.peer_mut("v").peer.create_offer(true, true);
    let resp = sim.command(Request::Join {
        room: "r".into(),
        participant: "v".into(),
        name: "V".into(),
        offer: Some(offer),
        epoch: None,
        grants: Grants::default(),
        identity: None,
        viewer: Some(control::Viewer::default()),
    });
    assert!(
        matches!(&resp, Response::Error { code: ErrorCode::BadRequest, message } if message.contains("recvonly")),
        "{resp:?}"
    );
    assert_eq!(sim.core.participant_count(), 0);
}
