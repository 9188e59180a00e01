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
        let offered_pps = d.expected as f64 / d.secs;
        let loss = d.loss_percent();
        let p99 = d.hist.quantile(0.99);
        Self {
            scale,
            offered_pps,
            forwarded_pps: d.forwarded_pps(),
            dataplane_cpu_percent: d.dp_cpu_secs / d.secs * 100.0,
            dataplane_core_busy_percent: d.dp_core_secs.map(|c| c / d.secs * 100.0),
            cpu_us_per_forwarded_packet: d.per_packet_us(d.dp_cpu_secs),
            core_us_per_forwarded_packet: d.dp_core_secs.and_then(|c| d.per_packet_us(c)),
            loss_percent: loss,
            latency_p50_us: d.hist.quantile(0.5),
            latency_p99_us: p99,
            bench_cpu_percent: d.bench_cpu_secs / d.secs * 100.0,
            passed: loss <= MAX_LOSS_PERCENT && p99.is_none_or(|p| p <= MAX_P99_US),
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
        let passed = step.passed;
        let saturated = step.load_percent() >= 97.0;
        let generator_bound = step.bench_cpu_percent >= 95.0 * threads as f64;
        if passed {
            cap.max_forwarded_pps = step.forwarded_pps;
            cap.per_core_pps = (step.load_percent() > 1.0)
                .then(|| step.forwarded_pps * 100.0 / step.load_percent().min(100.0));
        }
        cap.steps.push(step);
        let why = if !passed {
            Some("loss above 0.1 % or p99 above 20 ms")
        } else if saturated {
            Some("dataplane CPU saturated")
        } else if generator_bound {
            Some("load generator saturated before the dataplane")
        } else if s * plan.factor > plan.max_scale {
            Some("maximum scale reached")
        } else {
            None
        };
        if let Some(why) = why {
            cap.stopped_because = why.into();
            break;
        }
        s *= plan.factor;
    }
    scale.store(100, Ordering::Relaxed);
    let nearest = |target: f64| {
        cap.steps
            .iter()
            .enumerate()
            .min_by(|a, b| {
                (a.1.load_percent() - target)
                    .abs()
                    .total_cmp(&(b.1.load_percent() - target).abs())
            })
            .map(|(i, _)| i)
    };
    cap.at_50_percent = nearest(50.0);
    cap.at_80_percent = nearest(80.0);
    cap
}
