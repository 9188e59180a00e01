//! `signaling`: WebSocket signaling server and web page. See `docs/configuration.md`.
//!
//! `signaling token …` mints a join token instead of serving.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use clap::{Args as ClapArgs, Parser, Subcommand};
use control::registry::RedisSettings;
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
    /// The local dataplane's control socket.
    #[arg(
        long,
        env = "SFU_CONTROL_SOCKET",
        default_value = "/tmp/sfu-dataplane.sock"
    )]
    control_socket: PathBuf,
    /// Redis URL: cluster mode (rooms placed across all registered nodes, any instance serves any
    /// room, sessions resume through any instance). Without it, single-node mode.
    #[arg(long, env = "REDIS_URL")]
    redis_url: Option<String>,
    /// Prefix of every Redis key and channel (must match the dataplanes').
    #[arg(long, env = "SFU_REDIS_PREFIX", default_value = "sfu")]
    redis_prefix: String,
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
    /// Maximum concurrent HTTP/WebSocket connections.
    #[arg(long, env = "SIGNALING_MAX_CONNECTIONS", default_value_t = 20_000)]
    max_connections: usize,
    /// Client messages per second per connection (sustained); bursts up to 2.5×.
    #[arg(long, env = "SIGNALING_RATE_LIMIT", default_value_t = 20.0)]
    rate_limit: f64,
    /// Write the process id here (for scripts/rolling-restart-signaling).
    #[arg(long, env = "SIGNALING_PID_FILE")]
    pid_file: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "SFU_LOG_FORMAT", default_value = "human", value_parser = ["human", "json"])]
    log_format: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse_from(control::cli::args_with_config("SIGNALING_CONFIG")?);
    if let Some(Cmd::Token(t)) = cli.command {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let claims = Claims {
            sub: t.identity,
            name: t.name,
            room: t.room,
            exp: now + t.ttl_secs,
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
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if args.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }

    let mut settings = Settings::new(args.listen, args.control_socket.clone());
    settings.max_message = args.max_message;
    settings.max_connections = args.max_connections;
    anyhow::ensure!(args.rate_limit > 0.0, "--rate-limit must be positive");
    settings.rate_per_sec = args.rate_limit;
    settings.rate_burst = (args.rate_limit * 2.5).max(5.0);
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
    if let Some(url) = &args.redis_url {
        let mut r = RedisSettings::new(url.clone());
        r.prefix = args.redis_prefix.clone();
        settings.redis = Some(r);
    }
    if let Some(p) = &args.pid_file {
        std::fs::write(p, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    let shutdown = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, shutdown.clone())?;
    }
    let mut server = Server::bind(settings, shutdown)?;
    info!(listen = %server.local_addr()?, control_socket = %args.control_socket.display(),
        cluster = args.redis_url.is_some(), auth = args.jwt_secret.is_some(), "signaling ready");
    server.run()?;
    if let Some(p) = &args.pid_file {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}
