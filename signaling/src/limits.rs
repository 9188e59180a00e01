//! Abuse limits of a signaling instance, pure (time is an argument): token buckets, per-IP
//! connection counts and join rates, live sessions per join token, which address a client really
//! has behind a trusted proxy, and ([`expiry`]) when a client connection has been idle,
//! silent or blocked for too long. The server enforces them; the rules are table-tested here.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

mod timeouts;

pub use timeouts::{CLOSE_GRACE, ConnClock, Expiry, MAX_BLOCKED, Timeouts, expiry};

/// A token bucket: `rate` tokens per second, at most `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    at: Instant,
    rate: f64,
    burst: f64,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            at: now,
            rate,
            burst,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.at = now;
    }

    /// Take one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket has refilled completely (nothing to remember about its owner).
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

/// Limits per client address.
#[derive(Debug, Clone, Copy)]
pub struct IpLimitSettings {
    /// Open connections (HTTP and WebSocket) per address.
    pub max_connections: u32,
    /// Joins (and resumes) per second per address, sustained.
    pub join_rate: f64,
    /// Joins allowed in a burst.
    pub join_burst: f64,
}

#[derive(Debug)]
struct IpState {
    connections: u32,
    joins: TokenBucket,
}

/// Connection counts and join buckets by client address. Entries are dropped once an address
/// has no connection and a full bucket ([`IpLimits::prune`]), so the map stays bounded by the
/// number of recently active addresses.
#[derive(Debug)]
pub struct IpLimits {
    settings: IpLimitSettings,
    by_ip: HashMap<IpAddr, IpState>,
}

impl IpLimits {
    pub fn new(settings: IpLimitSettings) -> Self {
        Self {
            settings,
            by_ip: HashMap::new(),
        }
    }

    fn entry(&mut self, ip: IpAddr, now: Instant) -> &mut IpState {
        let s = self.settings;
        self.by_ip.entry(ip).or_insert_with(|| IpState {
            connections: 0,
            joins: TokenBucket::new(s.join_rate, s.join_burst, now),
        })
    }

    /// Count a new connection from `ip`; `false` (and nothing counted) when it has too many.
    pub fn connect(&mut self, ip: IpAddr, now: Instant) -> bool {
        let max = self.settings.max_connections;
        let e = self.entry(ip, now);
        if e.connections >= max {
            return false;
        }
        e.connections += 1;
        true
    }

    /// A connection from `ip` closed.
    pub fn disconnect(&mut self, ip: IpAddr) {
        if let Some(e) = self.by_ip.get_mut(&ip) {
            e.connections = e.connections.saturating_sub(1);
        }
    }

    /// Whether `ip` may start a join (or resume) now; takes a token if so.
    pub fn join(&mut self, ip: IpAddr, now: Instant) -> bool {
        self.entry(ip, now).joins.try_take(now)
    }

    pub fn connections(&self, ip: IpAddr) -> u32 {
        self.by_ip.get(&ip).map_or(0, |e| e.connections)
    }

    /// Forget addresses with no connection and a full join bucket.
    pub fn prune(&mut self, now: Instant) {
        self.by_ip
            .retain(|_, e| e.connections > 0 || !e.joins.is_full(now));
    }

    /// Tracked addresses (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.by_ip.len()
    }
}

/// Live sessions (joining or joined) per join-token identity on this instance, for the
/// per-token bound. An identity's entry goes when its count reaches zero, so the map is bounded
/// by the live sessions.
#[derive(Debug, Default)]
pub struct SessionsPerToken {
    counts: HashMap<String, usize>,
}

impl SessionsPerToken {
    /// Live sessions of `identity`.
    pub fn count(&self, identity: &str) -> usize {
        self.counts.get(identity).copied().unwrap_or(0)
    }

    /// Whether `identity` already has `max` live sessions (`max` 0: no limit).
    pub fn full(&self, identity: &str, max: usize) -> bool {
        max > 0 && self.count(identity) >= max
    }

