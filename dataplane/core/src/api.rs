//! The core's interface: its configuration, what the control thread and the I/O shell send in
//! ([`Command`], [`Input`]) and what comes out ([`Output`], [`Report`]), and its counters.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::config::{CryptoProvider, DtlsCert};
use str0m::net::Protocol;

use crate::messages::{Event, Op, ParticipantId, Reply, RoomId, Stats};

use super::RouteError;
#[cfg(doc)]
use super::WorkerCore;

/// Configuration of one worker core.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Worker number (for reports).
    pub worker: u32,
    /// The address advertised as this worker's ICE host candidate. Every received datagram must
    /// carry it as its destination (str0m drops STUN sent to any other local address).
    pub local_addr: SocketAddr,
    /// The address advertised as this worker's passive ICE-TCP host candidate (RFC 6544), if
    /// it listens on TCP. Datagrams received over TCP carry it as their destination.
    pub tcp_addr: Option<SocketAddr>,
    pub max_participants_per_room: usize,
    pub max_rooms: usize,
    /// A participant with no datagram for this long is removed (reason `timeout`). Also bounds the
    /// time from join to the first packet.
    pub ice_timeout: Duration,
    /// Minimum interval between keyframe requests sent to one publisher track.
    pub keyframe_interval: Duration,
    /// How often a [`Report::Stats`] snapshot is emitted.
    pub stats_interval: Duration,
    /// Maximum chat text, in UTF-8 bytes.
    pub max_chat_text: usize,
    /// Video packets kept per subscriber stream for NACK/RTX answers.
    pub rtx_buffer_video: usize,
    /// How often str0m computes per-stream statistics (NACK counts for metrics); `None` = never.
    pub rtc_stats_interval: Option<Duration>,
    /// Client SDP with more media sections (`m=` lines) than this is refused (`bad_request`)
    /// before it is parsed.
    pub max_media_per_offer: usize,
    /// Chat (and mute-state) messages per second one participant may send, sustained; bursts
    /// up to `chat_burst`. Beyond it messages are dropped with a `rate_limited` error.
    pub chat_rate: f64,
    pub chat_burst: f64,
    /// Public chat messages a room keeps for participants who join later (0 = none).
    pub chat_history: usize,
    /// Bound on the bytes of a room's chat history (texts, names, ids); the oldest go first.
    pub chat_history_bytes: usize,
    /// Send-side bandwidth estimation (TWCC) toward every participant, starting at this many
    /// bits per second; `None` turns it off (simulcast subscribers then get the best layer).
    pub bwe_initial: Option<u64>,
    /// A subscriber's simulcast layer goes up only after the higher layer has fitted its
    /// estimate for this long (down is immediate).
    pub layer_up_hold: Duration,
    /// Tell publishers to stop encoding simulcast layers no subscriber needs (`dynacast.rs`).
    pub dynacast: bool,
}

impl CoreConfig {
    pub fn new(worker: u32, local_addr: SocketAddr) -> Self {
        Self {
            worker,
            local_addr,
            tcp_addr: None,
            max_participants_per_room: 50,
            max_rooms: 10_000,
            ice_timeout: Duration::from_secs(10),
            keyframe_interval: Duration::from_millis(500),
            stats_interval: Duration::from_secs(1),
            max_chat_text: 4096,
            rtx_buffer_video: 512,
            rtc_stats_interval: Some(Duration::from_secs(5)),
            max_media_per_offer: 1024,
            chat_rate: 5.0,
            chat_burst: 20.0,
            chat_history: 50,
            chat_history_bytes: 64 * 1024,
            bwe_initial: Some(1_000_000),
            layer_up_hold: Duration::from_millis(1500),
            dynacast: true,
        }
    }
}

/// The DTLS certificate and crypto provider every `Rtc` of the process shares. Built by the shell
/// (`dataplane::crypto`, which caches the DTLS configuration in process-global state); the core
/// only hands it to str0m.
#[derive(Clone)]
pub struct SharedCrypto {
    pub cert: DtlsCert,
    pub provider: Arc<CryptoProvider>,
}

impl fmt::Debug for SharedCrypto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedCrypto").finish_non_exhaustive()
    }
}

/// Maps the monotonic clock the core is driven with onto Unix time (for chat timestamps), so the
/// core never reads the wall clock itself.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    pub instant: Instant,
    pub unix_ms: u64,
}

impl WallClock {
    pub(super) fn unix_ms(&self, now: Instant) -> u64 {
        let delta = now.saturating_duration_since(self.instant).as_millis() as u64;
        self.unix_ms + delta
    }
}

/// A command from the control thread: an operation and an opaque `tag` that comes back in the
/// matching [`Report::Reply`].
#[derive(Debug, Clone)]
pub struct Command {
    pub tag: u64,
    pub op: Op,
}

/// What the core tells the control thread.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    /// The answer to the [`Command`] with this `tag`.
    Reply { tag: u64, reply: Reply },
    /// An event for one participant, to route to its signaling connection.
    Event(Event),
    /// A participant no longer exists on this worker (after any reason).
    ParticipantClosed { participant: ParticipantId },
    /// A room became empty and was removed from this worker.
    RoomClosed { room: RoomId },
    /// Periodic statistics snapshot.
    /// Boxed: a report is rare, and every [`Output`] (datagrams on the hot path) is as large as
    /// its largest variant.
    Stats(Box<Stats>),
}

/// The transport a datagram came over or goes out on. The core treats both alike; the shell
/// frames TCP (RFC 4571) and maps a TCP peer address to its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    /// ICE-TCP (RFC 6544): one datagram per RFC 4571 frame on a connection to the worker's
    /// listener.
    Tcp,
}

