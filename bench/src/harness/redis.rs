//! Real `redis-server` / `redis-sentinel` processes for tests: a standalone server (also in
//! cluster mode, with extra arguments), or a master, a replica and a sentinel (for failover
//! tests). The one launcher of the workspace: the registry's contract tests use it too.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use super::{Proc, free_tcp_port, poll, wait_until};

/// `redis-cli -p <port> args…`: its output (empty if it could not run).
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// A `redis-server` on a free loopback port, in its own directory; restartable on the same port.
#[derive(Debug)]
pub struct Redis {
    pub port: u16,
    dir: PathBuf,
    pub proc: Option<Proc>,
    extra: Vec<String>,
}

impl Redis {
    /// Whether `redis-server` is installed.
    pub fn available() -> bool {
        Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok()
    }

    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(dir, &[])
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Start with extra `redis-server` arguments (e.g. `--replicaof`).
    pub fn start_with(dir: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        let port = free_tcp_port()?;
        let mut r = Self {
            port,
            dir: dir.to_path_buf(),
            proc: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        r.restart()?;
        Ok(r)
    }

    /// Run `redis-cli -p <port> args…` and return its output.
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, args)
    }

    /// (Re)start on the same port (killing the running server first, if any); wait until it
    /// accepts connections. Without persistence it starts empty, unless a `SAVE` left a dump.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let mut args: Vec<String> = [
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &self.dir.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(self.extra.iter().cloned());
        let log = self.dir.join(format!("redis-{}.log", self.port));
        self.proc = Some(Proc::spawn("redis", Path::new("redis-server"), &args, log)?);
        let port = self.port;
        wait_until(
            &format!("redis-server accepts connections on port {port}"),
            Duration::from_secs(10),
            Duration::from_millis(20),
            || TcpStream::connect(("127.0.0.1", port)).is_ok(),
        )
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }
}

/// One replica of a master and one `redis-sentinel` watching them (quorum 1, master down after
/// 1 s): killing the master promotes the replica within a few seconds.
#[derive(Debug)]
pub struct Sentinel {
    pub replica: Redis,
    pub port: u16,
    pub name: String,
    _proc: Proc,
}

impl Sentinel {
    /// Whether `redis-sentinel` is installed.
    pub fn available() -> bool {
        Command::new("redis-sentinel")
            .arg("--version")
            .output()
            .is_ok()
    }

    pub fn start(dir: &Path, master: &Redis) -> anyhow::Result<Self> {
        let replica =
            Redis::start_with(dir, &["--replicaof", "127.0.0.1", &master.port.to_string()])?;
        let port = free_tcp_port()?;
        let name = "sfu-test".to_string();
        let conf = dir.join(format!("sentinel-{port}.conf"));
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\nsentinel monitor {name} 127.0.0.1 {m} 1\nsentinel down-after-milliseconds {name} 1000\nsentinel failover-timeout {name} 5000\nsentinel parallel-syncs {name} 1\n",
                dir = dir.display(),
                m = master.port
            ),
        )?;
        let proc = Proc::spawn(
            "redis-sentinel",
            Path::new("redis-sentinel"),
            &[conf.display().to_string()],
            dir.join(format!("sentinel-{port}.log")),
        )?;
        let s = Self {
            replica,
            port,
            name,
            _proc: proc,
        };
        // Ready when it names the master and has seen the replica.
        let mut replicas = String::new();
        poll(Duration::from_secs(20), Duration::from_millis(100), || {
            replicas = s.sentinel_cli(&["SENTINEL", "replicas", &s.name]);
            (s.master_port() == Some(master.port) && replicas.contains("slave")).then_some(())
        })
        .with_context(|| format!("sentinel did not become ready: {replicas}"))?;
        Ok(s)
    }

    fn sentinel_cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, args)
    }

    /// The port of the current master, as the sentinel sees it.
    pub fn master_port(&self) -> Option<u16> {
        self.sentinel_cli(&["SENTINEL", "get-master-addr-by-name", &self.name])
            .lines()
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
    }
}
