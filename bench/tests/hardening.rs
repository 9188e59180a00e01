//! Attacks and faults found by outside testing, replayed against the real binaries on loopback:
//! each test fails on the code before its fix. Synthetic str0m peers stand for users; raw
//! WebSocket, TCP and Unix-socket clients for attackers.
//!
//! Needs `cargo build --bins`. The control-socket tests run a squatter as another user
//! (`setpriv`), so they need root (as `./scripts/test` in CI has); without it they fail.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bench::client::{self, Client, Media};
use bench::harness::{Node, control_request, http_get};
use control::{Fault, Request, Response};
use serde_json::{Value, json};
use str0m::media::MediaKind;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

const T: Duration = Duration::from_secs(15);

type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

fn connect(url: &str) -> Ws {
    let (ws, _) = tungstenite::connect(url).expect("connect");
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
    }
    ws
}

fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).expect("send");
}

/// The next text message within `d`, `None` if none came (or the socket closed).
fn next_within(ws: &mut Ws, d: Duration) -> Option<Value> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        match ws.read() {
            Ok(Message::Text(t)) => return serde_json::from_str(t.as_str()).ok(),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return None,
        }
    }
    None
}

/// Wait for a message of `kind` (others are returned in the second element).
fn wait_type(ws: &mut Ws, kind: &str, d: Duration) -> (Option<Value>, Vec<Value>) {
    let end = Instant::now() + d;
    let mut other = Vec::new();
    while Instant::now() < end {
        if let Some(v) = next_within(ws, end.saturating_duration_since(Instant::now())) {
            if v["type"] == kind {
                return (Some(v), other);
            }
            other.push(v);
        }
    }
    (None, other)
}

/// Join `room` on a raw WebSocket; returns (socket, joined message).
fn raw_join(url: &str, room: &str, name: &str) -> (Ws, Value) {
    let mut ws = connect(url);
    send(&mut ws, json!({"type":"join","room":room,"name":name}));
    let (joined, other) = wait_type(&mut ws, "joined", T);
    let joined = joined.unwrap_or_else(|| panic!("{name} did not join: {other:?}"));
    (ws, joined)
}

/// Everything that arrives within `d`.
fn drain(ws: &mut Ws, d: Duration) -> Vec<Value> {
    let end = Instant::now() + d;
    let mut out = Vec::new();
    while Instant::now() < end {
        if let Some(v) = next_within(ws, end.saturating_duration_since(Instant::now())) {
            out.push(v);
        }
    }
    out
}

/// Whether the server closed `ws` (close frame or EOF) within `d`; with the close code.
fn closed_within(ws: &mut Ws, d: Duration) -> Option<Option<u16>> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        match ws.read() {
            Ok(Message::Close(f)) => return Some(f.map(|f| u16::from(f.code))),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(None),
        }
    }
    None
}

