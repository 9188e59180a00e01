//! Start and stop the real service binaries on loopback for tests and benchmarks.
//!
//! Every process is started on free loopback ports with its own control socket in a private
//! temporary directory, and killed by PID when its guard drops.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
        let socks: Vec<_> = (0..n)
            .filter_map(|i| UdpSocket::bind(("127.0.0.1", base + i)).ok())
            .collect();
        if socks.len() == n as usize {
            return Ok(base);
        }
    }
    bail!("no {n} consecutive free UDP ports")
}

/// A private temporary directory, removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        let p = std::env::temp_dir().join(format!(
            "{prefix}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&p)?;
        Ok(Self(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (by PID) when dropped.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    /// Start `program args…` with stdout/stderr to `log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        let child = Command::new(program)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("SFU_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        Ok(Self {
            name: name.into(),
            child: Some(child),
            log,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL (a crash).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait up to `grace` before SIGKILL. Returns whether it exited by itself.
    pub fn terminate(&mut self, grace: Duration) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let end = Instant::now() + grace;
        while Instant::now() < end {
            if let Ok(Some(_)) = c.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    /// Send a signal by name (`STOP`, `CONT`, `USR1`, …).
    pub fn signal(&self, sig: &str) -> bool {
        self.pid().is_some_and(|pid| {
            Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(pid.to_string())
                .status()
                .is_ok_and(|s| s.success())
        })
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
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

/// A single-node service: one dataplane and one or more signaling processes.
#[derive(Debug)]
pub struct Node {
    pub dir: TempDir,
    pub control_socket: PathBuf,
    /// The dataplane's `/metrics` endpoint.
    pub metrics_addr: SocketAddr,
    pub udp_base: u16,
    pub workers: u16,
    pub dataplane: Proc,
    pub signaling: Vec<(SocketAddr, Proc)>,
    /// The metrics address (`/metrics`, `/healthz`) of each signaling instance.
    pub signaling_metrics: Vec<SocketAddr>,
    extra_dataplane_args: Vec<String>,
    extra_signaling_args: Vec<String>,
}

impl Node {
    /// Start a dataplane with `workers` workers and one signaling instance; wait until healthy.
    pub fn start(workers: u16, dataplane_args: &[&str]) -> anyhow::Result<Self> {
        Self::start_with(workers, dataplane_args, &[])
    }

    /// Like [`Node::start`], with extra signaling arguments.
    pub fn start_with(
        workers: u16,
        dataplane_args: &[&str],
        signaling_args: &[&str],
    ) -> anyhow::Result<Self> {
        let dir = TempDir::new("sfu-node")?;
        let control_socket = dir.0.join("control.sock");
        let udp_base = free_udp_ports(workers)?;
        let metrics_addr: SocketAddr = ([127, 0, 0, 1], free_tcp_port()?).into();
        let mut extra: Vec<String> = vec!["--metrics-listen".into(), metrics_addr.to_string()];
        extra.extend(dataplane_args.iter().map(|s| s.to_string()));
        let dataplane = Self::spawn_dataplane(&dir.0, &control_socket, udp_base, workers, &extra)?;
        let mut node = Self {
            dir,
            control_socket,
            metrics_addr,
            udp_base,
            workers,
            dataplane,
            signaling: Vec::new(),
            signaling_metrics: Vec::new(),
            extra_dataplane_args: extra,
            extra_signaling_args: signaling_args.iter().map(|s| s.to_string()).collect(),
        };
        node.add_signaling()?;
        Ok(node)
    }

    fn spawn_dataplane(
        dir: &Path,
        sock: &Path,
        udp_base: u16,
        workers: u16,
        extra: &[String],
    ) -> anyhow::Result<Proc> {
        let mut args: Vec<String> = vec![
            "--workers".into(),
            workers.to_string(),
            "--public-ip".into(),
            "127.0.0.1".into(),
            "--port-base".into(),
            udp_base.to_string(),
            "--control-socket".into(),
            sock.display().to_string(),
        ];
        // Unpinned unless the caller chose CPUs (benchmarks pin the dataplane away from the load).
        if !extra.iter().any(|a| a == "--cpus") {
            args.push("--no-pin".into());
        }
        args.extend(extra.iter().cloned());
        Proc::spawn(
            "dataplane",
            &binary("dataplane")?,
            &args,
            dir.join(format!("dataplane-{udp_base}.log")),
        )
    }

    /// The command line of a signaling instance of this node listening on `addr`, with its
    /// metrics on `metrics`.
    fn signaling_args(&self, addr: SocketAddr, metrics: SocketAddr) -> Vec<String> {
        let mut args = vec![
            "--listen".into(),
            addr.to_string(),
            "--metrics-listen".into(),
            metrics.to_string(),
            "--control-socket".into(),
            self.control_socket.display().to_string(),
        ];
        args.extend(self.extra_signaling_args.iter().cloned());
        args
    }

    /// Start one more signaling instance on a free port; wait until it is healthy.
    pub fn add_signaling(&mut self) -> anyhow::Result<SocketAddr> {
        let port = free_tcp_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let metrics: SocketAddr = ([127, 0, 0, 1], free_tcp_port()?).into();
        let args = self.signaling_args(addr, metrics);
        let n = self.signaling.len();
        let p = Proc::spawn(
            "signaling",
            &binary("signaling")?,
            &args,
            self.dir.0.join(format!("signaling-{n}-{port}.log")),
        )?;
        self.signaling.push((addr, p));
        self.signaling_metrics.push(metrics);
        self.wait_healthy(addr, Duration::from_secs(20))?;
        Ok(addr)
    }

    /// Kill signaling instance `i` (SIGKILL).
    pub fn kill_signaling(&mut self, i: usize) {
        if let Some((_, p)) = self.signaling.get_mut(i) {
            p.kill();
        }
    }

    /// Start signaling instance `i` again on its address; wait until healthy.
    pub fn restart_signaling(&mut self, i: usize) -> anyhow::Result<()> {
        let Some((addr, old)) = self.signaling.get_mut(i) else {
            bail!("no signaling instance {i}");
        };
        old.kill();
        let addr = *addr;
        let args = self.signaling_args(addr, self.signaling_metrics[i]);
        let log = self
            .dir
            .0
            .join(format!("signaling-{i}-{}-restart.log", addr.port()));
        let p = Proc::spawn("signaling", &binary("signaling")?, &args, log)?;
        self.signaling[i].1 = p;
        self.wait_healthy(addr, Duration::from_secs(20))
    }

    /// Restart the dataplane (after a kill).
    pub fn restart_dataplane(&mut self) -> anyhow::Result<()> {
        self.dataplane.kill();
        self.dataplane = Self::spawn_dataplane(
            &self.dir.0,
            &self.control_socket,
            self.udp_base,
            self.workers,
            &self.extra_dataplane_args,
        )?;
        Ok(())
    }

    /// Wait until signaling at `addr` reports a connected dataplane.
    pub fn wait_healthy(&mut self, addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
        let end = Instant::now() + timeout;
        loop {
            if let Ok((200, _)) = http_get(addr, "/healthz") {
                return Ok(());
            }
            if Instant::now() >= end {
                bail!(
                    "signaling {addr} not healthy after {timeout:?}\n--- dataplane log ---\n{}\n--- signaling logs ---\n{}",
                    self.dataplane.log_text(),
                    self.signaling
                        .iter()
                        .map(|(_, p)| p.log_text())
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `ws://…/ws` of signaling instance `i`.
    pub fn ws_url(&self, i: usize) -> String {
        format!("ws://{}/ws", self.signaling[i].0)
    }

    /// All logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = format!("--- dataplane ---\n{}\n", self.dataplane.log_text());
        for (a, p) in &self.signaling {
            s += &format!("--- signaling {a} ---\n{}\n", p.log_text());
        }
        s
    }
}

/// Debian `coturn` on a free loopback port with a shared secret (TURN REST API credentials),
/// logging into a directory; stopped when dropped.
#[derive(Debug)]
pub struct Turn {
    _proc: Proc,
    pub port: u16,
    /// `turn:127.0.0.1:<port>?transport=udp`
    pub url: String,
    pub secret: String,
}

impl Turn {
    /// Whether `turnserver` is installed.
    pub fn installed() -> bool {
        Command::new("turnserver").arg("-h").output().is_ok()
    }

    /// Start it with `secret` and 40 relay ports; its log is `dir/turn.log`.
    pub fn start(dir: &Path, secret: &str) -> anyhow::Result<Self> {
        let port = free_udp_ports(1)?;
        let relay = free_udp_ports(40)?;
        let args: Vec<String> = vec![
            "-n".into(),
            "--listening-ip=127.0.0.1".into(),
            format!("--listening-port={port}"),
            "--relay-ip=127.0.0.1".into(),
            format!("--min-port={relay}"),
            format!("--max-port={}", relay + 39),
            "--use-auth-secret".into(),
            format!("--static-auth-secret={secret}"),
            "--realm=sfu.test".into(),
            "--fingerprint".into(),
            "--no-tls".into(),
            "--no-dtls".into(),
            "--no-cli".into(),
            "--allow-loopback-peers".into(),
            "--no-multicast-peers".into(),
            format!("--userdb={}", dir.join("turndb").display()),
            format!("--pidfile={}", dir.join("turn.pid").display()),
            format!("--log-file={}", dir.join("turn.log").display()),
            "--simple-log".into(),
        ];
        let proc = Proc::spawn(
            "turnserver",
            Path::new("turnserver"),
            &args,
            dir.join("turn.out"),
        )?;
        Ok(Self {
            _proc: proc,
            port,
            url: format!("turn:127.0.0.1:{port}?transport=udp"),
            secret: secret.to_string(),
        })
    }
}

/// Wait until `GET path` answers 200.
pub fn wait_http_ok(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + timeout;
    loop {
        if let Ok((200, _)) = http_get(addr, path) {
            return Ok(());
        }
        if Instant::now() >= end {
            bail!("{addr}{path} not healthy after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

mod cluster;
mod redis;

pub use cluster::{Cluster, ClusterNode, RedisTopology};
pub use redis::{Redis, Sentinel};

pub use crate::stats::cpu_seconds;
