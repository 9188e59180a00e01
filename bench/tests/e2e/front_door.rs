//! Signaling's front door: bad WebSocket input gets clear errors (oversize frames close with
//! 1009), join tokens are enforced with a secret, a flooding client is rate limited then closed,
//! and the TURN credentials in `joined` are accepted by a real coturn.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bench::client::{self, Media};
use bench::harness::{Node, Ws, http_get, mint_token, read_json};
use serde_json::{Value, json};

use super::{T, join, video_from};

/// The next JSON message on `ws` (blocking); panics on a close or error.
fn next(ws: &mut Ws) -> Value {
    read_json(ws).expect("read")
}

/// The `exp` claim (Unix seconds) of a JWT.
fn token_expiry(jwt: &str) -> u64 {
    use base64::Engine;
    let payload = jwt.split('.').nth(1).expect("a JWT has a payload");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    let claims: Value = serde_json::from_slice(&raw).expect("claims");
    claims["exp"].as_u64().expect("exp")
}

/// Every kind of bad input gets `bad_request` and the connection stays usable; names are data;
/// an oversize frame closes with 1009; the server serves others afterwards.
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
    let send = |ws: &mut Ws, text: &str| {
        ws.send(tungstenite::Message::text(text.to_string()))
            .expect("send")
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

/// With `--jwt-secret` a join needs a valid token for its room: missing, foreign-room,
/// wrong-secret, expired and garbage tokens are `unauthorized`; the token's name wins.
#[test]
fn join_tokens_are_enforced_when_a_secret_is_configured() {
    const SECRET: &str = "test-secret-0123456789abcdef";
    let node = Node::start_with(1, &[], &["--jwt-secret", SECRET]).expect("node starts");
    let mint = |args: &[&str]| -> String {
        let mut all = vec!["--secret"];
        all.extend(args);
        mint_token(&all).expect("mint")
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
    // Waiting out the expiry is the behaviour under test: the token expired at `exp` (whole
    // seconds) and is refused once `now > exp + 5 s` of leeway, so from `exp + 6`.
    let refused_from = UNIX_EPOCH + Duration::from_secs(token_expiry(&expired) + 6);
    if let Ok(wait) = refused_from.duration_since(SystemTime::now()) {
        std::thread::sleep(wait);
    }

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
        let v = next(&mut ws);
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
    let v = next(&mut ws);
    assert_eq!(v["type"], "joined", "{v}");
    assert_eq!(
        v["participant"]["name"], "Token Name",
        "the token's name wins"
    );
}

/// 400 messages at once: the burst is served, then `rate_limited`, then close 1008; others are
/// unaffected.
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
    assert_eq!(next(&mut ws2)["type"], "joined");
}

/// The TURN credentials `joined` hands out allocate on a real coturn; a forged one does not.
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
    let joined = next(&mut ws);
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
    // Turn::start returned once coturn answered STUN: no startup wait.
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
