// The pre-join screen: name and room fields with their hints, the camera/microphone preview with
// its level meter, the device choice (`#camera-select`, `#mic-select`, remembered between
// visits) and the on/off switches for joining muted. The preview stream is handed to the call on
// join.
//
// Interface: main.js shows the screen (showJoinForm), wires it with what Join does (wirePrejoin),
// closes the preview when the call view opens (closePreview) and stops its devices at the end
// (stopPreview).

import { el, setStatus } from './dom.js';
import { MAX_NAME_CHARS, cleanName, mutedList, nameProblem, prefs, randomRoom, roomProblem, setAvatar } from './util.js';
import {
  CAMERA, acquireMedia, ensureAudioContext, isDenied, makeMeter, mediaProblemText, onAudioContextCreated, setUserMuted, userMuted,
} from './media.js';

const preview = {
  stream: null, // MediaStream of the pre-join preview (handed over to the call on join)
  promise: null, // resolves to {stream, error} once the first preview attempt finished
  meter: null, // {meter, timer}
};

export function showJoinForm(room, name, error) {
  document.body.dataset.view = 'join';
  setStatus('idle', 'Not connected');
  el.joinView.hidden = false;
  el.callView.hidden = true;
  el.joinRoom.value = room || randomRoom();
  el.joinName.value = name || prefs.get('name');
  if (error) {
    el.joinError.textContent = error;
    el.joinError.hidden = false;
  }
  validateJoinForm(true);
  (el.joinName.value.trim() === '' || nameProblem(el.joinName.value) ? el.joinName : el.joinButton).focus();
  startPreview();
}

function setFieldHint(input, hint, problem, fallback) {
  hint.textContent = problem || fallback;
  hint.classList.toggle('is-error', !!problem);
  if (problem) input.setAttribute('aria-invalid', 'true');
  else input.removeAttribute('aria-invalid');
}

/** Update the field hints and the Join button. `initial`: do not complain about an empty name yet. */
export function validateJoinForm(initial = false) {
  const nameRaw = el.joinName.value;
  const np = nameProblem(nameRaw);
  const rp = roomProblem(el.joinRoom.value.trim());
  const showNameProblem = np && !(initial && nameRaw.trim() === '') && nameRaw.trim() !== '' ? np : '';
  setFieldHint(el.joinName, el.joinNameHint, showNameProblem, `Shown to everyone in the room (up to ${MAX_NAME_CHARS} characters).`);
  setFieldHint(el.joinRoom, el.joinRoomHint, rp, 'Letters, digits, _ . and - (up to 64).');
  el.joinButton.disabled = !!(np || rp);
  setAvatar(el.previewAvatar, nameRaw.trim() || '?', nameRaw.trim() || '?');
  if (!el.joinError.hidden && !np && !rp) el.joinError.hidden = true;
  return !(np || rp);
}

/**
 * Wire the form, the device choice and the switches. `join(room, name, media)`: what Join does
 * (main.js's start); `media` resolves to {stream, error}, the preview's stream.
 */
export function wirePrejoin({ join }) {
  el.joinName.addEventListener('input', () => validateJoinForm());
  el.joinRoom.addEventListener('input', () => validateJoinForm());
  el.joinForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const r = el.joinRoom.value.trim();
    const np = nameProblem(el.joinName.value);
    const rp = roomProblem(r);
    if (np || rp) {
      el.joinError.textContent = np || rp;
      el.joinError.hidden = false;
      (np ? el.joinName : el.joinRoom).focus();
      return;
    }
    const n = cleanName(el.joinName.value);
    prefs.set('name', n);
    ensureAudioContext(); // a user gesture: the own level meter may run from now on
    // Put room and name in the URL so a reload rejoins.
    const p = new URLSearchParams(location.search);
    p.set('room', r);
    p.set('name', n);
    history.replaceState(null, '', `${location.pathname}?${p}`);
    const media = preview.promise || Promise.resolve({ stream: null, error: null });
    join(r, n, media.then((res) => ({ stream: preview.stream, error: preview.stream ? null : res.error })));
  });

  el.cameraSelect.addEventListener('change', () => switchPreviewDevice('video', el.cameraSelect.value));
  el.micSelect.addEventListener('change', () => switchPreviewDevice('audio', el.micSelect.value));
  el.prejoinAudio.addEventListener('click', () => {
    setUserMuted('audio', !userMuted('audio'));
    renderPreview();
  });
  el.prejoinVideo.addEventListener('click', () => {
    setUserMuted('video', !userMuted('video'));
    renderPreview();
  });
  // The first gesture created the audio context: the meter can run now.
  onAudioContextCreated(() => {
    if (document.body.dataset.view === 'join') startPreviewMeter();
  });
}

// ---------------------------------------------------------------- preview

function startPreview() {
  el.previewMessage.textContent = 'Starting camera…';
  el.previewMessage.hidden = false;
  preview.promise = acquireMedia(prefs.get('camera'), prefs.get('mic')).then(async (res) => {
    preview.stream = res.stream;
    if (document.body.dataset.view === 'join') {
      renderPreview(res.error);
      await fillDeviceSelects();
    }
    return res;
  });
}

