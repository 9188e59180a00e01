//! `dataplane`: the SFU media process. See the crate docs and `docs/configuration.md`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use dataplane::io::cluster::ClusterLink;
use dataplane::io::control::{self, ControlServer, ControlSettings};
use dataplane::io::tcp::TcpLimits;
use dataplane::io::worker::{self, WorkerSettings};
use sfu_core::CoreConfig;
use tracing::info;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The SFU media plane: per-core workers forwarding SRTP between participants, driven by
/// signaling over a local Unix socket.
#[derive(Debug, Parser)]
#[command(version, about, args_override_self = true)]
struct Args {
    /// TOML file with any of these settings (keys named like the flags); the command line wins,
    /// the file wins over environment variables.
    #[arg(long, env = "SFU_CONFIG")]
    config: Option<PathBuf>,
    /// Number of media workers (one pinned thread and one UDP port each). 0 = one per CPU.
    #[arg(long, env = "SFU_WORKERS", default_value_t = 0)]
    workers: usize,
    /// IP address advertised to browsers as the ICE host candidate (the public IP on a server).
    #[arg(long, env = "SFU_PUBLIC_IP", default_value = "127.0.0.1")]
    public_ip: IpAddr,
    /// IP address the UDP sockets bind to. Default: the public IP when it is a loopback address,
    /// otherwise 0.0.0.0 (behind 1:1 NAT, e.g. EC2, the public IP is not a local address).
    #[arg(long, env = "SFU_BIND_IP")]
    bind_ip: Option<IpAddr>,
    /// UDP port of worker 0; worker N uses port-base + N.
    #[arg(long, env = "SFU_PORT_BASE", default_value_t = 40000)]
    port_base: u16,
    /// Do not listen for ICE over TCP (RFC 6544 passive candidates; clients behind firewalls
    /// that block UDP then need TURN).
    #[arg(long, env = "SFU_NO_ICE_TCP", action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = clap::builder::BoolishValueParser::new())]
    no_ice_tcp: bool,
    /// TCP port of worker 0's ICE-TCP listener; worker N uses it + N. Default: the UDP ports'
    /// numbers (`--port-base`).
    #[arg(long, env = "SFU_ICE_TCP_PORT_BASE")]
    ice_tcp_port_base: Option<u16>,
    /// Open ICE-TCP connections per worker; more are closed at once.
    #[arg(long, env = "SFU_ICE_TCP_MAX_CONNECTIONS", default_value_t = 2048)]
    ice_tcp_max_connections: usize,
    /// Open ICE-TCP connections per worker from one source IP.
    #[arg(long, env = "SFU_ICE_TCP_MAX_PER_IP", default_value_t = 256)]
    ice_tcp_max_per_ip: usize,
    /// Milliseconds an ICE-TCP connection may take to send an ICE check a participant accepts.
    #[arg(long, env = "SFU_ICE_TCP_HANDSHAKE_TIMEOUT_MS", default_value_t = 5000)]
    ice_tcp_handshake_timeout_ms: u64,
    /// Bytes queued toward one ICE-TCP connection; beyond it datagrams to that (slow) reader
    /// are dropped.
    #[arg(long, env = "SFU_ICE_TCP_WRITE_BUFFER", default_value_t = 256 * 1024)]
    ice_tcp_write_buffer: usize,
    #[command(flatten)]
    control: ::registry::cli::ControlSocketArgs,
    /// File mode of the control socket (octal; never open to all users).
    #[arg(long, env = "SFU_CONTROL_SOCKET_MODE", default_value = "0600", value_parser = ::control::local::parse_mode)]
    control_socket_mode: u32,
    /// Tests only: accept the `inject_fault` control request (makes a worker panic).
    #[arg(long, env = "SFU_TEST_FAULTS", action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = clap::builder::BoolishValueParser::new(), hide = true)]
    test_faults: bool,
    /// Node id reported to signaling (default: random).
    #[arg(long, env = "SFU_NODE_ID")]
    node_id: Option<String>,
    /// Turn GSO/GRO/recvmmsg batching off (one syscall per datagram), e.g. to measure its benefit.
    #[arg(long, env = "SFU_NO_BATCHING", action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = clap::builder::BoolishValueParser::new())]
    no_batching: bool,
    /// Do not pin worker threads to CPUs.
    #[arg(long, env = "SFU_NO_PIN", action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = clap::builder::BoolishValueParser::new())]
    no_pin: bool,
    /// CPUs to pin workers to, round-robin (default: 0..N).
    #[arg(long, env = "SFU_CPUS", value_delimiter = ',')]
    cpus: Vec<usize>,
    /// Maximum participants in one room.
    #[arg(long, env = "SFU_MAX_PARTICIPANTS_PER_ROOM", default_value_t = 50)]
    max_participants_per_room: usize,
    /// Maximum rooms per worker.
    #[arg(long, env = "SFU_MAX_ROOMS_PER_WORKER", default_value_t = 10_000)]
    max_rooms_per_worker: usize,
    /// Seconds without any packet after which a participant is removed.
    #[arg(long, env = "SFU_ICE_TIMEOUT_SECS", default_value_t = 10)]
    ice_timeout_secs: u64,
    /// Minimum milliseconds between keyframe requests to one publisher track.
    #[arg(long, env = "SFU_KEYFRAME_INTERVAL_MS", default_value_t = 500)]
    keyframe_interval_ms: u64,
    /// Maximum chat message text in bytes.
    #[arg(long, env = "SFU_MAX_CHAT_BYTES", default_value_t = 4096)]
    max_chat_bytes: usize,
    /// Chat and mute-state messages per second one participant may send (bursts of 4×); more
    /// are dropped with a `rate_limited` error on the channel.
    #[arg(long, env = "SFU_CHAT_RATE", default_value_t = 5.0)]
    chat_rate: f64,
    /// Public chat messages a room keeps and replays to participants who join later (0 = none).
    #[arg(long, env = "SFU_CHAT_HISTORY", default_value_t = 50)]
    chat_history: usize,
    /// Bound on a room's chat history in bytes (texts, names, ids); the oldest go first.
    #[arg(long, env = "SFU_CHAT_HISTORY_BYTES", default_value_t = 64 * 1024)]
    chat_history_bytes: usize,
    /// Initial send-side bandwidth estimate toward each participant, kbit/s (TWCC/GCC; it picks
    /// the simulcast layer each subscriber gets). 0 turns estimation off: every subscriber then
    /// gets the best layer a publisher sends.
    #[arg(long, env = "SFU_BWE_INITIAL_KBPS", default_value_t = 1000)]
    bwe_initial_kbps: u64,
    /// A subscriber's simulcast layer goes up only after the better layer has fitted its
    /// estimate this long, in milliseconds (down is immediate).
    #[arg(long, env = "SFU_LAYER_UP_HOLD_MS", default_value_t = 1500)]
    layer_up_hold_ms: u64,
    /// Do not tell publishers to stop encoding simulcast layers no subscriber needs (dynacast).
    #[arg(long, env = "SFU_NO_DYNACAST", action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = clap::builder::BoolishValueParser::new())]
    no_dynacast: bool,
    /// Client SDP with more media sections (m-lines) than this is refused with `bad_request`.
    #[arg(long, env = "SFU_MAX_MEDIA_PER_OFFER", default_value_t = 1024)]
    max_media_per_offer: usize,
    /// UDP socket send/receive buffer size in bytes (capped by net.core.[rw]mem_max).
    #[arg(long, env = "SFU_SOCKET_BUFFER", default_value_t = 8 << 20)]
    socket_buffer: usize,
    /// Address of the Prometheus `/metrics` and `/healthz` endpoint ("off" to disable).
    #[arg(long, env = "SFU_METRICS_LISTEN", default_value = "127.0.0.1:9464")]
    metrics_listen: String,
    /// Participants this node takes at most; beyond it joins get `unavailable` and the registry
    /// reports no remaining capacity. Default: 500 per worker.
    #[arg(long, env = "SFU_MAX_PARTICIPANTS")]
    max_participants: Option<u32>,
    #[command(flatten)]
    redis: ::registry::cli::RedisArgs,
    /// Seconds a participant survives without any signaling connection (time for its client to
    /// resume through another signaling instance).
    #[arg(long, env = "SFU_RESUME_WINDOW_SECS", default_value_t = 30)]
    resume_window_secs: u64,
    #[command(flatten)]
    log: ::registry::cli::LogArgs,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse_from(::registry::cli::args_with_config("SFU_CONFIG")?);
    args.log.init_logging("info,str0m=warn,is=warn,dimpl=warn");

