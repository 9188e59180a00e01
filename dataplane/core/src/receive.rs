//! Network input: a datagram is classified (STUN, DTLS, RTP/RTCP), routed to its participant by
//! ufrag or proven source address, and handed to that participant's `Rtc`; drops are counted by
//! reason.

use std::net::SocketAddr;
use std::time::Instant;

use str0m::Input as RtcInput;
use str0m::net::Receive;
use tracing::{debug, trace, warn};

use super::participant::MAX_ADDRS;
use super::{DropReason, Remote, WorkerCore, guard};

impl WorkerCore {
    pub(super) fn handle_receive(
        &mut self,
        now: Instant,
        source: Remote,
        destination: SocketAddr,
        data: &[u8],
    ) {
        self.counters.datagrams_in += 1;
        self.counters.bytes_in += data.len() as u64;
        let (idx, is_stun) = match guard(|| self.demux.route(source, data)) {
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                trace!(source = %source.addr, ?e, "drop datagram");
                self.counters.drop(e.into());
                return;
            }
            None => {
                self.counters.drop(DropReason::Malformed);
                return;
            }
        };
        let Some(Ok(recv)) =
            guard(|| Receive::new(source.transport.protocol(), source.addr, destination, data))
        else {
            self.counters.drop(DropReason::Malformed);
            return;
        };
        let input = RtcInput::Receive(now, recv);
        let Some(p) = self.participants.get_mut(idx.0) else {
            self.counters.drop(DropReason::UnknownSource);
            return;
        };
        if is_stun && self.demux.addr_owner(&source) != Some(idx) {
            // A new address for this participant: only bind it once the ICE agent accepts the
            // request (MESSAGE-INTEGRITY checked with the participant's password).
            match guard(|| p.rtc.accepts(&input)) {
                Some(true) => {}
                Some(false) => {
                    self.counters.drop(DropReason::StunUnauthorized);
                    return;
                }
                // The datagram made str0m panic: drop it; the session itself is intact.
                None => {
                    self.counters.drop(DropReason::Malformed);
                    return;
                }
            }
            if !p.addrs.contains(&source) {
                if p.addrs.len() >= MAX_ADDRS {
                    self.counters.drop(DropReason::TooManyAddresses);
                    return;
                }
                p.addrs.push(source);
            }
            if let Some(old) = self.demux.bind_addr(source, idx)
                && let Some(o) = self.participants.get_mut(old.0)
            {
                o.addrs.retain(|a| *a != source);
            }
        }
        let Some(p) = self.participants.get_mut(idx.0) else {
            return;
        };
        p.last_rx = now;
        match guard(|| p.rtc.handle_input(input)) {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                // A single bad datagram (e.g. failed SRTP auth) is not fatal for the session.
                debug!(participant = %p.id, error = %e, "rtc rejected datagram");
                self.counters.drop(DropReason::RtcRejected);
            }
            None => {
                warn!(participant = %p.id, "rtc panicked on input; closing participant");
                p.failed = true;
            }
        }
        self.drain(idx, now);
        self.run_work(now);
    }
}
