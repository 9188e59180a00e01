//! What a load run leaves behind: the results as JSON, SVG plots of the per-second samples, and
//! the side-by-side table printed at the end.

use std::path::{Path, PathBuf};

use super::{Results, Sample};

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
    row("dataplane core busy % (softirq incl.)", &|r| {
        opt(r.dataplane_core_busy_percent, 1)
    });
    row("dataplane core µs / fwd packet", &|r| {
        opt(r.dataplane_core_us_per_forwarded_packet, 2)
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
    row("bench CPU µs / fwd packet", &|r| {
        opt(r.bench_cpu_us_per_forwarded_packet, 2)
    });
    row("receivers", &|r| r.receivers.clone());
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

/// The capacity ramp of a `--ramp` run as a table (one row per step), `None` for other runs.
pub fn capacity_table(r: &Results) -> Option<String> {
    let c = r.capacity.as_ref()?;
    let f = |v: Option<f64>, d: usize| v.map_or("-".to_string(), |v| format!("{v:.d$}"));
    let mut out = format!(
        "capacity ramp ({} {}): {:>6} {:>10} {:>10} {:>7} {:>7} {:>8} {:>8} {:>8} {:>15} {:>7}\n",
        r.sfu,
        r.scenario,
        "scale",
        "offered",
        "fwd pps",
        "CPU %",
        "core %",
        "µs/pkt",
        "core µs",
        "loss %",
        "p50/p99 µs",
        "bench %"
    );
    for s in &c.steps {
        out += &format!(
            "{:>6.2} {:>10.0} {:>10.0} {:>7.1} {:>7} {:>8} {:>8} {:>8.3} {:>15} {:>7.1} {}\n",
            s.scale,
            s.offered_pps,
            s.forwarded_pps,
            s.dataplane_cpu_percent,
            f(s.dataplane_core_busy_percent, 1),
            f(s.cpu_us_per_forwarded_packet, 2),
            f(s.core_us_per_forwarded_packet, 2),
            s.loss_percent,
            format!(
                "{}/{}",
                s.latency_p50_us.map_or("-".into(), |v| v.to_string()),
                s.latency_p99_us.map_or("-".into(), |v| v.to_string())
            ),
            s.bench_cpu_percent,
            if s.passed { "pass" } else { "FAIL" }
        );
    }
    out += &format!(
        "max forwarded {:.0} pps (≈ {} pps per dataplane core at 100 %); stopped: {}\n",
        c.max_forwarded_pps,
        f(c.per_core_pps, 0),
        c.stopped_because
    );
    Some(out)
}
