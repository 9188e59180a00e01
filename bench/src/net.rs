//! UDP receive with kernel receive timestamps (`SO_TIMESTAMPNS`).
//!
//! The load generator serves many peers per thread, so a datagram can wait in its socket while
//! the thread decrypts other peers' packets. Latency measured at processing time would charge
//! that wait to the SFU. The kernel's receive timestamp marks when the datagram arrived, which
//! is what "SFU-added latency" means.
//!
//! Linux turns receive timestamping on lazily (a deferred static key) when the first socket asks
//! for it; datagrams that arrive before that carry the read time instead. In a load run that is
//! only the first packets of the first peers, before the measurement window.

use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, setsockopt, sockopt,
};
use nix::sys::time::TimeSpec;

/// Ask the kernel to stamp every datagram received on `sock`.
pub fn enable_rx_timestamps(sock: &UdpSocket) -> io::Result<()> {
    setsockopt(sock, sockopt::ReceiveTimestampns, &true).map_err(io::Error::from)
}

/// One datagram: its length, source, and when the kernel received it (mapped onto the
/// monotonic clock; `None` if the socket has no timestamps enabled).
pub fn recv_from_stamped(
    sock: &UdpSocket,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, Option<Instant>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!(TimeSpec);
    let msg = recvmsg::<SockaddrStorage>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )
    .map_err(io::Error::from)?;
    let len = msg.bytes;
    let from = msg
        .address
        .as_ref()
        .and_then(to_socket_addr)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "datagram without source"))?;
    let mut at = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmTimestampns(ts) = c {
                at = Some(realtime_to_instant(Duration::from(ts)));
            }
        }
    }
    Ok((len, from, at))
}

fn to_socket_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    a.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
}

/// A `CLOCK_REALTIME` instant (since the Unix epoch) as an `Instant`: now minus its age.
fn realtime_to_instant(since_epoch: Duration) -> Instant {
    let mono = Instant::now();
    let real = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    mono.checked_sub(real.saturating_sub(since_epoch))
        .unwrap_or(mono)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One datagram that waits 30 ms in the socket: (time from send to the stamp, from the
    /// stamp to the read).
    fn waited_datagram(a: &UdpSocket, b: &UdpSocket) -> (Duration, Duration) {
        let before = Instant::now();
        a.send_to(b"hello", b.local_addr().expect("addr"))
            .expect("send");
        std::thread::sleep(Duration::from_millis(30));
        let mut buf = [0u8; 64];
        let (n, from, at) = recv_from_stamped(b, &mut buf).expect("recv");
        let after = Instant::now();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(from, a.local_addr().expect("addr"));
        let at = at.expect("a kernel timestamp");
        (
            at.checked_duration_since(before)
                .expect("stamp before the send"),
            after
                .checked_duration_since(at)
                .expect("stamp after the read"),
        )
    }

    #[test]
    fn stamps_are_the_arrival_time_not_the_read_time() {
        let a = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let b = UdpSocket::bind("127.0.0.1:0").expect("bind");
        enable_rx_timestamps(&b).expect("SO_TIMESTAMPNS");
        // The kernel turns receive timestamping on lazily (a deferred static key), so the first
        // datagrams after the first socket asks for it may carry the read time instead: allow a
        // few tries. A stamp taken at the read fails every one of them.
        let mut tries = Vec::new();
        for _ in 0..5 {
            let (to_stamp, to_read) = waited_datagram(&a, &b);
            assert!(
                to_stamp < Duration::from_millis(25) || to_read < Duration::from_millis(5),
                "{to_stamp:?} {to_read:?}"
            );
            if to_read >= Duration::from_millis(25) {
                assert!(
                    to_stamp < Duration::from_millis(5),
                    "stamped {to_stamp:?} after the send"
                );
                return;
            }
            tries.push((to_stamp, to_read));
        }
        panic!("every stamp is the read time (send→stamp, stamp→read): {tries:?}");
    }
}
