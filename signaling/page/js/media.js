// Local media: opening the camera and microphone (with fallbacks and friendly problem texts), the
// user's mute choices, the stream sent into the call, the own tile and the mute buttons, and the
// WebAudio context with its level meters (pre-join meter, own speaking level when the browser's
// stats have none).
//
// Interface: main.js adopts the call's stream (adoptLocalStream) and toggles mutes (setMuted);
// prejoin.js opens devices for the preview (acquireMedia) and flips the choices before joining
// (setUserMuted); chat.js, panel.js and speaking.js read effectiveMuted / selfLevel.

import { el } from './dom.js';
import { call } from './state.js';
import { describeMuted, mutedList } from './util.js';
import { ended } from './signal.js';

const local = {
  stream: null, // the camera/microphone stream sent into the call
  ready: false, // the local media attempt for the call finished (with or without a stream)
  muted: { audio: false, video: false }, // the user's choice (the track is disabled, not removed)
  selfMeter: null, // WebAudio meter for the own level when stats have none (Firefox)
};
let audioCtx = null; // created on the first user gesture (WebAudio needs one)
let onAudioContext = () => {};

// ---------------------------------------------------------------- opening devices

// The camera is asked for 720p (what a webcam usually gives): enough lines for three simulcast
// layers (peer.js); a smaller camera gives what it has.
export const CAMERA = { width: { ideal: 1280 }, height: { ideal: 720 } };

/** Open camera + microphone (falling back to one of them). Never throws. */
export async function acquireMedia(cameraId, micId) {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    return { stream: null, error: { name: 'NotSupportedError', message: 'getUserMedia is not available' } };
  }
  const video = cameraId ? { ...CAMERA, deviceId: { ideal: cameraId } } : { ...CAMERA };
  const audio = micId ? { deviceId: { ideal: micId } } : true;
  const attempts = [{ audio, video }, { audio, video: false }, { audio: false, video }];
  let firstError = null;
  for (const constraints of attempts) {
    try {
      return { stream: await navigator.mediaDevices.getUserMedia(constraints), error: null };
    } catch (err) {
      if (!firstError) firstError = err;
      // A refused permission will be refused again: do not prompt repeatedly.
      if (err && (err.name === 'NotAllowedError' || err.name === 'SecurityError')) break;
    }
  }
  return { stream: null, error: firstError };
}

export function isDenied(err) {
  return !!err && (err.name === 'NotAllowedError' || err.name === 'SecurityError' || err.name === 'PermissionDeniedError');
}

export function mediaProblemText(err, hasAudio, hasVideo) {
  if (err && err.name === 'NotSupportedError') {
    return 'Camera and microphone are not available on this connection (the page needs HTTPS). You can still join to watch, listen and chat.';
  }
  if (!hasAudio && !hasVideo) {
    return isDenied(err)
      ? 'Camera and microphone are blocked, so others won\'t see or hear you — you can still watch, listen and chat. To turn them on, allow access in your browser\'s site settings and rejoin.'
      : 'No camera or microphone could be started (none found, or in use by another app). You can still watch, listen and chat.';
  }
  if (!hasVideo) return 'No camera could be started: others will hear you but not see you.';
  if (!hasAudio) return 'No microphone could be started: others will see you but not hear you.';
  return '';
}

// ---------------------------------------------------------------- WebAudio and level meters

/** `fn` runs once the audio context exists (prejoin.js restarts its meter then). */
export function onAudioContextCreated(fn) {
  onAudioContext = fn;
}

// WebAudio needs a user gesture to run; create the context on the first one.
export function ensureAudioContext() {
  if (audioCtx || typeof window.AudioContext !== 'function') return audioCtx;
  try {
    audioCtx = new AudioContext();
  } catch {
    audioCtx = null;
  }
  onAudioContext();
  return audioCtx;
}

export function wireMedia() {
  const onFirstGesture = () => {
    ensureAudioContext();
    if (audioCtx && audioCtx.state === 'suspended') audioCtx.resume().catch(() => {});
  };
  document.addEventListener('pointerdown', onFirstGesture, { capture: true });
  document.addEventListener('keydown', onFirstGesture, { capture: true });
}