    anyhow::ensure!(args.chat_rate > 0.0, "--chat-rate must be positive");
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = if args.workers == 0 {
        ncpu
    } else {
        args.workers
    };
    let bind_ip = args.bind_ip.unwrap_or(if args.public_ip.is_loopback() {
        args.public_ip
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    });
    let node_id = args
        .node_id
        .clone()
        .unwrap_or_else(|| format!("node-{:08x}", rand::random::<u32>()));
    if usize::from(args.port_base) + workers > 65_535 {
        anyhow::bail!(
            "--port-base {} leaves no room for {workers} workers",
            args.port_base
        );
    }
    let tcp_base = (!args.no_ice_tcp).then(|| args.ice_tcp_port_base.unwrap_or(args.port_base));
    if let Some(base) = tcp_base
        && usize::from(base) + workers > 65_535
    {
        anyhow::bail!("--ice-tcp-port-base {base} leaves no room for {workers} workers");
    }
    anyhow::ensure!(
        args.ice_tcp_write_buffer >= 4096,
        "--ice-tcp-write-buffer must be at least 4096 bytes"
    );
    let tcp_limits = TcpLimits {
        max_connections: args.ice_tcp_max_connections,
        max_per_ip: args.ice_tcp_max_per_ip,
        handshake_timeout: Duration::from_millis(args.ice_tcp_handshake_timeout_ms),
        idle_timeout: Duration::from_secs(args.ice_timeout_secs + 5),
        write_buffer: args.ice_tcp_write_buffer,
    };

