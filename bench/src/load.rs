//! The load generator: many synthetic peers per thread joining through the real signaling
//! WebSocket protocol, publishing Opus-sized audio and VP8-like video, subscribing to each other,
//! and the measurements of a run.
//!
//! Each worker thread owns a set of [`Client`]s and one `mio::Poll` watching all their UDP and
//! WebSocket sockets, plus a deadline heap for peer timers and media ticks, so a thread serves
//! hundreds of peers without scanning them. A coordinator thread samples the dataplane (control
//! socket stats, `/proc` CPU and memory) and the workers (cumulative counters and latency
//! histograms) once per second.
//!
//! **Latency measurement**: every published packet carries its send time (µs since a process-wide
//! epoch, read from the clock when the frame is written, not at the start of the loop turn) in
//! the payload; the receiving peer (same process, same clock) records `arrival − send time`,
//! where arrival is the **kernel's receive timestamp** of the datagram (`SO_TIMESTAMPNS`, see
//! [`crate::net`]), so the time a datagram waits in the load generator's socket while its thread
//! serves other peers is not counted. What remains is: the sender's str0m egress + kernel send
//! path + the SFU (socket queue, decrypt, fan-out, encrypt, send) + kernel receive path. It is an
//! upper bound of the SFU-added latency; the 1-subscriber run shows the harness floor.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use serde::{Deserialize, Serialize};
use str0m::media::MediaKind;

use crate::client::{Client, Media};
use crate::janus::JanusClient;
use crate::peer::LatencyHist;
use crate::stats::{ControlClient, cpu_seconds, rss_kib};

/// What to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scenario {
    pub name: String,
    pub rooms: usize,
    pub per_room: usize,
    /// The first N participants of each room publish; the others only subscribe.
    pub publishers_per_room: usize,
    pub audio: bool,
    pub video: bool,
    pub video_kbps: u32,
    pub fps: u32,
    /// A keyframe this often (seconds; besides those requested by PLI).
    pub keyframe_secs: f64,
    /// Steady-state measurement window.
    pub duration_secs: f64,
    /// Joins per second during the join phase (0: as fast as possible).
    pub join_rate: f64,
    pub threads: usize,
}

impl Scenario {
    /// A preset: `smoke`, `small-rooms`, `large-room`, `audio-room`, `join-storm`, `soak`.
    pub fn preset(name: &str) -> Option<Self> {
        let base = Self {
            name: name.into(),
            rooms: 1,
            per_room: 2,
            publishers_per_room: usize::MAX,
            audio: true,
            video: true,
            video_kbps: 800,
            fps: 30,
            keyframe_secs: 5.0,
            duration_secs: 10.0,
            join_rate: 50.0,
            threads: 1,
        };
        Some(match name {
            "smoke" => Self {
                rooms: 2,
                per_room: 3,
                duration_secs: 3.0,
                ..base
            },
            "small-rooms" => Self {
                rooms: 100,
                per_room: 4,
                video_kbps: 300,
                fps: 15,
                duration_secs: 20.0,
                join_rate: 100.0,
                ..base
            },
            "large-room" => Self {
                rooms: 1,
                per_room: 101,
                publishers_per_room: 1,
                video_kbps: 1200,
                duration_secs: 20.0,
                join_rate: 100.0,
                ..base
            },
            "audio-room" => Self {
                rooms: 1,
                per_room: 200,
                publishers_per_room: 10,
                video: false,
                duration_secs: 20.0,
                join_rate: 100.0,
                ..base
            },
            "join-storm" => Self {
                rooms: 250,
                per_room: 2,
                video: false,
                audio: true,
                duration_secs: 3.0,
                join_rate: 0.0,
                threads: 2,
                ..base
            },
            "soak" => Self {
                rooms: 20,
                per_room: 4,
                video_kbps: 500,
                duration_secs: 300.0,
                ..base
            },
            _ => return None,
        })
    }

    pub fn participants(&self) -> usize {
        self.rooms * self.per_room
    }

