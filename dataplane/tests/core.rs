//! Deterministic tests of the SFU core: real `WorkerCore`, real str0m peers, simulated network,
//! virtual clock (see `sim/mod.rs`).

mod sim;

use std::net::SocketAddr;
use std::time::Duration;

use control::{ErrorCode, Event, Grants, LeaveReason, Request, Response};
use sfu_core::DropReason;
use sim::{Publish, Sim};
use str0m::media::MediaKind;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn pub_av() -> Option<Publish> {
    Some(Publish::default())
}

/// Everyone in `ids` receives audio and video from every other, and nothing from itself.
fn assert_full_mesh(sim: &Sim, ids: &[&str], min_packets: u64) {
    for me in ids {
        let rx = &sim.peer(me).peer.received;
        for other in ids {
            let audio = rx.packets_from(other, MediaKind::Audio);
            let video = rx.packets_from(other, MediaKind::Video);
            if me == other {
                assert_eq!(audio + video, 0, "{me} must never receive its own media");
            } else {
                assert!(
                    audio >= min_packets,
                    "{me} got {audio} audio packets from {other}"
                );
                assert!(
                    video >= min_packets,
                    "{me} got {video} video packets from {other}"
                );
            }
        }
    }
}

#[test]
fn one_to_one_call_forwards_audio_and_video_both_ways() {
    let mut sim = Sim::new(1);
    sim.join("alice", "r", pub_av());
    sim.join("bob", "r", pub_av());
    assert!(
        sim.run_until(secs(5), |s| s.peer("alice").peer.is_connected()
            && s.peer("bob").peer.is_connected())
    );
    sim.run_for(secs(3));
    // 3 s of 50 pps audio and 90 pps video.
    assert_full_mesh(&sim, &["alice", "bob"], 100);
    // Outgoing streams are contiguous: no gap on a lossless network.
    for id in ["alice", "bob"] {
        for t in sim.peer(id).peer.received.tracks.values() {
            assert_eq!(t.lost, 0, "{id} saw a sequence gap on {t:?}");
            assert_eq!(t.ssrcs.len(), 1);
        }
    }
    assert_eq!(sim.core.room_count(), 1);
    assert!(sim.core.counters().rtp_forwarded > 0);
    // Each joiner was told about the other exactly once.
    let joined: Vec<_> = sim
        .events
        .iter()
        .filter(|e| matches!(e, Event::PeerJoined { .. }))
        .collect();
    assert_eq!(joined.len(), 1, "{joined:?}");
}

#[test]
fn three_party_room_everyone_receives_everyone_else() {
    let mut sim = Sim::new(2);
    for id in ["a", "b", "c"] {
        sim.join(id, "room", pub_av());
    }
    sim.run_for(secs(4));
    assert_full_mesh(&sim, &["a", "b", "c"], 100);
    // A second room on the same worker is isolated from the first.
    sim.join("d", "other", pub_av());
    sim.run_for(secs(2));
    for id in ["a", "b", "c"] {
        assert_eq!(
            sim.peer(id)
                .peer
                .received
                .packets_from("d", MediaKind::Video),
            0
        );
    }
    assert_eq!(sim.peer("d").peer.received.tracks.len(), 0);
}

#[test]
fn late_joiner_gets_a_keyframe_request_sent_to_the_publisher() {
    let mut sim = Sim::new(3);
    sim.join("pub", "r", pub_av());
    sim.run_for(secs(3));
    let before = sim.peer("pub").peer.received.keyframe_requests;
    sim.join("late", "r", None);
    assert!(
        sim.run_until(secs(3), |s| s.peer("pub").peer.received.keyframe_requests
            > before),
        "publisher never asked for a keyframe after a new subscriber"
    );
    sim.run_for(secs(1));
    assert!(
        sim.peer("late")
            .peer
            .received
            .packets_from("pub", MediaKind::Video)
            > 20
    );
    // Exactly one request for one new subscriber.
    assert_eq!(sim.peer("pub").peer.received.keyframe_requests, before + 1);
}

