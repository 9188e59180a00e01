//! WHIP (RFC 9725) and WHEP over HTTP: a publisher POSTs an SDP offer to `/whip/{room}`, a viewer
//! to `/whep/{room}` (anyone's tracks) or `/whep/{room}/{participant}`; the answer comes back as
//! `201 Created` with a `Location` to `DELETE` when done. The bearer token is the same JWT a
//! WebSocket join carries (`Authorization: Bearer …`, required when the server has a JWT secret).
//!
//! Each such session is a *headless* connection: a [`Session`] in the connection table without a
//! socket of its own, so routing, events, node failures and resumes treat it like any other; its
//! messages are consumed here (the answer, or an error, goes to the waiting POST). A WHIP
//! publisher subscribes to nothing (it could not take the server's renegotiation offers); a WHEP
//! viewer publishes nothing and the dataplane fills its offer's recvonly sections with the room's
//! tracks (`viewer` join). The session ends with `DELETE`, when the dataplane removes the
//! participant (ICE timeout once the client stops) or when its node fails (the client POSTs
//! again).
//!
//! Bad input gets clear HTTP errors before anything reaches a node: 411 without a length, 413
//! beyond [`MAX_SDP`] (from the header, the body is never read), 415 for another content type, 400
//! for a body that is not an SDP offer, 429 over the per-address join rate, 401 for a missing or
//! bad token, 404 for an unknown resource, 405 for other methods (ICE trickle over `PATCH` is not
//! supported: the dataplane is ICE-lite and its answer has every candidate).

use std::time::Instant;

use control::{Grants, Viewer};
use tracing::{debug, info};

use super::Server;
use super::clients::{Conn, ConnState};
use crate::http::{self, Head};

mod request;

use crate::auth::ResumeToken;
use crate::limits::TokenBucket;
use crate::protocol::{ErrorCode, ServerMsg};
use crate::router::ConnId;
use crate::session::{Action, Session};
pub(super) use request::is_whip_path;
use request::{CORS, Kind, Route, decode, is_sdp_type, query_param, route, status_of, text};

/// Largest SDP offer accepted (bytes).
pub const MAX_SDP: usize = 64 * 1024;

/// A WHIP/WHEP session: its [`Session`] and the POST waiting for its answer.
pub(super) struct Headless {
    pub(super) session: Session,
    kind: Kind,
    room: String,
    /// The secret part of its `Location`: the session's resume token (set once joined), so a
    /// `DELETE` reaching another signaling instance behind the load balancer can end it too.
    pub(super) resource: String,
    /// The request waiting for the answer (or error).
    waiting: Option<ConnId>,
    /// A `DELETE` that reached this instance for a session held elsewhere: it resumes the
    /// session (proving the token) and leaves.
    deleting: bool,
    /// The leave was sent.
    left: bool,
}

impl Server {
    /// How many body bytes the request in `head` needs before it can be answered (0: none, or
    /// it is refused from the head alone).
    pub(super) fn whip_body_len(head: &Head) -> usize {
        if head.method != "POST" {
            return 0;
        }
        match head
            .header("content-length")
            .and_then(|v| v.trim().parse::<usize>().ok())
        {
            Some(n) if n <= MAX_SDP && is_sdp_type(head.header("content-type")) => n,
            _ => 0,
        }
    }

    /// A complete WHIP/WHEP request on HTTP connection `id` (`body`: its body, already read).
    pub(super) fn whip_request(&mut self, id: ConnId, head: &Head, body: &[u8]) {
        match route(&head.method, &head.path) {
            Route::Options => self.respond_whip(
                id,
                http::response_with(
                    204,
                    "No Content",
                    "text/plain",
                    &[
                        ("Access-Control-Allow-Origin", "*"),
                        ("Access-Control-Allow-Methods", "POST, DELETE, OPTIONS"),
                        (
                            "Access-Control-Allow-Headers",
                            "Authorization, Content-Type",
                        ),
                        ("Access-Control-Expose-Headers", "Location"),
                        ("Accept-Post", "application/sdp"),
                    ],
                    b"",
                ),
            ),
            Route::Method => self.respond_whip(
                id,
                http::response_with(
                    405,
                    "Method Not Allowed",
                    "text/plain",
                    &[("Allow", "POST, DELETE, OPTIONS"), CORS[0]],
                    b"use POST with an SDP offer, DELETE to end (ICE trickle is not supported)\n",
                ),
            ),
            Route::NotFound => self.respond_whip(id, text(404, "Not Found", "no such resource")),
            Route::Delete {
                kind,
                room,
                resource,
            } => self.whip_delete(id, kind, room, resource),
            Route::Post { kind, room, from } => {
                let (room, from) = (room.to_string(), from.map(str::to_string));
                self.whip_post(id, head, body, kind, &room, from.as_deref());
            }
        }
    }

