//! Client connections: the per-connection state ([`Conn`]), accepting them (per-address and
//! global caps, a separate allowance for the metrics listener), dispatching their readiness to
//! HTTP or WebSocket handling, removing them from every table, and their timeouts (HTTP head,
//! join deadline, ping/pong, slow readers, unanswered close), decided by
//! [`crate::limits::expiry`].

use std::io;
use std::net::IpAddr;
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Interest, Token};
use tracing::debug;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

use super::whip::Headless;
use super::{FIRST_CONN, Server};
use crate::limits::{ConnClock, Expiry, Timeouts, TokenBucket, expiry};
use crate::router::ConnId;
use crate::session::Session;

/// HTTP connections accepted beyond the WebSocket cap, so `/healthz` and the page still answer
/// (upgrades then get 503) when every WebSocket slot is taken.
const HTTP_RESERVE: usize = 256;
/// Connections at once on the metrics listener (beside the public limit).
const ADMIN_CONNECTIONS: usize = 32;

pub(super) enum ConnState {
    /// Reading a request head (and, for a WHIP/WHEP POST, `want` bytes in all with its body).
    Http {
        stream: TcpStream,
        buf: Vec<u8>,
        want: usize,
    },
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
    /// A WHIP/WHEP POST waiting for the answer of headless connection `session`.
    Await { stream: TcpStream, session: ConnId },
    /// A WHIP/WHEP session: no socket (see `server/whip.rs`).
    Headless(Box<Headless>),
    /// Transitional placeholder while a state is being replaced.
    Gone,
}

impl ConnState {
    /// The session of a WebSocket or WHIP/WHEP connection.
    pub(super) fn session(&self) -> Option<&Session> {
        match self {
            ConnState::Ws { session, .. } => Some(session),
            ConnState::Headless(h) => Some(&h.session),
            _ => None,
        }
    }

    pub(super) fn session_mut(&mut self) -> Option<&mut Session> {
        match self {
            ConnState::Ws { session, .. } => Some(session),
            ConnState::Headless(h) => Some(&mut h.session),
            _ => None,
        }
    }
}

pub(super) struct Conn {
    pub(super) state: ConnState,
    pub(super) since: Instant,
    pub(super) writable: bool,
    /// Accepted on the metrics listener: serves `/metrics` and `/healthz` only.
    pub(super) admin: bool,
    /// When we started closing the WebSocket; the socket is dropped
    /// [`CLOSE_GRACE`](crate::limits::CLOSE_GRACE) later.
    pub(super) closing: Option<Instant>,
    pub(super) rate: TokenBucket,
    /// Frames refused in a row.
    pub(super) refused: u32,
    /// When the current join started (for the join-duration histogram).
    pub(super) join_started: Option<Instant>,
    /// The address counted against the per-address connection cap (none for trusted proxies
    /// before the upgrade tells the real client).
    pub(super) counted_ip: Option<IpAddr>,
    /// The client's address (after `X-Forwarded-For` from a trusted proxy).
    pub(super) ip: IpAddr,
    /// Last frame received (liveness) and whether a ping is outstanding.
    pub(super) last_rx: Instant,
    pub(super) pinged: bool,
    /// Since when the session has neither joined nor been joining (join deadline).
    pub(super) idle_since: Option<Instant>,
    /// Since when output has been waiting for the client to read.
    pub(super) blocked_since: Option<Instant>,
    /// The join-token identity this connection counts against.
    pub(super) identity: Option<String>,
    /// How its session reached its node when the join (or resume) was confirmed: over the local
    /// socket (`true`) or Redis (`false`). Its requests keep to that path while it is up, so
    /// its events (which follow the path of the attach) and responses never overtake each
    /// other on two channels.
    pub(super) via_socket: Option<bool>,
}

impl Conn {
    /// Its timing facts, for [`expiry`].
    fn clock(&self, websocket: bool) -> ConnClock {
        ConnClock {
            websocket,
            since: self.since,
            closing: self.closing,
            blocked_since: self.blocked_since,
            last_rx: self.last_rx,
            pinged: self.pinged,
            idle_since: self.idle_since,
        }
    }
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
                            want: 0,
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
            ConnState::Await { stream, .. } => {
                // Nothing more is expected from a client waiting for its answer: bytes are
                // dropped. A half-close (FIN after the request) keeps the wait; a reset ends
                // it (and the session).
                let mut scratch = [0u8; 1024];
                loop {
                    match std::io::Read::read(stream, &mut scratch) {
                        Ok(0) => return,
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return self.remove(id),
                    }
                }
            }
            ConnState::Headless(_) => {}
            ConnState::Gone => self.remove(id),
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
        let mut cancel = None;
        match &mut conn.state {
            ConnState::Http { stream, .. } | ConnState::Respond { stream, .. } => {
                let _ = self.poll.registry().deregister(stream);
            }
            ConnState::Await { stream, session } => {
                let _ = self.poll.registry().deregister(stream);
                cancel = Some(*session);
            }
            ConnState::Ws { ws, .. } => {
                let _ = self.poll.registry().deregister(ws.get_mut());
                self.websockets = self.websockets.saturating_sub(1);
            }
            ConnState::Headless(h) => {
                self.whip_resources.remove(&h.resource);
                self.websockets = self.websockets.saturating_sub(1);
            }
            ConnState::Gone => {}
        }
        // By connection, not through the session (whose state may already be gone).
        self.routes.release(id);
        self.sessions_per_token.recount(&mut conn.identity, None);
        if let Some(ip) = conn.counted_ip {
            self.ip_limits.disconnect(ip);
        }
        self.pending.detach(id);
        self.placements.forget(id);
        // A POST that stopped waiting: its session no longer answers anyone.
        if let Some(hid) = cancel
            && self.headless_waiting_for(hid, id)
        {
            self.cancel_headless(hid);
        }
    }

    /// Time out slow HTTP clients, closing WebSockets, idle WebSockets (join deadline), silent
    /// ones (ping/pong), clients that stopped reading, and unanswered control requests.
    pub(super) fn expire(&mut self, now: Instant) {
        let s = &self.settings;
        let timeouts = Timeouts {
            http: s.http_timeout,
            join: s.join_timeout,
            ping_interval: s.ping_interval,
        };
        let mut drop = Vec::new();
        let mut ping = Vec::new();
        let mut idle = Vec::new();
        for (id, c) in self.conns.iter() {
            let due = match &c.state {
                ConnState::Http { .. } | ConnState::Respond { .. } => {
                    expiry(&c.clock(false), &timeouts, now)
                }
                ConnState::Ws { .. } => expiry(&c.clock(true), &timeouts, now),
                // The dataplane's answer is bounded by the request timeout (and a placement
                // retry); beyond twice that the POST gives up.
                ConnState::Await { .. } => (now.saturating_duration_since(c.since)
                    > 2 * s.request_timeout + std::time::Duration::from_secs(5))
                .then_some(Expiry::Disconnect("whip_wait")),
                ConnState::Headless(_) => None,
                ConnState::Gone => Some(Expiry::Disconnect("")),
            };
            match due {
                Some(Expiry::Disconnect(reason)) => drop.push((id, reason)),
                Some(Expiry::JoinTimeout) => idle.push(id),
                Some(Expiry::Ping) => ping.push(id),
                None => {}
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
}
