//! HTTP on client connections: reading a request head (and a WHIP/WHEP POST's body, bounded by
//! its `Content-Length`), answering it (the page, `/healthz`, `/metrics` on the metrics listener
//! only, `HEAD` without a body, `/whip/…` and `/whep/…` in `whip.rs`), writing the response, and
//! the WebSocket upgrade of `GET /ws` (origin check, WebSocket cap, the per-address count of a
//! client behind a trusted proxy, the handshake, bounded WebSocket buffers).

use std::io::{self, Read, Write};
use std::time::Instant;

use mio::{Interest, Token};
use tracing::debug;
use tungstenite::WebSocket;
use tungstenite::protocol::{Role, WebSocketConfig};

use super::{ConnState, FIRST_CONN, Server};
use crate::http::{self, HeadError};
use crate::limits::{client_ip, origin_allowed};
use crate::page;
use crate::router::ConnId;
use crate::session::Session;

impl Server {
    pub(super) fn read_http(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let ConnState::Http { stream, buf, want } = &mut conn.state else {
            return;
        };
        let mut chunk = [0u8; 4096];
        // A head, or the head and body of a WHIP/WHEP POST once its head said how long.
        let limit = http::MAX_HEAD.max(*want);
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => return self.remove(id),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.len() > limit {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.remove(id),
            }
        }
        let head = match http::parse_head(buf) {
            Ok(None) => return,
            Ok(Some(h)) => h,
            Err(HeadError::TooLarge) => {
                return self.respond(
                    id,
                    http::response(
                        431,
                        "Request Header Fields Too Large",
                        "text/plain",
                        b"request head too large\n",
                    ),
                );
            }
            Err(HeadError::Malformed(m)) => {
                return self.respond(
                    id,
                    http::response(
                        400,
                        "Bad Request",
                        "text/plain",
                        format!("{m}\n").as_bytes(),
                    ),
                );
            }
        };
        let admin = conn.admin;
        if head.path == "/ws" && !admin && head.method != "HEAD" {
            return self.websocket_request(id, &head);
        }
        if !admin && super::whip::is_whip_path(&head.path) {
            let need = head.len + Self::whip_body_len(&head);
            let ConnState::Http { buf, want, .. } = &mut conn.state else {
                return;
            };
            if buf.len() < need {
                // Wait for the rest of the body (bounded: `whip_body_len` ≤ MAX_SDP).
                *want = need;
                return;
            }
            let body = buf[head.len..need].to_vec();
            return self.whip_request(id, &head, &body);
        }
        if head.method != "GET" && head.method != "HEAD" {
            return self.respond(
                id,
                http::response(
                    405,
                    "Method Not Allowed",
                    "text/plain",
                    b"method not allowed\n",
                ),
            );
        }
        let (status, reason, ctype, body): (u16, &str, &str, Vec<u8>) = match head.path.as_str() {
            "/metrics" if admin => {
                self.refresh_gauges();
                (
                    200,
                    "OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    self.metrics.render().into_bytes(),
                )
            }
            // HEAD /ws: what a GET without the upgrade gets, without its body.
            "/ws" if !admin => (
                426,
                "Upgrade Required",
                "text/plain",
                b"WebSocket upgrade required\n".to_vec(),
            ),
            "/healthz" if self.healthy() => (200, "OK", "text/plain", b"ok\n".to_vec()),
            "/healthz" => (
                503,
                "Service Unavailable",
                "text/plain",
                b"dataplane unavailable\n".to_vec(),
            ),
            path if !admin => match page::asset(path) {
                Some((ctype, body)) => (200, "OK", ctype, body.to_vec()),
                None => (404, "Not Found", "text/plain", b"not found\n".to_vec()),
            },
            _ => (404, "Not Found", "text/plain", b"not found\n".to_vec()),
        };
        let mut resp = http::response(status, reason, ctype, &body);
        if head.method == "HEAD" {
            resp = http::head_only(resp, body.len());
        }
        self.respond(id, resp);
    }

    fn refresh_gauges(&mut self) {
        let mut sessions = 0;
        for (_, c) in self.conns.iter() {
            if let Some(session) = c.state.session() {
                sessions += i64::from(session.is_joined());
            }
        }
        self.metrics.connections.set(self.websockets as i64);
        self.metrics.sessions.set(sessions);
    }

    /// `GET /ws`: check the upgrade, the origin, the caps; then switch to WebSocket.
    fn websocket_request(&mut self, id: ConnId, head: &http::Head) {
        if !head.is_websocket_upgrade() {
            return self.respond(
                id,
                http::response(
                    426,
                    "Upgrade Required",
                    "text/plain",
                    b"WebSocket upgrade required\n",
                ),
            );
        }
        if !origin_allowed(head.header("origin"), &self.settings.allowed_origins) {
            self.metrics.limit("origin");
            return self.respond(
                id,
                http::response(403, "Forbidden", "text/plain", b"origin not allowed\n"),
            );
        }
        if self.websockets >= self.settings.max_connections {
            self.metrics.limit("connections");
            return self.respond(
                id,
                http::response(
                    503,
                    "Service Unavailable",
                    "text/plain",
                    b"server full; retry later\n",
                ),
            );
        }
        let now = Instant::now();
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        if conn.counted_ip.is_none() {
            // Through a trusted proxy: count the client it names.
            let ip = client_ip(
                conn.ip,
                head.header("x-forwarded-for"),
                &self.settings.trusted_proxies,
            );
            conn.ip = ip;
            if !self.ip_limits.connect(ip, now) {
                self.metrics.limit("connections_per_ip");
                return self.respond(
                    id,
                    http::response(
                        429,
                        "Too Many Requests",
                        "text/plain",
                        b"too many connections from this address\n",
                    ),
                );
            }
            conn.counted_ip = Some(ip);
        }
        match http::websocket_accept(head) {
            Ok(resp) => self.upgrade(id, resp),
            Err(why) => self.respond(
                id,
                http::response(
                    400,
                    "Bad Request",
                    "text/plain",
                    format!("{why}\n").as_bytes(),
                ),
            ),
        }
    }

    /// Switch a connection to writing `out` and closing.
    pub(super) fn respond(&mut self, id: ConnId, out: Vec<u8>) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let ConnState::Http { stream, .. } = std::mem::replace(&mut conn.state, ConnState::Gone)
        else {
            return;
        };
        conn.state = ConnState::Respond {
            stream,
            out,
            pos: 0,
        };
        self.write_response(id);
    }

    pub(super) fn write_response(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let ConnState::Respond { stream, out, pos } = &mut conn.state else {
            return;
        };
        while *pos < out.len() {
            match stream.write(&out[*pos..]) {
                Ok(0) => return self.remove(id),
                Ok(n) => *pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !conn.writable {
                        conn.writable = true;
                        let _ = self.poll.registry().reregister(
                            stream,
                            Token(id + FIRST_CONN),
                            Interest::WRITABLE,
                        );
                    }
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.remove(id),
            }
        }
        let _ = stream.flush();
        let _ = stream.shutdown(std::net::Shutdown::Write);
        self.remove(id);
    }

    fn upgrade(&mut self, id: ConnId, response: Vec<u8>) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let ConnState::Http { mut stream, .. } =
            std::mem::replace(&mut conn.state, ConnState::Gone)
        else {
            return;
        };
        // The 101 response is ~130 bytes into a fresh socket buffer: it does not block in
        // practice; if it does, the connection is dropped rather than stalling the loop.
        let mut written = 0;
        for _ in 0..100 {
            match stream.write(&response[written..]) {
                Ok(n) => written += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(_) => break,
            }
            if written == response.len() {
                break;
            }
        }
        if written < response.len() {
            conn.state = ConnState::Http {
                stream,
                buf: Vec::new(),
                want: 0,
            };
            return self.remove(id);
        }
        // Small I/O buffers: signaling messages are small and an idle session should cost little
        // memory (tungstenite's default read buffer is 128 KiB per connection). The write buffer
        // is bounded: a client that does not read is disconnected when it fills.
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0)
            .max_write_buffer_size(self.settings.max_write_buffer.max(1))
            .max_message_size(Some(self.settings.max_message))
            .max_frame_size(Some(self.settings.max_message));
        let ws = WebSocket::from_raw_socket(stream, Role::Server, Some(config));
        let now = Instant::now();
        conn.state = ConnState::Ws {
            ws: Box::new(ws),
            session: Box::new(Session::new()),
        };
        conn.last_rx = now;
        conn.idle_since = Some(now);
        self.websockets += 1;
        debug!(conn = id, "websocket open");
    }
}
