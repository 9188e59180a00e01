//! A synthetic participant over real sockets: the signaling WebSocket protocol (no back door) plus
//! a UDP socket (or an ICE-TCP connection) for media, around a sans-IO [`Peer`].

mod link;

pub(crate) use link::MediaLink;
pub use link::RateScale;

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tungstenite::Message;
use tungstenite::stream::MaybeTlsStream;

use crate::harness::{Ws, read_json};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
use crate::peer::Peer;

/// What to publish.
#[derive(Debug, Clone, Copy)]
pub struct Media {
    pub audio: bool,
    pub video: bool,
    pub fps: u32,
    pub packets_per_frame: usize,
    pub packet_size: usize,
    pub audio_size: usize,
    /// A keyframe this often (besides the ones requested by PLI).
    pub keyframe_interval: Option<Duration>,
    /// Keyframes are this many times the packets of a delta frame.
    pub keyframe_factor: usize,
    /// Video as three simulcast layers (q, h, f); `packets_per_frame` is the top layer's.
    pub simulcast: bool,
}

impl Default for Media {
    fn default() -> Self {
        Self {
            audio: true,
            video: true,
            fps: 30,
            packets_per_frame: 3,
            packet_size: 1100,
            audio_size: 120,
            keyframe_interval: None,
            keyframe_factor: 4,
            simulcast: false,
        }
    }
}

/// What a join on a signaling WebSocket produced.
struct Joined {
    id: String,
    resume_token: Option<String>,
    others: Vec<(String, String)>,
    link: MediaLink,
    peer: Peer,
    answer_sdp: String,
    /// Server messages that arrived while waiting, in order.
    stash: Vec<Value>,
}

