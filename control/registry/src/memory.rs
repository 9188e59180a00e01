//! The in-memory [`Registry`] for a single node without Redis ([`MemoryRegistry`]): the same
//! contract as the Redis one, in one process, on an injected [`Clock`] (the real one in the
//! binaries, a [`ManualClock`](crate::ManualClock) in tests).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{
    Clock, NodeInfo, NodeState, Placement, Registry, RegistryError, RegistryTiming, SystemClock,
};

fn score(n: &NodeInfo, rooms: usize) -> u64 {
    u64::from(n.load.participants) + rooms as u64
}

#[derive(Debug, Default)]
struct MemoryInner {
    /// Node id → (last heartbeat, `None` once marked dead; its description).
    nodes: BTreeMap<String, (Option<Instant>, NodeInfo)>,
    node_rooms: HashMap<String, BTreeSet<String>>,
    rooms: HashMap<String, Placement>,
    epoch: u64,
}

/// In-process registry for a single node without Redis. Clones share state (and the clock).
#[derive(Debug, Clone)]
pub struct MemoryRegistry {
    inner: Arc<Mutex<MemoryInner>>,
    timing: RegistryTiming,
    clock: Arc<dyn Clock>,
}

impl Default for MemoryRegistry {
    fn default() -> Self {
        Self::new(RegistryTiming::default())
    }
}

impl MemoryRegistry {
    /// A registry on the real clock.
    pub fn new(timing: RegistryTiming) -> Self {
        Self::with_clock(timing, Arc::new(SystemClock))
    }

