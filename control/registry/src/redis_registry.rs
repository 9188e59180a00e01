//! The Redis-backed [`Registry`]: Lua scripts that **declare every key they touch**, all keys of
//! one deployment in one hash slot (`{sfu}:…`), so the same scripts run on a standalone server,
//! behind Sentinel, and on Redis Cluster.
//!
//! Data loss (Redis restarted without persistence, a failover to a replica that missed writes,
//! `FLUSHALL`): every call carries the generation token (`{sfu}:gen`) and the server `run_id`
//! this process saw last. A caller that sees either change starts a **recovery window**
//! (`{sfu}:recovering`, a few seconds, once per server incarnation or generation): meanwhile rooms
//! with a mapping are placed as usual but an unmapped room gets [`RegistryError::Recovering`]
//! (callers retry), and nodes **re-assert** the rooms they host with their epochs
//! ([`Registry::reassert`]), which also re-seeds the epoch counter above every epoch still in use.
//! So a join never lands a live room on a second node because Redis forgot it, and epochs never
//! go backwards.

use std::time::Duration;

use super::conn::RedisConn;
use super::{NodeInfo, Placement, RedisSettings, Registry, RegistryError};

/// Shared prelude: the generation check. KEYS[1] gen, KEYS[2] recovering, KEYS[3] the recovery
/// marker of the current server incarnation (so the window opens once per incarnation, and once
/// after a flush, which removes the marker too); ARGV[1] known gen, ARGV[2] known run id, ARGV[3]
/// current run id, ARGV[4] a fresh gen, ARGV[5] the window (ms).
const GENERATION_LUA: &str = r#"
local function open_window()
  if redis.call('SET', KEYS[3], '1', 'NX', 'EX', 3600) then
    redis.call('SET', KEYS[2], '1', 'PX', ARGV[5])
  end
end
local function generation()
  local gen = redis.call('GET', KEYS[1])
  local changed = false
  if not gen then
    gen = ARGV[4]
    redis.call('SET', KEYS[1], gen)
    if ARGV[1] ~= '' then
      changed = true
      open_window()
    end
  elseif ARGV[1] ~= '' and gen ~= ARGV[1] then
    -- A process that started after the loss created the new generation without a window (it
    -- knew no older one): the first caller that knew the old one opens it.
    changed = true
    open_window()
  end
  if ARGV[2] ~= '' and ARGV[3] ~= '' and ARGV[2] ~= ARGV[3] then
    changed = true
    open_window()
  end
  return gen, changed
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"#;

/// KEYS 1-3 generation, 4 node info, 5 nodes zset. ARGV 1-5 generation, 6 node id, 7 info JSON,
/// 8 info TTL (ms). Returns {gen, changed}.
const HEARTBEAT_LUA: &str = r#"
local gen, changed = generation()
redis.call('SET', KEYS[4], ARGV[7], 'PX', ARGV[8])
redis.call('ZADD', KEYS[5], now_ms(), ARGV[6])
return {gen, changed and '1' or '0'}
"#;

/// KEYS 1-3 generation, 4 room, 5 nodes zset, 6 epoch counter, then per candidate node i
/// (1-based) KEYS[5+2i] its info and KEYS[6+2i] its room set. ARGV 1-5 generation, 6 dead-after
/// (ms), 7 room, 8 n, 9..8+n candidate ids, then excluded ids. Returns {status, placement, gen}.
const PLACE_LUA: &str = r#"
local gen, changed = generation()
local now = now_ms()
local dead_after, room, n = tonumber(ARGV[6]), ARGV[7], tonumber(ARGV[8])
local idx = {}
for i = 1, n do idx[ARGV[8 + i]] = i end
local excluded = {}
for i = 9 + n, #ARGV do excluded[ARGV[i]] = true end
local function alive(id)
  if excluded[id] then return false end
  local hb = redis.call('ZSCORE', KEYS[5], id)
  return hb ~= false and hb ~= nil and (now - tonumber(hb)) <= dead_after
end
local cur = redis.call('GET', KEYS[4])
if cur then
  local owner = cjson.decode(cur)
  if alive(owner.node) then return {'placed', cur, gen} end
  local i = idx[owner.node]
  if i then redis.call('SREM', KEYS[6 + 2 * i], room) end
