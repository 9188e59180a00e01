//! Timers: the heap of per-participant `Rtc` deadlines, ICE timeouts and the periodic stats
//! report.

use std::cmp::Reverse;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use str0m::Input as RtcInput;
use tracing::{info, warn};

use super::{LeaveReason, Output, ParticipantIdx, Report, Work, WorkerCore};

impl WorkerCore {
    /// Start (or move forward) a timeout pass; [`WorkerCore::poll_output`] carries it out.
    pub(super) fn handle_timeout(&mut self, now: Instant) {
        self.timeout_pass = Some(self.timeout_pass.map_or(now, |t| t.max(now)));
    }

    /// One step of the timeout pass at `now`: serve the next due participant (its `Rtc` timeout,
    /// pending keyframe requests, the drain, the work it queued) and return, so its datagrams are
    /// output before the next participant is encrypted. With none due, finish the pass: the
    /// periodic stats report, queued work.
    ///
    /// Serving participants one per step rather than all at once does not change what is sent,
    /// only when: in a fan-out, the first subscriber's copy of a frame used to wait until every
    /// subscriber's copy was encrypted.
    pub(super) fn timeout_step(&mut self, now: Instant) {
        while let Some(Reverse((t, idx))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            if self.participant_timeout(idx, t, now) {
                self.run_work(now);
                return;
            }
        }
        self.timeout_pass = None;
        if self.next_stats.is_none_or(|t| now >= t) {
            if self.next_stats.is_some() {
                let mut stats = self.stats();
                stats.join_seconds = std::mem::take(&mut self.join_samples);
                self.out
                    .push_back(Output::Report(Report::Stats(Box::new(stats))));
            }
            self.next_stats = Some(now + self.cfg.stats_interval);
            // Layers a publisher switched on or off, estimates that stopped coming: every
            // subscriber's layer choice is revisited at least this often.
            self.allocate_all();
            self.dynacast_all();
        }
        self.run_work(now);
    }

    /// Serve participant `idx` for its heap entry due at `t`; false if the entry was stale.
    fn participant_timeout(&mut self, idx: ParticipantIdx, t: Instant, now: Instant) -> bool {
        let Some(p) = self.participants.get_mut(idx.0) else {
            return false;
        };
        if p.scheduled != Some(t) {
            return false; // stale heap entry
        }
        p.scheduled = None;
        if now.saturating_duration_since(p.last_rx) >= self.cfg.ice_timeout {
            info!(participant = %p.id, "no packets for {:?}: removing", self.cfg.ice_timeout);
            self.work.push_back(Work::Remove(idx, LeaveReason::Timeout));
            return true;
        }
        // Taken in every case: a full time input releases written RTP too.
        let written = p.written_at.take().is_some();
        let full = now >= p.rtc_deadline;
        if full || written {
            // Written RTP alone needs only the send-queue release, not the `Rtc`'s timers
            // (ICE, SCTP, RTCP, NACK, stats): the cheap path when they are not due.
            if full {
                self.counters.rtc_timeouts += 1;
            } else {
                self.counters.rtc_releases += 1;
            }
            match catch_unwind(AssertUnwindSafe(|| {
                if full {
                    p.rtc.handle_input(RtcInput::Timeout(now))
                } else {
                    p.rtc.handle_written_rtp(now)
                }
            })) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    warn!(participant = %p.id, error = %e, "rtc timeout failed");
                    p.failed = true;
                }
                Err(_) => p.failed = true,
            }
        }
        for (_, ti) in &p.tracks_in {
            let Some(t) = self.tracks_in.get_mut(ti.0) else {
                continue;
            };
            for (layer, l) in t.layers.iter_mut().enumerate() {
                if l.keyframe_pending
                    && l.last_keyframe_request
                        .is_none_or(|last| now >= last + self.cfg.keyframe_interval)
                {
                    // Cleared here so the deadline is not re-armed in the past before the
                    // queued request runs.
                    l.keyframe_pending = false;
                    self.work.push_back(Work::Keyframe(*ti, layer as u8));
                }
            }
        }
        self.drain(idx, now);
        true
    }

    /// Keep the earliest deadline of a participant in the timer heap.
    pub(super) fn schedule(&mut self, idx: ParticipantIdx) {
        let Some(p) = self.participants.get_mut(idx.0) else {
            return;
        };
        let mut deadline = p.rtc_deadline.min(p.last_rx + self.cfg.ice_timeout);
        if let Some(w) = p.written_at {
            deadline = deadline.min(w);
        }
        for (_, ti) in &p.tracks_in {
            let Some(t) = self.tracks_in.get(ti.0) else {
                continue;
            };
            for l in &t.layers {
                if l.keyframe_pending
                    && let Some(last) = l.last_keyframe_request
                {
                    deadline = deadline.min(last + self.cfg.keyframe_interval);
                }
            }
        }
        if p.scheduled.is_none_or(|s| deadline < s) {
            p.scheduled = Some(deadline);
            self.timers.push(Reverse((deadline, idx)));
        }
    }
}
