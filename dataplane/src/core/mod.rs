//! The sans-IO SFU core of one worker.
//!
//! [`WorkerCore`] owns the rooms, participants and tracks of one worker (one core, one UDP port).
//! It never reads a clock, touches a socket or spawns a thread: time comes in with every
//! [`Input`], and everything it wants done comes out of [`WorkerCore::poll_output`]
//! ([`Output::Transmit`] datagrams and [`Output::Report`]s for the control thread) and
//! [`WorkerCore::poll_timeout`]. The I/O shell (`crate::io`) and the deterministic tests drive the
//! very same code.
//!
//! Run-loop rule (str0m's): after every change to an `Rtc` its `poll_output` is drained until it
//! returns a timeout. Cross-participant work found while draining (forward a packet, request a
//! keyframe, deliver chat, renegotiate) goes into a work queue that is processed until empty, so no
//! `Rtc` is ever mutated while another drain of it is half done.
//!
//! Panic policy: nothing from the network or the control socket may panic. A bad datagram is
//! dropped and counted by [`DropReason`]; an `Rtc` that errors (or panics) closes that participant
//! only.

mod chat;
mod crypto;
mod demux;
mod guard;
mod ids;
mod invariants;
mod munger;
mod participant;
mod track;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use control::{
    ErrorCode, Event as CtlEvent, LeaveReason, ParticipantStats, PeerInfo, Request, Response,
    RoomStats, WorkerStats,
};
use slab::Slab;
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpPacket, RtpWrite};
use str0m::{Candidate, Event as RtcEvent, IceCreds, Input as RtcInput};
use str0m::{Output as RtcOutput, Rtc, RtcConfig};
use tracing::{debug, info, trace, warn};

pub use chat::{
    ChannelRequest, ChatDelivery, ChatError, ChatRequest, MAX_RAW_MESSAGE, MediaState,
    parse_request,
};
pub use crypto::SharedCrypto;
pub use demux::{Demux, PacketClass, RouteError, classify};
pub use guard::{clean_error, guard, media_sections};
pub use ids::{ParticipantIdx, TrackInIdx, TrackOutIdx};
pub use munger::RtpMunger;
use participant::{MAX_ADDRS, MAX_CHAT_BACKLOG, Participant, PendingOffer};
use track::{OutState, TrackIn, TrackOut};

/// Configuration of one worker core.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Worker number (for reports).
    pub worker: u32,
    /// The address advertised as this worker's ICE host candidate. Every received datagram must
    /// carry it as its destination (str0m drops STUN sent to any other local address).
    pub local_addr: SocketAddr,
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
}

impl CoreConfig {
    pub fn new(worker: u32, local_addr: SocketAddr) -> Self {
        Self {
            worker,
            local_addr,
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
        }
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
    fn unix_ms(&self, now: Instant) -> u64 {
        let delta = now.saturating_duration_since(self.instant).as_millis() as u64;
        self.unix_ms + delta
    }
}

/// A command from the control thread: an operation and an opaque `tag` that comes back in the
/// matching [`Report::Response`].
#[derive(Debug, Clone)]
pub struct Command {
    pub tag: u64,
    pub op: Op,
}

/// What a [`Command`] asks for.
#[derive(Debug, Clone)]
pub enum Op {
    /// A control-protocol request from signaling.
    Request(Request),
    /// Remove a participant for a reason other than its own `leave` (the control thread uses it
    /// for sessions abandoned by their signaling).
    Remove {
        participant: String,
        reason: LeaveReason,
    },
}

impl Command {
    /// A command carrying a control request.
    pub fn request(tag: u64, request: Request) -> Self {
        Self {
            tag,
            op: Op::Request(request),
        }
    }
}

/// What the core tells the control thread.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    /// The answer to the [`Command`] with this `tag`.
    Response { tag: u64, response: Response },
    /// An event for one participant, to route to its signaling connection.
    Event(CtlEvent),
    /// A participant no longer exists on this worker (after any reason).
    ParticipantClosed { participant: String },
    /// A room became empty and was removed from this worker.
    RoomClosed { room: String },
    /// Periodic statistics snapshot.
    Stats(WorkerStats),
}

/// Input to the core. Time always comes with it.
#[derive(Debug)]
pub enum Input<'a> {
    /// A UDP datagram received on this worker's socket.
    Receive {
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        data: &'a [u8],
    },
    /// Time has advanced (at or after [`WorkerCore::poll_timeout`]).
    Timeout(Instant),
    /// A command from the control thread.
    Command(Instant, Command),
}

/// A datagram to send from this worker's socket.
#[derive(Debug)]
pub struct Transmit {
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
}

impl DropReason {
    pub const ALL: [DropReason; 12] = [
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
#[derive(Debug, Clone, Default)]
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

/// Work discovered while draining an `Rtc`, processed after the drain.
// `Forward` carries the packet by value on purpose: the queue is reused, so a large variant costs
// memory once, while boxing would allocate for every forwarded packet.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Work {
    /// Fan a published packet out to the track's subscribers.
    Forward(TrackInIdx, RtpPacket),
    /// Ask the publisher of a track for a keyframe (throttled).
    Keyframe(TrackInIdx),
    /// A new published track: subscribe everyone else in the room.
    TrackAdded(TrackInIdx),
    /// A chat message from a participant.
    Chat(ParticipantIdx, Vec<u8>),
    /// Send a server offer if the participant has track changes and none is outstanding.
    Negotiate(ParticipantIdx),
    /// The participant connected (ICE + DTLS): send keyframe requests deferred until now.
    Connected(ParticipantIdx),
    /// Remove a participant.
    Remove(ParticipantIdx, LeaveReason),
}

/// A room on this worker.
#[derive(Debug, Default)]
struct Room {
    participants: Vec<ParticipantIdx>,
}

/// The SFU state of one worker. See the module docs.
#[derive(Debug)]
pub struct WorkerCore {
    cfg: CoreConfig,
    crypto: SharedCrypto,
    clock: WallClock,
    participants: Slab<Participant>,
    by_id: HashMap<String, ParticipantIdx>,
    rooms: HashMap<String, Room>,
    tracks_in: Slab<TrackIn>,
    tracks_out: Slab<TrackOut>,
    demux: Demux,
    timers: BinaryHeap<Reverse<(Instant, ParticipantIdx)>>,
    next_stats: Option<Instant>,
    work: VecDeque<Work>,
    out: VecDeque<Output>,
    counters: Counters,
    /// Join → connected durations since the last stats report.
    join_samples: Vec<f64>,
}

impl WorkerCore {
    pub fn new(cfg: CoreConfig, crypto: SharedCrypto, clock: WallClock) -> Self {
        Self {
            cfg,
            crypto,
            clock,
            participants: Slab::with_capacity(256),
            by_id: HashMap::with_capacity(256),
            rooms: HashMap::with_capacity(64),
            tracks_in: Slab::with_capacity(512),
            tracks_out: Slab::with_capacity(4096),
            demux: Demux::with_capacity(256),
            timers: BinaryHeap::with_capacity(256),
            next_stats: None,
            work: VecDeque::with_capacity(64),
            out: VecDeque::with_capacity(1024),
            counters: Counters::default(),
            join_samples: Vec::new(),
        }
    }

    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn participant_count(&self) -> usize {
        self.participants.len()
    }

    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Feed one input. Afterwards drain [`Self::poll_output`] and re-read [`Self::poll_timeout`].
    pub fn handle_input(&mut self, input: Input<'_>) {
        match input {
            Input::Receive {
                now,
                source,
                destination,
                data,
            } => self.handle_receive(now, source, destination, data),
            Input::Timeout(now) => self.handle_timeout(now),
            Input::Command(now, cmd) => self.handle_command(now, cmd),
        }
    }

