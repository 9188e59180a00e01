//! The per-packet path: cross-participant work queued while draining an `Rtc` (forwarding RTP to
//! subscribers with rewritten sequence numbers and timestamps, keyframe requests, connection).

use std::time::Instant;

use crate::messages::LeaveReason;
use slab::Slab;
use str0m::format::Codec;
use str0m::media::{KeyframeRequestKind, MediaKind, Pt};
use str0m::rtp::{RtpPacket, RtpWrite, Vp8Descriptor, Vp8Patch};
use tracing::{trace, warn};

use super::layers::{starts_keyframe, vp8_keyframe_size};
use super::participant::Participant;
use super::selector::Verdict;
use super::track::{OutState, TrackIn};
use super::{DropReason, ParticipantIdx, TrackInIdx, Work, WorkerCore, guard, map_payload_type};

impl WorkerCore {
    pub(super) fn run_work(&mut self, now: Instant) {
        while let Some(w) = self.work.pop_front() {
            match w {
                Work::Forward(ti, layer, pkt) => self.forward(ti, layer, &pkt, now),
                Work::Keyframe(ti, layer) => self.request_keyframe(ti, layer, now, true),
                Work::Allocate(idx) => self.allocate(idx, now),
                Work::Speakers => self.rank_speakers(now),
                Work::Dynacast(ti) => self.dynacast(ti, now),
                Work::TrackAdded(ti) => self.track_added(ti),
                Work::Chat(idx, data) => self.handle_chat(idx, &data, now),
                Work::Negotiate(idx) => self.negotiate(idx, now),
                Work::Connected(idx) => self.participant_connected(idx),
                Work::Remove(idx, reason) => self.remove_participant(idx, now, reason),
            }
        }
    }

