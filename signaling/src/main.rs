//! `signaling`: WebSocket signaling server and web page. See `docs/configuration.md`.
//!
//! `signaling token …` mints a join token instead of serving.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use clap::{Args as ClapArgs, Parser, Subcommand};
use signaling::auth::{Claims, GrantClaims, TurnConfig};
use signaling::protocol::IceServer;
use signaling::server::{Server, Settings};
use tracing::info;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// WebSocket signaling for the SFU: serves the web page and relays sessions to the dataplane
/// (locally over its Unix socket, or to any node over Redis in cluster mode).
#[derive(Debug, Parser)]
#[command(version, about, args_override_self = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    serve: Serve,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Mint a join token (HS256 JWT) for a user and print it.
    Token(TokenArgs),
}

#[derive(Debug, ClapArgs)]
struct TokenArgs {
    /// The shared secret (same as the server's --jwt-secret).
    #[arg(long, env = "SFU_JWT_SECRET")]
    secret: String,
    /// Room the token admits to.
    #[arg(long)]
    room: String,
    /// The user's identity.
    #[arg(long)]
    identity: String,
    /// Display name shown to others.
    #[arg(long)]
    name: Option<String>,
    /// Validity in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl_secs: u64,
    /// The user may not publish audio/video.
    #[arg(long)]
    no_publish: bool,
    /// The user receives no audio/video.
    #[arg(long)]
    no_subscribe: bool,
}

