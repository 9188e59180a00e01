//! A synthetic WebRTC participant: one str0m `Rtc` (RTP mode, full ICE, controlling) that behaves
//! like the web page does — offers sendonly audio + video and a `chat` DataChannel, answers server
//! offers, publishes Opus-sized audio and VP8-like video packets, answers keyframe requests and
//! counts everything it receives.
//!
//! Sans-IO like the SFU core: time is an argument, datagrams go in through
//! [`Peer::handle_receive`] and come out of [`Peer::poll_transmit`]. The same peer runs inside
//! deterministic simulations (virtual clock) and in the real-socket load generator.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::ChannelId;
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

/// Magic marking a synthetic payload that carries a send timestamp.
const STAMP_MAGIC: [u8; 4] = *b"SFUb";

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

/// Counters of one received m-line (one remote publisher's track).
#[derive(Debug, Clone, Default)]
pub struct RecvTrack {
    /// The publisher's participant id (the SDP stream id of the m-line).
    pub stream_id: String,
    pub kind: Option<MediaKind>,
    pub packets: u64,
    pub bytes: u64,
    pub first_seq: Option<u64>,
    pub highest_seq: u64,
    /// Sequence numbers missing between the first and the highest (gaps in the extended seq).
    pub lost: u64,
    pub ssrcs: Vec<u32>,
    /// Payload types seen.
    pub pts: Vec<u8>,
    /// One-way latency (µs) of stamped payloads: receive time − send time.
    pub latency: LatencyHist,
    /// RFC 3550 interarrival jitter estimate, µs.
    pub jitter_us: f64,
    last_transit_us: Option<i64>,
}

/// A log-bucketed latency histogram (≈5 % resolution from 1 µs to ~30 s), cheap to merge.
#[derive(Debug, Clone)]
pub struct LatencyHist {
    pub counts: Vec<u64>,
}

impl Default for LatencyHist {
    fn default() -> Self {
        Self {
            counts: vec![0; 360],
        }
    }
}

impl LatencyHist {
    fn bucket(us: u64) -> usize {
        if us <= 1 {
            return 0;
        }
        ((us as f64).ln() / 1.05f64.ln()) as usize
    }

    fn value(bucket: usize) -> u64 {
        1.05f64.powi(bucket as i32 + 1) as u64
    }

    pub fn record(&mut self, us: u64) {
        let b = Self::bucket(us).min(self.counts.len() - 1);
        self.counts[b] += 1;
    }

    pub fn merge(&mut self, other: &LatencyHist) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The `q`-quantile (0..=1) in µs (upper bucket bound), `None` if empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let target = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= target {
                return Some(Self::value(i));
            }
        }
        None
    }
}

/// What a synthetic peer received (for assertions and reports).
#[derive(Debug, Default)]
pub struct Received {
    pub tracks: HashMap<Mid, RecvTrack>,
    pub chat: Vec<String>,
    pub keyframe_requests: u64,
    /// When the first RTP packet from anyone arrived.
    pub first_rtp: Option<Instant>,
}

impl Received {
    /// Packets received of `kind` from publisher `stream_id`.
    pub fn packets_from(&self, stream_id: &str, kind: MediaKind) -> u64 {
        self.tracks
            .values()
            .filter(|t| t.stream_id == stream_id && t.kind == Some(kind))
            .map(|t| t.packets)
            .sum()
    }

    /// Total packets received of `kind`.
    pub fn packets(&self, kind: MediaKind) -> u64 {
        self.tracks
            .values()
            .filter(|t| t.kind == Some(kind))
            .map(|t| t.packets)
            .sum()
    }
}

/// A synthetic participant. See the module docs.
pub struct Peer {
    pub name: String,
    rtc: Rtc,
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
    video_codec: Codec,
    /// RTP packets published (audio + video).
    pub sent_packets: u64,
    outbox: VecDeque<(SocketAddr, Vec<u8>)>,
    timeout: Instant,
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
        let mut rtc = RtcConfig::new()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .enable_h264(true)
            .set_stats_interval(None)
            .build(now);
        if let Ok(c) = Candidate::host(local, "udp") {
            rtc.add_local_candidate(c);
        }
        let mut peer = Self {
            name: name.into(),
            rtc,
            local,
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
            video_codec: Codec::Vp8,
            sent_packets: 0,
            outbox: VecDeque::new(),
            timeout: now,
            received: Received::default(),
            error: None,
        };
        peer.drain();
        peer
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Publish video as H.264 instead of VP8 (when the SFU accepts both). Call before the answer.
    pub fn prefer_h264(&mut self) {
        self.video_codec = Codec::H264;
    }