    fn whip_post(
        &mut self,
        id: ConnId,
        head: &Head,
        body: &[u8],
        kind: Kind,
        room: &str,
        from: Option<&str>,
    ) {
        if !is_sdp_type(head.header("content-type")) {
            return self.respond_whip(
                id,
                text(
                    415,
                    "Unsupported Media Type",
                    "the body must be an SDP offer (Content-Type: application/sdp)",
                ),
            );
        }
        let Some(len) = head
            .header("content-length")
            .and_then(|v| v.trim().parse::<usize>().ok())
        else {
            return self.respond_whip(
                id,
                text(
                    411,
                    "Length Required",
                    "Content-Length is required (no chunked bodies)",
                ),
            );
        };
        if len > MAX_SDP {
            self.metrics.limit("whip_body");
            return self.respond_whip(
                id,
                text(
                    413,
                    "Content Too Large",
                    &format!("an SDP offer is at most {MAX_SDP} bytes"),
                ),
            );
        }
        let offer = match std::str::from_utf8(body) {
            Ok(s) if s.starts_with("v=0") && s.contains("\nm=") => s.to_string(),
            _ => {
                return self
                    .respond_whip(id, text(400, "Bad Request", "the body is not an SDP offer"));
            }
        };
        let (Some(room), Some(from)) = (
            decode(room),
            from.map(decode).unwrap_or(Some(String::new())),
        ) else {
            return self.respond_whip(id, text(400, "Bad Request", "bad percent-encoding"));
        };
        let token = head
            .header("authorization")
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(|t| t.trim().to_string());
        let name = query_param(&head.query, "name").unwrap_or_else(|| match kind {
            Kind::Whip => "WHIP publisher".into(),
            Kind::Whep => "WHEP viewer".into(),
        });
        let Some(ip) = self.conns.get(id).map(|c| c.ip) else {
            return;
        };
        if self.websockets >= self.settings.max_connections {
            self.metrics.limit("connections");
            return self.respond_whip(
                id,
                text(503, "Service Unavailable", "server full; retry later"),
            );
        }
        let hid = self.new_headless(id, kind, &room, ip, false);
        let (allowed, viewer) = match kind {
            Kind::Whip => (
                Grants {
                    publish: true,
                    subscribe: false,
                },
                None,
            ),
            Kind::Whep => (
                Grants {
                    publish: false,
                    subscribe: true,
                },
                Some(Viewer {
                    from: (!from.is_empty()).then_some(from),
                }),
            ),
        };
        let ctx = self.ctx.clone();
        let actions = match self.conns.get_mut(hid).map(|c| &mut c.state) {
            Some(ConnState::Headless(h)) => h.session.join_with_offer(
                room,
                name,
                token,
                offer,
                allowed,
                viewer,
                &ctx,
                super::websocket::new_participant_id,
            ),
            _ => return,
        };
        debug!(
            conn = hid,
            kind = kind.prefix(),
            "whip/whep session starting"
        );
        self.start_headless(hid, actions);
    }

