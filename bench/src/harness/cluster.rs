//! A cluster of nodes (dataplane + signaling each) around real Redis, for tests and benchmarks,
//! and what the tests read from Redis directly (room owners, node states, live heartbeats).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

use super::redis::{Redis, Sentinel, redis_cli};
use super::{Proc, TempDir, binary, free_tcp_port, free_udp_ports, poll, wait_http_ok};

/// After how long without a heartbeat the registry counts a node dead: the processes run with
/// the registry's default (`registry::RegistryTiming::default().dead_after`, 5 s).
pub const DEAD_AFTER: Duration = Duration::from_secs(5);

/// How many `{sfu}:nodes` entries (node id → last heartbeat, Redis server time in ms) are at
/// most `ARGV[1]` ms old by the server's own clock: the alive nodes, as the registry's `nodes()`
/// counts them.
const COUNT_ALIVE_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], now - tonumber(ARGV[1]), '+inf')
"#;

/// One cluster node: a dataplane and a signaling process sharing a control socket.
#[derive(Debug)]
pub struct ClusterNode {
    pub node_id: String,
    pub signaling_id: String,
    pub control_socket: PathBuf,
    pub udp_base: u16,
    pub sig_addr: SocketAddr,
    /// Signaling's metrics address.
    pub sig_metrics: SocketAddr,
    pub dataplane: Proc,
    pub signaling: Proc,
    dp_args: Vec<String>,
    sig_args: Vec<String>,
    dir: PathBuf,
    restarts: u32,
}

impl ClusterNode {
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.sig_addr)
    }

    /// Start (or restart) the dataplane.
    pub fn start_dataplane(&mut self) -> anyhow::Result<()> {
        self.dataplane.kill();
        self.restarts += 1;
        let log = self
            .dir
            .join(format!("dataplane-{}-{}.log", self.node_id, self.restarts));
        self.dataplane = Proc::spawn("dataplane", &binary("dataplane")?, &self.dp_args, log)?;
        Ok(())
    }

    /// Start (or restart) the signaling instance on the same address; wait until healthy.
    pub fn start_signaling(&mut self) -> anyhow::Result<()> {
        self.signaling.kill();
        self.restarts += 1;
        let log = self.dir.join(format!(
            "signaling-{}-{}.log",
            self.signaling_id, self.restarts
        ));
        self.signaling = Proc::spawn("signaling", &binary("signaling")?, &self.sig_args, log)?;
        wait_http_ok(self.sig_addr, "/healthz", Duration::from_secs(20))
    }

    pub fn logs(&self) -> String {
        format!(
            "--- dataplane {} ---\n{}\n--- signaling {} ---\n{}\n",
            self.node_id,
            self.dataplane.log_text(),
            self.signaling_id,
            self.signaling.log_text()
        )
    }
}

/// How the nodes reach Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisTopology {
    /// One `redis-server`, by URL.
    Standalone,
    /// A master and a replica behind a sentinel; the nodes ask the sentinel.
    Sentinel,
}

/// Redis plus N nodes.
#[derive(Debug)]
pub struct Cluster {
    /// The standalone server, or the initial master.
    pub redis: Redis,
    /// With [`RedisTopology::Sentinel`]: the replica and the sentinel.
    pub sentinel: Option<Sentinel>,
    pub nodes: Vec<ClusterNode>,
    pub dir: TempDir,
}

impl Cluster {
    /// Start Redis and `n` nodes (1 worker each) named `node-a`, `node-b`, … with signaling
    /// `sig-a`, `sig-b`, …; `dp_extra` and `sig_extra` are appended to every dataplane / signaling.
    pub fn start(n: usize, dp_extra: &[&str], sig_extra: &[&str]) -> anyhow::Result<Self> {
        Self::start_with(n, dp_extra, sig_extra, RedisTopology::Standalone)
    }

    /// [`Cluster::start`] with a choice of Redis topology.
    pub fn start_with(
        n: usize,
        dp_extra: &[&str],
        sig_extra: &[&str],
        topology: RedisTopology,
    ) -> anyhow::Result<Self> {
        let dir = TempDir::new("sfu-cluster")?;
        let redis = Redis::start(&dir.0)?;
        let sentinel = match topology {
            RedisTopology::Standalone => None,
            RedisTopology::Sentinel => Some(Sentinel::start(&dir.0, &redis)?),
        };
        let mut c = Self {
            redis,
            sentinel,
            nodes: Vec::new(),
            dir,
        };
        for i in 0..n {
            c.add_node(i, dp_extra, sig_extra)?;
        }
        // Every node registered (heartbeat) before anyone joins.
        if poll(Duration::from_secs(10), Duration::from_millis(50), || {
            c.registered_nodes().is_ok_and(|k| k >= n).then_some(())
        })
        .is_none()
        {
            bail!("nodes did not register\n{}", c.logs());
        }
        Ok(c)
    }

