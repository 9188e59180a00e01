//! ICE over TCP through the real binaries: synthetic peers reach the dataplane's passive TCP
//! candidate (RFC 6544, RFC 4571 framing) next to peers on UDP, and the TCP port survives
//! garbage, a bare 65535 length prefix and 10,000 idle connections without hurting the call.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bench::client::{self, Client, Media};
use bench::harness::{Node, metric_value, wait_until};
use str0m::media::MediaKind;

use super::{T, audio_from, chat, video_from};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn join_tcp(node: &Node, room: &str, name: &str, media: Option<Media>, epoch: Instant) -> Client {
    Client::join_tcp_from(LOCALHOST, &node.ws_url(0), room, name, media, epoch, T)
        .unwrap_or_else(|e| panic!("{name} failed to join over TCP: {e:#}\n{}", node.logs()))
}

fn metric(node: &Node, series: &str) -> f64 {
    metric_value(node.metrics_addr, series).unwrap_or(0.0)
}

/// The sum of a metric over both workers.
fn metric_sum(node: &Node, name: &str) -> f64 {
    (0..node.workers)
        .map(|w| metric(node, &format!("{name}{{worker=\"{w}\"}}")))
        .sum()
}

/// ICE-TCP connections the dataplane closed for `reason`, over both workers.
fn closed(node: &Node, reason: &str) -> f64 {
    (0..node.workers)
        .map(|w| {
            metric(
                node,
                &format!("sfu_ice_tcp_closed_total{{worker=\"{w}\",reason=\"{reason}\"}}"),
            )
        })
        .sum()
}

/// The dataplane's resident memory in KiB.
fn rss_kib(node: &Node) -> u64 {
    let pid = node.dataplane.pid().expect("dataplane runs");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// A TCP connection to `to` from the loopback address `from` (127.x.y.z: loopback answers for
/// the whole /8, so each is a distinct source IP to the dataplane's per-IP limit).
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&SocketAddr::new(IpAddr::V4(from), 0).into())?;
    s.connect_timeout(&to.into(), Duration::from_secs(2))?;
    Ok(s.into())
}

