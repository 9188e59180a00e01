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
//! Layout (one concern per file, `impl WorkerCore` split across them as str0m splits `Rtc`):
//!
//! | file | owns |
//! |---|---|
//! | `api.rs` | configuration, [`Command`]/[`Input`] in, [`Output`]/[`Report`] out, [`Counters`], [`DropReason`] |
//! | `receive.rs` | datagram in → classify → route (`demux.rs`) → the participant's `Rtc` |
//! | `timers.rs` | `Rtc` deadlines, ICE timeouts, the stats tick |
//! | `rtc_events.rs` | draining an `Rtc` and acting on its events |
//! | `requests.rs` | control requests: join, attach, client offers and answers, leave |
//! | `negotiation.rs` | server-side renegotiation (subscribing to new tracks, glare) |
//! | `forward.rs` | the per-packet forwarding path (`munger.rs` rewrites), keyframe requests, the work queue |
//! | `layers.rs`, `selector.rs`, `allocation.rs` | simulcast: a track's layers; per-subscriber layer choice from its bandwidth estimate |
//! | `speakers.rs` | active speakers from the audio-level header extension |
//! | `hints.rs`, `dynacast.rs` | subscribers' tile sizes and visibility; pausing layers nobody needs |
//! | `chat_relay.rs`, `chat.rs` | chat and mute-state relay; message validation |
//! | `removal.rs` | removing participants and tracks, closing rooms, shutdown |
//! | `stats.rs` | the periodic statistics snapshot |
//! | `participant.rs`, `track.rs`, `ids.rs` | the state of participants and tracks |
//! | `guard.rs`, `invariants.rs` | panic containment around str0m; table consistency checks |
//!
//! This file holds the state ([`WorkerCore`]) and the sans-IO entry points.
//!
//! Panic policy: nothing from the network or the control socket may panic. A bad datagram is
//! dropped and counted by [`DropReason`]; an `Rtc` that errors (or panics) closes that participant
//! only.

mod allocation;
mod api;
mod chat;
mod chat_relay;
mod demux;
mod dynacast;
mod forward;
mod guard;
mod hints;
mod ids;
mod invariants;
mod layers;
mod messages;
mod munger;
mod negotiation;
mod participant;
mod receive;
mod removal;
mod requests;
mod rtc_events;
mod selector;
mod slots;
mod speakers;
mod stats;
mod timers;
mod track;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::Instant;

use rand::SeedableRng;
use rand::rngs::StdRng;
use slab::Slab;
use str0m::media::{MediaKind, Mid};
use str0m::rtp::RtpPacket;

pub use api::{
    Command, CoreConfig, Counters, DropReason, Input, Output, Remote, Report, SharedCrypto,
    Transmit, Transport, WallClock,
};
pub use chat::{
    ChannelRequest, ChatDelivery, ChatError, ChatRequest, MAX_HINT_HEIGHT, MAX_RAW_MESSAGE,
    MediaState, VideoHint, parse_request,
};
pub use demux::{Demux, PacketClass, RouteError, classify};
pub use guard::{clean_error, guard, media_sections};
pub use ids::{ParticipantIdx, TrackInIdx, TrackOutIdx};
pub use messages::{
    ErrorCode, Event, Grants, Join, LeaveReason, Op, ParticipantId, ParticipantStats, PeerInfo,
    Reply, RoomId, RoomStats, Stats, Viewer,
};
pub use munger::RtpMunger;
use participant::Participant;
use track::{TrackIn, TrackOut};

/// Work discovered while draining an `Rtc`, processed after the drain.
// `Forward` carries the packet by value on purpose: the queue is reused, so a large variant costs
// memory once, while boxing would allocate for every forwarded packet.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Work {
    /// Fan a published packet of one layer out to the track's subscribers.
    Forward(TrackInIdx, u8, RtpPacket),
    /// Ask the publisher of a track for a keyframe of one layer (throttled).
    Keyframe(TrackInIdx, u8),
    /// Choose the simulcast layers a subscriber receives (its estimate or its tracks changed).
    Allocate(ParticipantIdx),
    /// Re-rank the rooms' active speakers.
    Speakers,
    /// Switch a simulcast track's unneeded layers off at its publisher (and needed ones on).
    Dynacast(TrackInIdx),
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
    /// Sequence number of the last chat message relayed in this room.
    chat_seq: u64,
    /// The last public chat messages (at most `CoreConfig::chat_history` and
    /// `chat_history_bytes`), replayed to a participant who joins later.
    chat_history: VecDeque<ChatDelivery>,
    chat_history_bytes: usize,
    /// Its current active speakers, loudest first (as last sent to its participants).
    speakers: Vec<ParticipantIdx>,
}

