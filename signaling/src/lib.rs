//! WebSocket signaling for the SFU, and the web page.
//!
//! Where it sits: browsers (and synthetic peers) connect here over WebSocket (`/ws`, JSON text
//! frames, `docs/protocol.md`); this process relays each session to the local dataplane over the
//! control protocol (`control` crate, `docs/control.md`). It holds no media and no room state the
//! dataplane does not own: a restart of signaling leaves media running.
//!
//! - [`protocol`]: client message types and validation.
//! - [`session`]: the pure per-connection state machine.
//! - [`http`], [`page`]: the minimal HTTP needed to serve the page and upgrade `/ws`.
//! - [`router`]: pure routing state (participant → connection, pending requests, placement
//!   lookups, which path a request takes, what an answer confirms).
//! - [`limits`]: pure abuse limits (token buckets, per-address caps, sessions per token,
//!   proxies, origins, connection timeouts).
//! - [`server`]: the mio event loop tying it together.

pub mod auth;
pub mod cluster;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod page;
pub mod protocol;
pub mod router;
pub mod server;
pub mod session;