    fn add_node(&mut self, i: usize, dp_extra: &[&str], sig_extra: &[&str]) -> anyhow::Result<()> {
        let letter = (b'a' + i as u8) as char;
        let node_id = format!("node-{letter}");
        let signaling_id = format!("sig-{letter}");
        let control_socket = self.dir.0.join(format!("{node_id}.sock"));
        let udp_base = free_udp_ports(1)?;
        let sig_addr: SocketAddr = ([127, 0, 0, 1], free_tcp_port()?).into();
        let sig_metrics: SocketAddr = ([127, 0, 0, 1], free_tcp_port()?).into();
        let mut dp_args: Vec<String> = vec![
            "--workers".into(),
            "1".into(),
            "--no-pin".into(),
            "--public-ip".into(),
            "127.0.0.1".into(),
            "--port-base".into(),
            udp_base.to_string(),
            "--control-socket".into(),
            control_socket.display().to_string(),
            "--node-id".into(),
            node_id.clone(),
            "--metrics-listen".into(),
            format!("127.0.0.1:{}", free_tcp_port()?),
        ];
        dp_args.extend(self.redis_args());
        dp_args.extend(dp_extra.iter().map(|s| s.to_string()));
        let mut sig_args: Vec<String> = vec![
            "--listen".into(),
            sig_addr.to_string(),
            "--metrics-listen".into(),
            sig_metrics.to_string(),
            "--control-socket".into(),
            control_socket.display().to_string(),
            "--signaling-id".into(),
            signaling_id.clone(),
            "--pid-file".into(),
            self.dir
                .0
                .join(format!("{signaling_id}.pid"))
                .display()
                .to_string(),
        ];
        sig_args.extend(self.redis_args());
        sig_args.extend(sig_extra.iter().map(|s| s.to_string()));
        let dataplane = Proc::spawn(
            "dataplane",
            &binary("dataplane")?,
            &dp_args,
            self.dir.0.join(format!("dataplane-{node_id}-0.log")),
        )?;
        let signaling = Proc::spawn(
            "signaling",
            &binary("signaling")?,
            &sig_args,
            self.dir.0.join(format!("signaling-{signaling_id}-0.log")),
        )?;
        let node = ClusterNode {
            node_id,
            signaling_id,
            control_socket,
            udp_base,
            sig_addr,
            sig_metrics,
            dataplane,
            signaling,
            dp_args,
            sig_args,
            dir: self.dir.0.clone(),
            restarts: 0,
        };
        wait_http_ok(node.sig_addr, "/healthz", Duration::from_secs(20))
            .map_err(|e| anyhow::anyhow!("{e}\n{}", node.logs()))?;
        self.nodes.push(node);
        Ok(())
    }

    /// How the processes find Redis.
    fn redis_args(&self) -> Vec<String> {
        match &self.sentinel {
            None => vec!["--redis-url".into(), self.redis.url()],
            Some(s) => vec![
                "--redis-sentinel".into(),
                format!("127.0.0.1:{}", s.port),
                "--redis-master-name".into(),
                s.name.clone(),
            ],
        }
    }

    /// The port of the current Redis master.
    pub fn master_port(&self) -> u16 {
        match &self.sentinel {
            None => self.redis.port,
            Some(s) => s.master_port().unwrap_or(self.redis.port),
        }
    }

    /// `redis-cli` against the current master.
    pub fn redis_cli(&self, args: &[&str]) -> String {
        redis_cli(self.master_port(), args)
    }

    /// `redis-cli` against the current master, for a command that answers an integer.
    fn redis_int(&self, args: &[&str]) -> anyhow::Result<u64> {
        let out = self.redis_cli(args);
        out.trim()
            .parse()
            .with_context(|| format!("redis-cli {args:?} answered {out:?}"))
    }

    /// The room mapping in Redis: (node, epoch).
    pub fn room_owner(&self, room: &str) -> Option<(String, u64)> {
        let raw = self.redis_cli(&["GET", &format!("{{sfu}}:room:{room}")]);
        let v: serde_json::Value = serde_json::from_str(raw.trim()).ok()?;
        Some((v["node"].as_str()?.to_string(), v["epoch"].as_u64()?))
    }

    /// The state a node last published in its heartbeat (`serving`, `draining`, `degraded`).
    pub fn node_state(&self, node_id: &str) -> Option<String> {
        let raw = self.redis_cli(&["GET", &format!("{{sfu}}:node:{node_id}")]);
        let v: serde_json::Value = serde_json::from_str(raw.trim()).ok()?;
        Some(v["state"].as_str()?.to_string())
    }

    /// How many nodes are registered and alive: a heartbeat within [`DEAD_AFTER`] of the Redis
    /// server's `TIME` (one script, so both come from the same clock at the same moment). A
    /// node marked dead or silent for longer does not count.
    pub fn registered_nodes(&self) -> anyhow::Result<usize> {
        let window = DEAD_AFTER.as_millis().to_string();
        let n = self.redis_int(&["EVAL", COUNT_ALIVE_LUA, "1", "{sfu}:nodes", &window])?;
        Ok(n as usize)
    }

    /// The Redis server's clock (`TIME`) in ms, the clock heartbeats are stamped with.
    pub fn redis_time_ms(&self) -> anyhow::Result<u64> {
        let out = self.redis_cli(&["TIME"]);
        let mut parts = out.split_whitespace().map(str::parse::<u64>);
        match (parts.next(), parts.next()) {
            (Some(Ok(secs)), Some(Ok(micros))) => Ok(secs * 1000 + micros / 1000),
            _ => bail!("redis-cli TIME answered {out:?}"),
        }
    }

    /// How many nodes heartbeated after `ms` (Redis server time, see [`Self::redis_time_ms`]).
    pub fn heartbeats_since(&self, ms: u64) -> anyhow::Result<usize> {
        let n = self.redis_int(&["ZCOUNT", "{sfu}:nodes", &format!("({ms}"), "+inf"])?;
        Ok(n as usize)
    }

    /// The node whose worker port is `port`.
    pub fn node_by_port(&self, port: u16) -> Option<usize> {
        self.nodes.iter().position(|n| n.udp_base == port)
    }

    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(ClusterNode::logs)
            .collect::<Vec<_>>()
            .join("\n")
    }
}
