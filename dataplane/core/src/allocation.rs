//! Per-subscriber bandwidth allocation: the subscriber's egress estimate (str0m's TWCC/GCC
//! estimator, `Event::EgressBitrateEstimate`) is split across the simulcast tracks it receives
//! (`selector::allocate`), each track's [`super::selector::LayerSelector`] is told its layer, a
//! keyframe of a layer being switched to is requested, and the estimator is told how much the
//! subscriber could use so it probes toward it.
//!
//! Runs when an estimate arrives, when a subscription opens or connects, and on every stats
//! tick (layers a publisher switched on or off).

use std::time::{Duration, Instant};

use str0m::bwe::Bitrate;
use str0m::media::MediaKind;

use super::hints::layer_for_height;
use super::layers::MAX_LAYERS;
use super::selector::{TrackNeed, allocate, next_step};
use super::track::OutState;
use super::{ParticipantIdx, TrackInIdx, TrackOutIdx, Work, WorkerCore};

/// Share of the estimate given to media (the rest absorbs estimate error and RTX).
const HEADROOM_PERCENT: u64 = 90;

/// Rates assumed for a layer that is on but not measured yet (first half second), lowest
/// first: typical of 180p / 360p / 720p camera video.
const NOMINAL_BPS: [u64; MAX_LAYERS] = [150_000, 500_000, 1_500_000, 2_500_000];

/// The estimator is re-told the desired rate only when it moved by more than this share.
const DESIRED_CHANGE_PERCENT: u64 = 10;

/// How often a subscriber held below its best layers asks its estimator for another probe, at
/// first; doubled after each probe that did not lift it, up to [`MAX_PROBE_INTERVAL`].
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);
const MAX_PROBE_INTERVAL: Duration = Duration::from_secs(16);

impl WorkerCore {
    /// Re-run the allocation of every participant (the periodic tick).
    pub(super) fn allocate_all(&mut self) {
        for (i, p) in self.participants.iter() {
            if !p.tracks_out.is_empty() {
                self.work.push_back(Work::Allocate(ParticipantIdx(i)));
            }
        }
    }

