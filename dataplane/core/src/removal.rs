//! Removing participants (any reason) and their tracks, telling the room, closing empty rooms;
//! shutdown.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use str0m::Output as RtcOutput;
use tracing::info;

use super::track::OutState;
use super::{Event, LeaveReason, Output, ParticipantIdx, Report, WorkerCore, guard};

impl WorkerCore {
    pub(super) fn remove_participant(
        &mut self,
        idx: ParticipantIdx,
        now: Instant,
        reason: LeaveReason,
    ) {
        let Some(mut p) = self.participants.try_remove(idx.0) else {
            return;
        };
        info!(participant = %p.id, room = %p.room, ?reason, "participant removed");
        // Tell the browser (DTLS close_notify, RTCP BYE) unless the session is already broken.
        if !p.failed && guard(|| p.rtc.close()).is_some_and(|r| r.is_ok()) {
            for _ in 0..64 {
                match catch_unwind(AssertUnwindSafe(|| p.rtc.poll_output())) {
                    Ok(Ok(RtcOutput::Transmit(t))) => {
                        super::rtc_events::emit_transmit(&mut self.counters, &mut self.out, t)
                    }
                    Ok(Ok(RtcOutput::Event(_))) => {}
                    _ => break,
                }
            }
        }
        self.demux.remove(idx, &p.ufrag, &p.addrs);
        self.by_id.remove(&p.id);

        // Its published tracks: every subscriber renegotiates them away (a viewer's slot is
        // refilled instead).
        let mut renegotiate = Vec::new();
        let mut emptied = Vec::new();
        for (_, ti) in &p.tracks_in {
            let Some(tin) = self.tracks_in.try_remove(ti.0) else {
                continue;
            };
            for to in tin.subscribers {
                let Some(t) = self.tracks_out.get_mut(to.0) else {
                    continue;
                };
                t.source = None;
                match t.state {
                    OutState::ToOpen => {
                        let sub = t.subscriber;
                        self.tracks_out.remove(to.0);
                        if let Some(sp) = self.participants.get_mut(sub.0) {
                            sp.tracks_out.retain(|x| *x != to);
                        }
                    }
                    OutState::Open(_)
                        if self
                            .participants
                            .get(t.subscriber.0)
                            .is_some_and(|s| s.slots.is_some()) =>
                    {
                        emptied.push(to);
                    }
                    OutState::Open(mid) => {
                        t.state = OutState::ToClose(mid);
                        renegotiate.push(t.subscriber);
                    }
                    _ => {}
                }
            }
        }
        // Its subscriptions.
        for to in std::mem::take(&mut p.tracks_out) {
            if let Some(t) = self.tracks_out.try_remove(to.0)
                && let Some(ti) = t.source
                && let Some(tin) = self.tracks_in.get_mut(ti.0)
            {
                tin.subscribers.retain(|x| *x != to);
            }
        }
        // The room.
        let mut others = Vec::new();
        if let Some(room) = self.rooms.get_mut(&p.room) {
            room.participants.retain(|x| *x != idx);
            room.speakers.retain(|x| *x != idx);
            others = room.participants.clone();
            if room.participants.is_empty() {
                self.rooms.remove(&p.room);
                self.out.push_back(Output::Report(Report::RoomClosed {
                    room: p.room.clone(),
                }));
            }
        }
        for o in others {
            if let Some(op) = self.participants.get(o.0) {
                let participant = op.id.clone();
                self.event(Event::PeerLeft {
                    participant,
                    peer_id: p.id.clone(),
                    reason,
                });
            }
        }
        if reason != LeaveReason::Left {
            self.event(Event::Gone {
                participant: p.id.clone(),
                reason,
            });
        }
        self.out
            .push_back(Output::Report(Report::ParticipantClosed {
                participant: p.id.clone(),
            }));
        renegotiate.sort();
        renegotiate.dedup();
        for sub in renegotiate {
            self.negotiate(sub, now);
        }
        for to in emptied {
            self.empty_slot(to);
        }
    }

    /// Remove everyone (shutdown).
    pub fn shutdown(&mut self, now: Instant) {
        let all: Vec<ParticipantIdx> = self
            .participants
            .iter()
            .map(|(i, _)| ParticipantIdx(i))
            .collect();
        for idx in all {
            self.remove_participant(idx, now, LeaveReason::Shutdown);
        }
        self.run_work(now);
    }
}
