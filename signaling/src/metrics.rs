//! Prometheus metrics of a signaling instance, served at `GET /metrics` on its metrics address
//! (`--metrics-listen`, loopback by default; never on the public client port).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// Why a connection or request was refused or closed by a limit.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// A client message type, bounded to the known set (unknown types are `other`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeName {
    pub r#type: &'static str,
}

/// The signaling metric families.
pub struct Metrics {
    registry: Registry,
    pub connections: Gauge,
    pub sessions: Gauge,
    pub joins: Family<ResultLabel, Counter>,
    pub join_seconds: Histogram,
    pub resumes: Family<ResultLabel, Counter>,
    pub rate_limited: Counter,
    pub redis_errors: Counter,
    pub messages: Family<TypeName, Counter>,
    /// Connections refused or closed, and joins refused, by a limit (reason label).
    pub limited: Family<ReasonLabel, Counter>,
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
        let mut registry = Registry::default();
        let m = Self {
            registry: Registry::default(),
            connections: Gauge::default(),
            sessions: Gauge::default(),
            joins: Family::default(),
            join_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            resumes: Family::default(),
            rate_limited: Counter::default(),
            redis_errors: Counter::default(),
            messages: Family::default(),
            limited: Family::default(),
        };
        registry.register(
            "sfu_signaling_connections",
            "Open WebSocket connections",
            m.connections.clone(),
        );
        registry.register(
            "sfu_signaling_sessions",
            "Joined sessions",
            m.sessions.clone(),
        );
        registry.register("sfu_signaling_joins", "Joins by result", m.joins.clone());
        registry.register(
            "sfu_signaling_join_seconds",
            "join message to joined",
            m.join_seconds.clone(),
        );
        registry.register(
            "sfu_signaling_resumes",
            "Session resumes by result",
            m.resumes.clone(),
        );
        registry.register(
            "sfu_signaling_rate_limited",
            "Client messages dropped by the rate limit",
            m.rate_limited.clone(),
        );
        registry.register(
            "sfu_signaling_redis_errors",
            "Failed Redis operations",
            m.redis_errors.clone(),
        );
        registry.register(
            "sfu_signaling_messages",
            "Client messages by type",
            m.messages.clone(),
        );
        registry.register(
            "sfu_signaling_limited",
            "Connections closed or refused and joins refused by an abuse limit, by reason",
            m.limited.clone(),
        );
        Self { registry, ..m }
    }

    /// Count a client message by its `type` (cheap scan; unknown types are `other`).
    pub fn message(&self, text: &str) {
        #[derive(serde::Deserialize)]
        struct T<'a> {
            #[serde(rename = "type", borrow)]
            kind: Option<&'a str>,
        }
        let kind = match serde_json::from_str::<T<'_>>(text)
            .ok()
            .and_then(|t| t.kind)
        {
            Some("join") => "join",
            Some("offer") => "offer",
            Some("answer") => "answer",
            Some("candidate") => "candidate",
            Some("leave") => "leave",
            _ => "other",
        };
        self.messages
            .get_or_create(&TypeName { r#type: kind })
            .inc();
    }

    /// Count one limit hit.
    pub fn limit(&self, reason: &'static str) {
        self.limited.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new();
        m.connections.set(3);
        m.joins.get_or_create(&ResultLabel { result: "ok" }).inc();
        m.join_seconds.observe(0.004);
        m.message(r#"{"type":"join","room":"r"}"#);
        m.message("garbage");
        let t = m.render();
        for l in [
            "sfu_signaling_connections 3",
            "sfu_signaling_joins_total{result=\"ok\"} 1",
            "sfu_signaling_join_seconds_count 1",
            "sfu_signaling_messages_total{type=\"join\"} 1",
            "sfu_signaling_messages_total{type=\"other\"} 1",
        ] {
            assert!(t.contains(l), "missing {l:?}\n{t}");
        }
    }
}