/** An RMS level meter on the audio track of `stream` (null without WebAudio or audio). */
export function makeMeter(stream) {
  const ctx = audioCtx;
  const track = stream && stream.getAudioTracks()[0];
  if (!ctx || !track) return null;
  try {
    const source = ctx.createMediaStreamSource(new MediaStream([track]));
    const analyser = ctx.createAnalyser();
    analyser.fftSize = 512;
    source.connect(analyser);
    const buf = new Float32Array(analyser.fftSize);
    return {
      track,
      level() {
        analyser.getFloatTimeDomainData(buf);
        let sum = 0;
        for (let i = 0; i < buf.length; i += 1) sum += buf[i] * buf[i];
        return Math.sqrt(sum / buf.length);
      },
      close() {
        try { source.disconnect(); } catch { /* gone */ }
      },
    };
  } catch {
    return null;
  }
}

/**
 * The own microphone level measured with WebAudio, for when the stats have none (Firefox); null
 * without a meter. The meter is created once a gesture allowed WebAudio.
 */
export function selfLevel() {
  if (!local.selfMeter && audioCtx && local.stream) local.selfMeter = makeMeter(local.stream);
  return local.selfMeter ? local.selfMeter.level() : null;
}

// ---------------------------------------------------------------- mute choices

/** The user's choice for `kind` ('audio' | 'video'), whether or not there is such a device. */
export function userMuted(kind) {
  return kind === 'audio' ? local.muted.audio : local.muted.video;
}

/** Before joining: just record the choice (prejoin.js applies it to the preview). */
export function setUserMuted(kind, muted) {
  if (kind === 'audio') local.muted.audio = muted;
  else local.muted.video = muted;
}

// ---------------------------------------------------------------- the call's stream

export function localStream() {
  return local.stream;
}

/** The local media attempt for the call finished (the controls may now say "not available"). */
export function markMediaReady() {
  local.ready = true;
}

/**
 * Send `stream` into the call: apply the mute choices, show it on the own tile, and call
 * `onTrackEnded` when a device is unplugged or revoked.
 */
export function adoptLocalStream(stream, onTrackEnded) {
  local.stream = stream;
  for (const t of stream.getAudioTracks()) t.enabled = !local.muted.audio;
  for (const t of stream.getVideoTracks()) t.enabled = !local.muted.video;
  el.localVideo.srcObject = stream;
  el.localVideo.muted = true;
  el.localVideo.play().catch(() => {});
  for (const t of stream.getTracks()) t.addEventListener('ended', onTrackEnded);
  local.selfMeter = makeMeter(stream);
}

/** Stop the call's devices and the own meter (the call ended). */
export function stopLocalMedia() {
  if (local.stream) local.stream.getTracks().forEach((t) => t.stop());
  if (local.selfMeter) local.selfMeter.close();
  local.selfMeter = null;
  el.localVideo.srcObject = null;
}

function hasLiveTrack(kind) {
  const s = local.stream;
  return !!s && s.getTracks().some((t) => t.kind === kind && t.readyState === 'live');
}

/** Muted as others perceive it: turned off by the user, or no such device at all. */
export function effectiveMuted(kind) {
  return userMuted(kind) || !hasLiveTrack(kind);
}

/** Mute or unmute a live device; false (nothing changed) without one. */
export function setMuted(kind, muted) {
  if (!hasLiveTrack(kind)) return false;
  setUserMuted(kind, muted);
  // Disable (not remove) the track: the m-line stays, unmuting restores media instantly.
  for (const t of local.stream.getTracks()) if (t.kind === kind) t.enabled = !muted;
  return true;
}

/** The own tile and the mute buttons. */
export function renderLocalMedia() {
  const audioOff = effectiveMuted('audio');
  const videoOff = effectiveMuted('video');
  el.localTile.classList.toggle('no-video', videoOff);
  el.localState.dataset.muted = mutedList(audioOff, videoOff);
  el.localTile.setAttribute('aria-label', `${call.self ? call.self.name : call.name || 'You'} (you)${audioOff || videoOff ? `, ${describeMuted(audioOff, videoOff)}` : ''}`);
  const mediaKnown = local.ready;
  const setCtrl = (button, kind, offLabel, onLabel, offText, onText, naLabel) => {
    const available = hasLiveTrack(kind);
    const muted = userMuted(kind);
    button.disabled = ended() || (!available && mediaKnown);
    button.dataset.off = String(!available || muted);
    button.setAttribute('aria-label', !available && mediaKnown ? naLabel : (muted ? onLabel : offLabel));
    button.title = button.getAttribute('aria-label');
    button.querySelector('.ctrl-text').textContent = muted || !available ? onText : offText;
  };
  setCtrl(el.muteAudio, 'audio', 'Mute microphone', 'Unmute microphone', 'Mute', 'Unmute', 'No microphone available');
  setCtrl(el.muteVideo, 'video', 'Turn camera off', 'Turn camera on', 'Stop video', 'Start video', 'No camera available');
}
