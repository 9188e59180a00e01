//! Draining a participant's `Rtc` after every change (str0m's run-loop rule) and acting on its
//! events: media added, RTP in, keyframe requests, channel data, connection state.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use str0m::bwe::BweKind;
use str0m::media::{Direction, MediaKind};
use str0m::{Event as RtcEvent, Output as RtcOutput};
use tracing::{debug, info, warn};

use super::layers::order_rids;
use super::track::TrackIn;
use super::{
    Counters, DropReason, LeaveReason, MediaState, Output, ParticipantIdx, TrackInIdx, Transmit,
    Transport, Work, WorkerCore,
};

impl WorkerCore {
    /// Drain one participant's `Rtc` until it returns a timeout (the run-loop rule).
    pub(super) fn drain(&mut self, idx: ParticipantIdx, now: Instant) {
        loop {
            let Some(p) = self.participants.get_mut(idx.0) else {
                return;
            };
            if p.failed {
                self.work.push_back(Work::Remove(idx, LeaveReason::Failed));
                return;
            }
            let output = match catch_unwind(AssertUnwindSafe(|| p.rtc.poll_output())) {
                Ok(Ok(o)) => o,
                Ok(Err(e)) => {
                    warn!(participant = %p.id, error = %e, "rtc failed; closing participant");
                    p.failed = true;
                    continue;
                }
                Err(_) => {
                    warn!(participant = %p.id, "rtc panicked; closing participant");
                    p.failed = true;
                    continue;
                }
            };
            match output {
                RtcOutput::Timeout(t) => {
                    p.rtc_deadline = t;
                    if !p.rtc.is_alive() {
                        self.work.push_back(Work::Remove(idx, LeaveReason::Closed));
                        return;
                    }
                    self.schedule(idx);
                    return;
                }
                RtcOutput::Transmit(t) => emit_transmit(&mut self.counters, &mut self.out, t),
                RtcOutput::Event(e) => self.handle_rtc_event(idx, now, e),
            }
        }
    }

