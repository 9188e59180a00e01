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

mod framing;
#[cfg(test)]
mod tests;

use framing::feed;

/// The listener's poll token; connection `k` is `Token(CONN_BASE + k)`.
pub const LISTENER: Token = Token(2);
const CONN_BASE: usize = 16;
/// Connections accepted per loop turn before other work gets a look in.
const ACCEPT_BUDGET: usize = 256;
/// Bytes read from one connection per loop turn.
const READ_BUDGET: usize = 256 * 1024;
/// RFC 4571 frame header.
const HEADER: usize = 2;

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
            max_per_ip: 256,
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
    /// complete datagram with its peer address; while the connection is not yet bound to a
    /// participant it is asked (third argument `true`) to return whether that peer is bound now
    /// (its ICE check accepted) — a bound connection's datagrams cost no such lookup.
    pub fn process(
        &mut self,
        registry: &Registry,
        now: Instant,
        deliver: &mut impl FnMut(SocketAddr, &[u8], bool) -> bool,
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
        deliver: &mut impl FnMut(SocketAddr, &[u8], bool) -> bool,
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
