//! The control thread: serves the Unix socket for signaling processes and routes between them and
//! the workers. It never touches media; workers never wait for it.
//!
//! Routing state kept here: room → worker (a room lives on exactly one worker), participant →
//! (worker, owning connection), request tags → (connection, request id). A connection that
//! closes loses its participants' events but not the participants: media keeps flowing and a new
//! connection takes them over with `attach`.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use control::{
    ErrorCode, Framed, FromDataplane, NodeStats, PROTOCOL_VERSION, ReadStatus, Request, Response,
    ToDataplane, WorkerStats,
};
use crossbeam_channel::{Receiver, TrySendError};
use mio::net::{UnixListener, UnixStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use tracing::{debug, info, warn};

use super::worker::WorkerHandle;
use crate::core::{Command, Report};

const LISTENER: Token = Token(0);
pub const CONTROL_WAKER: Token = Token(1);
const FIRST_CONN: usize = 2;
/// How often every connection gets a [`FromDataplane::Health`] report.
const HEALTH_INTERVAL: Duration = Duration::from_secs(2);

/// Settings of the control thread.
#[derive(Debug, Clone)]
pub struct ControlSettings {
    pub socket_path: PathBuf,
    pub node_id: String,
    pub max_frame: usize,
}

struct Conn {
    stream: UnixStream,
    framed: Framed,
    /// Name from `hello`; `None` until the handshake is done.
    client: Option<String>,
    writable: bool,
}

struct Route {
    worker: u32,
    room: String,
    owner: Option<usize>,
}

#[derive(Clone, Copy)]
enum PendingKind {
    Join,
    Other,
}

struct Pending {
    conn: usize,
    id: u64,
    kind: PendingKind,
    participant: String,
    room: Option<String>,
}

struct RoomEntry {
    worker: u32,
    members: usize,
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
    conns: Slab<Conn>,
    workers: Vec<WorkerHandle>,
    reports: Receiver<(u32, Report)>,
    rooms: HashMap<String, RoomEntry>,
    routes: HashMap<String, Route>,
    pending: HashMap<u64, Pending>,
    next_tag: u64,
    stats: Vec<WorkerStats>,
    shutdown: Arc<AtomicBool>,
}

impl ControlServer {
    pub fn new(
        settings: ControlSettings,
        poll: Poll,
        mut listener: UnixListener,
        workers: Vec<WorkerHandle>,
        reports: Receiver<(u32, Report)>,
        shutdown: Arc<AtomicBool>,
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
            conns: Slab::new(),
            workers,
            reports,
            rooms: HashMap::new(),
            routes: HashMap::new(),
            pending: HashMap::new(),
            next_tag: 1,
            stats,
            shutdown,
        })
    }

    /// Create the poll whose waker the workers use to signal reports.
    pub fn poll_and_waker() -> io::Result<(Poll, Arc<Waker>)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), CONTROL_WAKER)?);
        Ok((poll, waker))
    }

    /// Run until shutdown; then wait (bounded) for the workers to stop and return them.
    pub fn run(mut self) -> Vec<WorkerHandle> {
        let mut events = Events::with_capacity(128);
        let mut next_health = Instant::now() + HEALTH_INTERVAL;
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
                        let id = t - FIRST_CONN;
                        if ev.is_readable() || ev.is_read_closed() {
                            self.read_conn(id);
                        }
                    }
                }
            }
            self.handle_reports();
            if Instant::now() >= next_health {
                next_health = Instant::now() + HEALTH_INTERVAL;
                self.broadcast_health();
            }
            self.flush_conns();
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
            self.flush_conns();
        }
        let _ = std::fs::remove_file(&self.settings.socket_path);
        std::mem::take(&mut self.workers)
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
            .conns
            .iter()
            .filter(|(_, c)| c.client.is_some())
            .map(|(i, _)| i)
            .collect();
        for id in ready {
            self.send(id, &msg);
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    let entry = self.conns.vacant_entry();
                    let token = Token(entry.key() + FIRST_CONN);
                    if let Err(e) =
                        self.poll
                            .registry()
                            .register(&mut stream, token, Interest::READABLE)
                    {
                        warn!(error = %e, "register control connection");
                        continue;
                    }
                    debug!(conn = entry.key(), "control connection accepted");
                    entry.insert(Conn {
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

    fn read_conn(&mut self, id: usize) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let status = conn.framed.read_from(&mut conn.stream);
        loop {
            let Some(conn) = self.conns.get_mut(id) else {
                return;
            };
            match conn.framed.next_message::<ToDataplane>() {
                Ok(Some(msg)) => self.handle_message(id, msg),
                Ok(None) => break,
                Err(e) => {
                    warn!(conn = id, error = %e, "bad control frame; closing connection");
                    self.close_conn(id);
                    return;
                }
            }
        }
        if !matches!(status, Ok(ReadStatus::Open)) {
            self.close_conn(id);
        }
    }

    fn close_conn(&mut self, id: usize) {
        let Some(mut conn) = self.conns.try_remove(id) else {
            return;
        };
        let _ = conn.framed.flush_to(&mut conn.stream);
        let _ = self.poll.registry().deregister(&mut conn.stream);
        let mut orphaned = 0;
        for r in self.routes.values_mut() {
            if r.owner == Some(id) {
                r.owner = None;
                orphaned += 1;
            }
        }
        info!(conn = id, client = ?conn.client, orphaned, "control connection closed; its sessions keep running");
    }

    fn send(&mut self, conn: usize, msg: &FromDataplane) {
        if let Some(c) = self.conns.get_mut(conn)
            && let Err(e) = c.framed.queue(msg)
        {
            warn!(conn, error = %e, "control connection not reading; closing it");
            self.close_conn(conn);
        }
    }

    fn respond(&mut self, conn: usize, id: u64, response: Response) {
        self.send(conn, &FromDataplane::Response { id, response });
    }

    fn handle_message(&mut self, conn: usize, msg: ToDataplane) {
        let hello_done = self.conns.get(conn).is_some_and(|c| c.client.is_some());
        match msg {
            ToDataplane::Hello { version, client } => {
                if version != PROTOCOL_VERSION {
                    self.respond(
                        conn,
                        0,
                        Response::error(
                            ErrorCode::UnsupportedVersion,
                            format!("protocol version {version} not supported; this dataplane speaks {PROTOCOL_VERSION}"),
                        ),
                    );
                    self.flush_conns();
                    self.close_conn(conn);
                    return;
                }
                info!(conn, %client, "control client connected");
                if let Some(c) = self.conns.get_mut(conn) {
                    c.client = Some(client);
                }
                let welcome = FromDataplane::Welcome {
                    version: PROTOCOL_VERSION,
                    node_id: self.settings.node_id.clone(),
                    workers: self.workers.len() as u32,
                };
                self.send(conn, &welcome);
            }
            ToDataplane::Request { id, .. } if !hello_done => {
                self.respond(
                    conn,
                    id,
                    Response::error(ErrorCode::BadRequest, "hello first"),
                );
                self.flush_conns();
                self.close_conn(conn);
            }
            ToDataplane::Request { id, request } => self.handle_request(conn, id, request),
        }
    }

    fn handle_request(&mut self, conn: usize, id: u64, request: Request) {
        if self.shutdown.load(Ordering::Relaxed) {
            self.respond(
                conn,
                id,
                Response::error(ErrorCode::Unavailable, "dataplane is shutting down"),
            );
            return;
        }
        let (worker, kind, participant, room) = match &request {
            Request::Stats => {
                let stats = self.node_stats();
                self.respond(conn, id, Response::Stats(stats));
                return;
            }
            Request::Join {
                room, participant, ..
            } => {
                if self.routes.contains_key(participant) {
                    self.respond(
                        conn,
                        id,
                        Response::error(
                            ErrorCode::DuplicateParticipant,
                            format!("participant {participant:?} already exists"),
                        ),
                    );
                    return;
                }
                let worker = match self.rooms.get(room) {
                    Some(r) => r.worker,
                    None => self.least_loaded_worker(),
                };
                self.rooms
                    .entry(room.clone())
                    .or_insert(RoomEntry { worker, members: 0 })
                    .members += 1;
                self.routes.insert(
                    participant.clone(),
                    Route {
                        worker,
                        room: room.clone(),
                        owner: Some(conn),
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
            | Request::Attach { participant } => {
                let Some(route) = self.routes.get_mut(participant) else {
                    self.respond(
                        conn,
                        id,
                        Response::error(
                            ErrorCode::UnknownParticipant,
                            format!("no participant {participant:?} on this dataplane"),
                        ),
                    );
                    return;
                };
                if matches!(request, Request::Attach { .. }) {
                    route.owner = Some(conn);
                }
                (route.worker, PendingKind::Other, participant.clone(), None)
            }
        };
        let tag = self.next_tag;
        self.next_tag += 1;
        let Some(w) = self.workers.get(worker as usize) else {
            self.respond(
                conn,
                id,
                Response::error(ErrorCode::Internal, "no such worker"),
            );
            return;
        };
        match w.commands.try_send(Command { tag, request }) {
            Ok(()) => {
                let _ = w.waker.wake();
                self.pending.insert(
                    tag,
                    Pending {
                        conn,
                        id,
                        kind,
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
                    conn,
                    id,
                    Response::error(ErrorCode::Unavailable, "worker is overloaded; retry later"),
                );
            }
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
                self.rooms.remove(room);
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
                    if let (PendingKind::Join, Response::Error { .. }) = (p.kind, &response) {
                        self.forget_join(&p.participant, p.room.as_deref());
                    }
                    self.respond(p.conn, p.id, response);
                }
                Report::Event(event) => {
                    match self.routes.get(event.participant()).and_then(|r| r.owner) {
                        Some(conn) => self.send(conn, &FromDataplane::Event { event }),
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
                            self.rooms.remove(&route.room);
                        }
                    }
                }
                Report::RoomClosed { room } => {
                    if self.rooms.get(&room).is_some_and(|r| r.worker == worker) {
                        self.rooms.remove(&room);
                    }
                }
                Report::Stats(s) => {
                    if let Some(slot) = self.stats.get_mut(worker as usize) {
                        *slot = s;
                    }
                }
            }
        }
    }

    fn flush_conns(&mut self) {
        let mut dead = Vec::new();
        for (id, c) in self.conns.iter_mut() {
            if c.framed.pending_out() == 0 {
                continue;
            }
            match c.framed.flush_to(&mut c.stream) {
                Ok(true) => {
                    if c.writable {
                        let _ = self.poll.registry().reregister(
                            &mut c.stream,
                            Token(id + FIRST_CONN),
                            Interest::READABLE,
                        );
                        c.writable = false;
                    }
                }
                Ok(false) => {
                    if !c.writable {
                        let _ = self.poll.registry().reregister(
                            &mut c.stream,
                            Token(id + FIRST_CONN),
                            Interest::READABLE | Interest::WRITABLE,
                        );
                        c.writable = true;
                    }
                }
                Err(_) => dead.push(id),
            }
        }
        for id in dead {
            self.close_conn(id);
        }
    }
}