    /// Choose the layer of every simulcast track `sub` receives. See the module docs.
    pub(super) fn allocate(&mut self, sub: ParticipantIdx, now: Instant) {
        let Some(p) = self.participants.get(sub.0) else {
            return;
        };
        // What the tracks without layers take, and the simulcast ones in priority order.
        let mut fixed = 0u64;
        let mut chosen: Vec<(TrackOutIdx, TrackInIdx)> = Vec::new();
        let mut needs: Vec<TrackNeed> = Vec::new();
        // Single-layer videos whose tile is hidden (or shown again): forwarded or not.
        let mut gated: Vec<(TrackOutIdx, TrackInIdx, bool)> = Vec::new();
        for to in &p.tracks_out {
            let Some(t) = self.tracks_out.get(to.0) else {
                continue;
            };
            let (OutState::Open(_), Some(ti)) = (t.state, t.source) else {
                continue;
            };
            let Some(tin) = self.tracks_in.get(ti.0) else {
                continue;
            };
            let visible = t.hint.is_none_or(|h| h.visible);
            if !tin.simulcast() {
                // The selector takes over a single-layer video once its tile is hidden (a
                // visible tile's video just flows on).
                if t.kind == MediaKind::Video && (!visible || t.selector.allocated()) {
                    gated.push((*to, ti, visible));
                }
                if visible {
                    fixed += tin
                        .layers
                        .iter()
                        .filter(|l| l.active(now))
                        .filter_map(|l| l.rate.bps())
                        .sum::<u64>();
                }
                continue;
            }
            let top = (tin.layers.len().min(MAX_LAYERS) - 1) as u8;
            let mut need = TrackNeed {
                max_layer: match t.hint {
                    Some(h) if !h.visible => None,
                    Some(h) => Some(layer_for_height(&tin.layers, h.height).min(top)),
                    None => Some(top),
                },
                ..TrackNeed::default()
            };
            for (i, l) in tin.layers.iter().enumerate().take(MAX_LAYERS) {
                need.layers[i] = l
                    .available(now)
                    .then(|| l.rate.bps().unwrap_or(NOMINAL_BPS[i]));
            }
            needs.push(need);
            chosen.push((*to, ti));
        }
        let estimate = p.bwe_bps;
        let hold = self.cfg.layer_up_hold;
        for (to, ti, visible) in gated {
            if let Some(t) = self.tracks_out.get_mut(to.0)
                && t.selector.propose(visible.then_some(0), now, hold)
                && visible
            {
                // Shown again: forwarding resumes on the next keyframe.
                self.request_keyframe(ti, 0, now, true);
            }
        }
        if chosen.is_empty() {
            return;
        }
        // The loudest speaker's video first (a stable sort keeps the others' order).
        if let Some(speaker) = self.top_speaker(sub) {
            let mut order: Vec<usize> = (0..chosen.len()).collect();
            order.sort_by_key(|&i| {
                self.tracks_in
                    .get(chosen[i].1.0)
                    .is_none_or(|t| t.publisher != speaker)
            });
            chosen = order.iter().map(|&i| chosen[i]).collect();
            needs = order.iter().map(|&i| needs[i]).collect();
        }
        let budget = estimate.map(|e| (e * HEADROOM_PERCENT / 100).saturating_sub(fixed));
        let layers = allocate(budget, &needs);
        let mut keyframes: Vec<(TrackInIdx, u8)> = Vec::new();
        for ((to, ti), want) in chosen.iter().zip(layers.iter().copied()) {
            let Some(t) = self.tracks_out.get_mut(to.0) else {
                continue;
            };
            t.selector.propose(want, now, hold);
            if t.selector.switching()
                && t.kind == MediaKind::Video
                && let Some(target) = t.selector.target()
            {
                keyframes.push((*ti, target));
            }
        }
        // Probe toward the next step up: str0m probes when the desired rate rises above its
        // estimate, not when it is repeated. While a track is held below its best layer the
        // desired rate is nudged up by one more bit per second after each probe interval, so a
        // link that recovered is found by a probe instead of the estimator's slow climb; the
        // interval doubles (2 s … 16 s) while the probes find nothing, so a link that really is
        // slow is not flooded every 2 s.
        let want = next_step(&needs, &layers) + fixed;
        let limited = needs
            .iter()
            .zip(&layers)
            .any(|(n, l)| *l < n.highest_layer());
        let mut drain = false;
        if estimate.is_some()
            && let Some(p) = self.participants.get_mut(sub.0)
        {
            let base = p.bwe_desired.saturating_sub(p.bwe_nudge);
            let moved = want.abs_diff(base) * 100 > base * DESIRED_CHANGE_PERCENT;
            if !limited {
                p.bwe_probe_interval = PROBE_INTERVAL;
            }
            let reprobe = limited
                && p.bwe_probe_at
                    .is_none_or(|t| now >= t + p.bwe_probe_interval);
            if reprobe && !moved {
                p.bwe_probe_interval = (p.bwe_probe_interval * 2).min(MAX_PROBE_INTERVAL);
            }
            if moved || reprobe {
                p.bwe_nudge = if moved { 0 } else { p.bwe_nudge + 1 };
                p.bwe_desired = want + p.bwe_nudge;
                p.bwe_probe_at = Some(now);
                p.rtc
                    .bwe()
                    .set_bitrate(Bitrate::ZERO, Bitrate::bps(p.bwe_desired));
                drain = true;
            }
        }
        if drain {
            self.drain(sub, now);
        }
        // A switch waits for a keyframe of its target: ask (throttled per layer, not deferred —
        // the next allocation asks again while the switch still waits).
        for (ti, layer) in keyframes {
            self.request_keyframe(ti, layer, now, false);
        }
        // Layers nobody needs any more (or needed again) are switched at their publisher.
        for (_, ti) in chosen {
            self.dynacast(ti, now);
        }
    }
}
