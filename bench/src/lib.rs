//! Synthetic peers and load generation for the SFU.
//!
//! - [`peer`]: a sans-IO synthetic participant (str0m `Rtc`) that behaves like the web page.
//!
//! The same peer drives the dataplane's deterministic tests (virtual clock), the loopback
//! integration tests against the real binaries, and the load generator.

pub mod peer;

pub use peer::{Peer, PeerError, RecvTrack, Received};
