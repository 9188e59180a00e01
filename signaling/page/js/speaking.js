// Speaking indicators: received audio energy from the peer connection's stats (polled 4×/s), the
// own level from the stats or a WebAudio meter, and `data-speaking` on the tiles and the people
// list, held for a moment after the level drops.
//
// Interface: main.js starts and stops polling; room.js forgets a participant (forget) or everyone
// (reset); anything that rebuilt tiles or the people list calls renderSpeaking.

import { el } from './dom.js';
import { call } from './state.js';
import { effectiveMuted, selfLevel } from './media.js';
import { tileEntries } from './grid.js';
import { personItem } from './panel.js';
import { currentPc, trackOwner } from './peer.js';
import { ended } from './signal.js';

// Speaking indicator: RMS audio level over the last poll above the threshold, held for a moment.
const LEVEL = { pollMs: 250, threshold: 0.02, holdMs: 700 };

let timer = 0;
let busy = false; // a getStats() is outstanding
const levelPrev = new Map(); // stats id -> {energy, duration}
const speakingUntil = new Map(); // participant id (or 'self') -> performance.now() deadline

export function startLevelPolling() {
  stopLevelPolling();
  timer = setInterval(pollLevels, LEVEL.pollMs);
}

export function stopLevelPolling() {
  clearInterval(timer);
  timer = 0;
}

/** Drop the hold of `key` (a participant id, or 'self'): muted or gone. */
export function forget(key) {
  speakingUntil.delete(key);
}

/** Forget every level and hold (the session was replaced). */
export function reset() {
  levelPrev.clear();
  speakingUntil.clear();
}

/** Nobody is speaking any more (the call ended). */
export function clearSpeaking() {
  speakingUntil.clear();
}

/** RMS level since the previous sample from cumulative energy stats, else the instant level. */
function levelFrom(s) {
  if (typeof s.totalAudioEnergy === 'number' && typeof s.totalSamplesDuration === 'number') {
    const prev = levelPrev.get(s.id);
    levelPrev.set(s.id, { energy: s.totalAudioEnergy, duration: s.totalSamplesDuration });
    if (prev) {
      const dt = s.totalSamplesDuration - prev.duration;
      if (dt > 0) return Math.sqrt(Math.max(0, s.totalAudioEnergy - prev.energy) / dt);
      return 0;
    }
  }
  return typeof s.audioLevel === 'number' ? s.audioLevel : null;
}

async function pollLevels() {
  const pc = currentPc();
  if (busy || ended()) return;
  const now = performance.now();
  let level = null; // own
  if (pc && pc.connectionState !== 'closed') {
    busy = true;
    let report = null;
    try {
      report = await pc.getStats();
    } catch { /* closed meanwhile */ }
    busy = false;
    if (report && currentPc() === pc) {
      const byMid = new Map();
      for (const t of pc.getTransceivers()) {
        if (t.mid && t.receiver && t.receiver.track) byMid.set(t.mid, t.receiver.track.id);
      }
      report.forEach((s) => {
        if (s.kind !== 'audio') return;
        if (s.type === 'inbound-rtp') {
          const owner = trackOwner(s.trackIdentifier || byMid.get(s.mid));
          const l = levelFrom(s);
          const muted = owner && call.remoteMedia.get(owner)?.audio;
          if (owner && l !== null && l > LEVEL.threshold && !muted) speakingUntil.set(owner, now + LEVEL.holdMs);
        } else if (s.type === 'media-source') {
          const l = levelFrom(s);
          if (l !== null) level = l;
        }
      });
    }
  }
  // No own level in the stats (Firefox): measure it with WebAudio once a gesture allowed it.
  if (level === null) level = selfLevel();
  if (level !== null && level > LEVEL.threshold && !effectiveMuted('audio')) speakingUntil.set('self', now + LEVEL.holdMs);
  renderSpeaking(performance.now());
}

export function renderSpeaking(now) {
  const speaking = (key) => (speakingUntil.get(key) || 0) > now;
  const set = (node, on) => {
    if (!node) return;
    const v = on ? 'true' : 'false';
    if (node.dataset.speaking !== v) node.dataset.speaking = v;
  };
  for (const [id, t] of tileEntries()) {
    const on = speaking(id);
    set(t.tile, on);
    set(personItem(id), on);
  }
  const self = speaking('self') && !effectiveMuted('audio');
  set(el.localTile, self);
  set(personItem('self'), self);
}