    fn media(&self, publisher: bool) -> Option<Media> {
        if !publisher {
            return None;
        }
        let packet_size = 1100usize;
        let frame_bytes = (self.video_kbps as usize * 1000 / 8) / self.fps.max(1) as usize;
        Some(Media {
            audio: self.audio,
            video: self.video,
            fps: self.fps,
            packets_per_frame: frame_bytes.div_ceil(packet_size).max(1),
            packet_size,
            audio_size: 120,
            keyframe_interval: (self.keyframe_secs > 0.0)
                .then(|| Duration::from_secs_f64(self.keyframe_secs)),
            keyframe_factor: 4,
        })
    }
}

/// Which SFU the peers talk to.
#[derive(Debug, Clone)]
pub enum Sfu {
    /// Ours, through the signaling WebSocket protocol.
    Ours,
    /// Janus VideoRoom through its WebSocket API; peers bind `bind_ip`.
    Janus { bind_ip: std::net::IpAddr },
}

/// Where the service under test is.
#[derive(Debug, Clone)]
pub struct Target {
    pub sfu: Sfu,
    /// Signaling (or Janus) WebSocket URLs; clients are spread over them.
    pub ws_urls: Vec<String>,
    /// The SFU process (CPU, memory) and, for ours, its control socket (stats).
    pub dataplane_pid: Option<u32>,
    pub control_socket: Option<PathBuf>,
}

/// A synthetic participant of either SFU.
enum AnyClient {
    Ours(Box<Client>),
    Janus(Box<JanusClient>),
}

impl AnyClient {
    fn peer(&self) -> &crate::peer::Peer {
        match self {
            AnyClient::Ours(c) => &c.peer,
            AnyClient::Janus(c) => &c.peer,
        }
    }
    fn fds(&self) -> (RawFd, Option<RawFd>) {
        match self {
            AnyClient::Ours(c) => c.fds(),
            AnyClient::Janus(c) => c.fds(),
        }
    }
    fn poll(&mut self, now: Instant) {
        match self {
            AnyClient::Ours(c) => {
                let _ = c.poll(now);
            }
            AnyClient::Janus(c) => c.poll(now),
        }
    }
    fn next_deadline(&self) -> Instant {
        match self {
            AnyClient::Ours(c) => c.next_deadline(),
            AnyClient::Janus(c) => c.next_deadline(),
        }
    }
    fn leave(&mut self) {
        if let AnyClient::Ours(c) = self {
            let _ = c.leave();
        }
    }
}

/// One sample of the time series.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sample {
    pub t: f64,
    pub forwarded_pps: f64,
    pub egress_mbps: f64,
    pub dataplane_cpu_percent: f64,
    pub bench_cpu_percent: f64,
    pub latency_p50_us: Option<u64>,
    pub latency_p99_us: Option<u64>,
    pub received_pps: f64,
}

/// The results of a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Results {
    pub scenario: String,
    pub sfu: String,
    pub batching: Option<bool>,
    pub participants: usize,
    pub joined: usize,
    pub connected: usize,
    pub join_secs: f64,
    pub joins_per_sec: f64,
    pub join_to_first_rtp_p50_ms: Option<f64>,
    pub join_to_first_rtp_p99_ms: Option<f64>,
    pub window_secs: f64,
    pub sent_packets: u64,
    pub expected_packets: u64,
    pub received_packets: u64,
    pub delivery_ratio: f64,
    pub lost_packets: u64,
    pub loss_percent: f64,
    pub jitter_mean_us: f64,
    pub latency_p50_us: Option<u64>,
    pub latency_p99_us: Option<u64>,
    pub forwarded_pps: f64,
    pub egress_mbps: f64,
    pub dataplane_cpu_percent: f64,
    pub dataplane_cpu_us_per_forwarded_packet: Option<f64>,
    pub syscalls_per_forwarded_packet: Option<f64>,
    pub dataplane_rss_kib_per_participant: Option<f64>,
    pub dataplane_rss_kib_per_subscribed_stream: Option<f64>,
    pub bench_cpu_percent: f64,
    pub samples: Vec<Sample>,
}

