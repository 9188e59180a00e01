//! Driving Janus (VideoRoom plugin, WebSocket transport) with the same synthetic peers, for a
//! side-by-side comparison on the same machine and scenario.
//!
//! Supported shape: rooms with **one publisher and N subscribers** (the fan-out that CPU per
//! forwarded packet is about). The publisher creates the room and `joinandconfigure`s with its
//! offer; each subscriber attaches, `join`s as a subscriber of the publisher's feed, answers
//! Janus's offer and sends `start`. Janus's API: <https://janus.conf.meetecho.com/docs/videoroom>.

use std::collections::VecDeque;
use std::io;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tungstenite::client::IntoClientRequest;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

use crate::client::{Media, MediaLink};
use crate::peer::Peer;

type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

/// One Janus session over one WebSocket.
pub struct JanusSession {
    ws: Ws,
    session: u64,
    next_tx: u64,
    /// Messages read while waiting for something else (async events).
    stash: VecDeque<Value>,
    last_keepalive: Instant,
}

impl JanusSession {
    pub fn connect(url: &str, timeout: Duration) -> anyhow::Result<Self> {
        let mut req = url.into_client_request()?;
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "janus-protocol".parse().context("header")?,
        );
        let (mut ws, _) = tungstenite::connect(req).with_context(|| format!("connecting {url}"))?;
        if let MaybeTlsStream::Plain(s) = ws.get_mut() {
            s.set_read_timeout(Some(timeout))?;
            s.set_nodelay(true)?;
        }
        let mut s = Self {
            ws,
            session: 0,
            next_tx: 1,
            stash: VecDeque::new(),
            last_keepalive: Instant::now(),
        };
        let r = s.call(json!({"janus": "create"}))?;
        s.session = r["data"]["id"].as_u64().context("no session id")?;
        Ok(s)
    }

    fn read(&mut self) -> anyhow::Result<Value> {
        loop {
            match self.ws.read()? {
                Message::Text(t) => return Ok(serde_json::from_str(t.as_str())?),
                Message::Close(f) => bail!("janus closed the websocket: {f:?}"),
                _ => {}
            }
        }
    }

    fn send(&mut self, mut msg: Value) -> anyhow::Result<String> {
        let tx = format!("t{}", self.next_tx);
        self.next_tx += 1;
        msg["transaction"] = json!(tx);
        if self.session != 0 {
            msg["session_id"] = json!(self.session);
        }
        self.ws.send(Message::text(msg.to_string()))?;
        Ok(tx)
    }

    /// A synchronous request: wait for its `success` (or `error`).
    fn call(&mut self, msg: Value) -> anyhow::Result<Value> {
        let tx = self.send(msg)?;
        loop {
            let v = self.read()?;
            if v["transaction"] == tx.as_str() {
                match v["janus"].as_str() {
                    Some("success") => return Ok(v),
                    Some("ack") => continue,
                    _ => bail!("janus error: {v}"),
                }
            }
            self.stash.push_back(v);
        }
    }

    /// Attach a VideoRoom handle.
    pub fn attach(&mut self) -> anyhow::Result<u64> {
        let r = self.call(json!({"janus": "attach", "plugin": "janus.plugin.videoroom"}))?;
        r["data"]["id"].as_u64().context("no handle id")
    }

    /// A plugin request answered synchronously (e.g. `create`, `listparticipants`).
    pub fn plugin_call(&mut self, handle: u64, body: Value) -> anyhow::Result<Value> {
        let r = self.call(json!({"janus": "message", "handle_id": handle, "body": body}))?;
        Ok(r["plugindata"]["data"].clone())
    }

    /// A plugin request answered by an event (after an `ack`): returns (event data, jsep).
    pub fn plugin_event(
        &mut self,
        handle: u64,
        body: Value,
        jsep: Option<Value>,
    ) -> anyhow::Result<(Value, Option<Value>)> {
        let mut msg = json!({"janus": "message", "handle_id": handle, "body": body});
        if let Some(j) = jsep {
            msg["jsep"] = j;
        }
        let tx = self.send(msg)?;
        loop {
            let v = self.read()?;
            if v["transaction"] == tx.as_str() {
                match v["janus"].as_str() {
                    Some("ack") => continue,
                    Some("event") | Some("success") => {
                        let data = v["plugindata"]["data"].clone();
                        if data["error"].is_string() {
                            bail!("videoroom error: {data}");
                        }
                        return Ok((data, v.get("jsep").cloned()));
                    }
                    _ => bail!("janus error: {v}"),
                }
            }
            self.stash.push_back(v);
        }
    }

    /// Keep the session alive (Janus drops sessions silent for 60 s) and drain async events.
    pub fn tick(&mut self) {
        if self.last_keepalive.elapsed() > Duration::from_secs(20) {
            self.last_keepalive = Instant::now();
            let _ = self.send(json!({"janus": "keepalive"}));
        }
        self.stash.clear();
    }

    pub fn set_nonblocking(&mut self) -> io::Result<()> {
        match self.ws.get_mut() {
            MaybeTlsStream::Plain(s) => s.set_nonblocking(true),
            _ => Ok(()),
        }
    }

    /// Discard whatever Janus sent (events we do not act on), without blocking.
    pub fn drain(&mut self) {
        loop {
            match self.ws.read() {
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => return,
            }
        }
    }

    pub fn fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        match self.ws.get_ref() {
            MaybeTlsStream::Plain(s) => Some(s.as_raw_fd()),
            _ => None,
        }
    }
}

