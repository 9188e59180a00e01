//! Participant lifecycle: join errors, two-step join, leave and rejoin, timeouts, attach (resume),
//! periodic stats.

use super::*;

#[test]
fn leave_removes_tracks_by_renegotiation() {
    let mut sim = Sim::new(7);
    for id in ["a", "b", "c"] {
        sim.join(id, "r", pub_av());
    }
    sim.run_for(secs(3));
    assert_eq!(sim.leave("c"), Response::Ok);
    // The others were told, and renegotiated the departed tracks away.
    for id in ["a", "b"] {
        assert!(sim.events.iter().any(|e| matches!(e,
            Event::PeerLeft { participant, peer_id, reason: LeaveReason::Left } if participant == id && peer_id == "c")));
    }
    sim.run_for(Duration::from_millis(500));
    let from_c = |s: &Sim, id: &str| s.peer(id).peer.received.packets_from("c", MediaKind::Video);
    let (a0, b0) = (from_c(&sim, "a"), from_c(&sim, "b"));
    sim.run_for(secs(2));
    assert_eq!(
        (from_c(&sim, "a"), from_c(&sim, "b")),
        (a0, b0),
        "nothing from c after it left"
    );
    assert_full_mesh(&sim, &["a", "b"], 100);
    // The last server offers to a and b stop c's m-lines (port 0).
    for id in ["a", "b"] {
        let last_offer = sim
            .events
            .iter()
            .rev()
            .find_map(|e| match e {
                Event::Offer { participant, sdp } if participant == id => Some(sdp.clone()),
                _ => None,
            })
            .expect("an offer");
        assert!(
            last_offer.contains("m=video 0 ") && last_offer.contains("m=audio 0 "),
            "{last_offer}"
        );
    }
    assert_eq!(
        sim.leave("c"),
        Response::error(
            ErrorCode::UnknownParticipant,
            "no participant \"c\" on this dataplane"
        )
    );
    sim.leave("a");
    sim.leave("b");
    assert_eq!(sim.core.room_count(), 0);
    assert_eq!(sim.closed_rooms, vec!["r".to_string()]);
    assert_eq!(sim.core.participant_count(), 0);
}

#[test]
fn rejoin_with_same_id_after_leave_works() {
    let mut sim = Sim::new(8);
    sim.join("a", "r", pub_av());
    sim.join("b", "r", pub_av());
    sim.run_for(secs(2));
    sim.leave("b");
    // A fresh peer object under the same id (a reloaded tab).
    sim.peers.retain(|p| p.id != "b");
    sim.join("b", "r", pub_av());
    sim.run_for(secs(3));
    assert_full_mesh(&sim, &["a", "b"], 50);
}

#[test]
fn silent_participant_times_out_and_others_are_told() {
    let mut sim = Sim::with_config(9, |c| c.ice_timeout = secs(5));
    sim.join("a", "r", pub_av());
    sim.join("b", "r", pub_av());
    sim.run_for(secs(2));
    sim.peer_mut("b").frozen = true; // the browser crashed: no packets at all
    assert!(sim.run_until(secs(8), |s| {
        s.events.iter().any(|e| {
            matches!(e,
        Event::PeerLeft { peer_id, reason: LeaveReason::Timeout, .. } if peer_id == "b")
        })
    }));
    assert!(sim.events.iter().any(|e| matches!(e, Event::Gone { participant, reason: LeaveReason::Timeout } if participant == "b")));
    assert_eq!(sim.core.participant_count(), 1);
    // The survivor keeps working and is not removed.
    sim.run_for(secs(10));
    assert_eq!(sim.core.participant_count(), 1);
}

#[test]
fn join_errors_are_clear() {
    let mut sim = Sim::with_config(11, |c| c.max_participants_per_room = 2);
    let bad = sim.command(Request::Join {
        room: "r".into(),
        participant: "p".into(),
        name: "n".into(),
        offer: Some("this is not sdp".into()),
        epoch: None,
        grants: Grants::default(),
        identity: None,
        viewer: None,
    });
    assert!(
        matches!(
            bad,
            Response::Error {
                code: ErrorCode::BadRequest,
                ..
            }
        ),
        "{bad:?}"
    );
    sim.join("a", "r", pub_av());
    let offer = sim.fresh_offer();
    let dup = sim.command(Request::Join {
        room: "r".into(),
        participant: "a".into(),
        name: "impostor".into(),
        offer: Some(offer),
        epoch: None,
        grants: Grants::default(),
        identity: None,
        viewer: None,
    });
    assert!(
        matches!(
            dup,
            Response::Error {
                code: ErrorCode::DuplicateParticipant,
                ..
            }
        ),
        "{dup:?}"
    );
    sim.join("b", "r", pub_av());
    let full = sim.try_join("c", "r", pub_av());
    assert!(
        matches!(
            full,
            Response::Error {
                code: ErrorCode::RoomFull,
                ..
            }
        ),
        "{full:?}"
    );
    let ans = sim.command(Request::Answer {
        participant: "a".into(),
        sdp: "garbage".into(),
    });
    assert!(
        matches!(
            ans,
            Response::Error {
                code: ErrorCode::BadRequest,
                ..
            }
        ),
        "{ans:?}"
    );
    // Nothing was disturbed.
    sim.run_for(secs(3));
    assert_full_mesh(&sim, &["a", "b"], 50);
}

