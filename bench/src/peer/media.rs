//! Media generation: Opus-sized audio and VP8-like video packets written into the peer's `Rtc`,
//! keyframes on request, and the send stamp in every payload that the receiving peer turns into
//! one-way latency ([`read_stamp`]).

use std::time::Instant;

use str0m::media::{MediaKind, Mid};
use str0m::rtp::RtpWrite;

use super::Peer;

/// Magic marking a synthetic payload that carries a send timestamp.
const STAMP_MAGIC: [u8; 4] = *b"SFUb";

/// The send time (µs since the sender's epoch) a synthetic payload carries, if it has one.
pub(super) fn read_stamp(payload: &[u8]) -> Option<u64> {
    if payload.len() < 24 || payload[12..16] != STAMP_MAGIC {
        return None;
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&payload[16..24]);
    Some(u64::from_be_bytes(b))
}

impl Peer {
    /// Whether the next video frame will be a keyframe (one was requested, or none sent yet).
    pub fn wants_keyframe(&self) -> bool {
        if self.simulcast() {
            return self.layer_wants_keyframe();
        }
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

    /// The audio level (RFC 6464, −dBov: −127 silence … 0 loudest) written on every audio
    /// packet from now on; `None` writes none.
    pub fn set_audio_level(&mut self, level: Option<i8>) {
        self.audio_level = level;
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
        // str0m writes the extension only with both fields (the V bit: voice activity).
        let ext = str0m::rtp::ExtensionValues {
            audio_level: self.audio_level,
            voice_activity: self.audio_level.map(|l| l > -50),
            ..Default::default()
        };
        let written = self.write(
            mid,
            RtpWrite::new(pt, seq.into(), ts, now, payload)
                .marker(true)
                .ext_vals(ext),
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
        if self.simulcast() {
            return self.send_simulcast_frame(now, keyframe, packets, size, fps);
        }
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
    pub(super) fn release(&mut self, now: Instant) {
        self.handle_timeout(now);
    }

    /// A payload that looks like VP8 (payload descriptor + keyframe header on frame starts) and
    /// carries the send time for latency measurement.
    pub(super) fn stamped_payload(
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamped_payload_reads_back_and_others_carry_no_stamp() {
        assert_eq!(read_stamp(&[0u8; 23]), None, "too short");
        assert_eq!(read_stamp(&[0u8; 64]), None, "no magic");
        let mut p = vec![0u8; 40];
        p[12..16].copy_from_slice(&STAMP_MAGIC);
        p[16..24].copy_from_slice(&123_456u64.to_be_bytes());
        assert_eq!(read_stamp(&p), Some(123_456));
    }
}