#[derive(Debug, ClapArgs)]
struct Serve {
    /// TOML file with any of these settings (keys named like the flags); the command line wins,
    /// the file wins over environment variables.
    #[arg(long, env = "SIGNALING_CONFIG")]
    config: Option<PathBuf>,
    /// HTTP/WebSocket listen address.
    #[arg(long, env = "SIGNALING_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Address serving `/metrics` and `/healthz` for operators ("off" to disable). Never
    /// serve metrics on the public listen address.
    #[arg(
        long,
        env = "SIGNALING_METRICS_LISTEN",
        default_value = "127.0.0.1:9465"
    )]
    metrics_listen: String,
    #[command(flatten)]
    control: registry::cli::ControlSocketArgs,
    #[command(flatten)]
    redis: registry::cli::RedisArgs,
    /// Id of this instance (default: random).
    #[arg(long, env = "SIGNALING_ID")]
    signaling_id: Option<String>,
    /// HS256 secret: when set, `join` requires a token (see `signaling token`).
    #[arg(long, env = "SFU_JWT_SECRET")]
    jwt_secret: Option<String>,
    /// STUN/TURN server URL handed to clients as-is (repeatable).
    #[arg(
        long = "ice-server",
        env = "SIGNALING_ICE_SERVERS",
        value_delimiter = ','
    )]
    ice_servers: Vec<String>,
    /// TURN server URL for which clients get ephemeral credentials (repeatable; needs
    /// --turn-secret), e.g. `turn:turn.example.com:3478?transport=udp`.
    #[arg(long = "turn-url", env = "SIGNALING_TURN_URLS", value_delimiter = ',')]
    turn_urls: Vec<String>,
    /// Shared secret with coturn (`static-auth-secret`).
    #[arg(long, env = "SIGNALING_TURN_SECRET")]
    turn_secret: Option<String>,
    /// Lifetime of TURN credentials in seconds.
    #[arg(long, env = "SIGNALING_TURN_TTL_SECS", default_value_t = 86_400)]
    turn_ttl_secs: u64,
    /// Largest WebSocket message in bytes; larger ones close the connection with code 1009.
    #[arg(long, env = "SIGNALING_MAX_MESSAGE", default_value_t = 1 << 20)]
    max_message: usize,
    /// Maximum concurrent WebSocket connections (a few more HTTP connections are kept for
    /// `/healthz` and the page; upgrades beyond get 503).
    #[arg(long, env = "SIGNALING_MAX_CONNECTIONS", default_value_t = 20_000)]
    max_connections: usize,
    /// Maximum concurrent connections from one client address.
    #[arg(long, env = "SIGNALING_MAX_CONNECTIONS_PER_IP", default_value_t = 256)]
    max_connections_per_ip: u32,
    /// Joins (and resumes) per second from one client address, sustained; bursts up to 5×.
    #[arg(long, env = "SIGNALING_JOIN_RATE_PER_IP", default_value_t = 10.0)]
    join_rate_per_ip: f64,
    /// Live sessions per join token identity (`sub`) on this instance; 0 = unlimited.
    #[arg(long, env = "SIGNALING_MAX_SESSIONS_PER_TOKEN", default_value_t = 2)]
    max_sessions_per_token: usize,
    /// Client frames (any kind) per second per connection (sustained); bursts up to 2.5×.
    #[arg(long, env = "SIGNALING_RATE_LIMIT", default_value_t = 20.0)]
    rate_limit: f64,
    /// Seconds a WebSocket may stay open without joining (or after its session ended).
    #[arg(long, env = "SIGNALING_JOIN_TIMEOUT_SECS", default_value_t = 30)]
    join_timeout_secs: u64,
    /// A silent WebSocket gets a ping after this many seconds, and is closed after twice as
    /// many plus 5.
    #[arg(long, env = "SIGNALING_PING_INTERVAL_SECS", default_value_t = 20)]
    ping_interval_secs: u64,
    /// A WebSocket `Origin` allowed to connect (repeatable; default: any). E.g.
    /// `https://meet.example.com`.
    #[arg(
        long = "allowed-origin",
        env = "SIGNALING_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    allowed_origins: Vec<String>,
    /// A reverse proxy / load balancer address whose `X-Forwarded-For` is trusted for the
    /// client address (repeatable).
    #[arg(
        long = "trusted-proxy",
        env = "SIGNALING_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    trusted_proxies: Vec<std::net::IpAddr>,
    /// Write the process id here (for scripts/rolling-restart-signaling).
    #[arg(long, env = "SIGNALING_PID_FILE")]
    pid_file: Option<PathBuf>,
    #[command(flatten)]
    log: registry::cli::LogArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse_from(registry::cli::args_with_config("SIGNALING_CONFIG")?);
    if let Some(Cmd::Token(t)) = cli.command {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let claims = Claims {
            sub: t.identity,
            name: t.name,
            room: t.room,
            exp: now + t.ttl_secs,
            nbf: None,
            grants: GrantClaims {
                publish: !t.no_publish,
                subscribe: !t.no_subscribe,
            },
        };
        let token =
            signaling::auth::mint(t.secret.as_bytes(), &claims).map_err(|e| anyhow::anyhow!(e))?;
        println!("{token}");
        return Ok(());
    }
    let args = cli.serve;
    args.log.init_logging("info");

    let control_socket = args.control.path();
    let mut settings = Settings::new(args.listen, control_socket.clone());
    settings.metrics_listen =
        match args.metrics_listen.as_str() {
            "off" => None,
            a => Some(a.parse().with_context(|| {
                format!("--metrics-listen {a:?} is not an address (or \"off\")")
            })?),
        };
    settings.control_peer_uids = args.control.control_peer_uids.clone();
    settings.max_message = args.max_message;
    settings.max_connections = args.max_connections;
    anyhow::ensure!(
        args.max_connections_per_ip > 0,
        "--max-connections-per-ip must be positive"
    );
    settings.max_connections_per_ip = args.max_connections_per_ip;
    anyhow::ensure!(
        args.join_rate_per_ip > 0.0,
        "--join-rate-per-ip must be positive"
    );
    settings.join_rate_per_ip = args.join_rate_per_ip;
    settings.max_sessions_per_token = args.max_sessions_per_token;
    anyhow::ensure!(args.rate_limit > 0.0, "--rate-limit must be positive");
    settings.rate_per_sec = args.rate_limit;
    settings.rate_burst = (args.rate_limit * 2.5).max(5.0);
    anyhow::ensure!(
        args.join_timeout_secs > 0,
        "--join-timeout-secs must be positive"
    );
    settings.join_timeout = std::time::Duration::from_secs(args.join_timeout_secs);
    anyhow::ensure!(
        args.ping_interval_secs > 0,
        "--ping-interval-secs must be positive"
    );
    settings.ping_interval = std::time::Duration::from_secs(args.ping_interval_secs);
    settings.allowed_origins = args.allowed_origins.clone();
    settings.trusted_proxies = args.trusted_proxies.clone();
    if let Some(id) = args.signaling_id {
        settings.signaling_id = id;
    }
    if !args.ice_servers.is_empty() {
        settings.ice_servers = vec![IceServer {
            urls: args.ice_servers.clone(),
            username: None,
            credential: None,
        }];
    }
    match (&args.turn_secret, args.turn_urls.is_empty()) {
        (Some(secret), false) => {
            settings.turn = Some(TurnConfig {
                urls: args.turn_urls.clone(),
                secret: secret.clone(),
                ttl_secs: args.turn_ttl_secs,
            });
        }
        (Some(_), true) => anyhow::bail!("--turn-secret needs at least one --turn-url"),
        (None, false) => anyhow::bail!("--turn-url needs --turn-secret (ephemeral credentials)"),
        (None, true) => {}
    }
    if let Some(secret) = &args.jwt_secret {
        anyhow::ensure!(secret.len() >= 16, "--jwt-secret must be at least 16 bytes");
        settings.jwt_secret = Some(secret.as_bytes().to_vec());
    }
    settings.redis = args.redis.settings();
    if let Some(p) = &args.pid_file {
        std::fs::write(p, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    let shutdown = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, shutdown.clone())?;
    }
    let settings_cluster = settings.redis.is_some();
    let mut server = Server::bind(settings, shutdown)?;
    info!(listen = %server.local_addr()?, metrics = ?server.metrics_addr(),
        control_socket = %control_socket.display(), cluster = settings_cluster,
        auth = args.jwt_secret.is_some(), "signaling ready");
    server.run()?;
    if let Some(p) = &args.pid_file {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}