    /// A headless connection (in the connection table, no socket) for a session answered to
    /// request `id`, which waits in `Await`.
    fn new_headless(
        &mut self,
        id: ConnId,
        kind: Kind,
        room: &str,
        ip: std::net::IpAddr,
        deleting: bool,
    ) -> ConnId {
        let now = Instant::now();
        let rate = TokenBucket::new(self.settings.rate_per_sec, self.settings.rate_burst, now);
        let hid = self.conns.insert(Conn {
            state: ConnState::Headless(Box::new(Headless {
                session: Session::new(),
                kind,
                room: room.to_string(),
                resource: String::new(),
                waiting: Some(id),
                deleting,
                left: false,
            })),
            since: now,
            writable: false,
            admin: false,
            closing: None,
            rate,
            refused: 0,
            join_started: Some(now),
            counted_ip: None,
            ip,
            last_rx: now,
            pinged: false,
            idle_since: None,
            blocked_since: None,
            identity: None,
            via_socket: None,
        });
        self.websockets += 1;
        // The request waits for the answer.
        if let Some(conn) = self.conns.get_mut(id)
            && matches!(conn.state, ConnState::Http { .. })
            && let ConnState::Http { stream, .. } =
                std::mem::replace(&mut conn.state, ConnState::Gone)
        {
            conn.state = ConnState::Await {
                stream,
                session: hid,
            };
        }
        hid
    }

    /// Perform a new headless session's first actions, after the per-address join rate and the
    /// token's session limit, as for a WebSocket join (a refusal answers with 429).
    fn start_headless(&mut self, hid: ConnId, actions: Vec<Action>) {
        if Action::start_session(&actions) && !self.admit_join(hid) {
            self.end_headless_if_idle(hid);
            return;
        }
        self.apply(hid, actions);
    }

