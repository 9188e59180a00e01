//! The layers of a published video track: one per simulcast encoding (`rid`), or a single one
//! for a track sent without simulcast. Each layer meters its own bitrate (what the selector
//! budgets with), remembers when it last carried a packet (a publisher may switch a layer off)
//! and throttles the keyframe requests sent for it.
//!
//! Also here: recognising the first packet of a keyframe in an RTP payload, per codec, without
//! decoding — a subscriber switches layers only there.

use std::time::{Duration, Instant};

use str0m::format::Codec;
use str0m::media::Rid;

/// Simulcast layers kept per track; further declared rids are ignored (bad input).
pub const MAX_LAYERS: usize = 4;

/// A layer with no packet for this long is treated as switched off by its publisher.
pub const LAYER_IDLE: Duration = Duration::from_millis(1000);

/// How long a layer the publisher was asked to encode again counts as available before its first
/// packet (a publisher that ignores the request makes it unavailable after this).
pub const RESUME_GRACE: Duration = Duration::from_secs(3);

/// A layer whose keyframe request has gone unanswered this long is not switched to.
pub const KEYFRAME_STALL: Duration = Duration::from_secs(3);

/// Bitrate averaging window.
const RATE_WINDOW: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct LayerIn {
    /// `None` for a track sent without simulcast.
    pub rid: Option<Rid>,
    pub rate: RateMeter,
    pub last_packet: Option<Instant>,
    /// Last keyframe request sent to the publisher for this layer.
    pub last_keyframe_request: Option<Instant>,
    /// A keyframe request was throttled and must be sent when the interval has passed.
    pub keyframe_pending: bool,
    /// Picture height, from the layer's last VP8 keyframe header (unknown for other codecs).
    pub height: Option<u16>,
    /// Dynacast: the publisher was told to stop encoding this layer (nobody needs it).
    pub paused: bool,
    /// Dynacast: since when no subscriber has needed this layer.
    pub unneeded_since: Option<Instant>,
    /// Dynacast: when the publisher was last told to encode it again.
    pub resumed_at: Option<Instant>,
    /// The first keyframe request for this layer not answered by a keyframe yet.
    pub unanswered_request: Option<Instant>,
}

impl LayerIn {
    pub fn new(rid: Option<Rid>) -> Self {
        Self {
            rid,
            rate: RateMeter::default(),
            last_packet: None,
            last_keyframe_request: None,
            keyframe_pending: false,
            height: None,
            paused: false,
            unneeded_since: None,
            resumed_at: None,
            unanswered_request: None,
        }
    }

    /// A keyframe request was sent for this layer.
    pub fn keyframe_requested(&mut self, now: Instant) {
        self.unanswered_request.get_or_insert(now);
    }

    /// The first packet of a keyframe arrived on this layer.
    pub fn keyframe_arrived(&mut self) {
        self.unanswered_request = None;
    }

    /// Asked for a keyframe [`KEYFRAME_STALL`] ago and none came (a publisher that never sends
    /// keyframes on this layer): not chosen for a switch until one comes.
    pub fn stalled(&self, now: Instant) -> bool {
        self.unanswered_request
            .is_some_and(|t| now.saturating_duration_since(t) >= KEYFRAME_STALL)
    }

    /// A subscriber may be given this layer: it flows, or it was paused by dynacast (and comes
    /// back when asked), or it was asked back moments ago — and it answers keyframe requests.
    pub fn available(&self, now: Instant) -> bool {
        let on = self.active(now)
            || self.paused
            || self
                .resumed_at
                .is_some_and(|t| now.saturating_duration_since(t) < RESUME_GRACE);
        on && !self.stalled(now)
    }

    /// The publisher sends this layer (a packet within [`LAYER_IDLE`]).
    pub fn active(&self, now: Instant) -> bool {
        self.last_packet
            .is_some_and(|t| now.saturating_duration_since(t) < LAYER_IDLE)
    }

    pub fn record(&mut self, now: Instant, bytes: usize) {
        self.last_packet = Some(now);
        self.rate.record(now, bytes);
    }
}

/// Bits per second over windows of [`RATE_WINDOW`], smoothed over two windows.
#[derive(Debug, Clone, Default)]
pub struct RateMeter {
    window_start: Option<Instant>,
    bytes: u64,
    bps: Option<u64>,
}

impl RateMeter {
    pub fn record(&mut self, now: Instant, bytes: usize) {
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= RATE_WINDOW {
            let measured = self.bytes * 8 * 1_000_000 / (elapsed.as_micros() as u64).max(1);
            self.bps = Some(self.bps.map_or(measured, |old| (old + measured) / 2));
            self.window_start = Some(now);
            self.bytes = 0;
        }
        self.bytes += bytes as u64;
    }

