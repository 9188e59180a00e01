//! Simulcast: publishers sending three layers (q, h, f), each subscriber given the layer its
//! bandwidth estimate allows; switches only on keyframes of the new layer, with sequence numbers,
//! timestamps and VP8 picture ids continuous as a decoder needs them; no keyframe-request storm.

use super::*;
use bench::peer::VideoPacket;

fn simulcast() -> Option<Publish> {
    // Top layer 3 × 1100 B at 30 fps ≈ 0.8 Mbit/s, middle ≈ 0.26, lowest ≈ 0.07; audio 48 kbit/s.
    Some(Publish {
        simulcast: true,
        packets_per_frame: 3,
        packet_size: 1100,
        ..Publish::default()
    })
}

/// The received video of `id` from publisher `from`, in arrival order.
fn video_log<'a>(sim: &'a Sim, id: &str, from: &str) -> &'a [VideoPacket] {
    sim.peer(id)
        .peer
        .received
        .tracks
        .values()
        .find(|t| t.stream_id == from && t.kind == Some(MediaKind::Video))
        .map_or(&[], |t| t.detail.as_slice())
}

/// The layer of the newest video packet (highest sequence number: a retransmission of an older
/// one can arrive last) `id` received from `from`.
fn layer_now(sim: &Sim, id: &str, from: &str) -> Option<u8> {
    video_log(sim, id, from)
        .iter()
        .max_by_key(|p| p.seq)
        .and_then(|p| p.layer)
}

/// What a decoder needs of one received stream (in sequence order, each packet once): every
/// change of layer is at the first packet of a keyframe, and picture ids, TL0PICIDX and
/// timestamps continue across it as within one layer. Returns the switches seen.
fn assert_decodable(id: &str, log: &[VideoPacket]) -> usize {
    let mut pkts: Vec<VideoPacket> = log.to_vec();
    pkts.sort_by_key(|p| p.seq);
    pkts.dedup_by_key(|p| p.seq);
    assert!(!pkts.is_empty(), "{id} received video");
    let mut switches = 0;
    for w in pkts.windows(2) {
        let (a, b) = (w[0], w[1]);
        let contiguous = b.seq == a.seq + 1;
        if a.layer != b.layer && contiguous {
            assert!(
                b.keyframe,
                "{id}: layer {:?} → {:?} at seq {} is not on a keyframe",
                a.layer, b.layer, b.seq
            );
            switches += 1;
        }
        assert!(
            (b.ts.wrapping_sub(a.ts) as i32) >= 0,
            "{id}: timestamp goes back at seq {}: {} → {}",
            b.seq,
            a.ts,
            b.ts
        );
    }
    // Frame starts in sequence order: picture id and TL0PICIDX +1 per frame (the synthetic
    // publisher sends every frame on temporal layer 0), wherever no packet between them is
    // missing.
    let starts: Vec<(usize, &VideoPacket)> = pkts
        .iter()
        .enumerate()
        .filter(|(_, p)| p.frame_start)
        .collect();
    for w in starts.windows(2) {
        let ((ia, a), (ib, b)) = (w[0], w[1]);
        if b.seq - a.seq != (ib - ia) as u64 {
            continue; // a packet between them never arrived
        }
        let (Some(pa), Some(pb)) = (a.picture_id, b.picture_id) else {
            panic!("{id}: VP8 descriptors without picture ids");
        };
        assert_eq!(
            pb,
            (pa + 1) & 0x7fff,
            "{id}: picture id jumps at seq {} (layer {:?} → {:?})",
            b.seq,
            a.layer,
            b.layer
        );
        assert_eq!(
            b.tl0,
            a.tl0.map(|t| t.wrapping_add(1)),
            "{id}: TL0PICIDX jumps at seq {}",
            b.seq
        );
        assert!(
            b.ts != a.ts,
            "{id}: two frames with one timestamp at {}",
            b.seq
        );
    }
    switches
}