    fn whip_delete(&mut self, id: ConnId, kind: Kind, room: &str, resource: &str) {
        let hid = self.whip_resources.get(resource).copied();
        let actions = match hid
            .and_then(|h| self.conns.get_mut(h))
            .map(|c| &mut c.state)
        {
            Some(ConnState::Headless(h))
                if h.kind == kind && decode(room).as_deref() == Some(h.room.as_str()) =>
            {
                h.session
                    .handle_text(r#"{"type":"leave"}"#, &self.ctx, String::new)
            }
            _ => return self.delete_elsewhere(id, kind, room, resource),
        };
        if let Some(hid) = hid {
            info!(
                conn = hid,
                kind = kind.prefix(),
                "whip/whep session deleted"
            );
            self.apply(hid, actions);
            // A session still joining is left as soon as its join is confirmed.
            self.end_headless_if_idle(hid);
        }
        self.respond_whip(id, http::response_with(200, "OK", "text/plain", &CORS, b""));
    }

    /// `DELETE` of a session this instance does not hold: if the resource is a resume token,
    /// resume the session here (which proves the token to its dataplane and takes it from the
    /// instance holding it) and leave; else 404.
    fn delete_elsewhere(&mut self, id: ConnId, kind: Kind, room: &str, resource: &str) {
        if ResumeToken::decode(resource).is_none() {
            return self.respond_whip(id, text(404, "Not Found", "no such session"));
        }
        let Some(ip) = self.conns.get(id).map(|c| c.ip) else {
            return;
        };
        let room = decode(room).unwrap_or_default();
        let hid = self.new_headless(id, kind, &room, ip, true);
        let join = serde_json::json!({"type": "join", "resume": resource}).to_string();
        let actions = match self.conns.get_mut(hid).map(|c| &mut c.state) {
            Some(ConnState::Headless(h)) => h.session.handle_text(&join, &self.ctx, String::new),
            _ => return,
        };
        self.start_headless(hid, actions);
    }

    /// Answer a WHIP/WHEP request (from `Http` or `Await`) and close.
    fn respond_whip(&mut self, id: ConnId, out: Vec<u8>) {
        if let Some(conn) = self.conns.get_mut(id)
            && matches!(conn.state, ConnState::Await { .. })
            && let ConnState::Await { stream, .. } =
                std::mem::replace(&mut conn.state, ConnState::Gone)
        {
            conn.state = ConnState::Http {
                stream,
                buf: Vec::new(),
                want: 0,
            };
        }
        self.respond(id, out);
    }

    /// A message the session of headless connection `hid` would send its client.
    pub(super) fn headless_msg(&mut self, hid: ConnId, msg: ServerMsg) {
        let Some(ConnState::Headless(h)) = self.conns.get_mut(hid).map(|c| &mut c.state) else {
            return;
        };
        match msg {
            // A deleter resumed the session: now leave it.
            ServerMsg::Joined { .. } if h.deleting => {
                h.left = true;
                let actions = h
                    .session
                    .handle_text(r#"{"type":"leave"}"#, &self.ctx, String::new);
                self.apply(hid, actions);
            }
            // The session's resource is its resume token (see `Headless::resource`).
            ServerMsg::Joined { resume, .. } if h.resource.is_empty() => {
                h.resource = resume.clone();
                self.whip_resources.insert(resume, hid);
            }
            ServerMsg::Answer { sdp } => {
                let Some(waiting) = h.waiting.take() else {
                    return;
                };
                let location = format!("/{}/{}/{}", h.kind.prefix(), h.room, h.resource);
                let resp = http::response_with(
                    201,
                    "Created",
                    "application/sdp",
                    &[("Location", &location), CORS[0], CORS[1]],
                    sdp.as_bytes(),
                );
                info!(conn = hid, kind = h.kind.prefix(), room = %h.room, "whip/whep session answered");
                self.respond_whip(waiting, resp);
            }
            ServerMsg::Error { code, message } => {
                if let Some(waiting) = h.waiting.take() {
                    let (status, reason) = match code {
                        // A deleter whose token names no session (any more).
                        ErrorCode::ResumeFailed | ErrorCode::BadRequest if h.deleting => {
                            (404, "Not Found")
                        }
                        code => status_of(code),
                    };
                    let mut resp = text(status, reason, &message);
                    if status == 401 {
                        resp = http::response_with(
                            401,
                            reason,
                            "text/plain",
                            &[("WWW-Authenticate", "Bearer"), CORS[0]],
                            format!("{message}\n").as_bytes(),
                        );
                    }
                    self.respond_whip(waiting, resp);
                } else {
                    debug!(conn = hid, %message, "whip/whep session error");
                }
            }
            // Nothing else reaches a WHIP/WHEP client: it has no channel for it.
            _ => {}
        }
    }

    /// Whether headless connection `hid` still waits to answer POST `id`.
    pub(super) fn headless_waiting_for(&mut self, hid: ConnId, id: ConnId) -> bool {
        match self.conns.get_mut(hid).map(|c| &mut c.state) {
            Some(ConnState::Headless(h)) if h.waiting == Some(id) => {
                h.waiting = None;
                true
            }
            _ => false,
        }
    }

    /// The POST waiting on `hid` went away before its answer: leave the session.
    pub(super) fn cancel_headless(&mut self, hid: ConnId) {
        let actions = match self.conns.get_mut(hid).map(|c| &mut c.state) {
            Some(ConnState::Headless(h)) => {
                h.session
                    .handle_text(r#"{"type":"leave"}"#, &self.ctx, String::new)
            }
            _ => return,
        };
        self.apply(hid, actions);
        self.end_headless_if_idle(hid);
    }

    /// Remove a headless session that is over (not joining, not joined) and answered.
    pub(super) fn end_headless_if_idle(&mut self, hid: ConnId) {
        let over = match self.conns.get(hid).map(|c| &c.state) {
            Some(ConnState::Headless(h)) => !h.session.is_active(),
            _ => false,
        };
        if over {
            self.end_headless(hid);
        }
    }

    /// Remove headless connection `hid`, answering its waiting POST if it never got an answer.
    pub(super) fn end_headless(&mut self, hid: ConnId) {
        let (waiting, deleted) = match self.conns.get_mut(hid).map(|c| &mut c.state) {
            Some(ConnState::Headless(h)) => (h.waiting.take(), h.deleting.then_some(h.left)),
            _ => return,
        };
        if let Some(w) = waiting {
            let resp = match deleted {
                Some(true) => http::response_with(200, "OK", "text/plain", &CORS, b""),
                Some(false) => text(404, "Not Found", "no such session"),
                None => text(
                    503,
                    "Service Unavailable",
                    "the session ended before it was answered",
                ),
            };
            self.respond_whip(w, resp);
        }
        self.remove(hid);
    }
}
