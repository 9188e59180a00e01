//! The signaling server: one mio loop serving HTTP (the page), WebSockets (sessions), the
//! control connection to the local dataplane and, in cluster mode, the Redis link to every node.
//!
//! Routing: a session's requests go to the node that owns its room. The local node is reached
//! over the Unix socket; any other node (or the local one while its socket is down) over Redis
//! pub/sub. Responses and events come back the same way and are matched by request id and
//! participant id.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use control::registry::{Placement, RedisSettings, RegistryError};
use control::{
    Framed, FromDataplane, PROTOCOL_VERSION, ReadStatus, Request, Response, ToDataplane,
};
use mio::net::{TcpListener, TcpStream, UnixStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use tracing::{debug, info, warn};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};

use crate::auth::{Auth, TurnConfig};
use crate::cluster::{Cluster, ClusterEvent, Job};
use crate::http::{self, HeadError};
use crate::metrics::{Metrics, ResultLabel};
use crate::page;
use crate::protocol::{ErrorCode, IceServer, ServerMsg};
use crate::session::{Action, JoinContext, Session};

const LISTENER: Token = Token(0);
const CONTROL: Token = Token(1);
const WAKER: Token = Token(2);
const FIRST_CONN: usize = 3;
/// A node not heard from for this long (while we hear others) has failed.
const NODE_DEAD_AFTER: Duration = Duration::from_millis(1500);

/// Server settings (see `main.rs` for the CLI).
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub control_socket: PathBuf,
    pub ice_servers: Vec<IceServer>,
    pub turn: Option<TurnConfig>,
    /// HS256 secret for join tokens; `None` = no authentication.
    pub jwt_secret: Option<Vec<u8>>,
    /// Cluster mode: Redis registry and pub/sub.
    pub redis: Option<RedisSettings>,
    /// Id of this instance (its reply channel in cluster mode).
    pub signaling_id: String,
    /// Largest WebSocket message; larger ones close the connection with 1009.
    pub max_message: usize,
    pub max_connections: usize,
    /// Per connection: sustained messages per second and burst.
    pub rate_per_sec: f64,
    pub rate_burst: f64,
    /// An HTTP request head must arrive within this time.
    pub http_timeout: Duration,
    /// How long a control request may stay unanswered before the client gets `unavailable`.
    pub request_timeout: Duration,
}

impl Settings {
    pub fn new(listen: SocketAddr, control_socket: PathBuf) -> Self {
        Self {
            listen,
            control_socket,
            ice_servers: Vec::new(),
            turn: None,
            jwt_secret: None,
            redis: None,
            signaling_id: format!("sig-{:08x}", rand::random::<u32>()),
            max_message: 1 << 20,
            max_connections: 20_000,
            rate_per_sec: 20.0,
            rate_burst: 50.0,
            http_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
        }
    }
}

enum ConnState {
    /// Reading a request head.
    Http { stream: TcpStream, buf: Vec<u8> },
    /// Writing an HTTP response, then closing.
    Respond {
        stream: TcpStream,
        out: Vec<u8>,
        pos: usize,
    },
    Ws {
        ws: Box<WebSocket<TcpStream>>,
        session: Session,
    },
    /// Transitional placeholder while a state is being replaced.
    Gone,
}

/// Token bucket limiting client messages per connection.
struct RateLimit {
    tokens: f64,
    at: Instant,
    /// Messages refused in a row; a client that keeps flooding is disconnected.
    refused: u32,
}

struct Conn {
    state: ConnState,
    since: Instant,
    writable: bool,
    /// When we started closing the WebSocket; the socket is dropped 2 s later at the latest.
    closing: Option<Instant>,
    rate: RateLimit,
    /// When the current join started (for the join-duration histogram).
    join_started: Option<Instant>,
}

/// The control connection to the local dataplane.
struct ControlLink {
    path: PathBuf,
    stream: Option<UnixStream>,
    framed: Framed,
    ready: bool,
    /// The last health report and when it arrived.
    last_health: Option<(Instant, control::NodeStats)>,
    retry_at: Instant,
    backoff: Duration,
    writable: bool,
    /// Since when the connection has been down (for node-failure detection without Redis).
    down_since: Option<Instant>,
}

struct PendingRequest {
    conn: Option<usize>,
    node: String,
    request: Request,
    sent: Instant,
}

