//! The control thread's routing and fencing state, pure (time is an argument): which worker hosts
//! each room and under which fencing epoch, which worker and which signaling peer each
//! participant belongs to, node capacity, and which workers are down. The control thread
//! (`control.rs`) does the I/O around it; the rules are table-tested here.
//!
//! Ownership of a participant's events moves only on confirmation (the worker verified the
//! resume key: [`Routes::attached`]); a peer that goes away orphans its participants, which are
//! removed after the resume window unless someone attaches them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A signaling peer of the control thread (its slab key).
pub type PeerId = usize;

/// Why a join was refused before reaching a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinRefused {
    Duplicate,
    /// The node holds its maximum number of participants.
    AtCapacity {
        max: u32,
    },
    /// The join carries an older fencing epoch than the room's.
    StaleEpoch,
    /// New rooms are not taken while draining.
    Draining,
    /// Every worker is down (restarting).
    NoWorker,
}

/// A room left this node; release its registry mapping if it had an epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomGone {
    pub room: String,
    pub epoch: Option<u64>,
}

/// An accepted join: the worker to send it to, and whether the room's placement (epoch) is new
/// here and must be recorded in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRoute {
    pub worker: u32,
    pub placed: Option<u64>,
}

#[derive(Debug, Clone)]
struct Route {
    worker: u32,
    room: String,
    owner: Option<PeerId>,
    /// When it lost its owner.
    orphaned_since: Option<Instant>,
}

#[derive(Debug, Clone)]
struct RoomEntry {
    worker: u32,
    members: usize,
    epoch: Option<u64>,
}

/// See the module docs.
#[derive(Debug)]
pub struct Routes {
    rooms: HashMap<String, RoomEntry>,
    routes: HashMap<String, Route>,
    /// Per worker: down (panicked, restarting).
    down: Vec<bool>,
    max_participants: u32,
}

impl Routes {
    pub fn new(workers: usize, max_participants: u32) -> Self {
        Self {
            rooms: HashMap::new(),
            routes: HashMap::new(),
            down: vec![false; workers],
            max_participants,
        }
    }

    pub fn participants(&self) -> usize {
        self.routes.len()
    }

    pub fn rooms(&self) -> usize {
        self.rooms.len()
    }

    /// Participants this node can still take.
    pub fn capacity_remaining(&self) -> u32 {
        self.max_participants
            .saturating_sub(self.routes.len() as u32)
    }

    /// The worker hosting `participant`.
    pub fn worker_of(&self, participant: &str) -> Option<u32> {
        self.routes.get(participant).map(|r| r.worker)
    }

    /// The peer that receives `participant`'s events.
    pub fn owner(&self, participant: &str) -> Option<PeerId> {
        self.routes.get(participant).and_then(|r| r.owner)
    }

    /// The worker hosting `room`.
    pub fn room_worker(&self, room: &str) -> Option<u32> {
        self.rooms.get(room).map(|r| r.worker)
    }

    /// The room's fencing epoch here.
    pub fn room_epoch(&self, room: &str) -> Option<u64> {
        self.rooms.get(room).and_then(|r| r.epoch)
    }

    /// Whether worker `w` is down.
    pub fn worker_down(&self, w: u32) -> bool {
        self.down.get(w as usize).copied().unwrap_or(true)
    }

    /// Workers that are down.
    pub fn down_workers(&self) -> Vec<u32> {
        (0..self.down.len() as u32)
            .filter(|w| self.worker_down(*w))
            .collect()
    }

