//! Loopback integration with the real binaries: `dataplane` + `signaling` processes, synthetic
//! str0m peers joining over the real WebSocket protocol and sending media over real UDP.
//!
//! Needs the binaries built first (`cargo build --bins`; `./scripts/test` does it).

use std::time::{Duration, Instant};

use bench::client::{self, Client, Media};
use bench::harness::{Node, http_get};
use serde_json::{Value, json};
use str0m::media::MediaKind;

const T: Duration = Duration::from_secs(15);

fn join(
    node: &Node,
    sig: usize,
    room: &str,
    name: &str,
    media: Option<Media>,
    epoch: Instant,
) -> Client {
    Client::join(&node.ws_url(sig), room, name, media, epoch, T)
        .unwrap_or_else(|e| panic!("{name} failed to join: {e:#}\n{}", node.logs()))
}

fn video_from(c: &Client, other: &Client) -> u64 {
    c.peer.received.packets_from(&other.id, MediaKind::Video)
}

fn audio_from(c: &Client, other: &Client) -> u64 {
    c.peer.received.packets_from(&other.id, MediaKind::Audio)
}

fn chat(c: &Client) -> Vec<Value> {
    c.peer
        .received
        .chat
        .iter()
        .filter_map(|m| serde_json::from_str(m).ok())
        .collect()
}

#[test]
fn three_synthetic_peers_exchange_media_and_chat_through_the_real_binaries() {
    let node = Node::start(2, &[]).expect("node starts");
    let epoch = Instant::now();
    let mut cs = vec![
        join(&node, 0, "e2e", "alice", Some(Media::default()), epoch),
        join(&node, 0, "e2e", "bob", Some(Media::default()), epoch),
        join(&node, 0, "e2e", "carol", Some(Media::default()), epoch),
    ];
    let ok = client::run(&mut cs, T, |cs| {
        cs.iter().all(|a| {
            cs.iter()
                .filter(|b| b.id != a.id)
                .all(|b| video_from(a, b) > 60 && audio_from(a, b) > 30)
        })
    })
    .expect("run");
    assert!(ok, "media did not flow between all three:\n{}", node.logs());
    for a in &cs {
        assert_eq!(
            a.peer.received.packets_from(&a.id, MediaKind::Video),
            0,
            "never your own media"
        );
        assert_eq!(
            a.others.len(),
            2,
            "{} sees two others: {:?}",
            a.id,
            a.others
        );
        for t in a.peer.received.tracks.values() {
            assert_eq!(t.lost, 0, "no gaps on loopback: {t:?}");
        }
    }

    // Chat: a broadcast and a whisper.
    let (bob, carol) = (cs[1].id.clone(), cs[2].id.clone());
    assert!(
        client::run(&mut cs, T, |cs| cs.iter().all(|c| c.peer.chat_open())).expect("run"),
        "chat channels open"
    );
    assert!(cs[0].peer.send_chat(None, "hello everyone"));
    assert!(cs[0].peer.send_chat(Some(&bob), "just for bob"));
    let ok = client::run(&mut cs, T, |cs| {
        chat(&cs[1]).len() >= 2 && !chat(&cs[2]).is_empty() && !chat(&cs[0]).is_empty()
    })
    .expect("run");
    assert!(ok, "chat not delivered");
    client::run(&mut cs, Duration::from_millis(300), |_| false).expect("run");
    let (a, b, c) = (chat(&cs[0]), chat(&cs[1]), chat(&cs[2]));
    assert_eq!(
        b.iter()
            .map(|m| m["text"].as_str().unwrap_or(""))
            .collect::<Vec<_>>(),
        ["hello everyone", "just for bob"]
    );
    assert_eq!(b[1]["to"], bob.as_str());
    assert_eq!(b[0]["name"], "alice");
    assert_eq!(
        c.iter()
            .map(|m| m["text"].as_str().unwrap_or(""))
            .collect::<Vec<_>>(),
        ["hello everyone"],
        "carol never sees the whisper"
    );
    assert_eq!(a.len(), 1, "alice gets the whisper echo only: {a:?}");
    assert_eq!(a[0]["to"], bob.as_str());

    // carol leaves: the others are told and stop receiving her.
    cs[2].leave().expect("leave");
    let ok = client::run(&mut cs, T, |cs| {
        cs[..2].iter().all(|c| {
            c.messages
                .iter()
                .any(|m| m["type"] == "participant_left" && m["participant_id"] == carol.as_str())
        })
    })
    .expect("run");
    assert!(ok, "participant_left not delivered");
    client::run(&mut cs, Duration::from_millis(500), |_| false).expect("run");
    let before: Vec<u64> = cs[..2].iter().map(|c| video_from(c, &cs[2])).collect();
    client::run(&mut cs, Duration::from_secs(1), |_| false).expect("run");
    let after: Vec<u64> = cs[..2].iter().map(|c| video_from(c, &cs[2])).collect();
    assert_eq!(before, after, "no media from carol after she left");
}