/// Liveness of media nodes as seen from here.
#[derive(Default)]
struct Liveness {
    /// Last beacon per dataplane node.
    seen: HashMap<String, Instant>,
    /// The Redis subscription came up at (None: down).
    subscribed_since: Option<Instant>,
    /// Last beacon of anyone (proof the subscription delivers).
    last_any: Option<Instant>,
    /// Nodes already declared failed (and when), so each failure is handled once.
    failed: HashMap<String, Instant>,
    next_check: Option<Instant>,
}

/// The server. See the module docs.
pub struct Server {
    settings: Settings,
    poll: Poll,
    listener: TcpListener,
    conns: Slab<Conn>,
    control: ControlLink,
    local_node: Option<String>,
    cluster: Option<Cluster>,
    pending: HashMap<u64, PendingRequest>,
    placements: HashMap<u64, usize>,
    next_id: u64,
    by_participant: HashMap<String, usize>,
    ctx: JoinContext,
    live: Liveness,
    metrics: Metrics,
    shutdown: Arc<AtomicBool>,
}

impl Server {
    pub fn bind(settings: Settings, shutdown: Arc<AtomicBool>) -> anyhow::Result<Self> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(settings.listen)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let cluster = match &settings.redis {
            Some(r) => Some(Cluster::start(
                r.clone(),
                settings.signaling_id.clone(),
                waker,
            )?),
            None => None,
        };
        let ctx = JoinContext {
            ice_servers: settings.ice_servers.clone(),
            turn: settings.turn.clone(),
            auth: settings.jwt_secret.as_deref().map(Auth::new),
            now_unix: 0,
        };
        let control = ControlLink {
            path: settings.control_socket.clone(),
            stream: None,
            framed: Framed::new(control::DEFAULT_MAX_FRAME),
            ready: false,
            last_health: None,
            retry_at: Instant::now(),
            backoff: Duration::from_millis(100),
            writable: false,
            down_since: Some(Instant::now()),
        };
        Ok(Self {
            settings,
            poll,
            listener,
            conns: Slab::with_capacity(1024),
            control,
            local_node: None,
            cluster,
            pending: HashMap::new(),
            placements: HashMap::new(),
            next_id: 1,
            by_participant: HashMap::new(),
            ctx,
            live: Liveness::default(),
            metrics: Metrics::new(),
            shutdown,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Whether this instance can serve joins: the local dataplane is connected, or (cluster mode)
    /// Redis is reachable.
    fn healthy(&self) -> bool {
        self.control.ready || self.live.subscribed_since.is_some()
    }

    /// Run until the shutdown flag is set; then close every WebSocket with 1012 (service restart)
    /// so clients resume through another instance right away.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        while !self.shutdown.load(Ordering::Relaxed) {
            let now = Instant::now();
            if self.control.stream.is_none() && now >= self.control.retry_at {
                self.connect_control(now);
            }
            let timeout = if self.control.stream.is_none() {
                self.control
                    .retry_at
                    .saturating_duration_since(now)
                    .min(Duration::from_millis(250))
            } else {
                Duration::from_millis(250)
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout))
                && e.kind() != io::ErrorKind::Interrupted
            {
                return Err(e);
            }
            self.ctx.now_unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    CONTROL => {
                        self.control_ready(ev.is_readable() || ev.is_read_closed() || ev.is_error())
                    }
                    WAKER => {}
                    Token(t) => self.conn_ready(t - FIRST_CONN),
                }
            }
            self.handle_cluster();
            let now = Instant::now();
            self.expire(now);
            self.check_nodes(now);
            self.flush_control();
        }
        info!("signaling stopping: closing websockets with 1012 so clients resume elsewhere");
        let ids: Vec<usize> = self.conns.iter().map(|(i, _)| i).collect();
        for id in ids {
            if let Some(Conn {
                state: ConnState::Ws { ws, .. },
                ..
            }) = self.conns.get_mut(id)
            {
                let _ = ws.close(Some(CloseFrame {
                    code: CloseCode::Restart,
                    reason: "signaling restarting; resume".into(),
                }));
                let _ = ws.flush();
            }
        }
        if let Some(c) = self.cluster.take() {
            c.stop();
        }
        Ok(())
    }

    // -------------------------------------------------------------------------------------------
    // Control connection (local dataplane)

    fn connect_control(&mut self, now: Instant) {
        match UnixStream::connect(&self.control.path) {
            Ok(mut stream) => {
                if let Err(e) = self.poll.registry().register(
                    &mut stream,
                    CONTROL,
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    warn!(error = %e, "register control stream");
                    return;
                }
                self.control.writable = true;
                self.control.framed = Framed::new(control::DEFAULT_MAX_FRAME);
                let hello = ToDataplane::Hello {
                    version: PROTOCOL_VERSION,
                    client: format!("{}@{}", self.settings.signaling_id, self.settings.listen),
                };
                let _ = self.control.framed.queue(&hello);
                self.control.stream = Some(stream);
                debug!(path = %self.control.path.display(), "control socket connected; handshaking");
            }
            Err(e) => {
                self.control.retry_at = now + self.control.backoff;
                if self.control.backoff >= Duration::from_secs(2) {
                    debug!(error = %e, "dataplane control socket not reachable");
                }
                self.control.backoff = (self.control.backoff * 2).min(Duration::from_secs(2));
            }
        }
    }

    fn control_ready(&mut self, readable: bool) {
        let Some(stream) = self.control.stream.as_mut() else {
            return;
        };
        if readable {
            let status = self.control.framed.read_from(stream);
            loop {
                match self.control.framed.next_message::<FromDataplane>() {
                    Ok(Some(msg)) => self.handle_dataplane_message(msg, true),
                    Ok(None) => break,
                    Err(e) => {
                        warn!(error = %e, "bad frame from dataplane");
                        self.control_lost();
                        return;
                    }
                }
            }
            if !matches!(status, Ok(ReadStatus::Open)) {
                self.control_lost();
                return;
            }
        }
        self.flush_control();
    }

    fn flush_control(&mut self) {
        let Some(stream) = self.control.stream.as_mut() else {
            return;
        };
        match self.control.framed.flush_to(stream) {
            Ok(done) => {
                if done == self.control.writable {
                    let interest = if done {
                        Interest::READABLE
                    } else {
                        Interest::READABLE | Interest::WRITABLE
                    };
                    let _ = self.poll.registry().reregister(stream, CONTROL, interest);
                    self.control.writable = !done;
                }
            }
            Err(_) => self.control_lost(),
        }
    }

    fn control_lost(&mut self) {
        if let Some(mut s) = self.control.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        if self.control.ready {
            warn!("lost the dataplane control connection; sessions keep their media, reconnecting");
            self.control.down_since = Some(Instant::now());
        }
        self.control.ready = false;
        self.control.retry_at = Instant::now() + Duration::from_millis(100);
        self.control.backoff = Duration::from_millis(200);
        // Requests sent over the socket will not be answered on a new connection.
        let local = self.local_node.clone();
        let lost: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| Some(&p.node) == local.as_ref() && self.cluster.is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            if let Some(p) = self.pending.remove(&id) {
                self.fail_request(p, "the media server connection was lost");
            }
        }
    }

    /// A message from a dataplane: over the socket (`local`) or Redis.
    fn handle_dataplane_message(&mut self, msg: FromDataplane, local: bool) {
        match msg {
            FromDataplane::Welcome {
                node_id, workers, ..
            } if local => {
                info!(%node_id, workers, "connected to the local dataplane");
                self.control.ready = true;
                self.control.down_since = None;
                self.control.backoff = Duration::from_millis(100);
                self.live.failed.remove(&node_id);
                self.local_node = Some(node_id.clone());
                // Re-attach every session on this node to this connection.
                let ids: Vec<usize> = self.conns.iter().map(|(i, _)| i).collect();
                for id in ids {
                    let actions = match self.conns.get_mut(id).map(|c| &mut c.state) {
                        Some(ConnState::Ws { session, .. }) => {
                            session.handle_control_restored(&node_id)
                        }
                        _ => continue,
                    };
                    self.apply(id, actions);
                }
            }
            FromDataplane::Welcome { .. } => {}
            FromDataplane::Health { stats } => {
                self.control.last_health = Some((Instant::now(), stats));
            }
            FromDataplane::Response { id, response } => {
                let Some(p) = self.pending.remove(&id) else {
                    return;
                };
                self.deliver_response(p, response);
            }
            FromDataplane::Event { event } => {
                let Some(conn) = self.by_participant.get(event.participant()).copied() else {
                    return;
                };
                let actions = match self.conns.get_mut(conn).map(|c| &mut c.state) {
                    Some(ConnState::Ws { session, .. }) => session.handle_event(event),
                    _ => return,
                };
                self.apply(conn, actions);
            }
        }
    }

    fn handle_cluster(&mut self) {
        let Some(c) = &self.cluster else {
            return;
        };
        let events: Vec<ClusterEvent> = c.rx.try_iter().collect();
        for e in events {
            match e {
                ClusterEvent::Placed { ticket, result } => {
                    let Some(conn) = self.placements.remove(&ticket) else {
                        continue;
                    };
                    self.deliver_placement(conn, result);
                }
                ClusterEvent::Reply(msg) => self.handle_dataplane_message(msg, false),
                ClusterEvent::Beacon(b) => {
                    let now = Instant::now();
                    self.live.last_any = Some(now);
                    if b.kind == control::BeaconKind::Dataplane {
                        self.live.seen.insert(b.id.clone(), now);
                        self.live.failed.remove(&b.id);
                    }
                }
                ClusterEvent::Subscribed(up) => {
                    self.live.subscribed_since = up.then(Instant::now);
                }
                ClusterEvent::RpcFailed { msg, .. } => {
                    self.metrics.redis_errors.inc();
                    if let ToDataplane::Request { id, .. } = msg
                        && let Some(p) = self.pending.remove(&id)
                    {
                        self.fail_request(p, "the media node could not be reached; retry later");
                    }
                }
            }
        }
    }

    /// Declare failed the nodes that went silent, and close their rooms for their clients.
    fn check_nodes(&mut self, now: Instant) {
        if self.live.next_check.is_some_and(|t| now < t) {
            return;
        }
        self.live.next_check = Some(now + Duration::from_millis(250));
        let mut dead: HashSet<String> = HashSet::new();
        if self.cluster.is_some() {
            // Silence only means something while the subscription demonstrably delivers.
            let healthy = self
                .live
                .subscribed_since
                .is_some_and(|t| now.duration_since(t) > NODE_DEAD_AFTER)
                && self
                    .live
                    .last_any
                    .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1));
            if healthy {
                let since = self.live.subscribed_since.unwrap_or(now);
                for (_, c) in self.conns.iter() {
                    if let ConnState::Ws { session, .. } = &c.state
                        && let Some(node) = session.node()
                        && now.duration_since(self.live.seen.get(node).copied().unwrap_or(since))
                            > NODE_DEAD_AFTER
                    {
                        dead.insert(node.to_string());
                    }
                }
            }
        } else if let (Some(local), Some(down)) = (&self.local_node, self.control.down_since)
            && now.duration_since(down) > NODE_DEAD_AFTER
        {
            dead.insert(local.clone());
        }
        for node in dead {
            if self.live.failed.contains_key(&node) {
                continue;
            }
            warn!(%node, "media node failed: closing its rooms for our clients");
            self.live.failed.insert(node.clone(), now);
            if let Some(c) = &self.cluster {
                c.send(Job::MarkDead { node: node.clone() });
            }
            let ids: Vec<usize> = self.conns.iter().map(|(i, _)| i).collect();
            for id in ids {
                let actions = match self.conns.get_mut(id).map(|c| &mut c.state) {
                    Some(ConnState::Ws { session, .. }) => session.handle_node_failed(&node),
                    _ => continue,
                };
                self.apply(id, actions);
            }
            let stale: Vec<u64> = self
                .pending
                .iter()
                .filter(|(_, p)| p.node == node)
                .map(|(i, _)| *i)
                .collect();
            for id in stale {
                if let Some(p) = self.pending.remove(&id) {
                    self.fail_request(p, "the media node failed");
                }
            }
        }
    }

    fn deliver_placement(&mut self, conn: usize, result: Result<Placement, RegistryError>) {
        if let Err(e) = &result {
            self.metrics
                .joins
                .get_or_create(&ResultLabel { result: "error" })
                .inc();
            if matches!(
                e,
                RegistryError::Unavailable(_) | RegistryError::Protocol(_)
            ) && self.cluster.is_some()
            {
                self.metrics.redis_errors.inc();
            }
        }
        let actions = match self.conns.get_mut(conn).map(|c| &mut c.state) {
            Some(ConnState::Ws { session, .. }) => session.handle_placement(result),
            _ => return,
        };
        self.apply(conn, actions);
    }

    fn place(&mut self, conn: usize, room: String, exclude: Vec<String>) {
        match &self.cluster {
            Some(c) => {
                let ticket = self.next_id;
                self.next_id += 1;
                self.placements.insert(ticket, conn);
                c.send(Job::Place {
                    ticket,
                    room,
                    exclude,
                });
            }
            None => {
                // Single node: the local dataplane owns every room.
                let result = match &self.local_node {
                    Some(node) if self.control.ready && !exclude.contains(node) => Ok(Placement {
                        node: node.clone(),
                        epoch: 0,
                    }),
                    _ => Err(RegistryError::Unavailable(
                        "the media server is not reachable".into(),
                    )),
                };
                self.deliver_placement(conn, result);
            }
        }
    }

    fn deliver_response(&mut self, p: PendingRequest, response: Response) {
        let Some(conn) = p.conn.filter(|c| self.conns.contains(*c)) else {
            // The client went away while its join was in flight: undo it.
            if let (Request::Join { participant, .. }, Response::Joined { .. }) =
                (&p.request, &response)
            {
                self.send_request(
                    None,
                    p.node.clone(),
                    Request::Leave {
                        participant: participant.clone(),
                    },
                );
            }
            return;
        };
        let ok = !matches!(response, Response::Error { .. });
        let result = if ok { "ok" } else { "error" };
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        match &p.request {
            Request::Join { .. } => {
                self.metrics
                    .joins
                    .get_or_create(&ResultLabel { result })
                    .inc();
                if let (true, Some(t)) = (ok, c.join_started.take()) {
                    self.metrics.join_seconds.observe(t.elapsed().as_secs_f64());
                }
            }
            Request::Attach { .. } => {
                self.metrics
                    .resumes
                    .get_or_create(&ResultLabel { result })
                    .inc();
                if let (true, Some(t)) = (ok, c.join_started.take()) {
                    self.metrics.join_seconds.observe(t.elapsed().as_secs_f64());
                }
            }
            _ => {}
        }
        let actions = match &mut c.state {
            ConnState::Ws { session, .. } => {
                session.handle_response(&p.request, response, &self.ctx)
            }
            _ => return,
        };
        self.apply(conn, actions);
    }

    fn fail_request(&mut self, p: PendingRequest, why: &str) {
        let resp = Response::error(control::ErrorCode::Unavailable, why);
        self.deliver_response(p, resp);
    }

    /// Send `request` to `node`: over the socket if it is the local node and the socket is up,
    /// else over Redis, else fail it with `unavailable`.
    fn send_request(&mut self, conn: Option<usize>, node: String, request: Request) {
        let id = self.next_id;
        self.next_id += 1;
        let p = PendingRequest {
            conn,
            node: node.clone(),
            request,
            sent: Instant::now(),
        };
        let msg = ToDataplane::Request {
            id,
            request: p.request.clone(),
        };
        if self.local_node.as_ref() == Some(&node) && self.control.ready {
            if self.control.framed.queue(&msg).is_err() {
                self.fail_request(p, "the media server is not keeping up; retry later");
                return;
            }
        } else if let Some(c) = &self.cluster {
            c.send(Job::Rpc { node, msg });
        } else {
            self.fail_request(p, "the media server is not reachable; retry later");
            return;
        }
        self.pending.insert(id, p);
    }

    // -------------------------------------------------------------------------------------------
    // Client connections

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, peer)) => {
                    if self.conns.len() >= self.settings.max_connections {
                        debug!(%peer, "connection limit reached; refusing");
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let entry = self.conns.vacant_entry();
                    let token = Token(entry.key() + FIRST_CONN);
                    if self
                        .poll
                        .registry()
                        .register(&mut stream, token, Interest::READABLE)
                        .is_err()
                    {
                        continue;
                    }
                    entry.insert(Conn {
                        state: ConnState::Http {
                            stream,
                            buf: Vec::with_capacity(1024),
                        },
                        since: Instant::now(),
                        writable: false,
                        closing: None,
                        rate: RateLimit {
                            tokens: self.settings.rate_burst,
                            at: Instant::now(),
                            refused: 0,
                        },
                        join_started: None,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    warn!(error = %e, "accept");
                    return;
                }
            }
        }
    }

    fn conn_ready(&mut self, id: usize) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        match &mut conn.state {
            ConnState::Http { .. } => self.read_http(id),
            ConnState::Respond { .. } => self.write_response(id),
            ConnState::Ws { .. } => self.ws_ready(id),
            ConnState::Gone => self.remove(id),
        }
    }

    fn read_http(&mut self, id: usize) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let ConnState::Http { stream, buf } = &mut conn.state else {
            return;
        };
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => return self.remove(id),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.len() > http::MAX_HEAD {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.remove(id),
            }
        }
        let head = match http::parse_head(buf) {
            Ok(None) => return,
            Ok(Some(h)) => h,
            Err(HeadError::TooLarge) => {
                return self.respond(
                    id,
                    http::response(
                        431,
                        "Request Header Fields Too Large",
                        "text/plain",
                        b"request head too large\n",
                    ),
                );
            }
            Err(HeadError::Malformed(m)) => {
                return self.respond(
                    id,
                    http::response(
                        400,
                        "Bad Request",
                        "text/plain",
                        format!("{m}\n").as_bytes(),
                    ),
                );
            }
        };
        if head.path == "/ws" {
            if !head.is_websocket_upgrade() {
                return self.respond(
                    id,
                    http::response(
                        426,
                        "Upgrade Required",
                        "text/plain",
                        b"WebSocket upgrade required\n",
                    ),
                );
            }
            match http::websocket_accept(&head) {
                Ok(resp) => self.upgrade(id, resp),
                Err(why) => self.respond(
                    id,
                    http::response(
                        400,
                        "Bad Request",
                        "text/plain",
                        format!("{why}\n").as_bytes(),
                    ),
                ),
            }
            return;
        }
        if head.method != "GET" && head.method != "HEAD" {
            return self.respond(
                id,
                http::response(
                    405,
                    "Method Not Allowed",
                    "text/plain",
                    b"method not allowed\n",
                ),
            );
        }
        let resp = match head.path.as_str() {
            "/metrics" => {
                let mut conns = 0;
                let mut sessions = 0;
                for (_, c) in self.conns.iter() {
                    if let ConnState::Ws { session, .. } = &c.state {
                        conns += 1;
                        sessions += i64::from(session.is_joined());
                    }
                }
                self.metrics.connections.set(conns);
                self.metrics.sessions.set(sessions);
                let body = self.metrics.render();
                http::response(
                    200,
                    "OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body.as_bytes(),
                )
            }
            "/healthz" if self.healthy() => http::response(200, "OK", "text/plain", b"ok\n"),
            "/healthz" => http::response(
                503,
                "Service Unavailable",
                "text/plain",
                b"dataplane unavailable\n",
            ),
            path => match page::asset(path) {
                Some((ctype, body)) => http::response(200, "OK", ctype, body),
                None => http::response(404, "Not Found", "text/plain", b"not found\n"),
            },
        };
        self.respond(id, resp);
    }

    /// Switch a connection to writing `out` and closing.
    fn respond(&mut self, id: usize, out: Vec<u8>) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let ConnState::Http { stream, .. } = std::mem::replace(&mut conn.state, ConnState::Gone)
        else {
            return;
        };
        conn.state = ConnState::Respond {
            stream,
            out,
            pos: 0,
        };
        self.write_response(id);
    }

    fn write_response(&mut self, id: usize) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let ConnState::Respond { stream, out, pos } = &mut conn.state else {
            return;
        };
        while *pos < out.len() {
            match stream.write(&out[*pos..]) {
                Ok(0) => return self.remove(id),
                Ok(n) => *pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !conn.writable {
                        conn.writable = true;
                        let _ = self.poll.registry().reregister(
                            stream,
                            Token(id + FIRST_CONN),
                            Interest::WRITABLE,
                        );
                    }
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.remove(id),
            }
        }
        let _ = stream.flush();
        let _ = stream.shutdown(std::net::Shutdown::Write);
        self.remove(id);
    }

    fn upgrade(&mut self, id: usize, response: Vec<u8>) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let ConnState::Http { mut stream, .. } =
            std::mem::replace(&mut conn.state, ConnState::Gone)
        else {
            return;
        };
        // The 101 response is ~130 bytes into a fresh socket buffer: it does not block in
        // practice; if it does, the connection is dropped rather than stalling the loop.
        let mut written = 0;
        for _ in 0..100 {
            match stream.write(&response[written..]) {
                Ok(n) => written += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(_) => break,
            }
            if written == response.len() {
                break;
            }
        }
        if written < response.len() {
            return self.remove(id);
        }
        // Small I/O buffers: signaling messages are small and an idle session should cost little
        // memory (tungstenite's default read buffer is 128 KiB per connection).
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0)
            .max_message_size(Some(self.settings.max_message))
            .max_frame_size(Some(self.settings.max_message));
        let ws = WebSocket::from_raw_socket(stream, Role::Server, Some(config));
        conn.state = ConnState::Ws {
            ws: Box::new(ws),
            session: Session::new(),
        };
        debug!(conn = id, "websocket open");
    }

    fn ws_ready(&mut self, id: usize) {
        // Read every complete message; each may produce actions that write to this socket.
        loop {
            let Some(conn) = self.conns.get_mut(id) else {
                return;
            };
            let ConnState::Ws { ws, session } = &mut conn.state else {
                return;
            };
            match ws.read() {
                Ok(Message::Text(text)) => {
                    // Rate limit: a token bucket per connection.
                    let now = Instant::now();
                    let r = &mut conn.rate;
                    r.tokens = (r.tokens
                        + now.duration_since(r.at).as_secs_f64() * self.settings.rate_per_sec)
                        .min(self.settings.rate_burst);
                    r.at = now;
                    if r.tokens < 1.0 {
                        self.metrics.rate_limited.inc();
                        r.refused += 1;
                        if r.refused > 200 {
                            debug!(conn = id, "client keeps flooding; closing with 1008");
                            let _ = ws.close(Some(CloseFrame {
                                code: CloseCode::Policy,
                                reason: "rate limit".into(),
                            }));
                            let _ = ws.flush();
                            return self.disconnect(id);
                        }
                        if r.refused == 1 || r.refused.is_multiple_of(50) {
                            let msg = ServerMsg::error(
                                ErrorCode::RateLimited,
                                format!(
                                    "more than {} messages per second; message dropped",
                                    self.settings.rate_per_sec
                                ),
                            );
                            self.apply(id, vec![Action::Send(msg)]);
                        }
                        continue;
                    }
                    r.tokens -= 1.0;
                    r.refused = 0;
                    self.metrics.message(text.as_str());
                    let actions = session.handle_text(text.as_str(), &self.ctx, new_participant_id);
                    if actions.iter().any(|a| {
                        matches!(
                            a,
                            Action::Place { .. } | Action::Request(Request::Attach { .. })
                        )
                    }) {
                        conn.join_started = Some(now);
                    }
                    self.apply(id, actions);
                }
                Ok(Message::Binary(_)) => {
                    let msg = ServerMsg::error(
                        ErrorCode::BadRequest,
                        "binary frames are not supported; send JSON text",
                    );
                    self.apply(id, vec![Action::Send(msg)]);
                }
                Ok(Message::Close(_)) => {
                    conn.closing.get_or_insert_with(Instant::now);
                }
                Ok(_) => {} // ping/pong: tungstenite answers pings itself
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(tungstenite::Error::Capacity(e)) => {
                    debug!(conn = id, error = %e, "message too large; closing with 1009");
                    let _ = ws.close(Some(CloseFrame {
                        code: CloseCode::Size,
                        reason: "message too large".into(),
                    }));
                    let _ = ws.flush();
                    return self.disconnect(id);
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return self.disconnect(id);
                }
                Err(e) => {
                    debug!(conn = id, error = %e, "websocket error");
                    return self.disconnect(id);
                }
            }
        }
        self.flush_ws(id);
    }

    /// Perform a session's actions.
    fn apply(&mut self, id: usize, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send(msg) => {
                    if let Some(Conn {
                        state: ConnState::Ws { ws, .. },
                        ..
                    }) = self.conns.get_mut(id)
                    {
                        match ws.write(Message::text(msg.to_json())) {
                            Ok(()) => {}
                            Err(tungstenite::Error::Io(e))
                                if e.kind() == io::ErrorKind::WouldBlock => {}
                            Err(e) => {
                                debug!(conn = id, error = %e, "websocket write failed");
                                self.disconnect(id);
                                return;
                            }
                        }
                    }
                }
                Action::Request(request) => {
                    let node = match self.conns.get(id).map(|c| &c.state) {
                        Some(ConnState::Ws { session, .. }) => session.node().map(str::to_string),
                        _ => None,
                    };
                    if let Some(p) = match &request {
                        Request::Join { participant, .. } | Request::Attach { participant, .. } => {
                            Some(participant)
                        }
                        _ => None,
                    } {
                        self.by_participant.insert(p.clone(), id);
                    }
                    match node {
                        Some(node) => self.send_request(Some(id), node, request),
                        None => warn!(conn = id, "request without a node; dropped"),
                    }
                }
                Action::Place { room, exclude } => self.place(id, room, exclude),
                Action::Close => {
                    if let Some(Conn {
                        state: ConnState::Ws { ws, .. },
                        closing,
                        ..
                    }) = self.conns.get_mut(id)
                    {
                        let _ = ws.close(None);
                        closing.get_or_insert_with(Instant::now);
                    }
                }
            }
        }
        self.flush_ws(id);
    }

    fn flush_ws(&mut self, id: usize) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let ConnState::Ws { ws, .. } = &mut conn.state else {
            return;
        };
        let blocked = match ws.flush() {
            Ok(()) => false,
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => true,
            Err(tungstenite::Error::ConnectionClosed) => return self.disconnect(id),
            Err(_) => return self.disconnect(id),
        };
        if blocked != conn.writable {
            let interest = if blocked {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            let _ = self
                .poll
                .registry()
                .reregister(ws.get_mut(), Token(id + FIRST_CONN), interest);
            conn.writable = blocked;
        }
    }

    /// The client's WebSocket is gone. The participant stays on its node for the resume window
    /// (the client may resume through any instance); the connection is removed.
    fn disconnect(&mut self, id: usize) {
        let actions = match self.conns.get_mut(id).map(|c| &mut c.state) {
            Some(ConnState::Ws { session, .. }) => {
                let node = session.node().map(str::to_string);
                session
                    .handle_disconnect()
                    .into_iter()
                    .map(|a| (node.clone(), a))
                    .collect()
            }
            _ => vec![],
        };
        self.remove(id);
        for (node, action) in actions {
            if let (Some(node), Action::Request(r)) = (node, action) {
                self.send_request(None, node, r);
            }
        }
    }

    fn remove(&mut self, id: usize) {
        let Some(mut conn) = self.conns.try_remove(id) else {
            return;
        };
        let participant = match &mut conn.state {
            ConnState::Http { stream, .. } | ConnState::Respond { stream, .. } => {
                let _ = self.poll.registry().deregister(stream);
                None
            }
            ConnState::Ws { ws, session } => {
                let _ = self.poll.registry().deregister(ws.get_mut());
                session.participant().map(str::to_string)
            }
            ConnState::Gone => None,
        };
        if let Some(p) = participant
            && self.by_participant.get(&p) == Some(&id)
        {
            self.by_participant.remove(&p);
        }
        for p in self.pending.values_mut() {
            if p.conn == Some(id) {
                p.conn = None;
            }
        }
    }

    /// Time out slow HTTP clients and unanswered control requests.
    fn expire(&mut self, now: Instant) {
        let slow: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                matches!(c.state, ConnState::Http { .. } | ConnState::Respond { .. })
                    && now.duration_since(c.since) > self.settings.http_timeout
            })
            .map(|(i, _)| i)
            .collect();
        for id in slow {
            self.remove(id);
        }
        let closed: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.closing
                    .is_some_and(|t| now.duration_since(t) > Duration::from_secs(2))
            })
            .map(|(i, _)| i)
            .collect();
        for id in closed {
            self.disconnect(id);
        }
        let late: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| now.duration_since(p.sent) > self.settings.request_timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            if let Some(p) = self.pending.remove(&id) {
                warn!(request = ?std::mem::discriminant(&p.request), "dataplane did not answer in time");
                self.fail_request(p, "the media server did not answer in time");
            }
        }
    }
}

/// A fresh random participant id.
fn new_participant_id() -> String {
    format!("p{:016x}", rand::random::<u64>())
}
