//! Server-side renegotiation: a new published track is offered to every subscriber in the room,
//! one outstanding server offer per participant at a time; answers open the tracks, rollbacks
//! (glare) undo them.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use super::participant::PendingOffer;
use super::track::{OutState, TrackOut};
use super::{ParticipantIdx, TrackInIdx, TrackOutIdx, Work, WorkerCore, kind_name};
use crate::messages::Event;
use str0m::media::{Direction, MediaKind};

impl WorkerCore {
    /// A new published track: every other participant of the room subscribes.
    pub(super) fn track_added(&mut self, ti: TrackInIdx) {
        let Some(tin) = self.tracks_in.get(ti.0) else {
            return;
        };
        let Some(room) = self
            .participants
            .get(tin.publisher.0)
            .map(|p| p.room.clone())
        else {
            return;
        };
        let publisher = tin.publisher;
        let members = self
            .rooms
            .get(&room)
            .map(|r| r.participants.clone())
            .unwrap_or_default();
        for sub in members.into_iter().filter(|s| *s != publisher) {
            self.subscribe(sub, ti);
            self.work.push_back(Work::Negotiate(sub));
        }
    }

    pub(super) fn subscribe(&mut self, sub: ParticipantIdx, ti: TrackInIdx) {
        // A participant whose token denies `subscribe` receives no media at all.
        if self
            .participants
            .get(sub.0)
            .is_none_or(|p| !p.grants.subscribe)
        {
            return;
        }
        // A viewer (WHEP) cannot renegotiate: the track goes into one of its fixed slots.
        if self
            .participants
            .get(sub.0)
            .is_some_and(|p| p.slots.is_some())
        {
            return self.fill_slot(sub, ti);
        }
        let Some(tin) = self.tracks_in.get(ti.0) else {
            return;
        };
        let Some(publisher_id) = self.participants.get(tin.publisher.0).map(|p| p.id.clone())
        else {
            return;
        };
        let kind = tin.kind;
        let to = TrackOutIdx(
            self.tracks_out
                .insert(TrackOut::new(sub, ti, publisher_id, kind)),
        );
        if let Some(tin) = self.tracks_in.get_mut(ti.0) {
            tin.subscribers.push(to);
        }
        if let Some(p) = self.participants.get_mut(sub.0) {
            p.tracks_out.push(to);
        }
    }

    /// Send one server offer with every pending track change of this participant.
    pub(super) fn negotiate(&mut self, idx: ParticipantIdx, now: Instant) {
        let Some(p) = self.participants.get_mut(idx.0) else {
            return;
        };
        if !p.initial_done || p.pending.is_some() || p.failed || p.slots.is_some() {
            return;
        }
        let changes: Vec<TrackOutIdx> = p
            .tracks_out
            .iter()
            .copied()
            .filter(|to| {
                self.tracks_out
                    .get(to.0)
                    .is_some_and(|t| matches!(t.state, OutState::ToOpen | OutState::ToClose(_)))
            })
            .collect();
        if changes.is_empty() {
            return;
        }
        let mut api = p.rtc.sdp_api();
        for to in &changes {
            let Some(t) = self.tracks_out.get_mut(to.0) else {
                continue;
            };
            t.state = match t.state {
                OutState::ToOpen => {
                    let track_id = format!("{}-{}", t.publisher_id, kind_name(t.kind));
                    let mid = api.add_media(
                        t.kind,
                        Direction::SendOnly,
                        Some(t.publisher_id.to_string()),
                        Some(track_id),
                        None,
                    );
                    OutState::Negotiating(mid)
                }
                OutState::ToClose(mid) => {
                    api.stop_media(mid);
                    OutState::Closing(mid)
                }
                other => other,
            };
        }
        match catch_unwind(AssertUnwindSafe(|| api.apply())) {
            Ok(Some((offer, pending))) => {
                let sdp = offer.to_sdp_string();
                p.pending = Some(PendingOffer {
                    pending,
                    sdp: sdp.clone(),
                    tracks: changes,
                });
                let event = Event::Offer {
                    participant: p.id.clone(),
                    sdp,
                };
                self.event(event);
            }
            Ok(None) => {
                // Nothing needed an SDP round trip (e.g. only already-stopped m-lines).
                for to in &changes {
                    self.finish_negotiation(*to, false);
                }
            }
            Err(_) => p.failed = true,
        }
        self.drain(idx, now);
    }

    /// The subscriber accepted the offer carrying this track change.
    pub(super) fn finish_negotiation(&mut self, to: TrackOutIdx, connected: bool) {
        let Some(t) = self.tracks_out.get_mut(to.0) else {
            return;
        };
        match t.state {
            OutState::Negotiating(mid) if t.source.is_some() => {
                t.state = OutState::Open(mid);
                // Forwarded media leaves as it arrives (the publisher paced it already); with
                // BWE on, str0m's pacer would otherwise hold each subscriber's copy to twice
                // its estimate. The pacer still sends the estimator's probes.
                if let Some(p) = self.participants.get_mut(t.subscriber.0)
                    && let Some(tx) = p.rtc.direct_api().stream_tx_by_mid(mid, None)
                {
                    tx.set_unpaced(true);
                }
                // A new subscriber cannot decode until the next keyframe: ask for one now, or as
                // soon as the subscriber is connected.
                if t.kind == MediaKind::Video {
                    if !connected {
                        t.wants_keyframe = true;
                    } else if let Some(ti) = t.source {
                        if self.tracks_in.get(ti.0).is_some_and(|t| t.simulcast()) {
                            // The allocation picks its layer and asks for that layer's keyframe.
                            self.work.push_back(Work::Allocate(t.subscriber));
                        } else {
                            self.work.push_back(Work::Keyframe(ti, 0));
                        }
                    }
                }
            }
            OutState::Negotiating(mid) => t.state = OutState::ToClose(mid),
            OutState::Closing(_) => self.drop_track_out(to),
            _ => {}
        }
    }

    /// The offer carrying this track change was rolled back or rejected.
    pub(super) fn rollback_negotiation(&mut self, to: TrackOutIdx) {
        let Some(t) = self.tracks_out.get_mut(to.0) else {
            return;
        };
        match t.state {
            OutState::Negotiating(_) if t.source.is_some() => t.state = OutState::ToOpen,
            // The m-line was never agreed: nothing to stop.
            OutState::Negotiating(_) => self.drop_track_out(to),
            // stop_media already took effect locally; the next offer carries it as stopped.
            OutState::Closing(_) => self.drop_track_out(to),
            _ => {}
        }
    }

    /// Remove a track out from the slab, its subscriber and its source.
    pub(super) fn drop_track_out(&mut self, to: TrackOutIdx) {
        let Some(t) = self.tracks_out.try_remove(to.0) else {
            return;
        };
        if let Some(p) = self.participants.get_mut(t.subscriber.0) {
            p.tracks_out.retain(|x| *x != to);
        }
        if let Some(ti) = t.source
            && let Some(tin) = self.tracks_in.get_mut(ti.0)
        {
            tin.subscribers.retain(|x| *x != to);
        }
    }
}
