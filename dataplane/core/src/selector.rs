//! Simulcast layer selection for one subscriber.
//!
//! [`allocate`] splits a subscriber's bandwidth estimate across the simulcast tracks it receives
//! (in priority order: the active speaker's video first); a [`LayerSelector`] per (subscriber,
//! track) turns the allocator's wish into what is forwarded:
//! - down (or off) at once, up only once the higher layer has fitted for a hold time (an estimate
//!   that flaps does not make the picture flap);
//! - a switch takes effect only on the first packet of a keyframe of the target layer: until it
//!   arrives the old layer keeps flowing, so the decoder never sees a frame it cannot decode.
//!
//! Pure logic (no clock, no `Rtc`): the forwarding path and the allocation tick call it with the
//! time and the measurements.

use std::time::{Duration, Instant};

use super::layers::MAX_LAYERS;

/// What the forwarder does with one packet of one layer for one subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Forward,
    /// Forward: it is the keyframe the pending switch waited for (the stream changes source).
    Switch,
    Drop,
}

#[derive(Debug, Clone, Default)]
pub struct LayerSelector {
    /// The layer being forwarded; `None` before the first keyframe and while off.
    current: Option<u8>,
    /// The layer wanted; `None` = nothing (the tile is not shown, or nothing was allocated yet).
    target: Option<u8>,
    /// Since when the allocator has wanted a layer above `target` (the up hold).
    up_since: Option<Instant>,
    /// The allocator has decided at least once.
    allocated: bool,
    /// Layer switches done (keyframes switched on), for tests and stats.
    pub switches: u64,
}

impl LayerSelector {
    pub fn current(&self) -> Option<u8> {
        self.current
    }

    pub fn target(&self) -> Option<u8> {
        self.target
    }

    pub fn allocated(&self) -> bool {
        self.allocated
    }

    /// A switch waits for a keyframe of [`Self::target`].
    pub fn switching(&self) -> bool {
        self.target.is_some() && self.target != self.current
    }

    /// One packet of `layer`; `keyframe` tells (lazily) whether it starts a keyframe.
    pub fn accept(&mut self, layer: u8, keyframe: impl FnOnce() -> bool) -> Verdict {
        let Some(target) = self.target else {
            return Verdict::Drop;
        };
        if self.current == Some(layer) {
            // Also while a switch away waits for its keyframe.
            return Verdict::Forward;
        }
        if layer == target && keyframe() {
            self.current = Some(layer);
            self.switches += 1;
            return Verdict::Switch;
        }
        Verdict::Drop
    }

    /// The allocator wants `want` at `now`: adopted at once when lower (or off, or nothing is
    /// flowing yet), after `hold` of wanting it when higher. Returns whether the target changed.
    pub fn propose(&mut self, want: Option<u8>, now: Instant, hold: Duration) -> bool {
        self.allocated = true;
        let adopt = match (want, self.target) {
            (w, t) if w == t => {
                self.up_since = None;
                return false;
            }
            // Going up from something that flows: only once it held.
            (Some(w), Some(t)) if w > t && self.current.is_some() => {
                let since = *self.up_since.get_or_insert(now);
                now.saturating_duration_since(since) >= hold
            }
            _ => true,
        };
        if !adopt {
            return false;
        }
        self.up_since = None;
        self.target = want;
        if want.is_none() {
            // Off: the next start needs a keyframe again.
            self.current = None;
        }
        true
    }
}

/// What one track offers and may use, for [`allocate`].
#[derive(Debug, Clone, Copy, Default)]
pub struct TrackNeed {
    /// Bitrate of each layer the publisher currently sends (lowest first; the caller puts a
    /// nominal rate for a layer not measured yet); `None` for a layer that is off.
    pub layers: [Option<u64>; MAX_LAYERS],
    /// Highest layer worth sending (the subscriber's tile size); `None` sends nothing.
    pub max_layer: Option<u8>,
}

