//! A single-node service on loopback: one dataplane and one or more signaling processes sharing
//! its control socket ([`Node`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;

use super::{Proc, TempDir, binary, free_tcp_port, free_udp_ports, http_get, poll};

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
    /// The address the dataplane advertises and signaling listens on (loopback unless
    /// [`Node::start_on`]).
    pub ip: IpAddr,
    extra_dataplane_args: Vec<String>,
    extra_signaling_args: Vec<String>,
}

impl Node {
    /// Start a dataplane with `workers` workers and one signaling instance; wait until healthy.
    pub fn start(workers: u16, dataplane_args: &[&str]) -> anyhow::Result<Self> {
        Self::start_with(workers, dataplane_args, &[])
    }

    /// Like [`Node::start`], with extra signaling arguments.
    ///
    /// Free ports are found by binding port 0 and closing again, so a test running in parallel
    /// can take one before the service binds it; a start that failed on "Address already in
    /// use" is retried (twice) with fresh ports.
    pub fn start_with(
        workers: u16,
        dataplane_args: &[&str],
        signaling_args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_on(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            workers,
            dataplane_args,
            signaling_args,
        )
    }

    /// Like [`Node::start_with`], with the dataplane's media and signaling's HTTP on `ip` (an
    /// address of this host, e.g. the host end of a veth toward a network namespace) instead of
    /// loopback.
    pub fn start_on(
        ip: IpAddr,
        workers: u16,
        dataplane_args: &[&str],
        signaling_args: &[&str],
    ) -> anyhow::Result<Self> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::try_start(ip, workers, dataplane_args, signaling_args) {
                Err(e) if attempt < 3 && format!("{e:#}").contains("Address already in use") => {
                    tracing::warn!(attempt, "a port was taken between probe and bind; retrying");
                }
                r => return r,
            }
        }
    }

    fn try_start(
        ip: IpAddr,
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
        let dataplane =
            Self::spawn_dataplane(&dir.0, &control_socket, ip, udp_base, workers, &extra)?;
        let mut node = Self {
            dir,
            control_socket,
            metrics_addr,
            udp_base,
            workers,
            dataplane,
            signaling: Vec::new(),
            signaling_metrics: Vec::new(),
            ip,
            extra_dataplane_args: extra,
            extra_signaling_args: signaling_args.iter().map(|s| s.to_string()).collect(),
        };
        node.add_signaling()?;
        Ok(node)
    }

    fn spawn_dataplane(
        dir: &Path,
        sock: &Path,
        ip: IpAddr,
        udp_base: u16,
        workers: u16,
        extra: &[String],
    ) -> anyhow::Result<Proc> {
        let mut args: Vec<String> = vec![
            "--workers".into(),
            workers.to_string(),
            "--public-ip".into(),
            ip.to_string(),
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
        let addr = SocketAddr::new(self.ip, port);
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
            self.ip,
            self.udp_base,
            self.workers,
            &self.extra_dataplane_args,
        )?;
        Ok(())
    }

    /// Wait until signaling at `addr` reports a connected dataplane.
    pub fn wait_healthy(&mut self, addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
        let healthy = poll(timeout, Duration::from_millis(50), || {
            matches!(http_get(addr, "/healthz"), Ok((200, _))).then_some(())
        });
        if healthy.is_none() {
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
        Ok(())
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
