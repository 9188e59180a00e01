//! Abuse limits, each at its bound: node capacity, joins per address, live sessions per token
//! (resumed ones included), the join deadline and ping liveness, the WebSocket cap (with
//! `/healthz` still reachable), connections per address, and frame floods with bounded memory.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bench::harness::{Node, Ws, http_get, mint_token, poll};
use serde_json::json;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

use super::{T, closed_within, connect, next_within, raw_join, send, wait_type, wait_websockets};

/// Defect 6: `--max-participants` was never enforced; one address could make thousands of joins;
/// one token any number of sessions.
#[test]
fn capacity_join_rate_and_token_sessions_are_enforced() {
    // Node capacity.
    let node = Node::start(1, &["--max-participants", "3"]).expect("node");
    let url = node.ws_url(0);
    let _held: Vec<_> = (0..3)
        .map(|i| raw_join(&url, "cap", &format!("p{i}")).0)
        .collect();
    let mut ws = connect(&url);
    send(&mut ws, json!({"type":"join","room":"cap","name":"p3"}));
    let (e, _) = wait_type(&mut ws, "error", T);
    let e = e.expect("refused");
    assert_eq!(e["code"], "unavailable", "{e}");
    assert!(e["message"].as_str().unwrap_or("").contains("full"), "{e}");
    drop(node);

    // Join rate per address: a burst of 5, then 1/s.
    let node = Node::start_with(1, &[], &["--join-rate-per-ip", "1"]).expect("node");
    let url = node.ws_url(0);
    let (mut ok, mut limited) = (0, 0);
    let mut keep = Vec::new();
    for i in 0..12 {
        let mut ws = connect(&url);
        send(
            &mut ws,
            json!({"type":"join","room":"rate","name":format!("j{i}")}),
        );
        match next_within(&mut ws, T) {
            Some(v) if v["type"] == "joined" => ok += 1,
            Some(v) if v["code"] == "rate_limited" => limited += 1,
            other => panic!("unexpected {other:?}"),
        }
        keep.push(ws);
    }
    assert!((5..=7).contains(&ok), "joins admitted: {ok}");
    assert!(limited >= 5, "joins refused: {limited}");
    drop(node);

    // Live sessions per token.
    const SECRET: &str = "hardening-secret-0123456789";
    let node = Node::start_with(
        1,
        &[],
        &["--jwt-secret", SECRET, "--max-sessions-per-token", "1"],
    )
    .expect("node");
    let token = mint_token(&["--secret", SECRET, "--room", "t", "--identity", "u"]).expect("mint");
    let url = node.ws_url(0);
    let join_t = |ws: &mut Ws| {
        send(
            ws,
            json!({"type":"join","room":"t","name":"n","token":token}),
        );
        next_within(ws, T).expect("answer")
    };
    let mut first = connect(&url);
    assert_eq!(join_t(&mut first)["type"], "joined");
    let mut second = connect(&url);
    let v = join_t(&mut second);
    assert_eq!(v["code"], "rate_limited", "{v}");
    drop(first);
    // Signaling removed the first connection, and its token slot with it.
    wait_websockets(&node, 1);
    let joined = join_t(&mut second);
    assert_eq!(joined["type"], "joined", "a slot freed up");
    // A resumed session still counts against its token (it used to count for nobody, so
    // join, resume elsewhere, join again went around the limit).
    let mut third = connect(&url);
    send(
        &mut third,
        json!({"type":"join","resume":joined["resume"].as_str().expect("resume token")}),
    );
    let v = next_within(&mut third, T).expect("answer");
    assert_eq!(
        (v["type"].as_str(), v["resumed"].as_bool()),
        (Some("joined"), Some(true)),
        "{v}"
    );
    // The connection that held the session is told and closed, and removed (the moment a
    // miscounted slot would be freed) before the next join.
    let (left, other) = wait_type(&mut second, "left", T);
    assert_eq!(
        left.map(|l| l["reason"].clone()),
        Some(json!("replaced")),
        "{other:?}"
    );
    assert!(
        closed_within(&mut second, T).is_some(),
        "old connection closed"
    );
    wait_websockets(&node, 1);
    let mut fourth = connect(&url);
    let v = join_t(&mut fourth);
    assert_eq!(
        v["code"], "rate_limited",
        "the resumed session holds the token's slot: {v}"
    );
}

