//! WHIP and WHEP clients over real sockets: the SDP offer goes to signaling in one HTTP POST, the
//! answer comes back with the session's `Location`, media flows over UDP (or ICE-TCP) like any
//! synthetic peer's, and `DELETE` ends it. [`http_request`] is the small blocking HTTP/1.1 client
//! the tests also use for bad input.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::client::{Media, MediaLink};
use crate::peer::Peer;

/// An HTTP response: status, headers (names lower-cased), body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), with `headers` and `body`
/// as given (nothing added but `Host` and `Connection`). Reads the whole response.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<HttpResponse> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    // The server may answer (and close) before the whole body is sent (413): not an error.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> anyhow::Result<HttpResponse> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no complete response head")?;
    let head = std::str::from_utf8(&raw[..end]).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .context("no status")?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    })
}

/// A WHIP publisher or WHEP viewer: a [`Peer`] whose offer went over HTTP.
pub struct WhipClient {
    pub peer: Peer,
    link: MediaLink,
    signaling: SocketAddr,
    /// The session's resource (`Location`), for `DELETE`.
    pub location: String,
    pub answer: String,
    token: Option<String>,
}

impl std::fmt::Debug for WhipClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhipClient")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl WhipClient {
    /// Publish `media` to `room` over WHIP (`POST /whip/{room}`), media over UDP or ICE-TCP.
    pub fn publish(
        signaling: SocketAddr,
        room: &str,
        media: Media,
        token: Option<&str>,
        tcp: bool,
        epoch: Instant,
    ) -> anyhow::Result<Self> {
        let now = Instant::now();
        let link = new_link(tcp, Some(media), now)?;
        let mut peer = link.new_peer("whip", now, epoch)?;
        let offer = peer.create_whip_offer(media.audio, media.video);
        Self::post(
            signaling,
            &format!("/whip/{room}?name=whip-{}", rand::random::<u16>()),
            offer,
            peer,
            link,
            token,
        )
    }

    /// Watch `room` (or only `from`'s tracks) over WHEP with `audio` + `video` recvonly slots.
    pub fn view(
        signaling: SocketAddr,
        room: &str,
        from: Option<&str>,
        audio: usize,
        video: usize,
        token: Option<&str>,
        epoch: Instant,
    ) -> anyhow::Result<Self> {
        let now = Instant::now();
        let link = new_link(false, None, now)?;
        let mut peer = link.new_peer("whep", now, epoch)?;
        let offer = peer.create_viewer_offer(audio, video);
        let path = match from {
            Some(p) => format!("/whep/{room}/{p}"),
            None => format!("/whep/{room}"),
        };
        Self::post(signaling, &path, offer, peer, link, token)
    }

    fn post(
        signaling: SocketAddr,
        path: &str,
        offer: String,
        mut peer: Peer,
        mut link: MediaLink,
        token: Option<&str>,
    ) -> anyhow::Result<Self> {
        let auth = token.map(|t| format!("Bearer {t}"));
        let len = offer.len().to_string();
        let mut headers = vec![
            ("Content-Type", "application/sdp"),
            ("Content-Length", len.as_str()),
        ];
        if let Some(a) = &auth {
            headers.push(("Authorization", a.as_str()));
        }
        let resp = http_request(signaling, "POST", path, &headers, offer.as_bytes())?;
        if resp.status != 201 {
            bail!("POST {path}: {} {}", resp.status, resp.text().trim());
        }
        let location = resp
            .header("location")
            .context("201 without Location")?
            .to_string();
        let answer = resp.text();
        peer.handle_answer(&answer)?;
        link.connect(&answer, Duration::from_secs(5))?;
        let mut c = Self {
            peer,
            link,
            signaling,
            location,
            answer,
            token: token.map(str::to_string),
        };
        c.link.flush(&mut c.peer);
        Ok(c)
    }

    /// Received datagrams, timers, media due, sends.
    pub fn poll(&mut self, now: Instant) {
        self.link.poll(&mut self.peer, now);
    }

    /// End the session (`DELETE` its `Location`); returns the HTTP status.
    pub fn delete(&self) -> anyhow::Result<u16> {
        self.delete_via(self.signaling)
    }

    /// [`WhipClient::delete`] through another signaling instance (behind a load balancer).
    pub fn delete_via(&self, signaling: SocketAddr) -> anyhow::Result<u16> {
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut headers = Vec::new();
        if let Some(a) = &auth {
            headers.push(("Authorization", a.as_str()));
        }
        Ok(http_request(signaling, "DELETE", &self.location, &headers, b"")?.status)
    }
}

fn new_link(tcp: bool, media: Option<Media>, now: Instant) -> anyhow::Result<MediaLink> {
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    Ok(if tcp {
        MediaLink::tcp(ip, media, now)
    } else {
        MediaLink::bind(ip, media, now)?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_responses() {
        let r = parse_response(
            b"HTTP/1.1 201 Created\r\nLocation: /whip/r/x\r\nContent-Length: 3\r\n\r\nv=0",
        )
        .expect("parses");
        assert_eq!(r.status, 201);
        assert_eq!(r.header("location"), Some("/whip/r/x"));
        assert_eq!(r.text(), "v=0");
        assert!(parse_response(b"HTTP/1.1 200").is_err());
    }
}