/// Send `join` on `ws` (blocking, with its read timeout), wait for `joined`, then make the first
/// offer from a fresh socket and peer and apply the answer.
#[allow(clippy::too_many_arguments)]
fn join_on(
    ws: &mut Ws,
    room: &str,
    name: &str,
    token: Option<&str>,
    media: Option<Media>,
    epoch: Instant,
    bind: IpAddr,
    tcp: bool,
) -> anyhow::Result<Joined> {
    let mut join = json!({"type": "join", "room": room, "name": name});
    if let Some(t) = token {
        join["token"] = json!(t);
    }
    ws.send(Message::text(join.to_string()))?;
    let mut stash = Vec::new();
    let joined = wait_for(ws, "joined", &mut stash)?;
    let id = joined["participant"]["id"]
        .as_str()
        .context("joined without id")?
        .to_string();
    let resume_token = joined["resume"].as_str().map(str::to_string);
    let others = joined["participants"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| {
                    Some((
                        p["id"].as_str()?.to_string(),
                        p["name"].as_str()?.to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let now = Instant::now();
    let mut link = if tcp {
        MediaLink::tcp(bind, media, now)
    } else {
        MediaLink::bind(bind, media, now)?
    };
    let mut peer = link.new_peer(&id, now, epoch)?;
    let (audio, video) = media.map_or((false, false), |m| (m.audio, m.video));
    if media.is_some_and(|m| m.simulcast && m.video) {
        peer.enable_simulcast();
    }
    let offer = peer.create_offer(audio, video);
    ws.send(Message::text(
        json!({"type": "offer", "sdp": offer}).to_string(),
    ))?;
    let answer = wait_for(ws, "answer", &mut stash)?;
    let answer_sdp = answer["sdp"]
        .as_str()
        .context("answer without sdp")?
        .to_string();
    peer.handle_answer(&answer_sdp)?;
    link.connect(&answer_sdp, Duration::from_secs(5))?;
    Ok(Joined {
        id,
        resume_token,
        others,
        link,
        peer,
        answer_sdp,
        stash,
    })
}

/// A connected synthetic participant.
pub struct Client {
    pub peer: Peer,
    pub id: String,
    pub room: String,
    ws: Ws,
    ws_open: bool,
    link: MediaLink,
    /// Every server message received after `joined` (parsed).
    pub messages: Vec<Value>,
    /// Current other participants: (id, name).
    pub others: Vec<(String, String)>,
    /// The SDP answer to our first offer (its candidate names the worker's UDP port).
    pub answer_sdp: String,
    /// Token to resume the session after a lost WebSocket.
    pub resume_token: Option<String>,
    pub name: String,
    epoch: Instant,
    /// Signaling URLs to resume through when the WebSocket drops (tried in turn).
    pub resume_urls: Vec<String>,
    next_resume_url: usize,
    /// Successful resumes, and when the WebSocket was last lost.
    pub resumes: u32,
    pub ws_lost_at: Option<Instant>,
    /// The join token, when the server requires one (used again on rejoin).
    token: Option<String>,
    /// The address media sockets bind.
    bind: IpAddr,
    /// Media over ICE-TCP instead of UDP.
    tcp: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.id)
            .field("room", &self.room)
            .finish_non_exhaustive()
    }
}

/// Wait for a message of `kind`, collecting others into `stash`.
fn wait_for(ws: &mut Ws, kind: &str, stash: &mut Vec<Value>) -> anyhow::Result<Value> {
    loop {
        let v = read_json(ws)?;
        if v["type"] == kind {
            return Ok(v);
        }
        if v["type"] == "error" {
            bail!("server error while waiting for {kind}: {v}");
        }
        stash.push(v);
    }
}

impl Client {
    /// Connect to `ws_url` (e.g. `ws://127.0.0.1:8080/ws`), join `room` as `name`, publish `media`
    /// (None: receive only), and complete the first offer/answer. Blocks at most `timeout`.
    pub fn join(
        ws_url: &str,
        room: &str,
        name: &str,
        media: Option<Media>,
        epoch: Instant,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        Self::join_with_token(ws_url, room, name, None, media, epoch, timeout)
    }

    /// [`Client::join`] with the media socket bound to `bind` (e.g. an address of a network
    /// namespace the load generator runs in) instead of 127.0.0.1.
    pub fn join_from(
        bind: IpAddr,
        ws_url: &str,
        room: &str,
        name: &str,
        media: Option<Media>,
        epoch: Instant,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        Self::open(ws_url, room, name, None, media, epoch, timeout, bind, false)
    }

    /// [`Client::join_from`] with media over ICE-TCP: an active TCP candidate, one connection
    /// to the worker's passive candidate, RFC 4571 framing.
    pub fn join_tcp_from(
        bind: IpAddr,
        ws_url: &str,
        room: &str,
        name: &str,
        media: Option<Media>,
        epoch: Instant,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        Self::open(ws_url, room, name, None, media, epoch, timeout, bind, true)
    }

    /// [`Client::join`] with a join token (servers with `--jwt-secret`).
    pub fn join_with_token(
        ws_url: &str,
        room: &str,
        name: &str,
        token: Option<&str>,
        media: Option<Media>,
        epoch: Instant,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        Self::open(
            ws_url, room, name, token, media, epoch, timeout, LOCALHOST, false,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn open(
        ws_url: &str,
        room: &str,
        name: &str,
        token: Option<&str>,
        media: Option<Media>,
        epoch: Instant,
        timeout: Duration,
        bind: IpAddr,
        tcp: bool,
    ) -> anyhow::Result<Self> {
        let (mut ws, _) =
            tungstenite::connect(ws_url).with_context(|| format!("connecting {ws_url}"))?;
        if let MaybeTlsStream::Plain(s) = ws.get_mut() {
            s.set_read_timeout(Some(timeout))?;
            s.set_nodelay(true)?;
        }
        let Joined {
            id,
            resume_token,
            others,
            link,
            peer,
            answer_sdp,
            stash,
        } = join_on(&mut ws, room, name, token, media, epoch, bind, tcp)?;
        if let MaybeTlsStream::Plain(s) = ws.get_mut() {
            s.set_nonblocking(true)?;
        }
        let mut c = Self {
            peer,
            id,
            room: room.to_string(),
            ws,
            ws_open: true,
            link,
            messages: Vec::new(),
            others,
            answer_sdp,
            resume_token,
            name: name.to_string(),
            epoch,
            resume_urls: Vec::new(),
            next_resume_url: 0,
            resumes: 0,
            ws_lost_at: None,
            token: token.map(str::to_string),
            bind,
            tcp,
        };
        for v in stash {
            c.handle_server_message(v)?;
        }
        c.link.flush(&mut c.peer);
        Ok(c)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.peer.local_addr()
    }

    /// Datagrams the ICE-TCP connection dropped because it could not write them fast enough.
    pub fn media_dropped(&self) -> u64 {
        self.link.dropped()
    }

    /// File descriptors to watch for readability: (media socket, WebSocket).
    pub fn fds(&self) -> (std::os::fd::RawFd, Option<std::os::fd::RawFd>) {
        use std::os::fd::AsRawFd;
        let ws = match self.ws.get_ref() {
            MaybeTlsStream::Plain(s) => Some(s.as_raw_fd()),
            _ => None,
        };
        (self.link.fd(), ws)
    }

    /// When this client next needs [`Client::poll`] without any socket event (peer timers,
    /// media ticks).
    pub fn next_deadline(&self) -> Instant {
        self.link.next_deadline(&self.peer)
    }

    /// The UDP port of the server's ICE candidate in our answer (= the worker hosting the room).
    pub fn server_port(&self) -> Option<u16> {
        self.answer_sdp
            .lines()
            .find(|l| l.starts_with("a=candidate:"))
            .and_then(|l| l.split_whitespace().nth(5))
            .and_then(|p| p.parse().ok())
    }

    pub fn ws_open(&self) -> bool {
        self.ws_open
    }

    fn handle_server_message(&mut self, v: Value) -> anyhow::Result<()> {
        match v["type"].as_str() {
            Some("offer") => {
                let answer = self.peer.handle_offer(v["sdp"].as_str().unwrap_or(""))?;
                self.send_ws(json!({"type": "answer", "sdp": answer}))?;
            }
            Some("participant_joined") => {
                let p = &v["participant"];
                if let (Some(id), Some(name)) = (p["id"].as_str(), p["name"].as_str()) {
                    self.others.push((id.to_string(), name.to_string()));
                }
            }
            Some("participant_left") => {
                let gone = v["participant_id"].as_str().unwrap_or("");
                self.others.retain(|(id, _)| id != gone);
            }
            _ => {}
        }
        self.messages.push(v);
        Ok(())
    }

    /// Send a raw JSON message on the WebSocket.
    pub fn send_ws(&mut self, v: Value) -> anyhow::Result<()> {
        match self.ws.send(Message::text(v.to_string())) {
            Ok(()) => Ok(()),
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Send a raw text frame (for bad-input tests).
    pub fn send_ws_text(&mut self, text: String) -> anyhow::Result<()> {
        match self.ws.send(Message::text(text)) {
            Ok(()) => Ok(()),
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Resume the session through `ws_url` after the WebSocket was lost: same peer connection,
    /// no ICE restart.
    pub fn resume(&mut self, ws_url: &str, timeout: Duration) -> anyhow::Result<()> {
        let token = self.resume_token.clone().context("no resume token")?;
        let (mut ws, _) =
            tungstenite::connect(ws_url).with_context(|| format!("connecting {ws_url}"))?;
        if let MaybeTlsStream::Plain(s) = ws.get_mut() {
            s.set_read_timeout(Some(timeout))?;
            s.set_nodelay(true)?;
        }
        ws.send(Message::text(
            json!({"type": "join", "resume": token}).to_string(),
        ))?;
        let mut stash = Vec::new();
        let joined = wait_for(&mut ws, "joined", &mut stash)?;
        anyhow::ensure!(joined["resumed"] == true, "not a resume: {joined}");
        if let Some(t) = joined["resume"].as_str() {
            self.resume_token = Some(t.to_string());
        }
        if let MaybeTlsStream::Plain(s) = ws.get_mut() {
            s.set_nonblocking(true)?;
        }
        self.ws = ws;
        self.ws_open = true;
        self.resumes += 1;
        for v in stash {
            self.handle_server_message(v)?;
        }
        Ok(())
    }

    /// After `room_closed` (the room's node failed): join the room again on the same WebSocket
    /// with a fresh peer connection (the room lands on a healthy node).
    pub fn rejoin(&mut self, timeout: Duration) -> anyhow::Result<()> {
        if let MaybeTlsStream::Plain(s) = self.ws.get_mut() {
            s.set_nonblocking(false)?;
            s.set_read_timeout(Some(timeout))?;
        }
        let j = join_on(
            &mut self.ws,
            &self.room,
            &self.name,
            self.token.as_deref(),
            self.link.media,
            self.epoch,
            self.bind,
            self.tcp,
        )?;
        self.id = j.id;
        self.resume_token = j.resume_token;
        self.others = j.others;
        self.link = j.link;
        self.peer = j.peer;
        self.answer_sdp = j.answer_sdp;
        if let MaybeTlsStream::Plain(s) = self.ws.get_mut() {
            s.set_nonblocking(true)?;
        }
        for v in j.stash {
            self.handle_server_message(v)?;
        }
        self.link.flush(&mut self.peer);
        Ok(())
    }

    /// Messages of `kind` received so far.
    pub fn count(&self, kind: &str) -> usize {
        self.messages.iter().filter(|m| m["type"] == kind).count()
    }

    /// Leave politely.
    pub fn leave(&mut self) -> anyhow::Result<()> {
        self.send_ws(json!({"type": "leave"}))
    }

    /// Do all pending work: WebSocket messages, received datagrams, timers, media due.
    pub fn poll(&mut self, now: Instant) -> anyhow::Result<()> {
        if !self.ws_open && !self.resume_urls.is_empty() && self.resume_token.is_some() {
            // Reconnect and resume through the next instance (bounded per attempt).
            let url = self.resume_urls[self.next_resume_url % self.resume_urls.len()].clone();
            self.next_resume_url += 1;
            if let Err(e) = self.resume(&url, Duration::from_secs(2)) {
                tracing::debug!(client = %self.id, %url, error = %e, "resume attempt failed");
            }
        }
        while self.ws_open {
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(t.as_str())?;
                    self.handle_server_message(v)?;
                }
                Ok(Message::Close(_)) => self.ws_lost(),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => self.ws_lost(),
            }
        }
        self.link.poll(&mut self.peer, now);
        Ok(())
    }

    /// [`Client::poll`] without reading the WebSocket: for the media socket's events and timers
    /// when the caller watches the WebSocket separately. (A WebSocket read costs a system call and
    /// tungstenite zeroes its whole read buffer on every read: 28 % of the load generator's CPU
    /// when every UDP event read the WebSocket too.)
    pub fn poll_media(&mut self, now: Instant) -> anyhow::Result<()> {
        if !self.ws_open {
            return self.poll(now);
        }
        self.link.poll(&mut self.peer, now);
        Ok(())
    }

    /// Share a load run's offered-load multiplier (see [`RateScale`]).
    pub fn set_rate_scale(&mut self, scale: RateScale) {
        self.link.set_scale(scale);
    }

    fn ws_lost(&mut self) {
        self.ws_open = false;
        self.ws_lost_at = Some(Instant::now());
    }
}

/// Drive `clients` for `d` (polling every millisecond), or until `until` returns true.
pub fn run(
    clients: &mut [Client],
    d: Duration,
    mut until: impl FnMut(&[Client]) -> bool,
) -> anyhow::Result<bool> {
    let end = Instant::now() + d;
    loop {
        let now = Instant::now();
        for c in clients.iter_mut() {
            c.poll(now)?;
        }
        if until(clients) {
            return Ok(true);
        }
        if now >= end {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Video packets `c` received from `other`.
pub fn video_from(c: &Client, other: &Client) -> u64 {
    c.peer
        .received
        .packets_from(&other.id, str0m::media::MediaKind::Video)
}

/// Audio packets `c` received from `other`.
pub fn audio_from(c: &Client, other: &Client) -> u64 {
    c.peer
        .received
        .packets_from(&other.id, str0m::media::MediaKind::Audio)
}

/// Every client received at least `min` video packets from every other.
pub fn all_flowing(cs: &[Client], min: u64) -> bool {
    cs.iter().all(|a| {
        cs.iter()
            .filter(|b| b.id != a.id)
            .all(|b| video_from(a, b) >= min)
    })
}
