//! The dataplane's link to Redis (cluster mode): two threads, so Redis latency or outages never
//! touch a worker loop or block the control thread.
//!
//! - **registry** thread: heartbeats the node into the registry every 2 s, publishes a liveness
//!   beacon every 500 ms, releases the mappings of rooms that emptied, checks every 2 s that the
//!   rooms this node hosts are still mapped to it with the same fencing epoch (reporting
//!   [`ClusterIn::Fenced`] otherwise, and recording again any mapping Redis forgot), re-asserts
//!   every room when the heartbeat reports that Redis lost data, reaps dead nodes every 5 s, and
//!   publishes replies for the control thread.
//! - **subscriber** thread: receives control requests on the node's rpc channel and beacons on
//!   the health channel, and hands them to the control thread (channel + waker).
//!
//! Every Redis call has a timeout; on failure the threads retry with backoff and the node keeps
//! serving its calls.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use control::{Beacon, BeaconKind, RpcEnvelope};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use mio::Waker;
use registry::link::{LinkThreads, Outbox, SubscriberEvents, run_subscriber};
use registry::{NodeInfo, Placement, RedisConn, RedisRegistry, RedisSettings, Registry};
use tracing::{debug, info, warn};

const BEACON_INTERVAL: Duration = Duration::from_millis(500);
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
const REAP_INTERVAL: Duration = Duration::from_secs(5);

/// From the control thread to the registry thread.
#[derive(Debug)]
pub enum ClusterCmd {
    Publish {
        channel: String,
        payload: Vec<u8>,
    },
    /// The latest description of this node (load, state) for heartbeats.
    Node(NodeInfo),
    /// This node now hosts `room` under `placement`.
    RoomPlaced {
        room: String,
        placement: Placement,
    },
    /// `room` emptied: release its mapping if still ours.
    RoomClosed {
        room: String,
        placement: Placement,
    },
    /// Remove this node from the registry (end of a drain).
    Deregister,
}

/// From the cluster threads to the control thread.
#[derive(Debug)]
pub enum ClusterIn {
    Rpc(RpcEnvelope),
    Beacon(Beacon),
    /// A room this node hosts is now mapped elsewhere: its participants must leave.
    Fenced {
        room: String,
    },
    /// The subscription is (re)established or lost.
    Subscribed(bool),
    Deregistered,
}

/// Handle the control thread holds.
pub struct ClusterLink {
    pub settings: RedisSettings,
    /// Failed Redis operations so far (for metrics).
    pub errors: Arc<std::sync::atomic::AtomicU64>,
    tx: Sender<ClusterCmd>,
    pub rx: Receiver<ClusterIn>,
    threads: LinkThreads,
}

impl std::fmt::Debug for ClusterLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterLink")
            .field("prefix", &self.settings.prefix)
            .finish_non_exhaustive()
    }
}

impl ClusterLink {
    /// Start both threads. `waker` wakes the control thread when something arrives.
    pub fn start(
        settings: RedisSettings,
        node: NodeInfo,
        incarnation: String,
        waker: Arc<Waker>,
    ) -> anyhow::Result<Self> {
        let node_id = node.node_id.clone();
        let registry = RedisRegistry::new(settings.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
        let publisher = RedisConn::new(&settings).map_err(|e| anyhow::anyhow!("{e}"))?;
        let (tx, cmd_rx) = crossbeam_channel::unbounded();
        let (out, rx) = Outbox::new(move || {
            let _ = waker.wake();
        });
        let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut threads = LinkThreads::new();
        {
            let (settings, errors, out) = (settings.clone(), errors.clone(), out.clone());
            threads.spawn("registry", move |stop| {
                RegistryLoop {
                    settings,
                    registry,
                    publisher,
                    node,
                    incarnation,
                    rooms: HashMap::new(),
                    pending_release: Vec::new(),
                    out,
                    errors,
                }
                .run(&cmd_rx, stop)
            })?;
        }
        {
            let settings = settings.clone();
            threads.spawn("subscriber", move |stop| {
                let events = SubscriberEvents {
                    subscribed: ClusterIn::Subscribed,
                    beacon: ClusterIn::Beacon,
                    message: |payload: &[u8]| match control::decode::<RpcEnvelope>(payload) {
                        Ok(env) => Some(ClusterIn::Rpc(env)),
                        Err(e) => {
                            debug!(error = %e, "bad rpc message");
                            None
                        }
                    },
                };
                run_subscriber(
                    &settings,
                    &settings.rpc_channel(&node_id),
                    stop,
                    &out,
                    events,
                )
            })?;
        }
        Ok(Self {
            settings,
            errors,
            tx,
            rx,
            threads,
        })
    }

    pub fn send(&self, cmd: ClusterCmd) {
        let _ = self.tx.send(cmd);
    }

    /// Stop the threads (bounded: they check the flag at least every 500 ms).
    pub fn stop(mut self) {
        self.threads.stop();
    }
}

struct RegistryLoop {
    settings: RedisSettings,
    registry: RedisRegistry,
    publisher: RedisConn,
    node: NodeInfo,
    /// This process's incarnation, in every beacon.
    incarnation: String,
    /// Rooms hosted here and their placements (for fencing checks).
    rooms: HashMap<String, Placement>,
    /// Releases that failed (Redis down), retried on every heartbeat.
    pending_release: Vec<(String, Placement)>,
    out: Outbox<ClusterIn>,
    errors: Arc<std::sync::atomic::AtomicU64>,
}

impl RegistryLoop {
    fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    fn emit(&self, m: ClusterIn) {
        self.out.emit(m);
    }