#[test]
fn a_subscriber_on_a_slow_link_drops_to_the_low_layer_and_comes_back() {
    let mut sim = Sim::new(41);
    sim.join("pub", "r", simulcast());
    for id in ["fast", "slow"] {
        sim.join(id, "r", None);
        sim.peer_mut(id).peer.received.record_detail = true;
    }
    sim.run_for(secs(6));
    for id in ["fast", "slow"] {
        assert_eq!(
            layer_now(&sim, id, "pub"),
            Some(2),
            "{id} gets the top layer"
        );
    }

    // The slow subscriber's link drops to 300 kbit/s (the video it gets is ~0.85 Mbit/s).
    sim.peer_mut("slow").rate_down_bps = Some(300_000);
    let t0 = sim.now;
    assert!(
        sim.run_until(secs(10), |s| layer_now(s, "slow", "pub") == Some(0)),
        "the slow subscriber never reached the low layer"
    );
    let down = sim.now - t0;
    eprintln!("switched down to the low layer in {down:?}");
    assert!(down <= Duration::from_millis(2500), "took {down:?}");
    // It stays low (and keeps receiving) while the link is slow; the other one is untouched.
    let before = video_log(&sim, "slow", "pub").len();
    sim.run_for(secs(5));
    assert_eq!(layer_now(&sim, "slow", "pub"), Some(0));
    assert!(video_log(&sim, "slow", "pub").len() > before + 100);
    assert_eq!(layer_now(&sim, "fast", "pub"), Some(2));

    // The link recovers: back to the top layer.
    sim.peer_mut("slow").rate_down_bps = None;
    let t1 = sim.now;
    assert!(
        sim.run_until(secs(30), |s| layer_now(s, "slow", "pub") == Some(2)),
        "the slow subscriber never came back up"
    );
    let up = sim.now - t1;
    eprintln!("back to the top layer in {up:?}");
    // The estimator's own climb from ~0.3 Mbit/s would take ~20 s; the allocation's probes
    // find the recovered link sooner.
    assert!(up <= secs(12), "took {up:?}");
    sim.run_for(secs(2));

    let switches = assert_decodable("slow", video_log(&sim, "slow", "pub"));
    assert!(
        switches >= 2,
        "{switches} switches seen by the slow subscriber"
    );
    assert_eq!(
        assert_decodable("fast", video_log(&sim, "fast", "pub")),
        0,
        "the fast subscriber never switched"
    );
    // No keyframe-request storm: a few requests per switch at most.
    let requests = sim.peer("pub").peer.received.keyframe_requests;
    eprintln!(
        "{requests} keyframe requests for {switches} switches: {:?}",
        sim.peer("pub").peer.received.keyframe_requests_by_rid
    );
    assert!(
        requests <= 3 * switches as u64 + 6,
        "{requests} keyframe requests for {switches} switches"
    );
    assert!(sim.core.counters().layer_switches >= switches as u64 + 2);
    assert!(sim.core.invariant_violations().is_empty());
}

#[test]
fn a_layer_the_publisher_stops_is_replaced_and_taken_back_when_it_returns() {
    let mut sim = Sim::new(42);
    sim.join("pub", "r", simulcast());
    sim.join("sub", "r", None);
    sim.peer_mut("sub").peer.received.record_detail = true;
    sim.run_for(secs(5));
    assert_eq!(layer_now(&sim, "sub", "pub"), Some(2));
    // The publisher stops encoding its top layer (bandwidth or CPU): the subscriber gets the
    // next one without a frozen picture in between.
    assert!(sim.peer_mut("pub").peer.set_layer_active("f", false));
    let t0 = sim.now;
    assert!(sim.run_until(secs(5), |s| layer_now(s, "sub", "pub") == Some(1)));
    eprintln!("moved to the middle layer in {:?}", sim.now - t0);
    assert!(sim.peer_mut("pub").peer.set_layer_active("f", true));
    assert!(sim.run_until(secs(10), |s| layer_now(s, "sub", "pub") == Some(2)));
    sim.run_for(secs(1));
    assert!(assert_decodable("sub", video_log(&sim, "sub", "pub")) >= 2);
}

