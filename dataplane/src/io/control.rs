//! The control thread: serves the Unix socket for local signaling processes and, in cluster mode,
//! requests from remote signaling instances over Redis pub/sub; routes between them and the
//! workers. It never touches media and never waits for a worker.
//!
//! Routing state kept here: room → (worker, fencing epoch), participant → (worker, owning peer),
//! request tags → (peer, request id). A peer (a local connection or a remote signaling instance)
//! that goes away orphans its participants but does not remove them: media keeps flowing, and
//! another signaling instance takes them over with `attach` (session resume). Participants
//! orphaned for longer than the resume window are removed (`abandoned`).

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use control::registry::{NodeInfo, NodeLoad, NodeState, Placement};
use control::{
    BeaconKind, ErrorCode, Framed, FromDataplane, LeaveReason, NodeStats, PROTOCOL_VERSION,
    ReadStatus, Request, Response, ToDataplane, WorkerStats,
};
use crossbeam_channel::{Receiver, TrySendError};
use mio::net::{UnixListener, UnixStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use tracing::{debug, info, warn};

use super::cluster::{ClusterCmd, ClusterIn, ClusterLink};
use super::metrics::Metrics;
use super::worker::WorkerHandle;
use crate::core::{Command, Op, Report};

const LISTENER: Token = Token(0);
pub const CONTROL_WAKER: Token = Token(1);
const FIRST_CONN: usize = 2;
/// How often every local connection gets a [`FromDataplane::Health`] report.
const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
/// A remote signaling instance silent for this long is considered gone.
const REMOTE_PEER_TIMEOUT: Duration = Duration::from_secs(3);

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
}

enum Peer {
    /// A signaling process on this host, over the Unix socket.
    Local {
        stream: UnixStream,
        framed: Framed,
        /// Name from `hello`; `None` until the handshake is done.
        client: Option<String>,
        writable: bool,
    },
    /// A signaling instance elsewhere, over Redis pub/sub.
    Remote {
        signaling: String,
        last_seen: Instant,
    },
}

struct Route {
    worker: u32,
    room: String,
    owner: Option<usize>,
    /// When it lost its owner.
    orphaned_since: Option<Instant>,
}

#[derive(Clone, Copy)]
enum PendingKind {
    Join,
    Other,
}

struct Pending {
    peer: usize,
    id: u64,
    kind: PendingKind,
    participant: String,
    room: Option<String>,
}

struct RoomEntry {
    worker: u32,
    members: usize,
    epoch: Option<u64>,
}

/// Bind the socket (replacing a stale one) before anything else starts.
pub fn bind(path: &PathBuf) -> anyhow::Result<UnixListener> {
    if path.exists() {
        // A live dataplane answers on it; a stale file from a crash does not.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "control socket {} is in use by another dataplane",
                path.display()
            );
        }
        std::fs::remove_file(path)?;
    }
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    Ok(UnixListener::bind(path)?)
}

/// The control thread's state.
pub struct ControlServer {
    settings: ControlSettings,
    poll: Poll,
    listener: UnixListener,
    peers: Slab<Peer>,
    remote_ids: HashMap<String, usize>,
    workers: Vec<WorkerHandle>,
    reports: Receiver<(u32, Report)>,
    cluster: Option<ClusterLink>,
    /// The Redis subscription is up (remote peers can be heard).
    subscribed: bool,
    rooms: HashMap<String, RoomEntry>,
    routes: HashMap<String, Route>,
    pending: HashMap<u64, Pending>,
    next_tag: u64,
    stats: Vec<WorkerStats>,
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
    /// The latest metrics text, read by the HTTP thread (`serve_metrics`).
    metrics_text: Arc<std::sync::Mutex<String>>,
}