end
if redis.call('EXISTS', KEYS[2]) == 1 then return {'recovering', '', gen} end
local best, best_score = nil, nil
for i = 1, n do
  local id = ARGV[8 + i]
  if alive(id) then
    local raw = redis.call('GET', KEYS[5 + 2 * i])
    if raw then
      local info = cjson.decode(raw)
      local rooms = redis.call('SCARD', KEYS[6 + 2 * i])
      local cap = tonumber(info.capacity_rooms) or 0
      if info.state == 'serving' and (cap == 0 or rooms < cap) then
        local score = (tonumber(info.load.participants) or 0) + rooms
        if best == nil or score < best_score or (score == best_score and id < ARGV[8 + best]) then
          best, best_score = i, score
        end
      end
    end
  end
end
if not best then return {'none', '', gen} end
local epoch = redis.call('INCR', KEYS[6])
local v = cjson.encode({node = ARGV[8 + best], epoch = epoch})
redis.call('SET', KEYS[4], v)
redis.call('SADD', KEYS[6 + 2 * best], room)
return {'placed', v, gen}
"#;

/// KEYS 1 room, 2 the node's room set. ARGV 1 node, 2 epoch, 3 room. Compare-and-delete; the
/// node's set loses the room unless the node holds it under another epoch.
const RELEASE_LUA: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  local o = cjson.decode(cur)
  if o.node == ARGV[1] then
    if tonumber(o.epoch) == tonumber(ARGV[2]) then
      redis.call('DEL', KEYS[1])
      redis.call('SREM', KEYS[2], ARGV[3])
      return 1
    end
    return 0
  end
end
redis.call('SREM', KEYS[2], ARGV[3])
return 0
"#;

/// KEYS 1 nodes zset, 2 node info, 3 node room set, 4.. the rooms' keys. ARGV 1 node id,
/// 2 dead-after (ms), 3.. room names. Removes the node if it is still dead.
const REAP_LUA: &str = r#"
local hb = redis.call('ZSCORE', KEYS[1], ARGV[1])
if hb and (now_ms() - tonumber(hb)) <= tonumber(ARGV[2]) then return 0 end
for i = 3, #ARGV do
  local cur = redis.call('GET', KEYS[i + 1])
  if cur and cjson.decode(cur).node == ARGV[1] then redis.call('DEL', KEYS[i + 1]) end
end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
"#;

/// KEYS 1 epoch counter, 2 the node's room set, 2+i room i. ARGV 1 node, 2 n, 2+i room i,
/// 2+n+i epoch i. Restores missing mappings, takes back rooms placed elsewhere under an older
/// epoch (placed while the registry had forgotten us), raises the counter above every epoch.
/// Returns the rooms now owned elsewhere under a newer epoch (the caller is fenced for those).
const REASSERT_LUA: &str = r#"
local node, n = ARGV[1], tonumber(ARGV[2])
local max = 0
local lost = {}
for i = 1, n do
  local room, e = ARGV[2 + i], tonumber(ARGV[2 + n + i])
  if e > max then max = e end
  local mine = cjson.encode({node = node, epoch = e})
  local cur = redis.call('GET', KEYS[2 + i])
  if not cur then
    redis.call('SET', KEYS[2 + i], mine)
    redis.call('SADD', KEYS[2], room)
  else
    local o = cjson.decode(cur)
    if o.node == node then
      redis.call('SADD', KEYS[2], room)
    elseif tonumber(o.epoch) < e then
      redis.call('SET', KEYS[2 + i], mine)
      redis.call('SADD', KEYS[2], room)
    else
      table.insert(lost, room)
    end
  end
end
local c = tonumber(redis.call('GET', KEYS[1]) or '0')
if c < max then redis.call('SET', KEYS[1], max) end
return lost
"#;

/// The scripts that start with the generation check.
#[derive(Clone, Copy)]
enum ScriptKind {
    Heartbeat,
    Place,
}

