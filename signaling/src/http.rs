//! The little HTTP this server speaks: parse a request head, serve the page, upgrade `/ws`.

/// Largest request head accepted.
pub const MAX_HEAD: usize = 16 * 1024;

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    /// Path without the query string.
    pub path: String,
    /// The query string (after `?`, empty if none).
    pub query: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Bytes of the head in the buffer (a body starts here).
    pub len: usize,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether this is a WebSocket upgrade request (RFC 6455 §4.2.1).
    pub fn is_websocket_upgrade(&self) -> bool {
        let has_token = |h: &str, t: &str| {
            self.header(h)
                .is_some_and(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case(t)))
        };
        self.method == "GET"
            && has_token("upgrade", "websocket")
            && has_token("connection", "upgrade")
    }
}

/// Why a request head was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadError {
    TooLarge,
    Malformed(String),
}

/// Parse a request head from `buf`. `Ok(None)`: incomplete, read more.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
            let full = req.path.unwrap_or("/");
            let (path, query) = full.split_once('?').unwrap_or((full, ""));
            Ok(Some(Head {
                method: req.method.unwrap_or("").to_string(),
                path: path.to_string(),
                query: query.to_string(),
                len,
                headers: req
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect(),
            }))
        }
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(HeadError::Malformed(e.to_string())),
    }
}

/// A complete `Connection: close` response.
pub fn response(status: u16, reason: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    response_with(status, reason, content_type, &[], body)
}

/// [`response`] with extra headers (name, value).
pub fn response_with(
    status: u16,
    reason: &str,
    content_type: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut head = String::new();
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\n\
         {head}\
         Content-Type: {content_type}\r\n\
         Content-Length: {}\r\n\
         Cache-Control: no-cache\r\n\
         X-Content-Type-Options: nosniff\r\n\
         Referrer-Policy: no-referrer\r\n\
         Content-Security-Policy: default-src 'self'; connect-src 'self' ws: wss:; media-src 'self' blob: mediastream:; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; frame-ancestors 'none'\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// `resp` (from [`response`]) without its body of `body_len` bytes: the answer to a `HEAD`
/// request (same headers, including `Content-Length`, but no body).
pub fn head_only(mut resp: Vec<u8>, body_len: usize) -> Vec<u8> {
    resp.truncate(resp.len().saturating_sub(body_len));
    resp
}

/// The `101 Switching Protocols` response for an upgrade request, or a 400 reason.
pub fn websocket_accept(head: &Head) -> Result<Vec<u8>, &'static str> {
    if head.header("sec-websocket-version") != Some("13") {
        return Err("unsupported or missing Sec-WebSocket-Version (13 required)");
    }
    let key = head
        .header("sec-websocket-key")
        .ok_or("missing Sec-WebSocket-Key")?;
    let accept = tungstenite::handshake::derive_accept_key(key.trim().as_bytes());
    Ok(format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_heads_incrementally() {
        let req = b"GET /ws?x=1 HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        assert_eq!(parse_head(&req[..20]), Ok(None));
        let head = parse_head(req).expect("valid").expect("complete");
        assert_eq!(head.path, "/ws");
        assert!(head.is_websocket_upgrade());
        let resp = String::from_utf8(websocket_accept(&head).expect("accept")).expect("utf8");
        // The RFC 6455 example key.
        assert!(
            resp.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "{resp}"
        );
    }

    #[test]
    fn head_responses_have_headers_but_no_body() {
        let body = b"hello";
        let r = head_only(response(200, "OK", "text/plain", body), body.len());
        let text = String::from_utf8(r).expect("utf8");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
        assert!(text.contains("Content-Length: 5\r\n"), "{text}");
    }

    #[test]
    fn refuses_bad_heads() {
        assert!(matches!(
            parse_head(b"\x00\x01garbage\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        let big = vec![b'a'; MAX_HEAD + 10];
        assert!(parse_head(&big).is_err());
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.extend(vec![b'a'; MAX_HEAD]);
        assert_eq!(parse_head(&long), Err(HeadError::TooLarge));
        let head =
            parse_head(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n")
                .expect("valid")
                .expect("complete");
        assert!(websocket_accept(&head).is_err());
        let head =
            parse_head(b"POST /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n")
                .expect("valid")
                .expect("complete");
        assert!(!head.is_websocket_upgrade());
    }
}
