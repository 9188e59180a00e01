//! The capacity ramp (`bench load --ramp`): after the joins, raise the offered load in steps
//! (every publisher's video frames carry `scale` times their packets, audio ticks send `scale`
//! times the packets) and measure each step as a window of its own, until the SFU fails a
//! criterion: loss above 0.1 %, SFU-added latency p99 above 20 ms, or its CPU saturated. The
//! last step that passed is the capacity. A ramp also stops, and says so, when the generator
//! saturates first: the steps after that would measure the generator, not the SFU.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::meter::{Delta, Meter};
use super::{Sample, window};
use crate::client::RateScale;

/// How to ramp.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ramp {
    /// Seconds measured per step (after a settling second).
    pub step_secs: f64,
    /// Each step offers this many times the load of the one before.
    pub factor: f64,
    /// Stop after this multiple of the scenario's load.
    pub max_scale: f64,
    /// The first step's multiple (below 1 only thins audio: video frames keep ≥ 1 packet).
    #[serde(default = "one")]
    pub start: f64,
}

fn one() -> f64 {
    1.0
}

impl Default for Ramp {
    fn default() -> Self {
        Self {
            step_secs: 5.0,
            factor: 1.5,
            max_scale: 64.0,
            start: 1.0,
        }
    }
}

/// One step of the ramp.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CapacityStep {
    /// Offered load relative to the scenario (1.0 = as written).
    pub scale: f64,
    /// Packets/s the generator's publishers sent × the subscribers each should reach.
    pub offered_pps: f64,
    pub forwarded_pps: f64,
    pub dataplane_cpu_percent: f64,
    pub dataplane_core_busy_percent: Option<f64>,
    pub cpu_us_per_forwarded_packet: Option<f64>,
    pub core_us_per_forwarded_packet: Option<f64>,
    pub loss_percent: f64,
    pub latency_p50_us: Option<u64>,
    pub latency_p99_us: Option<u64>,
    pub bench_cpu_percent: f64,
    /// Loss ≤ 0.1 %, p99 ≤ 20 ms and delivery kept up with the offer.
    pub passed: bool,
}

/// A ramp's verdict.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Capacity {
    pub steps: Vec<CapacityStep>,
    /// Forwarded packets/s of the last step that passed.
    pub max_forwarded_pps: f64,
    /// That rate extrapolated to 100 % of one dataplane core (÷ its CPU share at that step).
    pub per_core_pps: Option<f64>,
    /// Why the ramp stopped.
    pub stopped_because: String,
    /// The steps nearest 50 % and 80 % dataplane CPU (indexes into `steps`).
    pub at_50_percent: Option<usize>,
    pub at_80_percent: Option<usize>,
}

const MAX_LOSS_PERCENT: f64 = 0.1;
const MAX_P99_US: u64 = 20_000;

impl CapacityStep {
    fn from_delta(scale: f64, d: &Delta) -> Self {
        let sample = d.sample(0.0);
        let loss = d.loss_percent();
        Self {
            scale,
            offered_pps: d.expected as f64 / d.secs,
            forwarded_pps: sample.forwarded_pps,
            dataplane_cpu_percent: sample.dataplane_cpu_percent,
            dataplane_core_busy_percent: sample.dataplane_core_busy_percent,
            cpu_us_per_forwarded_packet: d.per_packet_us(d.dp_cpu_secs),
            core_us_per_forwarded_packet: d.dp_core_secs.and_then(|c| d.per_packet_us(c)),
            loss_percent: loss,
            latency_p50_us: sample.latency_p50_us,
            latency_p99_us: sample.latency_p99_us,
            bench_cpu_percent: sample.bench_cpu_percent,
            passed: loss <= MAX_LOSS_PERCENT
                && sample.latency_p99_us.is_none_or(|p| p <= MAX_P99_US),
        }
    }

    /// The dataplane's CPU share: its core's busy time when known, else its process CPU.
    fn load_percent(&self) -> f64 {
        self.dataplane_core_busy_percent
            .unwrap_or(self.dataplane_cpu_percent)
    }
}

/// Run the ramp on a joined, flowing run; `threads` is the generator's thread count (its CPU
/// ceiling is `threads × 100 %`).
pub(super) fn ramp(
    meter: &mut Meter,
    scale: &RateScale,
    plan: &Ramp,
    threads: usize,
    progress: bool,
    samples: &mut Vec<Sample>,
) -> Capacity {
    let origin = Instant::now();
    let mut cap = Capacity::default();
    let mut s = plan.start.max(0.01);
    loop {
        scale.store((s * 100.0).round() as u32, Ordering::Relaxed);
        std::thread::sleep(Duration::from_secs(1));
        let start = meter.snapshot();
        let end = window(meter, &start, plan.step_secs, origin, false, samples);
        let step = CapacityStep::from_delta(s, &Delta::between(&start, &end));
        if progress {
            eprintln!(
                "ramp ×{s:5.2}: offered {:8.0} fwd {:8.0} pps  dataplane CPU {:5.1}%{}  {} µs/pkt  loss {:.3}%  p50/p99 {}/{} µs  bench CPU {:5.1}%  {}",
                step.offered_pps,
                step.forwarded_pps,
                step.dataplane_cpu_percent,
                step.dataplane_core_busy_percent
                    .map_or(String::new(), |c| format!(" (core {c:5.1}%)")),
                step.cpu_us_per_forwarded_packet
                    .map_or("-".into(), |v| format!("{v:.2}")),
                step.loss_percent,
                step.latency_p50_us.map_or("-".into(), |v| v.to_string()),
                step.latency_p99_us.map_or("-".into(), |v| v.to_string()),
                step.bench_cpu_percent,
                if step.passed { "pass" } else { "FAIL" },
            );
        }
        let why = cap.record(step, threads, s * plan.factor <= plan.max_scale);
        if let Some(why) = why {
            cap.stopped_because = why.into();
            break;
        }
        s *= plan.factor;
    }
    scale.store(100, Ordering::Relaxed);
    cap.finish();
    cap
}

