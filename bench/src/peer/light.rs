//! Header-only receive accounting ("light" subscribers) for the load generator.
//!
//! A full str0m subscriber decrypts every packet it receives (SRTP, then str0m's per-packet
//! bookkeeping and an event), which costs the generator more per packet than the SFU spends
//! forwarding it. A light subscriber still runs everything through its `Rtc` until it has seen
//! the first packet of a stream (ICE, DTLS, SCTP, RTCP and keepalives always go to str0m), then
//! counts that stream's packets from the clear-text RTP header: SSRC → m-line, sequence number →
//! loss and reordering, length → bytes. One packet in `sample_every` per stream still goes
//! through str0m, which decrypts it; its payload's send stamp gives the latency sample.
//!
//! The streams' NACK generation is turned off (str0m would otherwise ask the SFU to resend every
//! packet it did not see), so a light subscriber measures loss before repair; the full subscriber
//! (`--receivers full`) is the realism check that also exercises NACK/RTX.

use std::collections::HashMap;

use str0m::media::Mid;
use str0m::rtp::Ssrc;

use super::Peer;

/// SRTP authentication tag of the AEAD profiles the peers negotiate.
const SRTP_TAG: usize = 16;

/// Header-only receive state of one peer.
#[derive(Debug)]
pub(super) struct LightRx {
    /// Every this many packets of a stream is decrypted (latency sample).
    sample_every: u32,
    /// Known streams: SSRC → (m-line, packets seen).
    streams: HashMap<u32, (Mid, u32)>,
}

/// The clear-text part of an RTP header: (SSRC, sequence number, header length), `None` for
/// anything that is not RTP (STUN, DTLS, RTCP, garbage).
fn rtp_header(d: &[u8]) -> Option<(u32, u16, usize)> {
    if d.len() < 12 || d[0] >> 6 != 2 || (192..=223).contains(&d[1]) {
        return None;
    }
    let cc = usize::from(d[0] & 0x0f);
    let mut len = 12 + 4 * cc;
    if d[0] & 0x10 != 0 {
        let ext = d.get(len + 2..len + 4)?;
        len += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
    }
    if len > d.len() {
        return None;
    }
    let seq = u16::from_be_bytes([d[2], d[3]]);
    let ssrc = u32::from_be_bytes([d[8], d[9], d[10], d[11]]);
    Some((ssrc, seq, len))
}

impl Peer {
    /// Count received RTP from headers once a stream is known, decrypting one packet in
    /// `sample_every` (see the module docs). Off by default.
    pub fn set_light_receive(&mut self, sample_every: u32) {
        self.light = Some(LightRx {
            sample_every: sample_every.max(1),
            streams: HashMap::new(),
        });
    }

    /// A datagram for header-only accounting: true if it was consumed (counted, not a sample),
    /// false if it must go through the `Rtc`.
    pub(super) fn light_receive(&mut self, data: &[u8]) -> bool {
        let Some(light) = self.light.as_mut() else {
            return false;
        };
        let Some((ssrc, seq, hdr)) = rtp_header(data) else {
            return false;
        };
        let Some((mid, seen)) = light.streams.get_mut(&ssrc) else {
            return false;
        };
        *seen = seen.wrapping_add(1);
        let sample = *seen % light.sample_every == 0;
        let mid = *mid;
        let bytes = data.len().saturating_sub(hdr + SRTP_TAG) as u64;
        self.received.record_header(mid, seq, bytes);
        !sample
    }

    /// For an RTP packet str0m delivered on `ssrc`: true if it is a latency sample of a stream
    /// already counted from headers. The first packet of a stream makes the stream known (and
    /// turns its NACKs off) and returns false: it is counted in full.
    pub(super) fn light_sampled(&mut self, ssrc: u32, mid: Mid) -> bool {
        let Some(light) = self.light.as_mut() else {
            return false;
        };
        if light.streams.contains_key(&ssrc) {
            return true;
        }
        light.streams.insert(ssrc, (mid, 0));
        if let Some(rx) = self.rtc.direct_api().stream_rx(&Ssrc::from(ssrc)) {
            rx.suppress_nack(true);
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtp_headers_are_read_and_everything_else_is_not() {
        let mut p = vec![0u8; 40];
        p[0] = 0x80;
        p[1] = 96;
        p[2..4].copy_from_slice(&513u16.to_be_bytes());
        p[8..12].copy_from_slice(&0xdead_beefu32.to_be_bytes());
        assert_eq!(rtp_header(&p), Some((0xdead_beef, 513, 12)));
        // One CSRC and a 2-word extension.
        p[0] = 0x91;
        p[16..20].copy_from_slice(&[0xbe, 0xde, 0, 2]);
        assert_eq!(rtp_header(&p), Some((0xdead_beef, 513, 12 + 4 + 4 + 8)));
        // An extension longer than the packet.
        p[16..20].copy_from_slice(&[0xbe, 0xde, 0, 200]);
        assert_eq!(rtp_header(&p), None);
        p[0] = 0x80;
        p[1] = 200; // RTCP sender report
        assert_eq!(rtp_header(&p), None);
        assert_eq!(rtp_header(&[0, 1, 0, 0]), None, "STUN");
        assert_eq!(rtp_header(&[22; 40]), None, "DTLS");
        assert_eq!(rtp_header(&[0x80; 11]), None, "short");
    }
}
