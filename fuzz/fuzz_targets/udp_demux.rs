//! Datagrams as the worker receives them: classified by first byte, routed by STUN username or
//! source (transport and address), then handed to a real worker core (which parses them with
//! str0m), over UDP or, for inputs of odd length, as a deframed ICE-TCP datagram.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sfu_core::{
    Command, CoreConfig, Demux, Grants, Input, Join, Op, ParticipantIdx, Remote, SharedCrypto,
    Transport, WallClock, WorkerCore, classify,
};
use libfuzzer_sys::fuzz_target;

fn crypto() -> SharedCrypto {
    static C: OnceLock<SharedCrypto> = OnceLock::new();
    C.get_or_init(|| dataplane::crypto::shared_crypto().expect("certificate")).clone()
}

fuzz_target!(|data: &[u8]| {
    let src: SocketAddr = ([10, 0, 0, 2], 5000).into();
    let transport = if data.len() % 2 == 1 { Transport::Tcp } else { Transport::Udp };
    let _ = classify(data);
    let mut d = Demux::with_capacity(4);
    d.insert_ufrag("abcd".into(), ParticipantIdx(1));
    d.bind_addr(Remote { transport, addr: src }, ParticipantIdx(1));
    let _ = d.route(Remote { transport, addr: src }, data);
    let _ = d.route(Remote::udp(([10, 0, 0, 3], 1).into()), data);

    // A worker with one reserved participant receives the datagram from a bound-looking source.
    let now = Instant::now();
    let local: SocketAddr = ([10, 0, 0, 1], 40000).into();
    let clock = WallClock {
        instant: now,
        unix_ms: 1_700_000_000_000,
    };
    let mut cfg = CoreConfig::new(0, local);
    cfg.tcp_addr = Some(local);
    let mut core = WorkerCore::new(cfg, crypto(), clock, [7; 32]);
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
                viewer: None,
            }),
        },
    ));
    core.handle_input(Input::Receive {
        now,
        transport,
        source: src,
        destination: local,
        data,
    });
    core.handle_input(Input::Timeout(now + Duration::from_secs(1)));
    while core.poll_output().is_some() {}
});
