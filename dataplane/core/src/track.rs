//! Tracks: [`TrackIn`] is one published track (publisher → SFU), [`TrackOut`] is that track sent
//! to one subscriber.
//!
//! `TrackOut` lifecycle: `ToOpen` (waiting for a server offer) → `Negotiating(mid)` (offer sent)
//! → `Open(mid)` (answer accepted; packets flow) → `ToClose(mid)` (publisher left) →
//! `Closing(mid)` (offer with the m-line stopped sent) → removed once answered. A rollback (glare)
//! returns `Negotiating` to `ToOpen`.

use crate::messages::ParticipantId;
use std::time::Instant;

use str0m::format::Codec;
use str0m::media::{MediaKind, Mid, Pt, Rid};

use super::ids::{ParticipantIdx, TrackInIdx, TrackOutIdx};
use super::layers::LayerIn;
use super::munger::{RtpMunger, Vp8Munger};
use super::selector::LayerSelector;
use super::speakers::AudioLevel;

#[derive(Debug)]
pub struct TrackIn {
    pub publisher: ParticipantIdx,
    pub mid: Mid,
    pub kind: MediaKind,
    pub subscribers: Vec<TrackOutIdx>,
    /// One per simulcast encoding, lowest quality first; a single layer (rid `None`) without
    /// simulcast. Never empty.
    pub layers: Vec<LayerIn>,
    /// Publisher payload type → codec (cached lookups; `None`: not a codec we know).
    pub codecs: Vec<(Pt, Option<Codec>)>,
    /// Smoothed audio level (audio tracks that carry the RFC 6464 extension).
    pub audio: AudioLevel,
}

impl TrackIn {
    pub fn new(publisher: ParticipantIdx, mid: Mid, kind: MediaKind, rids: Vec<Rid>) -> Self {
        let layers = if rids.len() > 1 {
            rids.into_iter().map(|r| LayerIn::new(Some(r))).collect()
        } else {
            // One declared rid is not simulcast: keep the single layer, whatever its rid.
            vec![LayerIn::new(rids.into_iter().next())]
        };
        Self {
            publisher,
            mid,
            kind,
            subscribers: Vec::new(),
            layers,
            codecs: Vec::new(),
            audio: AudioLevel::default(),
        }
    }

    /// Sent as several simulcast layers (each subscriber gets one of them).
    pub fn simulcast(&self) -> bool {
        self.layers.len() > 1
    }

    /// The layer index of an incoming stream's rid (`None`: an undeclared rid).
    pub fn layer_of(&self, rid: Option<Rid>) -> Option<u8> {
        if !self.simulcast() {
            return Some(0);
        }
        let rid = rid?;
        self.layers
            .iter()
            .position(|l| l.rid == Some(rid))
            .map(|i| i as u8)
    }
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
    /// Which simulcast layer is forwarded (unused for a track without simulcast).
    pub selector: LayerSelector,
    /// VP8 picture id / TL0PICIDX continuity across layer switches.
    pub vp8: Vp8Munger,
    /// What the subscriber's page last said about the tile showing this video (`None`: nothing
    /// said, no limit).
    pub hint: Option<TileHint>,
}

/// A subscriber's tile for one remote video: how many device pixels high it is drawn, and whether
/// it is visible at all (a hidden tab, a tile scrolled away).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileHint {
    pub height: u32,
    pub visible: bool,
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
            selector: LayerSelector::default(),
            vp8: Vp8Munger::default(),
            hint: None,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packet_maps_to_its_declared_layer_only() {
        let rids = ["q", "h", "f"].map(Rid::from).to_vec();
        let t = TrackIn::new(ParticipantIdx(0), Mid::from("1"), MediaKind::Video, rids);
        assert!(t.simulcast());
        assert_eq!(t.layer_of(Some(Rid::from("q"))), Some(0));
        assert_eq!(t.layer_of(Some(Rid::from("f"))), Some(2));
        // A rid not declared (or beyond the layers kept), or none at all on a simulcast track.
        assert_eq!(t.layer_of(Some(Rid::from("x"))), None);
        assert_eq!(t.layer_of(None), None);
        // One declared rid is no simulcast: everything is its single layer.
        let one = TrackIn::new(
            ParticipantIdx(0),
            Mid::from("2"),
            MediaKind::Video,
            vec![Rid::from("q")],
        );
        assert!(!one.simulcast());
        assert_eq!(one.layer_of(Some(Rid::from("zz"))), Some(0));
        assert_eq!(one.layer_of(None), Some(0));
    }
}