    let crypto = dataplane::crypto::shared_crypto().context("generating the DTLS certificate")?;
    let control_socket = args
        .control
        .control_socket
        .clone()
        .unwrap_or_else(::control::local::default_socket_path);
    let listener = control::bind(
        &control_socket,
        args.control_socket_mode,
        &args.control.control_peer_uids,
    )
    .with_context(|| format!("binding control socket {}", control_socket.display()))?;
    let (poll, control_waker) = ControlServer::poll_and_waker()?;
    let (report_tx, report_rx) = crossbeam_channel::unbounded();
    let shutdown = Arc::new(AtomicBool::new(false));

    let mut handles = Vec::with_capacity(workers);
    for i in 0..workers {
        let port = args.port_base + i as u16;
        let mut core = CoreConfig::new(i as u32, SocketAddr::new(args.public_ip, port));
        let tcp_port = tcp_base.map(|b| b + i as u16);
        core.tcp_addr = tcp_port.map(|p| SocketAddr::new(args.public_ip, p));
        core.max_participants_per_room = args.max_participants_per_room;
        core.max_rooms = args.max_rooms_per_worker;
        core.ice_timeout = Duration::from_secs(args.ice_timeout_secs);
        core.keyframe_interval = Duration::from_millis(args.keyframe_interval_ms);
        core.max_chat_text = args.max_chat_bytes;
        core.chat_rate = args.chat_rate;
        core.chat_burst = (args.chat_rate * 4.0).max(1.0);
        core.chat_history = args.chat_history;
        core.chat_history_bytes = args.chat_history_bytes;
        core.max_media_per_offer = args.max_media_per_offer;
        core.bwe_initial = (args.bwe_initial_kbps > 0).then(|| args.bwe_initial_kbps * 1000);
        core.layer_up_hold = Duration::from_millis(args.layer_up_hold_ms);
        core.dynacast = !args.no_dynacast;
        let cpu = if args.no_pin {
            None
        } else if args.cpus.is_empty() {
            Some(i % ncpu)
        } else {
            Some(args.cpus[i % args.cpus.len()])
        };
        let settings = WorkerSettings {
            core,
            bind: SocketAddr::new(bind_ip, port),
            batching: !args.no_batching,
            socket_buffer: args.socket_buffer,
            cpu,
            command_queue: 1024,
            tcp: tcp_port.map(|p| (SocketAddr::new(bind_ip, p), tcp_limits.clone())),
        };
        let h = worker::spawn(
            settings,
            crypto.clone(),
            report_tx.clone(),
            control_waker.clone(),
            shutdown.clone(),
        )
        .with_context(|| match tcp_port {
            Some(t) => format!("starting worker {i} on UDP {bind_ip}:{port} and TCP port {t}"),
            None => format!("starting worker {i} on UDP {bind_ip}:{port}"),
        })?;
        handles.push(h);
    }

