//! Start and stop the real service binaries on loopback for tests and benchmarks.
//!
//! Every process is started on free loopback ports with its own control socket in a private
//! temporary directory, and killed by PID when its guard drops.
//!
//! This file owns what every part shares: finding the binaries, free ports, a loopback HTTP GET
//! (and one metric from it), one control request, minting a join token, and the bounded poll
//! ([`poll`], [`wait_until`]) every wait uses.
//! - `process.rs`: [`Proc`] (a child killed on drop) and [`TempDir`];
//! - `node.rs`: [`Node`], a dataplane with its signaling instances;
//! - `cluster.rs`: [`Cluster`], nodes around real Redis; `redis.rs`: [`Redis`], [`Sentinel`];
//! - `turn.rs`: [`Turn`] (coturn); `ws.rs`: the raw signaling WebSocket ([`Ws`], [`read_json`]).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Signaling arguments for load generation: one address opens thousands of sessions, so the
/// per-address and per-connection abuse limits are lifted.
pub const LOAD_SIGNALING_ARGS: &[&str] = &[
    "--rate-limit",
    "1000",
    "--join-rate-per-ip",
    "1000000",
    "--max-connections-per-ip",
    "1000000",
    "--max-sessions-per-token",
    "0",
];

/// Directory holding the workspace binaries (`target/<profile>`), found from the running test or
/// benchmark executable (`target/<profile>/deps/<name>`), or `SFU_BIN_DIR`.
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("SFU_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Path of a workspace binary; fails with a hint if it was not built.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let p = bin_dir().join(name);
    if !p.exists() {
        bail!(
            "{} not found: build the binaries first (cargo build --bins)",
            p.display()
        );
    }
    Ok(p)
}

/// A free TCP port on 127.0.0.1 (bound then released: a tiny race, fine on a test machine).
pub fn free_tcp_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `n` consecutive free UDP ports on 127.0.0.1.
pub fn free_udp_ports(n: u16) -> anyhow::Result<u16> {
    for _ in 0..200 {
        let base = UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
        if base.checked_add(n).is_none_or(|end| end > 65_000) {
            continue;
        }
        // The dataplane's ICE-TCP listeners take the same port numbers: both must be free.
        let socks: Vec<_> = (0..n)
            .filter_map(|i| UdpSocket::bind(("127.0.0.1", base + i)).ok())
            .collect();
        let listeners: Vec<_> = (0..n)
            .filter_map(|i| std::net::TcpListener::bind(("0.0.0.0", base + i)).ok())
            .collect();
        if socks.len() == n as usize && listeners.len() == n as usize {
            return Ok(base);
        }
    }
    bail!("no {n} consecutive free UDP ports")
}

/// Minimal blocking HTTP GET on loopback: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status line")?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The value of one sample (`series` exactly as exposed, labels included) at `addr/metrics`;
/// `None` if the scrape failed or the series is absent.
pub fn metric_value(addr: SocketAddr, series: &str) -> Option<f64> {
    let (status, body) = http_get(addr, "/metrics").ok()?;
    if status != 200 {
        return None;
    }
    body.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// A join token from `signaling token args…` (e.g. `--secret S --room R --identity I`).
pub fn mint_token(args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(binary("signaling")?)
        .arg("token")
        .args(args)
        .output()
        .context("running signaling token")?;
    if !out.status.success() {
        bail!(
            "signaling token {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// Send one control request to the dataplane at `socket` (hello first) and return its response.
/// Blocking, with a 10 s read timeout.
pub fn control_request(
    socket: &Path,
    request: control::Request,
) -> anyhow::Result<control::Response> {
    use control::{Framed, FromDataplane, PROTOCOL_VERSION, ToDataplane};
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("connecting {}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut f = Framed::new(control::DEFAULT_MAX_FRAME);
    f.queue(&ToDataplane::Hello {
        version: PROTOCOL_VERSION,
        client: "test".into(),
        signaling_id: None,
    })?;
    f.queue(&ToDataplane::Request { id: 1, request })?;
    while !f.flush_to(&mut s)? {}
    let mut buf = [0u8; 65536];
    loop {
        while let Some(m) = f.next_message::<FromDataplane>()? {
            if let FromDataplane::Response { id: 1, response } = m {
                return Ok(response);
            }
        }
        let n = s.read(&mut buf)?;
        if n == 0 {
            bail!("control connection closed before the answer");
        }
        f.extend(&buf[..n]);
    }
}

/// Wait until `GET path` answers 200.
pub fn wait_http_ok(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<()> {
    wait_until(
        &format!("{addr}{path} answers 200"),
        timeout,
        Duration::from_millis(50),
        || matches!(http_get(addr, path), Ok((200, _))),
    )
}

/// Call `probe` every `every` until it returns `Some`, for at most `timeout`: the one bounded
/// poll of the harness and the tests. The probe runs at least once, and once more at the
/// deadline; `None` if it never answered.
pub fn poll<T>(
    timeout: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        let now = Instant::now();
        if now >= end {
            return None;
        }
        std::thread::sleep(every.min(end - now));
    }
}

/// [`poll`] for a condition: an error naming `what` if it did not hold within `timeout`.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut cond: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    poll(timeout, every, || cond().then_some(()))
        .with_context(|| format!("timed out after {timeout:?} waiting until {what}"))
}

mod cluster;
mod node;
mod process;
mod redis;
mod turn;
mod ws;

pub use cluster::{Cluster, ClusterNode, RedisTopology};
pub use node::Node;
pub use process::{Proc, TempDir};
pub use redis::{Redis, Sentinel, redis_cli};
pub use turn::Turn;
pub use ws::{Ws, read_json};

pub use crate::stats::cpu_seconds;
