//! Simulcast publishing, as the web page does it: the camera as three encodings (`rid` q, h, f:
//! quarter, half and full resolution), each its own RTP stream with its own sequence numbers,
//! timestamps and VP8 picture ids, keyframes on request per layer, and layers the publisher can
//! switch off (what the browser does on `setParameters({active:false})`).
//!
//! Payloads carry a VP8 payload descriptor with a 15-bit picture id, TL0PICIDX and TID (as
//! libwebrtc sends them), the send stamp, and the layer index at byte 24 (`0x40 | layer`), so a
//! receiving peer can tell which layer reached it ([`read_layer`]).

use std::time::Instant;

use str0m::format::Codec;
use str0m::media::{KeyframeRequest, Rid};
use str0m::rtp::RtpWrite;

use super::Peer;

/// The encodings, lowest first.
pub const SIMULCAST_RIDS: [&str; 3] = ["q", "h", "f"];

/// One encoding's sending state.
#[derive(Debug, Clone)]
pub(super) struct LayerTx {
    pub rid: Rid,
    seq: u64,
    ts: u32,
    picture_id: u16,
    tl0: u8,
    keyframe_wanted: bool,
    pub active: bool,
    /// Sends keyframes at all (a broken encoder for tests when not).
    keyframes: bool,
}

impl LayerTx {
    pub fn new(index: usize) -> Self {
        let i = index as u32;
        Self {
            rid: Rid::from(SIMULCAST_RIDS[index]),
            // Unrelated numbering per layer, as a browser's encoders have.
            seq: 10_000 + 7_919 * u64::from(i),
            ts: 3_000_000 + 1_234_567 * i,
            picture_id: (1_000 + 9_000 * i) as u16,
            tl0: (40 * i) as u8,
            keyframe_wanted: true,
            active: true,
            keyframes: true,
        }
    }
}

/// The simulcast layer index a synthetic payload carries, if any.
pub fn read_layer(payload: &[u8]) -> Option<u8> {
    let b = *payload.get(24)?;
    (payload.len() >= 32 && b & 0xf0 == 0x40).then_some(b & 0x0f)
}

impl Peer {
    /// Publish video as three simulcast layers (call before [`Peer::create_offer`]).
    pub fn enable_simulcast(&mut self) {
        self.simulcast = (0..SIMULCAST_RIDS.len()).map(LayerTx::new).collect();
    }

    pub fn simulcast(&self) -> bool {
        !self.simulcast.is_empty()
    }

    /// An active layer's next frame is a keyframe (requested, or none sent yet).
    pub(super) fn layer_wants_keyframe(&self) -> bool {
        self.simulcast
            .iter()
            .any(|l| l.active && l.keyframes && l.keyframe_wanted)
    }

    /// Never send a keyframe on layer `rid` (bad input for tests: an encoder that ignores
    /// keyframe requests). False if unknown.
    pub fn set_layer_keyframes(&mut self, rid: &str, keyframes: bool) -> bool {
        match self.simulcast.iter_mut().find(|l| &*l.rid == rid) {
            Some(l) => {
                l.keyframes = keyframes;
                true
            }
            None => false,
        }
    }

    /// Start or stop sending one layer (as `setParameters` with `active`). False if unknown.
    pub fn set_layer_active(&mut self, rid: &str, active: bool) -> bool {
        match self.simulcast.iter_mut().find(|l| &*l.rid == rid) {
            Some(l) => {
                l.keyframe_wanted |= active && !l.active;
                l.active = active;
                true
            }
            None => false,
        }
    }

    /// `{"type":"layers","active":[rids]}` from the SFU (dynacast): encode exactly those.
    pub(super) fn apply_layers(&mut self, text: &str) {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(text) else {
            return;
        };
        let Some(active) = msg["active"].as_array().filter(|_| msg["type"] == "layers") else {
            return;
        };
        let active: Vec<&str> = active.iter().filter_map(|r| r.as_str()).collect();
        let rids: Vec<String> = self.simulcast.iter().map(|l| l.rid.to_string()).collect();
        for rid in rids {
            self.set_layer_active(&rid, active.contains(&rid.as_str()));
        }
        self.received.layer_messages += 1;
    }