    /// Reserve a slot for a join of `participant` to `room` from `peer`.
    pub fn reserve_join(
        &mut self,
        participant: &str,
        room: &str,
        epoch: Option<u64>,
        peer: PeerId,
        draining: bool,
    ) -> Result<JoinRoute, JoinRefused> {
        if self.routes.contains_key(participant) {
            return Err(JoinRefused::Duplicate);
        }
        if self.routes.len() as u64 >= u64::from(self.max_participants) {
            return Err(JoinRefused::AtCapacity {
                max: self.max_participants,
            });
        }
        let mut placed = None;
        let worker = match self.rooms.get_mut(room) {
            Some(r) => {
                if let (Some(known), Some(e)) = (r.epoch, epoch)
                    && e < known
                {
                    return Err(JoinRefused::StaleEpoch);
                }
                if let Some(e) = epoch
                    && r.epoch != Some(e)
                {
                    r.epoch = Some(e);
                    placed = Some(e);
                }
                r.worker
            }
            None => {
                if draining {
                    return Err(JoinRefused::Draining);
                }
                let worker = self.least_loaded_worker().ok_or(JoinRefused::NoWorker)?;
                self.rooms.insert(
                    room.to_string(),
                    RoomEntry {
                        worker,
                        members: 0,
                        epoch,
                    },
                );
                placed = epoch;
                worker
            }
        };
        if let Some(r) = self.rooms.get_mut(room) {
            r.members += 1;
        }
        self.routes.insert(
            participant.to_string(),
            Route {
                worker,
                room: room.to_string(),
                owner: Some(peer),
                orphaned_since: None,
            },
        );
        Ok(JoinRoute { worker, placed })
    }

    /// The worker with the fewest participants (rooms as tie-breaker), among those up.
    fn least_loaded_worker(&self) -> Option<u32> {
        let mut load = vec![(0usize, 0usize); self.down.len()];
        for r in self.rooms.values() {
            if let Some(l) = load.get_mut(r.worker as usize) {
                l.0 += r.members;
                l.1 += 1;
            }
        }
        load.iter()
            .enumerate()
            .filter(|(w, _)| !self.down[*w])
            .min_by_key(|(_, l)| **l)
            .map(|(i, _)| i as u32)
    }

    /// A participant is gone from `worker` (its join failed, it left, it was removed). Only
    /// acts if the participant is still routed to that worker.
    pub fn remove_participant(&mut self, participant: &str, worker: u32) -> Option<RoomGone> {
        if self
            .routes
            .get(participant)
            .is_none_or(|r| r.worker != worker)
        {
            return None;
        }
        let route = self.routes.remove(participant)?;
        let r = self.rooms.get_mut(&route.room)?;
        r.members = r.members.saturating_sub(1);
        if r.members > 0 {
            return None;
        }
        let gone = self.rooms.remove(&route.room)?;
        Some(RoomGone {
            room: route.room,
            epoch: gone.epoch,
        })
    }

    /// The worker reports `room` empty: forget it if nobody is routed there any more.
    pub fn room_closed(&mut self, room: &str, worker: u32) -> Option<RoomGone> {
        let r = self.rooms.get(room)?;
        if r.worker != worker || r.members != 0 {
            return None;
        }
        let gone = self.rooms.remove(room)?;
        Some(RoomGone {
            room: room.to_string(),
            epoch: gone.epoch,
        })
    }

    /// The worker verified `peer`'s resume key for `participant`: its events go to `peer` now.
    /// Returns the previous owner if it was another live peer (it must be told it lost the
    /// session).
    pub fn attached(&mut self, participant: &str, peer: PeerId) -> Option<PeerId> {
        let r = self.routes.get_mut(participant)?;
        let previous = r.owner.replace(peer);
        r.orphaned_since = None;
        previous.filter(|p| *p != peer)
    }

    /// `peer` went away: its participants keep running, orphaned. Returns how many.
    pub fn peer_gone(&mut self, peer: PeerId, now: Instant) -> usize {
        let mut n = 0;
        for r in self.routes.values_mut() {
            if r.owner == Some(peer) {
                r.owner = None;
                r.orphaned_since = Some(now);
                n += 1;
            }
        }
        n
    }

