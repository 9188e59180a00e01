//! The cluster registry: which dataplane nodes exist, how loaded they are, and which node owns
//! which room. One trait, two implementations that pass the same contract tests
//! (`control/tests/registry.rs`): [`MemoryRegistry`] (single node, no Redis) and
//! [`RedisRegistry`].
//!
//! Redis layout (prefix `sfu` by default; documented in `docs/cluster.md`):
//!
//! | key | type | TTL | written by |
//! |---|---|---|---|
//! | `sfu:nodes` | ZSET node id → last heartbeat (Redis server time, ms) | none | dataplane heartbeat, reaper |
//! | `sfu:node:<id>` | STRING JSON [`NodeInfo`] | 3 × heartbeat | dataplane heartbeat |
//! | `sfu:node_rooms:<id>` | SET of rooms placed on the node | none | placement, release, reaper |
//! | `sfu:room:<room>` | STRING JSON [`Placement`] | none | placement (Lua), release, reaper |
//! | `sfu:epoch` | STRING counter (fencing epochs) | none | placement (Lua) |
//!
//! All time comparisons use Redis server time inside Lua scripts, so node clocks need not agree.
//! Placement is one `EVALSHA`: it returns the current owner if that node is alive, else picks the
//! least-loaded serving node, takes a new fencing epoch and records the room — atomically.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

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
}

/// The registry contract. Every call is bounded in time (Redis calls time out).
pub trait Registry: Send {
    /// Register or refresh a node (call about every 2 s).
    fn heartbeat(&mut self, node: &NodeInfo) -> Result<(), RegistryError>;
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

fn score(n: &NodeInfo, rooms: usize) -> u64 {
    u64::from(n.load.participants) + rooms as u64
}

// -------------------------------------------------------------------------------------------------
// In memory

#[derive(Debug, Default)]
struct MemoryInner {
    nodes: BTreeMap<String, (Instant, NodeInfo)>,
    node_rooms: HashMap<String, BTreeSet<String>>,
    rooms: HashMap<String, Placement>,
    epoch: u64,
}

/// In-process registry for a single node without Redis. Clones share state.
#[derive(Debug, Clone, Default)]
pub struct MemoryRegistry {
    inner: Arc<Mutex<MemoryInner>>,
    timing: RegistryTiming,
}

impl MemoryRegistry {
    pub fn new(timing: RegistryTiming) -> Self {
        Self {
            inner: Arc::default(),
            timing,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that matters.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl MemoryInner {
    fn alive(&self, id: &str, now: Instant, dead_after: Duration) -> bool {
        self.nodes
            .get(id)
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) <= dead_after)
    }

    fn forget_node(&mut self, id: &str) {
        self.nodes.remove(id);
        for room in self.node_rooms.remove(id).unwrap_or_default() {
            if self.rooms.get(&room).is_some_and(|p| p.node == id) {
                self.rooms.remove(&room);
            }
        }
    }
}

impl Registry for MemoryRegistry {
    fn heartbeat(&mut self, node: &NodeInfo) -> Result<(), RegistryError> {
        self.lock()
            .nodes
            .insert(node.node_id.clone(), (Instant::now(), node.clone()));
        Ok(())
    }

    fn deregister(&mut self, node_id: &str) -> Result<(), RegistryError> {
        self.lock().forget_node(node_id);
        Ok(())
    }

    fn nodes(&mut self) -> Result<Vec<NodeInfo>, RegistryError> {
        let now = Instant::now();
        let g = self.lock();
        Ok(g.nodes
            .values()
            .filter(|(t, _)| now.saturating_duration_since(*t) <= self.timing.dead_after)
            .map(|(_, n)| n.clone())
            .collect())
    }