#[test]
fn media_survives_signaling_restart_and_a_second_signaling_instance() {
    let mut node = Node::start(1, &[]).expect("node starts");
    let epoch = Instant::now();
    let mut cs = vec![
        join(&node, 0, "restart", "a", Some(Media::default()), epoch),
        join(&node, 0, "restart", "b", Some(Media::default()), epoch),
    ];
    assert!(
        client::run(&mut cs, T, |cs| video_from(&cs[0], &cs[1]) > 30
            && video_from(&cs[1], &cs[0]) > 30)
        .expect("run")
    );

    // A second signaling process connects to the same control socket: nothing is disturbed.
    node.add_signaling().expect("second signaling");
    let before = (video_from(&cs[0], &cs[1]), video_from(&cs[1], &cs[0]));
    client::run(&mut cs, Duration::from_secs(1), |_| false).expect("run");
    assert!(
        video_from(&cs[0], &cs[1]) > before.0 + 30 && video_from(&cs[1], &cs[0]) > before.1 + 30
    );

    // The first signaling process crashes: media keeps flowing (the dataplane owns the sessions).
    node.signaling[0].1.kill();
    client::run(&mut cs, Duration::from_millis(300), |_| false).expect("run");
    assert!(
        cs.iter().all(|c| !c.ws_open()),
        "websockets to the dead signaling are closed"
    );
    let before = (video_from(&cs[0], &cs[1]), video_from(&cs[1], &cs[0]));
    client::run(&mut cs, Duration::from_secs(3), |_| false).expect("run");
    let after = (video_from(&cs[0], &cs[1]), video_from(&cs[1], &cs[0]));
    assert!(
        after.0 > before.0 + 60 && after.1 > before.1 + 60,
        "media stopped after the signaling crash: {before:?} → {after:?}\n{}",
        node.logs()
    );

    // New joins work through the surviving instance, into the same room, and receive everyone.
    // (a and b lost their signaling, so they cannot renegotiate to receive c until they resume
    // their session through another instance.)
    let c = join(&node, 1, "restart", "c", Some(Media::default()), epoch);
    assert_eq!(c.others.len(), 2, "{:?}", c.others);
    cs.push(c);
    let ok = client::run(&mut cs, T, |cs| {
        video_from(&cs[2], &cs[0]) > 30 && video_from(&cs[2], &cs[1]) > 30
    })
    .expect("run");
    assert!(ok, "{}", node.logs());
}

