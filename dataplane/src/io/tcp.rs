//! Passive ICE-TCP (RFC 6544) for one worker: a TCP listener next to the worker's UDP socket,
//! its accepted connections, and RFC 4571 framing (each datagram behind a 16-bit big-endian
//! length). Deframed datagrams go to the same core as UDP ones, tagged
//! [`sfu_core::Transport::Tcp`]; the core's TCP transmits come back here and are framed onto the
//! connection whose peer address they name.
//!
//! Nothing here blocks the worker loop: the listener and every connection are non-blocking and
//! edge-triggered in the worker's mio poll, reads and accepts run on a budget per loop turn (what
//! is left is picked up on the next turn), and writes go through a bounded per-connection buffer.
//! A slow reader never stalls anyone: once its buffer is full, whole datagrams to it are dropped
//! (media recovers through NACK, keyframe requests and the bandwidth estimate; DTLS and SCTP
//! retransmit), and the kernel's send buffer is capped too so the queue stays short.
//!
//! Hostile clients are bounded: connections per worker and per source IP are limited (beyond the
//! per-IP limit a connection is accepted and closed at once, so the kernel backlog never fills; at
//! the per-worker limit the oldest connection not yet bound to a participant makes room, so a
//! flood of idle connections from many addresses cannot lock real clients out), the first
//! frame must be STUN, a connection not bound to a participant (its ICE check accepted by the
//! core) within the handshake timeout or after a few frames is closed, and any connection idle
//! for the idle timeout is closed. A connection holds at most one partial frame (≤ 64 KiB).

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use slab::Slab;
use socket2::{Domain, Protocol, Socket, Type};
use tracing::debug;

/// The listener's poll token; connection `k` is `Token(CONN_BASE + k)`.
pub const LISTENER: Token = Token(2);
const CONN_BASE: usize = 16;
/// Connections accepted per loop turn before other work gets a look in.
const ACCEPT_BUDGET: usize = 256;
/// Bytes read from one connection per loop turn.
const READ_BUDGET: usize = 256 * 1024;
/// Frames an unbound connection may send (ICE checks and their retransmissions) before it is
/// dropped as not speaking ICE.
const MAX_UNBOUND_FRAMES: u32 = 32;
/// RFC 4571 frame header.
const HEADER: usize = 2;
/// Largest frame an unbound connection may send: an ICE check is a STUN message of a few hundred
/// bytes at most.
const MAX_UNBOUND_FRAME: usize = 1500;

/// Limits of one worker's ICE-TCP listener.
#[derive(Debug, Clone)]
pub struct TcpLimits {
    /// Open connections per worker; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Open connections from one source IP (clients behind one NAT share an IP).
    pub max_per_ip: usize,
    /// A connection whose ICE check no participant accepted within this time is closed.
    pub handshake_timeout: Duration,
    /// A connection that received nothing for this long is closed.
    pub idle_timeout: Duration,
    /// Bytes queued toward one connection (framed); beyond it datagrams to it are dropped. The
    /// kernel's send buffer of the socket is capped at the same size.
    pub write_buffer: usize,
}

impl Default for TcpLimits {
    fn default() -> Self {
        Self {
            max_connections: 2048,
            max_per_ip: 64,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            write_buffer: 256 * 1024,
        }
    }
}

/// Counters of the ICE-TCP layer.
#[derive(Debug, Default, Clone)]
pub struct TcpStats {
    pub accepted: u64,
    /// Connections closed at accept: over the per-IP limit, or the per-worker limit with every
    /// connection bound.
    pub refused: u64,
    /// Unbound connections closed to make room for a new one at the per-worker limit.
    pub evicted: u64,
    /// Connections closed for not speaking ICE: a first frame that is not STUN, or too many
    /// frames without an accepted check.
    pub garbage: u64,
    /// Connections closed by the handshake or idle timeout.
    pub timeouts: u64,
    /// Connections closed by the peer or by an I/O error.
    pub closed: u64,
    pub frames_in: u64,
    pub frames_out: u64,
    /// Datagrams dropped because the connection's write buffer was full (a slow reader).
    pub send_drops: u64,
    /// Datagrams for a peer with no open connection (it went away).
    pub send_no_connection: u64,
    /// `read` and `write` system calls on connections.
    pub recv_calls: u64,
    pub send_calls: u64,
}

struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    opened: Instant,
    last_rx: Instant,
    /// A partial frame (header included), at most `HEADER + u16::MAX` bytes.
    partial: Vec<u8>,
    /// Framed output not yet written, from `wpos`.
    out: Vec<u8>,
    wpos: usize,
    /// WRITABLE interest registered (output pending).
    writable: bool,
    /// A participant's ICE agent accepted a check from this connection.
    bound: bool,
    frames: u32,
    /// Accept order, to tell a reused slab key from the connection it named.
    serial: u64,
}

/// Why a connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    Peer,
    Garbage,
    Timeout,
    Evicted,
}

/// One worker's ICE-TCP listener and connections. See the module docs.
pub struct TcpShell {
    listener: TcpListener,
    conns: Slab<Conn>,
    by_peer: HashMap<SocketAddr, usize>,
    per_ip: HashMap<IpAddr, usize>,
    limits: TcpLimits,
    scratch: Box<[u8]>,
    /// Connections with framed output to write at the next [`TcpShell::flush`].
    dirty: Vec<usize>,
    /// Connections that may have unread input (their read budget ran out).
    ready: VecDeque<usize>,
    accept_pending: bool,
    /// Connections in accept order (key, serial), oldest first, for eviction at the limit;
    /// entries of closed or bound connections are skipped lazily.
    unbound: VecDeque<(usize, u64)>,
    serial: u64,
    pub stats: TcpStats,
}

