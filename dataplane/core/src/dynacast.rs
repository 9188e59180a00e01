//! Dynacast: a simulcast layer that no subscriber needs is switched off at its publisher, and on
//! again as soon as one does — the publisher's encoder and uplink stop paying for video nobody
//! watches. The publisher's page gets `{"type":"layers","mid":"<its mid>","active":[rids]}` on its
//! chat channel (only on change) and sets `active` on its encodings.
//!
//! A layer is needed when a subscriber's selector forwards it or wants it. The lowest layer is
//! never switched off (a new subscriber starts on it without waiting for an encoder), a layer
//! goes off only after [`UNNEEDED_HOLD`] without anyone needing it (no flapping), and comes back
//! at once. While off it stays selectable (`LayerIn::available`): a subscriber that wants it
//! makes it come back, and keeps its current layer until the first keyframe arrives.

use std::time::{Duration, Instant};

use serde_json::json;
use tracing::debug;

use super::layers::MAX_LAYERS;
use super::track::OutState;
use super::{TrackInIdx, Work, WorkerCore};

/// How long a layer must be unneeded before its publisher is told to stop it.
pub const UNNEEDED_HOLD: Duration = Duration::from_secs(3);

impl WorkerCore {
    /// Re-evaluate every simulcast track (the periodic tick: subscribers that left).
    pub(super) fn dynacast_all(&mut self) {
        for (i, t) in self.tracks_in.iter() {
            if t.simulcast() {
                self.work.push_back(Work::Dynacast(TrackInIdx(i)));
            }
        }
    }

    /// Switch the layers of track `ti` nobody needs off at its publisher, and needed ones on.
    pub(super) fn dynacast(&mut self, ti: TrackInIdx, now: Instant) {
        if !self.cfg.dynacast {
            return;
        }
        let Some(tin) = self.tracks_in.get(ti.0) else {
            return;
        };
        if !tin.simulcast() {
            return;
        }
        // Per layer (a track keeps at most MAX_LAYERS): no allocation on this path.
        let mut needed = [false; MAX_LAYERS];
        needed[0] = true;
        for to in &tin.subscribers {
            let Some(t) = self.tracks_out.get(to.0) else {
                continue;
            };
            if !matches!(t.state, OutState::Open(_)) {
                continue;
            }
            if !t.selector.allocated() {
                // Not decided yet: keep everything until it is.
                needed.iter_mut().for_each(|n| *n = true);
                break;
            }
            for l in [t.selector.target(), t.selector.current()]
                .into_iter()
                .flatten()
            {
                if let Some(n) = needed.get_mut(usize::from(l)) {
                    *n = true;
                }
            }
        }
        let (publisher, mid) = (tin.publisher, tin.mid);
        let Some(tin) = self.tracks_in.get_mut(ti.0) else {
            return;
        };
        let mut changed = false;
        for (l, need) in tin.layers.iter_mut().zip(needed) {
            if need {
                l.unneeded_since = None;
                if l.paused {
                    l.paused = false;
                    l.resumed_at = Some(now);
                    changed = true;
                }
            } else if !l.paused {
                let since = *l.unneeded_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= UNNEEDED_HOLD {
                    l.paused = true;
                    changed = true;
                }
            }
        }
        if !changed {
            return;
        }
        let active: Vec<String> = tin
            .layers
            .iter()
            .filter(|l| !l.paused)
            .filter_map(|l| l.rid.map(|r| r.to_string()))
            .collect();
        debug!(?publisher, %mid, ?active, "dynacast");
        let msg = json!({"type": "layers", "mid": mid.to_string(), "active": active}).to_string();
        self.send_chat(publisher, msg.as_bytes());
        self.drain(publisher, now);
    }
}
