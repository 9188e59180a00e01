//! CPU cost of the core's forwarding path: one publisher → N subscribers, 1200-byte video
//! packets, real str0m SRTP (decrypt once, encrypt per subscriber), no sockets.
//!
//! Each measured iteration feeds one SRTP datagram from the publisher into the `WorkerCore` (in
//! turns of 1 or 4 datagrams, see `forward`) and drains everything it produces (N encrypted datagrams, RTCP when due). Throughput is reported in
//! forwarded packets, so criterion's time per element is the CPU time per forwarded packet.
//!
//!     cargo bench -p dataplane --bench forward

#[path = "../tests/sim/mod.rs"]
mod sim;

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sfu_core::{Input, Output};
use sim::Sim;

// Same allocator as the dataplane binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A room with one connected video publisher and `n` connected subscribers; with `mesh`, the
/// subscribers publish video too (a full mesh: each of them receives `n` video tracks, so its
/// `Rtc` holds `n` send streams).
fn room(n: usize, mesh: bool, bwe: bool) -> Sim {
    // Long timeouts: the measured loop advances virtual time much faster than peers send keepalives.
    let mut sim = Sim::with_config(7, |c| {
        c.ice_timeout = Duration::from_secs(86_400);
        c.max_participants_per_room = 1000;
        // With BWE the leaky-bucket pacer sends at twice the estimate: start it far above what
        // the loop offers, so the timed region still sends everything it forwards (a paced
        // packet left for later would be work moved out of the measurement).
        c.bwe_initial = bwe.then_some(10_000_000_000);
    });
    let video_only = sim::video_only(4, 1200);
    sim.join("pub", "bench", Some(video_only));
    for i in 0..n {
        sim.join(&format!("s{i}"), "bench", mesh.then_some(video_only));
    }
    sim.run_for(Duration::from_secs(if mesh { 5 } else { 3 }));
    let subscribed = (0..n).all(|i| {
        sim.peer(&format!("s{i}"))
            .peer
            .received
            .packets(str0m::media::MediaKind::Video)
            > 0
    });
    assert!(
        subscribed,
        "every subscriber receives video before measuring"
    );
    // From now on the benchmark, not the simulation, produces the publisher's packets (and
    // in a mesh nobody else publishes during the measurement).
    sim.peer_mut("pub").publish = None;
    for i in 0..n {
        sim.peer_mut(&format!("s{i}")).publish = None;
    }
    sim
}

/// `count` SRTP datagrams from the publisher (frames of 4 × 1200-byte packets).
fn packets(sim: &mut Sim, count: u64) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(count as usize);
    let start = sim.now;
    let mut rounds = 0u64;
    while (out.len() as u64) < count {
        rounds += 1;
        assert!(
            rounds < 10 * count + 100,
            "the publisher produces no RTP ({} of {count} packets)",
            out.len()
        );
        let now = sim.now;
        let p = &mut sim.peer_mut("pub").peer;
        p.send_video_frame(now, false, 4, 1200, 30);
        // str0m releases queued RTP on its next time input.
        p.handle_timeout(now);
        while let Some((_, d)) = p.poll_transmit() {
            // Only RTP (not the publisher's own RTCP).
            if d.get(1).is_some_and(|b| !(200..=206).contains(b)) {
                out.push(d);
            }
        }
        sim.now += Duration::from_millis(4);
    }
    sim.now = start;
    out.truncate(count as usize);
    out
}

fn forward(c: &mut Criterion) {
    // `batch` datagrams are fed before the core's timers run and its output is drained: 1 is a
    // packet at a time; 4 is one video frame per event-loop turn, as the worker sees it when
    // a GRO read returns a frame's packets together.
    for batch in [1usize, 4] {
        let name = format!("forward_1200B_batch{batch}");
        measure(c, &name, batch, &[1, 10, 50], false, true);
    }
    // The cost of send-side bandwidth estimation (on by default: simulcast layer selection
    // needs it), in the same run: the groups above run with it, this one without.
    measure(
        c,
        "forward_1200B_batch4_bwe_off",
        4,
        &[10, 50],
        false,
        false,
    );
    // Full mesh: every subscriber also publishes, so each holds one send stream per other
    // participant (the per-write stream lookup is over all of them).
    measure(c, "forward_1200B_mesh_batch4", 4, &[10, 25], true, true);
}

fn measure(c: &mut Criterion, name: &str, batch: usize, sizes: &[usize], mesh: bool, bwe: bool) {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    for &n in sizes {
        let mut sim = room(n, mesh, bwe);
        let from = sim.peer("pub").peer.local_addr();
        let server = sim.server;
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("subscribers", n), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut measured = Duration::ZERO;
                let mut left = iters;
                let mut sent = 0u64;
                while left > 0 {
                    let chunk = left.min(500);
                    left -= chunk;
                    // Untimed: let the peers exchange keepalives and RTCP with the core.
                    sim.run_for(Duration::from_millis(20));
                    let input = packets(&mut sim, chunk);
                    let t0 = Instant::now();
                    for turn in input.chunks(batch) {
                        sim.now += Duration::from_micros(1100);
                        let now = sim.now;
                        for d in turn {
                            sim.core.handle_input(Input::Receive {
                                now,
                                transport: sfu_core::Transport::Udp,
                                source: from,
                                destination: server,
                                data: d,
                            });
                        }
                        if sim.core.poll_timeout().is_some_and(|t| t <= now) {
                            sim.core.handle_input(Input::Timeout(now));
                        }
                        while let Some(o) = sim.core.poll_output() {
                            if let Output::Transmit(t) = o {
                                sent += t.contents.len() as u64;
                            }
                        }
                    }
                    measured += t0.elapsed();
                }
                std::hint::black_box(sent);
                measured
            });
        });
        let c = sim.core.counters();
        eprintln!(
            "{name} subscribers={n}: forwarded {} rtp, {} datagrams out, drops {:?}",
            c.rtp_forwarded, c.datagrams_out, c.drops
        );
    }
    group.finish();
}

criterion_group!(benches, forward);
criterion_main!(benches);
