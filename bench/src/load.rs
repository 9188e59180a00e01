//! The load generator: many synthetic peers per thread joining through the real signaling
//! WebSocket protocol, publishing Opus-sized audio and VP8-like video, subscribing to each other,
//! and the measurements of a run (worker threads in `load/worker.rs`, outputs in `load/report.rs`).
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

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::client::Media;
use crate::stats::{ControlClient, rss_kib};

mod capacity;
mod meter;
mod report;
mod worker;
pub use capacity::{Capacity, CapacityStep, Ramp};
use meter::{Delta, Meter, Snapshot};
pub use report::{capacity_table, table, write_outputs};
use worker::{WorkerPlan, worker};

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
    /// Subscribers decrypt and process every packet with str0m (the realism check) instead of
    /// counting from RTP headers (see `peer/light.rs`).
    #[serde(default)]
    pub full_receivers: bool,
    /// Light subscribers decrypt one packet in this many per stream (the latency sample).
    #[serde(default = "default_sample_every")]
    pub sample_every: u32,
    /// Ramp the offered load up in steps until the SFU fails (`bench load --ramp`) instead of
    /// one window at the scenario's rate.
    #[serde(default)]
    pub ramp: Option<Ramp>,
    /// Publishers send video as three simulcast layers (q, h, f): `video_kbps` is the top
    /// layer's, the middle one has a third of its packets, the lowest one quarter-size packet
    /// per frame. Each subscriber gets the layer its bandwidth estimate allows.
    #[serde(default)]
    pub simulcast: bool,
    /// Every peer's media goes over ICE-TCP (one TCP connection to its worker's passive
    /// candidate, RFC 4571 framing) instead of UDP.
    #[serde(default)]
    pub ice_tcp: bool,
}

fn default_sample_every() -> u32 {
    16
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
            full_receivers: false,
            sample_every: default_sample_every(),
            ramp: None,
            simulcast: false,
            ice_tcp: false,
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
            simulcast: self.simulcast,
        })
    }
}

/// Which SFU the peers talk to.
#[derive(Debug, Clone)]
pub enum Sfu {
    /// Ours, through the signaling WebSocket protocol.
    Ours,
    /// Janus VideoRoom through its WebSocket API (peers must bind a non-loopback-interface
    /// address: [`Target::bind_ip`]).
    Janus,
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
    /// The address the synthetic peers' media sockets bind (127.0.0.1, or an address of the
    /// network namespace the generator runs in).
    pub bind_ip: std::net::IpAddr,
    /// The CPU the dataplane is pinned to alone, if it is: its busy time (including interrupt
    /// and softirq work the kernel does there) is reported next to the process's CPU.
    pub dataplane_cpu: Option<usize>,
}

