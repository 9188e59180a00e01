//! WebSocket connections: reading frames (every kind counts against the per-connection rate;
//! a client that keeps flooding is closed), handing text to its session, admitting joins
//! (per-address join rate, live sessions per token), writing (bounded buffer: a client that
//! does not read is disconnected), and closing (normal, for a fault, aborted on a protocol
//! error, 1012 for everyone at shutdown).

use std::io;
use std::time::Instant;

use mio::{Interest, Token};
use tracing::debug;
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

use super::{Conn, ConnState, FIRST_CONN, Server};
use crate::protocol::{ErrorCode, ServerMsg};
use crate::router::ConnId;
use crate::session::Action;

/// Frames refused in a row by the rate limit before the client is disconnected (1008).
const MAX_REFUSED: u32 = 200;

impl Server {
    pub(super) fn ws_ready(&mut self, id: ConnId) {
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
                    // A join or resume the client started is timed and admitted here, once (a
                    // retry the server makes on its behalf is part of the same join).
                    let starts = Action::start_session(&actions);
                    if starts {
                        conn.join_started = Some(now);
                    }
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
        let Some(session) = conn.state.session_mut() else {
            return false;
        };
        // Checked before the session is counted (it is not yet: see `settle`). The identity
        // first, so a refused join does not spend the address's join allowance.
        let refusal = if session.identity().is_some_and(|identity| {
            self.sessions_per_token
                .full(identity, self.settings.max_sessions_per_token)
        }) {
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
    /// dropped when the client answers, or after
    /// [`CLOSE_GRACE`](crate::limits::CLOSE_GRACE).
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
pub(super) fn new_participant_id() -> String {
    format!("p{:016x}", rand::random::<u64>())
}