    fn place_room(&mut self, room: &str, exclude: &[String]) -> Result<Placement, RegistryError> {
        let now = Instant::now();
        let dead_after = self.timing.dead_after;
        let mut g = self.lock();
        if let Some(p) = g.rooms.get(room).cloned() {
            if !exclude.contains(&p.node) && g.alive(&p.node, now, dead_after) {
                return Ok(p);
            }
            if let Some(set) = g.node_rooms.get_mut(&p.node) {
                set.remove(room);
            }
        }
        let best = g
            .nodes
            .iter()
            .filter(|(id, (t, n))| {
                !exclude.contains(id)
                    && now.saturating_duration_since(*t) <= dead_after
                    && n.state == NodeState::Serving
                    && (n.capacity_rooms == 0
                        || g.node_rooms.get(*id).map_or(0, BTreeSet::len)
                            < n.capacity_rooms as usize)
            })
            .min_by_key(|(id, (_, n))| {
                (
                    score(n, g.node_rooms.get(*id).map_or(0, BTreeSet::len)),
                    (*id).clone(),
                )
            })
            .map(|(id, _)| id.clone())
            .ok_or(RegistryError::NoNodes)?;
        g.epoch += 1;
        let p = Placement {
            node: best.clone(),
            epoch: g.epoch,
        };
        g.rooms.insert(room.to_string(), p.clone());
        g.node_rooms
            .entry(best)
            .or_default()
            .insert(room.to_string());
        Ok(p)
    }

    fn room_owners(&mut self, rooms: &[String]) -> Result<Vec<Option<Placement>>, RegistryError> {
        let g = self.lock();
        Ok(rooms.iter().map(|r| g.rooms.get(r).cloned()).collect())
    }

    fn release_room(&mut self, room: &str, placement: &Placement) -> Result<bool, RegistryError> {
        let mut g = self.lock();
        if g.rooms.get(room) != Some(placement) {
            return Ok(false);
        }
        g.rooms.remove(room);
        if let Some(set) = g.node_rooms.get_mut(&placement.node) {
            set.remove(room);
        }
        Ok(true)
    }

    fn mark_dead(&mut self, node_id: &str) -> Result<(), RegistryError> {
        let mut g = self.lock();
        if let Some((t, _)) = g.nodes.get_mut(node_id) {
            // Far enough in the past to be dead under any timing.
            *t = Instant::now()
                .checked_sub(Duration::from_secs(3600))
                .unwrap_or(*t);
        }
        Ok(())
    }

    fn reap_dead(&mut self) -> Result<Vec<String>, RegistryError> {
        let now = Instant::now();
        let dead_after = self.timing.dead_after;
        let mut g = self.lock();
        let dead: Vec<String> = g
            .nodes
            .iter()
            .filter(|(_, (t, _))| now.saturating_duration_since(*t) > dead_after)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &dead {
            g.forget_node(id);
        }
        Ok(dead)
    }
}

// -------------------------------------------------------------------------------------------------
// Redis

const HEARTBEAT_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[2], now, ARGV[1])
return now
"#;

const PLACE_LUA: &str = r#"
local prefix, dead_after, room = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local excluded = {}
for i = 4, #ARGV do excluded[ARGV[i]] = true end
local function alive(id)
  if excluded[id] then return false end
  local hb = redis.call('ZSCORE', prefix .. ':nodes', id)
  return hb ~= false and hb ~= nil and (now - tonumber(hb)) <= dead_after
end
local cur = redis.call('GET', KEYS[1])
if cur then
  local owner = cjson.decode(cur)
  if alive(owner.node) then return cur end
  redis.call('SREM', prefix .. ':node_rooms:' .. owner.node, room)
end
local ids = redis.call('ZRANGEBYSCORE', prefix .. ':nodes', now - dead_after, '+inf')
local best, best_score = nil, nil
for _, id in ipairs(ids) do
  if not excluded[id] then
    local raw = redis.call('GET', prefix .. ':node:' .. id)
    if raw then
      local n = cjson.decode(raw)
      local rooms = redis.call('SCARD', prefix .. ':node_rooms:' .. id)
      local cap = tonumber(n.capacity_rooms) or 0
      if n.state == 'serving' and (cap == 0 or rooms < cap) then
        local score = (tonumber(n.load.participants) or 0) + rooms
        if best == nil or score < best_score or (score == best_score and id < best) then
          best, best_score = id, score
        end
      end
    end
  end
end
if not best then return false end
local epoch = redis.call('INCR', prefix .. ':epoch')
local v = cjson.encode({node = best, epoch = epoch})
redis.call('SET', KEYS[1], v)
redis.call('SADD', prefix .. ':node_rooms:' .. best, room)
return v
"#;

const RELEASE_LUA: &str = r#"
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
local o = cjson.decode(cur)
if o.node == ARGV[2] and tostring(o.epoch) == ARGV[3] then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', ARGV[1] .. ':node_rooms:' .. ARGV[2], ARGV[4])
  return 1
end
return 0
"#;

const REAP_LUA: &str = r#"
local prefix, dead_after = ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead = redis.call('ZRANGEBYSCORE', prefix .. ':nodes', '-inf', '(' .. (now - dead_after))
for _, id in ipairs(dead) do
  local rooms = redis.call('SMEMBERS', prefix .. ':node_rooms:' .. id)
  for _, room in ipairs(rooms) do
    local cur = redis.call('GET', prefix .. ':room:' .. room)
    if cur and cjson.decode(cur).node == id then redis.call('DEL', prefix .. ':room:' .. room) end
  end
  redis.call('DEL', prefix .. ':node_rooms:' .. id, prefix .. ':node:' .. id)
  redis.call('ZREM', prefix .. ':nodes', id)
end
return dead
"#;

/// Settings of a [`RedisRegistry`].
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: String,
    /// Key and channel prefix.
    pub prefix: String,
    /// Connect, read and write timeout of every call.
    pub timeout: Duration,
    pub timing: RegistryTiming,
}

