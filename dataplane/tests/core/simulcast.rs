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

/// The layer of the last video packet `id` received from `from`.
fn layer_now(sim: &Sim, id: &str, from: &str) -> Option<u8> {
    video_log(sim, id, from).last().and_then(|p| p.layer)
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
    // One layer of the simulcast publisher reaches each subscriber, never several at once.
    let log = video_log(&sim, "viewer", "sc");
    assert_eq!(assert_decodable("viewer", log), 0);
    for t in rx.tracks.values() {
        assert_eq!(t.lost, 0, "a gap in {t:?}");
    }
    assert_eq!(sim.core.counters().dropped(DropReason::UndeclaredLayer), 0);
}
