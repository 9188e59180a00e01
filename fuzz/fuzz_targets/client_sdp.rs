//! Client SDP through the path signaling and the core use: a join with an offer, a second offer
//! (renegotiation) and an answer, on a real worker core with a real str0m `Rtc`.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Instant;

use control::{Grants, Request, Response};
use dataplane::io::translate;
use sfu_core::{
    CoreConfig, Input, Output, Report, SharedCrypto, WallClock, WorkerCore,
};
use libfuzzer_sys::fuzz_target;

fn crypto() -> SharedCrypto {
    static C: OnceLock<SharedCrypto> = OnceLock::new();
    C.get_or_init(|| dataplane::crypto::shared_crypto().expect("certificate")).clone()
}

fn ask(core: &mut WorkerCore, now: Instant, tag: u64, request: Request) -> Option<Response> {
    let command = translate::command(tag, request).expect("a worker's request");
    core.handle_input(Input::Command(now, command));
    let mut answer = None;
    while let Some(o) = core.poll_output() {
        if let Output::Report(Report::Reply { tag: t, reply }) = o
            && t == tag
        {
            answer = Some(translate::reply(reply));
        }
    }
    answer
}

fuzz_target!(|data: &[u8]| {
    let sdp = String::from_utf8_lossy(data).into_owned();
    let now = Instant::now();
    let local: SocketAddr = ([10, 0, 0, 1], 40000).into();
    let clock = WallClock {
        instant: now,
        unix_ms: 1_700_000_000_000,
    };
    let mut cfg = CoreConfig::new(0, local);
    cfg.max_media_per_offer = 64;
    let mut core = WorkerCore::new(cfg, crypto(), clock, [7; 32]);
    let join = Request::Join {
        room: "r".into(),
        participant: "p".into(),
        name: "n".into(),
        offer: Some(sdp.clone()),
        epoch: None,
        grants: Grants::default(),
        identity: None,
        // A third of the inputs join as a viewer (WHEP): their recvonly sections become slots.
        viewer: (data.len() % 3 == 0).then(control::Viewer::default),
    };
    let joined = ask(&mut core, now, 1, join);
    if let Some(Response::Error { message, .. }) = &joined {
        assert!(
            !message.contains("0x7f") && message.chars().count() < 400,
            "error detail not cleaned: {message}"
        );
    }
    if matches!(joined, Some(Response::Joined { .. })) {
        let offer = Request::Offer {
            participant: "p".into(),
            sdp: sdp.clone(),
        };
        let _ = ask(&mut core, now, 2, offer);
        let answer = Request::Answer {
            participant: "p".into(),
            sdp,
        };
        let _ = ask(&mut core, now, 3, answer);
    }
    assert!(core.invariant_violations().is_empty());
});