/// A synthetic participant in Janus: publisher of its room or subscriber of its publisher.
pub struct JanusClient {
    pub peer: Peer,
    pub id: String,
    session: JanusSession,
    link: MediaLink,
}

impl JanusClient {
    /// Join room `room` (a number) as its publisher (creating the room) or as a subscriber of
    /// its publisher. Peers bind `bind_ip` (Janus needs a non-loopback-interface address, see
    /// scripts/janus-compare).
    pub fn join(
        url: &str,
        room: u64,
        name: &str,
        media: Option<Media>,
        bind_ip: std::net::IpAddr,
        epoch: Instant,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let mut session = JanusSession::connect(url, timeout)?;
        let handle = session.attach()?;
        let now = Instant::now();
        let link = MediaLink::bind(bind_ip, media, now)?;
        let mut peer = link.new_peer(name, now, epoch)?;
        if let Some(m) = media {
            // Publisher: make the room (fine if it exists), then publish.
            let created = session.plugin_call(handle, json!({"request": "create", "room": room, "publishers": 1, "bitrate": 0, "fir_freq": 0}))?;
            // 427 = the room already exists (another run): fine.
            if created["error_code"].as_u64().is_some_and(|c| c != 427) {
                bail!("cannot create janus room {room}: {created}");
            }
            let offer = peer.create_offer(m.audio, m.video);
            let (data, jsep) = session.plugin_event(
                handle,
                json!({"request": "joinandconfigure", "room": room, "ptype": "publisher", "display": name, "audio": m.audio, "video": m.video, "data": false}),
                Some(json!({"type": "offer", "sdp": offer})),
            )?;
            let answer = jsep
                .and_then(|j| j["sdp"].as_str().map(str::to_string))
                .with_context(|| format!("no answer: {data}"))?;
            peer.handle_answer(&answer)?;
        } else {
            // Subscriber: wait (bounded) for the publisher, then subscribe to its feed.
            let end = Instant::now() + timeout;
            let feed = loop {
                let d = session
                    .plugin_call(handle, json!({"request": "listparticipants", "room": room}))?;
                let feed = d["participants"]
                    .as_array()
                    .and_then(|ps| ps.iter().find(|p| p["publisher"] == true))
                    .and_then(|p| p["id"].as_u64());
                if let Some(f) = feed {
                    break f;
                }
                if Instant::now() >= end {
                    bail!("no publisher in janus room {room}");
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            let (data, jsep) = session.plugin_event(handle, json!({"request": "join", "room": room, "ptype": "subscriber", "streams": [{"feed": feed}]}), None)?;
            let offer = jsep
                .and_then(|j| j["sdp"].as_str().map(str::to_string))
                .with_context(|| format!("no offer: {data}"))?;
            let answer = peer.handle_offer(&offer)?;
            session.plugin_event(
                handle,
                json!({"request": "start", "room": room}),
                Some(json!({"type": "answer", "sdp": answer})),
            )?;
        }
        session.set_nonblocking()?;
        let mut c = Self {
            peer,
            id: name.to_string(),
            session,
            link,
        };
        c.link.flush(&mut c.peer);
        Ok(c)
    }

    pub fn fds(&self) -> (std::os::fd::RawFd, Option<std::os::fd::RawFd>) {
        (self.link.fd(), self.session.fd())
    }

    pub fn next_deadline(&self) -> Instant {
        self.link.next_deadline(&self.peer)
    }

    pub fn poll(&mut self, now: Instant) {
        self.session.drain();
        self.poll_media(now);
    }

    /// Share a load run's offered-load multiplier (see [`crate::client::RateScale`]).
    pub fn set_rate_scale(&mut self, scale: crate::client::RateScale) {
        self.link.set_scale(scale);
    }

    /// [`JanusClient::poll`] without reading the WebSocket (see `Client::poll_media`).
    pub fn poll_media(&mut self, now: Instant) {
        self.session.tick();
        self.link.poll(&mut self.peer, now);
    }
}