/// Cumulative counters a worker reports every second.
#[derive(Debug, Clone, Default)]
struct WorkerReport {
    worker: usize,
    joined: usize,
    connected: usize,
    failed_joins: usize,
    sent: u64,
    /// Σ over its publishers: sent × (room size − 1).
    expected: u64,
    received: u64,
    /// RTP payload bytes received by its subscribers.
    received_bytes: u64,
    lost: u64,
    hist: LatencyHist,
    jitter_sum: f64,
    jitter_n: u64,
    join_latencies_ms: Vec<f64>,
    subscribed_streams: u64,
}

struct WorkerPlan {
    sfu: Sfu,
    /// (url, room, name, publisher)
    clients: Vec<(String, String, String, bool)>,
    join_interval: Duration,
    media: Media,
    per_room: usize,
    pin: Option<usize>,
}

/// Run `scenario` against `target`. Prints a progress line per second if `progress`.
pub fn run(
    target: &Target,
    scenario: &Scenario,
    pin: Option<usize>,
    progress: bool,
) -> anyhow::Result<Results> {
    let epoch = Instant::now();
    let n = scenario.participants();
    let threads = scenario.threads.max(1);
    let mut plans: Vec<WorkerPlan> = (0..threads)
        .map(|_| WorkerPlan {
            sfu: target.sfu.clone(),
            clients: Vec::new(),
            join_interval: if scenario.join_rate > 0.0 {
                Duration::from_secs_f64(threads as f64 / scenario.join_rate)
            } else {
                Duration::ZERO
            },
            media: scenario.media(true).unwrap_or_default(),
            per_room: scenario.per_room,
            pin,
        })
        .collect();
    let run_id = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    for i in 0..n {
        let room = i / scenario.per_room;
        let publisher = (i % scenario.per_room) < scenario.publishers_per_room;
        let url = target.ws_urls[i % target.ws_urls.len()].clone();
        plans[i % threads].clients.push((
            url,
            format!("{}-{run_id}-{room}", scenario.name),
            format!("peer{i}"),
            publisher,
        ));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (report_tx, report_rx) = crossbeam_channel::unbounded();
    let handles: Vec<_> = plans
        .into_iter()
        .enumerate()
        .map(|(w, plan)| {
            let tx = report_tx.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("load-{w}"))
                .spawn(move || worker(w, plan, epoch, &tx, &stop))
        })
        .collect::<Result<_, _>>()?;
    drop(report_tx);

    let mut control = target
        .control_socket
        .as_deref()
        .map(ControlClient::connect)
        .transpose()?;
    let dp_pid = target.dataplane_pid;
    let rss_before = dp_pid.map(rss_kib).unwrap_or(0);
    let mut latest: Vec<WorkerReport> = vec![WorkerReport::default(); threads];
    let absorb = |latest: &mut Vec<WorkerReport>, rx: &Receiver<WorkerReport>| {
        while let Ok(r) = rx.try_recv() {
            let w = r.worker;
            latest[w] = r;
        }
    };
    let sum = |latest: &[WorkerReport]| -> WorkerReport {
        let mut s = WorkerReport::default();
        for r in latest {
            s.joined += r.joined;
            s.connected += r.connected;
            s.failed_joins += r.failed_joins;
            s.sent += r.sent;
            s.expected += r.expected;
            s.received += r.received;
            s.received_bytes += r.received_bytes;
            s.lost += r.lost;
            s.hist.merge(&r.hist);
            s.jitter_sum += r.jitter_sum;
            s.jitter_n += r.jitter_n;
            s.join_latencies_ms
                .extend(r.join_latencies_ms.iter().copied());
            s.subscribed_streams += r.subscribed_streams;
        }
        s
    };

    // Join phase: until everyone joined and connected (bounded).
    let join_start = Instant::now();
    let join_deadline = join_start
        + Duration::from_secs(30)
        + Duration::from_secs_f64(if scenario.join_rate > 0.0 {
            n as f64 / scenario.join_rate
        } else {
            0.0
        });
    loop {
        std::thread::sleep(Duration::from_millis(200));
        absorb(&mut latest, &report_rx);
        let s = sum(&latest);
        if progress {
            eprint!(
                "\rjoining: {}/{n} joined, {} connected, {} failed   ",
                s.joined, s.connected, s.failed_joins
            );
        }
        if s.joined + s.failed_joins >= n && s.connected >= s.joined {
            break;
        }
        if Instant::now() >= join_deadline {
            break;
        }
    }
    let join_secs = join_start.elapsed().as_secs_f64();
    // Let subscriptions settle (renegotiation, first keyframes).
    std::thread::sleep(Duration::from_secs(2));
    absorb(&mut latest, &report_rx);
    if progress {
        eprintln!();
    }

    // Measurement window.
    let bench_pid = std::process::id();
    let w0 = sum(&latest);
    let t0 = Instant::now();
    let node0 = control.as_mut().and_then(|c| c.stats().ok());
    let cpu0 = dp_pid.and_then(cpu_seconds);
    let bench_cpu0 = cpu_seconds(bench_pid);
    let mut samples = Vec::new();
    let (mut prev_node, mut prev_cpu, mut prev_bench, mut prev_w, mut prev_t) =
        (node0.clone(), cpu0, bench_cpu0, w0.clone(), t0);
    while t0.elapsed().as_secs_f64() < scenario.duration_secs {
        std::thread::sleep(Duration::from_secs(1).min(Duration::from_secs_f64(
            (scenario.duration_secs - t0.elapsed().as_secs_f64()).max(0.05),
        )));
        absorb(&mut latest, &report_rx);
        let now = Instant::now();
        let dt = now.duration_since(prev_t).as_secs_f64().max(1e-3);
        let node = control.as_mut().and_then(|c| c.stats().ok());
        let cpu = dp_pid.and_then(cpu_seconds);
        let bench_cpu = cpu_seconds(bench_pid);
        let w = sum(&latest);
        let mut interval = w.hist.clone();
        for (a, b) in interval.counts.iter_mut().zip(&prev_w.hist.counts) {
            *a = a.saturating_sub(*b);
        }
        let (fwd, bytes) = node_delta(prev_node.as_ref(), node.as_ref());
        let (fwd, bytes) = if node.is_some() {
            (fwd, bytes)
        } else {
            (
                w.received.saturating_sub(prev_w.received),
                w.received_bytes.saturating_sub(prev_w.received_bytes),
            )
        };
        let sample = Sample {
            t: now.duration_since(t0).as_secs_f64(),
            forwarded_pps: fwd as f64 / dt,
            egress_mbps: bytes as f64 * 8.0 / dt / 1e6,
            dataplane_cpu_percent: delta_cpu(prev_cpu, cpu) / dt * 100.0,
            bench_cpu_percent: delta_cpu(prev_bench, bench_cpu) / dt * 100.0,
            latency_p50_us: interval.quantile(0.5),
            latency_p99_us: interval.quantile(0.99),
            received_pps: (w.received.saturating_sub(prev_w.received)) as f64 / dt,
        };
        if progress {
            eprintln!(
                "t={:5.1}s  fwd {:8.0} pps  {:7.1} Mb/s  dataplane CPU {:5.1}%  bench CPU {:5.1}%  rx {:8.0} pps  latency p50 {:>6} p99 {:>6} µs",
                sample.t,
                sample.forwarded_pps,
                sample.egress_mbps,
                sample.dataplane_cpu_percent,
                sample.bench_cpu_percent,
                sample.received_pps,
                sample.latency_p50_us.map_or("-".into(), |v| v.to_string()),
                sample.latency_p99_us.map_or("-".into(), |v| v.to_string()),
            );
        }
        samples.push(sample);
        (prev_node, prev_cpu, prev_bench, prev_w, prev_t) = (node, cpu, bench_cpu, w, now);
    }
    let window = t0.elapsed().as_secs_f64();
    let w1 = prev_w.clone();
    let node1 = prev_node.clone();
    let rss_after = dp_pid.map(rss_kib).unwrap_or(0);
    stop.store(true, Ordering::SeqCst);
    for h in handles {
        let _ = h.join();
    }

    let received = w1.received.saturating_sub(w0.received);
    let expected = w1.expected.saturating_sub(w0.expected);
    let lost = w1.lost.saturating_sub(w0.lost);
    let (mut fwd, mut bytes) = node_delta(node0.as_ref(), node1.as_ref());
    if node0.is_none() {
        // No SFU stats (Janus): what the subscribers received is what was forwarded (plus loss),
        // and egress is their RTP payload bytes (a slight undercount: no RTP/SRTP overhead).
        fwd = received + lost;
        bytes = w1.received_bytes.saturating_sub(w0.received_bytes);
    }
    let syscalls = match (&node0, &node1) {
        (Some(a), Some(b)) => {
            let calls = |n: &control::NodeStats| {
                n.workers
                    .iter()
                    .map(|w| w.udp_recv_calls + w.udp_send_calls)
                    .sum::<u64>()
            };
            Some(calls(b).saturating_sub(calls(a)))
        }
        _ => None,
    };
    let mut hist = w1.hist.clone();
    for (a, b) in hist.counts.iter_mut().zip(&w0.hist.counts) {
        *a = a.saturating_sub(*b);
    }
    let dp_cpu = delta_cpu(cpu0, prev_cpu);
    let mut jl = w1.join_latencies_ms.clone();
    jl.sort_by(f64::total_cmp);
    let pct = |v: &[f64], q: f64| {
        (!v.is_empty()).then(|| v[((v.len() as f64 * q) as usize).min(v.len() - 1)])
    };
    Ok(Results {
        scenario: scenario.name.clone(),
        sfu: match target.sfu {
            Sfu::Ours => "sfu".into(),
            Sfu::Janus { .. } => "janus".into(),
        },
        batching: None,
        participants: n,
        joined: w1.joined,
        connected: w1.connected,
        join_secs,
        joins_per_sec: w1.joined as f64 / join_secs.max(1e-3),
        join_to_first_rtp_p50_ms: pct(&jl, 0.5),
        join_to_first_rtp_p99_ms: pct(&jl, 0.99),
        window_secs: window,
        sent_packets: w1.sent.saturating_sub(w0.sent),
        expected_packets: expected,
        received_packets: received,
        delivery_ratio: if expected > 0 {
            received as f64 / expected as f64
        } else {
            0.0
        },
        lost_packets: lost,
        loss_percent: if received + lost > 0 {
            lost as f64 * 100.0 / (received + lost) as f64
        } else {
            0.0
        },
        jitter_mean_us: if w1.jitter_n > 0 {
            w1.jitter_sum / w1.jitter_n as f64
        } else {
            0.0
        },
        latency_p50_us: hist.quantile(0.5),
        latency_p99_us: hist.quantile(0.99),
        forwarded_pps: fwd as f64 / window,
        egress_mbps: bytes as f64 * 8.0 / window / 1e6,
        dataplane_cpu_percent: dp_cpu / window * 100.0,
        dataplane_cpu_us_per_forwarded_packet: (fwd > 0 && cpu0.is_some())
            .then(|| dp_cpu * 1e6 / fwd as f64),
        syscalls_per_forwarded_packet: syscalls.filter(|_| fwd > 0).map(|s| s as f64 / fwd as f64),
        dataplane_rss_kib_per_participant: (dp_pid.is_some() && w1.joined > 0)
            .then(|| rss_after.saturating_sub(rss_before) as f64 / w1.joined as f64),
        dataplane_rss_kib_per_subscribed_stream: (dp_pid.is_some() && w1.subscribed_streams > 0)
            .then(|| rss_after.saturating_sub(rss_before) as f64 / w1.subscribed_streams as f64),
        bench_cpu_percent: delta_cpu(bench_cpu0, prev_bench) / window * 100.0,
        samples,
    })
}

