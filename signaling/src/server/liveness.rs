//! Which media nodes are alive, as seen from this instance, and what happens to the sessions of
//! one that is not: failure needs corroborated evidence (see [`Liveness::check`], pure and
//! table-tested below); a node that restarted under the same id is noticed by its new
//! incarnation.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::Server;
use crate::cluster::Job;
use crate::router::ConnId;

/// Single-node mode: the local dataplane's control link down this long means it failed.
const NODE_DEAD_AFTER: Duration = Duration::from_millis(1500);
/// Our own dataplane's socket closed and connects are refused for this long: it is gone.
const LOCAL_DEAD_AFTER: Duration = Duration::from_millis(500);
/// Cluster mode: a node whose beacons stopped this long is suspect; it is declared failed only
/// if the registry also has no fresh heartbeat from it (a busy machine delays beacons, it does
/// not stop its heartbeats for the registry's 5 s).
const NODE_SUSPECT_AFTER: Duration = Duration::from_secs(3);

/// Liveness of media nodes as seen from here.
#[derive(Default)]
pub(super) struct Liveness {
    /// Last beacon per dataplane node.
    pub(super) seen: HashMap<String, Instant>,
    /// The Redis subscription came up at (None: down).
    pub(super) subscribed_since: Option<Instant>,
    /// Last beacon of anyone (proof the subscription delivers).
    pub(super) last_any: Option<Instant>,
    /// Nodes already declared failed (and when), so each failure is handled once.
    pub(super) failed: HashMap<String, Instant>,
    pub(super) next_check: Option<Instant>,
    /// Nodes another signaling instance saw gone from its host (`NodeDown`), and when.
    pub(super) witnessed_down: HashMap<String, Instant>,
    /// The registry's verdict on suspect nodes (fresh heartbeat or not), and when it came.
    pub(super) registry_says: HashMap<String, (Instant, bool)>,
    /// When we last asked the registry about a suspect node.
    pub(super) asked: HashMap<String, Instant>,
    /// We announced our own dataplane gone.
    pub(super) announced_down: bool,
    /// The incarnation each dataplane last reported (beacons, `welcome`, `joined`, `attached`).
    pub(super) incarnations: HashMap<String, String>,
    /// Incarnations that were replaced, per node (the last [`RETIRED_KEPT`]): a late report from
    /// one of them (a beacon or answer still in flight over Redis) is stale, not a restart.
    pub(super) retired: HashMap<String, VecDeque<String>>,
}

/// Replaced incarnations remembered per node.
const RETIRED_KEPT: usize = 8;
/// A node nobody here uses any more and declared failed this long ago is forgotten.
const FORGET_FAILED_AFTER: Duration = Duration::from_secs(60);

/// Nodes are checked at most this often.
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// What this instance knows of its own dataplane's control link, for [`Liveness::check`].
#[derive(Debug, Clone, Copy)]
pub(super) struct LocalLink<'a> {
    /// The local node, once it said who it is.
    pub(super) node: Option<&'a str>,
    /// The control socket is up (its handshake is done).
    pub(super) ready: bool,
    /// Since when the connection has been down.
    pub(super) down_since: Option<Instant>,
    /// Since when connects are refused (nothing listens on the socket) after we had a node.
    pub(super) refused_since: Option<Instant>,
}

/// What a [`Liveness::check`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Verdict {
    /// Tell the other instances that our own dataplane is gone (`NodeDown`); once.
    pub(super) announce_down: Option<String>,
    /// Ask the registry whether these suspect nodes still have a fresh heartbeat.
    pub(super) check_alive: Vec<String>,
    /// Nodes declared failed now (each once until it is back): mark them dead in the registry
    /// and close their rooms for our clients.
    pub(super) failed: Vec<String>,
}

impl Liveness {
    fn is_retired(&self, node: &str, incarnation: &str) -> bool {
        self.retired
            .get(node)
            .is_some_and(|r| r.iter().any(|i| i == incarnation))
    }