/// The SFU state of one worker. See the module docs.
#[derive(Debug)]
pub struct WorkerCore {
    cfg: CoreConfig,
    crypto: SharedCrypto,
    clock: WallClock,
    participants: Slab<Participant>,
    by_id: HashMap<ParticipantId, ParticipantIdx>,
    rooms: HashMap<RoomId, Room>,
    tracks_in: Slab<TrackIn>,
    tracks_out: Slab<TrackOut>,
    demux: Demux,
    timers: BinaryHeap<Reverse<(Instant, ParticipantIdx)>>,
    /// A timeout pass in progress (see `timers.rs`): due participants are served one per
    /// [`WorkerCore::poll_output`] step, so each one's datagrams can leave before the next one
    /// is encrypted.
    timeout_pass: Option<Instant>,
    next_stats: Option<Instant>,
    /// When the rooms' active speakers are next ranked (`speakers.rs`).
    next_speakers: Option<Instant>,
    work: VecDeque<Work>,
    out: VecDeque<Output>,
    counters: Counters,
    /// Join → connected durations since the last stats report.
    join_samples: Vec<f64>,
    /// The core's only source of randomness (ICE credentials, resume keys), seeded by the shell:
    /// from the OS in production, fixed in tests so simulations are bit-reproducible.
    rng: StdRng,
}

impl WorkerCore {
    /// A core for one worker. `seed` seeds every random choice the core makes (ICE credentials,
    /// resume keys): the shell draws it from the OS; tests fix it.
    pub fn new(cfg: CoreConfig, crypto: SharedCrypto, clock: WallClock, seed: [u8; 32]) -> Self {
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
            timeout_pass: None,
            next_stats: None,
            next_speakers: None,
            work: VecDeque::with_capacity(64),
            out: VecDeque::with_capacity(1024),
            counters: Counters::default(),
            join_samples: Vec::new(),
            rng: StdRng::from_seed(seed),
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

    /// Whether a remote address is bound to a participant (one of its ICE checks was
    /// accepted): the shell closes ICE-TCP connections that never get there.
    pub fn is_bound(&self, remote: &Remote) -> bool {
        self.demux.addr_owner(remote).is_some()
    }

    /// Feed one input. Afterwards drain [`Self::poll_output`] and re-read [`Self::poll_timeout`].
    pub fn handle_input(&mut self, input: Input<'_>) {
        match input {
            Input::Receive {
                now,
                transport,
                source,
                destination,
                data,
            } => self.handle_receive(
                now,
                Remote {
                    transport,
                    addr: source,
                },
                destination,
                data,
            ),
            Input::Timeout(now) => self.handle_timeout(now),
            Input::Command(now, cmd) => self.handle_command(now, cmd),
        }
    }

    /// Next output, `None` when drained. A timeout pass advances here, one due participant at
    /// a time, whenever the queued output runs out.
    pub fn poll_output(&mut self) -> Option<Output> {
        loop {
            if let Some(o) = self.out.pop_front() {
                return Some(o);
            }
            let now = self.timeout_pass?;
            self.timeout_step(now);
        }
    }

    /// Outputs already produced and waiting in the queue (not counting what a timeout pass in
    /// progress will still produce). For tests of how output is interleaved.
    #[doc(hidden)]
    pub fn queued_outputs(&self) -> usize {
        self.out.len()
    }

    /// When the core next needs an [`Input::Timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.timeout_pass.is_some() {
            return self.timeout_pass;
        }
        let timer = self.timers.peek().map(|Reverse((t, _))| *t);
        match (timer, self.next_stats) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

fn unknown(id: &str) -> Reply {
    Reply::error(
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