    pub(super) fn handle_rtc_event(&mut self, idx: ParticipantIdx, now: Instant, event: RtcEvent) {
        let Some(p) = self.participants.get_mut(idx.0) else {
            return;
        };
        match event {
            RtcEvent::RtpPacket(pkt) => {
                p.rtp_in += 1;
                self.counters.rtp_in += 1;
                let stream = p
                    .rtc
                    .direct_api()
                    .stream_rx(&pkt.header.ssrc)
                    .map(|s| (s.mid(), s.rid()));
                let Some(ti) = stream.and_then(|(m, _)| p.track_in(m)) else {
                    self.counters.drop(DropReason::UnknownTrack);
                    return;
                };
                let rid = stream.and_then(|(_, r)| r);
                let Some(tin) = self.tracks_in.get_mut(ti.0) else {
                    return;
                };
                // A rid the publisher did not declare (or beyond the layers kept) is not
                // forwarded: no subscriber could be switched to it.
                let Some(layer) = tin.layer_of(rid) else {
                    self.counters.drop(DropReason::UndeclaredLayer);
                    debug!(participant = %p.id, ?rid, "rtp of an undeclared simulcast layer");
                    return;
                };
                if let Some(l) = tin.layers.get_mut(usize::from(layer)) {
                    l.record(now, pkt.payload.len());
                }
                let level = (tin.kind == MediaKind::Audio)
                    .then_some(pkt.header.ext_vals.audio_level)
                    .flatten();
                self.work.push_back(Work::Forward(ti, layer, pkt));
                if let Some(level) = level {
                    self.audio_level(ti, level, now);
                }
            }
            RtcEvent::KeyframeRequest(req) => {
                let source = p.tracks_out.iter().find_map(|to| {
                    let t = self.tracks_out.get(to.0)?;
                    (t.mid() == Some(req.mid)).then_some(t)
                });
                // The layer this subscriber decodes (or is switching to).
                if let Some(t) = source
                    && let Some(ti) = t.source
                {
                    let layer = t.selector.target().or(t.selector.current()).unwrap_or(0);
                    self.work.push_back(Work::Keyframe(ti, layer));
                }
            }
            RtcEvent::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                p.bwe_bps = Some(estimate.as_u64());
                self.work.push_back(Work::Allocate(idx));
            }
            RtcEvent::MediaAdded(m)
                if p.grants.publish
                    && matches!(m.direction, Direction::RecvOnly | Direction::SendRecv)
                    && p.track_in(m.mid).is_none() =>
            {
                // The encodings the publisher declared (`a=simulcast` / `a=rid`), lowest first.
                let rids = m
                    .simulcast
                    .map(|s| if s.recv.is_empty() { s.send } else { s.recv })
                    .unwrap_or_default()
                    .into_iter()
                    .map(|l| l.rid)
                    .collect();
                let rids = if m.kind == MediaKind::Video {
                    order_rids(rids)
                } else {
                    Vec::new()
                };
                let tin = TrackIn::new(idx, m.mid, m.kind, rids);
                debug!(participant = %p.id, mid = %m.mid, kind = ?m.kind,
                    layers = tin.layers.len(), "track published");
                let ti = TrackInIdx(self.tracks_in.insert(tin));
                p.tracks_in.push((m.mid, ti));
                self.work.push_back(Work::TrackAdded(ti));
            }
            RtcEvent::Connected => {
                p.connected = true;
                if self.join_samples.len() < 10_000 {
                    self.join_samples
                        .push(now.saturating_duration_since(p.joined_at).as_secs_f64());
                }
                info!(participant = %p.id, "connected");
                self.work.push_back(Work::Connected(idx));
            }
            RtcEvent::IceConnectionStateChange(state) => {
                // Not acted on: ICE-lite has no checks of its own to fail; the inactivity timeout
                // decides when a participant is gone.
                debug!(participant = %p.id, ?state, "ice state");
            }
            RtcEvent::ChannelOpen(id, label) if label == "chat" => {
                p.chat = Some(id);
                // The room's history (queued at join), then what arrived since, in order.
                let mut backlog: Vec<Vec<u8>> = p.chat_backlog.drain(..).collect();
                // The current mute state of everyone else who announced one.
                let room = p.room.clone();
                if let Some(r) = self.rooms.get(&room) {
                    for o in &r.participants {
                        if let Some(op) = self.participants.get(o.0)
                            && *o != idx
                            && op.media_state != MediaState::default()
                        {
                            backlog.push(op.media_state.to_json(&op.id));
                        }
                    }
                }
                // And who is speaking now (later changes follow as they happen).
                backlog.extend(self.current_speakers(&room));
                for msg in backlog {
                    self.send_chat(idx, &msg);
                }
            }
            RtcEvent::ChannelData(data) if Some(data.id) == p.chat => {
                self.work.push_back(Work::Chat(idx, data.data));
            }
            RtcEvent::ChannelClose(id) if Some(id) == p.chat => {
                p.chat = None;
            }
            RtcEvent::MediaEgressStats(s) => {
                match p.egress_nacks.iter_mut().find(|(m, _)| *m == s.mid) {
                    Some((_, last)) => {
                        self.counters.nacks_received += s.nacks.saturating_sub(*last);
                        *last = s.nacks;
                    }
                    None => {
                        self.counters.nacks_received += s.nacks;
                        p.egress_nacks.push((s.mid, s.nacks));
                    }
                }
            }
            RtcEvent::Closed => {
                self.work.push_back(Work::Remove(idx, LeaveReason::Closed));
            }
            _ => {}
        }
    }
}

/// A datagram an `Rtc` wants sent: counted and queued as an [`Output::Transmit`]. (Takes the two
/// fields, not the core, so it can run while a participant is borrowed.)
pub(super) fn emit_transmit(
    counters: &mut Counters,
    out: &mut VecDeque<Output>,
    t: str0m::net::Transmit,
) {
    let contents: Vec<u8> = t.contents.into();
    counters.datagrams_out += 1;
    counters.bytes_out += contents.len() as u64;
    out.push_back(Output::Transmit(Transmit {
        transport: Transport::of(t.proto),
        destination: t.destination,
        contents,
    }));
}