    /// A connection that counts against `counted` (none: nothing) now counts against `identity`;
    /// `counted` is updated.
    pub fn recount(&mut self, counted: &mut Option<String>, identity: Option<String>) {
        if *counted == identity {
            return;
        }
        if let Some(old) = counted.take()
            && let Some(n) = self.counts.get_mut(&old)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.counts.remove(&old);
            }
        }
        if let Some(new) = &identity {
            *self.counts.entry(new.clone()).or_default() += 1;
        }
        *counted = identity;
    }

    /// Identities with live sessions.
    pub fn tracked(&self) -> usize {
        self.counts.len()
    }
}

/// The client's address: the TCP peer, unless the peer is a trusted proxy, in which case the
/// rightmost `X-Forwarded-For` entry that is not itself a trusted proxy (entries to its left can
/// be forged by the client). An unparseable header is ignored.
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpAddr]) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let Some(xff) = forwarded_for else {
        return peer;
    };
    let mut last = peer;
    for part in xff.rsplit(',') {
        let Ok(ip) = part.trim().parse::<IpAddr>() else {
            return last;
        };
        last = ip;
        if !trusted.contains(&ip) {
            return ip;
        }
    }
    last
}

/// Whether a WebSocket upgrade from `origin` is allowed: any origin when the list is empty,
/// else an exact (ASCII case-insensitive) match. A request without `Origin` (not a browser) is
/// allowed only when the list is empty.
pub fn origin_allowed(origin: Option<&str>, allowed: &[String]) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let Some(origin) = origin else {
        return false;
    };
    let origin = origin.trim().trim_end_matches('/');
    allowed
        .iter()
        .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn token_bucket_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2.0, 3.0, t0);
        assert!((0..3).all(|_| b.try_take(t0)), "burst of 3");
        assert!(!b.try_take(t0));
        assert!(!b.try_take(t0 + Duration::from_millis(400)), "0.8 token");
        assert!(b.try_take(t0 + Duration::from_millis(500)));
        assert!(!b.is_full(t0 + Duration::from_millis(600)));
        assert!(b.is_full(t0 + Duration::from_secs(10)), "never above burst");
        assert!((0..3).all(|_| b.try_take(t0 + Duration::from_secs(10))));
        assert!(!b.try_take(t0 + Duration::from_secs(10)));
    }

    #[test]
    fn per_ip_connections_and_joins() {
        let t0 = Instant::now();
        let mut l = IpLimits::new(IpLimitSettings {
            max_connections: 2,
            join_rate: 1.0,
            join_burst: 2.0,
        });
        let (a, b) = (ip("10.0.0.1"), ip("10.0.0.2"));
        assert!(l.connect(a, t0) && l.connect(a, t0));
        assert!(!l.connect(a, t0), "third connection from one address");
        assert!(l.connect(b, t0), "other addresses are unaffected");
        l.disconnect(a);
        assert!(l.connect(a, t0), "a slot freed");
        assert_eq!(l.connections(a), 2);

        assert!(l.join(a, t0) && l.join(a, t0));
        assert!(!l.join(a, t0), "join burst spent");
        assert!(l.join(b, t0), "per address");
        assert!(l.join(a, t0 + Duration::from_secs(1)), "refilled");

        // Pruning keeps addresses with connections or recent joins only.
        l.disconnect(a);
        l.disconnect(a);
        l.disconnect(b);
        l.prune(t0 + Duration::from_millis(1500));
        assert_eq!(
            l.tracked(),
            1,
            "b refilled and is forgotten; a is not full yet"
        );
        l.prune(t0 + Duration::from_secs(60));
        assert_eq!(l.tracked(), 0);
        // A pruned address starts with a full bucket and no connections.
        assert!(l.connect(a, t0 + Duration::from_secs(60)));
    }

    #[test]
    fn sessions_per_token_follow_each_connection_s_identity() {
        #[derive(Debug, Clone, Copy)]
        enum Op {
            /// Connection `.0` now counts against identity `.1` (none: nothing).
            Set(usize, Option<&'static str>),
        }
        use Op::Set;
        // (operations, expected counts of "a" and "b", identities tracked)
        let cases: &[(&[Op], usize, usize, usize)] = &[
            (&[Set(0, Some("a"))], 1, 0, 1),
            // Settling again without a change counts nothing twice.
            (&[Set(0, Some("a")), Set(0, Some("a"))], 1, 0, 1),
            (&[Set(0, Some("a")), Set(1, Some("a"))], 2, 0, 1),
            // A session that ends (or a connection removed) uncounts; empty entries go.
            (&[Set(0, Some("a")), Set(0, None)], 0, 0, 0),
            (
                &[Set(0, Some("a")), Set(1, Some("a")), Set(0, None)],
                1,
                0,
                1,
            ),
            // A connection that joins again under another token moves its count.
            (&[Set(0, Some("a")), Set(0, Some("b"))], 0, 1, 1),
            // Uncounting what was never counted changes nothing.
            (&[Set(0, None), Set(1, None)], 0, 0, 0),
        ];
        for (ops, a, b, tracked) in cases {
            let mut s = SessionsPerToken::default();
            let mut conns: [Option<String>; 2] = Default::default();
            for op in *ops {
                let Set(c, id) = *op;
                s.recount(&mut conns[c], id.map(str::to_string));
                assert_eq!(conns[c].as_deref(), id, "{ops:?}");
            }
            assert_eq!(
                (s.count("a"), s.count("b"), s.tracked()),
                (*a, *b, *tracked),
                "{ops:?}"
            );
        }
        let mut s = SessionsPerToken::default();
        let (mut c0, mut c1) = (None, None);
        s.recount(&mut c0, Some("a".into()));
        assert!(!s.full("a", 0), "0: no limit");
        assert!(!s.full("a", 2) && !s.full("b", 1));
        s.recount(&mut c1, Some("a".into()));
        assert!(s.full("a", 2) && s.full("a", 1) && !s.full("a", 3));
    }

    #[test]
    fn client_ip_trusts_only_configured_proxies() {
        let proxy = ip("10.0.0.9");
        let trusted = [proxy, ip("10.0.0.8")];
        let cases: &[(&str, Option<&str>, &str)] = &[
            // Not a trusted proxy: the header is ignored (anyone can send it).
            ("203.0.113.5", Some("1.2.3.4"), "203.0.113.5"),
            ("10.0.0.9", None, "10.0.0.9"),
            ("10.0.0.9", Some("198.51.100.7"), "198.51.100.7"),
            // The client forged an entry on the left; the proxy appended the real one.
            ("10.0.0.9", Some("1.1.1.1, 198.51.100.7"), "198.51.100.7"),
            // Chained trusted proxies are skipped.
            ("10.0.0.9", Some("198.51.100.7, 10.0.0.8"), "198.51.100.7"),
            // Garbage stops the walk at the last good address.
            ("10.0.0.9", Some("nonsense, 10.0.0.8"), "10.0.0.8"),
            ("10.0.0.9", Some("nonsense"), "10.0.0.9"),
            ("10.0.0.9", Some("2001:db8::1"), "2001:db8::1"),
        ];
        for (peer, xff, want) in cases {
            assert_eq!(
                client_ip(ip(peer), *xff, &trusted),
                ip(want),
                "{peer} {xff:?}"
            );
        }
    }

    #[test]
    fn origins() {
        let allowed = vec!["https://meet.example.com".to_string()];
        assert!(origin_allowed(Some("https://evil.example"), &[]));
        assert!(origin_allowed(None, &[]));
        assert!(origin_allowed(Some("https://MEET.example.com"), &allowed));
        assert!(origin_allowed(Some("https://meet.example.com/"), &allowed));
        assert!(!origin_allowed(
            Some("https://meet.example.com.evil"),
            &allowed
        ));
        assert!(!origin_allowed(Some("http://meet.example.com"), &allowed));
        assert!(!origin_allowed(None, &allowed));
    }
}
