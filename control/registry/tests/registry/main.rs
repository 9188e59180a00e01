//! Registry contract tests: the same checks against `MemoryRegistry` and `RedisRegistry` (a real
//! `redis-server` started on a free loopback port), then the Redis registry's failure recovery.
//!
//! One test binary; this file owns the Redis server the tests start (through bench's harness,
//! the workspace's one launcher) and the node records they register. The scenarios:
//! - `contract.rs`: the contract, on memory (fake clock), standalone Redis and Redis Cluster;
//!   placement under concurrency;
//! - `recovery.rs`: Redis outages, restarts, stale connections and data loss.

mod contract;
mod recovery;

use std::time::Duration;

use bench::harness::{Redis, TempDir};
use registry::{NodeInfo, NodeLoad, NodeState, RedisRegistry, RedisSettings, RegistryTiming};

/// The dead-after the contract runs with (short, so a real-time run stays quick).
const DEAD_AFTER: Duration = Duration::from_millis(600);

/// Fail (never skip) when redis-server is missing.
fn require_redis() {
    assert!(
        Redis::available(),
        "redis-server is required: apt-get install redis-server, or run ./scripts/test"
    );
}

/// A `redis-server` without persistence in its own temporary directory; killed, then the
/// directory removed, when dropped.
struct RedisServer {
    redis: Redis,
    _dir: TempDir,
}

impl RedisServer {
    /// Start one on a free loopback port; returns once it answers.
    fn start() -> Self {
        Self::start_with(&[])
    }

    /// [`RedisServer::start`] with extra `redis-server` arguments.
    fn start_with(extra: &[&str]) -> Self {
        require_redis();
        let dir = TempDir::new("sfu-registry-redis").expect("redis dir");
        let redis = Redis::start_with(&dir.0, extra).expect("redis-server starts");
        Self { redis, _dir: dir }
    }

    fn port(&self) -> u16 {
        self.redis.port
    }

    /// `redis-cli` against it: the reply's text.
    fn cli(&self, args: &[&str]) -> String {
        self.redis.cli(args)
    }

    /// SIGKILL (no save).
    fn kill(&mut self) {
        self.redis.kill();
    }

    /// Start again on the same port (killing it first if it runs); returns once it answers.
    /// Empty, unless a `SAVE` left a dump behind.
    fn restart(&mut self) {
        self.redis.restart().expect("redis-server restarts");
    }

    /// A registry client with key prefix `prefix` and the contract's dead-after.
    fn registry(&self, prefix: &str) -> RedisRegistry {
        let mut s = RedisSettings::new(self.redis.url());
        s.prefix = prefix.into();
        s.timing = RegistryTiming {
            dead_after: DEAD_AFTER,
        };
        RedisRegistry::new(s).expect("registry")
    }
}

fn node(id: &str, participants: u32) -> NodeInfo {
    NodeInfo {
        node_id: id.into(),
        media_ip: "127.0.0.1".into(),
        media_ports: vec![40000],
        capacity_rooms: 0,
        load: NodeLoad {
            participants,
            ..NodeLoad::default()
        },
        state: NodeState::Serving,
        version: "test".into(),
    }
}
