//! Connections to Redis: standalone (`redis://…`), through Sentinel (the master is looked up
//! anew on every reconnect, so a failover is followed), or a Redis Cluster node (a `MOVED`
//! answer is followed: every key of ours shares one hash slot, so one redirect finds its
//! owner). Every call has a timeout; a call that fails on a connection that had been idle (the
//! server restarted, failed over, or the link died) is retried once on a fresh connection, so
//! the first request after an outage is served.
//!
//! Each connection learns the server's `run_id` (`INFO server`): the registry uses it to notice
//! that Redis restarted or failed over (and so may have lost data).

use std::time::{Duration, Instant};

use redis::{ConnectionAddr, IntoConnectionInfo};

use super::{RedisSettings, RegistryError};

/// Where the next connection goes.
fn client_for(
    settings: &RedisSettings,
    redirect: Option<&(String, u16)>,
) -> Result<redis::Client, RegistryError> {
    let bad = |e: redis::RedisError| RegistryError::Unavailable(format!("bad redis url: {e}"));
    let base = settings.url.as_str().into_connection_info().map_err(bad)?;
    let info = if let Some((host, port)) = redirect {
        base.set_addr(ConnectionAddr::Tcp(host.clone(), *port))
    } else if !settings.sentinels.is_empty() {
        let (host, port) = sentinel_master(settings)?;
        base.set_addr(ConnectionAddr::Tcp(host, port))
    } else {
        base
    };
    redis::Client::open(info).map_err(bad)
}

/// Ask the sentinels, in turn, where the master named `settings.master_name` is.
fn sentinel_master(settings: &RedisSettings) -> Result<(String, u16), RegistryError> {
    let mut last = String::from("no sentinel configured");
    for s in &settings.sentinels {
        let answer = (|| -> redis::RedisResult<(String, String)> {
            let client = redis::Client::open(format!("redis://{s}"))?;
            let mut c = client.get_connection_with_timeout(settings.timeout)?;
            c.set_read_timeout(Some(settings.timeout))?;
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&settings.master_name)
                .query(&mut c)
        })();
        match answer {
            Ok((host, port)) => match port.parse() {
                Ok(port) => return Ok((host, port)),
                Err(_) => last = format!("sentinel {s} answered port {port:?}"),
            },
            Err(e) => last = format!("sentinel {s}: {e}"),
        }
    }
    Err(RegistryError::Unavailable(format!(
        "no sentinel knows master {:?}: {last}",
        settings.master_name
    )))
}

/// A `MOVED <slot> <host>:<port>` (or `ASK`) redirection: the cluster node to ask instead.
fn redirection(e: &redis::RedisError) -> Option<(String, u16)> {
    let (addr, _slot) = e.redirect_node()?;
    let (host, port) = addr.rsplit_once(':')?;
    Some((host.to_string(), port.parse().ok()?))
}

/// Errors after which the connection is useless but a fresh one may work at once.
fn connection_lost(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(e.code(), Some("READONLY" | "MASTERDOWN" | "LOADING"))
}

/// A Redis connection with timeouts that reconnects lazily, at most once per backoff interval
/// after a failed attempt, so a dead Redis costs callers one fast error instead of a hang.
pub struct RedisConn {
    settings: RedisSettings,
    conn: Option<redis::Connection>,
    next_attempt: Instant,
    backoff: Duration,
    /// The cluster node a `MOVED` pointed at.
    redirect: Option<(String, u16)>,
    /// `run_id` of the server the current (or last) connection reached.
    run_id: Option<String>,
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConn")
            .field("connected", &self.conn.is_some())
            .field("run_id", &self.run_id)
            .finish()
    }
}

impl RedisConn {
    pub fn new(settings: &RedisSettings) -> Result<Self, RegistryError> {
        // Validate the URL now: a typo fails at start, not at the first call.
        client_for(
            &RedisSettings {
                sentinels: Vec::new(),
                ..settings.clone()
            },
            None,
        )?;
        Ok(Self {
            settings: settings.clone(),
            conn: None,
            next_attempt: Instant::now(),
            backoff: Duration::from_millis(100),
            redirect: None,
            run_id: None,
        })
    }

    /// The `run_id` of the Redis server last reached.
    pub fn run_id(&self) -> Option<&str> {
        self.run_id.as_deref()
    }