/// The Redis-backed registry.
pub struct RedisRegistry {
    settings: RedisSettings,
    conn: RedisConn,
    heartbeat: redis::Script,
    place: redis::Script,
    release: redis::Script,
    reap: redis::Script,
    reassert: redis::Script,
    /// The generation token and server run id this process saw last ("" = none yet).
    known_gen: String,
    known_run: String,
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
        let conn = RedisConn::new(&settings)?;
        let with_prelude = |body: &str| redis::Script::new(&format!("{GENERATION_LUA}\n{body}"));
        Ok(Self {
            settings,
            conn,
            heartbeat: with_prelude(HEARTBEAT_LUA),
            place: with_prelude(PLACE_LUA),
            release: redis::Script::new(RELEASE_LUA),
            reap: with_prelude(REAP_LUA),
            reassert: redis::Script::new(REASSERT_LUA),
            known_gen: String::new(),
            known_run: String::new(),
        })
    }

    pub fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    fn dead_after_ms(&self) -> u64 {
        self.settings.timing.dead_after.as_millis() as u64
    }

    /// The generation keys and arguments (see [`GENERATION_LUA`]); the current server's run id
    /// (`KEYS[3]`, `ARGV[3]`) is filled in by [`Self::run_script`] for the server that runs it.
    fn generation_args(&self) -> (Vec<String>, Vec<String>) {
        let s = &self.settings;
        let keys = vec![s.key("gen"), s.key("recovering"), String::new()];
        let args = vec![
            self.known_gen.clone(),
            self.known_run.clone(),
            String::new(),
            format!("{:032x}", rand::random::<u128>()),
            (s.recovery_window.as_millis() as u64).max(1).to_string(),
        ];
        (keys, args)
    }

    /// Run a script that starts with the generation check. The run id it claims is the one of
    /// the server the call actually reaches: a call retried on a fresh connection (after a
    /// restart or failover) compares the new server's id with the last one seen, so the change
    /// is noticed by that very call. Remembers what the call saw.
    fn run_script<T: redis::FromRedisValue>(
        &mut self,
        script: ScriptKind,
        mut keys: Vec<String>,
        mut args: Vec<String>,
        generation: impl Fn(&T) -> &str,
    ) -> Result<T, RegistryError> {
        let s = &self.settings;
        let script = match script {
            ScriptKind::Heartbeat => &self.heartbeat,
            ScriptKind::Place => &self.place,
        };
        let mut claimed = String::new();
        let out: T = self.conn.with_server(|c, run_id| {
            keys[2] = s.key(&format!("recovered:{run_id}"));
            args[2] = run_id.to_string();
            claimed = run_id.to_string();
            script.key(&keys).arg(&args).invoke(c)
        })?;
        self.known_gen = generation(&out).to_string();
        if !claimed.is_empty() {
            self.known_run = claimed;
        }
        Ok(out)
    }

    /// Every node id in the registry (alive or not; the scripts check liveness).
    fn node_ids(&mut self) -> Result<Vec<String>, RegistryError> {
        let nodes = self.settings.key("nodes");
        self.conn
            .with(|c| redis::cmd("ZRANGE").arg(&nodes).arg(0).arg(-1).query(c))
    }
}

impl Registry for RedisRegistry {
    fn heartbeat(&mut self, node: &NodeInfo) -> Result<bool, RegistryError> {
        let json =
            serde_json::to_string(node).map_err(|e| RegistryError::Protocol(e.to_string()))?;
        let (mut keys, mut args) = self.generation_args();
        keys.push(self.settings.node_key(&node.node_id));
        keys.push(self.settings.key("nodes"));
        args.push(node.node_id.clone());
        args.push(json);
        args.push((self.dead_after_ms().max(1000) * 3 / 2).to_string());
        let (_, changed): (String, String) =
            self.run_script(ScriptKind::Heartbeat, keys, args, |t: &(String, String)| {
                &t.0
            })?;
        Ok(changed == "1")
    }

    fn deregister(&mut self, node_id: &str) -> Result<(), RegistryError> {
        // Reuse the reaper on this one node: mark it dead, then reap.
        self.mark_dead(node_id)?;
        self.reap_dead().map(|_| ())
    }