function renderPreview(error) {
  if (document.body.dataset.view !== 'join') return;
  const stream = preview.stream;
  const audioMuted = userMuted('audio');
  const videoMuted = userMuted('video');
  const hasVideo = !!stream && stream.getVideoTracks().length > 0;
  const hasAudio = !!stream && stream.getAudioTracks().length > 0;
  for (const t of stream ? stream.getAudioTracks() : []) t.enabled = !audioMuted;
  for (const t of stream ? stream.getVideoTracks() : []) t.enabled = !videoMuted;
  if (el.previewVideo.srcObject !== stream) el.previewVideo.srcObject = stream;
  if (stream) el.previewVideo.play().catch(() => {});
  el.previewTile.classList.toggle('no-video', !hasVideo || videoMuted);
  const problem = mediaProblemText(error, hasAudio, hasVideo);
  if (problem) {
    el.previewMessage.textContent = problem;
    el.previewMessage.hidden = false;
    el.previewMessage.classList.add('is-problem');
    el.previewTile.dataset.problem = isDenied(error) ? 'denied' : 'missing';
  } else if (error !== undefined) {
    // A fresh result (not just a toggle): nothing to report.
    el.previewMessage.hidden = true;
    el.previewMessage.textContent = '';
    el.previewMessage.classList.remove('is-problem');
    delete el.previewTile.dataset.problem;
  }
  el.previewState.dataset.muted = mutedList(!hasAudio || audioMuted, !hasVideo || videoMuted);
  setToggle(el.prejoinAudio, hasAudio, audioMuted, 'Microphone', 'No microphone');
  setToggle(el.prejoinVideo, hasVideo, videoMuted, 'Camera', 'No camera');
  startPreviewMeter();
}

/** A pre-join on/off switch (role=switch): checked = the device will be on when joining. */
function setToggle(button, available, muted, label, naText) {
  button.disabled = !available;
  button.setAttribute('aria-checked', String(available && !muted));
  button.querySelector('.toggle-text').textContent = available ? label : naText;
  button.title = !available ? naText : `${label} ${muted ? 'off' : 'on'} when you join`;
}

async function fillDeviceSelects() {
  let devices = [];
  try {
    devices = await navigator.mediaDevices.enumerateDevices();
  } catch { /* keep the defaults */ }
  const stream = preview.stream;
  const current = (kind) => {
    const t = stream && stream.getTracks().find((tr) => tr.kind === kind);
    const s = t && t.getSettings ? t.getSettings() : {};
    return s.deviceId || '';
  };
  const fill = (select, kind, label, fallbackLabel) => {
    const list = devices.filter((d) => d.kind === kind && d.deviceId);
    const options = list.map((d, i) => {
      const o = document.createElement('option');
      o.value = d.deviceId;
      o.textContent = d.label || `${label} ${i + 1}`;
      return o;
    });
    if (options.length === 0) {
      const o = document.createElement('option');
      o.value = '';
      o.textContent = fallbackLabel;
      options.push(o);
    }
    select.replaceChildren(...options);
    const want = current(kind === 'videoinput' ? 'video' : 'audio');
    if (want && list.some((d) => d.deviceId === want)) select.value = want;
    select.disabled = list.length === 0 || !stream;
  };
  fill(el.cameraSelect, 'videoinput', 'Camera', stream ? 'No camera found' : 'Camera unavailable');
  fill(el.micSelect, 'audioinput', 'Microphone', stream ? 'No microphone found' : 'Microphone unavailable');
}

async function switchPreviewDevice(kind, deviceId) {
  const stream = preview.stream;
  if (!stream || !deviceId) return;
  prefs.set(kind === 'video' ? 'camera' : 'mic', deviceId);
  const select = kind === 'video' ? el.cameraSelect : el.micSelect;
  select.disabled = true;
  // Release the old device first: some cameras cannot be opened twice.
  for (const t of stream.getTracks().filter((tr) => tr.kind === kind)) {
    t.stop();
    stream.removeTrack(t);
  }
  let error = null;
  try {
    const constraints = kind === 'video' ? { ...CAMERA, deviceId: { exact: deviceId } } : { deviceId: { exact: deviceId } };
    const s = await navigator.mediaDevices.getUserMedia({ [kind]: constraints });
    for (const t of s.getTracks()) stream.addTrack(t);
  } catch (err) {
    error = err;
    console.warn(`could not open the chosen ${kind} device:`, err);
    try { // Fall back to the default device.
      const s = await navigator.mediaDevices.getUserMedia({ [kind]: true });
      for (const t of s.getTracks()) stream.addTrack(t);
    } catch { /* none at all */ }
  }
  // Re-attach so the element picks the new track up.
  el.previewVideo.srcObject = null;
  el.previewVideo.srcObject = stream;
  renderPreview(null);
  await fillDeviceSelects();
  if (error) {
    el.previewMessage.textContent = `That ${kind === 'video' ? 'camera' : 'microphone'} could not be started (${error.name}); using the default one.`;
    el.previewMessage.hidden = false;
    el.previewMessage.classList.add('is-problem');
  }
}

function startPreviewMeter() {
  stopPreviewMeter();
  const meter = makeMeter(preview.stream);
  if (!meter) {
    el.previewLevel.style.setProperty('--level', '0');
    return;
  }
  const timer = setInterval(() => {
    const level = userMuted('audio') || !meter.track.enabled ? 0 : Math.min(1, meter.level() * 4);
    el.previewLevel.style.setProperty('--level', level.toFixed(2));
  }, 100);
  preview.meter = { meter, timer };
}

function stopPreviewMeter() {
  const m = preview.meter;
  if (!m) return;
  clearInterval(m.timer);
  m.meter.close();
  preview.meter = null;
}

/** The call view opened: stop the preview's meter and element (the stream goes on in the call). */
export function closePreview() {
  stopPreviewMeter();
  el.previewVideo.srcObject = null;
}

/** The call ended: stop the preview's devices unless they are `callStream`'s (already stopped). */
export function stopPreview(callStream) {
  if (preview.stream && preview.stream !== callStream) preview.stream.getTracks().forEach((t) => t.stop());
}