    fn connect(&mut self) -> Result<(), RegistryError> {
        let client = client_for(&self.settings, self.redirect.as_ref())?;
        let timeout = self.settings.timeout;
        let mut c = client
            .get_connection_with_timeout(timeout)
            .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
        let _ = c.set_read_timeout(Some(timeout));
        let _ = c.set_write_timeout(Some(timeout));
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query(&mut c)
            .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
        if !self.settings.sentinels.is_empty() {
            // A sentinel may still name a master that was just demoted: talk to masters only.
            let role: Vec<redis::Value> = redis::cmd("ROLE")
                .query(&mut c)
                .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
            let is_master =
                matches!(role.first(), Some(redis::Value::BulkString(b)) if b == b"master");
            if !is_master {
                return Err(RegistryError::Unavailable(
                    "the sentinels' master is not a master (failover in progress)".into(),
                ));
            }
        }
        self.run_id = info
            .lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .map(|r| r.trim().to_string());
        self.conn = Some(c);
        Ok(())
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
            if let Err(e) = self.connect() {
                // The node a redirect named may be gone (a cluster failover): start over from
                // the configured address, which redirects again if it must.
                self.redirect = None;
                self.next_attempt = now + self.backoff;
                self.backoff = (self.backoff * 2).min(Duration::from_secs(2));
                return Err(e);
            }
            self.backoff = Duration::from_millis(100);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| RegistryError::Unavailable("not connected".into()))
    }

    /// Run `f` on the connection. If it fails because the connection (not the request) is bad —
    /// the server restarted, failed over or moved the slot — and the connection was an existing
    /// one, reconnect at once and run `f` once more. A timeout is not retried (the request may
    /// have run).
    pub fn with<T>(
        &mut self,
        mut f: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, RegistryError> {
        self.with_server(|c, _| f(c))
    }

    /// [`Self::with`], telling `f` the `run_id` of the server the connection reaches (it may
    /// differ between the first attempt and the retry).
    pub fn with_server<T>(
        &mut self,
        mut f: impl FnMut(&mut redis::Connection, &str) -> redis::RedisResult<T>,
    ) -> Result<T, RegistryError> {
        // A fresh connection that fails is not retried at once (Redis is down); an idle one that
        // fails is, once. Redirects are followed (at most twice: the configured node may redirect
        // again after a lost connection to the last one).
        let mut may_retry = self.conn.is_some();
        for attempt in 0..3 {
            self.get()?;
            let run_id = self.run_id.clone().unwrap_or_default();
            let conn = self
                .conn
                .as_mut()
                .ok_or_else(|| RegistryError::Unavailable("not connected".into()))?;
            let e = match f(conn, &run_id) {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if let Some(target) = redirection(&e) {
                self.redirect = Some(target);
                self.conn = None;
                self.next_attempt = Instant::now();
                if attempt < 2 {
                    continue;
                }
                return Err(RegistryError::Unavailable(e.to_string()));
            }
            if e.is_timeout() {
                self.conn = None;
                return Err(RegistryError::Unavailable(e.to_string()));
            }
            if connection_lost(&e) {
                self.conn = None;
                // The server (or the redirect's node) may be gone or demoted: forget any
                // redirect, ask the configured address or the sentinels again.
                self.redirect = None;
                if may_retry && attempt < 2 {
                    may_retry = false;
                    self.next_attempt = Instant::now();
                    continue;
                }
                return Err(RegistryError::Unavailable(e.to_string()));
            }
            return Err(RegistryError::Protocol(e.to_string()));
        }
        Err(RegistryError::Unavailable("redis call failed twice".into()))
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

/// What [`subscribe`] reports to its owner.
#[derive(Debug)]
pub enum Subscription<'a> {
    /// Subscribed to both channels (again).
    Up,
    /// The subscription was lost (reported once per loss); reconnecting with backoff.
    Down(redis::RedisError),
    /// A beacon on the health channel (undecodable ones are skipped).
    Beacon(control::Beacon),
    /// A message on the private channel, undecoded.
    Message(&'a [u8]),
}

/// Subscribe to `channel` and the health channel and report what arrives to `on` until `stop`
/// is set, reconnecting after a failure with backoff (100 ms doubling to 2 s) — through the
/// sentinels again, so a failover is followed. Blocks: run it on its own thread; it checks
/// `stop` at least every 500 ms while subscribed.
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
            let client = client_for(settings, None).map_err(|e| {
                redis::RedisError::from((redis::ErrorKind::Io, "resolve", e.to_string()))
            })?;
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
                    if let Ok(b) = control::decode::<control::Beacon>(payload) {
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
