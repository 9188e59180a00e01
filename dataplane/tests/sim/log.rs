//! The simulation's event log: every core output as one line (what the determinism test
//! compares between two runs).

use sfu_core::{Output, Report};

use super::Sim;

impl Sim {
    /// One core output as a log line: milliseconds since the start, and what came out. Datagrams are
    /// logged by destination, kind (first byte, RFC 7983) and — for media — length; the bytes
    /// themselves are not, because DTLS/SRTP keys come from the crypto library's own randomness.
    /// SDP is logged with the lines str0m fills from its own randomness (session id, SSRCs, msid,
    /// cname) and the per-process certificate's fingerprint masked; the ICE credentials and resume
    /// keys are the core's and come from its seed, so they are logged as they are.
    pub(super) fn log_line(&self, o: &Output) -> String {
        let t = self.now.duration_since(self.start).as_millis();
        match o {
            Output::Transmit(tx) => {
                let kind = match (tx.contents.first(), tx.contents.get(1)) {
                    (Some(0..=3), _) => "stun".to_string(),
                    // DTLS record sizes vary with the handshake's random signatures.
                    (Some(20..=63), _) => "dtls".to_string(),
                    // RTCP is str0m's own (reports, feedback): its content follows str0m's
                    // internal state, which the peers' own randomness (str0m picks their SSRCs and
                    // report timing) shifts within a millisecond. Logged without its length.
                    (Some(128..=191), Some(192..=223)) => "rtcp".to_string(),
                    (Some(128..=191), _) => format!("rtp {}", tx.contents.len()),
                    _ => "other".to_string(),
                };
                format!("{t} tx {} {kind}", tx.destination)
            }
            // Byte totals include DTLS records, whose length varies with random signatures.
            // Datagrams in counts what the peers sent, RTCP and keepalives included: the
            // peers' str0m schedules those with its own randomness (an input, not a decision
            // of the core).
            Output::Report(Report::Stats(st)) => {
                let mut st = st.clone();
                st.counters.bytes_in = 0;
                st.counters.bytes_out = 0;
                st.counters.datagrams_in = 0;
                // How written RTP was released (a full time input or the cheap release) depends
                // on whether a subscriber's str0m timers were due, which the peers' randomly
                // timed RTCP moves.
                // Datagrams out includes RTCP, packed by str0m (see `canonical` in the
                // determinism test).
                st.counters.datagrams_out = 0;
                st.counters.rtc_timeouts = 0;
                st.counters.rtc_releases = 0;
                format!("{t} {st:?}")
            }
            Output::Report(r) => format!("{t} {}", mask_sdp(&format!("{r:?}"))),
        }
    }
}

/// `text` (a report's debug form, SDP escaped inside) with the SDP lines str0m fills from its
/// own randomness (session id, SSRCs, msid, mids of the media it adds) or from the per-process
/// certificate masked. SDP lines are separated by an
/// escaped `\r\n` there.
fn mask_sdp(text: &str) -> String {
    const MASKED: [&str; 8] = [
        "o=",
        "a=ssrc:",
        "a=ssrc-group:",
        "a=msid:",
        "a=msid-semantic",
        "a=fingerprint:",
        "a=mid:",
        "a=group:BUNDLE",
    ];
    text.split("\\r\\n")
        .map(|line| match MASKED.iter().find(|m| line.starts_with(**m)) {
            Some(m) => format!("{m}…"),
            None => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\\r\\n")
}