    let settings = ControlSettings {
        socket_path: control_socket.clone(),
        node_id: node_id.clone(),
        max_frame: ::control::DEFAULT_MAX_FRAME,
        resume_window: Duration::from_secs(args.resume_window_secs),
        media_ip: args.public_ip.to_string(),
        media_ports: handles.iter().map(|h| h.local_addr.port()).collect(),
        capacity_rooms: (args.max_rooms_per_worker * workers).min(u32::MAX as usize) as u32,
        max_participants: args.max_participants.unwrap_or(500 * workers as u32),
        peer_uids: args.control.control_peer_uids.clone(),
        test_faults: args.test_faults,
        incarnation: format!("{:016x}", rand::random::<u64>()),
    };
    let drain = Arc::new(AtomicBool::new(false));
    let mut server = ControlServer::new(
        settings,
        poll,
        listener,
        handles,
        report_rx,
        None,
        shutdown.clone(),
        drain.clone(),
    )?;
    if let Some(redis) = args.redis.settings() {
        let link = ClusterLink::start(
            redis,
            server.node_info(),
            server.incarnation().to_string(),
            control_waker.clone(),
        )
        .context("starting the Redis link")?;
        server.set_cluster(link);
        info!(redis = %args.redis.describe(), "cluster mode: registering in Redis");
    }
    if args.metrics_listen != "off" {
        let addr: SocketAddr = args.metrics_listen.parse().with_context(|| {
            format!(
                "--metrics-listen {:?} is not an address",
                args.metrics_listen
            )
        })?;
        let bound = dataplane::io::admin::serve(addr, server.admin_state(), shutdown.clone())
            .with_context(|| format!("binding the metrics endpoint {addr}"))?;
        info!(%bound, "metrics at /metrics");
    }
    let control_thread = std::thread::Builder::new()
        .name("control".into())
        .spawn(move || server.run())?;
    info!(%node_id, workers, public_ip = %args.public_ip, %bind_ip, port_base = args.port_base,
        ice_tcp_port_base = ?tcp_base,
        control_socket = %control_socket.display(), batching = !args.no_batching, "dataplane ready");

    // The main thread waits for SIGINT/SIGTERM (stop now) or SIGUSR1 (drain: finish the rooms,
    // then exit), then stops everything in order.
    use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGUSR1])?;
    let handle = signals.handle();
    {
        // A completed drain sets `shutdown` from the control thread: stop waiting for signals.
        let shutdown = shutdown.clone();
        std::thread::spawn(move || {
            while !shutdown.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
            }
            handle.close();
        });
    }
    for sig in signals.forever() {
        if sig == SIGUSR1 {
            info!("SIGUSR1: draining");
            drain.store(true, Ordering::SeqCst);
            let _ = control_waker.wake();
            continue;
        }
        info!(signal = sig, "shutting down");
        break;
    }
    shutdown.store(true, Ordering::SeqCst);
    let _ = control_waker.wake();
    let workers = control_thread.join().unwrap_or_default();
    for w in workers {
        let _ = w.waker.wake();
        let _ = w.thread.join();
    }
    info!("dataplane stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("dataplane").chain(args.iter().copied()))
            .expect("valid arguments")
    }

    #[test]
    fn switches_turn_on_and_a_later_false_turns_them_off() {
        assert!(!parse(&[]).no_batching);
        assert!(parse(&["--no-batching"]).no_batching);
        assert!(parse(&["--no-batching=true", "--workers", "2"]).no_batching);
        // What a config file's `no_batching = false` becomes, before the command line.
        assert!(!parse(&["--no-batching=false"]).no_batching);
        assert!(!parse(&["--no-pin", "--no-pin=false"]).no_pin);
        assert!(parse(&["--no-pin=false", "--no-pin"]).no_pin);
        assert!(Args::try_parse_from(["dataplane", "--no-pin=perhaps"]).is_err());
    }

    #[test]
    fn config_file_false_is_a_switch_off() {
        let file = ::registry::cli::toml_to_args("no_batching = false\nno_pin = true\n", "t.toml")
            .expect("valid toml");
        let mut args = vec!["dataplane".to_string()];
        args.extend(file);
        let parsed = Args::try_parse_from(&args).expect("valid arguments");
        assert!(!parsed.no_batching);
        assert!(parsed.no_pin);
    }
}