#[test]
fn stats_reports_are_periodic_and_describe_rooms() {
    let mut sim = Sim::new(14);
    sim.join("a", "r", pub_av());
    sim.join("b", "r", pub_av());
    sim.run_for(secs(3));
    assert!(
        sim.stats_reports >= 2,
        "{} stats reports",
        sim.stats_reports
    );
    let stats = dataplane::io::translate::stats(sim.core.stats());
    assert_eq!(stats.participants, 2);
    assert_eq!(stats.rooms.len(), 1);
    assert_eq!(stats.rooms[0].participants.len(), 2);
    assert!(
        stats.rooms[0]
            .participants
            .iter()
            .all(|p| p.connected && p.tracks_in == 2 && p.tracks_out == 2)
    );
    assert!(stats.rtp_forwarded > 0 && stats.datagrams_in > 0);
}

#[test]
fn attach_resends_the_outstanding_offer_to_the_new_connection() {
    let mut sim = Sim::new(15);
    sim.join("a", "r", pub_av());
    sim.run_for(secs(1));
    // b's signaling dies before relaying the server offer with a's tracks.
    sim.add_peer("b");
    sim.peer_mut("b").ignore_offers = 1;
    sim.join("b", "r", pub_av());
    sim.run_for(secs(2));
    assert_eq!(
        sim.peer("b")
            .peer
            .received
            .packets_from("a", MediaKind::Video),
        0
    );
    let offers_before = sim
        .events
        .iter()
        .filter(|e| matches!(e, Event::Offer { participant, .. } if participant == "b"))
        .count();
    let wrong = sim.command(Request::Attach {
        participant: "b".into(),
        resume_key: "not-the-key".into(),
    });
    assert!(
        matches!(
            wrong,
            Response::Error {
                code: ErrorCode::UnknownParticipant,
                ..
            }
        ),
        "{wrong:?}"
    );
    let resume_key = sim.resume_keys["b"].clone();
    assert_eq!(resume_key.len(), 32);
    let resp = sim.command(Request::Attach {
        participant: "b".into(),
        resume_key,
    });
    let Response::Attached {
        room,
        participants,
        name,
        ..
    } = resp
    else {
        panic!("attach failed: {resp:?}");
    };
    assert_eq!(room, "r");
    assert_eq!(name, "name-b");
    assert_eq!(
        participants
            .iter()
            .map(|p| p.id.as_str())
            .collect::<Vec<_>>(),
        ["a"]
    );
    let offers_after = sim
        .events
        .iter()
        .filter(|e| matches!(e, Event::Offer { participant, .. } if participant == "b"))
        .count();
    assert_eq!(
        offers_after,
        offers_before + 1,
        "the pending offer is re-sent"
    );
    sim.run_for(secs(2));
    assert!(
        sim.peer("b")
            .peer
            .received
            .packets_from("a", MediaKind::Video)
            > 50
    );
    let unknown = sim.command(Request::Attach {
        participant: "zz".into(),
        resume_key: String::new(),
    });
    assert!(matches!(
        unknown,
        Response::Error {
            code: ErrorCode::UnknownParticipant,
            ..
        }
    ));
}

#[test]
fn two_step_join_reserves_then_answers_the_first_offer() {
    let mut sim = Sim::new(16);
    sim.join("a", "r", pub_av());
    sim.add_peer("b");
    let resp = sim.command(Request::Join {
        room: "r".into(),
        participant: "b".into(),
        name: "Bee".into(),
        offer: None,
        epoch: None,
        grants: Grants::default(),
        identity: Some("user-b".into()),
        viewer: None,
    });
    let Response::Joined {
        answer: None,
        participants,
        resume_key,
        ..
    } = resp
    else {
        panic!("reserve failed: {resp:?}");
    };
    assert_eq!(participants.len(), 1);
    // No server offer before the client's first offer is answered.
    assert!(
        !sim.events
            .iter()
            .any(|e| matches!(e, Event::Offer { participant, .. } if participant == "b"))
    );
    let offer = {
        let sp = sim.peer_mut("b");
        sp.publish = pub_av();
        sp.peer.create_offer(true, true)
    };
    let resp = sim.command(Request::Offer {
        participant: "b".into(),
        sdp: offer,
    });
    let Response::Answer { sdp } = resp else {
        panic!("offer not answered: {resp:?}");
    };
    sim.peer_mut("b").peer.handle_answer(&sdp).expect("answer");
    sim.run_for(secs(4));
    assert_full_mesh(&sim, &["a", "b"], 100);
    // The token identity comes back on resume (signaling counts resumed sessions with it).
    let resp = sim.command(Request::Attach {
        participant: "b".into(),
        resume_key,
    });
    assert!(
        matches!(&resp, Response::Attached { identity: Some(i), .. } if i == "user-b"),
        "{resp:?}"
    );
}
