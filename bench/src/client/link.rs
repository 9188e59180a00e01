//! The media side of a synthetic participant over a real socket: a UDP socket (kernel receive
//! timestamps and GRO on, see [`crate::net`]) or an ICE-TCP connection (RFC 6544 active side,
//! RFC 4571 framing), and the pacing of what it publishes.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::Media;
use crate::peer::Peer;

/// Receive and send buffer of a media socket: a ramped-up keyframe to one subscriber can be
/// hundreds of datagrams that arrive (or leave) while the generator's thread serves other peers.
const SOCKET_BUFFER: usize = 4 << 20;
/// Framed output held while an ICE-TCP connection would block; beyond it datagrams are dropped.
const TCP_BACKLOG: usize = 4 << 20;
/// RFC 6544: an active TCP candidate advertises the discard port (its real port is the
/// connection's, unknown until it connects).
const ACTIVE_PORT: u16 = 9;

/// A load run's offered-load multiplier in percent (100 = the scenario as written).
pub type RateScale = std::sync::Arc<std::sync::atomic::AtomicU32>;

/// An ICE-TCP connection to the SFU's passive candidate.
struct TcpLink {
    /// The connection, once the answer named the SFU's TCP candidate.
    stream: Option<TcpStream>,
    server: Option<SocketAddr>,
    /// The candidate address the peer advertises (`ip:9`).
    candidate: SocketAddr,
    /// A partial frame read so far.
    partial: Vec<u8>,
    /// Framed output not yet written.
    out: Vec<u8>,
    dropped: u64,
}

enum Socket {
    Udp(UdpSocket),
    Tcp(TcpLink),
}

/// The media side of a synthetic participant. Shared by [`super::Client`] and
/// [`crate::janus::JanusClient`]; the [`Peer`] stays with its owner (a resume replaces both).
pub(crate) struct MediaLink {
    socket: Socket,
    pub(crate) media: Option<Media>,
    next_audio: Instant,
    next_video: Instant,
    next_keyframe: Instant,
    /// Offered-load multiplier in percent, shared by a load run's clients (`bench load --ramp`):
    /// video frames carry this many times their packets, audio ticks this many packets.
    scale: Option<RateScale>,
    /// Audio packets owed at the current scale (percent units).
    audio_credit: u32,
}

impl MediaLink {
    /// A non-blocking UDP socket on `ip` (any port); media starts when the peer connects.
    pub(crate) fn bind(ip: IpAddr, media: Option<Media>, now: Instant) -> io::Result<Self> {
        let udp = UdpSocket::bind(SocketAddr::new(ip, 0))?;
        udp.set_nonblocking(true)?;
        crate::net::enable_rx_timestamps(&udp)?;
        crate::net::enable_gro(&udp)?;
        crate::net::grow_receive_buffer(&udp, SOCKET_BUFFER);
        crate::net::grow_send_buffer(&udp, SOCKET_BUFFER);
        Ok(Self::with_socket(Socket::Udp(udp), media, now))
    }

    /// ICE over TCP from `ip`: the connection is made by [`MediaLink::connect`] once the answer
    /// names the SFU's passive TCP candidate.
    pub(crate) fn tcp(ip: IpAddr, media: Option<Media>, now: Instant) -> Self {
        let link = TcpLink {
            stream: None,
            server: None,
            candidate: SocketAddr::new(ip, ACTIVE_PORT),
            partial: Vec::new(),
            out: Vec::new(),
            dropped: 0,
        };
        Self::with_socket(Socket::Tcp(link), media, now)
    }

    fn with_socket(socket: Socket, media: Option<Media>, now: Instant) -> Self {
        Self {
            socket,
            media,
            next_audio: now,
            next_video: now,
            next_keyframe: now
                + media
                    .and_then(|m| m.keyframe_interval)
                    .unwrap_or(Duration::from_secs(3600)),
            scale: None,
            audio_credit: 0,
        }
    }