impl TcpShell {
    /// Listen on `addr` (non-blocking, `SO_REUSEADDR` so a restarted worker can bind again while
    /// old connections linger in TIME_WAIT).
    pub fn bind(addr: SocketAddr, limits: TcpLimits) -> io::Result<Self> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        Ok(Self {
            listener: TcpListener::from_std(socket.into()),
            conns: Slab::new(),
            by_peer: HashMap::new(),
            per_ip: HashMap::new(),
            limits,
            scratch: vec![0u8; 64 * 1024].into_boxed_slice(),
            dirty: Vec::new(),
            ready: VecDeque::new(),
            accept_pending: false,
            unbound: VecDeque::new(),
            serial: 0,
            stats: TcpStats::default(),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn register(&mut self, registry: &Registry) -> io::Result<()> {
        registry.register(&mut self.listener, LISTENER, Interest::READABLE)
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Whether `token` is the listener's or one of its connections'.
    pub fn owns(token: Token) -> bool {
        token == LISTENER || token.0 >= CONN_BASE
    }

    /// A poll event for one of this shell's tokens.
    pub fn event(&mut self, registry: &Registry, token: Token, readable: bool, writable: bool) {
        if token == LISTENER {
            self.accept_pending = true;
            return;
        }
        let key = token.0 - CONN_BASE;
        if !self.conns.contains(key) {
            return;
        }
        if readable && !self.ready.contains(&key) {
            self.ready.push_back(key);
        }
        if writable {
            self.write_out(registry, key);
        }
    }

    /// Work left over from a budget: the loop should poll again without sleeping.
    pub fn has_pending(&self) -> bool {
        self.accept_pending || !self.ready.is_empty()
    }

    /// Accept new connections and read the ready ones, each on its budget. `deliver` gets every
    /// complete datagram with its peer address and returns whether that peer is now bound to a
    /// participant (its ICE check accepted).
    pub fn process(
        &mut self,
        registry: &Registry,
        now: Instant,
        deliver: &mut impl FnMut(SocketAddr, &[u8]) -> bool,
    ) {
        if self.accept_pending {
            self.accept(registry, now);
        }
        for _ in 0..self.ready.len() {
            let Some(key) = self.ready.pop_front() else {
                break;
            };
            match self.read(key, now, deliver) {
                Ok(true) => {}
                Ok(false) => self.ready.push_back(key),
                Err(why) => self.close(registry, key, why),
            }
        }
    }

    fn accept(&mut self, registry: &Registry, now: Instant) {
        for _ in 0..ACCEPT_BUDGET {
            let (mut stream, peer) = match self.listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.accept_pending = false;
                    return;
                }
                Err(e) => {
                    // e.g. EMFILE, or a connection reset before it was accepted: try again later.
                    debug!(error = %e, "ice-tcp accept failed");
                    self.accept_pending = false;
                    return;
                }
            };
            let ip = peer.ip();
            let from_ip = self.per_ip.get(&ip).copied().unwrap_or(0);
            if from_ip >= self.limits.max_per_ip
                || (self.conns.len() >= self.limits.max_connections && !self.evict_one(registry))
            {
                // Dropping the stream closes it.
                self.stats.refused += 1;
                continue;
            }
            let _ = stream.set_nodelay(true);
            // A short kernel queue: a slow reader's backlog stays in our bounded buffer, where
            // whole datagrams can be dropped, instead of seconds of auto-tuned socket buffer.
            let _ = socket2::SockRef::from(&stream).set_send_buffer_size(self.limits.write_buffer);
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            if registry
                .register(&mut stream, Token(CONN_BASE + key), Interest::READABLE)
                .is_err()
            {
                self.stats.refused += 1;
                continue;
            }
            entry.insert(Conn {
                stream,
                peer,
                opened: now,
                last_rx: now,
                partial: Vec::new(),
                out: Vec::new(),
                wpos: 0,
                writable: false,
                bound: false,
                frames: 0,
                serial: self.serial,
            });
            self.unbound.push_back((key, self.serial));
            self.serial += 1;
            // A stale entry for the same peer address (a reused port) is replaced.
            self.by_peer.insert(peer, key);
            *self.per_ip.entry(ip).or_insert(0) += 1;
            self.stats.accepted += 1;
            // Data may already be waiting (edge-triggered: no event would come for it).
            self.ready.push_back(key);
        }
    }

    /// Close the oldest connection not bound to a participant, to make room. `false` if every
    /// connection is bound.
    fn evict_one(&mut self, registry: &Registry) -> bool {
        while let Some((key, serial)) = self.unbound.pop_front() {
            if self
                .conns
                .get(key)
                .is_some_and(|c| c.serial == serial && !c.bound)
            {
                self.close(registry, key, Close::Evicted);
                return true;
            }
        }
        false
    }

    /// Read one connection on its budget: `Ok(true)` drained, `Ok(false)` budget spent with
    /// data possibly left, `Err` to close it.
    fn read(
        &mut self,
        key: usize,
        now: Instant,
        deliver: &mut impl FnMut(SocketAddr, &[u8]) -> bool,
    ) -> Result<bool, Close> {
        let Some(conn) = self.conns.get_mut(key) else {
            return Ok(true);
        };
        let mut budget = READ_BUDGET;
        while budget > 0 {
            self.stats.recv_calls += 1;
            let n = match conn.stream.read(&mut self.scratch) {
                Ok(0) => return Err(Close::Peer),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Err(Close::Peer),
            };
            budget = budget.saturating_sub(n);
            conn.last_rx = now;
            feed(conn, &self.scratch[..n], &mut self.stats, deliver)?;
        }
        Ok(false)
    }

    /// Queue one datagram toward the connection from `peer` (framed). Dropped, and counted, if
    /// there is no such connection or its buffer is full.
    pub fn send(&mut self, peer: SocketAddr, data: &[u8]) {
        let Some(&key) = self.by_peer.get(&peer) else {
            self.stats.send_no_connection += 1;
            return;
        };
        let Some(conn) = self.conns.get_mut(key) else {
            self.stats.send_no_connection += 1;
            return;
        };
        let Ok(len) = u16::try_from(data.len()) else {
            self.stats.send_drops += 1;
            return;
        };
        let queued = conn.out.len() - conn.wpos;
        if queued + HEADER + data.len() > self.limits.write_buffer {
            self.stats.send_drops += 1;
            return;
        }
        if conn.wpos > 0 && conn.wpos * 2 >= conn.out.len() {
            conn.out.drain(..conn.wpos);
            conn.wpos = 0;
        }
        if queued == 0 && !conn.writable {
            self.dirty.push(key);
        }
        conn.out.extend_from_slice(&len.to_be_bytes());
        conn.out.extend_from_slice(data);
        self.stats.frames_out += 1;
    }

    /// Write what [`TcpShell::send`] queued since the last flush.
    pub fn flush(&mut self, registry: &Registry) {
        while let Some(key) = self.dirty.pop() {
            self.write_out(registry, key);
        }
    }

    /// Write a connection's queued output until it is empty or the socket would block (then wait
    /// for WRITABLE).
    fn write_out(&mut self, registry: &Registry, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        while conn.wpos < conn.out.len() {
            self.stats.send_calls += 1;
            match conn.stream.write(&conn.out[conn.wpos..]) {
                Ok(0) => return self.close(registry, key, Close::Peer),
                Ok(n) => conn.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !conn.writable {
                        let token = Token(CONN_BASE + key);
                        let interest = Interest::READABLE | Interest::WRITABLE;
                        if registry
                            .reregister(&mut conn.stream, token, interest)
                            .is_err()
                        {
                            return self.close(registry, key, Close::Peer);
                        }
                        conn.writable = true;
                    }
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.close(registry, key, Close::Peer),
            }
        }
        conn.out.clear();
        conn.wpos = 0;
        if conn.writable {
            let token = Token(CONN_BASE + key);
            if registry
                .reregister(&mut conn.stream, token, Interest::READABLE)
                .is_err()
            {
                return self.close(registry, key, Close::Peer);
            }
            conn.writable = false;
        }
    }

    /// Close connections past their handshake or idle timeout. Called every loop turn; cheap.
    pub fn sweep(&mut self, registry: &Registry, now: Instant) {
        let expired: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                (!c.bound
                    && now.saturating_duration_since(c.opened) > self.limits.handshake_timeout)
                    || now.saturating_duration_since(c.last_rx) > self.limits.idle_timeout
            })
            .map(|(k, _)| k)
            .collect();
        for key in expired {
            self.close(registry, key, Close::Timeout);
        }
    }

    fn close(&mut self, registry: &Registry, key: usize, why: Close) {
        let Some(mut conn) = self.conns.try_remove(key) else {
            return;
        };
        let _ = registry.deregister(&mut conn.stream);
        if self.by_peer.get(&conn.peer) == Some(&key) {
            self.by_peer.remove(&conn.peer);
        }
        let ip = conn.peer.ip();
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
        self.ready.retain(|k| *k != key);
        self.dirty.retain(|k| *k != key);
        match why {
            Close::Peer => self.stats.closed += 1,
            Close::Garbage => self.stats.garbage += 1,
            Close::Timeout => self.stats.timeouts += 1,
            Close::Evicted => self.stats.evicted += 1,
        }
        // Forget stale eviction entries now and then (bound or closed connections).
        if self.unbound.len() > 2 * self.conns.len() + 64 {
            let conns = &self.conns;
            self.unbound
                .retain(|(k, s)| conns.get(*k).is_some_and(|c| c.serial == *s && !c.bound));
        }
        debug!(peer = %conn.peer, ?why, bound = conn.bound, "ice-tcp connection closed");
    }
}