    /// Participants orphaned for longer than `window`: to be removed (`abandoned`). Each is
    /// reported once.
    pub fn take_abandoned(&mut self, now: Instant, window: Duration) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        for (p, r) in self.routes.iter_mut() {
            if r.orphaned_since
                .is_some_and(|t| now.saturating_duration_since(t) > window)
            {
                r.orphaned_since = None;
                out.push((p.clone(), r.worker));
            }
        }
        out.sort();
        out
    }

    /// The participants of `room` (worker of each).
    pub fn members(&self, room: &str) -> Vec<(String, u32)> {
        let mut v: Vec<(String, u32)> = self
            .routes
            .iter()
            .filter(|(_, r)| r.room == room)
            .map(|(p, r)| (p.clone(), r.worker))
            .collect();
        v.sort();
        v
    }

    /// The room was re-placed elsewhere: never release the new owner's mapping.
    pub fn fence(&mut self, room: &str) {
        if let Some(r) = self.rooms.get_mut(room) {
            r.epoch = None;
        }
    }

    /// The rooms of this node and their epochs (to re-assert after the registry lost them).
    pub fn placed_rooms(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self
            .rooms
            .iter()
            .filter_map(|(room, r)| r.epoch.map(|e| (room.clone(), e)))
            .collect();
        v.sort();
        v
    }

    /// Worker `w` failed: it is down, and every participant and room it hosted is gone. Returns
    /// the participants with their owners (to be told) and the rooms (to be released).
    pub fn worker_failed(&mut self, w: u32) -> (Vec<(String, Option<PeerId>)>, Vec<RoomGone>) {
        if let Some(d) = self.down.get_mut(w as usize) {
            *d = true;
        }
        let mut lost: Vec<(String, Option<PeerId>)> = self
            .routes
            .iter()
            .filter(|(_, r)| r.worker == w)
            .map(|(p, r)| (p.clone(), r.owner))
            .collect();
        lost.sort();
        for (p, _) in &lost {
            self.routes.remove(p);
        }
        let mut rooms: Vec<RoomGone> = self
            .rooms
            .iter()
            .filter(|(_, r)| r.worker == w)
            .map(|(room, r)| RoomGone {
                room: room.clone(),
                epoch: r.epoch,
            })
            .collect();
        rooms.sort_by(|a, b| a.room.cmp(&b.room));
        for g in &rooms {
            self.rooms.remove(&g.room);
        }
        (lost, rooms)
    }

    /// Worker `w` runs again.
    pub fn worker_up(&mut self, w: u32) {
        if let Some(d) = self.down.get_mut(w as usize) {
            *d = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_place_rooms_on_the_least_loaded_live_worker() {
        let mut r = Routes::new(2, 100);
        let j = |r: &mut Routes, p: &str, room: &str| r.reserve_join(p, room, Some(5), 1, false);
        assert_eq!(
            j(&mut r, "a1", "A"),
            Ok(JoinRoute {
                worker: 0,
                placed: Some(5)
            })
        );
        assert_eq!(j(&mut r, "a2", "A").map(|x| x.worker), Ok(0), "same room");
        assert_eq!(
            j(&mut r, "a2", "A"),
            Err(JoinRefused::Duplicate),
            "an id is used once"
        );
        assert_eq!(
            j(&mut r, "b1", "B"),
            Ok(JoinRoute {
                worker: 1,
                placed: Some(5)
            })
        );
        // Worker 1 down: new rooms avoid it.
        r.worker_failed(1);
        assert_eq!(j(&mut r, "c1", "C").map(|x| x.worker), Ok(0));
        r.worker_failed(0);
        assert_eq!(j(&mut r, "d1", "D"), Err(JoinRefused::NoWorker));
        r.worker_up(1);
        assert_eq!(j(&mut r, "d1", "D").map(|x| x.worker), Ok(1));
        assert_eq!(r.down_workers(), vec![0]);
    }

    #[test]
    fn node_capacity_is_enforced_at_join() {
        let mut r = Routes::new(1, 2);
        assert!(r.reserve_join("a", "R", None, 1, false).is_ok());
        assert!(r.reserve_join("b", "S", None, 1, false).is_ok());
        assert_eq!(
            r.reserve_join("c", "R", None, 1, false),
            Err(JoinRefused::AtCapacity { max: 2 })
        );
        assert_eq!(r.capacity_remaining(), 0);
        assert_eq!(
            r.remove_participant("a", 0),
            Some(RoomGone {
                room: "R".into(),
                epoch: None
            })
        );
        assert!(
            r.reserve_join("c", "R", None, 1, false).is_ok(),
            "a slot freed"
        );
    }

    #[test]
    fn fencing_epochs_and_draining() {
        let mut r = Routes::new(1, 100);
        r.reserve_join("a", "R", Some(10), 1, false).expect("join");
        assert_eq!(
            r.reserve_join("b", "R", Some(9), 1, false),
            Err(JoinRefused::StaleEpoch)
        );
        assert_eq!(
            r.reserve_join("b", "R", Some(12), 1, false),
            Ok(JoinRoute {
                worker: 0,
                placed: Some(12)
            }),
            "a newer epoch is adopted and recorded"
        );
        assert_eq!(
            r.reserve_join("c", "R", Some(12), 1, false)
                .map(|x| x.placed),
            Ok(None)
        );
        assert_eq!(r.placed_rooms(), vec![("R".to_string(), 12)]);
        // Draining: existing rooms take joiners, new rooms do not.
        assert!(r.reserve_join("d", "R", Some(12), 1, true).is_ok());
        assert_eq!(
            r.reserve_join("e", "NEW", Some(13), 1, true),
            Err(JoinRefused::Draining)
        );
        // Fenced: the mapping is someone else's now.
        r.fence("R");
        assert_eq!(r.room_epoch("R"), None);
        assert_eq!(r.members("R").len(), 4);
    }

    #[test]
    fn rooms_go_when_their_last_participant_goes() {
        let mut r = Routes::new(2, 100);
        r.reserve_join("a", "R", Some(3), 1, false).expect("join");
        r.reserve_join("b", "R", Some(3), 1, false).expect("join");
        assert_eq!(r.remove_participant("a", 1), None, "wrong worker: ignored");
        assert_eq!(r.remove_participant("a", 0), None);
        assert_eq!(r.room_closed("R", 0), None, "b is still there");
        assert_eq!(
            r.remove_participant("b", 0),
            Some(RoomGone {
                room: "R".into(),
                epoch: Some(3)
            })
        );
        assert_eq!(r.rooms(), 0);
        assert_eq!(r.participants(), 0);
    }

    #[test]
    fn ownership_moves_on_confirmed_attach_and_orphans_expire() {
        let t0 = Instant::now();
        let mut r = Routes::new(1, 100);
        r.reserve_join("p", "R", None, 1, false).expect("join");
        assert_eq!(r.owner("p"), Some(1));
        // Resumed through another signaling peer: the old one is reported.
        assert_eq!(r.attached("p", 2), Some(1));
        assert_eq!(r.owner("p"), Some(2));
        assert_eq!(r.attached("p", 2), None, "same peer again");
        // The old peer going away no longer affects p.
        assert_eq!(r.peer_gone(1, t0), 0);
        assert_eq!(r.peer_gone(2, t0), 1);
        assert_eq!(r.owner("p"), None);
        assert!(
            r.take_abandoned(t0 + Duration::from_secs(5), Duration::from_secs(30))
                .is_empty()
        );
        // Re-attached in time: not abandoned.
        assert_eq!(r.attached("p", 3), None, "an orphan has no owner to tell");
        assert!(
            r.take_abandoned(t0 + Duration::from_secs(60), Duration::from_secs(30))
                .is_empty()
        );
        r.peer_gone(3, t0);
        assert_eq!(
            r.take_abandoned(t0 + Duration::from_secs(31), Duration::from_secs(30)),
            vec![("p".to_string(), 0)]
        );
        assert!(
            r.take_abandoned(t0 + Duration::from_secs(32), Duration::from_secs(30))
                .is_empty(),
            "reported once"
        );
        assert_eq!(r.attached("nobody", 1), None);
    }

    #[test]
    fn a_failed_worker_loses_its_participants_and_rooms_only() {
        let mut r = Routes::new(2, 100);
        r.reserve_join("a", "A", Some(1), 7, false).expect("join"); // worker 0
        r.reserve_join("b", "B", Some(2), 8, false).expect("join"); // worker 1
        r.reserve_join("a2", "A", Some(1), 9, false).expect("join");
        let (lost, rooms) = r.worker_failed(0);
        assert_eq!(
            lost,
            vec![("a".to_string(), Some(7)), ("a2".to_string(), Some(9))]
        );
        assert_eq!(
            rooms,
            vec![RoomGone {
                room: "A".into(),
                epoch: Some(1)
            }]
        );
        assert_eq!(r.owner("b"), Some(8), "other workers are untouched");
        assert!(r.worker_down(0) && !r.worker_down(1));
        // Late reports from the dead worker change nothing.
        assert_eq!(r.remove_participant("a", 0), None);
        assert_eq!(r.room_closed("A", 0), None);
    }
}
