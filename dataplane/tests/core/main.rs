//! Deterministic tests of the SFU core: real `WorkerCore`, real str0m peers, simulated network,
//! virtual clock (see `sim/mod.rs`).

#[path = "../sim/mod.rs"]
mod sim;

mod chat;
mod determinism;
mod ice_tcp;
mod lifecycle;
mod media;
mod properties;
mod robustness;
mod simulcast;
mod speakers;
mod viewer;

use std::net::SocketAddr;
use std::time::Duration;

use control::{ErrorCode, Event, Grants, LeaveReason, Request, Response};
use sfu_core::DropReason;
use sim::{Publish, Sim, video_only};
use str0m::media::MediaKind;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn pub_av() -> Option<Publish> {
    Some(Publish::default())
}

/// Everyone in `ids` receives audio and video from every other, and nothing from itself.
fn assert_full_mesh(sim: &Sim, ids: &[&str], min_packets: u64) {
    for me in ids {
        let rx = &sim.peer(me).peer.received;
        for other in ids {
            let audio = rx.packets_from(other, MediaKind::Audio);
            let video = rx.packets_from(other, MediaKind::Video);
            if me == other {
                assert_eq!(audio + video, 0, "{me} must never receive its own media");
            } else {
                assert!(
                    audio >= min_packets,
                    "{me} got {audio} audio packets from {other}"
                );
                assert!(
                    video >= min_packets,
                    "{me} got {video} video packets from {other}"
                );
            }
        }
    }
}
