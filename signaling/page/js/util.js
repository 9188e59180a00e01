// Pure helpers shared by the page's modules: name and room validation (the server's rules), avatar
// initials and colours, mute-state wording, and the preferences remembered between visits.
// No state, no DOM lookups.

export const MAX_NAME_CHARS = 64;
const ROOM_RE = /^[A-Za-z0-9_.-]{1,64}$/;
// C0 and C1 control characters (the server refuses names containing them).
const CONTROL_RE = /[\u0000-\u001f\u007f-\u009f]/;

export function cleanName(raw) {
  return nameProblem(raw) ? null : String(raw ?? '').trim();
}

/** A human explanation of what is wrong with a display name, or '' if it is fine. */
export function nameProblem(raw) {
  const name = String(raw ?? '').trim();
  const chars = Array.from(name).length;
  if (chars < 1) return 'Please enter your name.';
  if (chars > MAX_NAME_CHARS) return `That name is too long: ${chars} characters (at most ${MAX_NAME_CHARS}). Please shorten it.`;
  if (CONTROL_RE.test(name)) return 'The name contains invisible control characters; please retype it.';
  return '';
}

export function validRoom(raw) {
  return typeof raw === 'string' && ROOM_RE.test(raw);
}

export function roomProblem(raw) {
  const room = String(raw ?? '');
  if (room === '') return 'Please enter a room name.';
  if (Array.from(room).length > 64) return 'That room name is too long (at most 64 characters).';
  if (!validRoom(room)) return 'Room names may only use letters, digits, _ . and - (no spaces).';
  return '';
}

export function randomRoom() {
  const bytes = new Uint8Array(4);
  crypto.getRandomValues(bytes);
  return 'room-' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** Up to two initials of a name ("Ada Lovelace" -> "AL"), by code point. */
function initials(name) {
  const words = String(name || '').trim().split(/\s+/).filter(Boolean);
  const first = (w) => (Array.from(w)[0] || '').toUpperCase();
  if (words.length === 0) return '?';
  if (words.length === 1) return first(words[0]) || '?';
  return first(words[0]) + first(words[words.length - 1]);
}

/** A stable hue for an avatar, from a participant id or name. */
function hueOf(key) {
  let h = 0;
  for (const ch of String(key)) h = (h * 31 + ch.codePointAt(0)) >>> 0;
  return h % 360;
}

export function setAvatar(avatarEl, name, key) {
  if (!avatarEl) return;
  avatarEl.textContent = initials(name);
  avatarEl.style.setProperty('--avatar-hue', String(hueOf(key ?? name)));
}

/** The `data-muted` value: 'audio', 'video', 'audio video' or ''. */
export function mutedList(audio, video) {
  return [audio ? 'audio' : '', video ? 'video' : ''].filter(Boolean).join(' ');
}

export function describeMuted(audio, video) {
  if (audio && video) return 'microphone and camera off';
  if (audio) return 'microphone off';
  if (video) return 'camera off';
  return '';
}

// Remembered between visits: display name and chosen devices (best effort; storage may be off).
export const prefs = {
  get(key) {
    try { return window.localStorage.getItem(`sfu.${key}`) || ''; } catch { return ''; }
  },
  set(key, value) {
    try { window.localStorage.setItem(`sfu.${key}`, value); } catch { /* storage unavailable */ }
  },
};
