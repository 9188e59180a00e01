//! Requests forwarded to a worker and not yet answered: tag → (peer, request id). A peer that
//! closes is cleared from its entries, because slab ids are reused: a late answer must never reach
//! whichever peer took the id next (it would carry a foreign request id, and a late `attached`
//! would hand the participant's events to a stranger).

use std::collections::HashMap;

use super::PeerId;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PendingKind {
    Join,
    Attach,
    Other,
}

#[derive(Debug)]
pub(super) struct Pending {
    /// `None` once the peer closed.
    pub peer: Option<PeerId>,
    pub id: u64,
    pub kind: PendingKind,
    pub participant: String,
    pub worker: u32,
}

#[derive(Default)]
pub(super) struct PendingRequests {
    map: HashMap<u64, Pending>,
    next_tag: u64,
}

impl PendingRequests {
    /// The tag the next request will carry (used only if it is queued: see [`Self::insert`]).
    pub fn next_tag(&self) -> u64 {
        self.next_tag + 1
    }

    /// Record a request sent to a worker under the tag from [`Self::next_tag`].
    pub fn insert(&mut self, p: Pending) {
        self.next_tag += 1;
        self.map.insert(self.next_tag, p);
    }

    /// The answer for `tag` arrived: its request.
    pub fn take(&mut self, tag: u64) -> Option<Pending> {
        self.map.remove(&tag)
    }

    /// `peer` closed: answers still due to it go nowhere.
    pub fn peer_closed(&mut self, peer: PeerId) {
        for p in self.map.values_mut() {
            if p.peer == Some(peer) {
                p.peer = None;
            }
        }
    }

    /// `worker` failed: every request it will never answer.
    pub fn take_worker(&mut self, worker: u32) -> Vec<Pending> {
        let tags: Vec<u64> = self
            .map
            .iter()
            .filter(|(_, p)| p.worker == worker)
            .map(|(t, _)| *t)
            .collect();
        let mut out: Vec<Pending> = tags.iter().filter_map(|t| self.map.remove(t)).collect();
        out.sort_by_key(|p| p.id);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(peer: PeerId, id: u64, worker: u32) -> Pending {
        Pending {
            peer: Some(peer),
            id,
            kind: PendingKind::Attach,
            participant: format!("p{id}"),
            worker,
        }
    }

    #[test]
    fn an_answer_for_a_closed_peer_never_reaches_the_peer_that_reuses_its_id() {
        let mut t = PendingRequests::default();
        let old = t.next_tag();
        t.insert(req(3, 7, 0));
        t.peer_closed(3);
        // A new connection gets slab id 3 again and sends its own request 7.
        let new = t.next_tag();
        t.insert(req(3, 7, 0));
        assert_ne!(old, new);
        assert_eq!(
            t.take(old).expect("pending").peer,
            None,
            "the old answer has no peer"
        );
        assert_eq!(
            t.take(new).expect("pending").peer,
            Some(3),
            "the new one still does"
        );
        assert!(t.take(old).is_none(), "each answer is taken once");
    }

    #[test]
    fn a_failed_worker_yields_only_its_own_requests() {
        let mut t = PendingRequests::default();
        for (i, w) in [0, 1, 0, 1].into_iter().enumerate() {
            t.insert(req(1, i as u64, w));
        }
        let failed = t.take_worker(1);
        assert_eq!(failed.iter().map(|p| p.id).collect::<Vec<_>>(), [1, 3]);
        assert!(t.take_worker(1).is_empty());
        assert_eq!(t.take_worker(0).len(), 2);
    }
}
