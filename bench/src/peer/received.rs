//! What a synthetic peer received, for assertions and reports: per received m-line packet,
//! sequence and loss counters, one-way latency ([`LatencyHist`]) and jitter of stamped payloads,
//! chat messages and keyframe requests.

use std::collections::HashMap;
use std::time::Instant;

use str0m::media::{MediaKind, Mid};
use str0m::rtp::RtpPacket;

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
    /// Every video packet in arrival order, when the peer records detail
    /// ([`Received::record_detail`]; bounded to [`MAX_DETAIL`]).
    pub detail: Vec<VideoPacket>,
}

/// Packets of detail kept per track.
pub const MAX_DETAIL: usize = 200_000;

/// One received video packet as a decoder would see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoPacket {
    pub seq: u64,
    pub ts: u32,
    /// VP8 picture id and TL0PICIDX, when the payload descriptor has them.
    pub picture_id: Option<u16>,
    pub tl0: Option<u8>,
    /// The first packet of a frame (VP8 S bit, partition 0).
    pub frame_start: bool,
    /// The first packet of a keyframe.
    pub keyframe: bool,
    /// The simulcast layer the synthetic publisher sent it on (see `read_layer`).
    pub layer: Option<u8>,
    pub ssrc: u32,
}

impl VideoPacket {
    /// A VP8 packet, or with `h264` an H.264 one (keyframe: SPS or IDR NAL unit first; no
    /// picture ids or frame starts).
    fn parse(pkt: &RtpPacket, h264: bool) -> Self {
        let payload = &pkt.payload;
        if h264 {
            return Self {
                seq: *pkt.seq_no,
                ts: pkt.header.timestamp,
                picture_id: None,
                tl0: None,
                frame_start: false,
                keyframe: payload.first().is_some_and(|b| matches!(b & 0x1f, 5 | 7)),
                layer: super::read_layer(payload),
                ssrc: *pkt.header.ssrc,
            };
        }
        let d = str0m::rtp::Vp8Descriptor::parse(payload).ok();
        Self {
            seq: *pkt.seq_no,
            ts: pkt.header.timestamp,
            picture_id: d.and_then(|d| d.picture_id()),
            tl0: d.and_then(|d| d.tl0_pic_idx()),
            frame_start: payload.first().is_some_and(|b| b & 0x17 == 0x10),
            keyframe: d.is_some_and(|d| d.starts_keyframe(payload)),
            layer: super::read_layer(payload),
            ssrc: *pkt.header.ssrc,
        }
    }
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
    /// Keyframe requests received per simulcast rid.
    pub keyframe_requests_by_rid: HashMap<String, u64>,
    /// Keep every received video packet's [`VideoPacket`] (tests of what a decoder sees).
    pub record_detail: bool,
    /// Dynacast messages (`{"type":"layers"}`) applied.
    pub layer_messages: u64,
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

    /// Count one RTP packet received on m-line `mid` (publisher `stream_id`, `kind`) at `now`.
    /// `stamp` is (send time, arrival time) in µs since the shared epoch when the payload carried
    /// a send stamp: it feeds the latency histogram and the jitter estimate.
    pub(super) fn record_rtp(
        &mut self,
        mid: Mid,
        stream_id: String,
        kind: MediaKind,
        pkt: &RtpPacket,
        now: Instant,
        stamp: Option<(u64, u64)>,
    ) {
        let t = self.tracks.entry(mid).or_default();
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
        t.count_seq(seq);
        if self.first_rtp.is_none() {
            self.first_rtp = Some(now);
        }
        if let Some((sent, recv)) = stamp {
            t.record_stamp(sent, recv);
        }
    }

    /// Keep a video packet of m-line `mid` as a decoder sees it, when recording detail
    /// ([`Received::record_detail`]); `h264`: its payload type is H.264.
    pub(super) fn record_video_detail(&mut self, mid: Mid, pkt: &RtpPacket, h264: bool) {
        if !self.record_detail {
            return;
        }
        if let Some(t) = self.tracks.get_mut(&mid)
            && t.kind == Some(MediaKind::Video)
            && t.detail.len() < MAX_DETAIL
        {
            t.detail.push(VideoPacket::parse(pkt, h264));
        }
    }

    /// Count one RTP packet of an already known m-line from its clear-text header only: its
    /// 16-bit sequence number `seq` (extended against the highest seen, see
    /// [`RecvTrack::extend_seq`]), `bytes` of payload.
    pub(super) fn record_header(&mut self, mid: Mid, seq: u16, bytes: u64) {
        let Some(t) = self.tracks.get_mut(&mid) else {
            return;
        };
        t.packets += 1;
        t.bytes += bytes;
        let seq = t.extend_seq(seq);
        t.count_seq(seq);
    }
}

impl RecvTrack {
    /// A received packet's send stamp and arrival (µs since the shared epoch): latency and the
    /// RFC 3550 §6.4.1 jitter estimate with wall-clock transit times.
    pub(super) fn record_stamp(&mut self, sent: u64, recv: u64) {
        self.latency.record(recv.saturating_sub(sent));
        let transit = recv as i64 - sent as i64;
        if let Some(prev) = self.last_transit_us {
            let d = (transit - prev).abs() as f64;
            self.jitter_us += (d - self.jitter_us) / 16.0;
        }
        self.last_transit_us = Some(transit);
    }

    /// The extended sequence number of a 16-bit RTP sequence number, nearest to the highest
    /// seen (RFC 3550 appendix A.1 style).
    fn extend_seq(&self, seq: u16) -> u64 {
        let delta = seq.wrapping_sub(self.highest_seq as u16) as i16;
        (self.highest_seq as i64 + i64::from(delta)).max(0) as u64
    }

    fn count_seq(&mut self, seq: u64) {
        match self.first_seq {
            None => {
                self.first_seq = Some(seq);
                self.highest_seq = seq;
            }
            Some(_) if seq > self.highest_seq => {
                self.lost += seq - self.highest_seq - 1;
                self.highest_seq = seq;
            }
            Some(_) => self.lost = self.lost.saturating_sub(1), // a late packet fills a gap
        }
    }
}
