// Adaptive stream: tell the SFU how high each remote video is drawn (device pixels) and whether it
// is visible at all (tab hidden, tile off screen), so it never sends a simulcast layer bigger than
// the tile needs and sends no video to an invisible tile. Checked every 500 ms and when the tab's
// visibility changes; a tile's hint is sent only when it changed (heights in 16-pixel steps).
//
// Interface: main.js starts and stops it with the call.

import { currentChannel } from './chat.js';
import { tileEntries } from './grid.js';

const CHECK_MS = 500;

let timer = 0;
let channel = null; // the channel the hints in `sent` went to
const sent = new Map(); // participant id -> "height|visible" last sent

export function startHints() {
  stopHints();
  timer = setInterval(sendHints, CHECK_MS);
  document.addEventListener('visibilitychange', sendHints);
}

export function stopHints() {
  clearInterval(timer);
  timer = 0;
  sent.clear();
  document.removeEventListener('visibilitychange', sendHints);
}

function sendHints() {
  const dc = currentChannel();
  if (!dc || dc.readyState !== 'open') return;
  if (dc !== channel) {
    // A new session: the SFU knows nothing yet.
    channel = dc;
    sent.clear();
  }
  const hidden = document.visibilityState === 'hidden';
  const live = new Set();
  for (const [id, t] of tileEntries()) {
    live.add(id);
    const r = t.video.getBoundingClientRect();
    const onScreen = r.height > 0 && r.width > 0 && r.bottom > 0 && r.right > 0
      && r.top < window.innerHeight && r.left < window.innerWidth;
    const visible = !hidden && onScreen;
    const height = visible ? Math.max(16, Math.round((r.height * (window.devicePixelRatio || 1)) / 16) * 16) : 0;
    const key = `${height}|${visible}`;
    if (sent.get(id) === key) continue;
    try {
      dc.send(JSON.stringify({ type: 'video_hint', from: id, height, visible }));
      sent.set(id, key);
    } catch {
      return; // the channel is closing; the next check tries again
    }
  }
  for (const id of sent.keys()) if (!live.has(id)) sent.delete(id);
}
