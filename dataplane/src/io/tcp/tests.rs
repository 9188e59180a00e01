//! The ICE-TCP shell against real loopback connections.
use super::framing::MAX_UNBOUND_FRAMES;
use super::*;

/// A listening shell with `limits`, registered in its own poll.
fn listening(limits: TcpLimits) -> (TcpShell, mio::Poll) {
    let mut shell =
        TcpShell::bind("127.0.0.1:0".parse().expect("test setup"), limits).expect("bind");
    let poll = mio::Poll::new().expect("poll");
    shell.register(poll.registry()).expect("register");
    (shell, poll)
}

/// A connected pair: the shell's side (accepted) and a client stream.
fn pair() -> (TcpShell, mio::Poll, std::net::TcpStream) {
    let (shell, poll) = listening(TcpLimits::default());
    let client =
        std::net::TcpStream::connect(shell.local_addr().expect("test setup")).expect("connect");
    client.set_nodelay(true).expect("test setup");
    (shell, poll, client)
}

fn stun_like(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n.max(20)];
    v[0] = 0;
    v[1] = 1;
    v
}

fn framed(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        out.extend_from_slice(&(f.len() as u16).to_be_bytes());
        out.extend_from_slice(f);
    }
    out
}

/// Run `process` until `done` or a second passes.
fn pump(
    shell: &mut TcpShell,
    poll: &mio::Poll,
    got: &mut Vec<Vec<u8>>,
    bind: bool,
    done: impl Fn(&TcpShell, &[Vec<u8>]) -> bool,
) {
    let start = Instant::now();
    while !done(shell, got) && start.elapsed() < Duration::from_secs(2) {
        shell.accept_pending = true;
        let keys: Vec<usize> = shell.conns.iter().map(|(k, _)| k).collect();
        for k in keys {
            if !shell.ready.contains(&k) {
                shell.ready.push_back(k);
            }
        }
        shell.process(poll.registry(), Instant::now(), &mut |_, d, _| {
            got.push(d.to_vec());
            bind
        });
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn frames_split_anywhere_are_reassembled() {
    let (mut shell, poll, mut client) = pair();
    let frames = vec![
        stun_like(20),
        vec![0x80; 1200],
        vec![0x80; 1],
        stun_like(300),
    ];
    let bytes = framed(&frames);
    // One byte at a time for the first frame, then arbitrary cuts.
    let mut got = Vec::new();
    for chunk in bytes.chunks(7) {
        client.write_all(chunk).expect("test setup");
        client.flush().expect("test setup");
        std::thread::sleep(Duration::from_millis(1));
    }
    pump(&mut shell, &poll, &mut got, true, |_, g| g.len() == 4);
    assert_eq!(got, frames);
    assert_eq!(shell.stats.frames_in, 4);
}

#[test]
fn a_first_frame_that_is_not_stun_closes_the_connection() {
    let (mut shell, poll, mut client) = pair();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("test setup");
    let mut got = Vec::new();
    pump(&mut shell, &poll, &mut got, false, |s, _| {
        s.stats.garbage == 1
    });
    assert_eq!(shell.stats.garbage, 1);
    assert!(got.is_empty(), "nothing reached the core");
    assert_eq!(shell.connections(), 0);
    // The peer sees the close.
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("test setup");
    let mut buf = [0u8; 16];
    assert!(matches!(client.read(&mut buf), Ok(0) | Err(_)));
}

#[test]
fn a_huge_length_prefix_on_an_unbound_connection_is_refused_at_once() {
    let (mut shell, poll, mut client) = pair();
    client.write_all(&[0xff, 0xff]).expect("test setup");
    let mut got = Vec::new();
    pump(&mut shell, &poll, &mut got, false, |s, _| {
        s.stats.garbage == 1
    });
    assert!(got.is_empty());
    assert_eq!(shell.connections(), 0);
}

#[test]
fn a_partial_check_times_out_unbound_and_a_bound_connection_idles_out() {
    let (mut shell, poll, mut client) = pair();
    // A plausible STUN header and then nothing more.
    client.write_all(&[0, 100, 0, 1]).expect("test setup");
    let mut got = Vec::new();
    pump(&mut shell, &poll, &mut got, false, |s, _| {
        s.conns.iter().any(|(_, c)| c.partial.len() == 4)
    });
    assert!(got.is_empty());
    shell.sweep(poll.registry(), Instant::now() + Duration::from_secs(1));
    assert_eq!(shell.connections(), 1, "not yet");
    shell.sweep(poll.registry(), Instant::now() + Duration::from_secs(6));
    assert_eq!(shell.connections(), 0);
    assert_eq!(shell.stats.timeouts, 1);

    // Bound (its check accepted), then a 65535-byte length with nothing behind it: held
    // until the idle timeout, never delivered.
    let mut client =
        std::net::TcpStream::connect(shell.local_addr().expect("test setup")).expect("test setup");
    client
        .write_all(&framed(&[stun_like(20)]))
        .expect("test setup");
    pump(&mut shell, &poll, &mut got, true, |_, g| g.len() == 1);
    client.write_all(&[0xff, 0xff, 0x80]).expect("test setup");
    pump(&mut shell, &poll, &mut got, true, |s, _| {
        s.conns.iter().any(|(_, c)| c.partial.len() == 3)
    });
    assert_eq!(got.len(), 1);
    shell.sweep(poll.registry(), Instant::now() + Duration::from_secs(10));
    assert_eq!(
        shell.connections(),
        1,
        "bound: only the idle timeout applies"
    );
    shell.sweep(poll.registry(), Instant::now() + Duration::from_secs(31));
    assert_eq!(shell.connections(), 0);
}

#[test]
fn unbound_connections_get_a_few_frames_then_are_closed() {
    let (mut shell, poll, mut client) = pair();
    let frames: Vec<Vec<u8>> = (0..40).map(|_| stun_like(20)).collect();
    client.write_all(&framed(&frames)).expect("test setup");
    let mut got = Vec::new();
    pump(&mut shell, &poll, &mut got, false, |s, _| {
        s.stats.garbage == 1
    });
    assert_eq!(got.len(), MAX_UNBOUND_FRAMES as usize);
}

#[test]
fn per_ip_limit_refuses_more_connections() {
    let limits = TcpLimits {
        max_per_ip: 3,
        ..TcpLimits::default()
    };
    let (mut shell, poll) = listening(limits);
    let addr = shell.local_addr().expect("test setup");
    let clients: Vec<_> = (0..5)
        .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
        .collect();
    let mut got = Vec::new();
    pump(&mut shell, &poll, &mut got, false, |s, _| {
        s.stats.accepted + s.stats.refused == 5
    });
    assert_eq!(shell.connections(), 3);
    assert_eq!(shell.stats.refused, 2);
    drop(clients);
}

#[test]
fn at_the_worker_limit_the_oldest_unbound_connection_makes_room() {
    let limits = TcpLimits {
        max_connections: 3,
        ..TcpLimits::default()
    };
    let (mut shell, poll) = listening(limits);
    let addr = shell.local_addr().expect("test setup");
    // A bound connection first (its check accepted), then idle ones.
    let mut real = std::net::TcpStream::connect(addr).expect("test setup");
    real.write_all(&framed(&[stun_like(20)]))
        .expect("test setup");
    let mut got = Vec::new();
    pump(&mut shell, &poll, &mut got, true, |_, g| g.len() == 1);
    let mut idle = Vec::new();
    for n in 1..=5u64 {
        idle.push(std::net::TcpStream::connect(addr).expect("test setup"));
        pump(&mut shell, &poll, &mut got, false, |s, _| {
            s.stats.accepted == n + 1
        });
    }
    assert_eq!(shell.connections(), 3);
    assert_eq!(shell.stats.evicted, 3);
    assert_eq!(shell.stats.refused, 0);
    assert!(
        shell.conns.iter().any(|(_, c)| c.bound),
        "the bound connection is never evicted"
    );
}

#[test]
fn a_full_write_buffer_drops_whole_datagrams() {
    let limits = TcpLimits {
        write_buffer: 8 * 1024,
        ..TcpLimits::default()
    };
    let (mut shell, poll) = listening(limits);
    let mut client =
        std::net::TcpStream::connect(shell.local_addr().expect("test setup")).expect("test setup");
    // Never read by the client: a slow reader.
    client
        .write_all(&framed(&[stun_like(20)]))
        .expect("test setup");
    let mut got = Vec::new();
    pump(&mut shell, &poll, &mut got, true, |_, g| g.len() == 1);
    let peer = client.local_addr().expect("test setup");
    for _ in 0..10_000 {
        shell.send(peer, &[0x80; 1000]);
        shell.flush(poll.registry());
    }
    assert!(shell.stats.send_drops > 0, "{:?}", shell.stats);
    // What was queued is whole frames: read them back.
    client.set_nonblocking(true).expect("test setup");
    let mut all = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        match client.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(_) => {
                shell.flush(poll.registry());
                let keys: Vec<usize> = shell.conns.iter().map(|(k, _)| k).collect();
                for k in keys {
                    shell.write_out(poll.registry(), k);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        if all.len() as u64 == shell.stats.frames_out * 1002 {
            break;
        }
    }
    assert_eq!(all.len() % 1002, 0, "whole frames only");
    let mut rest = &all[..];
    while !rest.is_empty() {
        assert_eq!(u16::from_be_bytes([rest[0], rest[1]]), 1000);
        rest = &rest[1002..];
    }
    assert_eq!(
        shell.stats.frames_out + shell.stats.send_drops,
        10_000,
        "every datagram was sent or counted as dropped"
    );
}