    /// A peer for this link: a UDP host candidate, or an active TCP one.
    pub(crate) fn new_peer(&self, id: &str, now: Instant, epoch: Instant) -> io::Result<Peer> {
        Ok(match &self.socket {
            Socket::Udp(u) => Peer::new(id, u.local_addr()?, now, epoch),
            Socket::Tcp(t) => Peer::new_tcp(id, t.candidate, now, epoch),
        })
    }

    /// With ICE-TCP: connect to the passive TCP candidate of `answer` (blocking up to
    /// `timeout`), then go non-blocking. Nothing to do over UDP.
    pub(crate) fn connect(&mut self, answer: &str, timeout: Duration) -> anyhow::Result<()> {
        let Socket::Tcp(t) = &mut self.socket else {
            return Ok(());
        };
        let server = passive_tcp_candidate(answer).context("the answer has no TCP candidate")?;
        let stream = TcpStream::connect_timeout(&server, timeout)
            .with_context(|| format!("connecting to the ICE-TCP candidate {server}"))?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        t.stream = Some(stream);
        t.server = Some(server);
        Ok(())
    }

    pub(crate) fn set_scale(&mut self, scale: RateScale) {
        self.scale = Some(scale);
    }

    fn scale_percent(&self) -> u32 {
        self.scale
            .as_ref()
            .map_or(100, |s| s.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// The socket's file descriptor (for readiness polling), once there is one.
    pub(crate) fn fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        match &self.socket {
            Socket::Udp(u) => u.as_raw_fd(),
            Socket::Tcp(t) => t.stream.as_ref().map_or(-1, |s| s.as_raw_fd()),
        }
    }

    /// Datagrams dropped because the ICE-TCP connection's backlog was full (0 over UDP).
    pub(crate) fn dropped(&self) -> u64 {
        match &self.socket {
            Socket::Udp(_) => 0,
            Socket::Tcp(t) => t.dropped,
        }
    }

    /// When `peer` next needs [`MediaLink::poll`] without a socket event (its timers, media ticks).
    pub(crate) fn next_deadline(&self, peer: &Peer) -> Instant {
        let mut t = peer.poll_timeout();
        if let Some(m) = self.media
            && peer.is_connected()
        {
            if m.audio {
                t = t.min(self.next_audio);
            }
            if m.video {
                t = t.min(self.next_video);
            }
        }
        t
    }

    /// Received datagrams, `peer`'s timers, the media that is due, then everything to send.
    pub(crate) fn poll(&mut self, peer: &mut Peer, now: Instant) {
        // The caller's `now` may be stale when it serves many clients: read the clock here so
        // latency stamps and arrival times are exact (str0m only needs it to be monotonic).
        let now = now.max(Instant::now());
        match &mut self.socket {
            Socket::Udp(udp) => RECV_BATCH.with_borrow_mut(|batch| {
                // One `recvmmsg` per wake-up: fewer buffers than the batch holds means drained.
                while let Ok(n) = batch.recv(udp) {
                    for (from, arrived, d) in batch.datagrams() {
                        peer.handle_receive_at(now, arrived.unwrap_or(now), from, d);
                    }
                    if n < batch.capacity() {
                        break;
                    }
                }
            }),
            Socket::Tcp(t) => t.receive(peer, now),
        }
        let now = now.max(Instant::now());
        if now >= peer.poll_timeout() {
            peer.handle_timeout(now);
        }
        if let Some(m) = self.media
            && peer.is_connected()
        {
            if m.audio && now >= self.next_audio {
                self.next_audio += Duration::from_millis(20);
                if self.next_audio < now {
                    self.next_audio = now + Duration::from_millis(20);
                }
                self.audio_credit += self.scale_percent();
                while self.audio_credit >= 100 {
                    self.audio_credit -= 100;
                    peer.send_audio(now, m.audio_size);
                }
            }
            if m.video && now >= self.next_video {
                let frame = Duration::from_micros(1_000_000 / u64::from(m.fps.max(1)));
                self.next_video += frame;
                if self.next_video < now {
                    self.next_video = now + frame;
                }
                // Keyframes (periodic, or requested by PLI) are several times larger than delta
                // frames, as with real encoders.
                let forced = m.keyframe_interval.is_some() && now >= self.next_keyframe;
                if let (true, Some(i)) = (forced, m.keyframe_interval) {
                    self.next_keyframe = now + i;
                }
                let packets = if forced || peer.wants_keyframe() {
                    m.packets_per_frame * m.keyframe_factor.max(1)
                } else {
                    m.packets_per_frame
                };
                let packets = (packets * self.scale_percent() as usize)
                    .div_ceil(100)
                    .max(1);
                peer.send_video_frame(now, forced, packets, m.packet_size, m.fps);
            }
        }
        self.flush(peer);
    }

    /// Send everything `peer` has queued: over UDP, consecutive datagrams to one destination
    /// with GSO (a video frame is one system call, as the SFU sends it); over TCP, framed into
    /// one write.
    pub(crate) fn flush(&mut self, peer: &mut Peer) {
        match &mut self.socket {
            Socket::Udp(udp) => {
                let mut queued: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
                while let Some(t) = peer.poll_transmit() {
                    queued.push(t);
                }
                for run in queued.chunk_by(|a, b| a.0 == b.0) {
                    let segments: Vec<&[u8]> = run.iter().map(|(_, d)| d.as_slice()).collect();
                    let _ = crate::net::send_segments(udp, run[0].0, &segments);
                }
            }
            Socket::Tcp(t) => {
                while let Some((_, d)) = peer.poll_transmit() {
                    t.queue(&d);
                }
                t.write_out();
            }
        }
    }
}

impl TcpLink {
    /// Read what arrived, deliver whole frames.
    fn receive(&mut self, peer: &mut Peer, now: Instant) {
        let (Some(stream), Some(server)) = (&mut self.stream, self.server) else {
            return;
        };
        let mut buf = [0u8; 64 * 1024];
        loop {
            let n = match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            self.partial.extend_from_slice(&buf[..n]);
            let mut at = 0;
            while self.partial.len() - at >= 2 {
                let len = usize::from(u16::from_be_bytes([self.partial[at], self.partial[at + 1]]));
                if self.partial.len() - at < 2 + len {
                    break;
                }
                peer.handle_receive_at(now, now, server, &self.partial[at + 2..at + 2 + len]);
                at += 2 + len;
            }
            self.partial.drain(..at);
        }
        // Anything written while handling input (answers to checks, RTCP) goes out now.
        self.write_out();
    }

