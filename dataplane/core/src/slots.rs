//! Fixed receive slots (WHEP): a viewer that cannot renegotiate offers recvonly m-sections up
//! front, and the core fills them with the room's published tracks (or one participant's)
//! instead of adding m-lines in server offers. A slot takes a track of its kind that no other
//! slot of the viewer carries, in publish order; when its publisher leaves the slot is emptied
//! and refilled from the room's other tracks, with the munger continuing the stream (sequence
//! numbers and timestamps) and a keyframe request for the new source.

use std::time::Instant;

use str0m::media::{MediaKind, Mid};

use super::munger::{RtpMunger, Vp8Munger};
use super::track::{OutState, TrackOut};
use super::{ParticipantIdx, TrackInIdx, TrackOutIdx, WorkerCore};
use crate::messages::ParticipantId;

/// A viewer's slots: the recvonly m-sections of its offer and whose tracks may fill them.
#[derive(Debug, Clone)]
pub struct Slots {
    /// Only this participant's tracks (`None`: anyone's in the room).
    pub from: Option<ParticipantId>,
    pub mids: Vec<(Mid, MediaKind)>,
    /// The stream state of emptied slots (by mid), so the next source continues the same
    /// outgoing stream (sequence numbers, timestamps, VP8 picture ids) instead of restarting it.
    pub carry: Vec<(Mid, RtpMunger, Vp8Munger, Option<Instant>)>,
}

impl Slots {
    pub fn new(from: Option<ParticipantId>, mids: Vec<(Mid, MediaKind)>) -> Self {
        Self {
            from,
            mids,
            carry: Vec::new(),
        }
    }
}

/// The m-sections of `sdp` the client only receives on (`a=recvonly`), with their kind. Sections
/// without a mid or of another kind (data) are left out.
pub fn recvonly_sections(sdp: &str) -> Vec<(Mid, MediaKind)> {
    let mut out = Vec::new();
    let mut section: Option<(Option<MediaKind>, Option<String>, bool)> = None;
    let close = |s: Option<(Option<MediaKind>, Option<String>, bool)>,
                 out: &mut Vec<(Mid, MediaKind)>| {
        if let Some((Some(kind), Some(mid), true)) = s {
            out.push((Mid::from(mid.as_str()), kind));
        }
    };
    for line in sdp.lines() {
        let line = line.trim_end();
        if let Some(m) = line.strip_prefix("m=") {
            close(section.take(), &mut out);
            let kind = match m.split_whitespace().next() {
                Some("audio") => Some(MediaKind::Audio),
                Some("video") => Some(MediaKind::Video),
                _ => None,
            };
            section = Some((kind, None, false));
        } else if let Some(s) = &mut section {
            if let Some(mid) = line.strip_prefix("a=mid:") {
                // str0m's mids are at most 16 bytes; a longer one would not match anyway.
                s.1 = Some(mid.chars().take(16).collect());
            } else if line == "a=recvonly" {
                s.2 = true;
            }
        }
    }
    close(section, &mut out);
    out
}

impl WorkerCore {
    /// Put `ti` into a free slot of viewer `sub` (if its publisher may fill it and a slot of
    /// its kind is free). The answer already agreed the m-line: the track opens at once.
    pub(super) fn fill_slot(&mut self, sub: ParticipantIdx, ti: TrackInIdx) {
        let Some(tin) = self.tracks_in.get(ti.0) else {
            return;
        };
        let (kind, publisher) = (tin.kind, tin.publisher);
        let Some(publisher_id) = self.participants.get(publisher.0).map(|p| p.id.clone()) else {
            return;
        };
        let Some(p) = self.participants.get(sub.0) else {
            return;
        };
        let Some(slots) = &p.slots else {
            return;
        };
        if slots.from.as_ref().is_some_and(|f| *f != publisher_id) {
            return;
        }
        let taken: Vec<Mid> = p
            .tracks_out
            .iter()
            .filter_map(|to| self.tracks_out.get(to.0))
            .filter_map(|t| t.mid())
            .collect();
        let carried = p
            .tracks_out
            .iter()
            .filter_map(|to| self.tracks_out.get(to.0))
            .any(|t| t.source == Some(ti));
        if carried {
            return;
        }
        let Some(mid) = slots
            .mids
            .iter()
            .find(|(m, k)| *k == kind && !taken.contains(m))
            .map(|(m, _)| *m)
        else {
            return;
        };
        let connected = p.connected;
        let mut t = TrackOut::new(sub, ti, publisher_id, kind);
        t.state = OutState::Negotiating(mid);
        if let Some(p) = self.participants.get_mut(sub.0)
            && let Some(slots) = &mut p.slots
            && let Some(i) = slots.carry.iter().position(|c| c.0 == mid)
        {
            let (_, munger, vp8, last) = slots.carry.swap_remove(i);
            t.munger = munger;
            t.vp8 = vp8;
            t.last_arrival = last;
            // The new publisher's packets start a new source: continue at last + 1.
            t.munger.rebase();
            t.vp8.rebase();
        }
        let to = TrackOutIdx(self.tracks_out.insert(t));
        if let Some(tin) = self.tracks_in.get_mut(ti.0) {
            tin.subscribers.push(to);
        }
        if let Some(p) = self.participants.get_mut(sub.0) {
            p.tracks_out.push(to);
        }
        self.finish_negotiation(to, connected);
    }

    /// A viewer's slot lost its source (the publisher left): free it and refill the viewer's
    /// free slots from the room's tracks.
    pub(super) fn empty_slot(&mut self, to: TrackOutIdx) {
        let Some(t) = self.tracks_out.get(to.0) else {
            return;
        };
        let sub = t.subscriber;
        let carried = t
            .mid()
            .map(|mid| (mid, t.munger.clone(), t.vp8.clone(), t.last_arrival));
        if let Some(c) = carried
            && let Some(slots) = self
                .participants
                .get_mut(sub.0)
                .and_then(|p| p.slots.as_mut())
        {
            slots.carry.retain(|x| x.0 != c.0);
            slots.carry.push(c);
        }
        self.drop_track_out(to);
        self.refill_slots(sub);
    }

    /// Offer every published track of the viewer's room to its free slots, in publish order.
    pub(super) fn refill_slots(&mut self, sub: ParticipantIdx) {
        let Some(room) = self.participants.get(sub.0).map(|p| p.room.clone()) else {
            return;
        };
        let members = self
            .rooms
            .get(&room)
            .map(|r| r.participants.clone())
            .unwrap_or_default();
        let tracks: Vec<TrackInIdx> = members
            .iter()
            .filter(|m| **m != sub)
            .filter_map(|m| self.participants.get(m.0))
            .flat_map(|p| p.tracks_in.iter().map(|(_, t)| *t))
            .collect();
        for ti in tracks {
            self.fill_slot(sub, ti);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_recvonly_media_sections() {
        let sdp = "v=0\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=recvonly\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=recvonly\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=sendonly\r\n\
            m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:3\r\na=recvonly\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=recvonly\r\n";
        assert_eq!(
            recvonly_sections(sdp),
            vec![
                (Mid::from("0"), MediaKind::Audio),
                (Mid::from("1"), MediaKind::Video)
            ]
        );
        assert!(recvonly_sections("garbage\nm=\na=mid:\n").is_empty());
    }
}
