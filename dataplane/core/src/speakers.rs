//! Active speakers: the audio level every publisher's packets carry (RFC 6464 header extension,
//! read on ingress, never decoded), smoothed per audio track (fast attack, slower release; speech
//! held 1.5 s through pauses),
//! ranked per room, and sent to the
//! room's pages over their chat DataChannel as `{"type":"active_speakers","speakers":[ids]}`
//! (loudest first) — only when the ranking changed, at most every [`SPEAKER_INTERVAL`] per
//! worker. The allocation gives the loudest speaker's video the first share of each
//! subscriber's bandwidth.

use std::time::{Duration, Instant};

use serde_json::json;

use slab::Slab;

use super::participant::Participant;
use super::{ParticipantIdx, RoomId, TrackInIdx, Work, WorkerCore};

/// How often the rooms' rankings are recomputed (and at most sent).
pub const SPEAKER_INTERVAL: Duration = Duration::from_millis(300);

/// A smoothed level above this (dBov) is speech.
const SPEAKING_DBOV: f32 = -50.0;

/// Audio older than this does not count (muted, left, or DTX silence).
const LEVEL_STALE: Duration = Duration::from_secs(1);

/// Speakers listed per room.
const MAX_SPEAKERS: usize = 3;

/// Weight of a new level in the moving average when it is louder than the average (attack: at
/// 50 packets/s a sound of ~60 ms at speech level already counts, so the onset of a word or a
/// short sound is not averaged away) and when it is quieter (release, ≈ 100 ms time constant:
/// the pauses inside speech do not end it).
const ATTACK: f32 = 0.35;
const RELEASE: f32 = 0.2;

/// A speaker stays one this long after its level last rose above [`SPEAKING_DBOV`] (the pauses
/// between words and sentences).
const SPEAKING_HOLD: Duration = Duration::from_millis(1500);

/// A track's smoothed audio level.
#[derive(Debug, Clone, Copy, Default)]
pub struct AudioLevel {
    /// Smoothed level, dBov (−127 silence … 0 loudest).
    pub dbov: Option<f32>,
    pub at: Option<Instant>,
    /// When the smoothed level was last above the speech threshold, and the loudest it reached
    /// since it rose above it (what speakers are ranked by).
    pub loud_at: Option<Instant>,
    pub loud_dbov: f32,
}

impl AudioLevel {
    /// One packet's level: the extension's −dBov value; anything outside −127…0 (a sender
    /// writing absurd values) is clamped.
    pub fn record(&mut self, now: Instant, level: i8) {
        let l = f32::from(level).clamp(-127.0, 0.0);
        let d = self.dbov.map_or(l, |d| {
            let weight = if l > d { ATTACK } else { RELEASE };
            d + weight * (l - d)
        });
        self.dbov = Some(d);
        self.at = Some(now);
        if d > SPEAKING_DBOV {
            let held = self.speaking(now).is_some();
            self.loud_dbov = if held { self.loud_dbov.max(d) } else { d };
            self.loud_at = Some(now);
        }
    }

    /// How loud it speaks, if it spoke within the hold and its audio is current at `now`.
    pub fn speaking(&self, now: Instant) -> Option<f32> {
        let fresh = self
            .at
            .is_some_and(|t| now.saturating_duration_since(t) < LEVEL_STALE);
        let held = self
            .loud_at
            .is_some_and(|t| now.saturating_duration_since(t) < SPEAKING_HOLD);
        (fresh && held).then_some(self.loud_dbov)
    }
}

impl WorkerCore {
    /// An audio packet's level for track `ti`; the rooms are re-ranked (queued work: this runs
    /// while the publisher's `Rtc` is drained) when the interval has passed.
    pub(super) fn audio_level(&mut self, ti: TrackInIdx, level: i8, now: Instant) {
        if let Some(t) = self.tracks_in.get_mut(ti.0) {
            t.audio.record(now, level);
        }
        if self.next_speakers.is_none_or(|t| now >= t) {
            self.next_speakers = Some(now + SPEAKER_INTERVAL);
            self.work.push_back(Work::Speakers);
        }
    }

    /// Recompute every room's ranking; tell a room's participants when it changed.
    pub(super) fn rank_speakers(&mut self, now: Instant) {
        let mut changed: Vec<(Vec<ParticipantIdx>, Vec<u8>)> = Vec::new();
        for room in self.rooms.values_mut() {
            let mut ranked: Vec<(f32, ParticipantIdx)> = Vec::new();
            for &idx in &room.participants {
                let Some(p) = self.participants.get(idx.0) else {
                    continue;
                };
                // Muted participants are never speakers, whatever their packets say.
                if p.media_state.audio_muted {
                    continue;
                }
                let loudest = p
                    .tracks_in
                    .iter()
                    .filter_map(|(_, ti)| self.tracks_in.get(ti.0))
                    .filter_map(|t| t.audio.speaking(now))
                    .fold(None, |m: Option<f32>, l| Some(m.map_or(l, |m| m.max(l))));
                if let Some(l) = loudest {
                    ranked.push((l, idx));
                }
            }
            ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
            ranked.truncate(MAX_SPEAKERS);
            let speakers: Vec<ParticipantIdx> = ranked.into_iter().map(|(_, i)| i).collect();
            if speakers == room.speakers {
                continue;
            }
            room.speakers = speakers;
            let msg = speakers_message(&self.participants, &room.speakers);
            changed.push((room.participants.clone(), msg));
        }
        for (members, msg) in changed {
            for m in members {
                // Not kept for a channel that is not open yet: the next change is news enough.
                if self.participants.get(m.0).is_some_and(|p| p.chat.is_some()) {
                    self.send_chat(m, &msg);
                    self.drain(m, now);
                }
            }
        }
    }

    /// The room's current speakers for a participant whose channel just opened (`None`: none).
    pub(super) fn current_speakers(&self, room: &RoomId) -> Option<Vec<u8>> {
        let r = self.rooms.get(room)?;
        (!r.speakers.is_empty()).then(|| speakers_message(&self.participants, &r.speakers))
    }

    /// The loudest current speaker of `idx`'s room, if any.
    pub(super) fn top_speaker(&self, idx: ParticipantIdx) -> Option<ParticipantIdx> {
        let p = self.participants.get(idx.0)?;
        self.rooms.get(&p.room)?.speakers.first().copied()
    }
}

/// `{"type":"active_speakers","speakers":[ids]}`.
fn speakers_message(participants: &Slab<Participant>, speakers: &[ParticipantIdx]) -> Vec<u8> {
    let ids: Vec<&str> = speakers
        .iter()
        .filter_map(|i| participants.get(i.0))
        .map(|p| p.id.as_str())
        .collect();
    json!({"type": "active_speakers", "speakers": ids})
        .to_string()
        .into_bytes()
}
