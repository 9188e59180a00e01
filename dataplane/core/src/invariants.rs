//! Internal consistency checks of [`WorkerCore`]'s tables, for tests, the property test and
//! fuzzing (`WorkerCore::invariant_violations`). Not used on any hot path.

use super::track::OutState;
use super::{ParticipantIdx, TrackInIdx, TrackOutIdx, WorkerCore};

impl WorkerCore {
    /// Internal consistency of the core's tables, for tests and property checks: every track
    /// out belongs to a live subscriber and (while it has one) to the live track in it is
    /// subscribed to, and vice versa; rooms, ids and published tracks point at live
    /// participants; nobody subscribes to their own track. Empty when all holds.
    #[doc(hidden)]
    pub fn invariant_violations(&self) -> Vec<String> {
        let mut v = Vec::new();
        for (i, t) in self.tracks_out.iter() {
            let to = TrackOutIdx(i);
            match self.participants.get(t.subscriber.0) {
                Some(p) if p.tracks_out.contains(&to) => {}
                _ => v.push(format!("track out {i} has no live subscriber listing it")),
            }
            if let Some(ti) = t.source {
                match self.tracks_in.get(ti.0) {
                    Some(tin) if tin.subscribers.contains(&to) => {
                        if tin.publisher == t.subscriber {
                            v.push(format!("track out {i} forwards a participant's own track"));
                        }
                    }
                    _ => v.push(format!("track out {i} has a dead or unlinked source")),
                }
            } else if matches!(t.state, OutState::Open(_) | OutState::ToOpen) {
                v.push(format!("track out {i} is {:?} without a source", t.state));
            }
        }
        for (i, t) in self.tracks_in.iter() {
            match self.participants.get(t.publisher.0) {
                Some(p) if p.tracks_in.iter().any(|(_, x)| x.0 == i) => {}
                _ => v.push(format!("track in {i} has no live publisher listing it")),
            }
            for to in &t.subscribers {
                if self.tracks_out.get(to.0).and_then(|o| o.source) != Some(TrackInIdx(i)) {
                    v.push(format!("track in {i} lists a track out not fed by it"));
                }
            }
        }
        for (i, p) in self.participants.iter() {
            if self.by_id.get(&p.id) != Some(&ParticipantIdx(i)) {
                v.push(format!("participant {} is not indexed by id", p.id));
            }
            if !self
                .rooms
                .get(&p.room)
                .is_some_and(|r| r.participants.contains(&ParticipantIdx(i)))
            {
                v.push(format!("participant {} is not in its room", p.id));
            }
        }
        if self.by_id.len() != self.participants.len() {
            v.push("the id index has stale entries".into());
        }
        for (name, r) in &self.rooms {
            if r.participants.is_empty() {
                v.push(format!("room {name} is empty but kept"));
            }
            for idx in &r.participants {
                if self.participants.get(idx.0).is_none_or(|p| &p.room != name) {
                    v.push(format!("room {name} lists a participant not in it"));
                }
            }
        }
        v
    }
}