/// Deframe `data` (appended to the connection's partial frame) and deliver every complete
/// datagram. `Err(Garbage)` if the connection does not speak ICE.
fn feed(
    conn: &mut Conn,
    mut data: &[u8],
    stats: &mut TcpStats,
    deliver: &mut impl FnMut(SocketAddr, &[u8]) -> bool,
) -> Result<(), Close> {
    // Complete a partial frame first (copying only the bytes it still needs).
    if !conn.partial.is_empty() {
        if conn.partial.len() < HEADER {
            let take = (HEADER - conn.partial.len()).min(data.len());
            conn.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if conn.partial.len() < HEADER {
                return Ok(());
            }
        }
        let want = HEADER + usize::from(u16::from_be_bytes([conn.partial[0], conn.partial[1]]));
        let take = want.saturating_sub(conn.partial.len()).min(data.len());
        conn.partial.extend_from_slice(&data[..take]);
        data = &data[take..];
        screen(conn, &conn.partial)?;
        if conn.partial.len() < want {
            return Ok(());
        }
        let frame = std::mem::take(&mut conn.partial);
        on_frame(conn, &frame[HEADER..], stats, deliver)?;
        // Keep the allocation for the next partial frame.
        conn.partial = frame;
        conn.partial.clear();
    }
    // Whole frames straight from the read buffer.
    while data.len() >= HEADER {
        screen(conn, data)?;
        let len = usize::from(u16::from_be_bytes([data[0], data[1]]));
        if data.len() < HEADER + len {
            break;
        }
        on_frame(conn, &data[HEADER..HEADER + len], stats, deliver)?;
        data = &data[HEADER + len..];
    }
    screen(conn, data)?;
    conn.partial.extend_from_slice(data);
    Ok(())
}