/// The code of the close frame the server sends next (blocking read).
fn close_code(ws: &mut Ws) -> Option<u16> {
    loop {
        match ws.read() {
            Ok(Message::Close(f)) => return f.map(|f| u16::from(f.code)),
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

fn join(node: &Node, room: &str, name: &str, epoch: Instant) -> Client {
    Client::join(
        &node.ws_url(0),
        room,
        name,
        Some(Media::default()),
        epoch,
        T,
    )
    .unwrap_or_else(|e| panic!("{name} failed to join: {e:#}\n{}", node.logs()))
}

fn video(a: &Client, b: &Client) -> u64 {
    a.peer.received.packets_from(&b.id, MediaKind::Video)
}

fn all_flowing(cs: &[Client], min: u64) -> bool {
    cs.iter().all(|a| {
        cs.iter()
            .filter(|b| b.id != a.id)
            .all(|b| video(a, b) >= min)
    })
}

/// An offer with `n` audio m-lines, all but the first minimal (~115 bytes): what a hostile client
/// can send in well under 1 MiB. Valid enough for str0m to accept.
fn offer_with_media(n: usize) -> String {
    use str0m::media::{Direction, MediaKind};
    let mut rtc = str0m::RtcConfig::new().build(Instant::now());
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
    let (offer, _) = api.apply().expect("offer");
    let one = offer.to_sdp_string();
    let (head, first) = one.split_at(one.find("m=").expect("m-line"));
    let mid0 = first
        .lines()
        .find_map(|l| l.strip_prefix("a=mid:"))
        .expect("mid")
        .trim()
        .to_string();
    let mids: Vec<String> = (1..n).map(|i| i.to_string()).collect();
    let head = head.replace(
        &format!("a=group:BUNDLE {mid0}"),
        &format!("a=group:BUNDLE {mid0} {}", mids.join(" ")),
    );
    let mut sdp = head + first;
    for i in 1..n {
        sdp += &format!(
            "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:{i}\r\na=sendrecv\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\n"
        );
    }
    sdp
}

/// Defect 1: an offer of ~2,500 m-lines made the dataplane build an answer larger than a control
/// frame and close the whole control link: every call on the instance stopped. Now the offer is
/// refused (`bad_request`), and with the m-line cap raised the oversized answer fails that one
/// request; other calls never notice.
#[test]
fn an_oversized_offer_fails_alone_and_other_calls_continue() {
    for (cap, why) in [(None, "media sections"), (Some("5000"), "control limit")] {
        let mut dp: Vec<&str> = vec![];
        if let Some(c) = cap {
            dp.extend(["--max-media-per-offer", c]);
        }
        let node = Node::start(1, &dp).expect("node");
        let epoch = Instant::now();
        let mut cs = vec![
            join(&node, "calm", "a", epoch),
            join(&node, "calm", "b", epoch),
        ];
        assert!(client::run(&mut cs, T, |cs| all_flowing(cs, 20)).expect("run"));

        let (mut evil, _) = raw_join(&node.ws_url(0), "evil", "mallory");
        let offer = offer_with_media(2500);
        assert!(offer.len() < 1 << 20, "fits a WebSocket message");
        send(&mut evil, json!({"type":"offer","sdp":offer}));
        let (err, other) = wait_type(&mut evil, "error", T);
        let err = err.unwrap_or_else(|| panic!("no error ({why}): {other:?}\n{}", node.logs()));
        assert_eq!(err["code"], "bad_request", "{err}");
        assert!(err["message"].as_str().unwrap_or("").contains(why), "{err}");

        // The control link is intact: events and renegotiation still flow for everyone.
        cs.push(join(&node, "calm", "c", epoch));
        assert!(
            client::run(&mut cs, T, |cs| all_flowing(cs, 20)).expect("run"),
            "the call continued after the attack (cap {cap:?})\n{}",
            node.logs()
        );
        for c in &cs[..2] {
            assert!(
                c.messages
                    .iter()
                    .any(|m| m["type"] == "participant_joined" && m["participant"]["name"] == "c"),
                "{} was told about the newcomer: {:?}",
                c.name,
                c.messages
            );
        }
        assert!(
            !node
                .logs()
                .contains("lost the dataplane control connection"),
            "{}",
            node.logs()
        );
    }
}

/// Defect 1: after any control reconnect, re-attached sessions silently became `Idle` (answers
/// got "join the room first", newcomers were never announced). Two reconnects in a row, then a
/// newcomer is announced and the renegotiation that brings its media completes.
#[test]
fn sessions_stay_joined_across_two_control_reconnects() {
    let node = Node::start(1, &["--test-faults"]).expect("node");
    let epoch = Instant::now();
    let mut cs = vec![join(&node, "r", "a", epoch), join(&node, "r", "b", epoch)];
    assert!(client::run(&mut cs, T, |cs| all_flowing(cs, 20)).expect("run"));
    for round in 0..2 {
        let r = control_request(
            &node.control_socket,
            Request::InjectFault {
                fault: Fault::DropControlLinks,
            },
        )
        .expect("inject");
        assert_eq!(r, Response::Ok);
        // Signaling reconnects (100 ms backoff) and re-attaches.
        let end = Instant::now() + T;
        loop {
            client::run(&mut cs, Duration::from_millis(200), |_| false).expect("run");
            let logs = node.signaling[0].1.log_text();
            if logs.matches("connected to the local dataplane").count() >= round + 2 {
                break;
            }
            assert!(
                Instant::now() < end,
                "signaling did not reconnect\n{}",
                node.logs()
            );
        }
    }
    client::run(&mut cs, Duration::from_millis(500), |_| false).expect("run");
    cs.push(join(&node, "r", "c", epoch));
    let ok = client::run(&mut cs, T, |cs| all_flowing(cs, 20)).expect("run");
    assert!(
        ok,
        "media with the newcomer after two reconnects\n{}",
        node.logs()
    );
    for c in &cs[..2] {
        assert!(
            c.messages
                .iter()
                .any(|m| m["type"] == "participant_joined" && m["participant"]["name"] == "c"),
            "{} was told about the newcomer: {:?}",
            c.name,
            c.messages
        );
        assert!(
            !c.messages.iter().any(|m| m["type"] == "error"),
            "{}: {:?}",
            c.name,
            c.messages
        );
    }
}

/// Defect 2: a dropped WebSocket left its participant routed to its connection slot; the next
/// client in that slot got the old participant's events, across rooms, and was closed when the
/// old participant timed out.
#[test]
fn a_dropped_websocket_leaves_no_stale_route() {
    let node = Node::start(1, &["--ice-timeout-secs", "2"]).expect("node");
    let url = node.ws_url(0);
    let (old, _) = raw_join(&url, "r1", "gone");
    drop(old); // a closed tab: no leave; its participant (no media) times out after 2 s
    std::thread::sleep(Duration::from_millis(200));
    // The next client takes the freed connection slot and joins another room (with media, so it
    // stays alive).
    let epoch = Instant::now();
    let mut innocent = vec![join(&node, "r2", "innocent", epoch)];
    // Someone joins the dropped participant's room; then that participant times out.
    let (mut newcomer, nj) = raw_join(&url, "r1", "newcomer");
    let gone_id = nj["participants"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "gone"))
        .map(|p| p["id"].clone())
        .expect("the dropped participant is still in its room");
    client::run(&mut innocent, Duration::from_secs(4), |_| false).expect("run");
    // The dropped participant did time out meanwhile (the half of the defect that closed the
    // innocent client).
    let (left, other) = wait_type(&mut newcomer, "participant_left", Duration::from_secs(3));
    assert_eq!(
        left.map(|l| l["participant_id"].clone()),
        Some(gone_id),
        "{other:?}"
    );
    let c = &innocent[0];
    let foreign: Vec<&Value> = c
        .messages
        .iter()
        .filter(|m| m["type"] != "offer" && m["type"] != "answer")
        .collect();
    assert!(
        foreign.is_empty(),
        "the innocent client received another room's traffic: {foreign:?}"
    );
    assert!(c.ws_open(), "the innocent client was not closed");
}

fn decode_token(t: &str) -> Value {
    use base64::Engine;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .expect("base64");
    serde_json::from_slice(&raw).expect("json")
}

fn encode_token(v: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

/// Defect 4: `join {resume}` with a forged token (victim's id, wrong key) got `resume_failed` but
/// had already taken over the victim's events.
#[test]
fn a_forged_resume_cannot_take_a_victims_events() {
    let node = Node::start(1, &[]).expect("node");
    let url = node.ws_url(0);
    let (mut victim, vj) = raw_join(&url, "room", "victim");
    let victim_id = vj["participant"]["id"].as_str().expect("id").to_string();
    // The attacker is in the room (sees the victim's id) and knows the node id from its own token.
    let (_att, aj) = raw_join(&url, "room", "attacker");
    let _ = drain(&mut victim, Duration::from_millis(300));
    let mut forged = decode_token(aj["resume"].as_str().expect("token"));
    forged["p"] = json!(victim_id);
    forged["k"] = json!("00000000000000000000000000000000");
    let mut hijack = connect(&url);
    send(
        &mut hijack,
        json!({"type":"join","resume":encode_token(&forged)}),
    );
    let (e, _) = wait_type(&mut hijack, "error", T);
    assert_eq!(e.map(|e| e["code"].clone()), Some(json!("resume_failed")));
    // The victim still hears of newcomers; the attacker hears nothing of the room.
    let (_n1, _) = raw_join(&url, "room", "newcomer");
    let (pj, other) = wait_type(&mut victim, "participant_joined", Duration::from_secs(3));
    assert!(pj.is_some(), "victim lost its events: {other:?}");
    // Once the attacker's connection joins some room, it still gets nothing of the victim's.
    send(
        &mut hijack,
        json!({"type":"join","room":"elsewhere","name":"x"}),
    );
    let (joined, leaked) = wait_type(&mut hijack, "joined", T);
    assert!(joined.is_some(), "the attacker's own join failed: {leaked:?}");
    assert!(
        leaked.is_empty(),
        "the attacker heard of the victim's room: {leaked:?}"
    );
    let (_n2, _) = raw_join(&url, "room", "second");
    let got = drain(&mut hijack, Duration::from_secs(1));
    assert!(got.is_empty(), "attacker received: {got:?}");
    let (pj, _) = wait_type(&mut victim, "participant_joined", Duration::from_secs(3));
    assert!(pj.is_some());
}

/// Defect 5: a `--no-subscribe` token still received and decoded every track.
#[test]
fn a_no_subscribe_token_receives_no_media() {
    const SECRET: &str = "hardening-secret-0123456789";
    let node = Node::start_with(1, &[], &["--jwt-secret", SECRET]).expect("node");
    let mint = |identity: &str, extra: &[&str]| -> String {
        let out = std::process::Command::new(bench::harness::binary("signaling").expect("bin"))
            .args([
                "token",
                "--secret",
                SECRET,
                "--room",
                "g",
                "--identity",
                identity,
            ])
            .args(extra)
            .output()
            .expect("mint");
        assert!(out.status.success());
        String::from_utf8(out.stdout)
            .expect("utf8")
            .trim()
            .to_string()
    };
    let epoch = Instant::now();
    let full = mint("pub", &[]);
    let viewer = mint("view", &["--no-subscribe"]);
    let url = node.ws_url(0);
    let media = Some(Media::default());
    let mut cs = vec![
        Client::join_with_token(&url, "g", "pub", Some(&full), media, epoch, T).expect("pub"),
        Client::join_with_token(&url, "g", "view", Some(&viewer), media, epoch, T).expect("view"),
    ];
    // The viewer may publish (the publisher receives it) but receives nothing.
    let ok = client::run(&mut cs, T, |cs| video(&cs[0], &cs[1]) > 30).expect("run");
    assert!(ok, "{}", node.logs());
    client::run(&mut cs, Duration::from_secs(1), |_| false).expect("run");
    assert_eq!(cs[1].peer.received.packets(MediaKind::Video), 0);
    assert_eq!(cs[1].peer.received.packets(MediaKind::Audio), 0);
}

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
    let out = std::process::Command::new(bench::harness::binary("signaling").expect("bin"))
        .args([
            "token",
            "--secret",
            SECRET,
            "--room",
            "t",
            "--identity",
            "u",
        ])
        .output()
        .expect("mint");
    let token = String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_string();
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
    std::thread::sleep(Duration::from_millis(300));
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
    std::thread::sleep(Duration::from_millis(300));
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
    // Liveness: a joined client that stops reading (never answers pings) is dropped.
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
    std::thread::sleep(Duration::from_millis(300));
    // Per-address cap: 6 connections from one address, the 7th is refused at accept.
    let held: Vec<TcpStream> = (0..6)
        .map(|_| TcpStream::connect(node.signaling[0].0).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
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
    drop(held);
}

/// Defect 3: unbounded memory from a client that floods frames (pings, binary) and never reads.
#[test]
fn frame_floods_are_rate_limited_and_memory_stays_bounded() {
    let node = Node::start(1, &[]).expect("node");
    let pid = node.signaling[0].1.pid().expect("pid");
    let before = bench::stats::rss_kib(pid);
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
    std::thread::sleep(Duration::from_millis(500));
    let after = bench::stats::rss_kib(pid);
    assert!(
        after < before + 20 * 1024,
        "signaling grew from {before} KiB to {after} KiB"
    );
    // Others are unaffected.
    let (_ws, j) = raw_join(&node.ws_url(0), "after", "ok");
    assert_eq!(j["type"], "joined");
}

/// Defect 9: protocol errors and invalid UTF-8 got no close frame; HEAD returned a body; the
/// Origin could not be restricted; parser errors leaked heap addresses.
#[test]
fn close_codes_head_origin_and_clean_errors() {
    use tungstenite::protocol::frame::Frame;
    use tungstenite::protocol::frame::coding::{Data, OpCode};
    let node =
        Node::start_with(1, &[], &["--allowed-origin", "http://good.example"]).expect("node");
    let url = node.ws_url(0);
    let with_origin = |origin: &str| {
        use tungstenite::client::IntoClientRequest;
        let mut req = url.as_str().into_client_request().expect("request");
        req.headers_mut()
            .insert("origin", origin.parse().expect("header"));
        tungstenite::connect(req)
    };
    match with_origin("http://evil.example") {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 403),
        other => panic!("evil origin: {:?}", other.map(|_| ())),
    }
    let (mut ws, _) = with_origin("http://good.example").expect("good origin");
    // Invalid UTF-8 in a text frame: 1007.
    let bad = Frame::message(vec![0xff, 0xfe, 0xfd], OpCode::Data(Data::Text), true);
    ws.send(Message::Frame(bad)).expect("send");
    assert_eq!(close_code(&mut ws), Some(1007));
    // A reserved opcode: 1002.
    let (mut ws, _) = with_origin("http://good.example").expect("good origin");
    let bad = Frame::message(vec![1], OpCode::Data(Data::Reserved(3)), true);
    ws.send(Message::Frame(bad)).expect("send");
    assert_eq!(close_code(&mut ws), Some(1002));
    // HEAD: headers only (the WebSocket path too).
    for (path, status) in [("/", "200"), ("/ws", "426")] {
        let mut s = TcpStream::connect(node.signaling[0].0).expect("connect");
        s.write_all(format!("HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .expect("write");
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp);
        let resp = String::from_utf8_lossy(&resp);
        assert!(resp.starts_with(&format!("HTTP/1.1 {status}")), "{resp}");
        assert!(
            resp.ends_with("\r\n\r\n"),
            "HEAD {path} has no body: {resp}"
        );
    }
    // Parser errors carry no heap addresses.
    let (mut ws, _) = with_origin("http://good.example").expect("good origin");
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
    }
    send(&mut ws, json!({"type":"join","room":"sdp","name":"s"}));
    wait_type(&mut ws, "joined", T).0.expect("joined");
    for sdp in [
        "garbage",
        "v=0\r\nm=audio x\r\n",
        "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\nm=video 9 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\nzz",
    ] {
        send(&mut ws, json!({"type":"offer","sdp":sdp}));
        let (e, _) = wait_type(&mut ws, "error", T);
        let msg = e.expect("error")["message"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let leaks = msg
            .split("0x")
            .skip(1)
            .any(|h| h.chars().take_while(char::is_ascii_hexdigit).count() >= 6);
        assert!(!leaks, "heap address in {msg:?}");
    }
}

/// Failure recovery 4: a panicking worker used to be dead forever ("overloaded" for every
/// request, no signal). Its participants now get `room_closed {reason:"worker_failed"}`, it
/// restarts on the same port, metrics show it, and the clients' rejoin works.
#[test]
fn a_panicking_worker_is_restarted_and_its_clients_rejoin() {
    let mut node = Node::start(1, &["--test-faults"]).expect("node");
    let epoch = Instant::now();
    let mut cs = vec![join(&node, "w", "a", epoch), join(&node, "w", "b", epoch)];
    assert!(client::run(&mut cs, T, |cs| all_flowing(cs, 20)).expect("run"));
    let r = control_request(
        &node.control_socket,
        Request::InjectFault {
            fault: Fault::WorkerPanic { worker: 0 },
        },
    )
    .expect("inject");
    assert_eq!(r, Response::Ok);
    let ok = client::run(&mut cs, Duration::from_secs(5), |cs| {
        cs.iter().all(|c| c.count("room_closed") > 0)
    })
    .expect("run");
    assert!(ok, "room_closed not delivered\n{}", node.logs());
    for c in &cs {
        let m = c
            .messages
            .iter()
            .find(|m| m["type"] == "room_closed")
            .expect("room_closed");
        assert_eq!(m["reason"], "worker_failed");
    }
    assert!(node.dataplane.running(), "the process survived");
    let end = Instant::now() + T;
    loop {
        let (_, m) = http_get(node.metrics_addr, "/metrics").expect("metrics");
        if m.lines().any(|l| l == "sfu_worker_restarts_total{worker=\"0\"} 1")
            && m.lines().any(|l| l == "sfu_worker_up{worker=\"0\"} 1")
        {
            break;
        }
        assert!(Instant::now() < end, "restart not visible in metrics:\n{m}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        http_get(node.metrics_addr, "/healthz").expect("healthz").0,
        200
    );
    for c in &mut cs {
        c.rejoin(T)
            .unwrap_or_else(|e| panic!("rejoin: {e:#}\n{}", node.logs()));
    }
    assert!(
        client::run(&mut cs, T, |cs| all_flowing(cs, 20)).expect("run"),
        "media after the restart\n{}",
        node.logs()
    );
}

// -------------------------------------------------------------------------------------------------
// The control socket (defect 8). These run a process as another user: root only.

/// A child process killed when dropped (so a failing assertion leaves nothing running).
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the control-socket tests run a squatter as another user and need root"
    );
}

/// A Python Unix-socket listener at `path`, running as uid/gid 65534, that records what it
/// receives into `log` and answers nothing.
fn squatter(path: &std::path::Path, log: &std::path::Path) -> Kill {
    let script = format!(
        "import socket,os\ns=socket.socket(socket.AF_UNIX)\ns.bind({p:?})\nos.chmod({p:?},0o777)\ns.listen(8)\nf=open({l:?},'ab',0)\nwhile True:\n  c,_=s.accept()\n  c.settimeout(3)\n  try:\n    d=c.recv(65536)\n    f.write(d)\n  except Exception: pass\n",
        p = path.display().to_string(),
        l = log.display().to_string()
    );
    std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            &script,
        ])
        .spawn()
        .map(Kill)
        .expect("setpriv python3")
}