/// Defect 7: idle WebSockets never timed out, and a full connection table locked out
/// `/healthz`. Also the per-address connection cap.
#[test]
fn idle_sockets_time_out_and_health_stays_reachable() {
    let node = Node::start_with(
        1,
        &["--ice-timeout-secs", "60"],
        &[
            "--join-timeout-secs",
            "1",
            "--ping-interval-secs",
            "1",
            "--max-connections",
            "4",
            "--max-connections-per-ip",
            "6",
        ],
    )
    .expect("node");
    let url = node.ws_url(0);
    // Join deadline: a socket that never joins is closed (1008).
    let mut idle = connect(&url);
    let t = Instant::now();
    assert_eq!(
        closed_within(&mut idle, Duration::from_secs(5)),
        Some(Some(1008))
    );
    assert!(t.elapsed() >= Duration::from_millis(900));
    // Liveness: a joined client that stops reading (never answers pings) is dropped. Not reading
    // for 8 s is the behaviour under test (any read would answer the pings), so this is a
    // sleep, not a wait for a condition.
    let (mut silent, _) = raw_join(&url, "live", "silent");
    std::thread::sleep(Duration::from_secs(8));
    assert!(
        closed_within(&mut silent, Duration::from_secs(2)).is_some(),
        "a client silent for 2 × ping + 5 s is dropped"
    );
    // A client that reads answers pings (tungstenite does it while reading) and stays.
    let (mut alive, _) = raw_join(&url, "live", "alive");
    assert_eq!(closed_within(&mut alive, Duration::from_secs(8)), None);

    // WebSocket cap reached: upgrades get 503, /healthz still answers.
    let held: Vec<Ws> = (0..3).map(|_| connect(&url)).collect();
    match tungstenite::connect(&url) {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 503),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a fifth WebSocket was accepted"),
    }
    assert_eq!(
        http_get(node.signaling[0].0, "/healthz")
            .expect("healthz")
            .0,
        200
    );
    drop(held);
    drop(alive);
    // Every WebSocket is gone (and with it its count against the address).
    wait_websockets(&node, 0);
    // Per-address cap: 6 connections from one address, the 7th is refused at accept. The kernel
    // queues the connections in the order they were made and signaling accepts (and counts)
    // them in that order, so the seventh is counted after the six: no wait is needed.
    let held: Vec<TcpStream> = (0..6)
        .map(|_| TcpStream::connect(node.signaling[0].0).expect("connect"))
        .collect();
    let mut seventh = TcpStream::connect(node.signaling[0].0).expect("tcp connect");
    seventh
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let _ = seventh.write_all(b"GET /healthz HTTP/1.1\r\n\r\n");
    let mut buf = [0u8; 64];
    assert!(
        match seventh.read(&mut buf) {
            Ok(0) => true,
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
            Ok(_) => false,
        },
        "the seventh connection from one address is closed without an answer (a timeout is not)"
    );
    // The six were accepted, not refused: one of them is answered.
    let mut first = &held[0];
    first
        .write_all(b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
        .expect("write");
    first
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut answer = String::new();
    let _ = first.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    drop(held);
}

/// Defect 3: unbounded memory from a client that floods frames (pings, binary) and never reads.
#[test]
fn frame_floods_are_rate_limited_and_memory_stays_bounded() {
    let node = Node::start(1, &[]).expect("node");
    let pid = node.signaling[0].1.pid().expect("pid");
    let rss = || bench::stats::rss_kib(pid).expect("signaling RSS");
    let before = rss();
    for frame in [Message::Ping(vec![].into()), Message::Binary(vec![].into())] {
        let s = TcpStream::connect(node.signaling[0].0).expect("connect");
        s.set_write_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let (ws, _) = tungstenite::client(node.ws_url(0), s).expect("handshake");
        let mut ws: Ws = WebSocket::from_raw_socket(
            MaybeTlsStream::Plain(ws.into_inner()),
            tungstenite::protocol::Role::Client,
            None,
        );
        // Flood without ever reading (so pongs and error replies pile up on the server's side).
        let t = Instant::now();
        for sent in 0..50_000 {
            if ws.write(frame.clone()).is_err() || (sent % 1000 == 0 && ws.flush().is_err()) {
                break;
            }
            if t.elapsed() > Duration::from_secs(10) {
                break;
            }
        }
        let _ = ws.flush();
        if let MaybeTlsStream::Plain(s) = ws.get_ref() {
            let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        }
        assert!(
            closed_within(&mut ws, Duration::from_secs(5)).is_some(),
            "the server never closed the flooding connection ({frame:?})"
        );
    }
    // The floods are over (both connections closed): memory must be within 20 MiB of where it
    // started. Polled briefly, since the last connection's buffers are freed as it is removed.
    let mut after = rss();
    let bounded = poll(Duration::from_secs(2), Duration::from_millis(50), || {
        after = rss();
        (after < before + 20 * 1024).then_some(())
    });
    assert!(
        bounded.is_some(),
        "signaling grew from {before} KiB to {after} KiB"
    );
    // Others are unaffected.
    let (_ws, j) = raw_join(&node.ws_url(0), "after", "ok");
    assert_eq!(j["type"], "joined");
}