    /// The measured rate, once a window has completed.
    pub fn bps(&self) -> Option<u64> {
        self.bps
    }
}

/// The declared rids in order of increasing quality. Browsers send the encodings in the order the
/// page lists them; the two naming conventions in use are q/h/f (LiveKit, our page: quarter,
/// half, full) and l/m/h (low, medium, high), ordered by name when all rids follow one of them,
/// else kept in declaration order (lowest first). At most [`MAX_LAYERS`].
pub fn order_rids(mut rids: Vec<Rid>) -> Vec<Rid> {
    rids.truncate(MAX_LAYERS);
    for convention in [["q", "h", "f"], ["l", "m", "h"]] {
        let rank = |r: &Rid| convention.iter().position(|c| **r == **c);
        if rids.iter().all(|r| rank(r).is_some()) {
            rids.sort_by_key(|r| rank(r));
            return rids;
        }
    }
    rids
}

/// Whether an RTP payload of `codec` is the first packet of a keyframe (where a decoder can
/// start). Codecs without a parser here are never switched (their tracks stay on one layer).
pub fn starts_keyframe(codec: Codec, payload: &[u8]) -> bool {
    match codec {
        Codec::Vp8 => {
            str0m::rtp::Vp8Descriptor::parse(payload).is_ok_and(|d| d.starts_keyframe(payload))
        }
        Codec::H264 => h264_starts_keyframe(payload),
        Codec::Vp9 => vp9_starts_keyframe(payload),
        _ => false,
    }
}

