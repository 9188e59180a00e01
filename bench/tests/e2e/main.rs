//! Loopback integration with the real binaries: `dataplane` + `signaling` processes, synthetic
//! str0m peers joining over the real WebSocket protocol and sending media over real UDP.
//!
//! Needs the binaries built first (`cargo build --bins`; `./scripts/test` does it).
//!
//! One test binary; this file owns the helpers the scenarios share. The scenarios:
//! - `calls.rs`: media and chat between peers, leaving, signaling restarts;
//! - `front_door.rs`: what signaling accepts on its WebSocket (bad input, join tokens, floods)
//!   and the TURN credentials it hands out;
//! - `interop.rs`: aiortc (an independent WebRTC stack) publishing over WHIP and viewing over WHEP;
//! - `ice_tcp.rs`: media over ICE-TCP next to UDP, and abuse of the TCP port;
//! - `whip.rs`: WHIP publishing and WHEP viewing over HTTP, and their bad requests;
//! - `observability.rs`: the load generator's pipeline and the metrics endpoints.

mod calls;
mod front_door;
mod ice_tcp;
mod interop;
mod observability;
mod whip;

use std::time::{Duration, Instant};

use bench::client::{Client, Media};
use bench::client::{audio_from, video_from};
use bench::harness::Node;
use serde_json::Value;

const T: Duration = Duration::from_secs(15);

fn join(
    node: &Node,
    sig: usize,
    room: &str,
    name: &str,
    media: Option<Media>,
    epoch: Instant,
) -> Client {
    Client::join(&node.ws_url(sig), room, name, media, epoch, T)
        .unwrap_or_else(|e| panic!("{name} failed to join: {e:#}\n{}", node.logs()))
}

/// The chat messages `c` received, parsed.
fn chat(c: &Client) -> Vec<Value> {
    c.peer
        .received
        .chat
        .iter()
        .filter_map(|m| serde_json::from_str(m).ok())
        .collect()
}