impl TrackNeed {
    fn lowest(&self) -> Option<u8> {
        let max = self.max_layer?;
        (0..=max).find(|&l| self.layers.get(usize::from(l)).copied().flatten().is_some())
    }

    /// The best layer this track could get (what the allocation compares with).
    pub fn highest_layer(&self) -> Option<u8> {
        self.highest()
    }

    fn highest(&self) -> Option<u8> {
        let max = self.max_layer?;
        (0..=max)
            .rev()
            .find(|&l| self.layers.get(usize::from(l)).copied().flatten().is_some())
    }

    fn rate(&self, layer: u8) -> u64 {
        self.layers
            .get(usize::from(layer))
            .copied()
            .flatten()
            .unwrap_or(0)
    }
}

/// The layer for each track (same order as `needs`, which is the priority order) within
/// `budget` bits per second (`None`: no estimate, the best each may use).
///
/// Every visible track gets at least its lowest running layer — a subscriber on a bad link keeps a
/// moving (small) picture of everyone rather than a frozen one — then, in priority order, each is
/// raised to the highest layer that still fits what is left.
pub fn allocate(budget: Option<u64>, needs: &[TrackNeed]) -> Vec<Option<u8>> {
    let Some(budget) = budget else {
        return needs.iter().map(TrackNeed::highest).collect();
    };
    let mut chosen: Vec<Option<u8>> = needs.iter().map(TrackNeed::lowest).collect();
    let mut left = budget.saturating_sub(
        needs
            .iter()
            .zip(&chosen)
            .map(|(n, c)| c.map_or(0, |l| n.rate(l)))
            .sum(),
    );
    for (need, choice) in needs.iter().zip(chosen.iter_mut()) {
        let (Some(low), Some(high)) = (*choice, need.highest()) else {
            continue;
        };
        let base = need.rate(low);
        if let Some(up) = (low + 1..=high).rev().find(|&l| {
            need.layers[usize::from(l)].is_some() && need.rate(l).saturating_sub(base) <= left
        }) {
            left -= need.rate(up).saturating_sub(base);
            *choice = Some(up);
        }
    }
    chosen
}