impl Transport {
    pub(crate) fn protocol(self) -> Protocol {
        match self {
            Transport::Udp => Protocol::Udp,
            Transport::Tcp => Protocol::Tcp,
        }
    }

    /// The transport of a str0m protocol (TLS variants never occur: the core has no such
    /// candidates).
    pub(crate) fn of(p: Protocol) -> Self {
        match p {
            Protocol::Udp => Transport::Udp,
            _ => Transport::Tcp,
        }
    }
}

/// A remote transport address: the transport and the peer's socket address. (A UDP and a TCP
/// peer can share an address; they are different remotes.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Remote {
    pub transport: Transport,
    pub addr: SocketAddr,
}

impl Remote {
    pub fn udp(addr: SocketAddr) -> Self {
        Self {
            transport: Transport::Udp,
            addr,
        }
    }
}

/// Input to the core. Time always comes with it.
#[derive(Debug)]
pub enum Input<'a> {
    /// A datagram received on this worker's UDP socket or in a frame on one of its TCP
    /// connections.
    Receive {
        now: Instant,
        transport: Transport,
        source: SocketAddr,
        destination: SocketAddr,
        data: &'a [u8],
    },
    /// Time has advanced (at or after [`WorkerCore::poll_timeout`]).
    Timeout(Instant),
    /// A command from the control thread.
    Command(Instant, Command),
}

/// A datagram to send from this worker's UDP socket, or framed on the TCP connection from
/// `destination`.
#[derive(Debug)]
pub struct Transmit {
    pub transport: Transport,
    pub destination: SocketAddr,
    pub contents: Vec<u8>,
}

/// Output of the core.
#[derive(Debug)]
pub enum Output {
    Transmit(Transmit),
    Report(Report),
}

/// Why a received datagram (or an outgoing packet) was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum DropReason {
    /// Not STUN/DTLS/RTP by its first byte, or unparseable STUN.
    Malformed,
    /// STUN for a ufrag no participant owns.
    UnknownUfrag,
    /// DTLS/RTP/RTCP from an address not proven by STUN.
    UnknownSource,
    /// STUN that the participant's ICE agent did not accept (bad MESSAGE-INTEGRITY).
    StunUnauthorized,
    /// The participant's `Rtc` rejected the datagram (e.g. SRTP authentication).
    RtcRejected,
    /// RTP on a stream that is not a published track.
    UnknownTrack,
    /// The subscriber did not negotiate the packet's codec.
    UnmappedPayloadType,
    /// The rewrite put the packet before the start of its outgoing stream (late straggler).
    Straggler,
    /// A participant has bound too many source addresses.
    TooManyAddresses,
    /// A chat message was invalid (the sender got an error on its channel).
    ChatInvalid,
    /// A chat message could not be queued (SCTP buffer or backlog full).
    ChatBackpressure,
    /// A participant sent chat faster than its rate limit.
    ChatRateLimited,
    /// RTP of a simulcast layer (rid) the publisher did not declare in its SDP.
    UndeclaredLayer,
}

impl DropReason {
    pub const ALL: [DropReason; 13] = [
        DropReason::Malformed,
        DropReason::UnknownUfrag,
        DropReason::UnknownSource,
        DropReason::StunUnauthorized,
        DropReason::RtcRejected,
        DropReason::UnknownTrack,
        DropReason::UnmappedPayloadType,
        DropReason::Straggler,
        DropReason::TooManyAddresses,
        DropReason::ChatInvalid,
        DropReason::ChatBackpressure,
        DropReason::ChatRateLimited,
        DropReason::UndeclaredLayer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::UnknownUfrag => "unknown_ufrag",
            DropReason::UnknownSource => "unknown_source",
            DropReason::StunUnauthorized => "stun_unauthorized",
            DropReason::RtcRejected => "rtc_rejected",
            DropReason::UnknownTrack => "unknown_track",
            DropReason::UnmappedPayloadType => "unmapped_payload_type",
            DropReason::Straggler => "straggler",
            DropReason::TooManyAddresses => "too_many_addresses",
            DropReason::ChatInvalid => "chat_invalid",
            DropReason::ChatBackpressure => "chat_backpressure",
            DropReason::ChatRateLimited => "chat_rate_limited",
            DropReason::UndeclaredLayer => "undeclared_layer",
        }
    }
}

impl From<RouteError> for DropReason {
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::Malformed => DropReason::Malformed,
            RouteError::UnknownUfrag => DropReason::UnknownUfrag,
            RouteError::UnknownSource => DropReason::UnknownSource,
        }
    }
}

/// Counters of one worker.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub rtp_in: u64,
    pub rtp_forwarded: u64,
    pub keyframe_requests: u64,
    pub chat_messages: u64,
    pub nacks_received: u64,
    /// Full `Rtc` time inputs (every timer of that `Rtc`: ICE, SCTP, RTCP, NACK, stats).
    pub rtc_timeouts: u64,
    /// Cheap releases of written RTP (`Rtc::handle_written_rtp`) when the `Rtc`'s own timers
    /// were not due.
    pub rtc_releases: u64,
    /// Simulcast layer switches done for subscribers (each on a keyframe of the new layer).
    pub layer_switches: u64,
    pub drops: [u64; DropReason::ALL.len()],
}

impl Counters {
    pub fn drop(&mut self, reason: DropReason) {
        self.drops[reason as usize] += 1;
    }

    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }
}
