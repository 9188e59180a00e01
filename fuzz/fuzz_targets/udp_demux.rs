//! Datagrams as the worker receives them: classified by first byte, routed by STUN username or
//! source address, then handed to a real worker core (which parses them with str0m).
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sfu_core::{
    Command, CoreConfig, Demux, Grants, Input, Join, Op, ParticipantIdx, SharedCrypto, WallClock,
    WorkerCore,
    classify,
};
use libfuzzer_sys::fuzz_target;

fn crypto() -> SharedCrypto {
    static C: OnceLock<SharedCrypto> = OnceLock::new();
    C.get_or_init(|| dataplane::crypto::shared_crypto().expect("certificate")).clone()
}

fuzz_target!(|data: &[u8]| {
    let src: SocketAddr = ([10, 0, 0, 2], 5000).into();
    let _ = classify(data);
    let mut d = Demux::with_capacity(4);
    d.insert_ufrag("abcd".into(), ParticipantIdx(1));
    d.bind_addr(src, ParticipantIdx(1));
    let _ = d.route(src, data);
    let _ = d.route(([10, 0, 0, 3], 1).into(), data);

    // A worker with one reserved participant receives the datagram from a bound-looking source.
    let now = Instant::now();
    let local: SocketAddr = ([10, 0, 0, 1], 40000).into();
    let clock = WallClock {
        instant: now,
        unix_ms: 1_700_000_000_000,
    };
    let mut core = WorkerCore::new(CoreConfig::new(0, local), crypto(), clock, [7; 32]);
    core.handle_input(Input::Command(
        now,
        Command {
            tag: 1,
            op: Op::Join(Join {
                room: "r".into(),
                participant: "p".into(),
                name: "n".into(),
                offer: None,
                grants: Grants::default(),
                identity: None,
            }),
        },
    ));
    core.handle_input(Input::Receive {
        now,
        transport: sfu_core::Transport::Udp,
        source: src,
        destination: local,
        data,
    });
    core.handle_input(Input::Timeout(now + Duration::from_secs(1)));
    while core.poll_output().is_some() {}
});
