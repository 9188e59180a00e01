//! The per-subscriber rewrite on arbitrary RTP: headers taken from the input (fixed 12-byte
//! RTP header per 16-byte record, plus a timestamp gap and a source selector). Whatever arrives,
//! a subscriber's stream starts with SRTP rollover counter 0 and, within one source, newer
//! packets never get older numbers.
#![no_main]

use sfu_core::RtpMunger;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut m = RtpMunger::default();
    // Extended sequence numbers per source (the publisher side's unwrapping).
    let mut last: Option<(u32, u64, u64)> = None; // (ssrc, extended in, out)
    let mut highest_out: Option<u64> = None;
    for rec in data.chunks_exact(16) {
        let seq16 = u16::from_be_bytes([rec[2], rec[3]]);
        let ts = u32::from_be_bytes([rec[4], rec[5], rec[6], rec[7]]);
        let ssrc = u32::from_be_bytes([rec[8], rec[9], rec[10], rec[11]]) % 3;
        let gap = u32::from(u16::from_be_bytes([rec[12], rec[13]]));
        let ext = match last {
            Some((s, prev, _)) if s == ssrc => {
                let base = prev & !0xffff;
                let cand = base | u64::from(seq16);
                // Nearest to the previous one (RFC 3550 style unwrapping).
                [cand.wrapping_sub(1 << 16), cand, cand + (1 << 16)]
                    .into_iter()
                    .min_by_key(|c| c.abs_diff(prev))
                    .unwrap_or(cand)
            }
            _ => u64::from(seq16) + (1 << 16),
        };
        if let Some((out, _ts)) = m.rewrite(ssrc, ext, ts, gap) {
            if highest_out.is_none() {
                assert!(out < 1 << 16, "a stream starts with rollover counter 0: {out}");
            }
            if let Some((s, prev_in, prev_out)) = last
                && s == ssrc
                && ext > prev_in
            {
                assert!(out > prev_out, "newer packet got an older number");
            }
            highest_out = Some(highest_out.map_or(out, |h| h.max(out)));
            last = Some((ssrc, ext, out));
        }
    }
});