    /// The payload type and codec this peer publishes video with, once negotiated.
    pub fn video_send_codec(&self) -> Option<(u8, Codec)> {
        let (_, pt) = self.video?;
        let pt = pt?;
        let codec = self
            .rtc
            .codec_config()
            .params()
            .iter()
            .find(|p| p.pt() == pt)?
            .spec()
            .codec;
        Some((*pt, codec))
    }

    /// The codec of a received payload type.
    pub fn codec_of(&self, pt: u8) -> Option<Codec> {
        self.rtc
            .codec_config()
            .params()
            .iter()
            .find(|p| *p.pt() == pt)
            .map(|p| p.spec().codec)
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    pub fn chat_open(&self) -> bool {
        self.chat_open
    }

    /// The initial offer: sendonly audio and/or video plus the `chat` DataChannel.
    pub fn create_offer(&mut self, audio: bool, video: bool) -> String {
        let mut api = self.rtc.sdp_api();
        if audio {
            let mid = api.add_media(
                MediaKind::Audio,
                Direction::SendOnly,
                Some(self.name.clone()),
                None,
                None,
            );
            self.audio = Some((mid, None));
        }
        if video {
            let mid = api.add_media(
                MediaKind::Video,
                Direction::SendOnly,
                Some(self.name.clone()),
                None,
                None,
            );
            self.video = Some((mid, None));
        }
        if self.chat.is_none() {
            self.chat = Some(api.add_channel("chat".into()));
        }
        let Some((offer, pending)) = api.apply() else {
            return String::new();
        };
        self.pending = Some(pending);
        self.drain();
        offer.to_sdp_string()
    }

    /// Apply the server's answer to our offer.
    pub fn handle_answer(&mut self, sdp: &str) -> Result<(), PeerError> {
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(|e| PeerError::Sdp(e.to_string()))?;
        let pending = self.pending.take().ok_or(PeerError::NoPendingOffer)?;
        self.rtc.sdp_api().accept_answer(pending, answer)?;
        self.resolve_send_pts();
        self.drain();
        Ok(())
    }

    /// Answer a server offer (renegotiation). A pending own offer is rolled back.
    pub fn handle_offer(&mut self, sdp: &str) -> Result<String, PeerError> {
        let offer = SdpOffer::from_sdp_string(sdp).map_err(|e| PeerError::Sdp(e.to_string()))?;
        self.pending = None;
        let answer = self.rtc.sdp_api().accept_offer(offer)?;
        self.drain();
        Ok(answer.to_sdp_string())
    }

    fn resolve_send_pts(&mut self) {
        let pick = |rtc: &Rtc, mid: Mid, codec: Codec| -> Option<Pt> {
            let media = rtc.media(mid)?;
            let remote = media.remote_pts();
            rtc.codec_config()
                .params()
                .iter()
                .find(|p| p.spec().codec == codec && remote.contains(&p.pt()))
                .map(|p| p.pt())
        };
        if let Some((mid, pt)) = &mut self.audio {
            *pt = pick(&self.rtc, *mid, Codec::Opus);
        }
        let (first, second) = match self.video_codec {
            Codec::H264 => (Codec::H264, Codec::Vp8),
            _ => (Codec::Vp8, Codec::H264),
        };
        if let Some((mid, pt)) = &mut self.video {
            *pt = pick(&self.rtc, *mid, first).or_else(|| pick(&self.rtc, *mid, second));
        }
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
        let Ok(recv) = Receive::new(Protocol::Udp, source, self.local, data) else {
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

    /// Whether the next video frame will be a keyframe (one was requested, or none sent yet).
    pub fn wants_keyframe(&self) -> bool {
        self.keyframe_wanted
    }

    /// Ask the SFU for a keyframe of the video received from publisher `stream_id` (a PLI, as a
    /// browser sends when it cannot decode). Returns false if no such video is received.
    pub fn request_keyframe(&mut self, stream_id: &str) -> bool {
        let mid = self
            .received
            .tracks
            .iter()
            .find(|(_, t)| t.stream_id == stream_id && t.kind == Some(MediaKind::Video))
            .map(|(m, _)| *m);
        let Some(mid) = mid else {
            return false;
        };
        let sent = match self.rtc.direct_api().stream_rx_by_mid(mid, None) {
            Some(rx) => {
                rx.request_keyframe(str0m::media::KeyframeRequestKind::Pli);
                true
            }
            None => false,
        };
        self.drain();
        sent
    }

    /// Publish one 20 ms Opus-sized audio packet of `size` payload bytes.
    pub fn send_audio(&mut self, now: Instant, size: usize) -> bool {
        let Some((mid, Some(pt))) = self.audio else {
            return false;
        };
        let payload = self.stamped_payload(now, size.max(16), false, false);
        let (seq, ts) = (self.audio_seq, self.audio_ts);
        self.audio_seq += 1;
        self.audio_ts = self.audio_ts.wrapping_add(960);
        let written = self.write(
            mid,
            RtpWrite::new(pt, seq.into(), ts, now, payload).marker(true),
        );
        self.release(now);
        written
    }

    /// Publish one video frame as `packets` packets of `size` payload bytes. It is a keyframe if
    /// `keyframe` is set or a keyframe was requested since the last one. Returns whether a
    /// keyframe was sent.
    pub fn send_video_frame(
        &mut self,
        now: Instant,
        keyframe: bool,
        packets: usize,
        size: usize,
        fps: u32,
    ) -> bool {
        let Some((mid, Some(pt))) = self.video else {
            return false;
        };
        let keyframe = keyframe || std::mem::take(&mut self.keyframe_wanted);
        let ts = self.video_ts;
        self.video_ts = self.video_ts.wrapping_add(90_000 / fps.max(1));
        let packets = packets.max(1);
        for i in 0..packets {
            let payload = self.stamped_payload(now, size.max(32), i == 0, keyframe);
            let seq = self.video_seq;
            self.video_seq += 1;
            let w = RtpWrite::new(pt, seq.into(), ts, now, payload)
                .marker(i + 1 == packets)
                .nackable(true);
            if !self.write(mid, w) {
                break;
            }
        }
        self.release(now);
        keyframe
    }

    fn write(&mut self, mid: Mid, w: RtpWrite) -> bool {
        let mut api = self.rtc.direct_api();
        let Some(stream) = api.stream_tx_by_mid(mid, None) else {
            return false;
        };
        stream.write_rtp(w);
        self.sent_packets += 1;
        true
    }

    /// str0m sends written RTP on its next time input: give it one now, so the packets are in
    /// the outbox when this returns (their latency stamps are "now", so they must leave now).
    fn release(&mut self, now: Instant) {
        self.handle_timeout(now);
    }

    /// A payload that looks like VP8 (payload descriptor + keyframe header on frame starts) and
    /// carries the send time for latency measurement.
    fn stamped_payload(
        &self,
        now: Instant,
        size: usize,
        frame_start: bool,
        keyframe: bool,
    ) -> Vec<u8> {
        let mut p = vec![0u8; size];
        // VP8 payload descriptor: S bit on the first packet of a frame, partition 0.
        p[0] = if frame_start { 0x10 } else { 0x00 };
        if frame_start && keyframe && size >= 11 {
            // VP8 frame tag with P=0 (keyframe), then the keyframe start code.
            p[1] = 0x00;
            p[4..7].copy_from_slice(&[0x9d, 0x01, 0x2a]);
        } else if size > 1 {
            p[1] = 0x01;
        }
        if size >= 24 {
            p[12..16].copy_from_slice(&STAMP_MAGIC);
            let us = now.saturating_duration_since(self.epoch).as_micros() as u64;
            p[16..24].copy_from_slice(&us.to_be_bytes());
        }
        p
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
                self.received
                    .chat
                    .push(String::from_utf8_lossy(&d.data).into_owned());
            }
            Event::KeyframeRequest(_) => {
                self.received.keyframe_requests += 1;
                self.keyframe_wanted = true;
            }
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
                let t = self.received.tracks.entry(mid).or_default();
                t.stream_id = stream_id;
                t.kind = Some(kind);
                t.packets += 1;
                t.bytes += pkt.payload.len() as u64;
                let seq = *pkt.seq_no;
                let ssrc = *pkt.header.ssrc;
                if !t.ssrcs.contains(&ssrc) {
                    t.ssrcs.push(ssrc);
                }
                let pt = *pkt.header.payload_type;
                if !t.pts.contains(&pt) {
                    t.pts.push(pt);
                }
                match t.first_seq {
                    None => {
                        t.first_seq = Some(seq);
                        t.highest_seq = seq;
                    }
                    Some(_) if seq > t.highest_seq => {
                        t.lost += seq - t.highest_seq - 1;
                        t.highest_seq = seq;
                    }
                    Some(_) => t.lost = t.lost.saturating_sub(1), // a late packet fills a gap
                }
                if self.received.first_rtp.is_none() {
                    self.received.first_rtp = Some(now);
                }
                if pkt.payload.len() >= 24 && pkt.payload[12..16] == STAMP_MAGIC {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&pkt.payload[16..24]);
                    let sent = u64::from_be_bytes(b);
                    let recv = self
                        .arrived
                        .saturating_duration_since(self.epoch)
                        .as_micros() as u64;
                    t.latency.record(recv.saturating_sub(sent));
                    // RFC 3550 §6.4.1 with wall-clock transit times.
                    let transit = recv as i64 - sent as i64;
                    if let Some(prev) = t.last_transit_us {
                        let d = (transit - prev).abs() as f64;
                        t.jitter_us += (d - t.jitter_us) / 16.0;
                    }
                    t.last_transit_us = Some(transit);
                }
            }
            _ => {}
        }
    }
}
