//! The UDP socket of one worker: batched receive (recvmmsg + GRO, split by stride, through
//! quinn-udp) and batched send (consecutive datagrams to one destination coalesced into one GSO
//! `sendmsg`). A run is sent straight from the datagrams' own buffers (one iovec each), so a
//! forwarded datagram is not copied again on its way out. With batching off, plain
//! `recv_from`/`send_to` per datagram (for benchmarks, and the fallback a kernel without GSO/GRO
//! gets anyway: quinn-udp reports 1 segment there).

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use mio::net::UdpSocket;
use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};

/// Largest UDP payload (and GRO buffer).
const MAX_DATAGRAM: usize = 65_535;
/// The kernel's limit of segments in one GSO send (`UDP_MAX_SEGMENTS`).
const MAX_GSO_SEGMENTS: usize = 64;
/// A GSO send may not exceed this many bytes in total.
const MAX_GSO_BYTES: usize = 64_000;
/// Datagrams held while the socket would block; beyond this new sends are dropped and counted.
const MAX_BACKLOG: usize = 4096;

/// Counters of the socket layer.
#[derive(Debug, Default, Clone)]
pub struct UdpStats {
    pub recv_calls: u64,
    pub datagrams_in: u64,
    pub send_calls: u64,
    pub datagrams_out: u64,
    /// Sends that carried more than one datagram (GSO).
    pub gso_sends: u64,
    pub send_errors: u64,
    /// Datagrams dropped because the send backlog was full.
    pub backlog_drops: u64,
}

/// A coalesced run of datagrams to one destination (empty: no destination). The datagrams keep
/// their own buffers; `parts` is reused from run to run.
#[derive(Default)]
struct Run {
    destination: Option<SocketAddr>,
    segment: usize,
    bytes: usize,
    /// A datagram shorter than `segment` ended the run: GSO allows only the last to be short.
    closed: bool,
    parts: Vec<Vec<u8>>,
}

/// One worker's UDP socket. See the module docs.
pub struct UdpShell {
    socket: UdpSocket,
    state: Option<UdpSocketState>,
    max_segments: usize,
    recv_buf: Vec<u8>,
    slot: usize,
    metas: Vec<RecvMeta>,
    run: Run,
    /// Sends that hit `WouldBlock`, in order: (destination, contents, segment size).
    backlog: VecDeque<(SocketAddr, Vec<u8>, Option<usize>)>,
    pub stats: UdpStats,
}

impl UdpShell {
    /// Bind `addr` (non-blocking). `batching` enables GRO/recvmmsg and GSO.
    pub fn bind(addr: SocketAddr, batching: bool, buffer_bytes: usize) -> io::Result<Self> {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_nonblocking(true)?;
        // Best effort: the kernel caps these at net.core.{r,w}mem_max (see docs/deploy.md).
        let _ = socket.set_recv_buffer_size(buffer_bytes);
        let _ = socket.set_send_buffer_size(buffer_bytes);
        socket.bind(&addr.into())?;
        let socket = UdpSocket::from_std(socket.into());
        let (state, max_segments, slots) = if batching {
            let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
            let segs = state.max_gso_segments().max(1);
            (Some(state), segs, quinn_udp::BATCH_SIZE)
        } else {
            (None, 1, 1)
        };
        let slot = if batching { MAX_DATAGRAM } else { 2048 };
        Ok(Self {
            socket,
            state,
            max_segments,
            recv_buf: vec![0; slot * slots],
            slot,
            metas: vec![RecvMeta::default(); slots],
            run: Run::default(),
            backlog: VecDeque::new(),
            stats: UdpStats::default(),
        })
    }

    pub fn socket(&mut self) -> &mut UdpSocket {
        &mut self.socket
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Whether GSO/GRO batching is active.
    pub fn batching(&self) -> bool {
        self.state.is_some()
    }

    /// Maximum datagrams per GSO send (1 without GSO).
    pub fn max_segments(&self) -> usize {
        self.max_segments
    }

    /// One receive call (recvmmsg with GRO when batching). Calls `f(source, datagram)` for every
    /// datagram, GRO buffers split at their stride. Returns the number of datagrams; 0 means the
    /// socket is drained (`WouldBlock`).
    pub fn recv(&mut self, mut f: impl FnMut(SocketAddr, &[u8])) -> io::Result<usize> {
        let Some(state) = &self.state else {
            return match self.socket.recv_from(&mut self.recv_buf) {
                Ok((n, src)) => {
                    self.stats.recv_calls += 1;
                    self.stats.datagrams_in += 1;
                    f(src, &self.recv_buf[..n]);
                    Ok(1)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                Err(e) => Err(e),
            };
        };
        let mut iovs: Vec<IoSliceMut<'_>> = self
            .recv_buf
            .chunks_mut(self.slot)
            .map(IoSliceMut::new)
            .collect();
        let n = match state.recv(UdpSockRef::from(&self.socket), &mut iovs, &mut self.metas) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) => return Err(e),
        };
        self.stats.recv_calls += 1;
        let mut datagrams = 0;
        for (meta, iov) in self.metas.iter().zip(iovs.iter()).take(n) {
            datagrams += split_gro(&iov[..meta.len.min(iov.len())], meta.stride, |d| {
                f(meta.addr, d)
            });
        }
        self.stats.datagrams_in += datagrams as u64;
        Ok(datagrams)
    }

