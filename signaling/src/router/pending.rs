//! Control requests waiting for their answer ([`Pending`]), by request id, and the joins that
//! timed out here but may still land on their node (their late `joined` is undone). Pure: time
//! comes in as an argument.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use control::Request;

use super::ConnId;

/// A control request waiting for its response.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingRequest {
    /// The connection whose session made it; `None` once that connection is gone (the answer
    /// then only triggers clean-up, e.g. a `leave` for a join that landed too late).
    pub conn: Option<ConnId>,
    /// The node it was sent to.
    pub node: String,
    pub request: Request,
    pub sent: Instant,
    /// It went over this instance's own control socket (not Redis).
    pub local: bool,
}

/// How long a join that timed out is remembered, so that its late answer can be undone.
const LATE_JOIN_MEMORY: Duration = Duration::from_secs(300);
/// At most this many timed-out joins are remembered (the oldest are forgotten first).
const MAX_LATE_JOINS: usize = 10_000;

/// A join that timed out here but may still succeed on its node: (when, node, participant).
type LateJoin = (Instant, String, String);

/// Control requests in flight, by request id.
#[derive(Debug)]
pub struct Pending {
    requests: HashMap<u64, PendingRequest>,
    next_id: u64,
    /// Joins that timed out, by request id: a `joined` that still arrives must be undone (nobody
    /// will use that participant, and the node would keep it as ours).
    late_joins: HashMap<u64, LateJoin>,
}

impl Default for Pending {
    fn default() -> Self {
        Self {
            requests: HashMap::new(),
            next_id: 1,
            late_joins: HashMap::new(),
        }
    }
}

impl Pending {
    /// A fresh id (also used for placement tickets, so ids never collide).
    pub fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    pub fn insert(&mut self, id: u64, p: PendingRequest) {
        self.requests.insert(id, p);
    }

    /// The request answered by a response with this id.
    pub fn take(&mut self, id: u64) -> Option<PendingRequest> {
        self.requests.remove(&id)
    }

    /// `conn` is gone: its requests stay pending (their answers still need handling) but have
    /// no connection to deliver to.
    pub fn detach(&mut self, conn: ConnId) {
        for p in self.requests.values_mut() {
            if p.conn == Some(conn) {
                p.conn = None;
            }
        }
    }

    /// Remove and return the requests matching `f`, oldest first.
    pub fn take_where(&mut self, f: impl Fn(&PendingRequest) -> bool) -> Vec<PendingRequest> {
        let mut ids: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, p)| f(p))
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids.into_iter()
            .filter_map(|id| self.requests.remove(&id))
            .collect()
    }

    /// Remove and return the requests older than `timeout` at `now`. Joins among them are
    /// remembered for a while (see [`Self::take_late_join`]).
    pub fn expired(&mut self, now: Instant, timeout: Duration) -> Vec<PendingRequest> {
        self.late_joins
            .retain(|_, (t, _, _)| now.saturating_duration_since(*t) < LATE_JOIN_MEMORY);
        let ids: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.sent) > timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            if let Some(PendingRequest {
                node,
                request: Request::Join { participant, .. },
                ..
            }) = self.requests.get(id)
            {
                if self.late_joins.len() >= MAX_LATE_JOINS
                    && let Some(oldest) = self.late_joins.iter().min_by_key(|(_, v)| v.0)
                {
                    let oldest = *oldest.0;
                    self.late_joins.remove(&oldest);
                }
                self.late_joins
                    .insert(*id, (now, node.clone(), participant.clone()));
            }
        }
        self.take_where(|p| now.saturating_duration_since(p.sent) > timeout)
    }

    /// A response for `id` came after its request timed out: if it was a join, its node and
    /// participant (to be told to leave).
    pub fn take_late_join(&mut self, id: u64) -> Option<(String, String)> {
        self.late_joins.remove(&id).map(|(_, n, p)| (n, p))
    }

    pub fn len(&self) -> usize {
        self.requests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(conn: Option<ConnId>, node: &str, sent: Instant, local: bool) -> PendingRequest {
        PendingRequest {
            conn,
            node: node.into(),
            request: Request::Stats,
            sent,
            local,
        }
    }

    #[test]
    fn pending_requests_expire_detach_and_fail_by_node() {
        let t0 = Instant::now();
        let mut p = Pending::default();
        let ids: Vec<u64> = (0..4).map(|_| p.next_id()).collect();
        assert_eq!(ids, [1, 2, 3, 4]);
        p.insert(1, req(Some(10), "a", t0, true));
        p.insert(2, req(Some(11), "b", t0 + Duration::from_secs(5), false));
        p.insert(3, req(Some(10), "a", t0 + Duration::from_secs(9), false));
        p.detach(10);
        assert_eq!(p.take(1).map(|r| r.conn), Some(None));
        assert_eq!(p.take(1), None, "answered once");
        p.insert(1, req(Some(12), "a", t0, true));
        // Requests sent over the lost local link, and nothing else.
        let lost = p.take_where(|r| r.local && r.node == "a");
        assert_eq!(lost.iter().map(|r| r.conn).collect::<Vec<_>>(), [Some(12)]);
        let late = p.expired(t0 + Duration::from_secs(16), Duration::from_secs(10));
        assert_eq!(late.len(), 1, "only the one sent at 5 s is over 10 s old");
        assert_eq!(late[0].node, "b");
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn a_join_that_timed_out_is_remembered_so_its_late_answer_can_be_undone() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(10);
        let mut p = Pending::default();
        p.insert(5, join_req("p7", t0));
        p.insert(6, req(Some(1), "n1", t0, false));
        assert_eq!(p.expired(t0 + Duration::from_secs(11), timeout).len(), 2);
        assert_eq!(p.take_late_join(6), None, "only joins are remembered");
        assert_eq!(p.take_late_join(5), Some(("n1".into(), "p7".into())));
        assert_eq!(p.take_late_join(5), None, "undone once");
        // Remembered for a while only.
        p.insert(8, join_req("p8", t0));
        p.expired(t0 + Duration::from_secs(11), timeout);
        p.expired(t0 + LATE_JOIN_MEMORY + Duration::from_secs(12), timeout);
        assert_eq!(p.take_late_join(8), None);
    }

    fn join_req(participant: &str, sent: Instant) -> PendingRequest {
        PendingRequest {
            request: Request::Join {
                room: "r".into(),
                participant: participant.into(),
                name: "n".into(),
                offer: None,
                epoch: None,
                grants: control::Grants::default(),
                identity: None,
                viewer: None,
            },
            ..req(Some(1), "n1", sent, false)
        }
    }
}