impl Capacity {
    /// Add a measured step; the reason to stop the ramp after it, if any. `threads` is the
    /// generator's thread count, `more` whether the next step is within the maximum scale.
    fn record(&mut self, step: CapacityStep, threads: usize, more: bool) -> Option<&'static str> {
        let load = step.load_percent();
        let why = if !step.passed {
            Some("loss above 0.1 % or p99 above 20 ms")
        } else if load >= 97.0 {
            Some("dataplane CPU saturated")
        } else if step.bench_cpu_percent >= 95.0 * threads as f64 {
            Some("load generator saturated before the dataplane")
        } else if !more {
            Some("maximum scale reached")
        } else {
            None
        };
        if step.passed {
            self.max_forwarded_pps = step.forwarded_pps;
            self.per_core_pps = (load > 1.0).then(|| step.forwarded_pps * 100.0 / load.min(100.0));
        }
        self.steps.push(step);
        why
    }

    /// Mark the steps nearest 50 % and 80 % dataplane load.
    fn finish(&mut self) {
        let nearest = |target: f64| {
            self.steps
                .iter()
                .enumerate()
                .min_by(|a, b| {
                    (a.1.load_percent() - target)
                        .abs()
                        .total_cmp(&(b.1.load_percent() - target).abs())
                })
                .map(|(i, _)| i)
        };
        self.at_50_percent = nearest(50.0);
        self.at_80_percent = nearest(80.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(load: f64, fwd: f64, loss: f64, p99_us: u64, bench: f64) -> CapacityStep {
        CapacityStep {
            forwarded_pps: fwd,
            dataplane_cpu_percent: load + 5.0,
            dataplane_core_busy_percent: Some(load),
            loss_percent: loss,
            latency_p99_us: Some(p99_us),
            bench_cpu_percent: bench,
            passed: loss <= MAX_LOSS_PERCENT && p99_us <= MAX_P99_US,
            ..CapacityStep::default()
        }
    }

    #[test]
    fn the_ramp_keeps_the_last_passing_step_and_says_why_it_stopped() {
        let mut cap = Capacity::default();
        assert_eq!(
            cap.record(step(20.0, 10_000.0, 0.0, 2_000, 10.0), 1, true),
            None
        );
        assert_eq!(
            cap.record(step(48.0, 30_000.0, 0.0, 5_000, 20.0), 1, true),
            None
        );
        assert_eq!(
            cap.record(step(79.0, 50_000.0, 0.05, 9_000, 30.0), 1, true),
            None
        );
        // Latency over the limit: the step fails and the capacity stays the previous step's.
        let why = cap.record(step(90.0, 60_000.0, 0.0, 25_000, 35.0), 1, true);
        assert_eq!(why, Some("loss above 0.1 % or p99 above 20 ms"));
        assert_eq!(cap.max_forwarded_pps, 50_000.0);
        // Per core: that rate over the core's busy share (79 %), not the process's (84 %).
        assert!((cap.per_core_pps.expect("per core") - 50_000.0 / 0.79).abs() < 1.0);
        cap.finish();
        assert_eq!((cap.at_50_percent, cap.at_80_percent), (Some(1), Some(2)));
    }

    #[test]
    fn saturation_of_either_side_or_the_scale_limit_ends_a_passing_ramp() {
        let mut cap = Capacity::default();
        assert_eq!(
            cap.record(step(98.0, 1.0, 0.0, 1_000, 10.0), 1, true),
            Some("dataplane CPU saturated")
        );
        assert_eq!(
            cap.record(step(50.0, 1.0, 0.0, 1_000, 96.0), 1, true),
            Some("load generator saturated before the dataplane")
        );
        assert_eq!(cap.record(step(50.0, 1.0, 0.0, 1_000, 96.0), 2, true), None);
        assert_eq!(
            cap.record(step(50.0, 1.0, 0.0, 1_000, 10.0), 1, false),
            Some("maximum scale reached")
        );
        // Loss alone fails a step too.
        assert_eq!(
            cap.record(step(50.0, 1.0, 0.2, 1_000, 10.0), 1, true),
            Some("loss above 0.1 % or p99 above 20 ms")
        );
    }
}
