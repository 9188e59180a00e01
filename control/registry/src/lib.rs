//! The cluster registry: which dataplane nodes exist, how loaded they are, and which node owns
//! which room. One trait, two implementations that pass the same contract tests
//! (`control/registry/tests/registry/`): [`MemoryRegistry`] (single node, no Redis) and
//! [`RedisRegistry`].
//!
//! Redis layout (prefix `sfu` by default, as the hash tag `{sfu}` so every key of a deployment
//! is in one slot; documented in `docs/cluster.md`):
//!
//! | key | type | TTL | written by |
//! |---|---|---|---|
//! | `{sfu}:nodes` | ZSET node id → last heartbeat (Redis server time, ms) | none | dataplane heartbeat, reaper |
//! | `{sfu}:node:<id>` | STRING JSON [`NodeInfo`] | 1.5 × dead-after | dataplane heartbeat |
//! | `{sfu}:node_rooms:<id>` | SET of rooms placed on the node | none | placement, release, reaper, re-assert |
//! | `{sfu}:room:<room>` | STRING JSON [`Placement`] | none | placement (Lua), release, reaper, re-assert |
//! | `{sfu}:epoch` | STRING counter (fencing epochs) | none | placement (Lua), re-assert (re-seed) |
//! | `{sfu}:gen` | STRING generation token | none | first caller after it is missing |
//! | `{sfu}:recovering` | STRING, present during a recovery window | recovery window | whoever notices data loss |
//! | `{sfu}:recovered:<run_id>` | STRING marker: a window was started for this server incarnation | 1 h | same |
//!
//! All time comparisons use Redis server time inside Lua scripts, so node clocks need not agree.
//! Placement is one `EVALSHA` (after a `ZRANGE` of the node ids, so the script can declare the
//! keys it reads): it returns the current owner if that node is alive, else picks the
//! least-loaded serving node, takes a new fencing epoch and records the room — atomically.

pub mod cli;
mod clock;
mod conn;
pub mod link;
mod memory;
mod redis_registry;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use clock::{Clock, ManualClock, SystemClock};
pub use memory::MemoryRegistry;

/// Whether a node takes new rooms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    Serving,
    /// Finishing its rooms; gets no new ones.
    Draining,
    /// A worker failed and is restarting: its existing rooms continue, new rooms go elsewhere.
    Degraded,
}

/// Live load of a node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeLoad {
    pub rooms: u32,
    pub participants: u32,
    pub packets_per_sec: u64,
    pub cpu_percent: f32,
    /// Participants the node can still take: the autoscaling signal.
    #[serde(default)]
    pub capacity_remaining: u32,
}

/// What a dataplane publishes about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node_id: String,
    /// Public media IP and the UDP port of each worker.
    pub media_ip: String,
    pub media_ports: Vec<u16>,
    /// Maximum rooms the node accepts (0 = unlimited).
    pub capacity_rooms: u32,
    pub load: NodeLoad,
    pub state: NodeState,
    pub version: String,
}

/// A room's owner and the fencing epoch of that ownership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub node: String,
    pub epoch: u64,
}

/// Registry failures. None of them is fatal for calls in progress.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistryError {
    /// Redis is unreachable, timed out or failed; retry later.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// No serving node is alive.
    #[error("no serving node available")]
    NoNodes,
    /// Redis answered something unexpected.
    #[error("registry protocol error: {0}")]
    Protocol(String),
    /// The registry lost its data moments ago (Redis restarted or failed over) and the nodes are
    /// re-asserting their rooms: an unmapped room cannot be placed yet. Retry shortly.
    #[error("the registry is recovering from data loss; retry shortly")]
    Recovering,
}

/// The registry contract. Every call is bounded in time (Redis calls time out).
pub trait Registry: Send {
    /// Register or refresh a node (call about every 2 s). Returns `true` when the registry may
    /// have lost data since this caller last looked (Redis restarted, failed over, was flushed):
    /// the node must then [`Registry::reassert`] its rooms.
    fn heartbeat(&mut self, node: &NodeInfo) -> Result<bool, RegistryError>;
    /// Record again the rooms `node_id` hosts (room, epoch): missing mappings are restored, rooms
    /// placed elsewhere under an older epoch taken back, and the epoch counter raised above every
    /// epoch. Returns the rooms another node now holds under a newer epoch.
    fn reassert(
        &mut self,
        node_id: &str,
        rooms: &[(String, u64)],
    ) -> Result<Vec<String>, RegistryError>;
    /// Remove a node and the rooms it owns.
    fn deregister(&mut self, node_id: &str) -> Result<(), RegistryError>;
    /// The alive nodes.
    fn nodes(&mut self) -> Result<Vec<NodeInfo>, RegistryError>;
    /// The owner of `room`: the current one if alive and not in `exclude`, else a newly chosen
    /// least-loaded serving node with a new, larger fencing epoch.
    fn place_room(&mut self, room: &str, exclude: &[String]) -> Result<Placement, RegistryError>;
    /// Current owners of `rooms` (alive or not), in order.
    fn room_owners(&mut self, rooms: &[String]) -> Result<Vec<Option<Placement>>, RegistryError>;
    /// Remove the room mapping if it is still exactly `placement`. Returns whether it was removed.
    fn release_room(&mut self, room: &str, placement: &Placement) -> Result<bool, RegistryError>;
    /// Treat a node as dead now (an observer saw it fail). Its next heartbeat revives it.
    fn mark_dead(&mut self, node_id: &str) -> Result<(), RegistryError>;
    /// Remove dead nodes and their room mappings. Returns the removed node ids.
    fn reap_dead(&mut self) -> Result<Vec<String>, RegistryError>;
}

