//! Client connections: accept (with per-address and global caps), HTTP (the page, `/healthz`,
//! `/metrics` on the metrics listener only), the WebSocket upgrade (origin check), reading frames
//! (every kind counts against the rate limit), writing (bounded buffer: a client that does not
//! read is disconnected), close codes, and liveness (join deadline, ping/pong).

use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Token};
use tracing::debug;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};

use super::{FIRST_CONN, Server};
use crate::http::{self, HeadError};
use crate::limits::{TokenBucket, client_ip, origin_allowed};
use crate::page;
use crate::protocol::{ErrorCode, ServerMsg};
use crate::router::ConnId;
use crate::session::{Action, Session};

/// HTTP connections accepted beyond the WebSocket cap, so `/healthz` and the page still answer
/// (upgrades then get 503) when every WebSocket slot is taken.
const HTTP_RESERVE: usize = 256;
/// Connections at once on the metrics listener (beside the public limit).
const ADMIN_CONNECTIONS: usize = 32;
/// A WebSocket closing gracefully is dropped after this long at the latest.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Frames refused in a row by the rate limit before the client is disconnected (1008).
const MAX_REFUSED: u32 = 200;
/// A client with unsent output for this long is not reading: disconnect it.
const MAX_BLOCKED: Duration = Duration::from_secs(20);

pub(super) enum ConnState {
    /// Reading a request head.
    Http { stream: TcpStream, buf: Vec<u8> },
    /// Writing an HTTP response, then closing.
    Respond {
        stream: TcpStream,
        out: Vec<u8>,
        pos: usize,
    },
    Ws {
        ws: Box<WebSocket<TcpStream>>,
        session: Box<Session>,
    },
    /// Transitional placeholder while a state is being replaced.
    Gone,
}

pub(super) struct Conn {
    pub(super) state: ConnState,
    since: Instant,
    writable: bool,
    /// Accepted on the metrics listener: serves `/metrics` and `/healthz` only.
    admin: bool,
    /// When we started closing the WebSocket; the socket is dropped [`CLOSE_GRACE`] later.
    closing: Option<Instant>,
    rate: TokenBucket,
    /// Frames refused in a row.
    refused: u32,
    /// When the current join started (for the join-duration histogram).
    pub(super) join_started: Option<Instant>,
    /// The address counted against the per-address connection cap (none for trusted proxies
    /// before the upgrade tells the real client).
    counted_ip: Option<IpAddr>,
    /// The client's address (after `X-Forwarded-For` from a trusted proxy).
    ip: IpAddr,
    /// Last frame received (liveness) and whether a ping is outstanding.
    last_rx: Instant,
    pinged: bool,
    /// Since when the session has neither joined nor been joining (join deadline).
    pub(super) idle_since: Option<Instant>,
    /// Since when output has been waiting for the client to read.
    blocked_since: Option<Instant>,
    /// The join-token identity this connection counts against.
    pub(super) identity: Option<String>,
    /// How its session reached its node when the join (or resume) was confirmed: over the local
    /// socket (`true`) or Redis (`false`). Its requests keep to that path while it is up, so
    /// its events (which follow the path of the attach) and responses never overtake each
    /// other on two channels.
    pub(super) via_socket: Option<bool>,
}

