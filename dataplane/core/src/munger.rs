//! Per-subscriber RTP sequence number and timestamp rewriting.
//!
//! Every subscriber stream (`TrackOut`) starts at its own sequence number with SRTP rollover
//! counter 0, whatever the publisher's extended sequence number is: a subscriber that joins after
//! the publisher's sequence wrapped would otherwise start with ROC ≥ 1 and fail SRTP
//! authentication in the browser (Chromium assumes ROC 0 for a stream it has not seen before).
//!
//! The rewrite is an offset, so gaps the publisher made stay gaps (NACKs map 1:1) and
//! retransmitted or reordered packets land on their original slot. When the source changes
//! (a new SSRC on the same track, e.g. after the publisher replaced its track), the offsets are
//! recomputed so the output continues at `last + 1` and the timestamp advances by a caller-given
//! gap: the subscriber sees one continuous stream.

/// Rewritten (extended sequence number, RTP timestamp).
pub type Rewritten = (u64, u32);

#[derive(Debug, Clone)]
struct Anchor {
    ssrc: u32,
    /// out_seq = in_seq + seq_offset
    seq_offset: i64,
    /// out_ts = in_ts + ts_offset (mod 2^32)
    ts_offset: u32,
    /// First output sequence number of this source; anything below belongs to an earlier one.
    first_out: u64,
}

/// Sequence/timestamp rewriter of one outgoing stream.
#[derive(Debug, Clone)]
pub struct RtpMunger {
    anchor: Option<Anchor>,
    /// Highest extended sequence number written so far, and its timestamp.
    last_seq: u64,
    last_ts: u32,
    started: bool,
}

impl Default for RtpMunger {
    fn default() -> Self {
        Self::new(1)
    }
}

impl RtpMunger {
    /// A munger whose first packet gets sequence number `first_seq` (must be < 65536: ROC 0).
    pub fn new(first_seq: u16) -> Self {
        Self {
            anchor: None,
            last_seq: u64::from(first_seq).wrapping_sub(1),
            last_ts: 0,
            started: false,
        }
    }

    /// Rewrite one packet of source `ssrc` with extended sequence number `seq` and timestamp `ts`.
    ///
    /// `ts_gap` is how far the timestamp should advance past the last written packet if this packet
    /// starts a new source (ignored otherwise; ≥ 1 is enforced).
    ///
    /// Returns `None` for packets older than the start of the current source (they cannot be
    /// placed without colliding with numbers already used).
    pub fn rewrite(&mut self, ssrc: u32, seq: u64, ts: u32, ts_gap: u32) -> Option<Rewritten> {
        let anchor = match &self.anchor {
            Some(a) if a.ssrc == ssrc => a,
            _ => {
                let next = self.last_seq.wrapping_add(1);
                let ts_out = if self.started {
                    self.last_ts.wrapping_add(ts_gap.max(1))
                } else {
                    // The first source keeps its timestamps: nothing to be continuous with.
                    ts
                };
                self.anchor.insert(Anchor {
                    ssrc,
                    seq_offset: next as i64 - seq as i64,
                    ts_offset: ts_out.wrapping_sub(ts),
                    first_out: next,
                })
            }
        };
        let out = seq as i64 + anchor.seq_offset;
        // Older than the first packet of this source (reordered): its slot may be taken.
        if out < anchor.first_out as i64 {
            return None;
        }
        let out = out as u64;
        let ts_out = ts.wrapping_add(anchor.ts_offset);
        if !self.started || out > self.last_seq {
            self.last_seq = out;
            self.last_ts = ts_out;
            self.started = true;
        }
        Some((out, ts_out))
    }

    /// The next packet starts a new source even if its SSRC is the one flowing before (forwarding
    /// resumes after a pause, or switches back to a layer): it continues at last + 1 instead of
    /// leaving a gap for the packets not forwarded meanwhile, which the subscriber would NACK.
    pub fn rebase(&mut self) {
        self.anchor = None;
    }

    /// Highest sequence number written, if any.
    pub fn last_seq(&self) -> Option<u64> {
        self.started.then_some(self.last_seq)
    }
}

/// VP8 picture id and TL0PICIDX rewriter of one outgoing stream (RFC 7741). Within one source
/// the values pass through shifted by an offset; when the source changes (a simulcast layer
/// switch: each layer numbers its own pictures) the offsets are recomputed so the subscriber's
/// decoder sees the picture id and TL0PICIDX continue at last + 1, as in one stream.
#[derive(Debug, Clone, Default)]
pub struct Vp8Munger {
    ssrc: Option<u32>,
    /// out = in + offset (mod 2^15)
    pid_offset: u16,
    /// out = in + offset (mod 2^8)
    tl0_offset: u8,
    last_pid: Option<u16>,
    last_tl0: Option<u8>,
}

/// The 15-bit picture id space.
const PID_MASK: u16 = 0x7fff;