#[test]
fn subscriber_pli_reaches_publisher_throttled() {
    let mut sim = Sim::new(4);
    sim.join("pub", "r", pub_av());
    sim.join("sub", "r", None);
    sim.run_for(secs(3));
    let before = sim.peer("pub").peer.received.keyframe_requests;
    // 20 PLIs within 200 ms: the publisher sees at most one now and one deferred.
    for _ in 0..20 {
        assert!(sim.peer_mut("sub").peer.request_keyframe("pub"));
        sim.run_for(Duration::from_millis(10));
    }
    sim.run_for(secs(1));
    let got = sim.peer("pub").peer.received.keyframe_requests - before;
    assert!(
        (1..=2).contains(&got),
        "publisher got {got} keyframe requests"
    );
}

#[test]
fn chat_broadcast_and_whisper() {
    let mut sim = Sim::new(5);
    for id in ["a", "b", "c"] {
        sim.join(id, "r", pub_av());
    }
    assert!(sim.run_until(secs(5), |s| {
        ["a", "b", "c"].iter().all(|i| s.peer(i).peer.chat_open())
    }));
    assert!(sim.peer_mut("a").peer.send_chat(None, "hello all"));
    assert!(sim.peer_mut("a").peer.send_chat(Some("b"), "psst b"));
    sim.run_for(secs(1));

    let b = sim.chat_of("b");
    let c = sim.chat_of("c");
    let a = sim.chat_of("a");
    assert_eq!(b.len(), 2, "{b:?}");
    assert_eq!(b[0]["text"], "hello all");
    assert_eq!(b[0]["from"], "a");
    assert_eq!(b[0]["name"], "name-a");
    assert!(b[0]["to"].is_null());
    assert!(
        b[0]["ts"]
            .as_u64()
            .is_some_and(|ts| ts >= 1_700_000_000_000)
    );
    assert_eq!(b[1]["text"], "psst b");
    assert_eq!(b[1]["to"], "b");
    // C sees only the broadcast; the whisper never reaches its channel.
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(c[0]["text"], "hello all");
    // A gets no copy of its broadcast, but the whisper echoed back as confirmation.
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(a[0]["text"], "psst b");
    assert_eq!(a[0]["to"], "b");
    assert_eq!(sim.core.counters().chat_messages, 2);
}