#[test]
fn the_control_socket_is_private_and_both_ends_check_each_other() {
    require_root();
    use std::os::unix::fs::PermissionsExt;
    let dir = bench::harness::TempDir::new("sfu-ctl").expect("dir");
    let bin = bench::harness::binary("dataplane").expect("bin");
    let sig = bench::harness::binary("signaling").expect("bin");
    let udp = bench::harness::free_udp_ports(1).expect("port");
    let dp = |sock: &std::path::Path, extra: &[&str]| {
        let mut c = std::process::Command::new("sh");
        c.arg("-c")
            .arg("umask 000; exec \"$0\" \"$@\"")
            .arg(&bin)
            .args(["--workers", "1", "--no-pin", "--metrics-listen", "off"])
            .args(["--port-base", &udp.to_string(), "--control-socket"])
            .arg(sock)
            .args(extra);
        c
    };

    // A world-writable (non-sticky) directory is refused.
    let open = dir.0.join("open");
    std::fs::create_dir(&open).expect("mkdir");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let out = dp(&open.join("dp.sock"), &[]).output().expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("writable by other users"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Under a permissive umask the socket is still 0600, in a 0700 directory it created.
    let private = dir.0.join("private").join("dp.sock");
    let child = Kill(dp(&private, &[]).spawn().expect("dataplane"));
    let end = Instant::now() + T;
    while !private.exists() {
        assert!(Instant::now() < end, "socket never appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode(&private), 0o600);
    assert_eq!(mode(private.parent().expect("dir")), 0o700);

    // The dataplane refuses a connection from another user (SO_PEERCRED), even one the file
    // mode lets in; it gets no welcome.
    drop(child);
    let shared = dir.0.join("shared.sock");
    let child = Kill(
        dp(&shared, &["--control-socket-mode", "0660"])
            .spawn()
            .expect("dataplane"),
    );
    while !shared.exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let probe = format!(
        "import socket,struct,json\ns=socket.socket(socket.AF_UNIX)\ns.connect({p:?})\nm=json.dumps({{'kind':'hello','version':1,'client':'x'}}).encode()\ns.sendall(struct.pack('>I',len(m))+m)\ns.settimeout(3)\ntry:\n  print(len(s.recv(65536)))\nexcept ConnectionResetError:\n  print(0)\n",
        p = shared.display().to_string()
    );
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=0",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            &probe,
        ])
        .output()
        .expect("probe");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "another user got an answer: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Our own user is served.
    let r = control_request(&shared, Request::Stats).expect("stats");
    assert!(matches!(r, Response::Stats(_)));
    // Hello timeout: a silent connection is closed after 5 s.
    let mut silent = std::os::unix::net::UnixStream::connect(&shared).expect("connect");
    silent
        .set_read_timeout(Some(Duration::from_secs(8)))
        .expect("timeout");
    let t = Instant::now();
    let mut b = [0u8; 16];
    assert_eq!(silent.read(&mut b).expect("read"), 0);
    assert!(t.elapsed() >= Duration::from_secs(4), "{:?}", t.elapsed());
    // At most 64 connections.
    let many: Vec<_> = (0..64)
        .map(|_| std::os::unix::net::UnixStream::connect(&shared).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = std::os::unix::net::UnixStream::connect(&shared).expect("connect");
    extra
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    assert_eq!(extra.read(&mut b).expect("read"), 0, "the 65th is closed");
    drop(many);
    drop(child);

    // A socket squatted by another user: signaling never talks to it, the dataplane refuses to
    // start on it.
    let sticky = dir.0.join("sticky");
    std::fs::create_dir(&sticky).expect("mkdir");
    std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    let sock = sticky.join("dp.sock");
    let log = dir.0.join("squatter.log");
    std::fs::write(&log, b"").expect("log");
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let sq = squatter(&sock, &log);
    let end = Instant::now() + T;
    while !sock.exists() {
        assert!(Instant::now() < end, "squatter did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let addr: std::net::SocketAddr = (
        [127, 0, 0, 1],
        bench::harness::free_tcp_port().expect("port"),
    )
        .into();
    let mut s = bench::harness::Proc::spawn(
        "signaling",
        &sig,
        &[
            "--listen".into(),
            addr.to_string(),
            "--metrics-listen".into(),
            "off".into(),
            "--control-socket".into(),
            sock.display().to_string(),
        ],
        dir.0.join("sig.log"),
    )
    .expect("signaling");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(http_get(addr, "/healthz").expect("healthz").0, 503);
    assert!(
        std::fs::read(&log).expect("log").is_empty(),
        "signaling sent the squatter something"
    );
    assert!(
        s.log_text().contains("refusing the control socket"),
        "{}",
        s.log_text()
    );
    s.kill();
    let out = dp(&sock, &[]).output().expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("uid 65534"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(sq);
}
