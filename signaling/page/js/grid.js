// The video grid: one tile per remote participant (`.tile[data-participant-id]` with its
// `video[data-participant-id]`), their mute/placeholder state, the adaptive 16:9 layout, and
// unblocking sound when autoplay with sound was refused. The own tile is media.js's.
//
// Interface: room.js and peer.js create, rename and remove tiles (ensureTile, renameTile,
// removeTile, removeAllTiles) and attach received streams (attachStream, playRemote); speaking.js
// reads the tiles (tileEntries); anyone whose change moves tiles calls layoutGrid.

import { el } from './dom.js';
import { call } from './state.js';
import { describeMuted, mutedList, setAvatar } from './util.js';
import { ended, joined } from './signal.js';

const GRID_GAP = 10;

const tiles = new Map(); // participant id -> {tile, video, nameEl, stateEl, avatar, stream}
let needsUnmute = false; // autoplay with sound was blocked: remote videos play muted until a gesture

/** The tile of participant `id`, or undefined. */
export function tileOf(id) {
  return tiles.get(id);
}

/** [participant id, tile] pairs (a snapshot: safe to remove tiles while iterating). */
export function tileEntries() {
  return Array.from(tiles);
}

/**
 * Mark the room's active speakers (loudest first, from the SFU's `active_speakers` message): the
 * loudest one's tile gets `data-active-speaker` (highlighted) and moves to the front of the grid.
 */
export function setActiveSpeakers(ids) {
  const top = ids[0];
  for (const [id, t] of tiles) {
    if (id === top) {
      t.tile.dataset.activeSpeaker = 'true';
      t.tile.style.order = '-1';
    } else {
      delete t.tile.dataset.activeSpeaker;
      t.tile.style.order = '';
    }
  }
}

export function ensureTile(id) {
  let t = tiles.get(id);
  if (t) return t;
  const tile = el.tileTemplate.content.firstElementChild.cloneNode(true);
  tile.dataset.participantId = id;
  tile.setAttribute('role', 'group');
  const video = tile.querySelector('video');
  video.autoplay = true;
  video.playsInline = true;
  video.dataset.participantId = id;
  video.muted = false;
  t = {
    tile,
    video,
    nameEl: tile.querySelector('.tile-name'),
    stateEl: tile.querySelector('.tile-state'),
    avatar: tile.querySelector('.avatar'),
    stream: null,
  };
  tiles.set(id, t);
  renameTile(id, call.participants.get(id) ?? 'Participant');
  el.grid.append(tile);
  updateTileMedia(t);
  layoutGrid();
  return t;
}

export function renameTile(id, name) {
  const t = tiles.get(id);
  if (!t) return;
  t.nameEl.textContent = name;
  setAvatar(t.avatar, name, id);
  updateTileMedia(t);
}

export function updateTileMedia(t) {
  const id = t.tile.dataset.participantId;
  const m = call.remoteMedia.get(id) || { audio: false, video: false };
  // A live, unmuted (media arriving) video track; otherwise the avatar instead of a frozen frame.
  const hasVideo = !!t.stream && t.stream.getVideoTracks().some((tr) => tr.readyState === 'live' && !tr.muted);
  t.tile.classList.toggle('no-video', !hasVideo || m.video);
  t.stateEl.dataset.muted = mutedList(m.audio, m.video);
  const name = call.participants.get(id) ?? 'Participant';
  const muted = describeMuted(m.audio, m.video);
  t.tile.setAttribute('aria-label', muted ? `${name}, ${muted}` : name);
}

export function removeTile(id) {
  const t = tiles.get(id);
  if (!t) return;
  tiles.delete(id);
  t.video.srcObject = null;
  t.tile.remove();
  layoutGrid();
}

/** Remove every remote tile (the session was replaced, or the call ended). */
export function removeAllTiles() {
  for (const id of Array.from(tiles.keys())) removeTile(id);
}

/** Show `stream` (participant `id`'s media) on its tile, following its tracks coming and going. */
export function attachStream(id, tile, stream) {
  tile.stream = stream;
  tile.video.srcObject = stream;
  stream.addEventListener('addtrack', () => updateTileMedia(tile));
  stream.addEventListener('removetrack', () => {
    const t = tiles.get(id);
    if (!t || t.stream !== stream) return;
    if (stream.getTracks().length === 0 && !call.participants.has(id)) removeTile(id);
    else updateTileMedia(t);
  });
}

export function playRemote(video) {
  video.muted = needsUnmute;
  const p = video.play();
  if (!p || !p.catch) return;
  p.catch((err) => {
    if (!err || err.name !== 'NotAllowedError') return; // AbortError etc.: a newer load superseded it
    // Autoplay with sound was blocked: play muted and offer a button to turn the sound on.
    video.muted = true;
    video.play().catch(() => {});
    if (!needsUnmute) {
      needsUnmute = true;
      el.enableSound.hidden = false;
    }
  });
}

function enableSound() {
  if (!needsUnmute) return;
  needsUnmute = false;
  el.enableSound.hidden = true;
  for (const t of tiles.values()) {
    t.video.muted = false;
    t.video.play().catch(() => {});
  }
}

/** Size the tiles so that all of them fit the grid area at 16:9, as large as possible. */
export function layoutGrid() {
  const all = el.grid.querySelectorAll(':scope > .tile');
  const n = Math.max(1, all.length);
  el.grid.dataset.count = String(n);
  el.waiting.hidden = !(joined() && call.participants.size === 0 && !ended());
  const cs = getComputedStyle(el.grid);
  const W = el.grid.clientWidth - parseFloat(cs.paddingLeft || '0') - parseFloat(cs.paddingRight || '0');
  const H = el.grid.clientHeight - parseFloat(cs.paddingTop || '0') - parseFloat(cs.paddingBottom || '0');
  if (!(W > 0) || !(H > 0)) return;
  let best = 0;
  let bestCols = 1;
  for (let cols = 1; cols <= n; cols += 1) {
    const rows = Math.ceil(n / cols);
    const w = Math.min((W - GRID_GAP * (cols - 1)) / cols, ((H - GRID_GAP * (rows - 1)) / rows) * (16 / 9));
    if (w > best + 0.5) {
      best = w;
      bestCols = cols;
    }
  }
  // Never tiny: on a small screen the grid scrolls instead.
  best = Math.max(best, Math.min(W, 180));
  el.grid.style.setProperty('--tile-w', `${Math.floor(best)}px`);
  el.grid.style.setProperty('--cols', String(bestCols));
}

export function wireGrid() {
  el.enableSound.addEventListener('click', enableSound);
  // Any click or key press is a user gesture that allows sound.
  document.addEventListener('click', () => { if (needsUnmute) enableSound(); }, { capture: true });
  document.addEventListener('keydown', () => { if (needsUnmute) enableSound(); }, { capture: true });
  if (typeof ResizeObserver === 'function') new ResizeObserver(() => layoutGrid()).observe(el.grid);
  window.addEventListener('resize', layoutGrid);
}
