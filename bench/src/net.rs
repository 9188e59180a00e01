//! UDP receive with kernel receive timestamps (`SO_TIMESTAMPNS`), batched receive
//! (`recvmmsg` + GRO, [`RecvBatch`]) and GSO send ([`send_segments`]) for the load generator.
//!
//! The load generator serves many peers per thread, so a datagram can wait in its socket while
//! the thread decrypts other peers' packets. Latency measured at processing time would charge
//! that wait to the SFU. The kernel's receive timestamp marks when the datagram arrived, which
//! is what "SFU-added latency" means.
//!
//! Linux turns receive timestamping on lazily (a deferred static key) when the first socket asks
//! for it; datagrams that arrive before that carry the read time instead. In a load run that is
//! only the first packets of the first peers, before the measurement window.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg,
    sendmsg, setsockopt, sockopt,
};
use nix::sys::time::TimeSpec;

/// Ask the kernel to stamp every datagram received on `sock`.
pub fn enable_rx_timestamps(sock: &UdpSocket) -> io::Result<()> {
    setsockopt(sock, sockopt::ReceiveTimestampns, &true).map_err(io::Error::from)
}

/// Ask for a `bytes` receive buffer: beyond `net.core.rmem_max` with `SO_RCVBUFFORCE` when
/// privileged, else as much as the limit allows (best effort; the default is ~200 KiB).
pub fn grow_receive_buffer(sock: &UdpSocket, bytes: usize) {
    if setsockopt(sock, sockopt::RcvBufForce, &bytes).is_err() {
        let _ = setsockopt(sock, sockopt::RcvBuf, &bytes);
    }
}

/// [`grow_receive_buffer`] for the send buffer: a nonblocking UDP send fails (the datagrams are
/// lost) while the socket's earlier datagrams still sit in the kernel's queues.
pub fn grow_send_buffer(sock: &UdpSocket, bytes: usize) {
    if setsockopt(sock, sockopt::SndBufForce, &bytes).is_err() {
        let _ = setsockopt(sock, sockopt::SndBuf, &bytes);
    }
}

/// Let the kernel coalesce a burst of equal-size datagrams from one source into one buffer
/// (UDP GRO); [`RecvBatch`] splits it again.
pub fn enable_gro(sock: &UdpSocket) -> io::Result<()> {
    setsockopt(sock, sockopt::UdpGroSegment, &true).map_err(io::Error::from)
}

/// One buffer a [`RecvBatch`] read: its length, source, GRO segment size (`None`: one
/// datagram) and kernel receive time.
#[derive(Debug, Clone, Copy)]
struct Slot {
    len: usize,
    from: SocketAddr,
    stride: Option<usize>,
    at: Option<Instant>,
}

/// Buffers for reading up to `n` buffers (each possibly several GRO-coalesced datagrams) with one
/// `recvmmsg` call: one system call per socket per wake-up instead of one per datagram.
pub struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    slots: Vec<Slot>,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("buffers", &self.bufs.len())
            .finish_non_exhaustive()
    }
}

/// Largest GRO buffer the kernel hands out (64 KiB).
const GRO_BUFFER: usize = 65_535;

impl RecvBatch {
    /// Room for `n` buffers of up to 64 KiB each.
    pub fn new(n: usize) -> Self {
        Self {
            bufs: (0..n.max(1)).map(|_| vec![0; GRO_BUFFER]).collect(),
            slots: Vec::with_capacity(n.max(1)),
        }
    }