    /// Next output, `None` when drained.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When the core next needs an [`Input::Timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        let timer = self.timers.peek().map(|Reverse((t, _))| *t);
        match (timer, self.next_stats) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ---------------------------------------------------------------------------------------
    // Network input

    fn handle_receive(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
    ) {
        self.counters.datagrams_in += 1;
        self.counters.bytes_in += data.len() as u64;
        let (idx, is_stun) = match guard(|| self.demux.route(source, data)) {
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                trace!(%source, ?e, "drop datagram");
                self.counters.drop(e.into());
                return;
            }
            None => {
                self.counters.drop(DropReason::Malformed);
                return;
            }
        };
        let Some(Ok(recv)) = guard(|| Receive::new(Protocol::Udp, source, destination, data))
        else {
            self.counters.drop(DropReason::Malformed);
            return;
        };
        let input = RtcInput::Receive(now, recv);
        let Some(p) = self.participants.get_mut(idx.0) else {
            self.counters.drop(DropReason::UnknownSource);
            return;
        };
        if is_stun && self.demux.addr_owner(&source) != Some(idx) {
            // A new address for this participant: only bind it once the ICE agent accepts the
            // request (MESSAGE-INTEGRITY checked with the participant's password).
            match guard(|| p.rtc.accepts(&input)) {
                Some(true) => {}
                Some(false) => {
                    self.counters.drop(DropReason::StunUnauthorized);
                    return;
                }
                // The datagram made str0m panic: drop it; the session itself is intact.
                None => {
                    self.counters.drop(DropReason::Malformed);
                    return;
                }
            }
            if !p.addrs.contains(&source) {
                if p.addrs.len() >= MAX_ADDRS {
                    self.counters.drop(DropReason::TooManyAddresses);
                    return;
                }
                p.addrs.push(source);
            }
            if let Some(old) = self.demux.bind_addr(source, idx)
                && let Some(o) = self.participants.get_mut(old.0)
            {
                o.addrs.retain(|a| *a != source);
            }
        }
        let Some(p) = self.participants.get_mut(idx.0) else {
            return;
        };
        p.last_rx = now;
        match guard(|| p.rtc.handle_input(input)) {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                // A single bad datagram (e.g. failed SRTP auth) is not fatal for the session.
                debug!(participant = %p.id, error = %e, "rtc rejected datagram");
                self.counters.drop(DropReason::RtcRejected);
            }
            None => {
                warn!(participant = %p.id, "rtc panicked on input; closing participant");
                p.failed = true;
            }
        }
        self.drain(idx, now);
        self.run_work(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((t, idx))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(p) = self.participants.get_mut(idx.0) else {
                continue;
            };
            if p.scheduled != Some(t) {
                continue; // stale heap entry
            }
            p.scheduled = None;
            if now.saturating_duration_since(p.last_rx) >= self.cfg.ice_timeout {
                info!(participant = %p.id, "no packets for {:?}: removing", self.cfg.ice_timeout);
                self.work.push_back(Work::Remove(idx, LeaveReason::Timeout));
                continue;
            }
            if now >= p.rtc_deadline {
                match catch_unwind(AssertUnwindSafe(|| {
                    p.rtc.handle_input(RtcInput::Timeout(now))
                })) {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        warn!(participant = %p.id, error = %e, "rtc timeout failed");
                        p.failed = true;
                    }
                    Err(_) => p.failed = true,
                }
            }
            for (_, ti) in &p.tracks_in {
                if let Some(t) = self.tracks_in.get_mut(ti.0)
                    && t.keyframe_pending
                    && t.last_keyframe_request
                        .is_none_or(|l| now >= l + self.cfg.keyframe_interval)
                {
                    // Cleared here so the deadline is not re-armed in the past before the
                    // queued request runs.
                    t.keyframe_pending = false;
                    self.work.push_back(Work::Keyframe(*ti));
                }
            }
            self.drain(idx, now);
        }
        if self.next_stats.is_none_or(|t| now >= t) {
            if self.next_stats.is_some() {
                let mut stats = self.stats();
                stats.join_seconds = std::mem::take(&mut self.join_samples);
                self.out.push_back(Output::Report(Report::Stats(stats)));
            }
            self.next_stats = Some(now + self.cfg.stats_interval);
        }
        self.run_work(now);
    }

    // ---------------------------------------------------------------------------------------
    // Control commands

    fn handle_command(&mut self, now: Instant, cmd: Command) {
        if self.next_stats.is_none() {
            self.next_stats = Some(now + self.cfg.stats_interval);
        }
        let request = match cmd.op {
            Op::Request(r) => r,
            Op::Remove {
                participant,
                reason,
            } => {
                if let Some(idx) = self.by_id.get(&participant).copied() {
                    self.remove_participant(idx, now, reason);
                }
                self.run_work(now);
                return;
            }
        };
        let response = match request {
            join @ Request::Join { .. } => self.handle_join(now, cmd.tag, join),
            Request::Answer { participant, sdp } => self.handle_answer(now, &participant, &sdp),
            Request::Offer { participant, sdp } => {
                self.handle_client_offer(now, &participant, &sdp)
            }
            Request::Leave { participant } => match self.by_id.get(&participant).copied() {
                Some(idx) => {
                    self.remove_participant(idx, now, LeaveReason::Left);
                    Some(Response::Ok)
                }
                None => Some(unknown(&participant)),
            },
            Request::Attach {
                participant,
                resume_key,
            } => self.handle_attach(cmd.tag, &participant, &resume_key),
            Request::CloseRoom { room } => {
                let members = self
                    .rooms
                    .get(&room)
                    .map(|r| r.participants.clone())
                    .unwrap_or_default();
                for idx in members {
                    self.remove_participant(idx, now, LeaveReason::RoomClosed);
                }
                Some(Response::Ok)
            }
            Request::Stats | Request::Drain | Request::InjectFault { .. } => Some(Response::error(
                ErrorCode::BadRequest,
                "handled by the control thread, not a worker",
            )),
        };
        if let Some(response) = response {
            self.respond(cmd.tag, response);
        }
        self.run_work(now);
    }

    fn respond(&mut self, tag: u64, response: Response) {
        self.out
            .push_back(Output::Report(Report::Response { tag, response }));
    }

    fn event(&mut self, event: CtlEvent) {
        self.out.push_back(Output::Report(Report::Event(event)));
    }

    /// Returns `None` when the response was already emitted (it must precede the events).
    fn handle_join(&mut self, now: Instant, tag: u64, join: Request) -> Option<Response> {
        let Request::Join {
            room,
            participant: id,
            name,
            offer,
            grants,
            identity,
            ..
        } = join
        else {
            return None;
        };
        let offer = offer.as_deref();
        if self.by_id.contains_key(&id) {
            return Some(Response::error(
                ErrorCode::DuplicateParticipant,
                format!("participant {id:?} already exists"),
            ));
        }
        match self.rooms.get(&room) {
            None if self.rooms.len() >= self.cfg.max_rooms => {
                return Some(Response::error(
                    ErrorCode::Unavailable,
                    format!(
                        "this worker hosts its maximum of {} rooms",
                        self.cfg.max_rooms
                    ),
                ));
            }
            Some(r) if r.participants.len() >= self.cfg.max_participants_per_room => {
                return Some(Response::error(
                    ErrorCode::RoomFull,
                    format!(
                        "room {room:?} has its maximum of {} participants",
                        self.cfg.max_participants_per_room
                    ),
                ));
            }
            _ => {}
        }
        let offer = match offer.map(|o| self.parse_offer(o)) {
            None => None,
            Some(Ok(o)) => Some(o),
            Some(Err(e)) => return Some(e),
        };
        let creds = IceCreds::new();
        let ufrag = creds.ufrag.clone();
        let mut rtc = self.build_rtc(creds, now);
        let candidate = match Candidate::host(self.cfg.local_addr, "udp") {
            Ok(c) => c,
            Err(e) => {
                return Some(Response::error(
                    ErrorCode::Internal,
                    format!("bad local candidate: {e}"),
                ));
            }
        };
        rtc.add_local_candidate(candidate);
        let answer = match offer {
            None => None,
            Some(offer) => match guard(|| rtc.sdp_api().accept_offer(offer)) {
                Some(Ok(a)) => Some(a.to_sdp_string()),
                Some(Err(e)) => {
                    return Some(Response::error(
                        ErrorCode::BadRequest,
                        format!("SDP offer not acceptable: {}", clean_error(e)),
                    ));
                }
                None => {
                    return Some(Response::error(
                        ErrorCode::BadRequest,
                        "SDP offer not acceptable",
                    ));
                }
            },
        };
        let initial_done = answer.is_some();

        let others: Vec<ParticipantIdx> = self
            .rooms
            .get(&room)
            .map(|r| r.participants.clone())
            .unwrap_or_default();
        let mut p = Participant::new(
            id.clone(),
            name.clone(),
            room.clone(),
            rtc,
            ufrag.clone(),
            now,
        );
        p.initial_done = initial_done;
        p.grants = grants;
        p.identity = identity;
        let resume_key = p.resume_key.clone();
        let idx = ParticipantIdx(self.participants.insert(p));
        self.by_id.insert(id.clone(), idx);
        self.demux.insert_ufrag(ufrag, idx);
        self.rooms
            .entry(room.clone())
            .or_default()
            .participants
            .push(idx);
        info!(participant = %id, %room, worker = self.cfg.worker, "joined");

        let peers: Vec<PeerInfo> = others
            .iter()
            .filter_map(|o| self.participants.get(o.0))
            .map(|o| PeerInfo {
                id: o.id.clone(),
                name: o.name.clone(),
            })
            .collect();
        self.respond(
            tag,
            Response::Joined {
                answer,
                worker: self.cfg.worker,
                port: self.cfg.local_addr.port(),
                participants: peers,
                resume_key,
                // Filled in by the control thread (the core draws no randomness).
                incarnation: String::new(),
            },
        );
        let me = PeerInfo { id, name };
        for o in &others {
            if let Some(op) = self.participants.get(o.0) {
                let participant = op.id.clone();
                self.event(CtlEvent::PeerJoined {
                    participant,
                    peer: me.clone(),
                });
            }
        }
        // Subscribe the newcomer to everything already published in the room.
        for o in &others {
            let tracks: Vec<TrackInIdx> = self
                .participants
                .get(o.0)
                .map(|op| op.tracks_in.iter().map(|(_, t)| *t).collect())
                .unwrap_or_default();
            for ti in tracks {
                self.subscribe(idx, ti);
            }
        }
        self.work.push_back(Work::Negotiate(idx));
        self.drain(idx, now);
        None
    }

    /// A signaling connection took over the participant's events: tell it the room and re-send
    /// the outstanding server offer (the previous connection may have died before relaying it).
    fn handle_attach(&mut self, tag: u64, id: &str, resume_key: &str) -> Option<Response> {
        let Some(idx) = self.by_id.get(id).copied() else {
            return Some(unknown(id));
        };
        let p = self.participants.get(idx.0)?;
        if p.resume_key != resume_key {
            // Same answer as for an unknown id: a wrong key reveals nothing.
            return Some(unknown(id));
        }
        let participants = self
            .rooms
            .get(&p.room)
            .map(|r| {
                r.participants
                    .iter()
                    .filter(|o| **o != idx)
                    .filter_map(|o| self.participants.get(o.0))
                    .map(|o| PeerInfo {
                        id: o.id.clone(),
                        name: o.name.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let offer = p.pending.as_ref().map(|o| CtlEvent::Offer {
            participant: p.id.clone(),
            sdp: o.sdp.clone(),
        });
        let response = Response::Attached {
            room: p.room.clone(),
            name: p.name.clone(),
            participants,
            incarnation: String::new(),
            identity: p.identity.clone(),
        };
        // The response must precede the re-sent offer.
        self.respond(tag, response);
        if let Some(offer) = offer {
            self.event(offer);
        }
        None
    }

    fn parse_offer(&self, sdp: &str) -> Result<SdpOffer, Response> {
        self.parse_sdp(sdp, "offer", SdpOffer::from_sdp_string)
    }

    /// Parse client SDP: refused before parsing if it has more media sections than allowed (an
    /// answer to thousands of m-lines would not fit the control link), parse errors cleaned of
    /// internal details, a parser panic caught.
    fn parse_sdp<T, E: std::fmt::Display>(
        &self,
        sdp: &str,
        what: &str,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<T, Response> {
        let sections = media_sections(sdp);
        if sections > self.cfg.max_media_per_offer {
            return Err(Response::error(
                ErrorCode::BadRequest,
                format!(
                    "SDP {what} has {sections} media sections; at most {} are accepted",
                    self.cfg.max_media_per_offer
                ),
            ));
        }
        match guard(|| parse(sdp)) {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => Err(Response::error(
                ErrorCode::BadRequest,
                format!("invalid SDP {what}: {}", clean_error(e)),
            )),
            None => Err(Response::error(
                ErrorCode::BadRequest,
                format!("invalid SDP {what}"),
            )),
        }
    }

    fn build_rtc(&self, creds: IceCreds, now: Instant) -> Rtc {
        RtcConfig::new()
            .set_crypto_provider(self.crypto.provider.clone())
            .set_dtls_cert(self.crypto.cert.clone())
            .set_local_ice_credentials(creds)
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .enable_h264(true)
            .set_send_buffer_video(self.cfg.rtx_buffer_video)
            .set_stats_interval(self.cfg.rtc_stats_interval)
            .build(now)
    }

    fn handle_answer(&mut self, now: Instant, id: &str, sdp: &str) -> Option<Response> {
        let Some(idx) = self.by_id.get(id).copied() else {
            return Some(unknown(id));
        };
        let answer = match self.parse_sdp(sdp, "answer", SdpAnswer::from_sdp_string) {
            Ok(a) => a,
            Err(e) => return Some(e),
        };
        let p = self.participants.get_mut(idx.0)?;
        let Some(pending) = p.pending.take() else {
            return Some(Response::error(
                ErrorCode::BadRequest,
                "no server offer is outstanding",
            ));
        };
        let result = catch_unwind(AssertUnwindSafe(|| {
            p.rtc.sdp_api().accept_answer(pending.pending, answer)
        }));
        let connected = p.connected;
        let response = match result {
            Ok(Ok(())) => {
                for to in &pending.tracks {
                    self.finish_negotiation(*to, connected);
                }
                Response::Ok
            }
            Ok(Err(e)) => {
                // The offer is consumed either way: put its tracks back and offer again.
                for to in &pending.tracks {
                    self.rollback_negotiation(*to);
                }
                Response::error(
                    ErrorCode::BadRequest,
                    format!("SDP answer not acceptable: {}", clean_error(e)),
                )
            }
            Err(_) => {
                p_fail(&mut self.participants, idx);
                Response::error(ErrorCode::BadRequest, "SDP answer not acceptable")
            }
        };
        self.work.push_back(Work::Negotiate(idx));
        self.drain(idx, now);
        Some(response)
    }

    fn handle_client_offer(&mut self, now: Instant, id: &str, sdp: &str) -> Option<Response> {
        let Some(idx) = self.by_id.get(id).copied() else {
            return Some(unknown(id));
        };
        let offer = match self.parse_offer(sdp) {
            Ok(o) => o,
            Err(e) => return Some(e),
        };
        let p = self.participants.get_mut(idx.0)?;
        // Glare: the server is the polite peer. Its outstanding offer is rolled back (str0m
        // invalidates it on accept_offer) and re-sent, updated, after answering the client.
        let rolled_back = p.pending.take();
        let result = catch_unwind(AssertUnwindSafe(|| p.rtc.sdp_api().accept_offer(offer)));
        if let Some(pending) = rolled_back {
            debug!(participant = %id, "glare: rolled back server offer");
            for to in &pending.tracks {
                self.rollback_negotiation(*to);
            }
        }
        let response = match result {
            Ok(Ok(answer)) => {
                if let Some(p) = self.participants.get_mut(idx.0) {
                    p.initial_done = true;
                }
                Response::Answer {
                    sdp: answer.to_sdp_string(),
                }
            }
            Ok(Err(e)) => Response::error(
                ErrorCode::BadRequest,
                format!("SDP offer not acceptable: {}", clean_error(e)),
            ),
            Err(_) => {
                p_fail(&mut self.participants, idx);
                Response::error(ErrorCode::BadRequest, "SDP offer not acceptable")
            }
        };
        self.work.push_back(Work::Negotiate(idx));
        self.drain(idx, now);
        Some(response)
    }

    // ---------------------------------------------------------------------------------------
    // Draining an Rtc and the work queue

    /// Drain one participant's `Rtc` until it returns a timeout (the run-loop rule).
    fn drain(&mut self, idx: ParticipantIdx, now: Instant) {
        loop {
            let Some(p) = self.participants.get_mut(idx.0) else {
                return;
            };
            if p.failed {
                self.work.push_back(Work::Remove(idx, LeaveReason::Failed));
                return;
            }
            let output = match catch_unwind(AssertUnwindSafe(|| p.rtc.poll_output())) {
                Ok(Ok(o)) => o,
                Ok(Err(e)) => {
                    warn!(participant = %p.id, error = %e, "rtc failed; closing participant");
                    p.failed = true;
                    continue;
                }
                Err(_) => {
                    warn!(participant = %p.id, "rtc panicked; closing participant");
                    p.failed = true;
                    continue;
                }
            };
            match output {
                RtcOutput::Timeout(t) => {
                    p.rtc_deadline = t;
                    if !p.rtc.is_alive() {
                        self.work.push_back(Work::Remove(idx, LeaveReason::Closed));
                        return;
                    }
                    self.schedule(idx);
                    return;
                }
                RtcOutput::Transmit(t) => {
                    let contents: Vec<u8> = t.contents.into();
                    self.counters.datagrams_out += 1;
                    self.counters.bytes_out += contents.len() as u64;
                    self.out.push_back(Output::Transmit(Transmit {
                        destination: t.destination,
                        contents,
                    }));
                }
                RtcOutput::Event(e) => self.handle_rtc_event(idx, now, e),
            }
        }
    }

    /// Keep the earliest deadline of a participant in the timer heap.
    fn schedule(&mut self, idx: ParticipantIdx) {
        let Some(p) = self.participants.get_mut(idx.0) else {
            return;
        };
        let mut deadline = p.rtc_deadline.min(p.last_rx + self.cfg.ice_timeout);
        for (_, ti) in &p.tracks_in {
            if let Some(t) = self.tracks_in.get(ti.0)
                && t.keyframe_pending
                && let Some(last) = t.last_keyframe_request
            {
                deadline = deadline.min(last + self.cfg.keyframe_interval);
            }
        }
        if p.scheduled.is_none_or(|s| deadline < s) {
            p.scheduled = Some(deadline);
            self.timers.push(Reverse((deadline, idx)));
        }
    }

    fn handle_rtc_event(&mut self, idx: ParticipantIdx, now: Instant, event: RtcEvent) {
        let Some(p) = self.participants.get_mut(idx.0) else {
            return;
        };
        match event {
            RtcEvent::RtpPacket(pkt) => {
                p.rtp_in += 1;
                self.counters.rtp_in += 1;
                let mid = p
                    .rtc
                    .direct_api()
                    .stream_rx(&pkt.header.ssrc)
                    .map(|s| s.mid());
                match mid.and_then(|m| p.track_in(m)) {
                    Some(ti) => self.work.push_back(Work::Forward(ti, pkt)),
                    None => self.counters.drop(DropReason::UnknownTrack),
                }
            }
            RtcEvent::KeyframeRequest(req) => {
                let source = p.tracks_out.iter().find_map(|to| {
                    let t = self.tracks_out.get(to.0)?;
                    (t.mid() == Some(req.mid)).then_some(t.source).flatten()
                });
                if let Some(ti) = source {
                    self.work.push_back(Work::Keyframe(ti));
                }
            }
            RtcEvent::MediaAdded(m)
                if p.grants.publish
                    && matches!(m.direction, Direction::RecvOnly | Direction::SendRecv)
                    && p.track_in(m.mid).is_none() =>
            {
                let ti = TrackInIdx(self.tracks_in.insert(TrackIn {
                    publisher: idx,
                    mid: m.mid,
                    kind: m.kind,
                    subscribers: Vec::new(),
                    last_keyframe_request: None,
                    keyframe_pending: false,
                }));
                p.tracks_in.push((m.mid, ti));
                debug!(participant = %p.id, mid = %m.mid, kind = ?m.kind, "track published");
                self.work.push_back(Work::TrackAdded(ti));
            }
            RtcEvent::Connected => {
                p.connected = true;
                if self.join_samples.len() < 10_000 {
                    self.join_samples
                        .push(now.saturating_duration_since(p.joined_at).as_secs_f64());
                }
                info!(participant = %p.id, "connected");
                self.work.push_back(Work::Connected(idx));
            }
            RtcEvent::IceConnectionStateChange(state) => {
                // Not acted on: ICE-lite has no checks of its own to fail; the inactivity timeout
                // decides when a participant is gone.
                debug!(participant = %p.id, ?state, "ice state");
            }
            RtcEvent::ChannelOpen(id, label) if label == "chat" => {
                p.chat = Some(id);
                let mut backlog: Vec<Vec<u8>> = p.chat_backlog.drain(..).collect();
                // The current mute state of everyone else who announced one.
                let room = p.room.clone();
                if let Some(r) = self.rooms.get(&room) {
                    for o in &r.participants {
                        if let Some(op) = self.participants.get(o.0)
                            && *o != idx
                            && op.media_state != MediaState::default()
                        {
                            backlog.push(op.media_state.to_json(&op.id));
                        }
                    }
                }
                for msg in backlog {
                    self.send_chat(idx, &msg);
                }
            }
            RtcEvent::ChannelData(data) if Some(data.id) == p.chat => {
                self.work.push_back(Work::Chat(idx, data.data));
            }
            RtcEvent::ChannelClose(id) if Some(id) == p.chat => {
                p.chat = None;
            }
            RtcEvent::MediaEgressStats(s) => {
                match p.egress_nacks.iter_mut().find(|(m, _)| *m == s.mid) {
                    Some((_, last)) => {
                        self.counters.nacks_received += s.nacks.saturating_sub(*last);
                        *last = s.nacks;
                    }
                    None => {
                        self.counters.nacks_received += s.nacks;
                        p.egress_nacks.push((s.mid, s.nacks));
                    }
                }
            }
            RtcEvent::Closed => {
                self.work.push_back(Work::Remove(idx, LeaveReason::Closed));
            }
            _ => {}
        }
    }

    fn run_work(&mut self, now: Instant) {
        while let Some(w) = self.work.pop_front() {
            match w {
                Work::Forward(ti, pkt) => self.forward(ti, &pkt, now),
                Work::Keyframe(ti) => self.request_keyframe(ti, now),
                Work::TrackAdded(ti) => self.track_added(ti),
                Work::Chat(idx, data) => self.handle_chat(idx, &data, now),
                Work::Negotiate(idx) => self.negotiate(idx, now),
                Work::Connected(idx) => self.participant_connected(idx),
                Work::Remove(idx, reason) => self.remove_participant(idx, now, reason),
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Forwarding

    fn forward(&mut self, ti: TrackInIdx, pkt: &RtpPacket, now: Instant) {
        let Some(tin) = self.tracks_in.get(ti.0) else {
            return;
        };
        let publisher = tin.publisher;
        let nackable = tin.kind == MediaKind::Video;
        let clock_rate: u64 = if tin.kind == MediaKind::Video {
            90_000
        } else {
            48_000
        };
        let mut ext = pkt.header.ext_vals.clone();
        // Identification extensions are per m-line: never leak the publisher's onto a subscriber.
        ext.mid = None;
        ext.rid = None;
        ext.rid_repair = None;
        ext.transport_cc = None;
        let pt_in = pkt.header.payload_type;
        for i in 0..tin.subscribers.len() {
            let Some(to) = self
                .tracks_in
                .get(ti.0)
                .and_then(|t| t.subscribers.get(i).copied())
            else {
                break;
            };
            let Some(tout) = self.tracks_out.get_mut(to.0) else {
                continue;
            };
            let OutState::Open(mid) = tout.state else {
                continue;
            };
            let sub = tout.subscriber;
            // Nothing is written to a subscriber that has not connected yet: str0m could only
            // queue it (and drop the overflow), which would open a sequence gap before the first
            // packet the subscriber sees. Its stream starts at the keyframe requested when it
            // connects. Nor to one that failed (it is being removed).
            if !self
                .participants
                .get(sub.0)
                .is_some_and(|p| p.connected && !p.failed)
            {
                continue;
            }
            // Publisher PT → subscriber PT, cached per track.
            let pt_out = match tout.pt_map.iter().find(|(i, _)| *i == pt_in) {
                Some((_, o)) => *o,
                None => {
                    let mapped = map_payload_type(&self.participants, publisher, sub, mid, pt_in);
                    tout.pt_map.push((pt_in, mapped));
                    mapped
                }
            };
            let Some(pt_out) = pt_out else {
                self.counters.drop(DropReason::UnmappedPayloadType);
                continue;
            };
            let gap = tout
                .last_arrival
                .map(|l| {
                    (pkt.timestamp.saturating_duration_since(l).as_micros() as u64 * clock_rate
                        / 1_000_000) as u32
                })
                .unwrap_or(0);
            let Some((seq, ts)) =
                tout.munger
                    .rewrite(*pkt.header.ssrc, *pkt.seq_no, pkt.header.timestamp, gap)
            else {
                self.counters.drop(DropReason::Straggler);
                continue;
            };
            tout.last_arrival = Some(pkt.timestamp);
            tout.packets += 1;
            let Some(sp) = self.participants.get_mut(sub.0) else {
                continue;
            };
            let mut api = sp.rtc.direct_api();
            let Some(stream) = api.stream_tx_by_mid(mid, None) else {
                continue;
            };
            let write = RtpWrite::new(pt_out, seq.into(), ts, pkt.timestamp, pkt.payload.clone())
                .marker(pkt.header.marker)
                .ext_vals(ext.clone())
                .nackable(nackable);
            if guard(|| stream.write_rtp(write)).is_none() {
                warn!(participant = %sp.id, "rtc panicked on write_rtp; closing participant");
                sp.failed = true;
                self.work.push_back(Work::Remove(sub, LeaveReason::Failed));
                continue;
            }
            sp.rtp_out += 1;
            self.counters.rtp_forwarded += 1;
            // str0m sends written RTP on its next time input (its pacer takes a snapshot of the
            // queues then), so polling it now would only return `Timeout(now)`. Arm the
            // subscriber's timer instead: `handle_timeout` feeds the time and drains once for
            // all packets written to it by this batch of input — one poll cycle per subscriber
            // per batch instead of one per packet.
            sp.rtc_deadline = now;
            // Only the first packet of a turn for this subscriber needs the heap entry.
            if sp.scheduled.is_none_or(|s| s > now) {
                self.schedule(sub);
            }
        }
    }

    fn request_keyframe(&mut self, ti: TrackInIdx, now: Instant) {
        let Some(tin) = self.tracks_in.get_mut(ti.0) else {
            return;
        };
        if tin.kind != MediaKind::Video {
            return;
        }
        if let Some(last) = tin.last_keyframe_request
            && now < last + self.cfg.keyframe_interval
        {
            tin.keyframe_pending = true;
            let publisher = tin.publisher;
            self.schedule(publisher);
            return;
        }
        tin.keyframe_pending = false;
        tin.last_keyframe_request = Some(now);
        let (publisher, mid) = (tin.publisher, tin.mid);
        let Some(p) = self.participants.get_mut(publisher.0) else {
            return;
        };
        if let Some(rx) = p.rtc.direct_api().stream_rx_by_mid(mid, None) {
            rx.request_keyframe(KeyframeRequestKind::Pli);
            self.counters.keyframe_requests += 1;
            trace!(publisher = %p.id, %mid, "keyframe request");
        }
        self.drain(publisher, now);
    }

    fn participant_connected(&mut self, idx: ParticipantIdx) {
        let Some(p) = self.participants.get(idx.0) else {
            return;
        };
        for to in &p.tracks_out {
            if let Some(t) = self.tracks_out.get_mut(to.0)
                && t.wants_keyframe
            {
                t.wants_keyframe = false;
                if let Some(ti) = t.source {
                    self.work.push_back(Work::Keyframe(ti));
                }
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Subscriptions and negotiation

    /// A new published track: every other participant of the room subscribes.
    fn track_added(&mut self, ti: TrackInIdx) {
        let Some(tin) = self.tracks_in.get(ti.0) else {
            return;
        };
        let Some(room) = self
            .participants
            .get(tin.publisher.0)
            .map(|p| p.room.clone())
        else {
            return;
        };
        let publisher = tin.publisher;
        let members = self
            .rooms
            .get(&room)
            .map(|r| r.participants.clone())
            .unwrap_or_default();
        for sub in members.into_iter().filter(|s| *s != publisher) {
            self.subscribe(sub, ti);
            self.work.push_back(Work::Negotiate(sub));
        }
    }

    fn subscribe(&mut self, sub: ParticipantIdx, ti: TrackInIdx) {
        // A participant whose token denies `subscribe` receives no media at all.
        if self
            .participants
            .get(sub.0)
            .is_none_or(|p| !p.grants.subscribe)
        {
            return;
        }
        let Some(tin) = self.tracks_in.get(ti.0) else {
            return;
        };
        let Some(publisher_id) = self.participants.get(tin.publisher.0).map(|p| p.id.clone())
        else {
            return;
        };
        let kind = tin.kind;
        let to = TrackOutIdx(
            self.tracks_out
                .insert(TrackOut::new(sub, ti, publisher_id, kind)),
        );
        if let Some(tin) = self.tracks_in.get_mut(ti.0) {
            tin.subscribers.push(to);
        }
        if let Some(p) = self.participants.get_mut(sub.0) {
            p.tracks_out.push(to);
        }
    }

    /// Send one server offer with every pending track change of this participant.
    fn negotiate(&mut self, idx: ParticipantIdx, now: Instant) {
        let Some(p) = self.participants.get_mut(idx.0) else {
            return;
        };
        if !p.initial_done || p.pending.is_some() || p.failed {
            return;
        }
        let changes: Vec<TrackOutIdx> = p
            .tracks_out
            .iter()
            .copied()
            .filter(|to| {
                self.tracks_out
                    .get(to.0)
                    .is_some_and(|t| matches!(t.state, OutState::ToOpen | OutState::ToClose(_)))
            })
            .collect();
        if changes.is_empty() {
            return;
        }
        let mut api = p.rtc.sdp_api();
        for to in &changes {
            let Some(t) = self.tracks_out.get_mut(to.0) else {
                continue;
            };
            t.state = match t.state {
                OutState::ToOpen => {
                    let track_id = format!("{}-{}", t.publisher_id, kind_name(t.kind));
                    let mid = api.add_media(
                        t.kind,
                        Direction::SendOnly,
                        Some(t.publisher_id.clone()),
                        Some(track_id),
                        None,
                    );
                    OutState::Negotiating(mid)
                }
                OutState::ToClose(mid) => {
                    api.stop_media(mid);
                    OutState::Closing(mid)
                }
                other => other,
            };
        }
        match catch_unwind(AssertUnwindSafe(|| api.apply())) {
            Ok(Some((offer, pending))) => {
                let sdp = offer.to_sdp_string();
                p.pending = Some(PendingOffer {
                    pending,
                    sdp: sdp.clone(),
                    tracks: changes,
                });
                let event = CtlEvent::Offer {
                    participant: p.id.clone(),
                    sdp,
                };
                self.event(event);
            }
            Ok(None) => {
                // Nothing needed an SDP round trip (e.g. only already-stopped m-lines).
                for to in &changes {
                    self.finish_negotiation(*to, false);
                }
            }
            Err(_) => p.failed = true,
        }
        self.drain(idx, now);
    }

    /// The subscriber accepted the offer carrying this track change.
    fn finish_negotiation(&mut self, to: TrackOutIdx, connected: bool) {
        let Some(t) = self.tracks_out.get_mut(to.0) else {
            return;
        };
        match t.state {
            OutState::Negotiating(mid) if t.source.is_some() => {
                t.state = OutState::Open(mid);
                // A new subscriber cannot decode until the next keyframe: ask for one now, or as
                // soon as the subscriber is connected.
                if t.kind == MediaKind::Video {
                    if connected {
                        if let Some(ti) = t.source {
                            self.work.push_back(Work::Keyframe(ti));
                        }
                    } else {
                        t.wants_keyframe = true;
                    }
                }
            }
            OutState::Negotiating(mid) => t.state = OutState::ToClose(mid),
            OutState::Closing(_) => self.drop_track_out(to),
            _ => {}
        }
    }

    /// The offer carrying this track change was rolled back or rejected.
    fn rollback_negotiation(&mut self, to: TrackOutIdx) {
        let Some(t) = self.tracks_out.get_mut(to.0) else {
            return;
        };
        match t.state {
            OutState::Negotiating(_) if t.source.is_some() => t.state = OutState::ToOpen,
            // The m-line was never agreed: nothing to stop.
            OutState::Negotiating(_) => self.drop_track_out(to),
            // stop_media already took effect locally; the next offer carries it as stopped.
            OutState::Closing(_) => self.drop_track_out(to),
            _ => {}
        }
    }

    /// Remove a track out from the slab, its subscriber and its source.
    fn drop_track_out(&mut self, to: TrackOutIdx) {
        let Some(t) = self.tracks_out.try_remove(to.0) else {
            return;
        };
        if let Some(p) = self.participants.get_mut(t.subscriber.0) {
            p.tracks_out.retain(|x| *x != to);
        }
        if let Some(ti) = t.source
            && let Some(tin) = self.tracks_in.get_mut(ti.0)
        {
            tin.subscribers.retain(|x| *x != to);
        }
    }

    // ---------------------------------------------------------------------------------------
    // Chat

    fn handle_chat(&mut self, from: ParticipantIdx, data: &[u8], now: Instant) {
        let (rate, burst) = (self.cfg.chat_rate, self.cfg.chat_burst);
        let Some(p) = self.participants.get_mut(from.0) else {
            return;
        };
        // Per-sender rate limit: a flood from one participant never crowds out the room.
        if !p.chat_allowance.try_take(now, rate, burst) {
            self.counters.drop(DropReason::ChatRateLimited);
            if !std::mem::replace(&mut p.chat_limited, true) {
                let msg = ChatError::RateLimited {
                    per_sec: rate.round() as u32,
                }
                .to_json();
                self.send_chat(from, &msg);
                self.drain(from, now);
            }
            return;
        }
        p.chat_limited = false;
        let Some(p) = self.participants.get(from.0) else {
            return;
        };
        let request = parse_request(data, self.cfg.max_chat_text).and_then(|req| {
            if let ChannelRequest::Chat(ChatRequest { to: Some(to), .. }) = &req {
                let target = self.by_id.get(to).copied();
                let same_room = target
                    .and_then(|t| self.participants.get(t.0))
                    .is_some_and(|t| t.room == p.room);
                if !same_room {
                    return Err(ChatError::UnknownParticipant(to.clone()));
                }
            }
            Ok(req)
        });
        let req = match request {
            Ok(ChannelRequest::Chat(r)) => r,
            Ok(ChannelRequest::State(state)) => {
                self.handle_media_state(from, state, now);
                return;
            }
            Err(e) => {
                debug!(participant = %p.id, code = e.code(), "chat rejected");
                self.counters.drop(DropReason::ChatInvalid);
                let msg = e.to_json();
                self.send_chat(from, &msg);
                self.drain(from, now);
                return;
            }
        };
        self.counters.chat_messages += 1;
        let delivery = ChatDelivery::new(
            &p.id,
            &p.name,
            req.to.as_deref(),
            &req.text,
            self.clock.unix_ms(now),
        )
        .to_json();
        let recipients: Vec<ParticipantIdx> = match &req.to {
            // A whisper goes to its target and back to its sender as confirmation.
            Some(to) => {
                let mut r = vec![from];
                if let Some(t) = self.by_id.get(to).copied()
                    && t != from
                {
                    r.push(t);
                }
                r
            }
            None => Self::room_except(&self.rooms, &p.room, from),
        };
        for r in recipients {
            self.send_chat(r, &delivery);
            self.drain(r, now);
        }
    }

    /// Everyone in `room` but `except` (over `rooms` alone, so a participant may be borrowed).
    fn room_except(
        rooms: &HashMap<String, Room>,
        room: &str,
        except: ParticipantIdx,
    ) -> Vec<ParticipantIdx> {
        rooms
            .get(room)
            .map(|r| {
                r.participants
                    .iter()
                    .copied()
                    .filter(|x| *x != except)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A participant announced its mute state: remember it (for later joiners) and tell the room.
    fn handle_media_state(&mut self, from: ParticipantIdx, state: MediaState, now: Instant) {
        let Some(p) = self.participants.get_mut(from.0) else {
            return;
        };
        p.media_state = state;
        let msg = state.to_json(&p.id);
        for o in Self::room_except(&self.rooms, &p.room, from) {
            self.send_chat(o, &msg);
            self.drain(o, now);
        }
    }

    /// Write a message on a participant's chat channel, or hold it until the channel opens.
    fn send_chat(&mut self, idx: ParticipantIdx, msg: &[u8]) {
        let Some(p) = self.participants.get_mut(idx.0) else {
            return;
        };
        let Some(id) = p.chat else {
            if p.chat_backlog.len() < MAX_CHAT_BACKLOG {
                p.chat_backlog.push_back(msg.to_vec());
            } else {
                self.counters.drop(DropReason::ChatBackpressure);
            }
            return;
        };
        let written = guard(|| p.rtc.channel(id).map(|mut ch| ch.write(false, msg)));
        if written.is_none() {
            warn!(participant = %p.id, "rtc panicked on a chat write; closing participant");
            p.failed = true;
        }
        if !matches!(written, Some(Some(Ok(true)))) {
            self.counters.drop(DropReason::ChatBackpressure);
        }
    }

    // ---------------------------------------------------------------------------------------
    // Removal

    fn remove_participant(&mut self, idx: ParticipantIdx, now: Instant, reason: LeaveReason) {
        let Some(mut p) = self.participants.try_remove(idx.0) else {
            return;
        };
        info!(participant = %p.id, room = %p.room, ?reason, "participant removed");
        // Tell the browser (DTLS close_notify, RTCP BYE) unless the session is already broken.
        if !p.failed && guard(|| p.rtc.close()).is_some_and(|r| r.is_ok()) {
            for _ in 0..64 {
                match catch_unwind(AssertUnwindSafe(|| p.rtc.poll_output())) {
                    Ok(Ok(RtcOutput::Transmit(t))) => {
                        let contents: Vec<u8> = t.contents.into();
                        self.counters.datagrams_out += 1;
                        self.counters.bytes_out += contents.len() as u64;
                        self.out.push_back(Output::Transmit(Transmit {
                            destination: t.destination,
                            contents,
                        }));
                    }
                    Ok(Ok(RtcOutput::Event(_))) => {}
                    _ => break,
                }
            }
        }
        self.demux.remove(idx, &p.ufrag, &p.addrs);
        self.by_id.remove(&p.id);

        // Its published tracks: every subscriber renegotiates them away.
        let mut renegotiate = Vec::new();
        for (_, ti) in &p.tracks_in {
            let Some(tin) = self.tracks_in.try_remove(ti.0) else {
                continue;
            };
            for to in tin.subscribers {
                let Some(t) = self.tracks_out.get_mut(to.0) else {
                    continue;
                };
                t.source = None;
                match t.state {
                    OutState::ToOpen => {
                        let sub = t.subscriber;
                        self.tracks_out.remove(to.0);
                        if let Some(sp) = self.participants.get_mut(sub.0) {
                            sp.tracks_out.retain(|x| *x != to);
                        }
                    }
                    OutState::Open(mid) => {
                        t.state = OutState::ToClose(mid);
                        renegotiate.push(t.subscriber);
                    }
                    _ => {}
                }
            }
        }
        // Its subscriptions.
        for to in std::mem::take(&mut p.tracks_out) {
            if let Some(t) = self.tracks_out.try_remove(to.0)
                && let Some(ti) = t.source
                && let Some(tin) = self.tracks_in.get_mut(ti.0)
            {
                tin.subscribers.retain(|x| *x != to);
            }
        }
        // The room.
        let mut others = Vec::new();
        if let Some(room) = self.rooms.get_mut(&p.room) {
            room.participants.retain(|x| *x != idx);
            others = room.participants.clone();
            if room.participants.is_empty() {
                self.rooms.remove(&p.room);
                self.out.push_back(Output::Report(Report::RoomClosed {
                    room: p.room.clone(),
                }));
            }
        }
        for o in others {
            if let Some(op) = self.participants.get(o.0) {
                let participant = op.id.clone();
                self.event(CtlEvent::PeerLeft {
                    participant,
                    peer_id: p.id.clone(),
                    reason,
                });
            }
        }
        if reason != LeaveReason::Left {
            self.event(CtlEvent::Gone {
                participant: p.id.clone(),
                reason,
            });
        }
        self.out
            .push_back(Output::Report(Report::ParticipantClosed {
                participant: p.id.clone(),
            }));
        renegotiate.sort();
        renegotiate.dedup();
        for sub in renegotiate {
            self.negotiate(sub, now);
        }
    }

    /// Remove everyone (shutdown).
    pub fn shutdown(&mut self, now: Instant) {
        let all: Vec<ParticipantIdx> = self
            .participants
            .iter()
            .map(|(i, _)| ParticipantIdx(i))
            .collect();
        for idx in all {
            self.remove_participant(idx, now, LeaveReason::Shutdown);
        }
        self.run_work(now);
    }

    // ---------------------------------------------------------------------------------------
    // Stats

    /// A statistics snapshot of this worker.
    pub fn stats(&self) -> WorkerStats {
        let c = &self.counters;
        let mut rooms: Vec<RoomStats> = self
            .rooms
            .iter()
            .map(|(name, r)| RoomStats {
                room: name.clone(),
                participants: r
                    .participants
                    .iter()
                    .filter_map(|i| self.participants.get(i.0))
                    .map(|p| ParticipantStats {
                        id: p.id.clone(),
                        name: p.name.clone(),
                        connected: p.connected,
                        tracks_in: p.tracks_in.len() as u32,
                        tracks_out: p.tracks_out.len() as u32,
                        rtp_in: p.rtp_in,
                        rtp_out: p.rtp_out,
                    })
                    .collect(),
            })
            .collect();
        rooms.sort_by(|a, b| a.room.cmp(&b.room));
        WorkerStats {
            worker: self.cfg.worker,
            port: self.cfg.local_addr.port(),
            rooms,
            participants: self.participants.len() as u32,
            datagrams_in: c.datagrams_in,
            datagrams_out: c.datagrams_out,
            bytes_in: c.bytes_in,
            bytes_out: c.bytes_out,
            rtp_in: c.rtp_in,
            rtp_forwarded: c.rtp_forwarded,
            keyframe_requests: c.keyframe_requests,
            chat_messages: c.chat_messages,
            nacks_received: c.nacks_received,
            drops: DropReason::ALL
                .iter()
                .map(|r| (r.as_str().to_string(), c.dropped(*r)))
                .filter(|(_, n)| *n > 0)
                .collect(),
            ..WorkerStats::default()
        }
    }
}

fn unknown(id: &str) -> Response {
    Response::error(
        ErrorCode::UnknownParticipant,
        format!("no participant {id:?} on this dataplane"),
    )
}

fn p_fail(participants: &mut Slab<Participant>, idx: ParticipantIdx) {
    if let Some(p) = participants.get_mut(idx.0) {
        p.failed = true;
    }
}

fn kind_name(kind: MediaKind) -> &'static str {
    match kind {
        MediaKind::Audio => "audio",
        MediaKind::Video => "video",
    }
}

/// The subscriber's payload type for the publisher's `pt`: same codec and parameters, and
/// negotiated on the subscriber's m-line.
fn map_payload_type(
    participants: &Slab<Participant>,
    publisher: ParticipantIdx,
    subscriber: ParticipantIdx,
    mid: Mid,
    pt: str0m::media::Pt,
) -> Option<str0m::media::Pt> {
    let pub_params = participants
        .get(publisher.0)?
        .rtc
        .codec_config()
        .find(|p| p.pt() == pt)
        .copied()?;
    let sub = participants.get(subscriber.0)?;
    let out = sub.rtc.codec_config().match_params(pub_params)?.pt();
    let media = sub.rtc.media(mid)?;
    media.remote_pts().contains(&out).then_some(out)
}