#[test]
fn simulcast_and_single_layer_publishers_share_a_room() {
    let mut sim = Sim::new(43);
    sim.join("sc", "r", simulcast());
    sim.join("plain", "r", pub_av());
    sim.join("viewer", "r", None);
    sim.peer_mut("viewer").peer.received.record_detail = true;
    sim.run_for(secs(5));
    assert_full_mesh(&sim, &["sc", "plain"], 100);
    let rx = &sim.peer("viewer").peer.received;
    assert!(rx.packets_from("sc", MediaKind::Video) > 100);
    assert!(rx.packets_from("plain", MediaKind::Video) > 100);
    // One layer of the simulcast publisher reaches each subscriber at a time (it may step up
    // as its estimate grows), always decodable.
    let log = video_log(&sim, "viewer", "sc");
    assert!(assert_decodable("viewer", log) <= 2);
    for t in rx.tracks.values() {
        assert_eq!(t.lost, 0, "a gap in {t:?}");
    }
    assert_eq!(sim.core.counters().dropped(DropReason::UndeclaredLayer), 0);
}

/// Send a tile hint from `id` about `from`'s video.
fn hint(sim: &mut Sim, id: &str, from: &str, height: u32, visible: bool) {
    let msg =
        format!(r#"{{"type":"video_hint","from":"{from}","height":{height},"visible":{visible}}}"#);
    assert!(sim.peer_mut(id).peer.send_chat_raw(msg.as_bytes()));
}

fn video_packets(sim: &Sim, id: &str, from: &str) -> u64 {
    sim.peer(id)
        .peer
        .received
        .packets_from(from, MediaKind::Video)
}

#[test]
fn tile_hints_cap_the_layer_and_a_hidden_tile_gets_no_video() {
    let mut sim = Sim::new(44);
    sim.join("pub", "r", simulcast());
    sim.join("plain", "r", pub_av());
    sim.join("sub", "r", None);
    sim.peer_mut("sub").peer.received.record_detail = true;
    // Both videos (0.85 + 0.8 Mbit/s) fit once the estimate has grown past its 1 Mbit/s start.
    assert!(sim.run_until(secs(15), |s| layer_now(s, "sub", "pub") == Some(2)));

    // A 150-pixel tile: the 180-line layer serves it.
    hint(&mut sim, "sub", "pub", 150, true);
    assert!(sim.run_until(secs(2), |s| layer_now(s, "sub", "pub") == Some(0)));

    // Hidden: no video at all from either publisher (a few packets in flight at most).
    hint(&mut sim, "sub", "pub", 150, false);
    hint(&mut sim, "sub", "plain", 360, false);
    sim.run_for(Duration::from_millis(300));
    let (a, b) = (
        video_packets(&sim, "sub", "pub"),
        video_packets(&sim, "sub", "plain"),
    );
    let audio = sim.peer("sub").peer.received.packets(MediaKind::Audio);
    sim.run_for(secs(3));
    assert_eq!(
        video_packets(&sim, "sub", "pub"),
        a,
        "video to a hidden tile"
    );
    assert_eq!(
        video_packets(&sim, "sub", "plain"),
        b,
        "video to a hidden tile"
    );
    assert!(
        sim.peer("sub").peer.received.packets(MediaKind::Audio) > audio + 100,
        "audio keeps flowing"
    );

    // Shown again, large: the plain video at once, the simulcast one from its low layer up to
    // the top as the estimate (idle while hidden) climbs; on keyframes, without a sequence gap.
    hint(&mut sim, "sub", "pub", 720, true);
    hint(&mut sim, "sub", "plain", 360, true);
    assert!(
        sim.run_until(secs(2), |s| video_packets(s, "sub", "plain") > b + 30
            && video_packets(s, "sub", "pub") > a + 30)
    );
    let t0 = sim.now;
    assert!(sim.run_until(secs(15), |s| layer_now(s, "sub", "pub") == Some(2)));
    eprintln!(
        "a shown tile back on the top layer after {:?}",
        sim.now - t0
    );
    sim.run_for(secs(1));
    assert_decodable("sub", video_log(&sim, "sub", "pub"));
    let rx = &sim.peer("sub").peer.received;
    for t in rx.tracks.values() {
        assert_eq!(t.lost, 0, "a sequence gap after a pause: {t:?}");
    }
    assert!(sim.core.invariant_violations().is_empty());
}

/// The `layers` messages (dynacast) `id` received, as lists of active rids.
fn layer_messages(sim: &Sim, id: &str) -> Vec<Vec<String>> {
    sim.channel_lists(id, "layers", "active")
}

#[test]
fn layers_nobody_needs_are_switched_off_at_the_publisher_and_back_on_when_needed() {
    let mut sim = Sim::new(45);
    sim.join("pub", "r", simulcast());
    for id in ["s1", "s2"] {
        sim.join(id, "r", None);
        sim.peer_mut(id).peer.received.record_detail = true;
    }
    sim.run_for(secs(6));
    // Both on the top layer: the middle one is needed by nobody (the lowest always runs).
    let qf = vec!["q".to_string(), "f".to_string()];
    assert_eq!(layer_messages(&sim, "pub"), vec![qf.clone()]);
    // Both subscribers show small tiles: only the lowest layer is needed.
    hint(&mut sim, "s1", "pub", 150, true);
    hint(&mut sim, "s2", "pub", 150, true);
    let t0 = sim.now;
    assert!(sim.run_until(secs(6), |s| layer_messages(s, "pub").last()
        == Some(&vec!["q".to_string()])));
    eprintln!("top layers off after {:?}", sim.now - t0);
    assert!(
        sim.now - t0 >= Duration::from_secs(3),
        "not before the hold"
    );
    let sent = sim.peer("pub").peer.sent_packets;
    sim.run_for(secs(2));
    // Only the lowest layer (one packet per frame) and audio are published now.
    let rate = (sim.peer("pub").peer.sent_packets - sent) / 2;
    assert!(rate < 30 + 50 + 10, "{rate} packets/s published");
    // One subscriber maximises its tile: the layers come back and it gets the top one.
    hint(&mut sim, "s1", "pub", 720, true);
    let t1 = sim.now;
    assert!(sim.run_until(secs(5), |s| layer_now(s, "s1", "pub") == Some(2)));
    eprintln!("top layer back at s1 after {:?}", sim.now - t1);
    // The middle layer may have come back on the way up; unneeded, it goes again.
    sim.run_for(secs(5));
    assert_eq!(layer_messages(&sim, "pub").last(), Some(&qf));
    assert_eq!(layer_now(&sim, "s2", "pub"), Some(0));
    sim.run_for(secs(1));
    for id in ["s1", "s2"] {
        assert_decodable(id, video_log(&sim, id, "pub"));
    }
}

#[test]
fn an_undeclared_rid_is_never_forwarded_and_nobody_notices() {
    let mut sim = Sim::new(46);
    sim.join("pub", "r", simulcast());
    sim.join("sub", "r", None);
    sim.peer_mut("sub").peer.received.record_detail = true;
    sim.run_for(secs(4));
    // The same 2 s without and with the undeclared layer: its 100 packets do reach the SFU.
    let datagrams = |s: &Sim| s.core.counters().datagrams_in;
    let before = datagrams(&sim);
    sim.run_for(secs(2));
    let plain = datagrams(&sim) - before;
    let before = datagrams(&sim);
    for _ in 0..100 {
        let now = sim.now;
        assert!(sim.peer_mut("pub").peer.send_undeclared_layer(now, "x"));
        sim.run_for(Duration::from_millis(20));
    }
    let with_x = datagrams(&sim) - before;
    assert!(
        with_x >= plain + 90,
        "{with_x} datagrams in with the undeclared layer vs {plain} without"
    );
    sim.run_for(secs(1));
    // str0m maps no stream for a rid the SDP did not declare (its RTP never becomes an event);
    // the core's own check (`undeclared_layer`) catches declared rids beyond the 4 it keeps.
    let log = video_log(&sim, "sub", "pub");
    assert!(
        log.iter().all(|p| p.layer != Some(3)),
        "an undeclared layer was forwarded"
    );
    assert_eq!(layer_now(&sim, "sub", "pub"), Some(2));
    assert_decodable("sub", log);
    assert!(sim.core.invariant_violations().is_empty());
}

#[test]
fn hint_spam_is_bounded_and_the_last_hint_wins() {
    let mut sim = Sim::new(47);
    sim.join("pub", "r", simulcast());
    sim.join("sub", "r", None);
    sim.join("other", "r", None);
    sim.peer_mut("sub").peer.received.record_detail = true;
    assert!(sim.run_until(secs(10), |s| layer_now(s, "sub", "pub") == Some(2)));
    let other_before = video_packets(&sim, "other", "pub");
    // 2 000 hints as fast as the channel takes them, flipping size and visibility, and garbage.
    for i in 0..2_000u32 {
        let msg = format!(
            r#"{{"type":"video_hint","from":"pub","height":{},"visible":{}}}"#,
            (i * 37) % 5000,
            i % 3 != 0
        );
        // Whatever the channel takes (a full SCTP buffer refuses some).
        sim.peer_mut("sub").peer.send_chat_raw(msg.as_bytes());
        if i % 100 == 0 {
            for bad in [
                &br#"{"type":"video_hint"}"#[..],
                br#"{"type":"video_hint","from":"nobody","height":1}"#,
                br#"{"type":"video_hint","from":"pub","height":-5}"#,
            ] {
                sim.peer_mut("sub").peer.send_chat_raw(bad);
            }
            sim.run_for(Duration::from_millis(5));
        }
    }
    // The page's final word: a large visible tile.
    hint(&mut sim, "sub", "pub", 720, true);
    assert!(
        sim.run_until(secs(8), |s| layer_now(s, "sub", "pub") == Some(2)
            && video_packets(s, "sub", "pub") > 0),
        "the last hint was not applied"
    );
    sim.run_for(secs(2));
    assert!(video_packets(&sim, "other", "pub") > other_before + 100);
    assert!(sim.core.invariant_violations().is_empty());
}

#[test]
fn a_layer_without_keyframes_is_given_up_for_one_that_has_them() {
    let mut sim = Sim::new(48);
    sim.join("pub", "r", simulcast());
    // The top layer's encoder never makes a keyframe, whatever it is asked.
    assert!(sim.peer_mut("pub").peer.set_layer_keyframes("f", false));
    sim.join("sub", "r", None);
    sim.peer_mut("sub").peer.received.record_detail = true;
    // The subscriber first waits for the top layer, then takes the next one that answers.
    let t0 = sim.now;
    assert!(sim.run_until(secs(10), |s| layer_now(s, "sub", "pub") == Some(1)));
    eprintln!("decoding the middle layer after {:?}", sim.now - t0);
    sim.run_for(secs(10));
    assert_eq!(layer_now(&sim, "sub", "pub"), Some(1));
    assert_decodable("sub", video_log(&sim, "sub", "pub"));
    // The requests for the broken layer stop: no endless keyframe requests.
    let by_rid = sim
        .peer("pub")
        .peer
        .received
        .keyframe_requests_by_rid
        .clone();
    eprintln!("keyframe requests by rid: {by_rid:?}");
    assert!(by_rid.get("f").copied().unwrap_or(0) <= 8, "{by_rid:?}");
    assert!(sim.core.invariant_violations().is_empty());
}

#[test]
fn h264_simulcast_switches_on_idr_keyframes_with_continuous_numbering() {
    let mut sim = Sim::new(49);
    sim.add_peer("pub");
    sim.peer_mut("pub").peer.prefer_h264();
    sim.join("pub", "r", simulcast());
    sim.join("sub", "r", None);
    sim.peer_mut("sub").peer.received.record_detail = true;
    assert!(sim.run_until(secs(10), |s| layer_now(s, "sub", "pub") == Some(2)));
    let (_, codec) = sim.peer("pub").peer.video_send_codec().expect("negotiated");
    assert_eq!(codec, str0m::format::Codec::H264);
    sim.peer_mut("sub").rate_down_bps = Some(300_000);
    assert!(sim.run_until(secs(10), |s| layer_now(s, "sub", "pub") == Some(0)));
    sim.peer_mut("sub").rate_down_bps = None;
    assert!(sim.run_until(secs(30), |s| layer_now(s, "sub", "pub") == Some(2)));
    sim.run_for(secs(1));
    // Every change of layer seen between contiguous packets is on an SPS (keyframe start);
    // sequence numbers and timestamps continue (H.264 has no picture ids to rewrite). The
    // down-switch can sit next to a packet the bottleneck dropped, so not every switch is seen
    // between contiguous packets; the core counts them all (start, down, up).
    let seen = assert_decodable("sub", video_log(&sim, "sub", "pub"));
    assert!(seen >= 1, "{seen} switches seen");
    assert!(sim.core.counters().layer_switches >= 3);
}