    /// Which nodes are gone at `now`. Closing every room of a node is the most drastic thing
    /// the cluster does, so it takes evidence that survives a busy machine:
    /// - our own dataplane: its control socket closed and nothing listens there any more
    ///   ([`LOCAL_DEAD_AFTER`]); in cluster mode we tell the other instances (`NodeDown`);
    ///   in single-node mode, its link down for [`NODE_DEAD_AFTER`] is enough;
    /// - a remote node: another instance saw it gone that way and its beacons stopped too; or
    ///   its beacons stopped for [`NODE_SUSPECT_AFTER`] *and* the registry holds no fresh
    ///   heartbeat from it (5 s) — silence alone is not enough. Only the nodes our sessions use
    ///   (`nodes_in_use`, called only when needed) are watched.
    pub(super) fn check(
        &mut self,
        now: Instant,
        local: LocalLink<'_>,
        cluster: bool,
        nodes_in_use: impl FnOnce(&Self) -> BTreeSet<String>,
    ) -> Verdict {
        let mut verdict = Verdict::default();
        if self.next_check.is_some_and(|t| now < t) {
            return verdict;
        }
        self.next_check = Some(now + CHECK_EVERY);
        let mut dead: BTreeSet<String> = BTreeSet::new();
        if let (Some(node), Some(since)) = (local.node, local.refused_since)
            && !local.ready
            && now.duration_since(since) > LOCAL_DEAD_AFTER
        {
            dead.insert(node.to_string());
            if cluster && !self.announced_down {
                self.announced_down = true;
                verdict.announce_down = Some(node.to_string());
            }
        }
        if cluster {
            // Silence only means something while the subscription demonstrably delivers, and
            // counts from when it came up at the earliest.
            let hearing = self.subscribed_since.is_some()
                && self
                    .last_any
                    .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1));
            if hearing {
                let since = self.subscribed_since.unwrap_or(now);
                let nodes = nodes_in_use(self);
                // Forget what concerns nodes nobody here uses any more.
                self.asked.retain(|n, _| nodes.contains(n));
                self.registry_says.retain(|n, _| nodes.contains(n));
                self.failed.retain(|n, t| {
                    nodes.contains(n) || now.duration_since(*t) < FORGET_FAILED_AFTER
                });
                self.witnessed_down.retain(|n, t| {
                    nodes.contains(n) || now.duration_since(*t) < FORGET_FAILED_AFTER
                });
                for node in nodes {
                    let last = self.seen.get(&node).copied().unwrap_or(since).max(since);
                    let silent = now.duration_since(last);
                    if self.witnessed_down.contains_key(&node) && silent > LOCAL_DEAD_AFTER {
                        dead.insert(node);
                    } else if silent > NODE_SUSPECT_AFTER {
                        match self.registry_says.get(&node) {
                            Some((t, false)) if now.duration_since(*t) < Duration::from_secs(2) => {
                                dead.insert(node);
                            }
                            _ => {
                                let due = self.asked.get(&node).is_none_or(|t| {
                                    now.duration_since(*t) > Duration::from_secs(1)
                                });
                                if due {
                                    self.asked.insert(node.clone(), now);
                                    verdict.check_alive.push(node);
                                }
                            }
                        }
                    }
                }
            }
        } else if let (Some(node), Some(down)) = (local.node, local.down_since)
            && now.duration_since(down) > NODE_DEAD_AFTER
        {
            dead.insert(node.to_string());
        }
        for node in dead {
            if self.failed.contains_key(&node) {
                continue;
            }
            self.failed.insert(node.clone(), now);
            verdict.failed.push(node);
        }
        verdict
    }
}

impl Server {
    /// A beacon on the health channel.
    pub(super) fn handle_beacon(&mut self, b: control::Beacon) {
        let now = Instant::now();
        self.live.last_any = Some(now);
        match b.kind {
            control::BeaconKind::Dataplane => {
                if let Some(inc) = &b.incarnation {
                    self.node_incarnation(&b.id, inc);
                }
                self.live.seen.insert(b.id.clone(), now);
                self.live.failed.remove(&b.id);
                self.live.witnessed_down.remove(&b.id);
                self.live.registry_says.remove(&b.id);
            }
            control::BeaconKind::NodeDown => {
                info!(node = %b.id, "another signaling instance saw this media node gone");
                self.live.witnessed_down.insert(b.id, now);
            }
            control::BeaconKind::Signaling => {}
        }
    }

