//! `signaling`: WebSocket signaling server and web page. See `docs/configuration.md`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser;
use signaling::protocol::IceServer;
use signaling::server::{Server, Settings};
use tracing::info;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// WebSocket signaling for the SFU: serves the web page and relays sessions to the dataplane.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// HTTP/WebSocket listen address.
    #[arg(long, env = "SIGNALING_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The dataplane's control socket.
    #[arg(
        long,
        env = "SFU_CONTROL_SOCKET",
        default_value = "/tmp/sfu-dataplane.sock"
    )]
    control_socket: PathBuf,
    /// ICE server URL handed to clients in `joined.ice_servers` (repeatable), e.g.
    /// `stun:stun.example.com:3478`.
    #[arg(
        long = "ice-server",
        env = "SIGNALING_ICE_SERVERS",
        value_delimiter = ','
    )]
    ice_servers: Vec<String>,
    /// Largest WebSocket message in bytes; larger ones close the connection with code 1009.
    #[arg(long, env = "SIGNALING_MAX_MESSAGE", default_value_t = 1 << 20)]
    max_message: usize,
    /// Maximum concurrent HTTP/WebSocket connections.
    #[arg(long, env = "SIGNALING_MAX_CONNECTIONS", default_value_t = 20_000)]
    max_connections: usize,
    /// Log format.
    #[arg(long, env = "SFU_LOG_FORMAT", default_value = "human", value_parser = ["human", "json"])]
    log_format: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
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
    if !args.ice_servers.is_empty() {
        settings.ice_servers = vec![IceServer {
            urls: args.ice_servers.clone(),
            username: None,
            credential: None,
        }];
    }
    let shutdown = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, shutdown.clone())?;
    }
    let mut server = Server::bind(settings, shutdown.clone())?;
    info!(listen = %server.local_addr()?, control_socket = %args.control_socket.display(), "signaling ready");
    server.run()?;
    shutdown.store(true, Ordering::SeqCst);
    Ok(())
}
