//! Reading a load run: snapshots of the system under test (its stats over the control socket,
//! process CPU from `/proc`, busy time of the CPU it is pinned to) and of the generator (its
//! workers' cumulative counters, its own CPU), and what happened between two snapshots.

use std::time::Instant;

use crossbeam_channel::Receiver;

use super::Sample;
use super::worker::WorkerReport;
use crate::peer::LatencyHist;
use crate::stats::{ControlClient, cpu_busy_seconds, cpu_seconds};

/// Everything cumulative at one instant.
#[derive(Debug, Clone)]
pub(super) struct Snapshot {
    pub(super) at: Instant,
    pub(super) node: Option<control::NodeStats>,
    pub(super) dp_cpu: Option<f64>,
    pub(super) dp_core: Option<f64>,
    pub(super) bench_cpu: Option<f64>,
    pub(super) w: WorkerReport,
}

/// Takes [`Snapshot`]s; owns the control connection and the workers' latest reports.
pub(super) struct Meter {
    control: Option<ControlClient>,
    dp_pid: Option<u32>,
    dp_core: Option<usize>,
    bench_pid: u32,
    rx: Receiver<WorkerReport>,
    latest: Vec<WorkerReport>,
}

impl Meter {
    pub(super) fn new(
        control: Option<ControlClient>,
        dp_pid: Option<u32>,
        dp_core: Option<usize>,
        rx: Receiver<WorkerReport>,
        workers: usize,
    ) -> Self {
        Self {
            control,
            dp_pid,
            dp_core,
            bench_pid: std::process::id(),
            rx,
            latest: vec![WorkerReport::default(); workers],
        }
    }

    /// The workers' counters summed (after taking their newest reports).
    pub(super) fn workers(&mut self) -> WorkerReport {
        while let Ok(r) = self.rx.try_recv() {
            let w = r.worker;
            self.latest[w] = r;
        }
        let mut s = WorkerReport::default();
        for r in &self.latest {
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
    }

    pub(super) fn snapshot(&mut self) -> Snapshot {
        let w = self.workers();
        Snapshot {
            at: Instant::now(),
            node: self.control.as_mut().and_then(|c| c.stats().ok()),
            dp_cpu: self.dp_pid.and_then(cpu_seconds),
            dp_core: self.dp_core.and_then(cpu_busy_seconds),
            bench_cpu: cpu_seconds(self.bench_pid),
            w,
        }
    }
}

/// What happened between two snapshots.
#[derive(Debug, Clone)]
pub(super) struct Delta {
    pub(super) secs: f64,
    /// RTP packets the SFU forwarded (its own counter; without one, what subscribers received
    /// plus what they lost).
    pub(super) forwarded: u64,
    pub(super) bytes_out: u64,
    pub(super) dp_cpu_secs: f64,
    pub(super) dp_core_secs: Option<f64>,
    pub(super) bench_cpu_secs: f64,
    pub(super) sent: u64,
    pub(super) expected: u64,
    pub(super) received: u64,
    pub(super) lost: u64,
    pub(super) hist: LatencyHist,
    pub(super) syscalls: Option<u64>,
    /// The SFU's own view, when it reports one: RTP packets received from publishers, UDP send
    /// errors and datagrams dropped by its send backlog (where loss happened, if any).
    pub(super) sfu_rtp_in: Option<u64>,
    pub(super) sfu_send_errors: Option<u64>,
    pub(super) sfu_backlog_drops: Option<u64>,
}

fn delta(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some((b? - a?).max(0.0))
}

impl Delta {
    pub(super) fn between(a: &Snapshot, b: &Snapshot) -> Self {
        let received = b.w.received.saturating_sub(a.w.received);
        let lost = b.w.lost.saturating_sub(a.w.lost);
        let mut hist = b.w.hist.clone();
        for (x, y) in hist.counts.iter_mut().zip(&a.w.hist.counts) {
            *x = x.saturating_sub(*y);
        }
        let node = |n: &control::NodeStats| {
            let w = &n.workers;
            (
                w.iter().map(|w| w.rtp_forwarded).sum::<u64>(),
                w.iter().map(|w| w.bytes_out).sum::<u64>(),
                w.iter()
                    .map(|w| {
                        w.udp_recv_calls + w.udp_send_calls + w.tcp_recv_calls + w.tcp_send_calls
                    })
                    .sum::<u64>(),
            )
        };
        let (forwarded, bytes_out, syscalls) = match (&a.node, &b.node) {
            (Some(x), Some(y)) => {
                let (f0, b0, s0) = node(x);
                let (f1, b1, s1) = node(y);
                (
                    f1.saturating_sub(f0),
                    b1.saturating_sub(b0),
                    Some(s1.saturating_sub(s0)),
                )
            }
            // No SFU stats (Janus): what the subscribers received is what was forwarded (plus
            // loss), and egress is their RTP payload bytes (a slight undercount).
            _ => (
                received + lost,
                b.w.received_bytes.saturating_sub(a.w.received_bytes),
                None,
            ),
        };
        let node_delta = |f: fn(&control::WorkerStats) -> u64| match (&a.node, &b.node) {
            (Some(x), Some(y)) => {
                let sum = |n: &control::NodeStats| n.workers.iter().map(f).sum::<u64>();
                Some(sum(y).saturating_sub(sum(x)))
            }
            _ => None,
        };
        Self {
            sfu_rtp_in: node_delta(|w| w.rtp_in),
            sfu_send_errors: node_delta(|w| w.udp_send_errors),
            sfu_backlog_drops: node_delta(|w| w.udp_backlog_drops),
            secs: b.at.duration_since(a.at).as_secs_f64().max(1e-3),
            forwarded,
            bytes_out,
            dp_cpu_secs: delta(a.dp_cpu, b.dp_cpu).unwrap_or(0.0),
            dp_core_secs: delta(a.dp_core, b.dp_core),
            bench_cpu_secs: delta(a.bench_cpu, b.bench_cpu).unwrap_or(0.0),
            sent: b.w.sent.saturating_sub(a.w.sent),
            expected: b.w.expected.saturating_sub(a.w.expected),
            received,
            lost,
            hist,
            syscalls,
        }
    }

    pub(super) fn forwarded_pps(&self) -> f64 {
        self.forwarded as f64 / self.secs
    }

    pub(super) fn loss_percent(&self) -> f64 {
        if self.received + self.lost == 0 {
            return 0.0;
        }
        self.lost as f64 * 100.0 / (self.received + self.lost) as f64
    }

    /// CPU µs per forwarded packet for `cpu_secs` of CPU.
    pub(super) fn per_packet_us(&self, cpu_secs: f64) -> Option<f64> {
        (self.forwarded > 0).then(|| cpu_secs * 1e6 / self.forwarded as f64)
    }

    /// The per-second sample of this interval, `t` seconds into the window.
    pub(super) fn sample(&self, t: f64) -> Sample {
        Sample {
            t,
            forwarded_pps: self.forwarded_pps(),
            egress_mbps: self.bytes_out as f64 * 8.0 / self.secs / 1e6,
            dataplane_cpu_percent: self.dp_cpu_secs / self.secs * 100.0,
            dataplane_core_busy_percent: self.dp_core_secs.map(|c| c / self.secs * 100.0),
            bench_cpu_percent: self.bench_cpu_secs / self.secs * 100.0,
            latency_p50_us: self.hist.quantile(0.5),
            latency_p99_us: self.hist.quantile(0.99),
            received_pps: self.received as f64 / self.secs,
        }
    }
}
