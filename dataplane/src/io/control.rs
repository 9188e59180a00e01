//! The control thread: serves the Unix socket for local signaling processes and, in cluster mode,
//! requests from remote signaling instances over Redis pub/sub; routes between them and the
//! workers; supervises the workers. It never touches media and never waits for a worker.
//!
//! Routing state ([`Routes`], pure and table-tested): room → (worker, fencing epoch),
//! participant → (worker, owning peer). Request tags → (peer, request id) in `control/pending.rs`;
//! commands to workers, their reports and supervision in `control/workers.rs`. A peer (a
//! local connection or a remote signaling instance) that goes away orphans its participants but
//! does not remove them: media keeps flowing, and another signaling instance takes them over with
//! `attach` (session resume). Participants orphaned for longer than the resume window are removed
//! (`abandoned`).
//!
//! Requests from peers (handshake, join/attach admission and fencing, routing, stats, drain,
//! faults) in `control/requests.rs`.
//!
//! Peers and the socket itself (`control/peers.rs`): only the dataplane's own user, root and
//! configured uids may connect (`SO_PEERCRED`); a connection must say `hello` within
//! [`HELLO_TIMEOUT`]; at most [`MAX_LOCAL_PEERS`] at once. A single message that does not fit the
//! frame limit fails that request only (`bad_request`), never the connection.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use control::{BeaconKind, FromDataplane, LeaveReason, NodeStats, ToDataplane, WorkerStats};
use crossbeam_channel::Receiver;
use mio::net::UnixListener;
use mio::{Events, Interest, Poll, Token, Waker};
use registry::{NodeInfo, NodeLoad, NodeState, Placement};
use slab::Slab;
use tracing::{info, warn};

use super::admin::{SharedAdmin, process_cpu_seconds};
use super::cluster::{ClusterCmd, ClusterIn, ClusterLink};
use super::metrics::Metrics;
use super::routes::{PeerId, RoomGone, Routes};
use super::worker::{FromWorker, WorkerHandle};

mod peers;
mod pending;
mod requests;
mod workers;

use peers::Peer;
pub use peers::bind;
use pending::PendingRequests;

const LISTENER: Token = Token(0);
pub const CONTROL_WAKER: Token = Token(1);
const FIRST_CONN: usize = 2;
/// How often every local connection gets a [`FromDataplane::Health`] report.
const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
/// A remote signaling instance silent for this long is considered gone.
const REMOTE_PEER_TIMEOUT: Duration = Duration::from_secs(3);
/// A local connection must send `hello` within this time.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Local control connections at most.
pub const MAX_LOCAL_PEERS: usize = 64;

/// Settings of the control thread.
#[derive(Debug, Clone)]
pub struct ControlSettings {
    pub socket_path: PathBuf,
    pub node_id: String,
    pub max_frame: usize,
    /// Participants without any signaling owner for this long are removed.
    pub resume_window: Duration,
    /// For the registry: public media IP and worker ports, room capacity.
    pub media_ip: String,
    pub media_ports: Vec<u16>,
    pub capacity_rooms: u32,
    /// Participants this node takes at most (joins beyond get `unavailable`).
    pub max_participants: u32,
    /// User ids (besides ours and root) allowed to connect to the control socket.
    pub peer_uids: Vec<u32>,
    /// Accept [`Request::InjectFault`] (tests only).
    pub test_faults: bool,
    /// Random per process start (in `welcome`, `joined`, `attached` and beacons).
    pub incarnation: String,
}

