//! Subscriber hints (adaptive stream): a page tells the SFU how high it draws each remote video and
//! whether it is visible at all (`{"type":"video_hint",...}` on its chat channel). A simulcast
//! track is never sent above the layer the tile needs; an invisible tile gets no video at all
//! (with or without simulcast: forwarding resumes on a keyframe when it shows again).

use std::time::Instant;

use str0m::media::MediaKind;
use tracing::debug;

use super::layers::LayerIn;
use super::track::TileHint;
use super::{ParticipantIdx, VideoHint, Work, WorkerCore};

/// Hints per second that re-run a participant's allocation at once, sustained (bursts of
/// [`HINT_BURST`]); beyond that a hint is still recorded but waits for the periodic allocation
/// (1 s). A page sends one per tile when it resizes, scrolls or hides.
const HINT_RATE: f64 = 20.0;
const HINT_BURST: f64 = 100.0;

/// A layer serves a tile up to this much taller than the layer (scaling up a little beats the
/// next layer's bandwidth).
const UPSCALE_PERCENT: u32 = 115;

impl WorkerCore {
    pub(super) fn handle_hint(&mut self, sub: ParticipantIdx, hint: VideoHint, now: Instant) {
        let Some(p) = self.participants.get_mut(sub.0) else {
            return;
        };
        // Every hint is kept (the last one is the tile's state); beyond the rate it waits for
        // the next periodic allocation instead of triggering one.
        let allocate_now = p.hint_allowance.try_take(now, HINT_RATE, HINT_BURST);
        let to = p.tracks_out.iter().copied().find(|to| {
            self.tracks_out
                .get(to.0)
                .is_some_and(|t| t.kind == MediaKind::Video && t.publisher_id.as_str() == hint.from)
        });
        let Some(t) = to.and_then(|to| self.tracks_out.get_mut(to.0)) else {
            debug!(participant = %p.id, from = %hint.from, "video hint for no video it receives");
            return;
        };
        let new = TileHint {
            height: hint.height,
            visible: hint.visible,
        };
        if t.hint != Some(new) {
            t.hint = Some(new);
            if allocate_now {
                self.work.push_back(Work::Allocate(sub));
            } else {
                debug!(
                    ?sub,
                    "video hints beyond the rate: applied at the next allocation tick"
                );
            }
        }
    }
}

/// The lowest layer that serves a tile `height` device pixels high (the top one if none does, or
/// if no layer's height is known). Heights come from the layers' VP8 keyframes; a layer without
/// one is taken as half the next one up (or twice the next one down).
pub fn layer_for_height(layers: &[LayerIn], height: u32) -> u8 {
    let top = layers.len().saturating_sub(1) as u8;
    let Some((known, h)) = layers
        .iter()
        .enumerate()
        .rev()
        .find_map(|(i, l)| l.height.map(|h| (i, u32::from(h))))
    else {
        return top;
    };
    (0..layers.len())
        .find(|&i| {
            let est = layers[i].height.map_or_else(
                || {
                    if i > known {
                        h << (i - known).min(8)
                    } else {
                        h >> (known - i).min(8)
                    }
                },
                u32::from,
            );
            est * UPSCALE_PERCENT / 100 >= height
        })
        .map_or(top, |i| i as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers(heights: &[Option<u16>]) -> Vec<LayerIn> {
        heights
            .iter()
            .map(|h| {
                let mut l = LayerIn::new(None);
                l.height = *h;
                l
            })
            .collect()
    }

    #[test]
    fn the_tile_height_picks_the_lowest_layer_that_serves_it() {
        let l = layers(&[Some(180), Some(360), Some(720)]);
        assert_eq!(layer_for_height(&l, 90), 0);
        assert_eq!(layer_for_height(&l, 200), 0, "180 lines stretch to 200");
        assert_eq!(layer_for_height(&l, 300), 1);
        assert_eq!(layer_for_height(&l, 720), 2);
        assert_eq!(layer_for_height(&l, 2160), 2, "nothing taller: the top");
        // Only the top layer's height known: the others are taken as halves.
        let l = layers(&[None, None, Some(720)]);
        assert_eq!(layer_for_height(&l, 150), 0);
        assert_eq!(layer_for_height(&l, 400), 2 - 1);
        // Nothing known: no limit.
        assert_eq!(layer_for_height(&layers(&[None, None]), 10), 1);
    }
}