    fn nodes(&mut self) -> Result<Vec<NodeInfo>, RegistryError> {
        let nodes = self.settings.key("nodes");
        let dead_after = self.dead_after_ms();
        let ids: Vec<String> = self.conn.with(|c| {
            let (secs, micros): (u64, u64) = redis::cmd("TIME").query(c)?;
            let now = secs * 1000 + micros / 1000;
            redis::cmd("ZRANGEBYSCORE")
                .arg(&nodes)
                .arg(now.saturating_sub(dead_after))
                .arg("+inf")
                .query(c)
        })?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.settings.node_key(id)).collect();
        let raw: Vec<Option<String>> =
            self.conn.with(|c| redis::cmd("MGET").arg(&keys).query(c))?;
        Ok(raw
            .into_iter()
            .flatten()
            .filter_map(|j| serde_json::from_str(&j).ok())
            .collect())
    }

    fn place_room(&mut self, room: &str, exclude: &[String]) -> Result<Placement, RegistryError> {
        let ids = self.node_ids()?;
        let (mut keys, mut args) = self.generation_args();
        let s = &self.settings;
        keys.extend([s.room_key(room), s.key("nodes"), s.key("epoch")]);
        for id in &ids {
            keys.push(s.node_key(id));
            keys.push(s.node_rooms_key(id));
        }
        args.push(self.dead_after_ms().to_string());
        args.push(room.to_string());
        args.push(ids.len().to_string());
        args.extend(ids.iter().cloned());
        args.extend(exclude.iter().cloned());
        let (status, value, _): (String, String, String) = self.run_script(
            ScriptKind::Place,
            keys,
            args,
            |t: &(String, String, String)| &t.2,
        )?;
        match status.as_str() {
            "placed" => serde_json::from_str(&value)
                .map_err(|e| RegistryError::Protocol(format!("placement {value:?}: {e}"))),
            "recovering" => Err(RegistryError::Recovering),
            "none" => Err(RegistryError::NoNodes),
            other => Err(RegistryError::Protocol(format!(
                "placement answered {other:?}"
            ))),
        }
    }

    fn room_owners(&mut self, rooms: &[String]) -> Result<Vec<Option<Placement>>, RegistryError> {
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = rooms.iter().map(|r| self.settings.room_key(r)).collect();
        let raw: Vec<Option<String>> =
            self.conn.with(|c| redis::cmd("MGET").arg(&keys).query(c))?;
        Ok(raw
            .into_iter()
            .map(|v| v.and_then(|j| serde_json::from_str(&j).ok()))
            .collect())
    }

    fn release_room(&mut self, room: &str, placement: &Placement) -> Result<bool, RegistryError> {
        let keys = [
            self.settings.room_key(room),
            self.settings.node_rooms_key(&placement.node),
        ];
        let args = [
            placement.node.clone(),
            placement.epoch.to_string(),
            room.to_string(),
        ];
        let script = &self.release;
        let n: i64 = self.conn.with(|c| script.key(&keys).arg(&args).invoke(c))?;
        Ok(n == 1)
    }

    fn mark_dead(&mut self, node_id: &str) -> Result<(), RegistryError> {
        let nodes = self.settings.key("nodes");
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
        let nodes = self.settings.key("nodes");
        let dead_after = self.dead_after_ms();
        let dead: Vec<String> = self.conn.with(|c| {
            let (secs, micros): (u64, u64) = redis::cmd("TIME").query(c)?;
            let now = secs * 1000 + micros / 1000;
            redis::cmd("ZRANGEBYSCORE")
                .arg(&nodes)
                .arg("-inf")
                .arg(format!("({}", now.saturating_sub(dead_after)))
                .query(c)
        })?;
        let mut reaped = Vec::new();
        for id in dead {
            let set = self.settings.node_rooms_key(&id);
            let rooms: Vec<String> = self
                .conn
                .with(|c| redis::cmd("SMEMBERS").arg(&set).query(c))?;
            let mut keys = vec![nodes.clone(), self.settings.node_key(&id), set];
            keys.extend(rooms.iter().map(|r| self.settings.room_key(r)));
            let mut args = vec![id.clone(), dead_after.to_string()];
            args.extend(rooms);
            let script = &self.reap;
            let n: i64 = self.conn.with(|c| script.key(&keys).arg(&args).invoke(c))?;
            if n == 1 {
                reaped.push(id);
            }
        }
        Ok(reaped)
    }

    fn reassert(
        &mut self,
        node_id: &str,
        rooms: &[(String, u64)],
    ) -> Result<Vec<String>, RegistryError> {
        let mut lost = Vec::new();
        // In chunks, so one script never holds Redis for long.
        for chunk in rooms.chunks(500) {
            let mut keys = vec![
                self.settings.key("epoch"),
                self.settings.node_rooms_key(node_id),
            ];
            keys.extend(chunk.iter().map(|(r, _)| self.settings.room_key(r)));
            let mut args = vec![node_id.to_string(), chunk.len().to_string()];
            args.extend(chunk.iter().map(|(r, _)| r.clone()));
            args.extend(chunk.iter().map(|(_, e)| e.to_string()));
            let script = &self.reassert;
            let l: Vec<String> = self.conn.with(|c| script.key(&keys).arg(&args).invoke(c))?;
            lost.extend(l);
        }
        Ok(lost)
    }
}

/// How long placement of unmapped rooms waits after Redis lost data (nodes re-assert meanwhile).
pub const DEFAULT_RECOVERY_WINDOW: Duration = Duration::from_secs(5);
