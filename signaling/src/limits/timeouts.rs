//! When a client connection has taken too long: an HTTP request head that does not arrive, a
//! WebSocket whose graceful close is not answered, a client that does not read what we send,
//! one that went silent (ping, then drop), and one that does not join (the join deadline). Pure:
//! the server hands in each connection's [`ConnClock`] and acts on the [`Expiry`].

use std::time::{Duration, Instant};

/// A WebSocket closing gracefully is dropped after this long at the latest.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// A client with unsent output for this long is not reading: disconnect it.
pub const MAX_BLOCKED: Duration = Duration::from_secs(20);

/// The configured timeouts (see the server's `Settings`).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// An HTTP request head must arrive (and its response be written) within this time.
    pub http: Duration,
    /// A WebSocket must start a join (or resume) within this time of opening or of its session
    /// ending.
    pub join: Duration,
    /// A WebSocket silent for this long gets a ping; one silent for twice as long plus 5 s is
    /// dropped.
    pub ping_interval: Duration,
}

/// The timing facts of one connection that its expiry depends on.
#[derive(Debug, Clone, Copy)]
pub struct ConnClock {
    /// A WebSocket; else an HTTP connection (reading its request or writing its response).
    pub websocket: bool,
    /// Accepted at.
    pub since: Instant,
    /// We started closing the WebSocket at.
    pub closing: Option<Instant>,
    /// Output has been waiting for the client to read since.
    pub blocked_since: Option<Instant>,
    /// The last frame from the client.
    pub last_rx: Instant,
    /// A ping is outstanding.
    pub pinged: bool,
    /// The session has neither joined nor been joining since.
    pub idle_since: Option<Instant>,
}

/// What to do with a connection that has taken too long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Drop it now. The reason is counted as a limit (`http_timeout`, `slow_reader`,
    /// `liveness`); empty for a graceful close the client did not answer in time.
    Disconnect(&'static str),
    /// No join within the deadline: close it with 1008 (policy).
    JoinTimeout,
    /// Silent for a ping interval: send a ping.
    Ping,
}

/// What is due for connection `c` at `now`, if anything. The first that applies wins: a close
/// past its grace, a client not reading, a silent client, the join deadline (not while
/// closing), a ping.
pub fn expiry(c: &ConnClock, t: &Timeouts, now: Instant) -> Option<Expiry> {
    if !c.websocket {
        return (now.duration_since(c.since) > t.http)
            .then_some(Expiry::Disconnect("http_timeout"));
    }
    let silent = now.saturating_duration_since(c.last_rx);
    if c.closing
        .is_some_and(|at| now.saturating_duration_since(at) > CLOSE_GRACE)
    {
        Some(Expiry::Disconnect(""))
    } else if c
        .blocked_since
        .is_some_and(|at| now.saturating_duration_since(at) > MAX_BLOCKED)
    {
        Some(Expiry::Disconnect("slow_reader"))
    } else if silent > t.ping_interval * 2 + Duration::from_secs(5) {
        Some(Expiry::Disconnect("liveness"))
    } else if c.closing.is_none()
        && c.idle_since
            .is_some_and(|at| now.saturating_duration_since(at) > t.join)
    {
        Some(Expiry::JoinTimeout)
    } else if silent > t.ping_interval && !c.pinged {
        Some(Expiry::Ping)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);
    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_first_due_timeout_wins() {
        use Expiry::{Disconnect, JoinTimeout, Ping};
        let t0 = Instant::now();
        let t = Timeouts {
            http: 10 * S,
            join: 30 * S,
            ping_interval: 20 * S,
        };
        // A joined WebSocket that just heard from its client: nothing is due.
        let ws = ConnClock {
            websocket: true,
            since: t0,
            closing: None,
            blocked_since: None,
            last_rx: t0,
            pinged: false,
            idle_since: None,
        };
        let http = ConnClock {
            websocket: false,
            idle_since: Some(t0),
            ..ws
        };
        let at = |d: Duration| Some(t0 + d);
        // (connection, time since t0, expected)
        let cases: &[(ConnClock, Duration, Option<Expiry>)] = &[
            (ws, 19 * S, None),
            // HTTP: only the request deadline, however silent.
            (http, 10 * S, None),
            (http, 10 * S + MS, Some(Disconnect("http_timeout"))),
            (http, 100 * S, Some(Disconnect("http_timeout"))),
            // A ping after the interval, once.
            (ws, 20 * S, None),
            (ws, 20 * S + MS, Some(Ping)),
            (ConnClock { pinged: true, ..ws }, 20 * S + MS, None),
            // Silent for 2 × 20 s + 5 s: dropped, pinged or not.
            (ConnClock { pinged: true, ..ws }, 45 * S, None),
            (
                ConnClock { pinged: true, ..ws },
                45 * S + MS,
                Some(Disconnect("liveness")),
            ),
            // The join deadline counts from when the session went idle.
            (
                ConnClock {
                    idle_since: at(5 * S),
                    last_rx: t0 + 20 * S,
                    ..ws
                },
                35 * S,
                None,
            ),
            (
                ConnClock {
                    idle_since: at(5 * S),
                    last_rx: t0 + 20 * S,
                    ..ws
                },
                35 * S + MS,
                Some(JoinTimeout),
            ),
            // It beats a due ping; a silent client is dropped before its deadline matters.
            (
                ConnClock {
                    idle_since: Some(t0),
                    ..ws
                },
                30 * S + MS,
                Some(JoinTimeout),
            ),
            (
                ConnClock {
                    idle_since: Some(t0),
                    ..ws
                },
                45 * S + MS,
                Some(Disconnect("liveness")),
            ),
            // While closing there is no join deadline, and after the grace the socket goes.
            (
                ConnClock {
                    idle_since: Some(t0),
                    closing: at(30 * S),
                    ..ws
                },
                32 * S,
                Some(Ping),
            ),
            (
                ConnClock {
                    idle_since: Some(t0),
                    closing: at(30 * S),
                    pinged: true,
                    ..ws
                },
                32 * S,
                None,
            ),
            (
                ConnClock {
                    closing: at(30 * S),
                    ..ws
                },
                32 * S + MS,
                Some(Disconnect("")),
            ),
            // A closing client that stopped reading is dropped as closed, not counted.
            (
                ConnClock {
                    closing: Some(t0),
                    blocked_since: Some(t0),
                    ..ws
                },
                21 * S,
                Some(Disconnect("")),
            ),
            // Output unread for 20 s: a slow reader, before silence or deadline count.
            (
                ConnClock {
                    blocked_since: at(10 * S),
                    ..ws
                },
                30 * S,
                Some(Ping),
            ),
            (
                ConnClock {
                    blocked_since: at(10 * S),
                    idle_since: Some(t0),
                    ..ws
                },
                30 * S + MS,
                Some(Disconnect("slow_reader")),
            ),
            (
                ConnClock {
                    blocked_since: at(50 * S),
                    ..ws
                },
                60 * S,
                Some(Disconnect("liveness")),
            ),
            // Timestamps after `now` (set during this loop turn) count as zero.
            (
                ConnClock {
                    last_rx: t0 + 50 * S,
                    closing: at(50 * S),
                    ..ws
                },
                49 * S,
                None,
            ),
        ];
        for (i, (c, after, want)) in cases.iter().enumerate() {
            assert_eq!(
                expiry(c, &t, t0 + *after),
                *want,
                "case {i}: {c:?} at {after:?}"
            );
        }
    }
}
