//! A participant: one browser (or synthetic peer) with one str0m `Rtc` in RTP mode.
//!
//! Lifecycle (see `docs/architecture.md`):
//! `Join` (offer accepted, answer returned) → ICE + DTLS (`Connected`) → publishes tracks
//! (`MediaAdded` → [`super::track::TrackIn`]) and receives the room's tracks through server
//! offers → removed on `Leave`, inactivity (no datagram for the ICE timeout), DTLS/SCTP close or an
//! `Rtc` error. Removal closes the `Rtc` (DTLS close_notify), drops its tracks and renegotiates every
//! subscriber of them.

use std::collections::VecDeque;
use std::time::Instant;

use crate::messages::{Grants, ParticipantId, RoomId};
use str0m::Rtc;
use str0m::change::SdpPendingOffer;
use str0m::channel::ChannelId;
use str0m::media::Mid;

use super::Remote;
use super::ids::{TrackInIdx, TrackOutIdx};

/// At most this many source addresses are bound per participant (ICE checks from several local
/// candidates); more are ignored.
pub const MAX_ADDRS: usize = 8;

/// Chat messages held for a participant whose `chat` channel is not open yet.
pub const MAX_CHAT_BACKLOG: usize = 64;

/// An outstanding server offer and the track changes it carries.
#[derive(Debug)]
pub struct PendingOffer {
    pub pending: SdpPendingOffer,
    /// The offer as sent, re-sent when a new signaling connection attaches.
    pub sdp: String,
    pub tracks: Vec<TrackOutIdx>,
}

#[derive(Debug)]
pub struct Participant {
    pub id: ParticipantId,
    pub name: String,
    pub room: RoomId,
    pub rtc: Rtc,
    pub ufrag: String,
    /// Remote transport addresses bound to this participant in the demux.
    pub addrs: Vec<Remote>,
    /// A viewer's fixed receive slots (WHEP): it gets no server offers.
    pub slots: Option<super::slots::Slots>,
    pub connected: bool,
    /// The `Rtc` returned an error or panicked; removal is queued.
    pub failed: bool,
    /// The client's first offer has been answered: server offers may follow.
    pub initial_done: bool,
    pub pending: Option<PendingOffer>,
    /// Published tracks by the client's mid.
    pub tracks_in: Vec<(Mid, TrackInIdx)>,
    /// Tracks this participant receives.
    pub tracks_out: Vec<TrackOutIdx>,
    pub chat: Option<ChannelId>,
    pub chat_backlog: VecDeque<Vec<u8>>,
    /// Last datagram received from this participant (or its join time).
    pub last_rx: Instant,
    /// Deadline of this participant's `Rtc` (from `Output::Timeout`).
    pub rtc_deadline: Instant,
    /// RTP was written to its `Rtc` at this time and waits for the release (a time input;
    /// `Rtc::handle_written_rtp` when the `Rtc`'s own deadline is not due).
    pub written_at: Option<Instant>,
    /// Earliest deadline currently in the worker's timer heap for this participant.
    pub scheduled: Option<Instant>,
    pub rtp_in: u64,
    pub rtp_out: u64,
    /// What it may do (publish, subscribe).
    pub grants: Grants,
    /// The join token's identity (returned on `attach`).
    pub identity: Option<String>,
    /// Authorizes `attach` (session resume); handed to signaling in `joined`.
    pub resume_key: String,
    /// Mute state it announced on its chat channel.
    pub media_state: super::chat::MediaState,
    /// When it joined (for the join → connected duration).
    pub joined_at: Instant,
    /// Last cumulative NACK count per outgoing m-line (str0m egress stats).
    pub egress_nacks: Vec<(Mid, u64)>,
    /// Chat messages it may still send now (per-sender rate limit).
    pub chat_allowance: Allowance,
    /// Its last chat message was refused by the rate limit (it was told once).
    pub chat_limited: bool,
    /// Video hints it may still send now (`hints.rs`).
    pub hint_allowance: Allowance,
    /// Latest egress bandwidth estimate toward it (bits per second), if BWE is on.
    pub bwe_bps: Option<u64>,
    /// The desired rate last given to its estimator (`bwe().set_bitrate`), and when.
    pub bwe_desired: u64,
    pub bwe_probe_at: Option<Instant>,
    /// Bits per second added to the desired rate to make str0m probe again (`allocation.rs`),
    /// and the current interval between such probes.
    pub bwe_nudge: u64,
    pub bwe_probe_interval: std::time::Duration,
}

/// A token bucket driven by the caller's clock (the core never reads one).
#[derive(Debug, Clone, Copy)]
pub struct Allowance {
    tokens: Option<f64>,
    at: Instant,
}

impl Allowance {
    pub fn new(now: Instant) -> Self {
        Self {
            tokens: None,
            at: now,
        }
    }

    /// Take one token at `now` from a bucket of `burst` refilled at `rate` per second.
    pub fn try_take(&mut self, now: Instant, rate: f64, burst: f64) -> bool {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        let tokens = self.tokens.map_or(burst, |t| (t + dt * rate).min(burst));
        self.at = now;
        if tokens >= 1.0 {
            self.tokens = Some(tokens - 1.0);
            true
        } else {
            self.tokens = Some(tokens);
            false
        }
    }
}

impl Participant {
    pub fn new(
        id: ParticipantId,
        name: String,
        room: RoomId,
        rtc: Rtc,
        ufrag: String,
        resume_key: String,
        now: Instant,
    ) -> Self {
        Self {
            id,
            name,
            room,
            rtc,
            ufrag,
            addrs: Vec::new(),
            slots: None,
            connected: false,
            failed: false,
            initial_done: false,
            pending: None,
            tracks_in: Vec::new(),
            tracks_out: Vec::new(),
            chat: None,
            chat_backlog: VecDeque::new(),
            last_rx: now,
            rtc_deadline: now,
            written_at: None,
            scheduled: None,
            rtp_in: 0,
            rtp_out: 0,
            grants: Grants::default(),
            identity: None,
            resume_key,
            media_state: super::chat::MediaState::default(),
            joined_at: now,
            egress_nacks: Vec::new(),
            chat_allowance: Allowance::new(now),
            chat_limited: false,
            hint_allowance: Allowance::new(now),
            bwe_bps: None,
            bwe_desired: 0,
            bwe_probe_at: None,
            bwe_nudge: 0,
            bwe_probe_interval: super::allocation::PROBE_INTERVAL,
        }
    }

    /// The published track with client mid `mid`.
    pub fn track_in(&self, mid: Mid) -> Option<TrackInIdx> {
        self.tracks_in
            .iter()
            .find(|(m, _)| *m == mid)
            .map(|(_, t)| *t)
    }
}