/// Reject the start of a frame (`start`: its header and what has arrived of it) on a connection
/// not yet bound to a participant, as soon as it cannot be an ICE check: RFC 7983 STUN starts
/// with 0..=3, and a check is 20..=[`MAX_UNBOUND_FRAME`] bytes. So HTTP, TLS or random bytes are
/// refused on their first bytes, not after a 64 KiB "frame" arrives.
fn screen(conn: &Conn, start: &[u8]) -> Result<(), Close> {
    if conn.bound || start.is_empty() {
        return Ok(());
    }
    if start.len() >= HEADER {
        let len = usize::from(u16::from_be_bytes([start[0], start[1]]));
        if !(20..=MAX_UNBOUND_FRAME).contains(&len) {
            return Err(Close::Garbage);
        }
    }
    if start.len() > HEADER && start[HEADER] > 3 {
        return Err(Close::Garbage);
    }
    Ok(())
}

fn on_frame(
    conn: &mut Conn,
    frame: &[u8],
    stats: &mut TcpStats,
    deliver: &mut impl FnMut(SocketAddr, &[u8]) -> bool,
) -> Result<(), Close> {
    stats.frames_in += 1;
    if !conn.bound {
        conn.frames += 1;
        // RFC 7983: STUN starts with 0..=3. The first frame of an ICE-TCP connection is an ICE
        // check; anything else (HTTP, TLS, random bytes) is not ours.
        let stun = frame.len() >= 20 && frame[0] <= 3;
        if (conn.frames == 1 && !stun) || conn.frames > MAX_UNBOUND_FRAMES {
            return Err(Close::Garbage);
        }
    }
    if frame.is_empty() {
        return Ok(());
    }
    if deliver(conn.peer, frame) {
        conn.bound = true;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected pair: the shell's side (accepted) and a client stream.
    fn pair() -> (TcpShell, mio::Poll, std::net::TcpStream) {
        let mut shell = TcpShell::bind(
            "127.0.0.1:0".parse().expect("test setup"),
            TcpLimits::default(),
        )
        .expect("bind");
        let poll = mio::Poll::new().expect("poll");
        shell.register(poll.registry()).expect("register");
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
            shell.process(poll.registry(), Instant::now(), &mut |_, d| {
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
        let mut client = std::net::TcpStream::connect(shell.local_addr().expect("test setup"))
            .expect("test setup");
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
        let mut shell =
            TcpShell::bind("127.0.0.1:0".parse().expect("test setup"), limits).expect("bind");
        let poll = mio::Poll::new().expect("poll");
        shell.register(poll.registry()).expect("register");
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
        let mut shell =
            TcpShell::bind("127.0.0.1:0".parse().expect("test setup"), limits).expect("bind");
        let poll = mio::Poll::new().expect("poll");
        shell.register(poll.registry()).expect("register");
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
        let mut shell =
            TcpShell::bind("127.0.0.1:0".parse().expect("test setup"), limits).expect("bind");
        let poll = mio::Poll::new().expect("poll");
        shell.register(poll.registry()).expect("register");
        let mut client = std::net::TcpStream::connect(shell.local_addr().expect("test setup"))
            .expect("test setup");
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
}