    /// Declare failed the nodes that are gone ([`Liveness::check`]), and close their rooms for
    /// their clients.
    pub(super) fn check_nodes(&mut self, now: Instant) {
        let local = LocalLink {
            node: self.local_node.as_deref(),
            ready: self.control.ready,
            down_since: self.control.down_since,
            refused_since: self.control.refused_since,
        };
        let conns = &self.conns;
        let verdict = self.live.check(now, local, self.cluster.is_some(), |live| {
            let mut nodes = BTreeSet::new();
            for (_, c) in conns.iter() {
                if let Some(session) = c.state.session()
                    && let Some(node) = session.node()
                    // A resume names its node in the client's (unsigned) token: only nodes
                    // we have heard of are watched, so made-up names cost nothing.
                    && (!session.is_resuming() || live.seen.contains_key(node))
                {
                    nodes.insert(node.to_string());
                }
            }
            nodes
        });
        if let Some(c) = &self.cluster {
            if let Some(node) = verdict.announce_down {
                c.send(Job::NodeDown { node });
            }
            for node in verdict.check_alive {
                c.send(Job::CheckAlive { node });
            }
        }
        for node in verdict.failed {
            warn!(%node, "media node failed: closing its rooms for our clients");
            if let Some(c) = &self.cluster {
                c.send(Job::MarkDead { node: node.clone() });
            }
            self.node_failed(&node);
        }
    }

    /// `node` runs as `incarnation`. If that is new, the process restarted under the same id:
    /// sessions an earlier incarnation confirmed are gone, their rooms are closed for their
    /// clients (who join again).
    /// A report from a retired incarnation is stale and ignored.
    pub(super) fn node_incarnation(&mut self, node: &str, incarnation: &str) {
        if incarnation.is_empty() || self.live.is_retired(node, incarnation) {
            return;
        }
        let previous = self
            .live
            .incarnations
            .insert(node.to_string(), incarnation.to_string());
        if previous.as_deref() == Some(incarnation) {
            return;
        }
        // The node is back: evidence against the old process says nothing about this one.
        self.live.witnessed_down.remove(node);
        self.live.registry_says.remove(node);
        self.live.failed.remove(node);
        self.live.seen.insert(node.to_string(), Instant::now());
        if let Some(old) = previous {
            let r = self.live.retired.entry(node.to_string()).or_default();
            r.push_back(old);
            if r.len() > RETIRED_KEPT {
                r.pop_front();
            }
        }
        let ids: Vec<ConnId> = self.conns.iter().map(|(i, _)| i).collect();
        let mut closed = 0;
        for id in ids {
            let actions = match self.conns.get_mut(id).and_then(|c| c.state.session_mut()) {
                Some(session) => session.handle_node_restarted(node, incarnation),
                None => continue,
            };
            closed += usize::from(!actions.is_empty());
            self.apply(id, actions);
        }
        if closed > 0 {
            warn!(%node, closed, "media node restarted: closing the rooms of its lost sessions");
        }
    }

    /// A `joined`/`attached` for `conn` named the node's incarnation. A newer one means the node
    /// restarted (other sessions on the old one are closed); a retired one means this answer
    /// came from the old process, and this session is closed at once (nothing else would).
    pub(super) fn confirmed_incarnation(&mut self, conn: ConnId, node: &str, incarnation: &str) {
        if !self.live.is_retired(node, incarnation) {
            self.node_incarnation(node, incarnation);
            return;
        }
        let Some(current) = self.live.incarnations.get(node).cloned() else {
            return;
        };
        warn!(%node, %incarnation, "answer from a replaced incarnation: closing that session");
        let actions = match self.conns.get_mut(conn).and_then(|c| c.state.session_mut()) {
            Some(session) => session.handle_node_restarted(node, &current),
            None => return,
        };
        self.apply(conn, actions);
    }

    /// Close the rooms of a failed node for our clients and fail what is pending there.
    pub(super) fn node_failed(&mut self, node: &str) {
        let ids: Vec<ConnId> = self.conns.iter().map(|(i, _)| i).collect();
        for id in ids {
            let actions = match self.conns.get_mut(id).and_then(|c| c.state.session_mut()) {
                Some(session) => session.handle_node_failed(node),
                None => continue,
            };
            self.apply(id, actions);
        }
        for p in self.pending.take_where(|p| p.node == node) {
            self.fail_request(p, "the media node failed");
        }
    }
}

#[cfg(test)]
mod tests;
