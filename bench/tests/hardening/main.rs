//! Attacks and faults found by outside testing, replayed against the real binaries on loopback:
//! each test fails on the code before its fix. Synthetic str0m peers stand for users; raw
//! WebSocket, TCP and Unix-socket clients for attackers.
//!
//! Needs `cargo build --bins`. The control-socket tests run a squatter as another user
//! (`setpriv`), so they need root (as `./scripts/test` in CI has); without it they fail.
//!
//! One test binary; this file owns the raw-client helpers the scenarios share. The scenarios:
//! - `control_link.rs`: faults on the signaling ↔ dataplane link (oversized offer, reconnects,
//!   a panicking worker);
//! - `sessions.rs`: who receives what (a dropped WebSocket's route, a forged resume, a
//!   `--no-subscribe` token);
//! - `limits.rs`: abuse limits (capacity, join rate, sessions per token, idle and silent
//!   sockets, connection caps, frame floods);
//! - `protocol.rs`: WebSocket and HTTP protocol edges (close codes, `HEAD`, `Origin`, error texts);
//! - `control_socket.rs`: the control socket's privacy and peer checks (root only).

mod control_link;
mod control_socket;
mod limits;
mod protocol;
mod sessions;

use std::time::{Duration, Instant};

use bench::client::{Client, Media};
use bench::client::{all_flowing, video_from};
use bench::harness::{Node, Ws, metric_value, wait_until};
use serde_json::Value;
use tungstenite::Message;
use tungstenite::stream::MaybeTlsStream;

const T: Duration = Duration::from_secs(15);

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

/// Whether a read error only means "nothing yet" (the 200 ms read timeout of [`connect`]).
fn would_block(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(e) if matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    ))
}

/// The next text message within `d`, `None` if none came (or the socket closed).
fn next_within(ws: &mut Ws, d: Duration) -> Option<Value> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        match ws.read() {
            Ok(Message::Text(t)) => return serde_json::from_str(t.as_str()).ok(),
            Ok(_) => {}
            Err(e) if would_block(&e) => {}
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
    send(
        &mut ws,
        serde_json::json!({"type":"join","room":room,"name":name}),
    );
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
            Err(e) if would_block(&e) => {}
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

/// Wait until signaling instance 0 of `node` has exactly `n` open WebSockets (its
/// `sfu_signaling_connections` gauge): the server has noticed closed sockets, and released their
/// routes, token slots and address counts with them.
fn wait_websockets(node: &Node, n: u32) {
    let addr = node.signaling_metrics[0];
    wait_until(
        &format!("signaling holds {n} WebSockets"),
        T,
        Duration::from_millis(20),
        || metric_value(addr, "sfu_signaling_connections") == Some(f64::from(n)),
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e} (gauge {:?})\n{}",
            metric_value(addr, "sfu_signaling_connections"),
            node.logs()
        )
    });
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

/// Every client in `cs` was told about a participant named `name` joining.
fn told_of_newcomer(cs: &[Client], name: &str) {
    for c in cs {
        assert!(
            c.messages
                .iter()
                .any(|m| m["type"] == "participant_joined" && m["participant"]["name"] == name),
            "{} was told about the newcomer: {:?}",
            c.name,
            c.messages
        );
    }
}
