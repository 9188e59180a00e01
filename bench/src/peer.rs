//! A synthetic WebRTC participant: one str0m `Rtc` (RTP mode, full ICE, controlling) that behaves
//! like the web page does — offers sendonly audio + video and a `chat` DataChannel, answers server
//! offers, publishes Opus-sized audio and VP8-like video packets, answers keyframe requests and
//! counts everything it receives.
//!
//! Sans-IO like the SFU core: time is an argument, datagrams go in through
//! [`Peer::handle_receive`] and come out of [`Peer::poll_transmit`]. The same peer runs inside
//! deterministic simulations (virtual clock) and in the real-socket load generator.
//!
//! This file owns the peer's state and its run loop (input, output, events, chat); the rest is
//! split along its seams:
//! - `negotiation.rs`: SDP offer/answer and the payload types the peer publishes with;
//! - `media.rs`: generating audio and video packets (with send stamps), keyframe requests;
//! - `received.rs`: what the peer received ([`Received`], [`RecvTrack`], [`LatencyHist`]);
//! - `simulcast.rs`: publishing video as three simulcast layers;
//! - `light.rs`: header-only accounting of received RTP for the load generator
//!   ([`Peer::set_light_receive`]).

mod light;
mod media;
mod negotiation;
mod received;
mod simulcast;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::change::SdpPendingOffer;
use str0m::channel::ChannelId;
use str0m::format::Codec;
use str0m::media::{Mid, Pt};
use str0m::net::{Protocol, Receive, TcpType};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

use light::LightRx;
pub use received::{LatencyHist, Received, RecvTrack, VideoPacket};
use simulcast::LayerTx;
pub use simulcast::{SIMULCAST_RIDS, read_layer};

/// Errors of a synthetic peer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    #[error("invalid SDP: {0}")]
    Sdp(String),
    #[error("rtc error: {0}")]
    Rtc(#[from] str0m::RtcError),
    #[error("no offer is pending")]
    NoPendingOffer,
}

/// A synthetic participant. See the module docs.
pub struct Peer {
    pub name: String,
    rtc: Rtc,
    /// The transport of its one candidate.
    proto: Protocol,
    local: SocketAddr,
    epoch: Instant,
    /// When the datagram being processed arrived (see [`Peer::handle_receive_at`]).
    arrived: Instant,
    pending: Option<SdpPendingOffer>,
    audio: Option<(Mid, Option<Pt>)>,
    video: Option<(Mid, Option<Pt>)>,
    chat: Option<ChannelId>,
    chat_open: bool,
    connected: bool,
    audio_seq: u64,
    video_seq: u64,
    audio_ts: u32,
    video_ts: u32,
    keyframe_wanted: bool,
    /// Audio level written on published audio packets ([`Peer::set_audio_level`]).
    audio_level: Option<i8>,
    /// Sequence numbers of [`Peer::send_undeclared_layer`].
    undeclared_seq: u64,
    /// Simulcast layers published (empty: one video stream).
    simulcast: Vec<LayerTx>,
    video_codec: Codec,
    /// RTP packets published (audio + video).
    pub sent_packets: u64,
    outbox: VecDeque<(SocketAddr, Vec<u8>)>,
    timeout: Instant,
    /// Header-only receive accounting, if enabled ([`Peer::set_light_receive`]).
    light: Option<LightRx>,
    pub received: Received,
    /// Set if the `Rtc` failed; the peer is dead.
    pub error: Option<String>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("name", &self.name)
            .field("local", &self.local)
            .field("connected", &self.connected)
            .finish_non_exhaustive()
    }
}

impl Peer {
    /// A peer with host candidate `local`. `epoch` is the clock origin of latency stamps; peers
    /// that measure latency between each other must share it.
    pub fn new(name: impl Into<String>, local: SocketAddr, now: Instant, epoch: Instant) -> Self {
        Self::with_transport(name, local, Protocol::Udp, now, epoch)
    }

    /// A peer speaking ICE over TCP (RFC 6544) only: its one candidate is an active TCP host
    /// candidate at `local` (the local address of its connection to the SFU's listener), so it
    /// pairs only with the SFU's passive TCP candidate. The caller frames its datagrams
    /// (RFC 4571) on that connection.
    pub fn new_tcp(
        name: impl Into<String>,
        local: SocketAddr,
        now: Instant,
        epoch: Instant,
    ) -> Self {
        Self::with_transport(name, local, Protocol::Tcp, now, epoch)
    }

