//! Prometheus metrics of the dataplane, served by the control thread (never a worker loop) at
//! `GET /metrics` on `--metrics-listen`, with `GET /healthz`.
//!
//! Workers report cumulative counters once a second; the control thread turns them into
//! Prometheus counters (by delta) and gauges. Names are documented in `docs/deploy.md`.

use std::sync::atomic::{AtomicU64, Ordering};

use control::WorkerStats;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Worker {
    worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Drop {
    worker: String,
    reason: String,
}

/// The dataplane's metric families.
pub struct Metrics {
    registry: Registry,
    rooms: Gauge,
    participants: Gauge,
    tracks_in: Gauge,
    tracks_out: Gauge,
    datagrams_in: Family<Worker, Counter>,
    datagrams_out: Family<Worker, Counter>,
    bytes_in: Family<Worker, Counter>,
    bytes_out: Family<Worker, Counter>,
    forwarded: Family<Worker, Counter>,
    keyframes: Family<Worker, Counter>,
    nacks: Family<Worker, Counter>,
    chat: Family<Worker, Counter>,
    drops: Family<Drop, Counter>,
    busy: Family<Worker, Gauge<f64, AtomicU64>>,
    tcp_connections: Family<Worker, Gauge>,
    tcp_closed: Family<Drop, Counter>,
    tcp_send_drops: Family<Worker, Counter>,
    join_seconds: Histogram,
    redis_errors: Counter,
    capacity_remaining: Gauge,
    draining: Gauge,
    worker_up: Family<Worker, Gauge>,
    worker_restarts: Family<Worker, Counter>,
    /// The previous snapshot per worker (counters advance by the difference).
    prev: Vec<WorkerStats>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        let m = Self {
            rooms: Gauge::default(),
            participants: Gauge::default(),
            tracks_in: Gauge::default(),
            tracks_out: Gauge::default(),
            datagrams_in: Family::default(),
            datagrams_out: Family::default(),
            bytes_in: Family::default(),
            bytes_out: Family::default(),
            forwarded: Family::default(),
            keyframes: Family::default(),
            nacks: Family::default(),
            chat: Family::default(),
            drops: Family::default(),
            busy: Family::default(),
            tcp_connections: Family::default(),
            tcp_closed: Family::default(),
            tcp_send_drops: Family::default(),
            join_seconds: Histogram::new(exponential_buckets(0.025, 2.0, 10)),
            redis_errors: Counter::default(),
            capacity_remaining: Gauge::default(),
            draining: Gauge::default(),
            worker_up: Family::default(),
            worker_restarts: Family::default(),
            prev: Vec::new(),
            registry: Registry::default(),
        };
        r.register("sfu_rooms", "Rooms hosted", m.rooms.clone());
        r.register(
            "sfu_participants",
            "Participants hosted",
            m.participants.clone(),
        );
        r.register("sfu_tracks_in", "Published tracks", m.tracks_in.clone());
        r.register(
            "sfu_tracks_out",
            "Subscribed tracks (one track to one subscriber)",
            m.tracks_out.clone(),
        );
        r.register(
            "sfu_datagrams_received",
            "UDP datagrams received",
            m.datagrams_in.clone(),
        );
        r.register(
            "sfu_datagrams_sent",
            "UDP datagrams sent",
            m.datagrams_out.clone(),
        );
        r.register(
            "sfu_bytes_received",
            "UDP payload bytes received",
            m.bytes_in.clone(),
        );
        r.register(
            "sfu_bytes_sent",
            "UDP payload bytes sent",
            m.bytes_out.clone(),
        );
        r.register(
            "sfu_ice_tcp_connections",
            "Open ICE-TCP connections",
            m.tcp_connections.clone(),
        );
        r.register(
            "sfu_ice_tcp_closed",
            "ICE-TCP connections closed by the SFU, by reason (refused: over a limit at accept; evicted: unbound, to make room at the worker limit; garbage: not ICE; timeout: handshake or idle)",
            m.tcp_closed.clone(),
        );
        r.register(
            "sfu_ice_tcp_send_drops",
            "Datagrams dropped toward ICE-TCP connections whose write buffer was full (slow readers)",
            m.tcp_send_drops.clone(),
        );
        r.register(
            "sfu_rtp_forwarded",
            "RTP packets written to subscribers",
            m.forwarded.clone(),
        );
        r.register(
            "sfu_keyframe_requests",
            "Keyframe requests (PLI) sent to publishers",
            m.keyframes.clone(),
        );
        r.register(
            "sfu_nacks_received",
            "NACKs received from subscribers",
            m.nacks.clone(),
        );
        r.register("sfu_chat_messages", "Chat messages relayed", m.chat.clone());
        r.register("sfu_drops", "Dropped input by reason", m.drops.clone());
        r.register(
            "sfu_worker_busy_ratio",
            "Fraction of time a worker loop was busy",
            m.busy.clone(),
        );
        r.register(
            "sfu_join_seconds",
            "Join request to peer connection established",
            m.join_seconds.clone(),
        );
        r.register(
            "sfu_redis_errors",
            "Failed Redis operations",
            m.redis_errors.clone(),
        );
        r.register(
            "sfu_capacity_remaining",
            "Participants this node can still take (autoscaling signal)",
            m.capacity_remaining.clone(),
        );
        r.register(
            "sfu_draining",
            "1 while the node drains",
            m.draining.clone(),
        );
        r.register(
            "sfu_worker_up",
            "1 while a worker runs, 0 while it is down after a failure",
            m.worker_up.clone(),
        );
        r.register(
            "sfu_worker_restarts",
            "Workers restarted after a failure (panic)",
            m.worker_restarts.clone(),
        );
        Self { registry: r, ..m }
    }

    /// Worker `w` runs (at start, and after a restart: its counters start again from zero).
    pub fn worker_up(&mut self, w: u32, restarted: bool) {
        let label = Worker {
            worker: w.to_string(),
        };
        self.worker_up.get_or_create(&label).set(1);
        if restarted {
            self.worker_restarts.get_or_create(&label).inc();
            if let Some(p) = self.prev.get_mut(w as usize) {
                *p = WorkerStats::default();
            }
        }
    }

    /// Worker `w` failed and is down.
    pub fn worker_down(&mut self, w: u32) {
        let label = Worker {
            worker: w.to_string(),
        };
        self.worker_up.get_or_create(&label).set(0);
        if let Some(p) = self.prev.get_mut(w as usize) {
            // Its rooms and participants are gone.
            p.rooms.clear();
            p.participants = 0;
        }
    }

    /// Account a worker's periodic stats snapshot.
    pub fn observe_worker(&mut self, ws: &WorkerStats) {
        let i = ws.worker as usize;
        if self.prev.len() <= i {
            self.prev.resize(i + 1, WorkerStats::default());
        }
        let prev = std::mem::replace(&mut self.prev[i], ws.clone());
        let w = Worker {
            worker: ws.worker.to_string(),
        };
        let inc = |f: &Family<Worker, Counter>, now: u64, before: u64| {
            f.get_or_create(&w).inc_by(now.saturating_sub(before));
        };
        inc(&self.datagrams_in, ws.datagrams_in, prev.datagrams_in);
        inc(&self.datagrams_out, ws.datagrams_out, prev.datagrams_out);
        inc(&self.bytes_in, ws.bytes_in, prev.bytes_in);
        inc(&self.bytes_out, ws.bytes_out, prev.bytes_out);
        inc(&self.forwarded, ws.rtp_forwarded, prev.rtp_forwarded);
        inc(
            &self.keyframes,
            ws.keyframe_requests,
            prev.keyframe_requests,
        );
        inc(&self.nacks, ws.nacks_received, prev.nacks_received);
        inc(&self.chat, ws.chat_messages, prev.chat_messages);
        for (reason, n) in &ws.drops {
            let before = prev
                .drops
                .iter()
                .find(|(r, _)| r == reason)
                .map_or(0, |(_, n)| *n);
            self.drops
                .get_or_create(&Drop {
                    worker: w.worker.clone(),
                    reason: reason.clone(),
                })
                .inc_by(n.saturating_sub(before));
        }
        self.busy.get_or_create(&w).set(ws.busy_ratio);
        self.tcp_connections
            .get_or_create(&w)
            .set(ws.tcp_connections as i64);
        inc(&self.tcp_send_drops, ws.tcp_send_drops, prev.tcp_send_drops);
        for (reason, now, before) in [
            ("refused", ws.tcp_refused, prev.tcp_refused),
            ("garbage", ws.tcp_garbage, prev.tcp_garbage),
            ("evicted", ws.tcp_evicted, prev.tcp_evicted),
            ("timeout", ws.tcp_timeouts, prev.tcp_timeouts),
        ] {
            self.tcp_closed
                .get_or_create(&Drop {
                    worker: w.worker.clone(),
                    reason: reason.into(),
                })
                .inc_by(now.saturating_sub(before));
        }
        for s in &ws.join_seconds {
            self.join_seconds.observe(*s);
        }
        let (mut rooms, mut participants, mut tin, mut tout) = (0i64, 0i64, 0i64, 0i64);
        for w in &self.prev {
            rooms += w.rooms.len() as i64;
            participants += i64::from(w.participants);
            for r in &w.rooms {
                for p in &r.participants {
                    tin += i64::from(p.tracks_in);
                    tout += i64::from(p.tracks_out);
                }
            }
        }
        self.rooms.set(rooms);
        self.participants.set(participants);
        self.tracks_in.set(tin);
        self.tracks_out.set(tout);
    }

    pub fn set_capacity_remaining(&self, v: i64) {
        self.capacity_remaining.set(v);
    }

    pub fn set_draining(&self, on: bool) {
        self.draining.set(i64::from(on));
    }

    /// Bring the Redis error counter up to `total` (counted by the cluster threads).
    pub fn set_redis_errors(&self, total: &AtomicU64) {
        let t = total.load(Ordering::Relaxed);
        let now = self.redis_errors.get();
        if t > now {
            self.redis_errors.inc_by(t - now);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Formatting into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use control::{ParticipantStats, RoomStats};

    #[test]
    fn counters_advance_by_deltas_and_render_as_text() {
        let mut m = Metrics::new();
        let mut ws = WorkerStats {
            worker: 0,
            datagrams_in: 10,
            rtp_forwarded: 7,
            drops: vec![("unknown_source".into(), 3)],
            join_seconds: vec![0.2, 0.4],
            busy_ratio: 0.25,
            participants: 2,
            rooms: vec![RoomStats {
                room: "r".into(),
                participants: vec![
                    ParticipantStats {
                        tracks_in: 2,
                        tracks_out: 2,
                        ..ParticipantStats::default()
                    };
                    2
                ],
            }],
            ..WorkerStats::default()
        };
        m.observe_worker(&ws);
        ws.datagrams_in = 25;
        ws.drops = vec![("unknown_source".into(), 5)];
        ws.tcp_connections = 3;
        ws.tcp_garbage = 2;
        ws.tcp_send_drops = 9;
        ws.join_seconds = vec![];
        m.observe_worker(&ws);
        m.set_capacity_remaining(998);
        let text = m.render();
        for line in [
            "sfu_datagrams_received_total{worker=\"0\"} 25",
            "sfu_rtp_forwarded_total{worker=\"0\"} 7",
            "sfu_drops_total{worker=\"0\",reason=\"unknown_source\"} 5",
            "sfu_worker_busy_ratio{worker=\"0\"} 0.25",
            "sfu_ice_tcp_connections{worker=\"0\"} 3",
            "sfu_ice_tcp_closed_total{worker=\"0\",reason=\"garbage\"} 2",
            "sfu_ice_tcp_send_drops_total{worker=\"0\"} 9",
            "sfu_join_seconds_count 2",
            "sfu_participants 2",
            "sfu_rooms 1",
            "sfu_tracks_out 4",
            "sfu_capacity_remaining 998",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