/// The rate a subscriber would need for the next step up: every track held below its best one
/// layer higher, the others as chosen (what the estimator probes toward — one step at a time,
/// so a probe on a link that cannot carry the best layers does not flood it).
pub fn next_step(needs: &[TrackNeed], chosen: &[Option<u8>]) -> u64 {
    needs
        .iter()
        .zip(chosen)
        .map(|(n, c)| {
            let Some(c) = *c else { return 0 };
            let up = n.highest().filter(|&h| h > c).and_then(|h| {
                (c + 1..=h).find(|&l| n.layers.get(usize::from(l)).copied().flatten().is_some())
            });
            n.rate(up.unwrap_or(c))
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn need(rates: &[Option<u64>]) -> TrackNeed {
        let mut layers = [None; MAX_LAYERS];
        layers[..rates.len()].copy_from_slice(rates);
        TrackNeed {
            layers,
            max_layer: Some(MAX_LAYERS as u8 - 1),
        }
    }

    const QHF: [Option<u64>; 3] = [Some(150_000), Some(500_000), Some(1_500_000)];

    #[test]
    fn the_budget_buys_the_highest_layer_that_fits_in_priority_order() {
        let needs = [need(&QHF), need(&QHF)];
        assert_eq!(allocate(None, &needs), vec![Some(2), Some(2)]);
        assert_eq!(allocate(Some(10_000_000), &needs), vec![Some(2), Some(2)]);
        // The first gets full, the second what is left.
        assert_eq!(allocate(Some(2_000_000), &needs), vec![Some(2), Some(1)]);
        assert_eq!(allocate(Some(1_900_000), &needs), vec![Some(2), Some(0)]);
        assert_eq!(allocate(Some(1_000_000), &needs), vec![Some(1), Some(1)]);
        // Below the sum of the lowest layers: everyone still gets the lowest.
        assert_eq!(allocate(Some(100_000), &needs), vec![Some(0), Some(0)]);
        // Probing one step up: the first from h to f, the second from q to h.
        assert_eq!(next_step(&needs, &[Some(1), Some(0)]), 2_000_000);
        assert_eq!(next_step(&needs, &[Some(2), Some(2)]), 3_000_000);
        assert_eq!(next_step(&needs, &[None, Some(2)]), 1_500_000);
    }

    #[test]
    fn layers_that_are_off_or_above_the_tile_are_never_chosen() {
        let mut n = need(&[Some(150_000), None, Some(1_500_000)]);
        assert_eq!(allocate(Some(800_000), &[n]), vec![Some(0)], "half is off");
        n.max_layer = Some(1);
        assert_eq!(
            allocate(None, &[n]),
            vec![Some(0)],
            "full is above the tile"
        );
        n.max_layer = None;
        assert_eq!(allocate(None, &[n]), vec![None], "hidden tile");
        assert_eq!(allocate(Some(1), &[need(&[None, None])]), vec![None]);
    }

    #[test]
    fn down_at_once_up_after_the_hold_switch_on_keyframes_only() {
        #[allow(clippy::disallowed_methods)] // a test's origin of virtual time
        let t0 = Instant::now();
        let hold = Duration::from_secs(2);
        let mut s = LayerSelector::default();
        assert_eq!(s.accept(0, || true), Verdict::Drop, "nothing allocated yet");
        // The first choice is taken at once, and starts on a keyframe of that layer.
        assert!(s.propose(Some(2), t0, hold));
        assert_eq!(s.accept(2, || false), Verdict::Drop);
        assert_eq!(s.accept(1, || true), Verdict::Drop, "not the target layer");
        assert_eq!(s.accept(2, || true), Verdict::Switch);
        assert_eq!(s.accept(2, || false), Verdict::Forward);
        // Down: at once, but the old layer flows until the new one's keyframe.
        assert!(s.propose(Some(0), t0, hold));
        assert!(s.switching());
        assert_eq!(s.accept(2, || false), Verdict::Forward);
        assert_eq!(s.accept(0, || false), Verdict::Drop);
        assert_eq!(s.accept(0, || true), Verdict::Switch);
        assert_eq!(s.accept(2, || true), Verdict::Drop, "old layer no longer");
        // Up: only after it has been wanted for the hold.
        assert!(!s.propose(Some(2), t0 + Duration::from_secs(1), hold));
        assert!(!s.propose(Some(2), t0 + Duration::from_millis(2500), hold));
        assert_eq!(s.target(), Some(0));
        assert!(s.propose(Some(2), t0 + Duration::from_millis(3000), hold));
        assert_eq!(s.target(), Some(2));
        // An interrupted wish restarts the hold (and a switch back to the layer still
        // flowing needs no keyframe).
        let mut s2 = s.clone();
        assert!(s2.propose(Some(0), t0 + Duration::from_secs(4), hold));
        assert!(!s2.switching());
        assert_eq!(s2.accept(0, || false), Verdict::Forward);
        assert!(!s2.propose(Some(1), t0 + Duration::from_secs(5), hold));
        assert!(!s2.propose(Some(0), t0 + Duration::from_secs(6), hold));
        assert!(!s2.propose(Some(1), t0 + Duration::from_secs(7), hold));
        assert_eq!(s2.target(), Some(0));
        // Off drops everything and needs a keyframe to start again.
        assert!(s.propose(None, t0 + Duration::from_secs(9), hold));
        assert_eq!(s.accept(2, || false), Verdict::Drop);
        assert!(s.propose(Some(1), t0 + Duration::from_secs(9), hold));
        assert_eq!(s.accept(1, || false), Verdict::Drop);
        assert_eq!(s.accept(1, || true), Verdict::Switch);
        assert_eq!(s.switches, 3);
    }
}