    fn run(mut self, cmds: &Receiver<ClusterCmd>, stop: &AtomicBool) {
        let mut next_beacon = Instant::now();
        let mut next_heartbeat = Instant::now();
        let mut next_reap = Instant::now() + REAP_INTERVAL;
        let mut redis_ok = true;
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let wait = next_beacon
                .min(next_heartbeat)
                .saturating_duration_since(now);
            match cmds.recv_timeout(wait.min(Duration::from_millis(250))) {
                Ok(cmd) => self.handle(cmd),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            let now = Instant::now();
            if now >= next_beacon {
                next_beacon = now + BEACON_INTERVAL;
                let beacon = Beacon {
                    kind: BeaconKind::Dataplane,
                    id: self.node.node_id.clone(),
                    draining: Some(self.node.state == registry::NodeState::Draining),
                    incarnation: Some(self.incarnation.clone()),
                };
                let _ = self
                    .publisher
                    .publish(&self.settings.health_channel(), &control::encode(&beacon));
            }
            if now >= next_heartbeat {
                next_heartbeat = now + HEARTBEAT_INTERVAL;
                let ok = self.heartbeat();
                if ok != redis_ok {
                    if ok {
                        info!("registry reachable again");
                    } else {
                        warn!("registry unreachable; calls in progress continue, retrying");
                    }
                    redis_ok = ok;
                }
            }
            if now >= next_reap {
                next_reap = now + REAP_INTERVAL;
                match self.registry.reap_dead() {
                    Ok(dead) if !dead.is_empty() => info!(?dead, "reaped dead nodes"),
                    _ => {}
                }
            }
        }
    }

    fn handle(&mut self, cmd: ClusterCmd) {
        match cmd {
            ClusterCmd::Publish { channel, payload } => {
                if let Err(e) = self.publisher.publish(&channel, &payload) {
                    debug!(%channel, error = %e, "publish failed");
                    self.error();
                }
            }
            ClusterCmd::Node(info) => self.node = info,
            ClusterCmd::RoomPlaced { room, placement } => {
                self.rooms.insert(room, placement);
            }
            ClusterCmd::RoomClosed { room, placement } => {
                if self.rooms.get(&room) == Some(&placement) {
                    self.rooms.remove(&room);
                }
                if self.registry.release_room(&room, &placement).is_err() {
                    self.pending_release.push((room, placement));
                }
            }
            ClusterCmd::Deregister => {
                if let Err(e) = self.registry.deregister(&self.node.node_id) {
                    warn!(error = %e, "deregister failed");
                }
                self.emit(ClusterIn::Deregistered);
            }
        }
    }

    /// Heartbeat, re-assert what Redis forgot, retry releases, check fencing. Returns whether
    /// Redis answered.
    fn heartbeat(&mut self) -> bool {
        let lost_data = match self.registry.heartbeat(&self.node) {
            Ok(lost) => lost,
            Err(e) => {
                debug!(error = %e, "heartbeat failed");
                self.error();
                return false;
            }
        };
        if lost_data {
            warn!(
                rooms = self.rooms.len(),
                "the registry may have lost data (Redis restarted, failed over or was flushed): re-asserting our rooms"
            );
            let all: Vec<(String, u64)> = self
                .rooms
                .iter()
                .map(|(r, p)| (r.clone(), p.epoch))
                .collect();
            self.reassert(all);
        }
        let pending = std::mem::take(&mut self.pending_release);
        for (room, p) in pending {
            if self.registry.release_room(&room, &p).is_err() {
                self.pending_release.push((room, p));
            }
        }
        let rooms: Vec<String> = self.rooms.keys().cloned().collect();
        if let Ok(owners) = self.registry.room_owners(&rooms) {
            let mut missing = Vec::new();
            for (room, owner) in rooms.into_iter().zip(owners) {
                let Some(mine) = self.rooms.get(&room) else {
                    continue;
                };
                match owner {
                    // Forgotten (e.g. written just before a failover that lost it): record it
                    // again before any join can place the room elsewhere.
                    None => missing.push((room, mine.epoch)),
                    // Placed here again under a newer epoch (our `RoomPlaced` is on its way).
                    Some(owner) if owner.node == mine.node => {
                        if owner.epoch > mine.epoch
                            && let Some(m) = self.rooms.get_mut(&room)
                        {
                            m.epoch = owner.epoch;
                        }
                    }
                    // The newest epoch wins (as in `reassert`).
                    Some(owner) if owner.epoch >= mine.epoch => {
                        warn!(%room, ?owner, ?mine, "room re-placed elsewhere: closing it here");
                        self.fenced(room);
                    }
                    // Another node under an older epoch: only possible when Redis lost the epoch
                    // counter and nobody re-seeded it. Ours is the newer placement: re-assert it
                    // (that node fences itself at its next check).
                    Some(owner) => {
                        warn!(%room, ?owner, ?mine, "room mapped to another node under an older epoch: re-asserting ours");
                        missing.push((room, mine.epoch));
                    }
                }
            }
            if !missing.is_empty() {
                info!(
                    rooms = missing.len(),
                    "re-asserting rooms missing from the registry"
                );
                self.reassert(missing);
            }
        }
        true
    }

    /// Record `rooms` again; any that another node now holds under a newer epoch are fenced.
    fn reassert(&mut self, rooms: Vec<(String, u64)>) {
        if rooms.is_empty() {
            return;
        }
        match self.registry.reassert(&self.node.node_id, &rooms) {
            Ok(lost) => {
                for room in lost {
                    warn!(%room, "room is held elsewhere under a newer epoch: closing it here");
                    self.fenced(room);
                }
            }
            Err(e) => {
                debug!(error = %e, "re-assert failed; retried at the next heartbeat");
                self.error();
            }
        }
    }

    fn fenced(&mut self, room: String) {
        self.rooms.remove(&room);
        self.emit(ClusterIn::Fenced { room });
    }
}