#[test]
fn chat_bad_input_gets_errors_on_the_channel_and_nothing_is_delivered() {
    let mut sim = Sim::new(6);
    sim.join("a", "r", pub_av());
    sim.join("b", "r", pub_av());
    sim.join("x", "elsewhere", pub_av());
    assert!(sim.run_until(secs(5), |s| s.peer("a").peer.chat_open()
        && s.peer("b").peer.chat_open()));
    let big = "y".repeat(4097);
    let at_limit = "z".repeat(4096);
    assert!(sim.peer_mut("a").peer.send_chat(Some("nobody"), "hi"));
    assert!(sim.peer_mut("a").peer.send_chat(Some("x"), "other room"));
    assert!(sim.peer_mut("a").peer.send_chat(None, &big));
    assert!(sim.peer_mut("a").peer.send_chat_raw(b"{not json"));
    assert!(sim.peer_mut("a").peer.send_chat_raw(br#"{"type":"dance"}"#));
    assert!(sim.peer_mut("a").peer.send_chat(None, &at_limit));
    sim.run_for(secs(1));
    let codes: Vec<String> = sim
        .chat_of("a")
        .iter()
        .map(|m| m["code"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        codes,
        [
            "unknown_participant",
            "unknown_participant",
            "too_large",
            "bad_request",
            "bad_request"
        ]
    );
    let b = sim.chat_of("b");
    assert_eq!(b.len(), 1, "only the valid message is delivered");
    assert_eq!(
        b[0]["text"].as_str().map(str::len),
        Some(4096),
        "not truncated"
    );
    assert!(sim.chat_of("x").is_empty());
    assert_eq!(sim.core.counters().dropped(DropReason::ChatInvalid), 5);
}

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
fn nack_and_rtx_repair_loss_to_a_subscriber() {
    let mut sim = Sim::new(10);
    sim.join("pub", "r", pub_av());
    sim.join("sub", "r", None);
    sim.run_for(secs(2));
    sim.peer_mut("sub").loss_down_permille = 50; // 5 % loss server → subscriber
    sim.run_for(secs(10));
    sim.peer_mut("sub").loss_down_permille = 0;
    sim.run_for(secs(2));
    let dropped = sim.peer("sub").dropped_down;
    let rx = &sim.peer("sub").peer.received;
    let video = rx
        .tracks
        .values()
        .find(|t| t.kind == Some(MediaKind::Video))
        .expect("video");
    assert!(dropped > 30, "the link dropped {dropped}");
    // Every dropped video packet was retransmitted from str0m's RTX cache.
    assert_eq!(video.lost, 0, "unrepaired video loss {video:?}");
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
    let stats = sim.core.stats();
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

#[test]
fn h264_publisher_is_forwarded_with_the_subscribers_payload_type() {
    let mut sim = Sim::new(17);
    sim.add_peer("h");
    sim.peer_mut("h").peer.prefer_h264();
    sim.join("h", "r", pub_av());
    sim.join("v", "r", pub_av());
    sim.run_for(secs(3));
    let (pt, codec) = sim.peer("h").peer.video_send_codec().expect("negotiated");
    assert_eq!(
        codec,
        str0m::format::Codec::H264,
        "publisher sends H.264 (pt {pt})"
    );
    let rx = &sim.peer("v").peer.received;
    let video = rx
        .tracks
        .values()
        .find(|t| t.stream_id == "h" && t.kind == Some(MediaKind::Video))
        .expect("video from h");
    assert!(video.packets > 50);
    let codecs: Vec<_> = video
        .pts
        .iter()
        .map(|pt| sim.peer("v").peer.codec_of(*pt))
        .collect();
    assert_eq!(
        codecs,
        [Some(str0m::format::Codec::H264)],
        "subscriber sees H.264 under its own PT"
    );
    // And the VP8 publisher next to it is still VP8 for h.
    let back = sim
        .peer("h")
        .peer
        .received
        .tracks
        .values()
        .find(|t| t.kind == Some(MediaKind::Video))
        .expect("video from v");
    assert_eq!(
        back.pts
            .iter()
            .map(|pt| sim.peer("h").peer.codec_of(*pt))
            .collect::<Vec<_>>(),
        [Some(str0m::format::Codec::Vp8)]
    );
}

#[test]
fn mute_state_is_relayed_to_the_room_and_given_to_late_joiners() {
    let mut sim = Sim::new(18);
    sim.join("a", "r", pub_av());
    sim.join("b", "r", pub_av());
    assert!(sim.run_until(secs(5), |s| s.peer("a").peer.chat_open()
        && s.peer("b").peer.chat_open()));
    assert!(
        sim.peer_mut("a")
            .peer
            .send_chat_raw(br#"{"type":"state","audio_muted":true,"video_muted":false}"#)
    );
    sim.run_for(secs(1));
    let b = sim.chat_of("b");
    assert_eq!(b.len(), 1, "{b:?}");
    assert_eq!(
        (
            b[0]["type"].as_str(),
            b[0]["from"].as_str(),
            b[0]["audio_muted"].as_bool()
        ),
        (Some("state"), Some("a"), Some(true))
    );
    assert!(sim.chat_of("a").is_empty(), "no echo of one's own state");
    // A late joiner learns a's state as soon as its channel opens.
    sim.join("c", "r", pub_av());
    assert!(sim.run_until(secs(5), |s| !s.chat_of("c").is_empty()));
    let c = sim.chat_of("c");
    assert_eq!(
        (
            c[0]["from"].as_str(),
            c[0]["audio_muted"].as_bool(),
            c[0]["video_muted"].as_bool()
        ),
        (Some("a"), Some(true), Some(false))
    );
    // Malformed state is refused like any bad message.
    assert!(
        sim.peer_mut("a")
            .peer
            .send_chat_raw(br#"{"type":"state","audio_muted":"yes"}"#)
    );
    sim.run_for(secs(1));
    assert_eq!(
        sim.chat_of("a")
            .last()
            .and_then(|m| m["code"].as_str().map(str::to_string))
            .as_deref(),
        Some("bad_request")
    );
}

/// Defect 5 (hardening): a participant whose token denies `subscribe` got every track anyway.
#[test]
fn a_participant_without_the_subscribe_grant_receives_no_media() {
    let mut sim = Sim::new(30);
    sim.join("a", "r", pub_av());
    let viewer = Grants {
        publish: true,
        subscribe: false,
    };
    let r = sim.try_join_as("v", "r", pub_av(), viewer);
    assert!(matches!(r, Response::Joined { .. }), "{r:?}");
    // A later publisher does not reach it either.
    sim.join("b", "r", pub_av());
    sim.run_for(secs(4));
    let rx = &sim.peer("v").peer.received;
    assert_eq!(
        rx.packets(MediaKind::Audio) + rx.packets(MediaKind::Video),
        0
    );
    assert!(rx.tracks.is_empty(), "{:?}", rx.tracks);
    // Its own media is published to the others.
    for id in ["a", "b"] {
        assert!(
            sim.peer(id)
                .peer
                .received
                .packets_from("v", MediaKind::Video)
                > 50
        );
    }
    assert!(sim.core.invariant_violations().is_empty());
}

/// Defect 9 (hardening): one participant could flood the room's chat (20 k messages in 6 s).
#[test]
fn chat_floods_are_rate_limited_per_sender() {
    let mut sim = Sim::new(31);
    for id in ["a", "b", "c"] {
        sim.join(id, "r", pub_av());
    }
    assert!(sim.run_until(secs(5), |s| {
        ["a", "b", "c"].iter().all(|i| s.peer(i).peer.chat_open())
    }));
    for i in 0..100 {
        assert!(sim.peer_mut("a").peer.send_chat(None, &format!("spam {i}")));
    }
    assert!(sim.peer_mut("c").peer.send_chat(None, "legit"));
    sim.run_for(secs(1));
    let b = sim.chat_of("b");
    let from_a = b.iter().filter(|m| m["from"] == "a").count();
    // The burst (20) and at most the refill of the second it took (5/s).
    assert!((20..=26).contains(&from_a), "delivered from a: {from_a}");
    assert!(
        b.iter().any(|m| m["text"] == "legit"),
        "others are not crowded out"
    );
    let errors: Vec<_> = sim
        .chat_of("a")
        .into_iter()
        .filter(|m| m["code"] == "rate_limited")
        .collect();
    assert_eq!(errors.len(), 1, "told once per run of refusals: {errors:?}");
    assert!(sim.core.counters().dropped(DropReason::ChatRateLimited) >= 70);
    // After slowing down, messages go through again.
    sim.run_for(secs(3));
    assert!(sim.peer_mut("a").peer.send_chat(None, "calm now"));
    sim.run_for(secs(1));
    assert!(sim.chat_of("b").iter().any(|m| m["text"] == "calm now"));
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

/// Property test of the core (hardening): random sequences of joins, leaves, crashes (a peer
/// that goes silent), chat and time steps never panic, never leave the core's tables
/// inconsistent (no track out without its track in), never deliver a whisper to a third party or
/// anyone's own media back to them, and keep every subscriber's sequence numbers continuous.
mod properties {
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