    /// Publish one packet on simulcast rid `rid`, which the offer did not declare (bad input
    /// for tests): its own SSRC, the layer marker 3. False without negotiated video.
    pub fn send_undeclared_layer(&mut self, now: Instant, rid: &str) -> bool {
        let Some((mid, Some(pt))) = self.video else {
            return false;
        };
        let mut p = self.stamped_payload(now, 200, true, false);
        p[24] = 0x40 | 3;
        self.undeclared_seq += 1;
        let w = RtpWrite::new(pt, self.undeclared_seq.into(), 0, now, p).marker(true);
        let ssrc = str0m::rtp::Ssrc::from(0x5eed_0001);
        self.rtc
            .direct_api()
            .declare_stream_tx(ssrc, None, mid, Some(Rid::from(rid)))
            .write_rtp(w);
        self.release(now);
        true
    }

    /// A keyframe request for our video: the layer it names (all layers if none).
    pub(super) fn keyframe_requested(&mut self, req: &KeyframeRequest) {
        self.received.keyframe_requests += 1;
        if self.simulcast.is_empty() {
            self.keyframe_wanted = true;
            return;
        }
        let mut found = false;
        for l in &mut self.simulcast {
            if req.rid.is_none_or(|r| r == l.rid) {
                l.keyframe_wanted = true;
                found = true;
            }
        }
        if found {
            *self
                .received
                .keyframe_requests_by_rid
                .entry(req.rid.map_or_else(String::new, |r| r.to_string()))
                .or_default() += 1;
        }
    }

    /// One frame on every active layer: the top layer as `packets` packets of `size` bytes, the
    /// middle one a third of the packets, the lowest one packet of a quarter of the size.
    /// Returns whether any layer sent a keyframe.
    pub(super) fn send_simulcast_frame(
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
        let h264 = self.video_send_codec().map(|(_, c)| c) == Some(Codec::H264);
        let shapes = [
            (1, (size / 4).max(32)),
            ((packets / 3).max(1), size.max(32)),
            (packets.max(1), size.max(32)),
        ];
        let mut any_key = false;
        for index in 0..self.simulcast.len() {
            let (count, size) = shapes[index.min(2)];
            let l = &mut self.simulcast[index];
            if !l.active {
                continue;
            }
            let key = (keyframe || std::mem::take(&mut l.keyframe_wanted)) && l.keyframes;
            any_key |= key;
            let ts = l.ts;
            l.ts = l.ts.wrapping_add(90_000 / fps.max(1));
            let (pid, tl0) = (l.picture_id, l.tl0);
            l.picture_id = (l.picture_id + 1) & 0x7fff;
            l.tl0 = l.tl0.wrapping_add(1);
            let rid = l.rid;
            for i in 0..count {
                let mut p = self.stamped_payload(now, size, false, false);
                // VP8 descriptor: X, S on the frame's first packet; I (15-bit), L, T.
                p[0] = 0x80 | if i == 0 { 0x10 } else { 0 };
                p[1] = 0xe0;
                p[2] = 0x80 | (pid >> 8) as u8;
                p[3] = pid as u8;
                p[4] = tl0;
                p[5] = 0x20; // TID 0, Y
                // VP8 payload header: P = 0 on a keyframe (with its start code).
                p[6] = if i == 0 && key { 0x00 } else { 0x01 };
                if i == 0 && key {
                    // Start code and the layer's size (1280 × 720 at the top, halved per layer
                    // below), where the send stamp would be: a keyframe's first packet carries
                    // no latency sample.
                    p[9..12].copy_from_slice(&[0x9d, 0x01, 0x2a]);
                    let shift = SIMULCAST_RIDS.len() - 1 - index.min(SIMULCAST_RIDS.len() - 1);
                    p[12..14].copy_from_slice(&(1280u16 >> shift).to_le_bytes());
                    p[14..16].copy_from_slice(&(720u16 >> shift).to_le_bytes());
                }
                if h264 {
                    // H.264 NAL header instead of the VP8 descriptor: a keyframe starts with its
                    // SPS, every other packet is a non-IDR slice (no picture ids in H.264).
                    p[..12].fill(0);
                    p[0] = if i == 0 && key { 0x67 } else { 0x41 };
                }
                p[24] = 0x40 | index as u8;
                let l = &mut self.simulcast[index];
                let seq = l.seq;
                l.seq += 1;
                let w = RtpWrite::new(pt, seq.into(), ts, now, p)
                    .marker(i + 1 == count)
                    .nackable(true);
                let mut api = self.rtc.direct_api();
                let Some(stream) = api.stream_tx_by_mid(mid, Some(rid)) else {
                    break;
                };
                stream.write_rtp(w);
                self.sent_packets += 1;
            }
        }
        self.release(now);
        any_key
    }
}