    fn with_transport(
        name: impl Into<String>,
        local: SocketAddr,
        proto: Protocol,
        now: Instant,
        epoch: Instant,
    ) -> Self {
        let mut rtc = RtcConfig::new()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .enable_h264(true)
            .set_stats_interval(None)
            .build(now);
        let candidate = if proto == Protocol::Tcp {
            Candidate::builder()
                .tcp()
                .host(local)
                .tcptype(TcpType::Active)
                .build()
        } else {
            Candidate::host(local, "udp")
        };
        if let Ok(c) = candidate {
            rtc.add_local_candidate(c);
        }
        let mut peer = Self {
            name: name.into(),
            rtc,
            local,
            proto,
            epoch,
            arrived: now,
            pending: None,
            audio: None,
            video: None,
            chat: None,
            chat_open: false,
            connected: false,
            audio_seq: 1000,
            video_seq: 5000,
            audio_ts: 1_000_000,
            video_ts: 2_000_000,
            keyframe_wanted: true,
            audio_level: None,
            undeclared_seq: 100,
            simulcast: Vec::new(),
            video_codec: Codec::Vp8,
            sent_packets: 0,
            outbox: VecDeque::new(),
            timeout: now,
            light: None,
            received: Received::default(),
            error: None,
        };
        peer.drain();
        peer
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Whether this peer speaks ICE over TCP ([`Peer::new_tcp`]).
    pub fn is_tcp(&self) -> bool {
        self.proto == Protocol::Tcp
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    pub fn chat_open(&self) -> bool {
        self.chat_open
    }

    /// A datagram from the network.
    pub fn handle_receive(&mut self, now: Instant, source: SocketAddr, data: &[u8]) {
        self.handle_receive_at(now, now, source, data);
    }

    /// A datagram that arrived at `arrived` (the kernel's receive time, which is earlier than
    /// `now` when it waited in the socket buffer): latency is measured to `arrived`.
    pub fn handle_receive_at(
        &mut self,
        now: Instant,
        arrived: Instant,
        source: SocketAddr,
        data: &[u8],
    ) {
        self.arrived = arrived.min(now);
        if self.light_receive(data) {
            return;
        }
        let Ok(recv) = Receive::new(self.proto, source, self.local, data) else {
            return;
        };
        if let Err(e) = self.rtc.handle_input(Input::Receive(now, recv)) {
            tracing::debug!(peer = %self.name, error = %e, "peer rejected datagram");
        }
        self.drain_at(now);
    }

    /// Advance time.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Err(e) = self.rtc.handle_input(Input::Timeout(now)) {
            self.error = Some(e.to_string());
        }
        self.drain_at(now);
    }

    /// When the peer next needs [`Peer::handle_timeout`].
    pub fn poll_timeout(&self) -> Instant {
        self.timeout
    }

    /// Next datagram to send: (destination, bytes).
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.outbox.pop_front()
    }

    /// Send a chat message (`to` = `None` for everyone). Returns false if the channel is not open.
    pub fn send_chat(&mut self, to: Option<&str>, text: &str) -> bool {
        let msg = serde_json::json!({"type": "chat", "to": to, "text": text}).to_string();
        self.send_chat_raw(msg.as_bytes())
    }

    /// Send raw bytes on the chat channel (for bad-input tests).
    pub fn send_chat_raw(&mut self, data: &[u8]) -> bool {
        let Some(id) = self.chat.filter(|_| self.chat_open) else {
            return false;
        };
        let ok = self
            .rtc
            .channel(id)
            .is_some_and(|mut ch| ch.write(false, data).unwrap_or(false));
        self.drain();
        ok
    }

    fn drain(&mut self) {
        let now = self.timeout;
        self.drain_at(now);
    }

    fn drain_at(&mut self, now: Instant) {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    self.timeout = t;
                    return;
                }
                Ok(Output::Transmit(t)) => {
                    self.outbox.push_back((t.destination, t.contents.into()))
                }
                Ok(Output::Event(e)) => self.handle_event(e, now),
                Err(e) => {
                    self.error = Some(e.to_string());
                    self.timeout = now + Duration::from_secs(3600);
                    return;
                }
            }
        }
    }

    fn handle_event(&mut self, e: Event, now: Instant) {
        match e {
            Event::Connected => self.connected = true,
            Event::ChannelOpen(id, _) if Some(id) == self.chat => self.chat_open = true,
            Event::ChannelData(d) if Some(d.id) == self.chat => {
                let text = String::from_utf8_lossy(&d.data).into_owned();
                // Dynacast: encode only the layers the SFU asks for, as the page does.
                if text.contains("\"layers\"") {
                    self.apply_layers(&text);
                }
                self.received.chat.push(text);
            }
            Event::KeyframeRequest(req) => self.keyframe_requested(&req),
            Event::RtpPacket(pkt) => {
                let mid = self
                    .rtc
                    .direct_api()
                    .stream_rx(&pkt.header.ssrc)
                    .map(|s| s.mid());
                let Some(mid) = mid else {
                    return;
                };
                let Some((stream_id, kind)) = self
                    .rtc
                    .media(mid)
                    .map(|m| (m.stream_id().to_string(), m.kind()))
                else {
                    return;
                };
                let stamp = media::read_stamp(&pkt.payload).map(|sent| {
                    let recv = self
                        .arrived
                        .saturating_duration_since(self.epoch)
                        .as_micros() as u64;
                    (sent, recv)
                });
                if self.light_sampled(*pkt.header.ssrc, mid) {
                    // Counted from its header already: only its latency stamp is new.
                    if let (Some(t), Some((sent, recv))) =
                        (self.received.tracks.get_mut(&mid), stamp)
                    {
                        t.record_stamp(sent, recv);
                    }
                    return;
                }
                self.received
                    .record_rtp(mid, stream_id, kind, &pkt, now, stamp);
                if self.received.record_detail {
                    let h264 = self.codec_of(*pkt.header.payload_type) == Some(Codec::H264);
                    self.received.record_video_detail(mid, &pkt, h264);
                }
            }
            _ => {}
        }
    }
}