fn delta_cpu(a: Option<f64>, b: Option<f64>) -> f64 {
    match (a, b) {
        (Some(a), Some(b)) => (b - a).max(0.0),
        _ => 0.0,
    }
}

/// (forwarded RTP packets, bytes out) between two node snapshots.
fn node_delta(a: Option<&control::NodeStats>, b: Option<&control::NodeStats>) -> (u64, u64) {
    let (Some(a), Some(b)) = (a, b) else {
        return (0, 0);
    };
    let f = |n: &control::NodeStats| {
        (
            n.workers.iter().map(|w| w.rtp_forwarded).sum::<u64>(),
            n.workers.iter().map(|w| w.bytes_out).sum::<u64>(),
        )
    };
    let (fa, ba) = f(a);
    let (fb, bb) = f(b);
    (fb.saturating_sub(fa), bb.saturating_sub(ba))
}

/// One worker thread: join its clients (paced), then serve them until `stop`.
fn worker(
    w: usize,
    plan: WorkerPlan,
    epoch: Instant,
    tx: &Sender<WorkerReport>,
    stop: &AtomicBool,
) {
    if let Some(cpu) = plan.pin {
        core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
    }
    let Ok(poll) = Poll::new() else {
        return;
    };
    let mut poll = poll;
    let mut events = Events::with_capacity(1024);
    let mut clients: Vec<(AnyClient, bool, Instant, bool)> = Vec::new(); // (client, publisher, join start, counted join latency)
    let mut heap: BinaryHeap<Reverse<(Instant, usize)>> = BinaryHeap::new();
    let mut pending = plan.clients.into_iter().peekable();
    let mut next_join = Instant::now();
    let mut failed = 0;
    let mut next_report = Instant::now();
    let mut join_latencies = Vec::new();
    let mut done_joining = false;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        // Janus only lists a publisher (and lets subscribers join it) once its peer connection
        // is up, so subscribers wait for the publishers this thread already started.
        let janus_wait = matches!(plan.sfu, Sfu::Janus { .. })
            && pending
                .peek()
                .is_some_and(|(_, _, _, publisher)| !publisher)
            && clients
                .iter()
                .any(|(c, p, ..)| *p && !c.peer().is_connected());
        if janus_wait {
            next_join = now + Duration::from_millis(20);
        }
        if !done_joining && now >= next_join {
            match pending.next() {
                Some((url, room, name, publisher)) => {
                    let media = publisher.then_some(plan.media);
                    let start = Instant::now();
                    let joined = match &plan.sfu {
                        Sfu::Ours => {
                            Client::join(&url, &room, &name, media, epoch, Duration::from_secs(10))
                                .map(|c| AnyClient::Ours(Box::new(c)))
                        }
                        Sfu::Janus { bind_ip } => {
                            let room: u64 = room.parse().unwrap_or(10_000);
                            JanusClient::join(
                                &url,
                                room,
                                &name,
                                media,
                                *bind_ip,
                                epoch,
                                Duration::from_secs(10),
                            )
                            .map(|c| AnyClient::Janus(Box::new(c)))
                        }
                    };
                    match joined {
                        Ok(c) => {
                            let idx = clients.len();
                            let (udp, ws) = c.fds();
                            let _ = poll.registry().register(
                                &mut SourceFd(&udp),
                                Token(idx * 2),
                                Interest::READABLE,
                            );
                            if let Some(ws) = ws {
                                let _ = poll.registry().register(
                                    &mut SourceFd(&(ws as RawFd)),
                                    Token(idx * 2 + 1),
                                    Interest::READABLE,
                                );
                            }
                            heap.push(Reverse((Instant::now(), idx)));
                            clients.push((c, publisher, start, false));
                        }
                        Err(e) => {
                            failed += 1;
                            tracing::warn!(error = %e, "join failed");
                        }
                    }
                    next_join = start + plan.join_interval;
                }
                None => done_joining = true,
            }
        }
        // Sleep until the next socket event, peer deadline, join or report.
        let mut wake = next_report;
        if let Some(Reverse((t, _))) = heap.peek() {
            wake = wake.min(*t);
        }
        if !done_joining {
            wake = wake.min(next_join);
        }
        let timeout = wake
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(100));
        if poll.poll(&mut events, Some(timeout)).is_err() {
            continue;
        }
        let now = Instant::now();
        for ev in events.iter() {
            let idx = ev.token().0 / 2;
            if let Some((c, ..)) = clients.get_mut(idx) {
                c.poll(now);
                heap.push(Reverse((c.next_deadline(), idx)));
            }
        }
        while let Some(Reverse((t, idx))) = heap.peek().copied() {
            if t > now {
                break;
            }
            heap.pop();
            if let Some((c, ..)) = clients.get_mut(idx) {
                // A stale entry (the client was polled since) only costs a cheap extra poll.
                if c.next_deadline() <= now {
                    c.poll(now);
                }
                heap.push(Reverse((
                    c.next_deadline().max(now + Duration::from_micros(200)),
                    idx,
                )));
            }
        }
        if now >= next_report {
            next_report = now + Duration::from_millis(500);
            // Join → first remote RTP, for clients that got their first packet since last time.
            for (c, _, start, counted) in clients.iter_mut() {
                if !*counted && let Some(first) = c.peer().received.first_rtp {
                    *counted = true;
                    join_latencies
                        .push(first.saturating_duration_since(*start).as_secs_f64() * 1e3);
                }
            }
            let mut r = WorkerReport {
                worker: w,
                joined: clients.len(),
                failed_joins: failed,
                join_latencies_ms: join_latencies.clone(),
                ..WorkerReport::default()
            };
            for (c, publisher, ..) in &clients {
                let peer = c.peer();
                if peer.is_connected() {
                    r.connected += 1;
                }
                if *publisher {
                    r.sent += peer.sent_packets;
                    r.expected += peer.sent_packets * (plan.per_room as u64 - 1);
                }
                for t in peer.received.tracks.values() {
                    r.received += t.packets;
                    r.received_bytes += t.bytes;
                    r.lost += t.lost;
                    r.hist.merge(&t.latency);
                    if t.packets > 0 {
                        r.jitter_sum += t.jitter_us;
                        r.jitter_n += 1;
                    }
                    if t.kind == Some(MediaKind::Video) || t.kind == Some(MediaKind::Audio) {
                        r.subscribed_streams += 1;
                    }
                }
            }
            let _ = tx.send(r);
        }
    }
    for (c, ..) in clients.iter_mut() {
        c.leave();
    }
}