/// One sample of the time series.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sample {
    pub t: f64,
    pub forwarded_pps: f64,
    pub egress_mbps: f64,
    pub dataplane_cpu_percent: f64,
    #[serde(default)]
    pub dataplane_core_busy_percent: Option<f64>,
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
    /// Busy time of the dataplane's CPU (see [`Target::dataplane_cpu`]) in percent and per
    /// forwarded packet.
    #[serde(default)]
    pub dataplane_core_busy_percent: Option<f64>,
    #[serde(default)]
    pub dataplane_core_us_per_forwarded_packet: Option<f64>,
    pub syscalls_per_forwarded_packet: Option<f64>,
    pub dataplane_rss_kib_per_participant: Option<f64>,
    pub dataplane_rss_kib_per_subscribed_stream: Option<f64>,
    pub bench_cpu_percent: f64,
    /// `light` (header-only subscribers) or `full` (str0m decrypts every packet).
    #[serde(default)]
    pub receivers: String,
    /// The load generator's own CPU per forwarded packet (it must stay well below the
    /// dataplane's for the run to measure the dataplane).
    #[serde(default)]
    pub bench_cpu_us_per_forwarded_packet: Option<f64>,
    /// RTP packets the SFU received from the publishers in the window (its own counter), and
    /// datagrams it failed to send or dropped from its send backlog: where loss happened.
    #[serde(default)]
    pub sfu_rtp_in: Option<u64>,
    #[serde(default)]
    pub sfu_send_errors: Option<u64>,
    #[serde(default)]
    pub sfu_backlog_drops: Option<u64>,
    /// The capacity ramp's steps and verdict (`--ramp` runs only).
    #[serde(default)]
    pub capacity: Option<Capacity>,
    pub samples: Vec<Sample>,
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
    let scale: crate::client::RateScale = Arc::new(std::sync::atomic::AtomicU32::new(100));
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
            light_sample_every: (!scenario.full_receivers).then_some(scenario.sample_every),
            scale: scale.clone(),
            bind_ip: target.bind_ip,
            ice_tcp: scenario.ice_tcp,
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

    let control = target
        .control_socket
        .as_deref()
        .map(ControlClient::connect)
        .transpose()?;
    let dp_pid = target.dataplane_pid;
    let rss_before = dp_pid.and_then(rss_kib).unwrap_or(0);
    let mut meter = Meter::new(control, dp_pid, target.dataplane_cpu, report_rx, threads);

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
        let s = meter.workers();
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
    if progress {
        eprintln!();
    }

    // Measurement window (or the capacity ramp, whose steps are windows of their own).
    let mut samples = Vec::new();
    let first = meter.snapshot();
    let capacity = match &scenario.ramp {
        Some(r) => Some(capacity::ramp(
            &mut meter,
            &scale,
            r,
            threads,
            progress,
            &mut samples,
        )),
        None => {
            window(
                &mut meter,
                &first,
                scenario.duration_secs,
                first.at,
                progress,
                &mut samples,
            );
            None
        }
    };
    let last = meter.snapshot();
    let d = Delta::between(&first, &last);
    let rss_after = dp_pid.and_then(rss_kib).unwrap_or(0);
    stop.store(true, Ordering::SeqCst);
    for h in handles {
        let _ = h.join();
    }

    let whole = d.sample(d.secs);
    let w1 = &last.w;
    let mut jl = w1.join_latencies_ms.clone();
    jl.sort_by(f64::total_cmp);
    let pct = |v: &[f64], q: f64| {
        (!v.is_empty()).then(|| v[((v.len() as f64 * q) as usize).min(v.len() - 1)])
    };
    Ok(Results {
        scenario: scenario.name.clone(),
        sfu: match target.sfu {
            Sfu::Ours => "sfu".into(),
            Sfu::Janus => "janus".into(),
        },
        batching: None,
        participants: n,
        joined: w1.joined,
        connected: w1.connected,
        join_secs,
        joins_per_sec: w1.joined as f64 / join_secs.max(1e-3),
        join_to_first_rtp_p50_ms: pct(&jl, 0.5),
        join_to_first_rtp_p99_ms: pct(&jl, 0.99),
        window_secs: d.secs,
        sent_packets: d.sent,
        expected_packets: d.expected,
        received_packets: d.received,
        delivery_ratio: if d.expected > 0 {
            d.received as f64 / d.expected as f64
        } else {
            0.0
        },
        lost_packets: d.lost,
        loss_percent: d.loss_percent(),
        jitter_mean_us: if w1.jitter_n > 0 {
            w1.jitter_sum / w1.jitter_n as f64
        } else {
            0.0
        },
        latency_p50_us: whole.latency_p50_us,
        latency_p99_us: whole.latency_p99_us,
        forwarded_pps: whole.forwarded_pps,
        egress_mbps: whole.egress_mbps,
        dataplane_cpu_percent: whole.dataplane_cpu_percent,
        dataplane_cpu_us_per_forwarded_packet: dp_pid.and_then(|_| d.per_packet_us(d.dp_cpu_secs)),
        dataplane_core_busy_percent: whole.dataplane_core_busy_percent,
        dataplane_core_us_per_forwarded_packet: d.dp_core_secs.and_then(|c| d.per_packet_us(c)),
        syscalls_per_forwarded_packet: d
            .syscalls
            .filter(|_| d.forwarded > 0)
            .map(|s| s as f64 / d.forwarded as f64),
        dataplane_rss_kib_per_participant: (dp_pid.is_some() && w1.joined > 0)
            .then(|| rss_after.saturating_sub(rss_before) as f64 / w1.joined as f64),
        dataplane_rss_kib_per_subscribed_stream: (dp_pid.is_some() && w1.subscribed_streams > 0)
            .then(|| rss_after.saturating_sub(rss_before) as f64 / w1.subscribed_streams as f64),
        bench_cpu_percent: whole.bench_cpu_percent,
        receivers: if scenario.full_receivers {
            "full".into()
        } else {
            "light".into()
        },
        bench_cpu_us_per_forwarded_packet: d.per_packet_us(d.bench_cpu_secs),
        sfu_rtp_in: d.sfu_rtp_in,
        sfu_send_errors: d.sfu_send_errors,
        sfu_backlog_drops: d.sfu_backlog_drops,
        capacity,
        samples,
    })
}

/// Sample once a second for `secs` after `start`, pushing the samples (and printing them).
fn window(
    meter: &mut Meter,
    start: &Snapshot,
    secs: f64,
    origin: Instant,
    progress: bool,
    samples: &mut Vec<Sample>,
) -> Snapshot {
    let t0 = start.at;
    let mut prev = start.clone();
    while t0.elapsed().as_secs_f64() < secs {
        let left = (secs - t0.elapsed().as_secs_f64()).max(0.05);
        std::thread::sleep(Duration::from_secs(1).min(Duration::from_secs_f64(left)));
        let cur = meter.snapshot();
        let sample =
            Delta::between(&prev, &cur).sample(cur.at.duration_since(origin).as_secs_f64());
        if progress {
            eprintln!(
                "t={:5.1}s  fwd {:8.0} pps  {:7.1} Mb/s  dataplane CPU {:5.1}%{}  bench CPU {:5.1}%  rx {:8.0} pps  latency p50 {:>6} p99 {:>6} µs",
                sample.t,
                sample.forwarded_pps,
                sample.egress_mbps,
                sample.dataplane_cpu_percent,
                sample
                    .dataplane_core_busy_percent
                    .map_or(String::new(), |c| format!(" (core {c:5.1}%)")),
                sample.bench_cpu_percent,
                sample.received_pps,
                sample.latency_p50_us.map_or("-".into(), |v| v.to_string()),
                sample.latency_p99_us.map_or("-".into(), |v| v.to_string()),
            );
        }
        samples.push(sample);
        prev = cur;
    }
    prev
}