/// The control thread's state.
pub struct ControlServer {
    settings: ControlSettings,
    poll: Poll,
    listener: UnixListener,
    peers: Slab<Peer>,
    remote_ids: HashMap<String, PeerId>,
    workers: Vec<WorkerHandle>,
    reports: Receiver<(u32, FromWorker)>,
    cluster: Option<ClusterLink>,
    /// The Redis subscription is up (remote peers can be heard).
    subscribed: bool,
    routes: Routes,
    pending: PendingRequests,
    stats: Vec<WorkerStats>,
    /// Workers that failed and still need their `Restart` (their queue was full).
    restart_due: Vec<u32>,
    /// `Remove` commands a full worker queue refused, retried every sweep while the participant
    /// is still routed to that worker (a dropped one would leak it, or keep a fenced room alive).
    removes_due: Vec<(u32, String, LeaveReason)>,
    /// Why each down worker failed.
    failures: HashMap<u32, String>,
    shutdown: Arc<AtomicBool>,
    drain: Arc<AtomicBool>,
    draining: bool,
    deregistered: bool,
    /// Packets forwarded at the last load report, for the rate.
    last_forwarded: (Instant, u64),
    /// Process CPU seconds at the last load report, and the resulting utilisation (%).
    last_cpu: (Instant, f64),
    cpu_percent: f32,
    metrics: Metrics,
    /// What the metrics endpoint serves (`admin::serve`).
    admin: SharedAdmin,
}