/// Timing shared by both implementations.
#[derive(Debug, Clone, Copy)]
pub struct RegistryTiming {
    /// A node whose last heartbeat is older than this is dead.
    pub dead_after: Duration,
}

impl Default for RegistryTiming {
    fn default() -> Self {
        Self {
            dead_after: Duration::from_secs(5),
        }
    }
}

// -------------------------------------------------------------------------------------------------
// Redis settings

pub use conn::{RedisConn, Subscription, subscribe};
pub use redis_registry::{DEFAULT_RECOVERY_WINDOW, RedisRegistry};

/// Settings of the Redis link.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]`. With sentinels, only its credentials and
    /// database are used; the host comes from the sentinels.
    pub url: String,
    /// Key and channel prefix. Keys use it as a hash tag (`{sfu}:…`), so all of them share one
    /// Redis Cluster slot.
    pub prefix: String,
    /// Sentinels (`host:port`) to ask for the master; empty: connect to `url` directly.
    pub sentinels: Vec<String>,
    /// The master's name at the sentinels.
    pub master_name: String,
    /// Connect, read and write timeout of every call.
    pub timeout: Duration,
    pub timing: RegistryTiming,
    /// After data loss, how long unmapped rooms wait while nodes re-assert theirs.
    pub recovery_window: Duration,
}

impl RedisSettings {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "sfu".into(),
            sentinels: Vec::new(),
            master_name: "mymaster".into(),
            timeout: Duration::from_millis(500),
            timing: RegistryTiming::default(),
            recovery_window: DEFAULT_RECOVERY_WINDOW,
        }
    }

    /// The hash tag every key starts with: `{prefix}` (or the prefix itself if it already holds
    /// a tag).
    fn tag(&self) -> String {
        if self.prefix.contains('{') {
            self.prefix.clone()
        } else {
            format!("{{{}}}", self.prefix)
        }
    }

    /// The key `<tag>:<suffix>`.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.tag())
    }

    pub fn node_key(&self, id: &str) -> String {
        self.key(&format!("node:{id}"))
    }

    pub fn node_rooms_key(&self, id: &str) -> String {
        self.key(&format!("node_rooms:{id}"))
    }

    pub fn room_key(&self, room: &str) -> String {
        self.key(&format!("room:{room}"))
    }

    /// Channel a node receives control requests on.
    pub fn rpc_channel(&self, node_id: &str) -> String {
        format!("{}:rpc:{node_id}", self.prefix)
    }

    /// Channel a signaling instance receives responses and events on.
    pub fn reply_channel(&self, signaling_id: &str) -> String {
        format!("{}:sig:{signaling_id}", self.prefix)
    }

    /// Channel every process publishes its liveness on.
    pub fn health_channel(&self) -> String {
        format!("{}:health", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn redis_keys_share_one_slot_and_channels_keep_the_prefix() {
        let s = RedisSettings::new("redis://127.0.0.1:1");
        assert_eq!(s.node_key("n1"), "{sfu}:node:n1");
        assert_eq!(s.room_key("demo"), "{sfu}:room:demo");
        assert_eq!(s.node_rooms_key("n1"), "{sfu}:node_rooms:n1");
        assert_eq!(s.key("epoch"), "{sfu}:epoch");
        assert_eq!(s.rpc_channel("n1"), "sfu:rpc:n1");
        assert_eq!(s.reply_channel("s1"), "sfu:sig:s1");
        assert_eq!(s.health_channel(), "sfu:health");
        let mut t = s.clone();
        t.prefix = "{app}.sfu".into();
        assert_eq!(t.room_key("r"), "{app}.sfu:room:r");
    }

    #[test]
    fn unreachable_redis_fails_fast() {
        // Port 1 on loopback: connection refused immediately.
        let mut r = RedisRegistry::new(RedisSettings::new("redis://127.0.0.1:1")).expect("client");
        let t = Instant::now();
        assert!(matches!(
            r.place_room("x", &[]),
            Err(RegistryError::Unavailable(_))
        ));
        // The second call does not even try (backoff) and is immediate.
        assert!(matches!(
            r.place_room("x", &[]),
            Err(RegistryError::Unavailable(_))
        ));
        assert!(t.elapsed() < Duration::from_secs(2));
        assert!(RedisRegistry::new(RedisSettings::new("nonsense://")).is_err());
    }
}
