//! The signaling server: one mio loop serving HTTP (the page), WebSockets (sessions), a metrics
//! listener (loopback by default), the control connection to the local dataplane and, in
//! cluster mode, the Redis link to every node.
//!
//! Routing: a session's requests go to the node that owns its room. The local node is reached
//! over the Unix socket; any other node (or the local one while its socket is down) over Redis
//! pub/sub. Responses come back matched by request id ([`Pending`]); events by participant id,
//! through [`Routes`], which only a dataplane confirmation (`joined`, `attached`) changes.
//!
//! Client connections (HTTP, WebSocket, limits, liveness) live in `server/clients.rs`.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use registry::{Placement, RedisSettings, RegistryError};
use control::{
    CodecError, Framed, FromDataplane, PROTOCOL_VERSION, ReadStatus, Request, Response, ToDataplane,
};
use mio::net::{TcpListener, UnixStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use tracing::{debug, info, warn};

use crate::auth::{Auth, TurnConfig};
use crate::cluster::{Cluster, ClusterEvent, Job};
use crate::limits::{IpLimitSettings, IpLimits};
use crate::metrics::{Metrics, ResultLabel};
use crate::protocol::IceServer;
use crate::router::{ConnId, Pending, PendingRequest, Routes};
use crate::session::{Action, JoinContext};

mod clients;
mod liveness;

use clients::{Conn, ConnState};
use liveness::Liveness;

const LISTENER: Token = Token(0);
const CONTROL: Token = Token(1);
const WAKER: Token = Token(2);
const METRICS_LISTENER: Token = Token(3);
const FIRST_CONN: usize = 4;
/// Server settings (see `main.rs` for the CLI).
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    /// Where `/metrics` and `/healthz` are served for operators (`None`: nowhere). The client
    /// port serves `/healthz` too, but never `/metrics`.
    pub metrics_listen: Option<SocketAddr>,
    pub control_socket: PathBuf,
    /// User ids the dataplane's control socket may belong to (besides our own and root).
    pub control_peer_uids: Vec<u32>,
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
    /// Open WebSockets at most; a few more HTTP connections are always accepted so `/healthz`
    /// answers (with 503 for upgrades) when the cap is reached.
    pub max_connections: usize,
    /// Open connections per client address.
    pub max_connections_per_ip: u32,
    /// Joins (and resumes) per second per client address; bursts of 5×.
    pub join_rate_per_ip: f64,
    /// Live sessions (joining or joined) per join token identity on this instance; 0 = no limit.
    pub max_sessions_per_token: usize,
    /// Per connection: sustained frames per second (every kind) and burst.
    pub rate_per_sec: f64,
    pub rate_burst: f64,
    /// An HTTP request head must arrive within this time.
    pub http_timeout: Duration,
    /// A WebSocket must start a join (or resume) within this time of opening or of its session
    /// ending; else it is closed.
    pub join_timeout: Duration,
    /// A WebSocket silent for this long gets a ping; one silent for twice as long plus 5 s is
    /// closed.
    pub ping_interval: Duration,
    /// Bytes queued for a client that does not read, beyond which it is disconnected.
    pub max_write_buffer: usize,
    /// WebSocket `Origin`s allowed to connect (empty: any).
    pub allowed_origins: Vec<String>,
    /// Proxies whose `X-Forwarded-For` is believed for the client address.
    pub trusted_proxies: Vec<IpAddr>,
    /// How long a control request may stay unanswered before the client gets `unavailable`.
    pub request_timeout: Duration,
}

impl Settings {
    pub fn new(listen: SocketAddr, control_socket: PathBuf) -> Self {
        Self {
            listen,
            metrics_listen: None,
            control_socket,
            control_peer_uids: Vec::new(),
            ice_servers: Vec::new(),
            turn: None,
            jwt_secret: None,
            redis: None,
            signaling_id: format!("sig-{:08x}", rand::random::<u32>()),
            max_message: 1 << 20,
            max_connections: 20_000,
            max_connections_per_ip: 256,
            join_rate_per_ip: 10.0,
            max_sessions_per_token: 2,
            rate_per_sec: 20.0,
            rate_burst: 50.0,
            http_timeout: Duration::from_secs(10),
            join_timeout: Duration::from_secs(30),
            ping_interval: Duration::from_secs(20),
            max_write_buffer: 256 << 10,
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            request_timeout: Duration::from_secs(10),
        }
    }
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
    /// Since when connects are refused (nothing listens on the socket) after we had a node.
    refused_since: Option<Instant>,
}

/// A placement lookup in flight (cluster mode).
#[derive(Debug, Clone)]
struct PlaceJob {
    conn: ConnId,
    room: String,
    exclude: Vec<String>,
    /// While the registry recovers from data loss, the lookup is retried until then.
    give_up: Instant,
}