impl RedisSettings {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "sfu".into(),
            timeout: Duration::from_millis(500),
            timing: RegistryTiming::default(),
        }
    }

    pub fn node_key(&self, id: &str) -> String {
        format!("{}:node:{id}", self.prefix)
    }

    pub fn room_key(&self, room: &str) -> String {
        format!("{}:room:{room}", self.prefix)
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

/// What [`subscribe`] reports to its owner.
#[derive(Debug)]
pub enum Subscription<'a> {
    /// Subscribed to both channels (again).
    Up,
    /// The subscription was lost (reported once per loss); reconnecting with backoff.
    Down(redis::RedisError),
    /// A beacon on the health channel (undecodable ones are skipped).
    Beacon(crate::Beacon),
    /// A message on the private channel, undecoded.
    Message(&'a [u8]),
}

/// Subscribe to `channel` and the health channel and report what arrives to `on` until `stop`
/// is set, reconnecting after a failure with backoff (100 ms doubling to 2 s). Blocks: run it on
/// its own thread; it checks `stop` at least every 500 ms while subscribed.
pub fn subscribe(
    settings: &RedisSettings,
    channel: &str,
    stop: &std::sync::atomic::AtomicBool,
    mut on: impl FnMut(Subscription<'_>),
) {
    use std::sync::atomic::Ordering;
    let health = settings.health_channel();
    let mut backoff = Duration::from_millis(100);
    let mut up = false;
    while !stop.load(Ordering::Relaxed) {
        let result = (|| -> redis::RedisResult<()> {
            let client = redis::Client::open(settings.url.as_str())?;
            let mut conn = client.get_connection_with_timeout(settings.timeout)?;
            let mut ps = conn.as_pubsub();
            ps.subscribe(channel)?;
            ps.subscribe(&health)?;
            ps.set_read_timeout(Some(Duration::from_millis(500)))?;
            on(Subscription::Up);
            up = true;
            backoff = Duration::from_millis(100);
            while !stop.load(Ordering::Relaxed) {
                let msg = match ps.get_message() {
                    Ok(m) => m,
                    Err(e) if e.is_timeout() => continue,
                    Err(e) => return Err(e),
                };
                let payload = msg.get_payload_bytes();
                if msg.get_channel_name() == health {
                    if let Ok(b) = crate::decode::<crate::Beacon>(payload) {
                        on(Subscription::Beacon(b));
                    }
                } else {
                    on(Subscription::Message(payload));
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            if up {
                on(Subscription::Down(e));
                up = false;
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

/// A Redis connection with timeouts that reconnects lazily, at most once per backoff interval, so
/// a dead Redis costs callers one fast error instead of a hang.
pub struct RedisConn {
    client: redis::Client,
    conn: Option<redis::Connection>,
    timeout: Duration,
    next_attempt: Instant,
    backoff: Duration,
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConn")
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

impl RedisConn {
    pub fn new(url: &str, timeout: Duration) -> Result<Self, RegistryError> {
        let client = redis::Client::open(url)
            .map_err(|e| RegistryError::Unavailable(format!("bad redis url: {e}")))?;
        Ok(Self {
            client,
            conn: None,
            timeout,
            next_attempt: Instant::now(),
            backoff: Duration::from_millis(100),
        })
    }

    /// The connection, (re)connecting if allowed now.
    pub fn get(&mut self) -> Result<&mut redis::Connection, RegistryError> {
        if self.conn.is_none() {
            let now = Instant::now();
            if now < self.next_attempt {
                return Err(RegistryError::Unavailable(
                    "redis is down; reconnect pending".into(),
                ));
            }
            match self.client.get_connection_with_timeout(self.timeout) {
                Ok(c) => {
                    let _ = c.set_read_timeout(Some(self.timeout));
                    let _ = c.set_write_timeout(Some(self.timeout));
                    self.backoff = Duration::from_millis(100);
                    self.conn = Some(c);
                }
                Err(e) => {
                    self.next_attempt = now + self.backoff;
                    self.backoff = (self.backoff * 2).min(Duration::from_secs(2));
                    return Err(RegistryError::Unavailable(e.to_string()));
                }
            }
        }
        self.conn
            .as_mut()
            .ok_or_else(|| RegistryError::Unavailable("not connected".into()))
    }

    /// Run `f` on the connection; an I/O error drops the connection for a later reconnect.
    pub fn with<T>(
        &mut self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, RegistryError> {
        let conn = self.get()?;
        match f(conn) {
            Ok(v) => Ok(v),
            Err(e) => {
                if e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                {
                    self.conn = None;
                    Err(RegistryError::Unavailable(e.to_string()))
                } else {
                    Err(RegistryError::Protocol(e.to_string()))
                }
            }
        }
    }

    /// PUBLISH `payload` on `channel`.
    pub fn publish(&mut self, channel: &str, payload: &[u8]) -> Result<(), RegistryError> {
        self.with(|c| {
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(payload)
                .query::<i64>(c)
        })
        .map(|_| ())
    }
}

/// The Redis-backed registry.
pub struct RedisRegistry {
    settings: RedisSettings,
    conn: RedisConn,
    heartbeat: redis::Script,
    place: redis::Script,
    release: redis::Script,
    reap: redis::Script,
}

impl std::fmt::Debug for RedisRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRegistry")
            .field("settings", &self.settings)
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

impl RedisRegistry {
    pub fn new(settings: RedisSettings) -> Result<Self, RegistryError> {
        let conn = RedisConn::new(&settings.url, settings.timeout)?;
        Ok(Self {
            settings,
            conn,
            heartbeat: redis::Script::new(HEARTBEAT_LUA),
            place: redis::Script::new(PLACE_LUA),
            release: redis::Script::new(RELEASE_LUA),
            reap: redis::Script::new(REAP_LUA),
        })
    }

    pub fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    fn dead_after_ms(&self) -> u64 {
        self.settings.timing.dead_after.as_millis() as u64
    }
}

impl Registry for RedisRegistry {
    fn heartbeat(&mut self, node: &NodeInfo) -> Result<(), RegistryError> {
        let json =
            serde_json::to_string(node).map_err(|e| RegistryError::Protocol(e.to_string()))?;
        let key = self.settings.node_key(&node.node_id);
        let nodes = format!("{}:nodes", self.settings.prefix);
        let ttl = self.dead_after_ms().max(1000) * 3 / 2;
        let script = &self.heartbeat;
        self.conn.with(|c| {
            script
                .key(&key)
                .key(&nodes)
                .arg(&node.node_id)
                .arg(&json)
                .arg(ttl)
                .invoke::<i64>(c)
        })?;
        Ok(())
    }

    fn deregister(&mut self, node_id: &str) -> Result<(), RegistryError> {
        // Reuse the reaper on this one node: mark it dead, then reap.
        self.mark_dead(node_id)?;
        self.reap_dead().map(|_| ())
    }

    fn nodes(&mut self) -> Result<Vec<NodeInfo>, RegistryError> {
        let prefix = self.settings.prefix.clone();
        let dead_after = self.dead_after_ms();
        let raw: Vec<Option<String>> = self.conn.with(|c| {
            let (secs, micros): (u64, u64) = redis::cmd("TIME").query(c)?;
            let now = secs * 1000 + micros / 1000;
            let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                .arg(format!("{prefix}:nodes"))
                .arg(now.saturating_sub(dead_after))
                .arg("+inf")
                .query(c)?;
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let keys: Vec<String> = ids.iter().map(|id| format!("{prefix}:node:{id}")).collect();
            redis::cmd("MGET").arg(keys).query(c)
        })?;
        Ok(raw
            .into_iter()
            .flatten()
            .filter_map(|j| serde_json::from_str(&j).ok())
            .collect())
    }

    fn place_room(&mut self, room: &str, exclude: &[String]) -> Result<Placement, RegistryError> {
        let key = self.settings.room_key(room);
        let prefix = self.settings.prefix.clone();
        let dead_after = self.dead_after_ms();
        let script = &self.place;
        let v: Option<String> = self.conn.with(|c| {
            let mut inv = script.key(&key);
            inv.arg(&prefix).arg(dead_after).arg(room);
            for e in exclude {
                inv.arg(e);
            }
            inv.invoke(c)
        })?;
        let v = v.ok_or(RegistryError::NoNodes)?;
        serde_json::from_str(&v)
            .map_err(|e| RegistryError::Protocol(format!("placement {v:?}: {e}")))
    }

    fn room_owners(&mut self, rooms: &[String]) -> Result<Vec<Option<Placement>>, RegistryError> {
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = rooms.iter().map(|r| self.settings.room_key(r)).collect();
        let raw: Vec<Option<String>> = self.conn.with(|c| redis::cmd("MGET").arg(keys).query(c))?;
        Ok(raw
            .into_iter()
            .map(|v| v.and_then(|j| serde_json::from_str(&j).ok()))
            .collect())
    }

    fn release_room(&mut self, room: &str, placement: &Placement) -> Result<bool, RegistryError> {
        let key = self.settings.room_key(room);
        let prefix = self.settings.prefix.clone();
        let script = &self.release;
        let n: i64 = self.conn.with(|c| {
            script
                .key(&key)
                .arg(&prefix)
                .arg(&placement.node)
                .arg(placement.epoch.to_string())
                .arg(room)
                .invoke(c)
        })?;
        Ok(n == 1)
    }

    fn mark_dead(&mut self, node_id: &str) -> Result<(), RegistryError> {
        let nodes = format!("{}:nodes", self.settings.prefix);
        self.conn
            .with(|c| {
                redis::cmd("ZADD")
                    .arg(&nodes)
                    .arg("XX")
                    .arg(0)
                    .arg(node_id)
                    .query::<i64>(c)
            })
            .map(|_| ())
    }

    fn reap_dead(&mut self) -> Result<Vec<String>, RegistryError> {
        let prefix = self.settings.prefix.clone();
        let dead_after = self.dead_after_ms();
        let script = &self.reap;
        self.conn
            .with(|c| script.arg(&prefix).arg(dead_after).invoke(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_keys_and_channels() {
        let s = RedisSettings::new("redis://127.0.0.1:1");
        assert_eq!(s.node_key("n1"), "sfu:node:n1");
        assert_eq!(s.room_key("demo"), "sfu:room:demo");
        assert_eq!(s.rpc_channel("n1"), "sfu:rpc:n1");
        assert_eq!(s.reply_channel("s1"), "sfu:sig:s1");
        assert_eq!(s.health_channel(), "sfu:health");
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
    }
}