    fn queue(&mut self, d: &[u8]) {
        let Ok(len) = u16::try_from(d.len()) else {
            self.dropped += 1;
            return;
        };
        if self.out.len() + 2 + d.len() > TCP_BACKLOG {
            self.dropped += 1;
            return;
        }
        self.out.extend_from_slice(&len.to_be_bytes());
        self.out.extend_from_slice(d);
    }

    fn write_out(&mut self) {
        let Some(stream) = &mut self.stream else {
            return;
        };
        let mut done = 0;
        while done < self.out.len() {
            match stream.write(&self.out[done..]) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.out.drain(..done);
    }
}

/// The address of the passive TCP candidate in an SDP answer.
fn passive_tcp_candidate(sdp: &str) -> Option<SocketAddr> {
    sdp.lines()
        .filter_map(|l| l.strip_prefix("a=candidate:"))
        .find(|c| c.contains(" tcp ") && c.contains("tcptype passive"))
        .and_then(|c| {
            let f: Vec<&str> = c.split_whitespace().collect();
            let ip: IpAddr = f.get(4)?.parse().ok()?;
            let port: u16 = f.get(5)?.parse().ok()?;
            Some(SocketAddr::new(ip, port))
        })
}

thread_local! {
    /// Receive buffers shared by the clients a thread serves (one batch per thread, not per
    /// client: a GRO buffer is 64 KiB).
    static RECV_BATCH: std::cell::RefCell<crate::net::RecvBatch> =
        std::cell::RefCell::new(crate::net::RecvBatch::new(16));
}