impl ControlServer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: ControlSettings,
        poll: Poll,
        mut listener: UnixListener,
        workers: Vec<WorkerHandle>,
        reports: Receiver<(u32, Report)>,
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
        Ok(Self {
            settings,
            poll,
            listener,
            peers: Slab::new(),
            remote_ids: HashMap::new(),
            workers,
            reports,
            cluster,
            subscribed: false,
            rooms: HashMap::new(),
            routes: HashMap::new(),
            pending: HashMap::new(),
            next_tag: 1,
            stats,
            shutdown,
            drain,
            draining: false,
            deregistered: false,
            last_forwarded: (Instant::now(), 0),
            last_cpu: (Instant::now(), process_cpu_seconds()),
            cpu_percent: 0.0,
            metrics_text: Arc::new(std::sync::Mutex::new(Metrics::new().render())),
            metrics: Metrics::new(),
        })
    }

    /// Participants this node can still take (0 while draining).
    fn capacity_remaining(&self) -> u32 {
        if self.draining {
            return 0;
        }
        self.settings
            .max_participants
            .saturating_sub(self.routes.len() as u32)
    }

    /// The shared metrics text; serve it with [`serve_metrics`].
    pub fn metrics_text(&self) -> Arc<std::sync::Mutex<String>> {
        self.metrics_text.clone()
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

    /// Once a second: expire silent remote peers, remove abandoned participants, progress a drain,
    /// refresh the metrics text.
    fn sweep(&mut self, now: Instant) {
        self.metrics
            .set_capacity_remaining(i64::from(self.capacity_remaining()));
        self.metrics.set_draining(self.draining);
        if let Some(c) = &self.cluster {
            self.metrics.set_redis_errors(&c.errors);
        }
        let text = self.metrics.render();
        if let Ok(mut t) = self.metrics_text.lock() {
            *t = text;
        }
        if self.subscribed {
            let silent: Vec<usize> = self
                .peers
                .iter()
                .filter(|(_, p)| matches!(p, Peer::Remote { last_seen, .. } if now.duration_since(*last_seen) > REMOTE_PEER_TIMEOUT))
                .map(|(i, _)| i)
                .collect();
            for id in silent {
                self.close_peer(id);
            }
        }
        let abandoned: Vec<(String, u32)> = self
            .routes
            .iter()
            .filter(|(_, r)| {
                r.orphaned_since
                    .is_some_and(|t| now.duration_since(t) > self.settings.resume_window)
            })
            .map(|(p, r)| (p.clone(), r.worker))
            .collect();
        for (participant, worker) in abandoned {
            info!(%participant, "no signaling for the resume window: removing");
            if let Some(r) = self.routes.get_mut(&participant) {
                r.orphaned_since = None;
            }
            self.command(
                worker,
                Op::Remove {
                    participant,
                    reason: LeaveReason::Abandoned,
                },
            );
        }
        if self.drain.load(Ordering::Relaxed) && !self.draining {
            self.start_drain();
        }
        if self.draining && self.routes.is_empty() && !self.deregistered {
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

    fn start_drain(&mut self) {
        info!("draining: no new rooms; existing rooms continue until empty");
        self.draining = true;
        if let Some(c) = &self.cluster {
            c.send(ClusterCmd::Node(self.node_info()));
        }
    }

    fn command(&self, worker: u32, op: Op) -> bool {
        let Some(w) = self.workers.get(worker as usize) else {
            return false;
        };
        let ok = w.commands.try_send(Command { tag: 0, op }).is_ok();
        let _ = w.waker.wake();
        ok
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
        let ready: Vec<usize> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                matches!(
                    p,
                    Peer::Local {
                        client: Some(_),
                        ..
                    }
                )
            })
            .map(|(i, _)| i)
            .collect();
        for id in ready {
            self.send(id, &msg);
        }
    }

    // -------------------------------------------------------------------------------------------
    // Peers

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    let entry = self.peers.vacant_entry();
                    let token = Token(entry.key() + FIRST_CONN);
                    if let Err(e) =
                        self.poll
                            .registry()
                            .register(&mut stream, token, Interest::READABLE)
                    {
                        warn!(error = %e, "register control connection");
                        continue;
                    }
                    debug!(peer = entry.key(), "control connection accepted");
                    entry.insert(Peer::Local {
                        stream,
                        framed: Framed::new(self.settings.max_frame),
                        client: None,
                        writable: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    warn!(error = %e, "accept on control socket");
                    return;
                }
            }
        }
    }

    fn read_local(&mut self, id: usize) {
        let Some(Peer::Local { stream, framed, .. }) = self.peers.get_mut(id) else {
            return;
        };
        let status = framed.read_from(stream);
        loop {
            let Some(Peer::Local { framed, .. }) = self.peers.get_mut(id) else {
                return;
            };
            match framed.next_message::<ToDataplane>() {
                Ok(Some(msg)) => self.handle_message(id, msg),
                Ok(None) => break,
                Err(e) => {
                    warn!(peer = id, error = %e, "bad control frame; closing connection");
                    self.close_peer(id);
                    return;
                }
            }
        }
        if !matches!(status, Ok(ReadStatus::Open)) {
            self.close_peer(id);
        }
    }

    fn close_peer(&mut self, id: usize) {
        let Some(peer) = self.peers.try_remove(id) else {
            return;
        };
        let who = match peer {
            Peer::Local {
                mut stream,
                mut framed,
                client,
                ..
            } => {
                let _ = framed.flush_to(&mut stream);
                let _ = self.poll.registry().deregister(&mut stream);
                client.unwrap_or_else(|| "local".into())
            }
            Peer::Remote { signaling, .. } => {
                self.remote_ids.remove(&signaling);
                signaling
            }
        };
        let now = Instant::now();
        let mut orphaned = 0;
        for r in self.routes.values_mut() {
            if r.owner == Some(id) {
                r.owner = None;
                r.orphaned_since = Some(now);
                orphaned += 1;
            }
        }
        info!(peer = id, %who, orphaned, "signaling peer gone; its sessions keep running for the resume window");
    }

    fn send(&mut self, peer: usize, msg: &FromDataplane) {
        match self.peers.get_mut(peer) {
            Some(Peer::Local { framed, .. }) => {
                if let Err(e) = framed.queue(msg) {
                    warn!(peer, error = %e, "control connection not reading; closing it");
                    self.close_peer(peer);
                }
            }
            Some(Peer::Remote { signaling, .. }) => {
                if let Some(c) = &self.cluster {
                    c.send(ClusterCmd::Publish {
                        channel: c.settings.reply_channel(signaling),
                        payload: control::encode(msg),
                    });
                }
            }
            None => {}
        }
    }

    fn respond(&mut self, peer: usize, id: u64, response: Response) {
        self.send(peer, &FromDataplane::Response { id, response });
    }

    fn welcome(&self) -> FromDataplane {
        FromDataplane::Welcome {
            version: PROTOCOL_VERSION,
            node_id: self.settings.node_id.clone(),
            workers: self.workers.len() as u32,
        }
    }

    fn handle_message(&mut self, peer: usize, msg: ToDataplane) {
        let hello_done = match self.peers.get(peer) {
            Some(Peer::Local { client, .. }) => client.is_some(),
            Some(Peer::Remote { .. }) => true,
            None => return,
        };
        match msg {
            ToDataplane::Hello { version, client } => {
                if version != PROTOCOL_VERSION {
                    self.respond(
                        peer,
                        0,
                        Response::error(
                            ErrorCode::UnsupportedVersion,
                            format!("protocol version {version} not supported; this dataplane speaks {PROTOCOL_VERSION}"),
                        ),
                    );
                    self.flush_locals();
                    self.close_peer(peer);
                    return;
                }
                info!(peer, %client, "control client connected");
                if let Some(Peer::Local { client: c, .. }) = self.peers.get_mut(peer) {
                    *c = Some(client);
                }
                let welcome = self.welcome();
                self.send(peer, &welcome);
            }
            ToDataplane::Request { id, .. } if !hello_done => {
                self.respond(
                    peer,
                    id,
                    Response::error(ErrorCode::BadRequest, "hello first"),
                );
                self.flush_locals();
                self.close_peer(peer);
            }
            ToDataplane::Request { id, request } => self.handle_request(peer, id, request),
        }
    }

    fn handle_request(&mut self, peer: usize, id: u64, request: Request) {
        if self.shutdown.load(Ordering::Relaxed) {
            self.respond(
                peer,
                id,
                Response::error(ErrorCode::Unavailable, "dataplane is shutting down"),
            );
            return;
        }
        let (worker, kind, participant, room) = match &request {
            Request::Stats => {
                let stats = self.node_stats();
                self.respond(peer, id, Response::Stats(stats));
                return;
            }
            Request::Drain => {
                self.drain.store(true, Ordering::SeqCst);
                self.start_drain();
                self.respond(peer, id, Response::Ok);
                return;
            }
            Request::CloseRoom { room } => {
                let Some(r) = self.rooms.get(room) else {
                    self.respond(
                        peer,
                        id,
                        Response::error(ErrorCode::BadRequest, format!("no room {room:?} here")),
                    );
                    return;
                };
                (r.worker, PendingKind::Other, String::new(), None)
            }
            Request::Join {
                room,
                participant,
                epoch,
                ..
            } => {
                if self.routes.contains_key(participant) {
                    self.respond(
                        peer,
                        id,
                        Response::error(
                            ErrorCode::DuplicateParticipant,
                            format!("participant {participant:?} already exists"),
                        ),
                    );
                    return;
                }
                match self.rooms.get_mut(room) {
                    Some(r) => {
                        if let (Some(known), Some(e)) = (r.epoch, *epoch)
                            && e < known
                        {
                            self.respond(
                                peer,
                                id,
                                Response::error(
                                    ErrorCode::Unavailable,
                                    "stale room placement; look the room up again",
                                ),
                            );
                            return;
                        }
                        if epoch.is_some() && *epoch != r.epoch {
                            r.epoch = *epoch;
                            self.room_placed(room);
                        }
                    }
                    None => {
                        if self.draining {
                            self.respond(
                                peer,
                                id,
                                Response::error(ErrorCode::Unavailable, "node is draining"),
                            );
                            return;
                        }
                        let worker = self.least_loaded_worker();
                        self.rooms.insert(
                            room.clone(),
                            RoomEntry {
                                worker,
                                members: 0,
                                epoch: *epoch,
                            },
                        );
                        self.room_placed(room);
                    }
                }
                let Some(r) = self.rooms.get_mut(room) else {
                    return;
                };
                r.members += 1;
                let worker = r.worker;
                self.routes.insert(
                    participant.clone(),
                    Route {
                        worker,
                        room: room.clone(),
                        owner: Some(peer),
                        orphaned_since: None,
                    },
                );
                (
                    worker,
                    PendingKind::Join,
                    participant.clone(),
                    Some(room.clone()),
                )
            }
            Request::Answer { participant, .. }
            | Request::Offer { participant, .. }
            | Request::Leave { participant }
            | Request::Attach { participant, .. } => {
                let Some(route) = self.routes.get_mut(participant) else {
                    self.respond(
                        peer,
                        id,
                        Response::error(
                            ErrorCode::UnknownParticipant,
                            format!("no participant {participant:?} on this dataplane"),
                        ),
                    );
                    return;
                };
                if matches!(request, Request::Attach { .. }) {
                    // Ownership moves only once the worker verified the resume key (see
                    // `handle_reports`); until then events keep going to the old owner.
                }
                (route.worker, PendingKind::Other, participant.clone(), None)
            }
        };
        let tag = self.next_tag;
        self.next_tag += 1;
        let Some(w) = self.workers.get(worker as usize) else {
            self.respond(
                peer,
                id,
                Response::error(ErrorCode::Internal, "no such worker"),
            );
            return;
        };
        let is_attach = matches!(request, Request::Attach { .. });
        match w.commands.try_send(Command::request(tag, request)) {
            Ok(()) => {
                let _ = w.waker.wake();
                self.pending.insert(
                    tag,
                    Pending {
                        peer,
                        id,
                        kind: if is_attach { PendingKind::Other } else { kind },
                        participant,
                        room,
                    },
                );
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                if let PendingKind::Join = kind {
                    self.forget_join(&participant, room.as_deref());
                }
                self.respond(
                    peer,
                    id,
                    Response::error(ErrorCode::Unavailable, "worker is overloaded; retry later"),
                );
            }
        }
    }

    /// Tell the registry thread this node hosts `room` under its current epoch.
    fn room_placed(&self, room: &str) {
        if let (Some(c), Some(epoch)) = (&self.cluster, self.rooms.get(room).and_then(|r| r.epoch))
        {
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
    fn room_gone(&mut self, room: &str) {
        if let Some(r) = self.rooms.remove(room)
            && let (Some(c), Some(epoch)) = (&self.cluster, r.epoch)
        {
            c.send(ClusterCmd::RoomClosed {
                room: room.to_string(),
                placement: Placement {
                    node: self.settings.node_id.clone(),
                    epoch,
                },
            });
        }
    }

    /// The worker with the fewest participants (rooms as tie-breaker).
    fn least_loaded_worker(&self) -> u32 {
        let mut load = vec![(0usize, 0usize); self.workers.len()];
        for r in self.rooms.values() {
            if let Some(l) = load.get_mut(r.worker as usize) {
                l.0 += r.members;
                l.1 += 1;
            }
        }
        load.iter()
            .enumerate()
            .min_by_key(|(_, l)| **l)
            .map_or(0, |(i, _)| i as u32)
    }

    /// Undo the routing of a join that failed.
    fn forget_join(&mut self, participant: &str, room: Option<&str>) {
        self.routes.remove(participant);
        if let Some(room) = room
            && let Some(r) = self.rooms.get_mut(room)
        {
            r.members = r.members.saturating_sub(1);
            if r.members == 0 {
                self.room_gone(room);
            }
        }
    }

    fn handle_reports(&mut self) {
        while let Ok((worker, report)) = self.reports.try_recv() {
            match report {
                Report::Response { tag, response } => {
                    let Some(p) = self.pending.remove(&tag) else {
                        continue;
                    };
                    match (&p.kind, &response) {
                        (PendingKind::Join, Response::Error { .. }) => {
                            self.forget_join(&p.participant, p.room.as_deref())
                        }
                        (_, Response::Attached { .. }) => {
                            if let Some(r) = self.routes.get_mut(&p.participant) {
                                r.owner = Some(p.peer);
                                r.orphaned_since = None;
                            }
                        }
                        _ => {}
                    }
                    self.respond(p.peer, p.id, response);
                }
                Report::Event(event) => {
                    match self.routes.get(event.participant()).and_then(|r| r.owner) {
                        Some(peer) => self.send(peer, &FromDataplane::Event { event }),
                        None => debug!(
                            participant = event.participant(),
                            "event for a participant without signaling"
                        ),
                    }
                }
                Report::ParticipantClosed { participant } => {
                    if self
                        .routes
                        .get(&participant)
                        .is_some_and(|r| r.worker == worker)
                        && let Some(route) = self.routes.remove(&participant)
                        && let Some(r) = self.rooms.get_mut(&route.room)
                    {
                        r.members = r.members.saturating_sub(1);
                        if r.members == 0 {
                            self.room_gone(&route.room);
                        }
                    }
                }
                Report::RoomClosed { room } => {
                    if self
                        .rooms
                        .get(&room)
                        .is_some_and(|r| r.worker == worker && r.members == 0)
                    {
                        self.room_gone(&room);
                    }
                }
                Report::Stats(mut s) => {
                    self.metrics.observe_worker(&s);
                    s.join_seconds.clear();
                    if let Some(slot) = self.stats.get_mut(worker as usize) {
                        *slot = s;
                    }
                }
            }
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
                    let peer = match self.remote_ids.get(&env.from) {
                        Some(p) => *p,
                        None => {
                            let p = self.peers.insert(Peer::Remote {
                                signaling: env.from.clone(),
                                last_seen: Instant::now(),
                            });
                            self.remote_ids.insert(env.from.clone(), p);
                            p
                        }
                    };
                    if let Some(Peer::Remote { last_seen, .. }) = self.peers.get_mut(peer) {
                        *last_seen = Instant::now();
                    }
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
                    if b.kind == BeaconKind::Signaling
                        && let Some(p) = self.remote_ids.get(&b.id)
                        && let Some(Peer::Remote { last_seen, .. }) = self.peers.get_mut(*p)
                    {
                        *last_seen = Instant::now();
                    }
                }
                ClusterIn::Fenced { room } => {
                    let members: Vec<(String, u32)> = self
                        .routes
                        .iter()
                        .filter(|(_, r)| r.room == room)
                        .map(|(p, r)| (p.clone(), r.worker))
                        .collect();
                    for (participant, worker) in members {
                        self.command(
                            worker,
                            Op::Remove {
                                participant,
                                reason: LeaveReason::Moved,
                            },
                        );
                    }
                    if let Some(r) = self.rooms.get_mut(&room) {
                        // Never release the new owner's mapping.
                        r.epoch = None;
                    }
                }
                ClusterIn::Subscribed(up) => {
                    self.subscribed = up;
                    if up {
                        // Silence while we could not hear anyone proves nothing.
                        let now = Instant::now();
                        for (_, p) in self.peers.iter_mut() {
                            if let Peer::Remote { last_seen, .. } = p {
                                *last_seen = now;
                            }
                        }
                    }
                }
                ClusterIn::Deregistered => {
                    info!("deregistered: exiting after the drain");
                    self.shutdown.store(true, Ordering::SeqCst);
                }
            }
        }
    }

    fn flush_locals(&mut self) {
        let mut dead = Vec::new();
        for (id, p) in self.peers.iter_mut() {
            let Peer::Local {
                stream,
                framed,
                writable,
                ..
            } = p
            else {
                continue;
            };
            if framed.pending_out() == 0 {
                continue;
            }
            match framed.flush_to(stream) {
                Ok(done) => {
                    if done == *writable {
                        let interest = if done {
                            Interest::READABLE
                        } else {
                            Interest::READABLE | Interest::WRITABLE
                        };
                        let _ = self.poll.registry().reregister(
                            stream,
                            Token(id + FIRST_CONN),
                            interest,
                        );
                        *writable = !done;
                    }
                }
                Err(_) => dead.push(id),
            }
        }
        for id in dead {
            self.close_peer(id);
        }
    }
}

