//! The pure part of WHIP/WHEP: which request a method and path are, content types, percent
//! decoding, the plain-text responses and the HTTP status of a session's error.

use crate::http;
use crate::protocol::ErrorCode;

/// Which endpoint a session came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::server) enum Kind {
    Whip,
    Whep,
}

impl Kind {
    pub(super) fn prefix(self) -> &'static str {
        match self {
            Kind::Whip => "whip",
            Kind::Whep => "whep",
        }
    }
}

/// A WHIP/WHEP request, from its method and path.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Route<'a> {
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
pub(in crate::server) fn is_whip_path(path: &str) -> bool {
    path.starts_with("/whip/") || path.starts_with("/whep/")
}

pub(super) fn route<'a>(method: &str, path: &'a str) -> Route<'a> {
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
pub(super) fn is_sdp_type(v: Option<&str>) -> bool {
    v.and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/sdp"))
}

/// Percent-decoding of a path segment or query value (rooms and names may be non-ASCII).
pub(super) fn decode(s: &str) -> Option<String> {
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

pub(super) fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| decode(v))
}

pub(super) const CORS: [(&str, &str); 2] = [
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Expose-Headers", "Location"),
];

pub(super) fn text(status: u16, reason: &str, body: &str) -> Vec<u8> {
    http::response_with(
        status,
        reason,
        "text/plain",
        &CORS,
        format!("{body}\n").as_bytes(),
    )
}

/// The HTTP status for an error a session reports.
pub(super) fn status_of(code: ErrorCode) -> (u16, &'static str) {
    match code {
        ErrorCode::BadRequest | ErrorCode::ResumeFailed => (400, "Bad Request"),
        ErrorCode::Unauthorized => (401, "Unauthorized"),
        ErrorCode::RateLimited => (429, "Too Many Requests"),
        ErrorCode::RoomFull | ErrorCode::Unavailable => (503, "Service Unavailable"),
        ErrorCode::Internal => (500, "Internal Server Error"),
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
