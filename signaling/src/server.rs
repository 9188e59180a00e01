//! The signaling server: one mio loop serving HTTP (the page), WebSockets (sessions), a metrics
//! listener (loopback by default), the control connection to the local dataplane and, in
//! cluster mode, the Redis link to every node. This file owns the settings, the server's state
//! and the loop; its parts live in:
//!
//! - `server/clients.rs`: client connections: accept (caps), readiness, removal, timeouts;
//! - `server/http.rs`: HTTP (the page, `/healthz`, `/metrics`) and the WebSocket upgrade;
//! - `server/whip.rs`: WHIP and WHEP (SDP offer over HTTP POST; sessions without a socket);
//! - `server/websocket.rs`: WebSocket frames in (rate limit, join admission) and out (bounded
//!   writes), close codes;
//! - `server/dataplane.rs`: the dataplane link: the local control socket and Redis replies;
//! - `server/routing.rs`: requests, placements and responses between sessions and nodes;
//! - `server/liveness.rs`: which media nodes are alive, and what happens to their sessions.
//!
//! Routing: a session's requests go to the node that owns its room. The local node is reached
//! over the Unix socket; any other node (or the local one while its socket is down) over Redis
//! pub/sub. Responses come back matched by request id ([`Pending`]); events by participant id,
//! through [`Routes`], which only a dataplane confirmation (`joined`, `attached`) changes. The
//! routing state and its rules are pure and table-tested in [`crate::router`].

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use registry::RedisSettings;
use slab::Slab;
use tracing::info;

use crate::auth::{Auth, TurnConfig};
use crate::cluster::Cluster;
use crate::limits::{IpLimitSettings, IpLimits, SessionsPerToken};
use crate::metrics::Metrics;
use crate::protocol::IceServer;
use crate::router::{Pending, Placements, Routes};
use crate::session::JoinContext;

mod clients;
mod dataplane;
mod http;
mod liveness;
mod routing;
mod websocket;
mod whip;

use clients::{Conn, ConnState};
use dataplane::ControlLink;
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

/// The server. See the module docs.
pub struct Server {
    settings: Settings,
    poll: Poll,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    conns: Slab<Conn>,
    /// Open WebSockets and WHIP/WHEP sessions (the rest of `conns` is HTTP in progress).
    websockets: usize,
    /// WHIP/WHEP sessions by the secret part of their `Location`.
    whip_resources: std::collections::HashMap<String, crate::router::ConnId>,
    ip_limits: IpLimits,
    /// Live sessions per join-token identity.
    sessions_per_token: SessionsPerToken,
    control: ControlLink,
    local_node: Option<String>,
    cluster: Option<Cluster>,
    pending: Pending,
    /// Placement lookups in flight or waiting for the registry to recover (cluster mode).
    placements: Placements,
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
        let control = ControlLink::new(settings.control_socket.clone());
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
            whip_resources: std::collections::HashMap::new(),
            ip_limits,
            sessions_per_token: SessionsPerToken::default(),
            control,
            local_node: None,
            cluster,
            pending: Pending::default(),
            placements: Placements::default(),
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
}