    /// Read what is queued on `sock` (never blocks). Returns the number of buffers read: 0 when
    /// nothing was queued. Fewer than the batch size means the queue was drained (a datagram that
    /// arrives later raises a new readiness event).
    pub fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        self.slots.clear();
        // Fresh headers every call: nix's `recvmmsg` does not reset the lengths the kernel wrote
        // back (control and address), so reused headers truncate the next call's GRO and
        // timestamp messages.
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(
            self.bufs.len(),
            Some(nix::cmsg_space!(TimeSpec, i32)),
        );
        let mut iovs: Vec<[IoSliceMut<'_>; 1]> = self
            .bufs
            .iter_mut()
            .map(|b| [IoSliceMut::new(&mut b[..])])
            .collect();
        let res = match recvmmsg(
            sock.as_raw_fd(),
            &mut headers,
            iovs.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        ) {
            Ok(r) => r,
            Err(nix::errno::Errno::EAGAIN) => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        for m in res {
            let Some(from) = m.address.as_ref().and_then(to_socket_addr) else {
                continue;
            };
            let mut slot = Slot {
                len: m.bytes,
                from,
                stride: None,
                at: None,
            };
            if let Ok(cmsgs) = m.cmsgs() {
                for c in cmsgs {
                    match c {
                        ControlMessageOwned::ScmTimestampns(ts) => {
                            slot.at = Some(realtime_to_instant(Duration::from(ts)));
                        }
                        ControlMessageOwned::UdpGroSegments(n) if n > 0 => {
                            slot.stride = Some(n as usize);
                        }
                        _ => {}
                    }
                }
            }
            self.slots.push(slot);
        }
        Ok(self.slots.len())
    }

    /// Number of buffers the batch can read at once.
    pub fn capacity(&self) -> usize {
        self.bufs.len()
    }

    /// The datagrams of the last [`RecvBatch::recv`]: (source, kernel receive time, bytes), GRO
    /// buffers split back into their datagrams.
    pub fn datagrams(&self) -> impl Iterator<Item = (SocketAddr, Option<Instant>, &[u8])> {
        self.slots.iter().zip(&self.bufs).flat_map(|(s, b)| {
            let data = &b[..s.len.min(b.len())];
            let stride = s.stride.unwrap_or(data.len()).max(1);
            data.chunks(stride).map(move |d| (s.from, s.at, d))
        })
    }
}

const MAX_GSO_SEGMENTS: usize = 64;
const MAX_GSO_BYTES: usize = 64_000;

/// Send `segments` to `to` with as few `sendmsg` calls as UDP GSO allows: runs of equal-size
/// datagrams (the last of a run may be shorter) go out as one call of up to 64 segments and
/// 64 000 bytes.
/// Returns the number of system calls made.
pub fn send_segments(sock: &UdpSocket, to: SocketAddr, segments: &[&[u8]]) -> io::Result<usize> {
    let mut calls = 0;
    let mut i = 0;
    while i < segments.len() {
        let size = segments[i].len();
        // At most 64 segments and 64 000 bytes in one call (a UDP datagram's limit: a larger
        // GSO send fails whole).
        let fits = |j: usize| j - i < MAX_GSO_SEGMENTS && (j - i + 1) * size <= MAX_GSO_BYTES;
        let mut j = i + 1;
        while j < segments.len() && fits(j) && segments[j].len() == size {
            j += 1;
        }
        // A shorter datagram may end the run.
        if j < segments.len() && fits(j) && segments[j].len() < size {
            j += 1;
        }
        let iov: Vec<IoSlice<'_>> = segments[i..j].iter().map(|s| IoSlice::new(s)).collect();
        let seg = size as u16;
        let gso = [ControlMessage::UdpGsoSegments(&seg)];
        let cmsgs: &[ControlMessage<'_>] = if j - i > 1 { &gso } else { &[] };
        let res = sendmsg(
            sock.as_raw_fd(),
            &iov,
            cmsgs,
            MsgFlags::empty(),
            Some(&SockaddrStorage::from(to)),
        );
        res.map_err(io::Error::from)?;
        calls += 1;
        i = j;
    }
    Ok(calls)
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
        let mut batch = RecvBatch::new(1);
        assert_eq!(batch.recv(b).expect("recv"), 1);
        let after = Instant::now();
        let (from, at, data) = batch.datagrams().next().expect("one datagram");
        assert_eq!(data, b"hello");
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

    #[test]
    fn gso_runs_arrive_whole_through_a_gro_batch() {
        let a = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let b = UdpSocket::bind("127.0.0.1:0").expect("bind");
        enable_rx_timestamps(&b).expect("SO_TIMESTAMPNS");
        enable_gro(&b).expect("GRO");
        let to = b.local_addr().expect("addr");
        // Five equal datagrams and a shorter one (one GSO call), then two of another size.
        let mut sent: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 1000]).collect();
        sent.push(vec![9; 300]);
        sent.push(vec![7; 500]);
        sent.push(vec![8; 500]);
        let refs: Vec<&[u8]> = sent.iter().map(Vec::as_slice).collect();
        let calls = send_segments(&a, to, &refs).expect("send");
        assert_eq!(calls, 2, "one call per run of equal sizes");
        let mut batch = RecvBatch::new(8);
        let mut got: Vec<Vec<u8>> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(2);
        while got.len() < sent.len() && Instant::now() < deadline {
            batch.recv(&b).expect("recv");
            for (from, at, d) in batch.datagrams() {
                assert_eq!(from, a.local_addr().expect("addr"));
                assert!(at.is_some(), "kernel timestamp");
                got.push(d.to_vec());
            }
        }
        assert_eq!(
            got, sent,
            "same datagrams, same order, split at the GRO stride"
        );
        assert_eq!(batch.recv(&b).expect("recv"), 0, "drained");
        // The next read on the same batch still sees the GRO stride and the timestamp.
        send_segments(&a, to, &refs[..5]).expect("send");
        got.clear();
        let deadline = Instant::now() + Duration::from_secs(2);
        while got.len() < 5 && Instant::now() < deadline {
            batch.recv(&b).expect("recv");
            for (_, at, d) in batch.datagrams() {
                assert!(at.is_some(), "kernel timestamp on a second read");
                got.push(d.to_vec());
            }
        }
        assert_eq!(got, sent[..5].to_vec(), "second read split too");
        // A keyframe-sized run (60 × 1200 bytes) exceeds one datagram's 64 KiB: split, not lost.
        let big: Vec<Vec<u8>> = (0..60u8).map(|i| vec![i; 1200]).collect();
        let refs: Vec<&[u8]> = big.iter().map(Vec::as_slice).collect();
        assert_eq!(send_segments(&a, to, &refs).expect("send"), 2);
        got.clear();
        let deadline = Instant::now() + Duration::from_secs(2);
        while got.len() < 60 && Instant::now() < deadline {
            batch.recv(&b).expect("recv");
            got.extend(batch.datagrams().map(|(_, _, d)| d.to_vec()));
        }
        assert_eq!(got, big);
    }
}