impl Vp8Munger {
    /// The (picture id, TL0PICIDX) to write for a packet of source `ssrc` carrying `pid`/`tl0`
    /// (each `None` when the descriptor lacks it).
    pub fn rewrite(
        &mut self,
        ssrc: u32,
        pid: Option<u16>,
        tl0: Option<u8>,
    ) -> (Option<u16>, Option<u8>) {
        if self.ssrc != Some(ssrc) {
            self.ssrc = Some(ssrc);
            self.pid_offset = match (self.last_pid, pid) {
                (Some(last), Some(p)) => last.wrapping_add(1).wrapping_sub(p) & PID_MASK,
                _ => 0,
            };
            self.tl0_offset = match (self.last_tl0, tl0) {
                (Some(last), Some(t)) => last.wrapping_add(1).wrapping_sub(t),
                _ => 0,
            };
        }
        let pid = pid.map(|p| p.wrapping_add(self.pid_offset) & PID_MASK);
        let tl0 = tl0.map(|t| t.wrapping_add(self.tl0_offset));
        self.last_pid = pid.or(self.last_pid);
        self.last_tl0 = tl0.or(self.last_tl0);
        (pid, tl0)
    }

    /// Like [`RtpMunger::rebase`]: the next packet continues the picture ids.
    pub fn rebase(&mut self) {
        self.ssrc = None;
    }

    /// Whether packets of the current source need their descriptor rewritten.
    pub fn shifted(&self) -> bool {
        self.pid_offset != 0 || self.tl0_offset != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebases_to_start_and_keeps_gaps() {
        let mut m = RtpMunger::new(1);
        let table = [
            // (in seq, in ts, expected out)
            (40_000u64, 1000u32, Some((1u64, 1000u32))),
            (40_001, 1000, Some((2, 1000))),
            (40_003, 4000, Some((4, 4000))), // gap kept: 3 is missing
            (40_002, 1000, Some((3, 1000))), // late packet lands on its slot
            (39_999, 900, None),             // older than the first packet: dropped
            (40_004, 4000, Some((5, 4000))),
        ];
        for (seq, ts, want) in table {
            assert_eq!(m.rewrite(7, seq, ts, 3000), want, "in {seq}");
        }
        assert_eq!(m.last_seq(), Some(5));
    }

    #[test]
    fn publisher_with_high_roc_starts_subscriber_at_roc_zero() {
        // A publisher running for a long time: extended seq well past 2^16 (ROC 3).
        let mut m = RtpMunger::new(1);
        let start = 3 * 65_536 + 65_530;
        for i in 0..20u64 {
            let (seq, _) = m.rewrite(1, start + i, 0, 1).expect("forwarded");
            assert_eq!(seq, 1 + i);
            assert!(seq < 65_536, "ROC stays 0");
        }
    }

    #[test]
    fn output_wraps_continuously_across_2_16_and_ts_wraps_u32() {
        let mut m = RtpMunger::new(65_530);
        let mut prev = None;
        for i in 0..20u64 {
            let ts = (u32::MAX - 5 * 3000).wrapping_add((i as u32).wrapping_mul(3000));
            let (seq, ts_out) = m.rewrite(9, 1_000 + i, ts, 1).expect("forwarded");
            if let Some(p) = prev {
                assert_eq!(seq, p + 1, "contiguous extended sequence");
            }
            assert_eq!(ts_out, ts);
            prev = Some(seq);
        }
        assert_eq!(
            prev,
            Some(65_530 + 19),
            "crossed 65535 into ROC 1 without a jump"
        );
    }

    #[test]
    fn source_switch_continues_sequence_and_timestamp() {
        let mut m = RtpMunger::new(100);
        assert_eq!(m.rewrite(1, 5, 50_000, 3000), Some((100, 50_000)));
        assert_eq!(m.rewrite(1, 6, 53_000, 3000), Some((101, 53_000)));
        // New SSRC with unrelated numbering: continues at 102, ts advances by the gap.
        assert_eq!(m.rewrite(2, 60_000, 7, 3000), Some((102, 56_000)));
        assert_eq!(m.rewrite(2, 60_001, 3007, 3000), Some((103, 59_000)));
        // A straggler of the new source from before its first packet is dropped.
        assert_eq!(m.rewrite(2, 59_999, 0, 3000), None);
        // A zero gap still advances the timestamp.
        assert_eq!(m.rewrite(3, 1, 0, 0), Some((104, 59_001)));
        // Forwarding paused for 10 packets of source 3, then resumed: no gap.
        m.rebase();
        assert_eq!(m.rewrite(3, 12, 30_000, 3000), Some((105, 62_001)));
        assert_eq!(m.rewrite(3, 13, 33_000, 3000), Some((106, 65_001)));
    }

    #[test]
    fn vp8_picture_ids_continue_across_a_source_switch() {
        let mut m = Vp8Munger::default();
        // The first source passes through unchanged.
        assert_eq!(m.rewrite(1, Some(100), Some(7)), (Some(100), Some(7)));
        assert_eq!(m.rewrite(1, Some(101), Some(8)), (Some(101), Some(8)));
        assert!(!m.shifted());
        // Another layer with its own numbering: continues at 102 / 9.
        assert_eq!(m.rewrite(2, Some(30_000), Some(250)), (Some(102), Some(9)));
        assert!(m.shifted());
        assert_eq!(m.rewrite(2, Some(30_001), Some(251)), (Some(103), Some(10)));
        // Back to the first: continues again, wrapping the 15-bit space.
        let mut w = Vp8Munger::default();
        assert_eq!(
            w.rewrite(1, Some(0x7fff), Some(255)),
            (Some(0x7fff), Some(255))
        );
        assert_eq!(w.rewrite(2, Some(5), Some(5)), (Some(0), Some(0)));
        // Missing fields stay missing.
        assert_eq!(w.rewrite(2, None, None), (None, None));
    }
}