    /// A registry that reads the time from `clock` (tests: a [`ManualClock`]).
    pub fn with_clock(timing: RegistryTiming, clock: Arc<dyn Clock>) -> Self {
        Self {
            inner: Arc::default(),
            timing,
            clock,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that matters.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A node whose last heartbeat is `t` is alive at `now`.
fn fresh(t: Option<Instant>, now: Instant, dead_after: Duration) -> bool {
    t.is_some_and(|t| now.saturating_duration_since(t) <= dead_after)
}

impl MemoryInner {
    fn alive(&self, id: &str, now: Instant, dead_after: Duration) -> bool {
        self.nodes
            .get(id)
            .is_some_and(|(t, _)| fresh(*t, now, dead_after))
    }

    fn forget_node(&mut self, id: &str) {
        self.nodes.remove(id);
        for room in self.node_rooms.remove(id).unwrap_or_default() {
            if self.rooms.get(&room).is_some_and(|p| p.node == id) {
                self.rooms.remove(&room);
            }
        }
    }
}

impl Registry for MemoryRegistry {
    fn heartbeat(&mut self, node: &NodeInfo) -> Result<bool, RegistryError> {
        self.lock()
            .nodes
            .insert(node.node_id.clone(), (Some(self.clock.now()), node.clone()));
        // Memory cannot be lost while this process lives.
        Ok(false)
    }

    fn reassert(
        &mut self,
        node_id: &str,
        rooms: &[(String, u64)],
    ) -> Result<Vec<String>, RegistryError> {
        let mut g = self.lock();
        let mut lost = Vec::new();
        for (room, epoch) in rooms {
            let mine = Placement {
                node: node_id.to_string(),
                epoch: *epoch,
            };
            match g.rooms.get(room).cloned() {
                Some(p) if p.node != node_id && p.epoch >= *epoch => {
                    lost.push(room.clone());
                    continue;
                }
                Some(p) if p.node == node_id => {}
                Some(p) => {
                    if let Some(set) = g.node_rooms.get_mut(&p.node) {
                        set.remove(room);
                    }
                    g.rooms.insert(room.clone(), mine);
                }
                None => {
                    g.rooms.insert(room.clone(), mine);
                }
            }
            g.node_rooms
                .entry(node_id.to_string())
                .or_default()
                .insert(room.clone());
            g.epoch = g.epoch.max(*epoch);
        }
        Ok(lost)
    }

    fn deregister(&mut self, node_id: &str) -> Result<(), RegistryError> {
        self.lock().forget_node(node_id);
        Ok(())
    }

    fn nodes(&mut self) -> Result<Vec<NodeInfo>, RegistryError> {
        let now = self.clock.now();
        let g = self.lock();
        Ok(g.nodes
            .values()
            .filter(|(t, _)| fresh(*t, now, self.timing.dead_after))
            .map(|(_, n)| n.clone())
            .collect())
    }

    fn place_room(&mut self, room: &str, exclude: &[String]) -> Result<Placement, RegistryError> {
        let now = self.clock.now();
        let dead_after = self.timing.dead_after;
        let mut g = self.lock();
        if let Some(p) = g.rooms.get(room).cloned() {
            if !exclude.contains(&p.node) && g.alive(&p.node, now, dead_after) {
                return Ok(p);
            }
            if let Some(set) = g.node_rooms.get_mut(&p.node) {
                set.remove(room);
            }
        }
        let best = g
            .nodes
            .iter()
            .filter(|(id, (t, n))| {
                !exclude.contains(id)
                    && fresh(*t, now, dead_after)
                    && n.state == NodeState::Serving
                    && (n.capacity_rooms == 0
                        || g.node_rooms.get(*id).map_or(0, BTreeSet::len)
                            < n.capacity_rooms as usize)
            })
            .min_by_key(|(id, (_, n))| {
                (
                    score(n, g.node_rooms.get(*id).map_or(0, BTreeSet::len)),
                    (*id).clone(),
                )
            })
            .map(|(id, _)| id.clone())
            .ok_or(RegistryError::NoNodes)?;
        g.epoch += 1;
        let p = Placement {
            node: best.clone(),
            epoch: g.epoch,
        };
        g.rooms.insert(room.to_string(), p.clone());
        g.node_rooms
            .entry(best)
            .or_default()
            .insert(room.to_string());
        Ok(p)
    }

    fn room_owners(&mut self, rooms: &[String]) -> Result<Vec<Option<Placement>>, RegistryError> {
        let g = self.lock();
        Ok(rooms.iter().map(|r| g.rooms.get(r).cloned()).collect())
    }

    fn release_room(&mut self, room: &str, placement: &Placement) -> Result<bool, RegistryError> {
        let mut g = self.lock();
        if g.rooms.get(room) != Some(placement) {
            return Ok(false);
        }
        g.rooms.remove(room);
        if let Some(set) = g.node_rooms.get_mut(&placement.node) {
            set.remove(room);
        }
        Ok(true)
    }

    fn mark_dead(&mut self, node_id: &str) -> Result<(), RegistryError> {
        let mut g = self.lock();
        if let Some((t, _)) = g.nodes.get_mut(node_id) {
            // Dead until its next heartbeat, whatever the clock (a backdated time could not go
            // further back than the machine's boot).
            *t = None;
        }
        Ok(())
    }

    fn reap_dead(&mut self) -> Result<Vec<String>, RegistryError> {
        let now = self.clock.now();
        let dead_after = self.timing.dead_after;
        let mut g = self.lock();
        let dead: Vec<String> = g
            .nodes
            .iter()
            .filter(|(_, (t, _))| !fresh(*t, now, dead_after))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &dead {
            g.forget_node(id);
        }
        Ok(dead)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ManualClock, NodeLoad};

    /// The memory registry's expiry on a fake clock: alive up to dead-after inclusive, dead (not
    /// placed on, reaped with its rooms) one millisecond later; a heartbeat revives it.
    #[test]
    fn memory_nodes_expire_exactly_at_dead_after_on_a_fake_clock() {
        let clock = ManualClock::new();
        let timing = RegistryTiming {
            dead_after: Duration::from_secs(5),
        };
        let mut r = MemoryRegistry::with_clock(timing, Arc::new(clock.clone()));
        let n1 = NodeInfo {
            node_id: "n1".into(),
            media_ip: "127.0.0.1".into(),
            media_ports: vec![40000],
            capacity_rooms: 0,
            load: NodeLoad::default(),
            state: NodeState::Serving,
            version: "test".into(),
        };
        r.heartbeat(&n1).expect("hb");
        let p = r.place_room("room", &[]).expect("place");
        clock.advance(timing.dead_after);
        assert_eq!(
            r.nodes().expect("nodes"),
            vec![n1.clone()],
            "alive at dead-after"
        );
        assert_eq!(r.place_room("room", &[]), Ok(p.clone()));
        assert_eq!(r.reap_dead(), Ok(vec![]));
        clock.advance(Duration::from_millis(1));
        assert_eq!(r.nodes(), Ok(vec![]), "dead just after");
        assert_eq!(r.reap_dead(), Ok(vec!["n1".to_string()]));
        assert_eq!(r.room_owners(&["room".into()]), Ok(vec![None]));
        assert_eq!(r.place_room("room", &[]), Err(RegistryError::NoNodes));
        r.heartbeat(&n1).expect("hb");
        let again = r.place_room("room", &[]).expect("place");
        assert!(again.epoch > p.epoch, "{again:?} after {p:?}");

        // Marked dead: at once, whatever the clock (it used to backdate the heartbeat by an
        // hour, which does nothing on a machine up for less than that), until its next heartbeat.
        r.mark_dead("n1").expect("mark");
        assert_eq!(r.nodes(), Ok(vec![]), "dead once marked");
        assert_eq!(r.place_room("room", &[]), Err(RegistryError::NoNodes));
        assert_eq!(r.reap_dead(), Ok(vec!["n1".to_string()]));
        r.heartbeat(&n1).expect("hb");
        assert_eq!(r.nodes(), Ok(vec![n1]), "a heartbeat revives it");
    }
}
