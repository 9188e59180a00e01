//! Media forwarding: full meshes, keyframe requests, PLI throttling, NACK/RTX repair, payload-type
//! mapping between codecs, and the subscribe grant.

use super::*;
use sfu_core::{Input, Output};

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

/// A timeout pass hands out one subscriber's datagrams before it encrypts the next subscriber's
/// (so in a fan-out the first copy of a frame does not wait for every other copy): after the
/// first datagram of the pass comes out, at most the rest of that subscriber's frame is queued.
#[test]
fn a_fan_out_is_released_one_subscriber_at_a_time() {
    // With BWE (str0m's leaky-bucket pacer; forwarded media unpaced, `bwe-unpaced-burst`) and
    // without (its null pacer).
    for bwe in [true, false] {
        fan_out_is_released_one_subscriber_at_a_time(bwe);
    }
}

fn fan_out_is_released_one_subscriber_at_a_time(bwe: bool) {
    let mut sim = Sim::with_bwe(21, bwe);
    sim.join("pub", "r", Some(video_only(4, 1000)));
    for i in 0..3 {
        sim.join(&format!("s{i}"), "r", None);
    }
    sim.run_for(secs(3));
    for i in 0..3 {
        assert!(
            sim.peer(&format!("s{i}"))
                .peer
                .received
                .packets(MediaKind::Video)
                > 0
        );
    }
    sim.peer_mut("pub").publish = None;
    // Let every timer settle, then one frame of 4 datagrams from the publisher.
    sim.run_for(Duration::from_millis(50));
    let now = sim.now;
    let from = sim.peer("pub").peer.local_addr();
    let frame: Vec<Vec<u8>> = {
        let p = &mut sim.peer_mut("pub").peer;
        p.send_video_frame(now, false, 4, 1000, 30);
        p.handle_timeout(now);
        std::iter::from_fn(|| p.poll_transmit())
            .map(|(_, d)| d)
            .filter(|d| d.get(1).is_some_and(|b| !(200..=206).contains(b)))
            .collect()
    };
    assert_eq!(frame.len(), 4, "one frame of RTP");
    let server = sim.server;
    for d in &frame {
        sim.core.handle_input(Input::Receive {
            now,
            transport: sfu_core::Transport::Udp,
            source: from,
            destination: server,
            data: d,
        });
    }
    // Whatever the publisher's input produced (its RTCP, none of the forwarded RTP: str0m
    // releases written RTP on a time input).
    while sim.core.queued_outputs() > 0 {
        sim.core.poll_output();
    }
    sim.core.handle_input(Input::Timeout(now));
    let mut per_subscriber: Vec<(std::net::SocketAddr, usize)> = Vec::new();
    let mut max_queued_after_first = 0;
    while let Some(o) = sim.core.poll_output() {
        let Output::Transmit(t) = o else { continue };
        if t.contents.len() < 900 {
            continue; // RTCP or keepalives due at the same instant
        }
        match per_subscriber.last_mut() {
            Some((to, n)) if *to == t.destination => *n += 1,
            _ => {
                per_subscriber.push((t.destination, 1));
                max_queued_after_first = max_queued_after_first.max(sim.core.queued_outputs());
            }
        }
    }
    assert_eq!(
        per_subscriber.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        vec![4, 4, 4],
        "each subscriber's copy of the frame comes out together (bwe {bwe}): {per_subscriber:?}"
    );
    // Eagerly, all 12 datagrams would be queued before the first came out (11 left then).
    assert!(
        max_queued_after_first <= 3 + 2,
        "{max_queued_after_first} outputs queued behind a subscriber's first datagram"
    );
}

/// Forwarded RTP is released with `Rtc::handle_written_rtp` (a send-queue snapshot) unless the
/// subscriber's own timers are due, so fanning out does not run every subscriber's ICE, SCTP,
/// RTCP and NACK timers per received packet: full time inputs stay a small fraction of the
/// releases, and every written packet still arrives, in order.
#[test]
fn written_rtp_is_released_without_running_the_subscribers_timers() {
    // With BWE too: the leaky-bucket pacer's snapshot is refreshed by the release as long as no
    // probe is running (`bwe-unpaced-burst`).
    for bwe in [true, false] {
        written_rtp_is_released_cheaply(bwe);
    }
}

fn written_rtp_is_released_cheaply(bwe: bool) {
    let mut sim = Sim::with_bwe(22, bwe);
    sim.join("pub", "r", pub_av());
    for i in 0..4 {
        sim.join(&format!("s{i}"), "r", None);
    }
    sim.run_for(secs(2));
    let before = sim.core.counters().clone();
    sim.run_for(secs(3));
    let c = sim.core.counters();
    let forwarded = c.rtp_forwarded - before.rtp_forwarded;
    let releases = c.rtc_releases - before.rtc_releases;
    let timeouts = c.rtc_timeouts - before.rtc_timeouts;
    // 3 s of 50 pps audio + 90 pps video to 4 subscribers.
    assert!(forwarded > 4 * 3 * 100, "forwarded {forwarded}");
    assert!(
        releases > forwarded / 8,
        "{releases} cheap releases for {forwarded} forwarded packets"
    );
    assert!(
        timeouts < releases / 2,
        "{timeouts} full timeouts vs {releases} releases (bwe {bwe}): written RTP runs the whole timeout machinery"
    );
    for i in 0..4 {
        let id = format!("s{i}");
        for t in sim.peer(&id).peer.received.tracks.values() {
            assert_eq!(t.lost, 0, "{id} saw a sequence gap on {t:?}");
        }
        assert!(
            sim.peer(&id).peer.received.packets(MediaKind::Video) > 200,
            "{id} receives video"
        );
    }
}