/// Write the results as JSON and SVG plots into `dir`; returns the files written.
pub fn write_outputs(dir: &Path, results: &Results) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let base = format!("{}-{}", results.sfu, results.scenario);
    let json = dir.join(format!("{base}.json"));
    std::fs::write(&json, serde_json::to_string_pretty(results)?)?;
    let mut files = vec![json];
    if !results.samples.is_empty() {
        files.push(plot(
            dir.join(format!("{base}-throughput.svg")),
            &format!("{base}: throughput and CPU"),
            &results.samples,
            true,
        )?);
        files.push(plot(
            dir.join(format!("{base}-latency.svg")),
            &format!("{base}: one-way latency (µs)"),
            &results.samples,
            false,
        )?);
    }
    Ok(files)
}

fn plot(
    path: PathBuf,
    title: &str,
    samples: &[Sample],
    throughput: bool,
) -> anyhow::Result<PathBuf> {
    use plotters::prelude::*;
    let root = SVGBackend::new(&path, (900, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let t_max = samples.last().map_or(1.0, |s| s.t).max(1.0);
    type Series<'a> = (&'a str, Vec<(f64, f64)>, RGBColor);
    let series: Vec<Series<'_>> = if throughput {
        vec![
            (
                "forwarded kpps",
                samples
                    .iter()
                    .map(|s| (s.t, s.forwarded_pps / 1000.0))
                    .collect(),
                BLUE,
            ),
            (
                "dataplane CPU %",
                samples
                    .iter()
                    .map(|s| (s.t, s.dataplane_cpu_percent))
                    .collect(),
                RED,
            ),
            (
                "bench CPU %",
                samples.iter().map(|s| (s.t, s.bench_cpu_percent)).collect(),
                RGBColor(150, 150, 150),
            ),
        ]
    } else {
        vec![
            (
                "p50",
                samples
                    .iter()
                    .filter_map(|s| Some((s.t, s.latency_p50_us? as f64)))
                    .collect(),
                BLUE,
            ),
            (
                "p99",
                samples
                    .iter()
                    .filter_map(|s| Some((s.t, s.latency_p99_us? as f64)))
                    .collect(),
                RED,
            ),
        ]
    };
    let y_max = series
        .iter()
        .flat_map(|(_, v, _)| v.iter().map(|(_, y)| *y))
        .fold(1.0f64, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..t_max, 0.0..y_max)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (name, data, color) in series {
        chart
            .draw_series(LineSeries::new(data, color.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    drop(chart);
    drop(root);
    Ok(path)
}

/// A human-readable table of one or more results side by side.
pub fn table(results: &[&Results]) -> String {
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |name: &str, f: &dyn Fn(&Results) -> String| {
        rows.push((name.to_string(), results.iter().map(|r| f(r)).collect()));
    };
    let opt = |v: Option<f64>, d: usize| v.map_or("-".to_string(), |v| format!("{v:.d$}"));
    row("sfu", &|r| {
        format!(
            "{}{}",
            r.sfu,
            r.batching.map_or(String::new(), |b| if b {
                " (batching)".into()
            } else {
                " (no batching)".into()
            })
        )
    });
    row("scenario", &|r| r.scenario.clone());
    row("participants joined/connected", &|r| {
        format!("{}/{}", r.joined, r.connected)
    });
    row("joins/s", &|r| format!("{:.0}", r.joins_per_sec));
    row("join → first RTP p50/p99 ms", &|r| {
        format!(
            "{}/{}",
            opt(r.join_to_first_rtp_p50_ms, 0),
            opt(r.join_to_first_rtp_p99_ms, 0)
        )
    });
    row("forwarded pps", &|r| format!("{:.0}", r.forwarded_pps));
    row("egress Mb/s", &|r| format!("{:.1}", r.egress_mbps));
    row("dataplane CPU %", &|r| {
        format!("{:.1}", r.dataplane_cpu_percent)
    });
    row("dataplane CPU µs / fwd packet", &|r| {
        opt(r.dataplane_cpu_us_per_forwarded_packet, 2)
    });
    row("syscalls / fwd packet", &|r| {
        opt(r.syscalls_per_forwarded_packet, 3)
    });
    row("delivery ratio", &|r| format!("{:.4}", r.delivery_ratio));
    row("loss %", &|r| format!("{:.3}", r.loss_percent));
    row("jitter mean µs", &|r| format!("{:.0}", r.jitter_mean_us));
    row("latency p50/p99 µs", &|r| {
        format!(
            "{}/{}",
            r.latency_p50_us.map_or("-".into(), |v| v.to_string()),
            r.latency_p99_us.map_or("-".into(), |v| v.to_string())
        )
    });
    row("dataplane RSS KiB / participant", &|r| {
        opt(r.dataplane_rss_kib_per_participant, 0)
    });
    row("dataplane RSS KiB / subscribed stream", &|r| {
        opt(r.dataplane_rss_kib_per_subscribed_stream, 0)
    });
    row("bench CPU %", &|r| format!("{:.1}", r.bench_cpu_percent));
    let w0 = rows
        .iter()
        .map(|(n, _)| n.chars().count())
        .max()
        .unwrap_or(0);
    let w1 = rows
        .iter()
        .flat_map(|(_, v)| v.iter().map(|v| v.chars().count()))
        .max()
        .unwrap_or(0)
        .max(12);
    let mut out = String::new();
    for (name, vals) in rows {
        out += &format!(
            "{name:<w0$}  {}\n",
            vals.iter()
                .map(|v| format!("{v:>w1$}"))
                .collect::<Vec<_>>()
                .join("  ")
        );
    }
    out
}