#[test]
fn peers_over_ice_tcp_and_udp_share_a_room_and_the_tcp_port_survives_abuse() {
    // Small per-worker and per-address caps so the floods below meet them.
    let node = Node::start(
        2,
        &[
            "--ice-tcp-max-connections",
            "256",
            "--ice-tcp-max-per-ip",
            "64",
        ],
    )
    .expect("node starts");
    let epoch = Instant::now();
    let mut cs = vec![
        join_tcp(&node, "tcp-room", "tcp-pub", Some(Media::default()), epoch),
        super::join(
            &node,
            0,
            "tcp-room",
            "udp-pub",
            Some(Media::default()),
            epoch,
        ),
        join_tcp(&node, "tcp-room", "tcp-sub", None, epoch),
    ];
    let ok = client::run(&mut cs, T, |cs| {
        video_from(&cs[1], &cs[0]) > 60
            && audio_from(&cs[1], &cs[0]) > 30
            && video_from(&cs[0], &cs[1]) > 60
            && video_from(&cs[2], &cs[0]) > 60
            && video_from(&cs[2], &cs[1]) > 60
    })
    .expect("run");
    assert!(
        ok,
        "media did not flow between TCP and UDP peers:\n{}",
        node.logs()
    );
    for c in &cs {
        for t in c.peer.received.tracks.values() {
            assert_eq!(t.lost, 0, "{}: no gaps on loopback: {t:?}", c.name);
        }
        assert_eq!(c.peer.received.packets_from(&c.id, MediaKind::Video), 0);
    }
    wait_until(
        "two ICE-TCP connections are open",
        T,
        Duration::from_millis(200),
        || metric_sum(&node, "sfu_ice_tcp_connections") >= 2.0,
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", node.logs()));

    // Chat over a TCP peer's data channel.
    assert!(client::run(&mut cs, T, |cs| cs.iter().all(|c| c.peer.chat_open())).expect("run"));
    assert!(cs[0].peer.send_chat(None, "from tcp"));
    assert!(
        client::run(&mut cs, T, |cs| chat(&cs[1])
            .iter()
            .any(|m| m["text"] == "from tcp"))
        .expect("run"),
        "the UDP peer got the TCP peer's chat"
    );

    // The worker hosting the room: its TCP port is the answer's TCP candidate.
    let port = cs[0].server_port().expect("the answer names a port");
    let target = SocketAddr::new(LOCALHOST, port);

    // Garbage: an HTTP request, and a 65535 length prefix followed by nothing. Both are closed
    // by the dataplane (the first at once, the second when its bytes cannot be a STUN check).
    for bytes in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0xff, 0xff][..],
        &[0x16, 0x03, 0x01, 0x00, 0x50][..],
    ] {
        let mut s = TcpStream::connect(target).expect("connect");
        s.write_all(bytes).expect("write");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf);
        assert!(
            matches!(n, Ok(0) | Err(_)),
            "the dataplane closes a connection sending {bytes:?}: {n:?}"
        );
    }
    // (Counters reach the metrics with the workers' 1 s stats reports.)
    wait_until(
        "three garbage closes are counted",
        T,
        Duration::from_millis(200),
        || closed(&node, "garbage") >= 3.0,
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", node.logs()));

    // 10,000 connections that never send a byte, from 200 source addresses (50 each, under the
    // per-address cap of 64): the worker keeps at most 256 (each new one evicts the oldest that no
    // participant owns), closes the kept ones after the 5 s handshake timeout; its memory stays
    // bounded, the call goes on and a new participant still gets in over TCP.
    let rss_before = rss_kib(&node);
    let flood_start = Instant::now();
    let mut idle = Vec::with_capacity(10_000);
    let mut failed = 0;
    'outer: for a in 0..200u32 {
        let from = Ipv4Addr::new(127, 1, (a / 250) as u8, (a % 250) as u8 + 1);
        for _ in 0..50 {
            match connect_from(from, target) {
                Ok(s) => idle.push(s),
                Err(_) => failed += 1,
            }
            if flood_start.elapsed() > Duration::from_secs(60) {
                break 'outer;
            }
        }
        // Keep the call served meanwhile.
        for c in cs.iter_mut() {
            c.poll(Instant::now()).expect("poll");
        }
    }
    assert!(
        idle.len() + failed >= 10_000,
        "the flood opened {} and failed {failed} within a minute",
        idle.len()
    );
    let before = (video_from(&cs[1], &cs[0]), video_from(&cs[2], &cs[1]));
    let ok = client::run(&mut cs, T, |cs| {
        video_from(&cs[1], &cs[0]) > before.0 + 90 && video_from(&cs[2], &cs[1]) > before.1 + 90
    })
    .expect("run");
    assert!(
        ok,
        "media stalled during the connection flood:\n{}",
        node.logs()
    );
    // A new TCP participant still gets in (from the legitimate address).
    let mut late = vec![join_tcp(&node, "tcp-room", "tcp-late", None, epoch)];
    cs.append(&mut late);
    let ok = client::run(&mut cs, T, |cs| video_from(&cs[3], &cs[0]) > 30).expect("run");
    assert!(
        ok,
        "a TCP joiner got no media during the flood:\n{}",
        node.logs()
    );
    wait_until(
        "the flood is counted",
        T,
        Duration::from_millis(250),
        || closed(&node, "evicted") + closed(&node, "refused") >= 9_000.0,
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", node.logs()));
    // One address opening 100: beyond its 64 the rest are refused at accept.
    let one = Ipv4Addr::new(127, 2, 0, 1);
    for _ in 0..100 {
        if let Ok(s) = connect_from(one, target) {
            idle.push(s);
        }
    }
    wait_until(
        "the per-address cap refuses",
        T,
        Duration::from_millis(250),
        || closed(&node, "refused") >= 30.0,
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", node.logs()));
    let open = metric_sum(&node, "sfu_ice_tcp_connections");
    assert!(open <= 256.0 + 4.0, "{open} connections open");
    let rss_after = rss_kib(&node);
    assert!(
        rss_after < rss_before + 64 * 1024,
        "dataplane RSS grew from {rss_before} to {rss_after} KiB"
    );
    // The kept idle connections are closed by the handshake timeout.
    wait_until(
        "idle connections are closed",
        Duration::from_secs(15),
        Duration::from_millis(250),
        || {
            client::run(&mut cs, Duration::from_millis(100), |_| false).is_ok()
                && metric_sum(&node, "sfu_ice_tcp_connections") <= 3.0
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", node.logs()));
    // Nothing but the handshake timeout closes an idle, unbound connection once the floods
    // stopped (how many of the 256 it got rather than an eviction depends on the flood's speed).
    assert!(
        closed(&node, "timeout") > 0.0,
        "kept idle connections timed out"
    );
    eprintln!(
        "flood: {} connections in {:?} ({failed} failed to connect); evicted {}, refused {} \
         (per-address cap), timed out {}; dataplane RSS {rss_before} -> {rss_after} KiB",
        idle.len(),
        flood_start.elapsed(),
        closed(&node, "evicted"),
        closed(&node, "refused"),
        closed(&node, "timeout"),
    );
    drop(idle);
    // And the call is still fine.
    let before = video_from(&cs[1], &cs[0]);
    let ok = client::run(&mut cs, T, |cs| video_from(&cs[1], &cs[0]) > before + 60).expect("run");
    assert!(ok, "media after the flood:\n{}", node.logs());
}
