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
//! Layout: the interface types in `api.rs`; control requests (join, attach, offers, answers) in
//! `requests.rs`; the per-packet forwarding path and queued work in `forward.rs`; server-side
//! renegotiation in `negotiation.rs`; chat relay in `chat_relay.rs` (message validation in
//! `chat.rs`); receive, timeouts, `Rtc` draining, removal and stats here.
//!
//! Panic policy: nothing from the network or the control socket may panic. A bad datagram is
//! dropped and counted by [`DropReason`]; an `Rtc` that errors (or panics) closes that participant
//! only.

mod api;
mod chat;
mod chat_relay;
mod demux;
mod forward;
mod guard;
mod ids;
mod invariants;
mod munger;
mod negotiation;
mod participant;
mod requests;
mod track;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use control::{
    ErrorCode, Event as CtlEvent, LeaveReason, ParticipantStats, Response, RoomStats, WorkerStats,
};
use rand::SeedableRng;
use rand::rngs::StdRng;
use slab::Slab;
use str0m::Output as RtcOutput;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpPacket;
use str0m::{Event as RtcEvent, Input as RtcInput};
use tracing::{debug, info, trace, warn};

pub use api::{
    Command, CoreConfig, Counters, DropReason, Input, Op, Output, Report, SharedCrypto, Transmit,
    WallClock,
};
pub use chat::{
    ChannelRequest, ChatDelivery, ChatError, ChatRequest, MAX_RAW_MESSAGE, MediaState,
    parse_request,
};
pub use demux::{Demux, PacketClass, RouteError, classify};
pub use guard::{clean_error, guard, media_sections};
pub use ids::{ParticipantIdx, TrackInIdx, TrackOutIdx};
pub use munger::RtpMunger;
use participant::{MAX_ADDRS, Participant};
use track::{OutState, TrackIn, TrackOut};

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
            next_stats: None,
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

    // ---------------------------------------------------------------------------------------
    // Forwarding

    // ---------------------------------------------------------------------------------------
    // Subscriptions and negotiation

    // ---------------------------------------------------------------------------------------
    // Chat

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
