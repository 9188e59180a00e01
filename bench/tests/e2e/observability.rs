//! What the service reports: the load generator's pipeline end to end (delivery, counters,
//! latency, output files) and the metrics endpoints (well-formed exposition, counters that move
//! under load, signaling's metrics only on its own listener).

use std::time::{Duration, Instant};

use bench::client::{self, Media};
use bench::harness::{Node, http_get};
use serde_json::Value;

use super::{T, join, video_from};

/// The load generator's smoke scenario: everyone joins and connects, packets are delivered,
/// counted and measured, and the outputs (JSON, plots, table) are written.
#[test]
fn load_generator_smoke_pipeline_works() {
    use bench::load::{self, Scenario, Target};
    let node = Node::start(1, &[]).expect("node starts");
    let target = Target {
        sfu: load::Sfu::Ours,
        ws_urls: vec![node.ws_url(0)],
        dataplane_pid: node.dataplane.pid(),
        control_socket: Some(node.control_socket.clone()),
        bind_ip: std::net::Ipv4Addr::LOCALHOST.into(),
        dataplane_cpu: None,
    };
    // Light subscribers (the default: RTP counted from headers, 1 in N decrypted) and full
    // str0m subscribers must agree: everything delivered, nothing lost, latency measured.
    let mut runs = Vec::new();
    for full in [false, true] {
        let mut sc = Scenario::preset("smoke").expect("preset");
        sc.duration_secs = 2.0;
        sc.full_receivers = full;
        sc.sample_every = 4;
        let r = load::run(&target, &sc, None, false).expect("run");
        assert_eq!((r.joined, r.connected), (6, 6), "{r:?}");
        assert_eq!(r.receivers, if full { "full" } else { "light" });
        // Not a speed test: the pipeline delivers, counts and measures.
        assert!(
            (0.95..=1.05).contains(&r.delivery_ratio),
            "delivery ratio {} with {} receivers ({r:?})",
            r.delivery_ratio,
            r.receivers
        );
        assert_eq!(r.lost_packets, 0, "{} receivers: {r:?}", r.receivers);
        assert!(r.forwarded_pps > 100.0 && r.received_packets > 0);
        assert!(r.latency_p50_us.is_some() && r.dataplane_cpu_us_per_forwarded_packet.is_some());
        assert!(r.join_to_first_rtp_p50_ms.is_some());
        assert!(r.bench_cpu_us_per_forwarded_packet.is_some());
        assert_eq!(r.sfu_rtp_in.map(|n| n > 0), Some(true));
        runs.push(r);
    }
    let r = runs.remove(0);
    let dir = bench::harness::TempDir::new("sfu-load-smoke").expect("dir");
    let files = load::write_outputs(&dir.0, &r).expect("outputs");
    assert_eq!(files.len(), 3);
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(&files[0]).expect("json")).expect("parse");
    assert_eq!(json["scenario"], "smoke");
    assert!(
        std::fs::read_to_string(&files[1])
            .expect("svg")
            .contains("<svg")
    );
    let table = load::table(&[&r]);
    assert!(table.contains("delivery ratio"), "{table}");
}

/// Parse Prometheus/OpenMetrics text: every sample line is `name{labels} value`; returns
/// (series, value) pairs. Panics on a malformed line.
fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    assert!(text.ends_with("# EOF\n"), "exposition must end with # EOF");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("malformed line {l:?}"));
            let name_end = series.find('{').unwrap_or(series.len());
            let name = &series[..name_end];
            assert!(
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "bad metric name in {l:?}"
            );
            if name_end < series.len() {
                assert!(series.ends_with('}'), "unterminated labels in {l:?}");
            }
            (
                series.to_string(),
                value
                    .parse::<f64>()
                    .unwrap_or_else(|_| panic!("bad value in {l:?}")),
            )
        })
        .collect()
}

fn metric(samples: &[(String, f64)], series: &str) -> f64 {
    samples
        .iter()
        .filter(|(s, _)| s == series)
        .map(|(_, v)| *v)
        .sum()
}

/// Both metrics endpoints parse; the dataplane's counters move under load and its gauges match
/// the call; signaling's metrics are only on its loopback listener.
#[test]
fn metrics_endpoints_parse_and_counters_move_under_load() {
    let node = Node::start(1, &[]).expect("node starts");
    let epoch = Instant::now();
    let mut cs = vec![
        join(&node, 0, "metrics", "m1", Some(Media::default()), epoch),
        join(&node, 0, "metrics", "m2", Some(Media::default()), epoch),
    ];
    assert!(
        client::run(&mut cs, T, |cs| video_from(&cs[0], &cs[1]) > 30
            && video_from(&cs[1], &cs[0]) > 30)
        .expect("run")
    );
    let scrape = |addr| {
        let (status, body) = http_get(addr, "/metrics").expect("scrape");
        assert_eq!(status, 200);
        parse_metrics(&body)
    };
    let dp0 = scrape(node.metrics_addr);
    client::run(&mut cs, Duration::from_millis(2500), |_| false).expect("run");
    let dp1 = scrape(node.metrics_addr);
    for counter in [
        "sfu_rtp_forwarded_total{worker=\"0\"}",
        "sfu_datagrams_received_total{worker=\"0\"}",
        "sfu_bytes_sent_total{worker=\"0\"}",
    ] {
        assert!(
            metric(&dp1, counter) > metric(&dp0, counter),
            "{counter} did not move: {} → {}",
            metric(&dp0, counter),
            metric(&dp1, counter)
        );
    }
    assert_eq!(metric(&dp1, "sfu_participants"), 2.0);
    assert_eq!(metric(&dp1, "sfu_rooms"), 1.0);
    assert_eq!(metric(&dp1, "sfu_tracks_in"), 4.0);
    assert_eq!(
        metric(&dp1, "sfu_join_seconds_count"),
        2.0,
        "both participants connected"
    );
    assert!(metric(&dp1, "sfu_capacity_remaining") > 0.0);
    let busy = metric(&dp1, "sfu_worker_busy_ratio{worker=\"0\"}");
    assert!(
        (0.0..=1.0).contains(&busy) && busy > 0.0,
        "busy ratio {busy}"
    );
    assert_eq!(
        http_get(node.metrics_addr, "/healthz").expect("healthz").0,
        200
    );

    // Signaling's metrics are on its own (loopback) listener, never on the public port.
    assert_eq!(
        http_get(node.signaling[0].0, "/metrics").expect("GET").0,
        404
    );
    let sig = scrape(node.signaling_metrics[0]);
    assert_eq!(metric(&sig, "sfu_signaling_connections"), 2.0);
    assert_eq!(metric(&sig, "sfu_signaling_sessions"), 2.0);
    assert_eq!(
        metric(&sig, "sfu_signaling_joins_total{result=\"ok\"}"),
        2.0
    );
    assert_eq!(metric(&sig, "sfu_signaling_join_seconds_count"), 2.0);
    assert!(metric(&sig, "sfu_signaling_messages_total{type=\"answer\"}") >= 2.0);
}