    pub(super) fn forward(&mut self, ti: TrackInIdx, layer: u8, pkt: &RtpPacket, now: Instant) {
        let Some(tin) = self.tracks_in.get_mut(ti.0) else {
            return;
        };
        let publisher = tin.publisher;
        let nackable = tin.kind == MediaKind::Video;
        let clock_rate: u64 = if tin.kind == MediaKind::Video {
            90_000
        } else {
            48_000
        };
        let pt_in = pkt.header.payload_type;
        // Simulcast: which layer each subscriber gets (switching on keyframes only) and VP8
        // picture ids made continuous across switches. A track without simulcast skips it all.
        let simulcast = tin.simulcast();
        let codec = if tin.kind == MediaKind::Video {
            codec_of(tin, &self.participants, pt_in)
        } else {
            None
        };
        let vp8 = match codec {
            Some(Codec::Vp8) if simulcast => Vp8Descriptor::parse(&pkt.payload).ok(),
            _ => None,
        };
        // On a simulcast track every packet is checked for a keyframe start (the selectors
        // switch there; a layer that never sends one is not switched to), and a VP8 keyframe
        // gives the layer's picture height (what tile hints are compared with).
        let mut keyframe: Option<bool> = None;
        if simulcast && let Some(l) = tin.layers.get_mut(usize::from(layer)) {
            let key = match (vp8, codec) {
                (Some(d), _) => d.starts_keyframe(&pkt.payload),
                (None, Some(c)) => starts_keyframe(c, &pkt.payload),
                (None, None) => false,
            };
            keyframe = Some(key);
            if key {
                l.keyframe_arrived();
                if vp8.is_some()
                    && let Some((_, h)) = vp8_keyframe_size(&pkt.payload)
                {
                    l.height = Some(h);
                }
            }
        }
        let mut ext = pkt.header.ext_vals.clone();
        // Identification extensions are per m-line: never leak the publisher's onto a subscriber.
        ext.mid = None;
        ext.rid = None;
        ext.rid_repair = None;
        ext.transport_cc = None;
        for i in 0..tin.subscribers.len() {
            let Some(to) = self
                .tracks_in
                .get(ti.0)
                .and_then(|t| t.subscribers.get(i).copied())
            else {
                break;
            };
            let Some(tout) = self.tracks_out.get_mut(to.0) else {
                continue;
            };
            let OutState::Open(mid) = tout.state else {
                continue;
            };
            let sub = tout.subscriber;
            // Nothing is written to a subscriber that has not connected yet: str0m could only
            // queue it (and drop the overflow), which would open a sequence gap before the first
            // packet the subscriber sees. Its stream starts at the keyframe requested when it
            // connects. Nor to one that failed (it is being removed).
            if !self
                .participants
                .get(sub.0)
                .is_some_and(|p| p.connected && !p.failed)
            {
                continue;
            }
            // A simulcast track, or one whose tile the subscriber hid: the selector decides.
            if simulcast || tout.selector.allocated() {
                if !tout.selector.allocated() {
                    self.work.push_back(Work::Allocate(sub));
                    continue;
                }
                let is_key = || {
                    *keyframe.get_or_insert_with(|| {
                        codec.is_some_and(|c| starts_keyframe(c, &pkt.payload))
                    })
                };
                match tout.selector.accept(layer, is_key) {
                    Verdict::Drop => continue,
                    Verdict::Switch => {
                        self.counters.layer_switches += 1;
                        // One continuous stream, also when the layer is the one that flowed
                        // before a pause.
                        tout.munger.rebase();
                        tout.vp8.rebase();
                        trace!(?sub, layer, "simulcast layer switch");
                    }
                    Verdict::Forward => {}
                }
            }
            // Publisher PT → subscriber PT, cached per track.
            let pt_out = match tout.pt_map.iter().find(|(i, _)| *i == pt_in) {
                Some((_, o)) => *o,
                None => {
                    let mapped = map_payload_type(&self.participants, publisher, sub, mid, pt_in);
                    tout.pt_map.push((pt_in, mapped));
                    mapped
                }
            };
            let Some(pt_out) = pt_out else {
                self.counters.drop(DropReason::UnmappedPayloadType);
                continue;
            };
            let gap = tout
                .last_arrival
                .map(|l| {
                    (pkt.timestamp.saturating_duration_since(l).as_micros() as u64 * clock_rate
                        / 1_000_000) as u32
                })
                .unwrap_or(0);
            let Some((seq, ts)) =
                tout.munger
                    .rewrite(*pkt.header.ssrc, *pkt.seq_no, pkt.header.timestamp, gap)
            else {
                self.counters.drop(DropReason::Straggler);
                continue;
            };
            tout.last_arrival = Some(pkt.timestamp);
            let patch = vp8.and_then(|d| {
                let (pid, tl0) =
                    tout.vp8
                        .rewrite(*pkt.header.ssrc, d.picture_id(), d.tl0_pic_idx());
                tout.vp8
                    .shifted()
                    .then(|| vp8_patch(&d, pid, tl0))
                    .flatten()
            });
            let Some(sp) = self.participants.get_mut(sub.0) else {
                continue;
            };
            let mut api = sp.rtc.direct_api();
            let Some(stream) = api.stream_tx_by_mid(mid, None) else {
                continue;
            };
            let mut write =
                RtpWrite::new(pt_out, seq.into(), ts, pkt.timestamp, pkt.payload.clone())
                    .marker(pkt.header.marker)
                    .ext_vals(ext.clone())
                    .nackable(nackable);
            if let Some(patch) = patch {
                write = write.vp8_patch(patch);
            }
            if guard(|| stream.write_rtp(write)).is_none() {
                warn!(participant = %sp.id, "rtc panicked on write_rtp; closing participant");
                sp.failed = true;
                self.work.push_back(Work::Remove(sub, LeaveReason::Failed));
                continue;
            }
            sp.rtp_out += 1;
            self.counters.rtp_forwarded += 1;
            // str0m sends written RTP on its next time input (its pacer takes a snapshot of the
            // queues then), so polling it now would only return `Timeout(now)`. Arm the
            // subscriber's timer instead: the timeout pass releases (`handle_written_rtp`, or
            // a full time input when the `Rtc`'s own timers are due) and drains once for all
            // packets written to it by this batch of input — one poll cycle per subscriber per
            // batch instead of one per packet.
            sp.written_at = Some(now);
            // Only the first packet of a turn for this subscriber needs the heap entry.
            if sp.scheduled.is_none_or(|s| s > now) {
                self.schedule(sub);
            }
        }
    }

