//! Synthetic peers and load generation for the SFU.
//!
//! - [`peer`]: a sans-IO synthetic participant (str0m `Rtc`) that behaves like the web page.
//! - [`client`]: that peer over real sockets, speaking the signaling WebSocket protocol.
//! - [`harness`]: start/stop the real binaries on loopback for tests and benchmarks.
//! - [`janus`]: the same peers against Janus VideoRoom, for side-by-side comparisons.
//! - [`load`]: the load generator (scenarios, many peers per thread, measurements, plots).
//! - [`net`]: UDP receive with kernel receive timestamps (for latency measurement).
//! - [`stats`]: the dataplane's numbers (control-socket stats, `/proc` CPU and memory).
//!
//! The same peer drives the dataplane's deterministic tests (virtual clock), the loopback
//! integration tests against the real binaries, and the load generator.

pub mod chaos;
pub mod client;
pub mod harness;
pub mod janus;
pub mod load;
pub mod net;
pub mod peer;
pub mod stats;
pub mod whip;

pub use peer::{Peer, PeerError, Received, RecvTrack};