    /// Queue one datagram. Consecutive datagrams to the same destination are coalesced into one
    /// GSO send while all but the last have the same size; anything else flushes the run.
    pub fn send(&mut self, destination: SocketAddr, contents: Vec<u8>) {
        if self.state.is_none() || self.max_segments <= 1 {
            self.send_now(destination, contents, None);
            return;
        }
        let len = contents.len();
        if let Some(d) = self.run.destination {
            let r = &self.run;
            let fits = d == destination
                && !r.closed
                && len <= r.segment
                && r.parts.len() < self.max_segments.min(MAX_GSO_SEGMENTS)
                && r.bytes + len <= MAX_GSO_BYTES;
            if !fits {
                self.flush();
            }
        }
        let r = &mut self.run;
        if r.destination.is_none() {
            r.destination = Some(destination);
            r.segment = len;
            r.bytes = 0;
            r.closed = false;
        }
        r.bytes += len;
        r.closed = len < r.segment;
        r.parts.push(contents);
    }

    /// Send the current run. Call at the end of every loop turn.
    pub fn flush(&mut self) {
        let Some(dest) = self.run.destination.take() else {
            return;
        };
        let seg = (self.run.parts.len() > 1).then_some(self.run.segment);
        let result = if self.backlog.is_empty() {
            self.send_parts(dest, seg)
        } else {
            // Keep order: nothing overtakes the backlog.
            Err(io::ErrorKind::WouldBlock.into())
        };
        match result {
            Ok(()) => self.count_sent(self.run.bytes, seg),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let buf = self.run.parts.concat();
                self.push_backlog(dest, buf, seg);
            }
            Err(e) if seg.is_some() && matches!(e.raw_os_error(), Some(5 | 22)) => {
                // EIO/EINVAL: this path cannot do GSO after all (as quinn-udp concludes on the
                // same errors). Stop batching and send the run's datagrams one by one.
                self.max_segments = 1;
                tracing::debug!(%dest, error = %e, "GSO send failed; batching off");
                for part in std::mem::take(&mut self.run.parts) {
                    self.send_now(dest, part, None);
                }
            }
            Err(e) => self.send_failed(&e, dest),
        }
        self.run.parts.clear();
    }

    /// One `sendmsg` of the run's datagrams from their own buffers (GSO when `seg` is set).
    fn send_parts(&self, dest: SocketAddr, seg: Option<usize>) -> io::Result<()> {
        use nix::sys::socket::{ControlMessage, MsgFlags, SockaddrStorage, sendmsg};
        // On the stack: this runs once per destination per loop turn.
        let mut iov = [IoSlice::new(&[]); MAX_GSO_SEGMENTS];
        let n = self.run.parts.len().min(MAX_GSO_SEGMENTS);
        for (slot, part) in iov.iter_mut().zip(&self.run.parts) {
            *slot = IoSlice::new(part);
        }
        let iov = &iov[..n];
        let seg16 = seg.map_or(0, |s| s as u16);
        let gso = [ControlMessage::UdpGsoSegments(&seg16)];
        let cmsgs: &[ControlMessage<'_>] = if seg.is_some() { &gso } else { &[] };
        let to = SockaddrStorage::from(dest);
        let sent = sendmsg(
            self.socket.as_raw_fd(),
            iov,
            cmsgs,
            MsgFlags::empty(),
            Some(&to),
        );
        sent.map(|_| ()).map_err(io::Error::from)
    }

    /// Whether sends are waiting for the socket to become writable.
    pub fn has_backlog(&self) -> bool {
        !self.backlog.is_empty()
    }

    /// Retry backlogged sends (on writable). Returns true when the backlog is empty.
    pub fn retry_backlog(&mut self) -> bool {
        while let Some((dest, buf, seg)) = self.backlog.pop_front() {
            match self.try_send(dest, &buf, seg) {
                Ok(()) => self.count_sent(buf.len(), seg),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.backlog.push_front((dest, buf, seg));
                    return false;
                }
                Err(e) => self.send_failed(&e, dest),
            }
        }
        true
    }

    fn send_now(&mut self, dest: SocketAddr, buf: Vec<u8>, seg: Option<usize>) {
        if !self.backlog.is_empty() {
            // Keep order: nothing overtakes the backlog.
            self.push_backlog(dest, buf, seg);
            return;
        }
        match self.try_send(dest, &buf, seg) {
            Ok(()) => self.count_sent(buf.len(), seg),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.push_backlog(dest, buf, seg),
            Err(e) => self.send_failed(&e, dest),
        }
    }

    fn try_send(&self, dest: SocketAddr, buf: &[u8], seg: Option<usize>) -> io::Result<()> {
        match &self.state {
            Some(state) => state.try_send(
                UdpSockRef::from(&self.socket),
                &Transmit {
                    destination: dest,
                    ecn: None,
                    contents: buf,
                    segment_size: seg,
                    src_ip: None,
                },
            ),
            None => self.socket.send_to(buf, dest).map(|_| ()),
        }
    }

    fn push_backlog(&mut self, dest: SocketAddr, buf: Vec<u8>, seg: Option<usize>) {
        if self.backlog.len() >= MAX_BACKLOG {
            self.stats.backlog_drops += seg.map_or(1, |s| buf.len().div_ceil(s)) as u64;
            return;
        }
        self.backlog.push_back((dest, buf, seg));
    }

    fn count_sent(&mut self, bytes: usize, seg: Option<usize>) {
        self.stats.send_calls += 1;
        match seg {
            Some(s) => {
                self.stats.gso_sends += 1;
                self.stats.datagrams_out += bytes.div_ceil(s) as u64;
            }
            None => self.stats.datagrams_out += 1,
        }
    }

    fn send_failed(&mut self, e: &io::Error, dest: SocketAddr) {
        // UDP send errors (ICMP-induced ECONNREFUSED, EHOSTUNREACH, EMSGSIZE…) are never fatal.
        self.stats.send_errors += 1;
        tracing::debug!(%dest, error = %e, "udp send failed");
        if let Some(state) = &self.state {
            // quinn-udp disables GSO on this socket after EIO/EINVAL; follow it.
            self.max_segments = state.max_gso_segments().max(1);
        }
    }
}

