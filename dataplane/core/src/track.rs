//! Tracks: [`TrackIn`] is one published track (publisher → SFU), [`TrackOut`] is that track sent
//! to one subscriber.
//!
//! `TrackOut` lifecycle: `ToOpen` (waiting for a server offer) → `Negotiating(mid)` (offer sent)
//! → `Open(mid)` (answer accepted; packets flow) → `ToClose(mid)` (publisher left) →
//! `Closing(mid)` (offer with the m-line stopped sent) → removed once answered. A rollback (glare)
//! returns `Negotiating` to `ToOpen`.

use crate::messages::ParticipantId;
use std::time::Instant;

use str0m::media::{MediaKind, Mid, Pt};

use super::ids::{ParticipantIdx, TrackInIdx, TrackOutIdx};
use super::munger::RtpMunger;

#[derive(Debug)]
pub struct TrackIn {
    pub publisher: ParticipantIdx,
    pub mid: Mid,
    pub kind: MediaKind,
    pub subscribers: Vec<TrackOutIdx>,
    /// Last keyframe request sent to the publisher for this track.
    pub last_keyframe_request: Option<Instant>,
    /// A keyframe request was throttled and must be sent when the interval has passed.
    pub keyframe_pending: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutState {
    ToOpen,
    Negotiating(Mid),
    Open(Mid),
    ToClose(Mid),
    Closing(Mid),
}

#[derive(Debug)]
pub struct TrackOut {
    pub subscriber: ParticipantIdx,
    /// The published track; `None` once its publisher left.
    pub source: Option<TrackInIdx>,
    /// Publisher participant id (the SDP stream id the subscriber sees).
    pub publisher_id: ParticipantId,
    pub kind: MediaKind,
    pub state: OutState,
    pub munger: RtpMunger,
    /// Publisher PT → subscriber PT (`None`: the subscriber did not negotiate that codec).
    pub pt_map: Vec<(Pt, Option<Pt>)>,
    /// Arrival time of the last forwarded packet (for timestamp continuity on source switches).
    pub last_arrival: Option<Instant>,
    /// Request a keyframe as soon as the subscriber is connected.
    pub wants_keyframe: bool,
}

impl TrackOut {
    pub fn new(
        subscriber: ParticipantIdx,
        source: TrackInIdx,
        publisher_id: ParticipantId,
        kind: MediaKind,
    ) -> Self {
        Self {
            subscriber,
            source: Some(source),
            publisher_id,
            kind,
            state: OutState::ToOpen,
            munger: RtpMunger::default(),
            pt_map: Vec::new(),
            last_arrival: None,
            wants_keyframe: false,
        }
    }

    /// The subscriber-side mid once one is assigned.
    pub fn mid(&self) -> Option<Mid> {
        match self.state {
            OutState::ToOpen => None,
            OutState::Negotiating(m)
            | OutState::Open(m)
            | OutState::ToClose(m)
            | OutState::Closing(m) => Some(m),
        }
    }
}