impl Server {
    pub(super) fn accept(&mut self, admin: bool) {
        loop {
            let listener = if admin {
                match &self.metrics_listener {
                    Some(l) => l,
                    None => return,
                }
            } else {
                &self.listener
            };
            match listener.accept() {
                Ok((mut stream, peer)) => {
                    let now = Instant::now();
                    // The metrics listener has its own small allowance, so a flood on the public
                    // port never locks operators out of /metrics and /healthz.
                    let full = if admin {
                        self.conns.iter().filter(|(_, c)| c.admin).count() >= ADMIN_CONNECTIONS
                    } else {
                        self.conns.len() >= self.settings.max_connections + HTTP_RESERVE
                    };
                    if full {
                        self.metrics.limit("connections");
                        debug!(%peer, admin, "connection limit reached; refusing");
                        continue;
                    }
                    // Behind a trusted proxy the peer is the proxy: count the real client at the
                    // upgrade. The metrics listener (operators, loopback) is not capped per address.
                    let proxied = self.settings.trusted_proxies.contains(&peer.ip());
                    let counted_ip = (!admin && !proxied).then_some(peer.ip());
                    if let Some(ip) = counted_ip
                        && !self.ip_limits.connect(ip, now)
                    {
                        self.metrics.limit("connections_per_ip");
                        debug!(%peer, "per-address connection limit reached; refusing");
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let entry = self.conns.vacant_entry();
                    let token = Token(entry.key() + FIRST_CONN);
                    if self
                        .poll
                        .registry()
                        .register(&mut stream, token, Interest::READABLE)
                        .is_err()
                    {
                        if let Some(ip) = counted_ip {
                            self.ip_limits.disconnect(ip);
                        }
                        continue;
                    }
                    entry.insert(Conn {
                        state: ConnState::Http {
                            stream,
                            buf: Vec::with_capacity(1024),
                        },
                        since: now,
                        writable: false,
                        admin,
                        closing: None,
                        rate: TokenBucket::new(
                            self.settings.rate_per_sec,
                            self.settings.rate_burst,
                            now,
                        ),
                        refused: 0,
                        join_started: None,
                        counted_ip,
                        ip: peer.ip(),
                        last_rx: now,
                        pinged: false,
                        idle_since: Some(now),
                        blocked_since: None,
                        identity: None,
                        via_socket: None,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!(error = %e, "accept");
                    return;
                }
            }
        }
    }

    pub(super) fn conn_ready(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        match &mut conn.state {
            ConnState::Http { .. } => self.read_http(id),
            ConnState::Respond { .. } => self.write_response(id),
            ConnState::Ws { .. } => self.ws_ready(id),
            ConnState::Gone => self.remove(id),
        }
    }

    fn read_http(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let ConnState::Http { stream, buf } = &mut conn.state else {
            return;
        };
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => return self.remove(id),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.len() > http::MAX_HEAD {
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
            if let ConnState::Ws { session, .. } = &c.state {
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
    fn respond(&mut self, id: ConnId, out: Vec<u8>) {
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

    fn write_response(&mut self, id: ConnId) {
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

    fn ws_ready(&mut self, id: ConnId) {
        // Read every complete frame; each may produce actions that write to this socket.
        loop {
            let Some(conn) = self.conns.get_mut(id) else {
                return;
            };
            let ConnState::Ws { ws, session } = &mut conn.state else {
                return;
            };
            // A panic inside the WebSocket library on a client's bytes must end that client only.
            let Ok(read) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ws.read()))
            else {
                tracing::warn!(
                    conn = id,
                    "websocket library panicked on client input; dropping the connection"
                );
                self.metrics.limit("protocol");
                return self.disconnect(id);
            };
            let msg = match read {
                Ok(m) => m,
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(tungstenite::Error::Capacity(e)) => {
                    debug!(conn = id, error = %e, "message too large; closing with 1009");
                    return self.abort_ws(id, CloseCode::Size, "message too large");
                }
                Err(tungstenite::Error::Protocol(e)) => {
                    debug!(conn = id, error = %e, "websocket protocol error; closing with 1002");
                    self.metrics.limit("protocol");
                    return self.abort_ws(id, CloseCode::Protocol, "protocol error");
                }
                Err(tungstenite::Error::Utf8(_)) => {
                    debug!(
                        conn = id,
                        "invalid UTF-8 in a text frame; closing with 1007"
                    );
                    self.metrics.limit("protocol");
                    return self.abort_ws(id, CloseCode::Invalid, "invalid UTF-8");
                }
                Err(tungstenite::Error::WriteBufferFull(_)) => {
                    self.metrics.limit("slow_reader");
                    debug!(conn = id, "client does not read; disconnecting");
                    return self.disconnect(id);
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return self.disconnect(id);
                }
                Err(e) => {
                    debug!(conn = id, error = %e, "websocket error");
                    return self.disconnect(id);
                }
            };
            let now = Instant::now();
            conn.last_rx = now;
            conn.pinged = false;
            if let Message::Close(_) = msg {
                conn.closing.get_or_insert(now);
                continue;
            }
            // Every frame kind counts: pings and binary frames cost memory and CPU too.
            if !conn.rate.try_take(now) {
                self.metrics.rate_limited.inc();
                conn.refused += 1;
                if conn.refused > MAX_REFUSED {
                    debug!(conn = id, "client keeps flooding; closing with 1008");
                    self.metrics.limit("flood");
                    return self.close_ws(id, Some((CloseCode::Policy, "rate limit")));
                }
                if matches!(msg, Message::Text(_) | Message::Binary(_))
                    && (conn.refused == 1 || conn.refused.is_multiple_of(50))
                {
                    let msg = ServerMsg::error(
                        ErrorCode::RateLimited,
                        format!(
                            "more than {} messages per second; message dropped",
                            self.settings.rate_per_sec
                        ),
                    );
                    self.apply(id, vec![Action::Send(msg)]);
                }
                continue;
            }
            conn.refused = 0;
            match msg {
                Message::Text(text) => {
                    self.metrics.message(text.as_str());
                    let actions = session.handle_text(text.as_str(), &self.ctx, new_participant_id);
                    if actions.iter().any(|a| {
                        matches!(
                            a,
                            Action::Place { .. }
                                | Action::Request {
                                    request: control::Request::Attach { .. },
                                    ..
                                }
                        )
                    }) {
                        conn.join_started = Some(now);
                    }
                    // A join or resume the client started is admitted here, once (a retry the
                    // server makes on its behalf is part of the same join).
                    let starts = actions.iter().any(|a| {
                        matches!(
                            a,
                            Action::Place { .. }
                                | Action::Request {
                                    request: control::Request::Attach { .. },
                                    ..
                                }
                        )
                    });
                    if starts && !self.admit_join(id) {
                        continue;
                    }
                    self.apply(id, actions);
                }
                Message::Binary(_) => {
                    let msg = ServerMsg::error(
                        ErrorCode::BadRequest,
                        "binary frames are not supported; send JSON text",
                    );
                    self.apply(id, vec![Action::Send(msg)]);
                }
                // tungstenite answers pings itself (its pong is bounded by the write buffer).
                _ => {}
            }
        }
        self.flush_ws(id);
    }

    /// A join or resume of connection `id` may go ahead: per-address join rate and live sessions
    /// per token identity. A refused one is answered and the session returns to idle.
    pub(super) fn admit_join(&mut self, id: ConnId) -> bool {
        let now = Instant::now();
        let Some(conn) = self.conns.get_mut(id) else {
            return false;
        };
        let ConnState::Ws { session, .. } = &mut conn.state else {
            return false;
        };
        // Checked before the session is counted (it is not yet: see `settle`). The identity
        // first, so a refused join does not spend the address's join allowance.
        let refusal = if let Some(identity) = session.identity()
            && self.settings.max_sessions_per_token > 0
            && self.identities.get(identity).copied().unwrap_or(0)
                >= self.settings.max_sessions_per_token
        {
            Some((
                "sessions_per_token",
                format!(
                    "this token already has {} live sessions",
                    self.settings.max_sessions_per_token
                ),
            ))
        } else if !self.ip_limits.join(conn.ip, now) {
            Some((
                "join_rate",
                format!(
                    "too many joins from this address (more than {} per second); retry shortly",
                    self.settings.join_rate_per_ip
                ),
            ))
        } else {
            None
        };
        let Some((reason, message)) = refusal else {
            return true;
        };
        self.metrics.limit(reason);
        conn.join_started = None;
        let actions = session.refuse_join(ErrorCode::RateLimited, message);
        self.apply(id, actions);
        false
    }

    /// Queue a text message to the client. `false` if the connection was dropped (a client that
    /// does not read, or a dead socket).
    pub(super) fn send_ws(&mut self, id: ConnId, text: &str) -> bool {
        let Some(Conn {
            state: ConnState::Ws { ws, .. },
            ..
        }) = self.conns.get_mut(id)
        else {
            return false;
        };
        match ws.write(Message::text(text)) {
            Ok(()) => true,
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => true,
            Err(tungstenite::Error::WriteBufferFull(_)) => {
                self.metrics.limit("slow_reader");
                debug!(
                    conn = id,
                    "client does not read its messages; disconnecting"
                );
                self.disconnect(id);
                false
            }
            Err(e) => {
                debug!(conn = id, error = %e, "websocket write failed");
                self.disconnect(id);
                false
            }
        }
    }

    /// Start closing a WebSocket with a close frame (`code`; normal closure if `None`). The
    /// session ends (a joined participant stays on its node for the resume window); the socket is
    /// dropped when the client answers, or after [`CLOSE_GRACE`].
    pub(super) fn close_ws(&mut self, id: ConnId, code: Option<(CloseCode, &'static str)>) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let ConnState::Ws { ws, session } = &mut conn.state else {
            return;
        };
        let frame = code.map(|(code, reason)| CloseFrame {
            code,
            reason: reason.into(),
        });
        let _ = ws.close(frame);
        let _ = ws.flush();
        if code.is_some() {
            // Closed by us for a fault: the session is over on this connection.
            session.handle_disconnect();
        }
        conn.closing.get_or_insert_with(Instant::now);
        self.settle(id);
    }

    /// The client broke the protocol: send a close frame with `code` (best effort) and drop the
    /// connection at once; nothing more is read from a stream the library gave up on.
    fn abort_ws(&mut self, id: ConnId, code: CloseCode, reason: &'static str) {
        if let Some(Conn {
            state: ConnState::Ws { ws, .. },
            ..
        }) = self.conns.get_mut(id)
        {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let _ = ws.close(Some(CloseFrame {
                    code,
                    reason: reason.into(),
                }));
                let _ = ws.flush();
            }));
            let _ = ws.get_mut().shutdown(std::net::Shutdown::Write);
        }
        self.disconnect(id);
    }

    pub(super) fn flush_ws(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let ConnState::Ws { ws, .. } = &mut conn.state else {
            return;
        };
        let blocked = match ws.flush() {
            Ok(()) => false,
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => true,
            Err(_) => return self.disconnect(id),
        };
        if blocked {
            conn.blocked_since.get_or_insert_with(Instant::now);
        } else {
            conn.blocked_since = None;
        }
        if blocked != conn.writable {
            let interest = if blocked {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            let _ = self
                .poll
                .registry()
                .reregister(ws.get_mut(), Token(id + FIRST_CONN), interest);
            conn.writable = blocked;
        }
    }

    /// The client's WebSocket is gone. The participant stays on its node for the resume window
    /// (the client may resume through any instance); the connection is removed.
    pub(super) fn disconnect(&mut self, id: ConnId) {
        if let Some(Conn {
            state: ConnState::Ws { session, .. },
            ..
        }) = self.conns.get_mut(id)
        {
            session.handle_disconnect();
        }
        self.remove(id);
    }

    /// Forget a connection everywhere: routes, identity counts, address counts, pending requests.
    pub(super) fn remove(&mut self, id: ConnId) {
        let Some(mut conn) = self.conns.try_remove(id) else {
            return;
        };
        match &mut conn.state {
            ConnState::Http { stream, .. } | ConnState::Respond { stream, .. } => {
                let _ = self.poll.registry().deregister(stream);
            }
            ConnState::Ws { ws, .. } => {
                let _ = self.poll.registry().deregister(ws.get_mut());
                self.websockets = self.websockets.saturating_sub(1);
            }
            ConnState::Gone => {}
        }
        // By connection, not through the session (whose state may already be gone).
        self.routes.release(id);
        if let Some(identity) = conn.identity.take()
            && let Some(n) = self.identities.get_mut(&identity)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.identities.remove(&identity);
            }
        }
        if let Some(ip) = conn.counted_ip {
            self.ip_limits.disconnect(ip);
        }
        self.pending.detach(id);
        self.placements.retain(|_, j| j.conn != id);
        self.deferred.retain(|(_, j)| j.conn != id);
    }

    /// Time out slow HTTP clients, closing WebSockets, idle WebSockets (join deadline), silent
    /// ones (ping/pong), clients that stopped reading, and unanswered control requests.
    pub(super) fn expire(&mut self, now: Instant) {
        let s = &self.settings;
        let mut drop = Vec::new();
        let mut ping = Vec::new();
        let mut idle = Vec::new();
        for (id, c) in self.conns.iter() {
            match &c.state {
                ConnState::Http { .. } | ConnState::Respond { .. } => {
                    if now.duration_since(c.since) > s.http_timeout {
                        drop.push((id, "http_timeout"));
                    }
                }
                ConnState::Ws { .. } => {
                    let silent = now.saturating_duration_since(c.last_rx);
                    if c.closing
                        .is_some_and(|t| now.saturating_duration_since(t) > CLOSE_GRACE)
                    {
                        drop.push((id, ""));
                    } else if c
                        .blocked_since
                        .is_some_and(|t| now.saturating_duration_since(t) > MAX_BLOCKED)
                    {
                        drop.push((id, "slow_reader"));
                    } else if silent > s.ping_interval * 2 + Duration::from_secs(5) {
                        drop.push((id, "liveness"));
                    } else if c.closing.is_none()
                        && c.idle_since
                            .is_some_and(|t| now.saturating_duration_since(t) > s.join_timeout)
                    {
                        idle.push(id);
                    } else if silent > s.ping_interval && !c.pinged {
                        ping.push(id);
                    }
                }
                ConnState::Gone => drop.push((id, "")),
            }
        }
        for (id, reason) in drop {
            if !reason.is_empty() {
                self.metrics.limit(reason);
                debug!(conn = id, reason, "dropping connection");
            }
            self.disconnect(id);
        }
        for id in idle {
            self.metrics.limit("join_timeout");
            debug!(conn = id, "no join within the deadline; closing");
            self.close_ws(id, Some((CloseCode::Policy, "join timeout")));
        }
        for id in ping {
            if let Some(conn) = self.conns.get_mut(id)
                && let ConnState::Ws { ws, .. } = &mut conn.state
            {
                conn.pinged = true;
                let _ = ws.write(Message::Ping(Vec::new().into()));
            }
            self.flush_ws(id);
        }
        for p in self.pending.expired(now, self.settings.request_timeout) {
            tracing::warn!(request = ?std::mem::discriminant(&p.request), "dataplane did not answer in time");
            self.fail_request(p, "the media server did not answer in time");
        }
    }

    /// Shutdown: close every WebSocket with 1012 (service restart) so clients resume elsewhere.
    pub(super) fn close_all_for_restart(&mut self) {
        let ids: Vec<ConnId> = self.conns.iter().map(|(i, _)| i).collect();
        for id in ids {
            if let Some(Conn {
                state: ConnState::Ws { ws, .. },
                ..
            }) = self.conns.get_mut(id)
            {
                let _ = ws.close(Some(CloseFrame {
                    code: CloseCode::Restart,
                    reason: "signaling restarting; resume".into(),
                }));
                let _ = ws.flush();
            }
        }
    }
}

/// A fresh random participant id.
fn new_participant_id() -> String {
    format!("p{:016x}", rand::random::<u64>())
}