    /// Ask the publisher of track `ti` for a keyframe of `layer`, at most once per
    /// `keyframe_interval` per layer. A request inside the interval is sent when it ends if
    /// `defer` (a subscriber that cannot decode), dropped otherwise (the caller asks again).
    pub(super) fn request_keyframe(
        &mut self,
        ti: TrackInIdx,
        layer: u8,
        now: Instant,
        defer: bool,
    ) {
        let Some(tin) = self.tracks_in.get_mut(ti.0) else {
            return;
        };
        if tin.kind != MediaKind::Video {
            return;
        }
        let (publisher, mid, simulcast) = (tin.publisher, tin.mid, tin.simulcast());
        let Some(l) = tin.layers.get_mut(usize::from(layer)) else {
            return;
        };
        if let Some(last) = l.last_keyframe_request
            && now < last + self.cfg.keyframe_interval
        {
            if defer {
                l.keyframe_pending = true;
                self.schedule(publisher);
            }
            return;
        }
        l.keyframe_pending = false;
        l.last_keyframe_request = Some(now);
        if simulcast {
            l.keyframe_requested(now);
        }
        let rid = l.rid;
        let Some(p) = self.participants.get_mut(publisher.0) else {
            return;
        };
        if let Some(rx) = p.rtc.direct_api().stream_rx_by_mid(mid, rid) {
            rx.request_keyframe(KeyframeRequestKind::Pli);
            self.counters.keyframe_requests += 1;
            trace!(publisher = %p.id, %mid, ?rid, "keyframe request");
        }
        self.drain(publisher, now);
    }

    pub(super) fn participant_connected(&mut self, idx: ParticipantIdx) {
        let Some(p) = self.participants.get(idx.0) else {
            return;
        };
        for to in &p.tracks_out {
            if let Some(t) = self.tracks_out.get_mut(to.0)
                && t.wants_keyframe
            {
                t.wants_keyframe = false;
                if let Some(ti) = t.source {
                    if self.tracks_in.get(ti.0).is_some_and(|t| t.simulcast()) {
                        // The allocation picks its layer and asks for that layer's keyframe.
                        self.work.push_back(Work::Allocate(idx));
                    } else {
                        self.work.push_back(Work::Keyframe(ti, 0));
                    }
                }
            }
        }
    }
}

/// The codec of a publisher payload type (cached on the track).
fn codec_of(tin: &mut TrackIn, participants: &Slab<Participant>, pt: Pt) -> Option<Codec> {
    if let Some((_, c)) = tin.codecs.iter().find(|(p, _)| *p == pt) {
        return *c;
    }
    let codec = participants
        .get(tin.publisher.0)?
        .rtc
        .codec_config()
        .find(|p| p.pt() == pt)
        .map(|p| p.spec().codec);
    if tin.codecs.len() < 16 {
        tin.codecs.push((pt, codec));
    }
    codec
}

/// The descriptor patch writing `pid` / `tl0` (a 7-bit picture id field keeps 7 bits).
fn vp8_patch(d: &Vp8Descriptor, pid: Option<u16>, tl0: Option<u8>) -> Option<Vp8Patch> {
    let build = |pid: Option<u16>| {
        let mut b = d.patch();
        if let Some(p) = pid {
            b = b.picture_id(p);
        }
        if let Some(t) = tl0 {
            b = b.tl0_pic_idx(t);
        }
        b.build()
    };
    build(pid).or_else(|_| build(pid.map(|p| p & 0x7f))).ok()
}