/// How long a join waits for the registry to recover from data loss before it fails.
const RECOVERY_WAIT: Duration = Duration::from_secs(10);
/// Retry interval of a placement while the registry recovers.
const RECOVERY_RETRY: Duration = Duration::from_millis(250);

/// The server. See the module docs.
pub struct Server {
    settings: Settings,
    poll: Poll,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    conns: Slab<Conn>,
    /// Open WebSockets (the rest of `conns` is HTTP in progress).
    websockets: usize,
    ip_limits: IpLimits,
    /// Live sessions per join-token identity.
    identities: HashMap<String, usize>,
    control: ControlLink,
    local_node: Option<String>,
    cluster: Option<Cluster>,
    pending: Pending,
    placements: HashMap<u64, PlaceJob>,
    /// Placements waiting to be retried (registry recovering), with their retry time.
    deferred: Vec<(Instant, PlaceJob)>,
    routes: Routes,
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
        let metrics_listener = match settings.metrics_listen {
            Some(addr) => {
                let mut l = TcpListener::bind(addr).map_err(|e| {
                    anyhow::anyhow!("binding the metrics listener {addr}: {e} (--metrics-listen)")
                })?;
                poll.registry()
                    .register(&mut l, METRICS_LISTENER, Interest::READABLE)?;
                Some(l)
            }
            None => None,
        };
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
            refused_since: None,
        };
        let ip_limits = IpLimits::new(IpLimitSettings {
            max_connections: settings.max_connections_per_ip,
            join_rate: settings.join_rate_per_ip,
            join_burst: (settings.join_rate_per_ip * 5.0).max(1.0),
        });
        Ok(Self {
            settings,
            poll,
            listener,
            metrics_listener,
            conns: Slab::with_capacity(1024),
            websockets: 0,
            ip_limits,
            identities: HashMap::new(),
            control,
            local_node: None,
            cluster,
            pending: Pending::default(),
            placements: HashMap::new(),
            deferred: Vec::new(),
            routes: Routes::default(),
            ctx,
            live: Liveness::default(),
            metrics: Metrics::new(),
            shutdown,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The bound metrics address, if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
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
        let mut next_prune = Instant::now();
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
                    LISTENER => self.accept(false),
                    METRICS_LISTENER => self.accept(true),
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
            self.retry_deferred(now);
            self.check_nodes(now);
            self.flush_control();
            if now >= next_prune {
                next_prune = now + Duration::from_secs(10);
                self.ip_limits.prune(now);
            }
        }
        info!("signaling stopping: closing websockets with 1012 so clients resume elsewhere");
        self.close_all_for_restart();
        if let Some(c) = self.cluster.take() {
            c.stop();
        }
        Ok(())
    }

    // -------------------------------------------------------------------------------------------
    // Control connection (local dataplane)

    fn connect_control(&mut self, now: Instant) {
        let result = UnixStream::connect(&self.control.path).and_then(|s| {
            control::local::check_peer(&s, &self.settings.control_peer_uids)?;
            Ok(s)
        });
        match result {
            Ok(mut stream) => {
                self.control.refused_since = None;
                if let Err(e) = self.poll.registry().register(
                    &mut stream,
                    CONTROL,
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    warn!(error = %e, "register control stream");
                    self.control.retry_at = now + self.control.backoff;
                    self.control.backoff = (self.control.backoff * 2).min(Duration::from_secs(2));
                    return;
                }
                self.control.writable = true;
                self.control.framed = Framed::new(control::DEFAULT_MAX_FRAME);
                let hello = ToDataplane::Hello {
                    version: PROTOCOL_VERSION,
                    client: format!("{}@{}", self.settings.signaling_id, self.settings.listen),
                    signaling_id: Some(self.settings.signaling_id.clone()),
                };
                let _ = self.control.framed.queue(&hello);
                self.control.stream = Some(stream);
                debug!(path = %self.control.path.display(), "control socket connected; handshaking");
            }
            Err(e) => {
                if self.local_node.is_some()
                    && matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
                    )
                {
                    self.control.refused_since.get_or_insert(now);
                }
                if e.kind() == io::ErrorKind::PermissionDenied {
                    // Someone else's socket at our path: never talk to it; keep checking.
                    warn!(path = %self.control.path.display(), error = %e, "refusing the control socket");
                }
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
        // Requests written to the lost socket will never be answered: fail them now (in cluster
        // mode too) rather than after the request timeout. Sessions retry or re-attach.
        for p in self.pending.take_where(|p| p.local) {
            self.fail_request(p, "the media server connection was lost; retry");
        }
    }

    /// A message from a dataplane: over the socket (`local`) or Redis.
    fn handle_dataplane_message(&mut self, msg: FromDataplane, local: bool) {
        match msg {
            FromDataplane::Welcome {
                node_id,
                workers,
                incarnation,
                ..
            } if local => {
                info!(%node_id, workers, "connected to the local dataplane");
                // A restarted dataplane (same id) lost every session: close those rooms before
                // trying to re-attach anything.
                self.node_incarnation(&node_id, &incarnation);
                self.control.ready = true;
                self.control.down_since = None;
                self.control.refused_since = None;
                self.live.announced_down = false;
                self.control.backoff = Duration::from_millis(100);
                self.live.failed.remove(&node_id);
                self.live.witnessed_down.remove(&node_id);
                self.local_node = Some(node_id.clone());
                // Re-attach the sessions on this node that were attached over the socket (the
                // dataplane orphaned them when it closed). Sessions attached over Redis stay
                // there: moving them would let events on the two paths overtake each other.
                let ids: Vec<ConnId> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.via_socket == Some(true))
                    .map(|(i, _)| i)
                    .collect();
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
                let Some(p) = self.pending.take(id) else {
                    // A join that timed out here succeeded after all: nobody will use it.
                    if let Response::Joined { .. } = response
                        && let Some((node, participant)) = self.pending.take_late_join(id)
                    {
                        info!(%node, %participant, "late answer to a join that timed out: leaving");
                        self.send_request(None, node, Request::Leave { participant });
                    }
                    return;
                };
                self.deliver_response(p, response);
            }
            FromDataplane::Event { event } => {
                let Some(conn) = self.routes.owner(event.participant()) else {
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
                    let Some(job) = self.placements.remove(&ticket) else {
                        continue;
                    };
                    let now = Instant::now();
                    if result == Err(RegistryError::Recovering) && now < job.give_up {
                        // Redis lost data moments ago; nodes are re-asserting their rooms.
                        debug!(room = %job.room, "registry recovering: placement retried shortly");
                        self.deferred.push((now + RECOVERY_RETRY, job));
                        continue;
                    }
                    self.deliver_placement(job.conn, result);
                }
                ClusterEvent::Reply(msg) => self.handle_dataplane_message(msg, false),
                ClusterEvent::Beacon(b) => self.handle_beacon(b),
                ClusterEvent::Alive { node, alive } => {
                    self.live
                        .registry_says
                        .insert(node, (Instant::now(), alive));
                }
                ClusterEvent::Subscribed(up) => {
                    self.live.subscribed_since = up.then(Instant::now);
                }
                ClusterEvent::RpcFailed { msg, .. } => {
                    self.metrics.redis_errors.inc();
                    if let ToDataplane::Request { id, .. } = msg
                        && let Some(p) = self.pending.take(id)
                    {
                        self.fail_request(p, "the media node could not be reached; retry later");
                    }
                }
            }
        }
    }

    fn deliver_placement(&mut self, conn: ConnId, result: Result<Placement, RegistryError>) {
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

    /// Retry the placements deferred while the registry recovers, when due.
    fn retry_deferred(&mut self, now: Instant) {
        if self.deferred.is_empty() {
            return;
        }
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.deferred)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.deferred = later;
        for (_, job) in due {
            if self.conns.contains(job.conn) {
                self.send_place(job);
            }
        }
    }

    fn send_place(&mut self, job: PlaceJob) {
        let Some(c) = &self.cluster else {
            return;
        };
        let ticket = self.pending.next_id();
        c.send(Job::Place {
            ticket,
            room: job.room.clone(),
            exclude: job.exclude.clone(),
        });
        self.placements.insert(ticket, job);
    }

    fn place(&mut self, conn: ConnId, room: String, exclude: Vec<String>) {
        match &self.cluster {
            Some(_) => {
                let job = PlaceJob {
                    conn,
                    room,
                    exclude,
                    give_up: Instant::now() + RECOVERY_WAIT,
                };
                self.send_place(job);
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
        let counter = match &p.request {
            Request::Join { .. } => Some(&self.metrics.joins),
            Request::Attach { .. } => Some(&self.metrics.resumes),
            _ => None,
        };
        if let Some(counter) = counter {
            counter.get_or_create(&ResultLabel { result }).inc();
            if let (true, Some(t)) = (ok, c.join_started.take()) {
                self.metrics.join_seconds.observe(t.elapsed().as_secs_f64());
            }
            if ok {
                // The dataplane now routes this session's events over the path this request
                // took.
                c.via_socket = Some(p.local);
            }
        }
        let confirmed = match &response {
            Response::Joined { incarnation, .. } | Response::Attached { incarnation, .. } => {
                Some(incarnation.clone())
            }
            _ => None,
        };
        let joined = matches!(response, Response::Joined { .. });
        let ConnState::Ws { session, .. } = &mut c.state else {
            return;
        };
        let actions = session.handle_response(&p.request, response, &self.ctx);
        // A join the session did not take (it was closed or moved on meanwhile) is undone: the
        // node would otherwise keep the participant as ours, never orphaned, never removed.
        let undo = joined
            && !matches!(&p.request, Request::Join { participant, .. } if session.holds(participant));
        if undo && let Request::Join { participant, .. } = &p.request {
            self.send_request(
                None,
                p.node.clone(),
                Request::Leave {
                    participant: participant.clone(),
                },
            );
        }
        self.apply(conn, actions);
        if let Some(incarnation) = confirmed {
            self.confirmed_incarnation(conn, &p.node, &incarnation);
        }
    }

    fn fail_request(&mut self, p: PendingRequest, why: &str) {
        let resp = Response::error(control::ErrorCode::Unavailable, why);
        self.deliver_response(p, resp);
    }

    /// Send `request` to `node`: over the socket if it is the local node and the socket is up,
    /// else over Redis, else fail it with `unavailable`.
    fn send_request(&mut self, conn: Option<ConnId>, node: String, request: Request) {
        let id = self.pending.next_id();
        // A session attached over Redis keeps using Redis (see `Conn::via_socket`); a new join
        // or resume takes the socket when it can.
        let pinned_to_redis = !matches!(request, Request::Join { .. } | Request::Attach { .. })
            && self.cluster.is_some()
            && conn
                .and_then(|c| self.conns.get(c))
                .is_some_and(|c| c.via_socket == Some(false));
        let local =
            self.local_node.as_ref() == Some(&node) && self.control.ready && !pinned_to_redis;
        let p = PendingRequest {
            conn,
            node: node.clone(),
            request,
            sent: Instant::now(),
            local,
        };
        let msg = ToDataplane::Request {
            id,
            request: p.request.clone(),
        };
        if local {
            match self.control.framed.queue(&msg) {
                Ok(()) => {}
                Err(CodecError::MessageTooLarge { len, max }) => {
                    // One oversized request fails alone; the shared link stays up.
                    let resp = Response::error(
                        control::ErrorCode::BadRequest,
                        format!("message of {len} bytes exceeds the control limit of {max}"),
                    );
                    self.deliver_response(p, resp);
                    return;
                }
                Err(_) => {
                    self.fail_request(p, "the media server is not keeping up; retry later");
                    return;
                }
            }
        } else if let Some(c) = &self.cluster {
            c.send(Job::Rpc { node, msg });
        } else {
            self.fail_request(p, "the media server is not reachable; retry later");
            return;
        }
        self.pending.insert(id, p);
    }

    /// Perform a session's actions. If the client cannot be written to (it is disconnected),
    /// what concerns only the nodes (leaving a participant) still happens.
    fn apply(&mut self, id: ConnId, actions: Vec<Action>) {
        self.settle(id);
        let mut gone = false;
        for action in actions {
            if gone {
                match action {
                    Action::Request { node, request } | Action::Forget { node, request } => {
                        self.send_request(None, node, request);
                    }
                    Action::Send(_) | Action::Place { .. } | Action::Close => {}
                }
                continue;
            }
            match action {
                Action::Send(msg) => gone = !self.send_ws(id, &msg.to_json()),
                Action::Request { node, request } => self.send_request(Some(id), node, request),
                Action::Forget { node, request } => self.send_request(None, node, request),
                Action::Place { room, exclude } => self.place(id, room, exclude),
                Action::Close => self.close_ws(id, None),
            }
        }
        self.flush_ws(id);
    }

    /// Bring the routing table and the per-identity counts in line with the session's state
    /// after it changed. A session is routed only once joined (a dataplane confirmation); a
    /// confirmed resume on this connection replaces the connection that held it before.
    fn settle(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let ConnState::Ws { session, .. } = &conn.state else {
            return;
        };
        let joined = session.joined_participant().map(str::to_string);
        let identity = session
            .is_active()
            .then(|| session.identity().map(str::to_string))
            .flatten();
        if !session.is_active() && conn.idle_since.is_none() {
            conn.idle_since = Some(Instant::now());
        } else if session.is_active() {
            conn.idle_since = None;
        }
        if conn.identity != identity {
            if let Some(old) = conn.identity.take()
                && let Some(n) = self.identities.get_mut(&old)
            {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.identities.remove(&old);
                }
            }
            if let Some(new) = &identity {
                *self.identities.entry(new.clone()).or_default() += 1;
            }
            conn.identity = identity;
        }
        let displaced = match joined {
            Some(p) => self.routes.confirm(id, &p),
            None => {
                self.routes.release(id);
                None
            }
        };
        if let Some(old) = displaced {
            info!(
                conn = old,
                "session resumed on another connection: closing the old one"
            );
            let actions = match self.conns.get_mut(old).map(|c| &mut c.state) {
                Some(ConnState::Ws { session, .. }) => session.handle_replaced(),
                _ => vec![],
            };
            self.apply(old, actions);
        }
    }
}