#[test]
fn bad_input_over_websocket_gets_clear_errors() {
    let node = Node::start(1, &[]).expect("node starts");
    let addr = node.signaling[0].0;
    // The page and health endpoint are served.
    let (status, body) = http_get(addr, "/").expect("GET /");
    assert_eq!(status, 200);
    assert!(
        body.contains("<html") || body.contains("<!DOCTYPE") || body.contains("<!doctype"),
        "{body}"
    );
    assert_eq!(http_get(addr, "/healthz").expect("healthz").0, 200);
    assert_eq!(http_get(addr, "/nope").expect("404").0, 404);
    assert_eq!(http_get(addr, "/ws").expect("426").0, 426);

    let url = node.ws_url(0);
    let (mut ws, _) = tungstenite::connect(&url).expect("connect");
    let send = |ws: &mut tungstenite::WebSocket<_>, text: &str| {
        ws.send(tungstenite::Message::text(text.to_string()))
            .expect("send")
    };
    let next = |ws: &mut tungstenite::WebSocket<
        tungstenite::stream::MaybeTlsStream<std::net::TcpStream>,
    >|
     -> Value {
        loop {
            if let tungstenite::Message::Text(t) = ws.read().expect("read") {
                return serde_json::from_str(t.as_str()).expect("json");
            }
        }
    };
    for bad in [
        "not json",
        r#"{"type":"dance"}"#,
        r#"{"type":"offer","sdp":"v=0"}"#,
        r#"{"type":"join","room":"has space","name":"x"}"#,
        r#"{"type":"join","room":"r","name":""}"#,
    ] {
        send(&mut ws, bad);
        let v = next(&mut ws);
        assert_eq!(v["type"], "error", "{bad} → {v}");
        assert_eq!(v["code"], "bad_request", "{bad} → {v}");
    }
    ws.send(tungstenite::Message::Binary(vec![1, 2, 3].into()))
        .expect("send");
    assert_eq!(next(&mut ws)["code"], "bad_request");
    // Still usable: join, then an invalid SDP offer is an error, not a crash.
    send(
        &mut ws,
        &json!({"type":"join","room":"bad","name":"<img src=x onerror=alert(1)>"}).to_string(),
    );
    let joined = next(&mut ws);
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(
        joined["participant"]["name"], "<img src=x onerror=alert(1)>",
        "names are data, passed through verbatim"
    );
    send(&mut ws, r#"{"type":"offer","sdp":"garbage"}"#);
    let v = next(&mut ws);
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str()),
        (Some("error"), Some("bad_request")),
        "{v}"
    );
    send(&mut ws, r#"{"type":"answer","sdp":"garbage"}"#);
    assert_eq!(next(&mut ws)["code"], "bad_request");

    // An oversize frame closes the connection with 1009.
    let huge = format!(r#"{{"type":"offer","sdp":"{}"}}"#, "x".repeat(1_100_000));
    let _ = ws.send(tungstenite::Message::text(huge));
    let deadline = Instant::now() + T;
    let mut code = None;
    while Instant::now() < deadline {
        match ws.read() {
            Ok(tungstenite::Message::Close(Some(f))) => {
                code = Some(u16::from(f.code));
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert_eq!(code, Some(1009));

    // The servers are still fine: a new client joins and gets media from a peer.
    let epoch = Instant::now();
    let mut cs = vec![
        join(&node, 0, "after", "x", Some(Media::default()), epoch),
        join(&node, 0, "after", "y", None, epoch),
    ];
    assert!(
        client::run(&mut cs, T, |cs| video_from(&cs[1], &cs[0]) > 30).expect("run"),
        "{}",
        node.logs()
    );
}

fn read_json(
    ws: &mut tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>,
) -> Value {
    loop {
        if let tungstenite::Message::Text(t) = ws.read().expect("read") {
            return serde_json::from_str(t.as_str()).expect("json");
        }
    }
}

#[test]
fn join_tokens_are_enforced_when_a_secret_is_configured() {
    const SECRET: &str = "test-secret-0123456789abcdef";
    let node = Node::start_with(1, &[], &["--jwt-secret", SECRET]).expect("node starts");
    let mint = |args: &[&str]| -> String {
        let out = std::process::Command::new(bench::harness::binary("signaling").expect("binary"))
            .args(["token", "--secret"])
            .args(args)
            .output()
            .expect("mint");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf8")
            .trim()
            .to_string()
    };
    let good = mint(&[
        SECRET,
        "--room",
        "secure",
        "--identity",
        "u1",
        "--name",
        "Token Name",
    ]);
    let foreign_room = mint(&[SECRET, "--room", "elsewhere", "--identity", "u1"]);
    let wrong_secret = mint(&[
        "another-secret-0123456789abcdef",
        "--room",
        "secure",
        "--identity",
        "u1",
    ]);
    let expired = mint(&[
        SECRET,
        "--room",
        "secure",
        "--identity",
        "u1",
        "--ttl-secs",
        "0",
    ]);
    std::thread::sleep(Duration::from_secs(7)); // past the 5 s leeway

    let (mut ws, _) = tungstenite::connect(node.ws_url(0)).expect("connect");
    for (token, what) in [
        (None, "missing"),
        (Some(&foreign_room), "foreign room"),
        (Some(&wrong_secret), "wrong secret"),
        (Some(&expired), "expired"),
        (Some(&"garbage".to_string()), "garbage"),
    ] {
        let mut m = json!({"type":"join","room":"secure","name":"n"});
        if let Some(t) = token {
            m["token"] = json!(t);
        }
        ws.send(tungstenite::Message::text(m.to_string()))
            .expect("send");
        let v = read_json(&mut ws);
        assert_eq!(
            (v["type"].as_str(), v["code"].as_str()),
            (Some("error"), Some("unauthorized")),
            "{what}: {v}"
        );
    }
    ws.send(tungstenite::Message::text(
        json!({"type":"join","room":"secure","name":"ignored","token":good}).to_string(),
    ))
    .expect("send");
    let v = read_json(&mut ws);
    assert_eq!(v["type"], "joined", "{v}");
    assert_eq!(
        v["participant"]["name"], "Token Name",
        "the token's name wins"
    );
}

#[test]
fn flooding_client_is_rate_limited_then_disconnected() {
    let node = Node::start(1, &[]).expect("node starts");
    let (mut ws, _) = tungstenite::connect(node.ws_url(0)).expect("connect");
    // 400 messages at once: the first burst is processed, then rate_limited errors, then 1008.
    for _ in 0..400 {
        if ws
            .send(tungstenite::Message::text(
                r#"{"type":"candidate","candidate":"x"}"#,
            ))
            .is_err()
        {
            break;
        }
    }
    let mut limited = 0;
    let mut close = None;
    let deadline = Instant::now() + T;
    while Instant::now() < deadline {
        match ws.read() {
            Ok(tungstenite::Message::Text(t)) => {
                let v: Value = serde_json::from_str(t.as_str()).expect("json");
                if v["code"] == "rate_limited" {
                    limited += 1;
                }
            }
            Ok(tungstenite::Message::Close(f)) => {
                close = f.map(|f| u16::from(f.code));
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert!(limited >= 1, "rate_limited errors: {limited}");
    assert_eq!(
        close,
        Some(1008),
        "a flooding client is closed with policy violation"
    );
    // Others are unaffected.
    let (mut ws2, _) = tungstenite::connect(node.ws_url(0)).expect("connect");
    ws2.send(tungstenite::Message::text(
        r#"{"type":"join","room":"calm","name":"c"}"#,
    ))
    .expect("send");
    assert_eq!(read_json(&mut ws2)["type"], "joined");
}

#[test]
fn turn_credentials_from_joined_are_accepted_by_coturn() {
    assert!(
        bench::harness::Turn::installed(),
        "coturn is required: apt-get install coturn, or run ./scripts/test"
    );
    const SECRET: &str = "turn-test-secret";
    let dir = bench::harness::TempDir::new("sfu-turn").expect("dir");
    let coturn = bench::harness::Turn::start(&dir.0, SECRET).expect("coturn");
    let turn_url = coturn.url.clone();
    let node = Node::start_with(1, &[], &["--turn-url", &turn_url, "--turn-secret", SECRET])
        .expect("node");
    let (mut ws, _) = tungstenite::connect(node.ws_url(0)).expect("connect");
    ws.send(tungstenite::Message::text(
        r#"{"type":"join","room":"turn","name":"t"}"#,
    ))
    .expect("send");
    let joined = read_json(&mut ws);
    let turn = joined["ice_servers"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["urls"][0] == turn_url.as_str()))
        .cloned()
        .unwrap_or_else(|| panic!("no TURN entry in {joined}"));
    let user = turn["username"].as_str().expect("username").to_string();
    let pass = turn["credential"].as_str().expect("credential").to_string();
    assert!(
        user.ends_with(joined["participant"]["id"].as_str().expect("id")),
        "{user}"
    );
    std::thread::sleep(Duration::from_millis(500)); // coturn startup
    let uclient = |pass: &str| -> String {
        let out = std::process::Command::new("turnutils_uclient")
            .args([
                "-y",
                "-u",
                &user,
                "-w",
                pass,
                "-p",
                &coturn.port.to_string(),
                "-n",
                "5",
                "-m",
                "1",
                "-l",
                "100",
                "127.0.0.1",
            ])
            .output()
            .expect("turnutils_uclient");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let ok = uclient(&pass);
    assert!(
        ok.contains("Total lost packets 0") && !ok.contains("Cannot complete Allocation"),
        "coturn refused our credentials:\n{ok}"
    );
    let bad = uclient("AAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    assert!(
        bad.contains("Cannot complete Allocation"),
        "coturn accepted a forged credential:\n{bad}"
    );
}

#[test]
fn load_generator_smoke_pipeline_works() {
    use bench::load::{self, Scenario, Target};
    let node = Node::start(1, &[]).expect("node starts");
    let target = Target {
        sfu: load::Sfu::Ours,
        ws_urls: vec![node.ws_url(0)],
        dataplane_pid: node.dataplane.pid(),
        control_socket: Some(node.control_socket.clone()),
    };
    let mut sc = Scenario::preset("smoke").expect("preset");
    sc.duration_secs = 2.0;
    let r = load::run(&target, &sc, None, false).expect("run");
    assert_eq!((r.joined, r.connected), (6, 6), "{r:?}");
    // Not a speed test: the pipeline delivers, counts and measures.
    assert!(
        r.delivery_ratio > 0.9,
        "delivery ratio {} ({r:?})",
        r.delivery_ratio
    );
    assert!(r.forwarded_pps > 100.0 && r.received_packets > 0);
    assert!(r.latency_p50_us.is_some() && r.dataplane_cpu_us_per_forwarded_packet.is_some());
    assert!(r.join_to_first_rtp_p50_ms.is_some());
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