/// The (width, height) in a VP8 keyframe's first packet (RFC 6386 §9.1: frame tag, start code,
/// 14-bit dimensions), `None` for any other packet.
pub fn vp8_keyframe_size(payload: &[u8]) -> Option<(u16, u16)> {
    let d = str0m::rtp::Vp8Descriptor::parse(payload).ok()?;
    if !d.starts_keyframe(payload) {
        return None;
    }
    // The descriptor's length: 1, plus the extension byte and its fields.
    let mut at = 1;
    let b0 = *payload.first()?;
    if b0 & 0x80 != 0 {
        let x = *payload.get(1)?;
        at += 1;
        if x & 0x80 != 0 {
            at += if payload.get(at)? & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            at += 1;
        }
        if x & 0x30 != 0 {
            at += 1;
        }
    }
    let h = payload.get(at..at + 10)?;
    if h[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let w = u16::from_le_bytes([h[6], h[7]]) & 0x3fff;
    let ht = u16::from_le_bytes([h[8], h[9]]) & 0x3fff;
    (w > 0 && ht > 0).then_some((w, ht))
}

/// H.264 (RFC 6184): a keyframe starts with its sequence parameter set (libwebrtc sends SPS, PPS
/// and the IDR slice, the first two usually aggregated in a STAP-A); an IDR slice without a
/// preceding SPS starts one too.
fn h264_starts_keyframe(payload: &[u8]) -> bool {
    const SPS: u8 = 7;
    const IDR: u8 = 5;
    let Some(&first) = payload.first() else {
        return false;
    };
    match first & 0x1f {
        t @ 1..=23 => t == SPS || t == IDR,
        // STAP-A: 16-bit size, NAL unit, repeated.
        24 => {
            let mut at = 1;
            while at + 2 < payload.len() {
                let size = usize::from(u16::from_be_bytes([payload[at], payload[at + 1]]));
                let Some(&nal) = payload.get(at + 2) else {
                    return false;
                };
                if size == 0 {
                    return false;
                }
                if matches!(nal & 0x1f, SPS | IDR) {
                    return true;
                }
                at += 2 + size;
            }
            false
        }
        // FU-A: the start fragment carries the type.
        28 => payload
            .get(1)
            .is_some_and(|h| h & 0x80 != 0 && matches!(h & 0x1f, SPS | IDR)),
        _ => false,
    }
}

/// VP9 (RFC 9628): the start of a frame (B) that is not inter-predicted (P = 0).
fn vp9_starts_keyframe(payload: &[u8]) -> bool {
    payload
        .first()
        .is_some_and(|b| b & 0x40 == 0 && b & 0x08 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rids(names: &[&str]) -> Vec<Rid> {
        names.iter().map(|n| Rid::from(*n)).collect()
    }

    #[test]
    fn rids_are_ordered_low_to_high() {
        assert_eq!(order_rids(rids(&["f", "q", "h"])), rids(&["q", "h", "f"]));
        assert_eq!(order_rids(rids(&["h", "m", "l"])), rids(&["l", "m", "h"]));
        // Unknown names: declaration order, at most MAX_LAYERS.
        assert_eq!(
            order_rids(rids(&["a", "b", "c", "d", "e"])),
            rids(&["a", "b", "c", "d"])
        );
    }

    #[test]
    fn vp8_keyframe_start_is_recognised() {
        // S=1 PID=0, no extension; frame tag P=0.
        assert!(starts_keyframe(
            Codec::Vp8,
            &[0x10, 0x00, 0, 0, 0x9d, 0x01, 0x2a]
        ));
        // Delta frame.
        assert!(!starts_keyframe(Codec::Vp8, &[0x10, 0x01, 0, 0]));
        // Continuation packet of a keyframe.
        assert!(!starts_keyframe(Codec::Vp8, &[0x00, 0x00, 0, 0]));
        // With X, I (15-bit picture id), L, T: descriptor of 5 bytes, then P=0.
        assert!(starts_keyframe(
            Codec::Vp8,
            &[0x90, 0xe0, 0x80 | 0x12, 0x34, 7, 0x20, 0x00, 0, 0]
        ));
        // Truncated descriptors are not keyframes (and do not panic).
        assert!(!starts_keyframe(Codec::Vp8, &[0x90, 0xe0, 0x80]));
        assert!(!starts_keyframe(Codec::Vp8, &[]));
    }

    #[test]
    fn vp8_keyframe_dimensions_are_read() {
        // Descriptor X|S, I (15-bit), L, T; frame tag (P=0), start code, 640 × 360.
        let mut p = vec![
            0x90, 0xe0, 0x81, 0x23, 5, 0x20, 0x50, 0x02, 0x00, 0x9d, 0x01, 0x2a,
        ];
        p.extend_from_slice(&640u16.to_le_bytes());
        p.extend_from_slice(&360u16.to_le_bytes());
        p.extend_from_slice(&[0; 8]);
        assert_eq!(vp8_keyframe_size(&p), Some((640, 360)));
        // Scaling bits in the top two bits are ignored.
        let mut scaled = p.clone();
        scaled[15] |= 0x40;
        assert_eq!(vp8_keyframe_size(&scaled), Some((640, 360)));
        // A delta frame, a truncated header, a wrong start code.
        let mut delta = p.clone();
        delta[6] |= 0x01;
        assert_eq!(vp8_keyframe_size(&delta), None);
        assert_eq!(vp8_keyframe_size(&p[..13]), None);
        let mut bad = p.clone();
        bad[9] = 0;
        assert_eq!(vp8_keyframe_size(&bad), None);
    }

    #[test]
    fn h264_keyframe_start_is_recognised() {
        assert!(starts_keyframe(Codec::H264, &[0x67, 0x42]), "SPS");
        assert!(starts_keyframe(Codec::H264, &[0x65, 0x88]), "IDR");
        assert!(
            !starts_keyframe(Codec::H264, &[0x41, 0x9a]),
            "non-IDR slice"
        );
        // STAP-A with SPS and PPS.
        assert!(starts_keyframe(
            Codec::H264,
            &[0x78, 0, 2, 0x67, 0x42, 0, 2, 0x68, 0xce]
        ));
        // STAP-A with a lying size does not run off the end.
        assert!(!starts_keyframe(Codec::H264, &[0x78, 0xff, 0xff, 0x41]));
        assert!(!starts_keyframe(Codec::H264, &[0x78, 0, 0]));
        // FU-A start of an IDR, and a middle fragment of one.
        assert!(starts_keyframe(Codec::H264, &[0x7c, 0x85, 0]));
        assert!(!starts_keyframe(Codec::H264, &[0x7c, 0x05, 0]));
        assert!(!starts_keyframe(Codec::H264, &[]));
    }

    #[test]
    fn bitrate_is_metered_per_window() {
        #[allow(clippy::disallowed_methods)] // a test's origin of virtual time
        let t0 = Instant::now();
        let mut m = RateMeter::default();
        assert_eq!(m.bps(), None);
        // 30 packets of 1000 bytes per 500 ms = 480 kbit/s.
        for i in 0..=60u64 {
            m.record(t0 + Duration::from_micros(i * 500_000 / 30), 1000);
        }
        let bps = m.bps().expect("measured");
        assert!((470_000..=500_000).contains(&bps), "{bps}");
    }
}
