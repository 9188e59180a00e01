//! Synthetic peers and load generation for the SFU.
//!
//! - [`peer`]: a sans-IO synthetic participant (str0m `Rtc`) that behaves like the web page.
//! - [`client`]: that peer over real sockets, speaking the signaling WebSocket protocol.
//! - [`harness`]: start/stop the real binaries on loopback for tests and benchmarks.
//!
//! The same peer drives the dataplane's deterministic tests (virtual clock), the loopback
//! integration tests against the real binaries, and the load generator.

pub mod client;
pub mod harness;
pub mod peer;

pub use peer::{Peer, PeerError, Received, RecvTrack};