/// CPU seconds (user + system) this process has used, from `/proc/self/stat`; 0 elsewhere.
fn process_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// Serve `GET /metrics` (Prometheus text) and `GET /healthz` on `addr` from a small thread of its
/// own, reading the text the control thread refreshes every second. Connections are handled one
/// at a time with short timeouts: this is for a scraper, not for the public.
pub fn serve_metrics(
    addr: std::net::SocketAddr,
    text: Arc<std::sync::Mutex<String>>,
    shutdown: Arc<AtomicBool>,
) -> io::Result<std::net::SocketAddr> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        while !shutdown.load(Ordering::Relaxed) {
            let mut s = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                Err(_) => continue,
            };
            let _ = s.set_nonblocking(false);
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            let _ = s.set_write_timeout(Some(Duration::from_millis(500)));
            let mut buf = [0u8; 2048];
            let n = s.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let (status, ctype, body) = if req.starts_with("GET /metrics") {
                let body = text.lock().map(|t| t.clone()).unwrap_or_default();
                ("200 OK", "application/openmetrics-text; version=1.0.0; charset=utf-8", body)
            } else if req.starts_with("GET /healthz") {
                ("200 OK", "text/plain", "ok\n".to_string())
            } else {
                ("404 Not Found", "text/plain", "not found\n".to_string())
            };
            let _ = write!(s, "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        }
    })?;
    Ok(local)
}