impl ControlServer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: ControlSettings,
        poll: Poll,
        mut listener: UnixListener,
        workers: Vec<WorkerHandle>,
        reports: Receiver<(u32, FromWorker)>,
        cluster: Option<ClusterLink>,
        shutdown: Arc<AtomicBool>,
        drain: Arc<AtomicBool>,
    ) -> io::Result<Self> {
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let stats = workers
            .iter()
            .map(|w| WorkerStats {
                worker: w.id,
                port: w.local_addr.port(),
                ..WorkerStats::default()
            })
            .collect();
        let mut metrics = Metrics::new();
        for w in &workers {
            metrics.worker_up(w.id, false);
        }
        let admin = SharedAdmin::default();
        if let Ok(mut a) = admin.lock() {
            a.metrics = metrics.render();
        }
        Ok(Self {
            routes: Routes::new(workers.len(), settings.max_participants),
            settings,
            poll,
            listener,
            peers: Slab::new(),
            remote_ids: HashMap::new(),
            workers,
            reports,
            cluster,
            subscribed: false,
            pending: PendingRequests::default(),
            stats,
            restart_due: Vec::new(),
            removes_due: Vec::new(),
            failures: HashMap::new(),
            shutdown,
            drain,
            draining: false,
            deregistered: false,
            last_forwarded: (Instant::now(), 0),
            last_cpu: (Instant::now(), process_cpu_seconds()),
            cpu_percent: 0.0,
            metrics,
            admin,
        })
    }

    /// Participants this node can still take (0 while draining).
    fn capacity_remaining(&self) -> u32 {
        if self.draining {
            return 0;
        }
        self.routes.capacity_remaining()
    }

    /// What the metrics endpoint serves; pass it to [`super::admin::serve`].
    pub fn admin_state(&self) -> SharedAdmin {
        self.admin.clone()
    }

    /// This process's incarnation.
    pub fn incarnation(&self) -> &str {
        &self.settings.incarnation
    }

    /// Attach the Redis link (cluster mode).
    pub fn set_cluster(&mut self, link: ClusterLink) {
        self.cluster = Some(link);
    }

    /// Create the poll whose waker the workers and cluster threads use.
    pub fn poll_and_waker() -> io::Result<(Poll, Arc<Waker>)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), CONTROL_WAKER)?);
        Ok((poll, waker))
    }

    /// This node as the registry sees it.
    pub fn node_info(&self) -> NodeInfo {
        let participants = self.stats.iter().map(|w| w.participants).sum();
        let rooms = self.stats.iter().map(|w| w.rooms.len() as u32).sum();
        let forwarded: u64 = self.stats.iter().map(|w| w.rtp_forwarded).sum();
        let (t, f) = self.last_forwarded;
        let secs = t.elapsed().as_secs_f64().max(0.001);
        NodeInfo {
            node_id: self.settings.node_id.clone(),
            media_ip: self.settings.media_ip.clone(),
            media_ports: self.settings.media_ports.clone(),
            capacity_rooms: self.settings.capacity_rooms,
            load: NodeLoad {
                rooms,
                participants,
                packets_per_sec: (forwarded.saturating_sub(f) as f64 / secs) as u64,
                cpu_percent: self.cpu_percent,
                capacity_remaining: self.capacity_remaining(),
            },
            state: if self.draining {
                NodeState::Draining
            } else if !self.routes.down_workers().is_empty() {
                // Placement skips it until its workers run again.
                NodeState::Degraded
            } else {
                NodeState::Serving
            },
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    /// Run until shutdown; then wait (bounded) for the workers to stop and return them.
    pub fn run(mut self) -> Vec<WorkerHandle> {
        let mut events = Events::with_capacity(128);
        let mut next_health = Instant::now() + HEALTH_INTERVAL;
        let mut next_sweep = Instant::now() + Duration::from_secs(1);
        loop {
            if let Err(e) = self
                .poll
                .poll(&mut events, Some(Duration::from_millis(200)))
                && e.kind() != io::ErrorKind::Interrupted
            {
                warn!(error = %e, "control poll failed");
                break;
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    CONTROL_WAKER => {}
                    Token(t) => {
                        if ev.is_readable() || ev.is_read_closed() {
                            self.read_local(t - FIRST_CONN);
                        }
                    }
                }
            }
            self.handle_reports();
            self.handle_cluster();
            let now = Instant::now();
            if now >= next_health {
                next_health = now + HEALTH_INTERVAL;
                self.broadcast_health();
                if let Some(c) = &self.cluster {
                    c.send(ClusterCmd::Node(self.node_info()));
                }
                let forwarded = self.stats.iter().map(|w| w.rtp_forwarded).sum();
                self.last_forwarded = (now, forwarded);
                let cpu = process_cpu_seconds();
                let (t, c) = self.last_cpu;
                let secs = now.duration_since(t).as_secs_f64().max(0.001);
                // Percent of one core, like `top`.
                self.cpu_percent = ((cpu - c) / secs * 100.0) as f32;
                self.last_cpu = (now, cpu);
            }
            if now >= next_sweep {
                next_sweep = now + Duration::from_secs(1);
                self.sweep(now);
            }
            self.flush_locals();
            if self.shutdown.load(Ordering::Relaxed) {
                break;
            }
        }
        // Workers remove their participants on shutdown; forward what they report for a moment
        // so signaling can tell its clients.
        for w in &self.workers {
            let _ = w.waker.wake();
        }
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline && self.workers.iter().any(|w| !w.thread.is_finished()) {
            std::thread::sleep(Duration::from_millis(10));
            self.handle_reports();
            self.flush_locals();
        }
        if let Some(c) = self.cluster.take() {
            c.stop();
        }
        let _ = std::fs::remove_file(&self.settings.socket_path);
        std::mem::take(&mut self.workers)
    }

    /// Once a second: expire silent remote peers and local ones that never said hello, remove
    /// abandoned participants, restart failed workers, progress a drain, refresh the metrics.
    fn sweep(&mut self, now: Instant) {
        self.metrics
            .set_capacity_remaining(i64::from(self.capacity_remaining()));
        self.metrics.set_draining(self.draining);
        if let Some(c) = &self.cluster {
            self.metrics.set_redis_errors(&c.errors);
        }
        self.refresh_admin();
        self.expire_peers(now);
        for (participant, worker) in self.routes.take_abandoned(now, self.settings.resume_window) {
            info!(%participant, "no signaling for the resume window: removing");
            self.remove(worker, participant, LeaveReason::Abandoned);
        }
        for (worker, participant, reason) in std::mem::take(&mut self.removes_due) {
            if self.routes.worker_of(&participant) == Some(worker) {
                self.remove(worker, participant, reason);
            }
        }
        for w in std::mem::take(&mut self.restart_due) {
            self.restart_worker(w);
        }
        if self.drain.load(Ordering::Relaxed) && !self.draining {
            self.start_drain();
        }
        if self.draining && self.routes.participants() == 0 && !self.deregistered {
            match &self.cluster {
                Some(c) => {
                    info!("drain complete: deregistering");
                    c.send(ClusterCmd::Deregister);
                    self.deregistered = true;
                }
                None => {
                    info!("drain complete: exiting");
                    self.shutdown.store(true, Ordering::SeqCst);
                }
            }
        }
    }

    /// Publish the metrics text and the health verdict for the endpoint thread.
    fn refresh_admin(&mut self) {
        let text = self.metrics.render();
        let down = self.routes.down_workers();
        let unhealthy = (!down.is_empty()).then(|| {
            down.iter()
                .map(|w| {
                    format!(
                        "worker {w} down: {}",
                        self.failures.get(w).map_or("failed", String::as_str)
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        });
        if let Ok(mut a) = self.admin.lock() {
            a.metrics = text;
            a.unhealthy = unhealthy;
        }
    }

    fn start_drain(&mut self) {
        info!("draining: no new rooms; existing rooms continue until empty");
        self.draining = true;
        if let Some(c) = &self.cluster {
            c.send(ClusterCmd::Node(self.node_info()));
        }
    }

    fn node_stats(&self) -> NodeStats {
        NodeStats {
            node_id: self.settings.node_id.clone(),
            workers: self.stats.clone(),
        }
    }

    fn broadcast_health(&mut self) {
        let msg = FromDataplane::Health {
            stats: self.node_stats(),
        };
        let ready: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.ready())
            .map(|(i, _)| i)
            .collect();
        for id in ready {
            self.send(id, &msg);
        }
    }

    /// Tell the registry thread this node hosts `room` under `epoch`.
    fn room_placed(&self, room: &str, epoch: u64) {
        if let Some(c) = &self.cluster {
            c.send(ClusterCmd::RoomPlaced {
                room: room.to_string(),
                placement: Placement {
                    node: self.settings.node_id.clone(),
                    epoch,
                },
            });
        }
    }

    /// The room is gone from this node: release its registry mapping.
    fn room_gone(&mut self, gone: RoomGone) {
        if let (Some(c), Some(epoch)) = (&self.cluster, gone.epoch) {
            c.send(ClusterCmd::RoomClosed {
                room: gone.room,
                placement: Placement {
                    node: self.settings.node_id.clone(),
                    epoch,
                },
            });
        }
    }

    fn handle_cluster(&mut self) {
        let Some(c) = &self.cluster else {
            return;
        };
        let msgs: Vec<ClusterIn> = c.rx.try_iter().collect();
        for m in msgs {
            match m {
                ClusterIn::Rpc(env) => {
                    let peer = self.remote_peer(&env.from);
                    match env.msg {
                        // A remote peer needs no handshake, but gets the node's identity.
                        ToDataplane::Hello { .. } => {
                            let welcome = self.welcome();
                            self.send(peer, &welcome);
                        }
                        msg => self.handle_message(peer, msg),
                    }
                }
                ClusterIn::Beacon(b) => {
                    if b.kind == BeaconKind::Signaling {
                        self.remote_seen(&b.id);
                    }
                }
                ClusterIn::Fenced { room } => {
                    for (participant, worker) in self.routes.members(&room) {
                        self.remove(worker, participant, LeaveReason::Moved);
                    }
                    // Never release the new owner's mapping.
                    self.routes.fence(&room);
                }
                ClusterIn::Subscribed(up) => {
                    self.subscribed = up;
                    if up {
                        // Silence while we could not hear anyone proves nothing.
                        self.refresh_remote_peers();
                    }
                }
                ClusterIn::Deregistered => {
                    info!("deregistered: exiting after the drain");
                    self.shutdown.store(true, Ordering::SeqCst);
                }
            }
        }
    }
}