/// Split a (possibly GRO-coalesced) buffer into datagrams at `stride`. Returns how many.
pub fn split_gro(buf: &[u8], stride: usize, mut f: impl FnMut(&[u8])) -> usize {
    if buf.is_empty() {
        return 0;
    }
    if stride == 0 || stride >= buf.len() {
        f(buf);
        return 1;
    }
    let mut n = 0;
    for d in buf.chunks(stride) {
        f(d);
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn split_gro_by_stride() {
        let buf: Vec<u8> = (0..25).collect();
        let mut parts = Vec::new();
        assert_eq!(split_gro(&buf, 10, |d| parts.push(d.to_vec())), 3);
        assert_eq!(
            parts,
            vec![
                (0..10).collect::<Vec<u8>>(),
                (10..20).collect(),
                (20..25).collect()
            ]
        );
        let mut parts = Vec::new();
        assert_eq!(split_gro(&buf, 25, |d| parts.push(d.len())), 1);
        assert_eq!(split_gro(&buf, 0, |d| parts.push(d.len())), 1);
        assert_eq!(split_gro(&[], 10, |d| parts.push(d.len())), 0);
        assert_eq!(parts, vec![25, 25]);
    }

    /// Receive until `want` datagrams arrived (bounded by time).
    fn recv_all(rx: &mut UdpShell, want: usize) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.len() < want && Instant::now() < deadline {
            if rx.recv(|_, d| got.push(d.to_vec())).expect("recv") == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        got
    }

    fn pair(batching_tx: bool, batching_rx: bool) -> (UdpShell, UdpShell, SocketAddr) {
        let lo: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let tx = UdpShell::bind(lo, batching_tx, 1 << 20).expect("bind tx");
        let rx = UdpShell::bind(lo, batching_rx, 1 << 20).expect("bind rx");
        let to = rx.local_addr().expect("addr");
        (tx, rx, to)
    }

    #[test]
    fn gso_batch_arrives_as_individual_datagrams_at_a_plain_receiver() {
        let (mut tx, mut rx, to) = pair(true, false);
        if tx.max_segments() <= 1 {
            eprintln!("kernel without UDP GSO: batching falls back to one datagram per send");
        }
        let sent: Vec<Vec<u8>> = (0..10u8)
            .map(|i| vec![i; 1200])
            .chain([vec![99u8; 300]])
            .collect();
        for d in &sent {
            tx.send(to, d.clone());
        }
        tx.flush();
        let got = recv_all(&mut rx, sent.len());
        assert_eq!(got, sent, "11 datagrams, in order, intact");
        if tx.max_segments() > 1 {
            assert_eq!(tx.stats.send_calls, 1, "one GSO sendmsg for the run");
            assert_eq!(tx.stats.gso_sends, 1);
        }
        assert_eq!(tx.stats.datagrams_out, 11);
        assert_eq!(rx.stats.datagrams_in, 11);
    }

    #[test]
    fn gro_receiver_splits_coalesced_buffers() {
        let (mut tx, mut rx, to) = pair(true, true);
        let sent: Vec<Vec<u8>> = (0..20u8)
            .map(|i| vec![i; 1000])
            .chain([vec![7u8; 10]])
            .collect();
        for d in &sent {
            tx.send(to, d.clone());
        }
        tx.flush();
        let got = recv_all(&mut rx, sent.len());
        assert_eq!(got, sent);
        if tx.max_segments() > 1 {
            // On loopback the GSO super-packet is delivered as one GRO buffer: far fewer receive
            // calls than datagrams.
            assert!(
                rx.stats.recv_calls < 21,
                "{} recv calls",
                rx.stats.recv_calls
            );
        }
    }

    #[test]
    fn runs_break_on_destination_size_change_and_short_tail() {
        let (mut tx, mut rx, to) = pair(true, false);
        let (_, mut rx2, to2) = pair(false, false);
        // [1200,1200,500 | 1200 | (to2) 1200,1200 | 1300]: a short datagram ends a run, a larger
        // one cannot join it, a new destination flushes it.
        let plan: Vec<(SocketAddr, usize)> = vec![
            (to, 1200),
            (to, 1200),
            (to, 500),
            (to, 1200),
            (to2, 1200),
            (to2, 1200),
            (to, 1300),
        ];
        for (i, (dest, len)) in plan.iter().enumerate() {
            tx.send(*dest, vec![i as u8; *len]);
        }
        tx.flush();
        let a = recv_all(&mut rx, 5);
        let b = recv_all(&mut rx2, 2);
        assert_eq!(
            a.iter().map(|d| (d[0], d.len())).collect::<Vec<_>>(),
            [(0, 1200), (1, 1200), (2, 500), (3, 1200), (6, 1300)]
        );
        assert_eq!(
            b.iter().map(|d| (d[0], d.len())).collect::<Vec<_>>(),
            [(4, 1200), (5, 1200)]
        );
        if tx.max_segments() > 1 {
            assert_eq!(tx.stats.send_calls, 4, "runs: [0,1,2] [3] [4,5] [6]");
        }
    }

    #[test]
    fn a_run_longer_than_the_segment_limit_is_split_not_lost() {
        let (mut tx, mut rx, to) = pair(true, false);
        let sent: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; 500]).collect();
        for d in &sent {
            tx.send(to, d.clone());
        }
        tx.flush();
        assert_eq!(recv_all(&mut rx, sent.len()), sent);
        if tx.max_segments() >= 64 {
            assert_eq!(tx.stats.send_calls, 2, "64 + 36 segments");
        }
    }

    #[test]
    fn batching_off_sends_one_datagram_per_call() {
        let (mut tx, mut rx, to) = pair(false, false);
        assert!(!tx.batching());
        for i in 0..5u8 {
            tx.send(to, vec![i; 100]);
        }
        tx.flush();
        assert_eq!(recv_all(&mut rx, 5).len(), 5);
        assert_eq!(tx.stats.send_calls, 5);
        assert_eq!(tx.stats.gso_sends, 0);
    }

    #[test]
    fn send_errors_are_counted_not_fatal() {
        let (mut tx, _rx, _) = pair(true, false);
        // An IPv6 destination from an IPv4 socket fails immediately.
        tx.send("[::1]:9".parse().expect("addr"), vec![1; 10]);
        tx.flush();
        assert_eq!(tx.stats.send_errors, 1);
    }
}
