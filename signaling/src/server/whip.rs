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
use crate::limits::TokenBucket;
use crate::protocol::{ErrorCode, ServerMsg};
use crate::router::ConnId;
use crate::session::{Action, Session};

/// Largest SDP offer accepted (bytes).
pub const MAX_SDP: usize = 64 * 1024;

/// Which endpoint a session came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Whip,
    Whep,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Whip => "whip",
            Kind::Whep => "whep",
        }
    }
}

/// A WHIP/WHEP session: its [`Session`] and the POST waiting for its answer.
pub(super) struct Headless {
    pub(super) session: Session,
    kind: Kind,
    room: String,
    /// The secret part of its `Location` (128 random bits).
    pub(super) resource: String,
    /// The POST waiting for the answer (or error).
    waiting: Option<ConnId>,
}

/// A WHIP/WHEP request, from its method and path.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Options,
    Post {
        kind: Kind,
        room: &'a str,
        from: Option<&'a str>,
    },
    Delete {
        kind: Kind,
        room: &'a str,
        resource: &'a str,
    },
    Method,
    NotFound,
}

/// Whether `path` belongs to WHIP/WHEP.
pub(super) fn is_whip_path(path: &str) -> bool {
    path.starts_with("/whip/") || path.starts_with("/whep/")
}

fn route<'a>(method: &str, path: &'a str) -> Route<'a> {
    let (kind, rest) = if let Some(r) = path.strip_prefix("/whip/") {
        (Kind::Whip, r)
    } else if let Some(r) = path.strip_prefix("/whep/") {
        (Kind::Whep, r)
    } else {
        return Route::NotFound;
    };
    let parts: Vec<&str> = rest.split('/').collect();
    match (method, kind, parts.as_slice()) {
        ("OPTIONS", _, _) => Route::Options,
        ("POST", _, [room]) if !room.is_empty() => Route::Post {
            kind,
            room,
            from: None,
        },
        ("POST", Kind::Whep, [room, from]) if !room.is_empty() && !from.is_empty() => Route::Post {
            kind,
            room,
            from: Some(from),
        },
        ("DELETE", _, [room, resource]) if !resource.is_empty() => Route::Delete {
            kind,
            room,
            resource,
        },
        ("POST" | "DELETE", _, _) => Route::NotFound,
        _ => Route::Method,
    }
}

/// `application/sdp`, ignoring parameters and case.
fn is_sdp_type(v: Option<&str>) -> bool {
    v.and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/sdp"))
}

/// Percent-decoding of a path segment or query value (rooms and names may be non-ASCII).
fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| decode(v))
}

const CORS: [(&str, &str); 2] = [
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Expose-Headers", "Location"),
];

fn text(status: u16, reason: &str, body: &str) -> Vec<u8> {
    http::response_with(
        status,
        reason,
        "text/plain",
        &CORS,
        format!("{body}\n").as_bytes(),
    )
}

/// The HTTP status for an error a session reports.
fn status_of(code: ErrorCode) -> (u16, &'static str) {
    match code {
        ErrorCode::BadRequest | ErrorCode::ResumeFailed => (400, "Bad Request"),
        ErrorCode::Unauthorized => (401, "Unauthorized"),
        ErrorCode::RateLimited => (429, "Too Many Requests"),
        ErrorCode::RoomFull | ErrorCode::Unavailable => (503, "Service Unavailable"),
        ErrorCode::Internal => (500, "Internal Server Error"),
    }
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
        let now = Instant::now();
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
        // The headless session, in the connection table (no socket).
        let resource = format!("{:032x}", rand::random::<u128>());
        let rate = TokenBucket::new(self.settings.rate_per_sec, self.settings.rate_burst, now);
        let hid = self.conns.insert(Conn {
            state: ConnState::Headless(Box::new(Headless {
                session: Session::new(),
                kind,
                room: room.clone(),
                resource: resource.clone(),
                waiting: Some(id),
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
        self.whip_resources.insert(resource, hid);
        // The POST waits for the answer.
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
        // The per-address join rate and the token's session limit, as for a WebSocket join (a
        // refusal answers the POST with 429).
        if actions.iter().any(|a| matches!(a, Action::Place { .. })) && !self.admit_join(hid) {
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
            _ => return self.respond_whip(id, text(404, "Not Found", "no such session")),
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
                    let (status, reason) = status_of(code);
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
        let waiting = match self.conns.get_mut(hid).map(|c| &mut c.state) {
            Some(ConnState::Headless(h)) => h.waiting.take(),
            _ => return,
        };
        if let Some(w) = waiting {
            self.respond_whip(
                w,
                text(
                    503,
                    "Service Unavailable",
                    "the session ended before it was answered",
                ),
            );
        }
        self.remove(hid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_method_and_path() {
        assert_eq!(
            route("POST", "/whip/room1"),
            Route::Post {
                kind: Kind::Whip,
                room: "room1",
                from: None
            }
        );
        assert_eq!(
            route("POST", "/whep/room1/p123"),
            Route::Post {
                kind: Kind::Whep,
                room: "room1",
                from: Some("p123")
            }
        );
        assert_eq!(route("POST", "/whip/room1/x"), Route::NotFound);
        assert_eq!(route("POST", "/whip/"), Route::NotFound);
        assert_eq!(
            route("DELETE", "/whep/r/abc"),
            Route::Delete {
                kind: Kind::Whep,
                room: "r",
                resource: "abc"
            }
        );
        assert_eq!(route("DELETE", "/whip/r"), Route::NotFound);
        assert_eq!(route("PATCH", "/whip/r/abc"), Route::Method);
        assert_eq!(route("GET", "/whip/r"), Route::Method);
        assert_eq!(route("OPTIONS", "/whip/r"), Route::Options);
    }

    #[test]
    fn content_types_and_decoding() {
        assert!(is_sdp_type(Some("application/sdp")));
        assert!(is_sdp_type(Some("Application/SDP; charset=utf-8")));
        assert!(!is_sdp_type(Some("text/plain")));
        assert!(!is_sdp_type(None));
        assert_eq!(decode("a%20b+c").as_deref(), Some("a b c"));
        assert_eq!(decode("%C3%A9t%C3%A9").as_deref(), Some("été"));
        assert_eq!(decode("%zz"), None);
        assert_eq!(decode("%"), None);
        assert_eq!(decode("%ff").as_deref(), None);
        assert_eq!(
            query_param("a=1&name=OBS%20Studio", "name").as_deref(),
            Some("OBS Studio")
        );
        assert_eq!(query_param("", "name"), None);
    }
}
