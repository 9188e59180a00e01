// Browser client for the SFU video chat. Plain standards JavaScript, no build step.
// Implements docs/protocol.md: WebSocket JSON signaling on /ws, one RTCPeerConnection to the SFU,
// sendonly camera + microphone, server-initiated renegotiation (the client is the impolite peer),
// the `chat` DataChannel (chat, whispers and mute `state`), and session resume after a lost
// WebSocket (docs/protocol.md, "Connection loss and resume"): the peer connection and its media
// survive a signaling restart.
//
// Flow: a pre-join screen (name, room, camera/microphone preview and device choice) unless the URL
// carries both `room` and `name` (then it joins at once), then the call view: an adaptive video
// grid, mute/camera/leave controls, a participant list, speaking indicators (received audio
// energy from getStats, polled 4×/s) and a chat panel.
//
// Security: every name and chat text is rendered with textContent, never innerHTML.
'use strict';

(() => {
  const MAX_CHAT_BYTES = 4096;
  const MAX_NAME_CHARS = 64;
  const ROOM_RE = /^[A-Za-z0-9_.-]{1,64}$/;
  // C0 and C1 control characters (the server refuses names containing them).
  const CONTROL_RE = /[\u0000-\u001f\u007f-\u009f]/;
  // Reconnecting after a lost WebSocket: exponential backoff with a little jitter, for at most the
  // server's resume window. A connection attempt that does not open in time is abandoned.
  const RETRY = { firstDelayMs: 250, factor: 2, maxDelayMs: 4000, jitter: 0.2, windowMs: 30000, connectTimeoutMs: 5000 };
  // Speaking indicator: RMS audio level over the last poll above the threshold, held for a moment.
  const LEVEL = { pollMs: 250, threshold: 0.02, holdMs: 700 };
  const DC_LOG_MAX = 200;
  const GRID_GAP = 10;

  const $ = (id) => document.getElementById(id);
  const el = {
    status: $('status'),
    statusText: $('status-text'),
    roomLabel: $('room-label'),
    invite: $('invite'),
    inviteText: $('invite-text'),
    banner: $('banner'),
    bannerText: $('banner-text'),
    bannerClose: $('banner-close'),
    joinView: $('join-view'),
    joinForm: $('join-form'),
    joinRoom: $('join-room'),
    joinRoomHint: $('join-room-hint'),
    joinName: $('join-name'),
    joinNameHint: $('join-name-hint'),
    joinError: $('join-error'),
    joinButton: $('join-button'),
    cameraSelect: $('camera-select'),
    micSelect: $('mic-select'),
    prejoinAudio: $('prejoin-audio'),
    prejoinVideo: $('prejoin-video'),
    previewTile: $('preview-tile'),
    previewVideo: $('preview-video'),
    previewAvatar: $('preview-avatar'),
    previewMessage: $('preview-message'),
    previewState: $('preview-state'),
    previewLevel: $('preview-level'),
    callView: $('call-view'),
    waiting: $('waiting'),
    grid: $('video-grid'),
    localTile: $('local-tile'),
    localVideo: $('local-video'),
    localName: $('local-name'),
    localState: $('local-state'),
    enableSound: $('enable-sound'),
    endCard: $('end-card'),
    endTitle: $('end-title'),
    endText: $('end-text'),
    rejoin: $('rejoin'),
    newRoom: $('new-room'),
    controls: $('controls'),
    muteAudio: $('mute-audio'),
    muteVideo: $('mute-video'),
    peopleToggle: $('people-toggle'),
    peopleCount: $('people-count'),
    chatToggle: $('chat-toggle'),
    chatUnread: $('chat-unread'),
    leave: $('leave'),
    sidePanel: $('side-panel'),
    panelTitle: $('panel-title'),
    panelClose: $('panel-close'),
    peoplePanel: $('people-panel'),
    people: $('people-list'),
    chatPanel: $('chat-panel'),
    chatLog: $('chat-log'),
    chatForm: $('chat-form'),
    chatTo: $('chat-to'),
    chatPrivateNote: $('chat-private-note'),
    chatInput: $('chat-input'),
    chatSend: $('chat-send'),
    chatCount: $('chat-count'),
    tileTemplate: $('tile-template'),
    personTemplate: $('person-template'),
  };

  const params = new URLSearchParams(location.search);
  const encoder = new TextEncoder();
  const decoder = new TextDecoder();
  const narrowScreen = window.matchMedia('(max-width: 760px)');

  // Remembered between visits: display name and chosen devices (best effort; storage may be off).
  const prefs = {
    get(key) {
      try { return window.localStorage.getItem(`sfu.${key}`) || ''; } catch { return ''; }
    },
    set(key, value) {
      try { window.localStorage.setItem(`sfu.${key}`, value); } catch { /* storage unavailable */ }
    },
  };

  const state = {
    room: null,
    name: null,
    token: params.get('token') || null,
    relayOnly: params.get('iceTransportPolicy') === 'relay',
    self: null, // {id, name} once joined
    participants: new Map(), // other participant id -> name
    leftIds: new Set(), // ids that left: late tracks for them are ignored
    tiles: new Map(), // participant id -> {tile, video, nameEl, stateEl, avatar, stream}
    trackOwner: new Map(), // remote track id -> participant id
    remoteMedia: new Map(), // participant id -> {audio, video} (muted flags from `state` messages)
    joined: false,
    ended: false, // left / disconnected / failed for good: no more status changes
    mediaPromise: null,
    mediaReady: false, // the local media attempt finished (with or without a stream)
    localStream: null,
    audioMuted: false, // the user's choice (the microphone track is disabled, not removed)
    videoMuted: false,
    chain: Promise.resolve(), // every incoming signaling message is handled in order on this chain
    bannerTimer: 0,
    bannerTag: null, // what the visible banner is about ('reconnect', 'media', …), so it is hidden by the right event
    needsUnmute: false,
    resumeToken: null, // joined.resume: resumes this session on a new WebSocket
    sessionReady: false, // the current WebSocket carries our joined session: signaling messages may be sent
    outbox: [], // {msg, offerSdp} offers/answers produced while the session was detached; sent after the resume
    retry: null, // {mode: 'resume' | 'join', startedAt, attempt, timer, deadlineTimer} while reconnecting
    rejoining: false, // a fresh join replaces a lost session (resume failed, room closed)
    lastOfferSdp: null, // the last server offer applied
    resentOfferSdp: null, // a server offer answered by a queued answer: ignore it when re-sent after the resume
    // pre-join
    preview: null, // MediaStream of the pre-join preview (handed over to the call on join)
    previewPromise: null, // resolves to {stream, error} once the first preview attempt finished
    previewMeter: null, // {analyser, source, timer}
    audioCtx: null,
    // in call
    panel: null, // 'chat' | 'people' | null
    unread: 0,
    peopleItems: new Map(), // participant id -> <li>
    levelTimer: 0,
    levelBusy: false,
    levelPrev: new Map(), // stats id -> {energy, duration}
    speakingUntil: new Map(), // participant id (or 'self') -> performance.now() deadline
    selfMeter: null, // WebAudio analyser for the own level when stats have none (Firefox)
  };

  // Exposed for tests and debugging; properties are updated as objects are created (and replaced
  // after a rejoin). After a resume `pc` and `dc` stay the same objects and `ws` is the new socket.
  const sfu = {
    pc: null, ws: null, participantId: null, dc: null, localStream: null, room: null, name: null,
    resumes: 0, // sessions resumed on a new WebSocket (same peer connection)
    rejoins: 0, // fresh joins after a failed resume or a closed room (new peer connection)
    dcLog: [], // the last DC_LOG_MAX raw messages received on the chat DataChannel (debugging, tests)
    get muted() { return { audio: effectiveMuted('audio'), video: effectiveMuted('video') }; },
  };
  window.sfu = sfu;

  // ---------------------------------------------------------------- status & banner

  function setStatus(dataState, text) {
    el.status.dataset.state = dataState;
    el.statusText.textContent = text;
    document.body.dataset.callState = dataState;
  }

  function showBanner(kind, text, { autoHideMs = 0, tag = null } = {}) {
    clearTimeout(state.bannerTimer);
    el.banner.dataset.state = kind;
    el.bannerText.textContent = text;
    el.banner.hidden = false;
    state.bannerTag = tag;
    if (autoHideMs > 0) state.bannerTimer = setTimeout(() => hideBanner(tag), autoHideMs);
  }

  /** Hide the banner; with `tag`, only if the visible banner is about that. */
  function hideBanner(tag) {
    if (typeof tag === 'string' && state.bannerTag !== tag) return;
    clearTimeout(state.bannerTimer);
    el.banner.hidden = true;
    el.banner.dataset.state = 'none';
    el.bannerText.textContent = '';
    state.bannerTag = null;
  }

  el.bannerClose.addEventListener('click', () => hideBanner());

  // ---------------------------------------------------------------- validation & small helpers

  function cleanName(raw) {
    return nameProblem(raw) ? null : String(raw ?? '').trim();
  }

  /** A human explanation of what is wrong with a display name, or '' if it is fine. */
  function nameProblem(raw) {
    const name = String(raw ?? '').trim();
    const chars = Array.from(name).length;
    if (chars < 1) return 'Please enter your name.';
    if (chars > MAX_NAME_CHARS) return `That name is too long: ${chars} characters (at most ${MAX_NAME_CHARS}). Please shorten it.`;
    if (CONTROL_RE.test(name)) return 'The name contains invisible control characters; please retype it.';
    return '';
  }

  function validRoom(raw) {
    return typeof raw === 'string' && ROOM_RE.test(raw);
  }

  function roomProblem(raw) {
    const room = String(raw ?? '');
    if (room === '') return 'Please enter a room name.';
    if (Array.from(room).length > 64) return 'That room name is too long (at most 64 characters).';
    if (!validRoom(room)) return 'Room names may only use letters, digits, _ . and - (no spaces).';
    return '';
  }

  function randomRoom() {
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

  function setAvatar(avatarEl, name, key) {
    if (!avatarEl) return;
    avatarEl.textContent = initials(name);
    avatarEl.style.setProperty('--avatar-hue', String(hueOf(key ?? name)));
  }

  function mutedList(audio, video) {
    return [audio ? 'audio' : '', video ? 'video' : ''].filter(Boolean).join(' ');
  }

  function describeMuted(audio, video) {
    if (audio && video) return 'microphone and camera off';
    if (audio) return 'microphone off';
    if (video) return 'camera off';
    return '';
  }

  // ---------------------------------------------------------------- pre-join screen

  function showJoinForm(room, name, error) {
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
  function validateJoinForm(initial = false) {
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
    const media = state.previewPromise || Promise.resolve({ stream: null, error: null });
    start(r, n, media.then((res) => ({ stream: state.preview, error: state.preview ? null : res.error })));
  });

  /** Open camera + microphone (falling back to one of them). Never throws. */
  async function acquireMedia(cameraId, micId) {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      return { stream: null, error: { name: 'NotSupportedError', message: 'getUserMedia is not available' } };
    }
    const video = cameraId ? { deviceId: { ideal: cameraId } } : true;
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

  function isDenied(err) {
    return !!err && (err.name === 'NotAllowedError' || err.name === 'SecurityError' || err.name === 'PermissionDeniedError');
  }

  function mediaProblemText(err, hasAudio, hasVideo) {
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

  function startPreview() {
    el.previewMessage.textContent = 'Starting camera…';
    el.previewMessage.hidden = false;
    state.previewPromise = acquireMedia(prefs.get('camera'), prefs.get('mic')).then(async (res) => {
      state.preview = res.stream;
      if (document.body.dataset.view === 'join') {
        renderPreview(res.error);
        await fillDeviceSelects();
      }
      return res;
    });
  }

  function renderPreview(error) {
    if (document.body.dataset.view !== 'join') return;
    const stream = state.preview;
    const hasVideo = !!stream && stream.getVideoTracks().length > 0;
    const hasAudio = !!stream && stream.getAudioTracks().length > 0;
    for (const t of stream ? stream.getAudioTracks() : []) t.enabled = !state.audioMuted;
    for (const t of stream ? stream.getVideoTracks() : []) t.enabled = !state.videoMuted;
    if (el.previewVideo.srcObject !== stream) el.previewVideo.srcObject = stream;
    if (stream) el.previewVideo.play().catch(() => {});
    el.previewTile.classList.toggle('no-video', !hasVideo || state.videoMuted);
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
    el.previewState.dataset.muted = mutedList(!hasAudio || state.audioMuted, !hasVideo || state.videoMuted);
    setToggle(el.prejoinAudio, hasAudio, state.audioMuted, 'Microphone', 'No microphone');
    setToggle(el.prejoinVideo, hasVideo, state.videoMuted, 'Camera', 'No camera');
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
    const stream = state.preview;
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
    const stream = state.preview;
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
      const s = await navigator.mediaDevices.getUserMedia({ [kind]: { deviceId: { exact: deviceId } } });
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

  el.cameraSelect.addEventListener('change', () => switchPreviewDevice('video', el.cameraSelect.value));
  el.micSelect.addEventListener('change', () => switchPreviewDevice('audio', el.micSelect.value));
  el.prejoinAudio.addEventListener('click', () => {
    state.audioMuted = !state.audioMuted;
    renderPreview();
  });
  el.prejoinVideo.addEventListener('click', () => {
    state.videoMuted = !state.videoMuted;
    renderPreview();
  });

  // WebAudio needs a user gesture to run; create the context on the first one.
  function ensureAudioContext() {
    if (state.audioCtx || typeof window.AudioContext !== 'function') return state.audioCtx;
    try {
      state.audioCtx = new AudioContext();
    } catch {
      state.audioCtx = null;
    }
    if (document.body.dataset.view === 'join') startPreviewMeter();
    return state.audioCtx;
  }
  const onFirstGesture = () => {
    ensureAudioContext();
    if (state.audioCtx && state.audioCtx.state === 'suspended') state.audioCtx.resume().catch(() => {});
  };
  document.addEventListener('pointerdown', onFirstGesture, { capture: true });
  document.addEventListener('keydown', onFirstGesture, { capture: true });

  /** An RMS level meter on the audio track of `stream` (null without WebAudio or audio). */
  function makeMeter(stream) {
    const ctx = state.audioCtx;
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

  function startPreviewMeter() {
    stopPreviewMeter();
    const meter = makeMeter(state.preview);
    if (!meter) {
      el.previewLevel.style.setProperty('--level', '0');
      return;
    }
    const timer = setInterval(() => {
      const level = state.audioMuted || !meter.track.enabled ? 0 : Math.min(1, meter.level() * 4);
      el.previewLevel.style.setProperty('--level', level.toFixed(2));
    }, 100);
    state.previewMeter = { meter, timer };
  }

  function stopPreviewMeter() {
    const m = state.previewMeter;
    if (!m) return;
    clearInterval(m.timer);
    m.meter.close();
    state.previewMeter = null;
  }

  // ---------------------------------------------------------------- start / socket

  /** Enter the call view and join `room` as `name`; `media` resolves to {stream, error}. */
  function start(room, name, media) {
    state.room = room;
    state.name = name;
    sfu.room = room;
    sfu.name = name;
    document.body.dataset.view = 'call';
    stopPreviewMeter();
    el.previewVideo.srcObject = null;
    el.joinView.hidden = true;
    el.callView.hidden = false;
    el.roomLabel.textContent = room;
    el.roomLabel.hidden = false;
    el.invite.hidden = false;
    el.leave.disabled = false;
    el.localName.textContent = `${name} (you)`;
    setAvatar(el.localTile.querySelector('.avatar'), name, name);
    document.title = `${room} – Video chat`;
    setStatus('connecting', 'Connecting…');
    setPanel(narrowScreen.matches ? null : 'chat', { focus: false });
    renderPeople();
    renderChatTargets();
    renderLocalMedia();
    layoutGrid();
    updateChatControls();

    // Start the camera in parallel with the signaling handshake; awaited before the first offer.
    state.mediaPromise = media.then(useLocalMedia);
    openSocket('join');
    startLevelPolling();
  }

  /**
   * Open a WebSocket to /ws. `mode` 'join' sends a normal `join`; 'resume' sends `join {resume}`
   * to take the existing session (and its peer connection) over.
   */
  function openSocket(mode = 'join') {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    let ws;
    try {
      ws = new WebSocket(`${proto}//${location.host}/ws`);
    } catch (err) {
      if (state.retry) scheduleAttempt();
      else fail('error', 'Could not connect', 'Could not connect to the server.', { title: 'Could not connect', detail: String(err) });
      return;
    }
    sfu.ws = ws;
    state.sessionReady = false;
    let opened = false;
    // An attempt that hangs (e.g. packets silently dropped) is abandoned; its close schedules the next.
    const connectTimer = state.retry ? setTimeout(() => {
      if (!opened && sfu.ws === ws) ws.close();
    }, RETRY.connectTimeoutMs) : 0;
    ws.addEventListener('open', () => {
      opened = true;
      clearTimeout(connectTimer);
      if (sfu.ws !== ws || state.ended) return;
      if (mode === 'resume') {
        rawSend(ws, { type: 'join', resume: state.resumeToken });
      } else {
        sendJoin(ws);
        if (!state.rejoining) setStatus('connecting', 'Joining room…');
      }
    });
    ws.addEventListener('message', (ev) => {
      if (typeof ev.data !== 'string' || sfu.ws !== ws) return;
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        console.warn('ignoring malformed signaling message');
        return;
      }
      if (!msg || typeof msg !== 'object' || typeof msg.type !== 'string') return;
      enqueue(() => handleMessage(msg, ws));
    });
    ws.addEventListener('close', (ev) => {
      clearTimeout(connectTimer);
      if (sfu.ws !== ws) return;
      // Let queued messages (e.g. `left`, `error`) be handled first so their status wins.
      enqueue(() => onSocketClosed(ev, opened, ws));
    });
  }

  function sendJoin(ws) {
    const join = { type: 'join', room: state.room, name: state.name };
    if (state.token) join.token = state.token;
    rawSend(ws, join);
  }

  function rawSend(ws, msg) {
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    try {
      ws.send(JSON.stringify(msg));
      return true;
    } catch (err) {
      console.warn('could not send on the signaling connection:', err);
      return false;
    }
  }

  /**
   * Send a signaling message of the joined session. While the session is detached (the WebSocket
   * was lost and is being resumed) offers and answers are queued and sent after the resume (or
   * dropped if it fails); anything else is dropped. Never throws.
   */
  function send(msg) {
    if (state.sessionReady && rawSend(sfu.ws, msg)) return true;
    if (state.joined && !state.ended && (msg.type === 'offer' || msg.type === 'answer')) {
      state.outbox.push({ msg, offerSdp: msg.type === 'answer' ? state.lastOfferSdp : null });
      console.info(`signaling connection is down: ${msg.type} queued until the session is resumed`);
    }
    return false;
  }

  /** Stop using the current WebSocket (its events are ignored from now on) and close it. */
  function detachSocket(code = 1000, reason = '') {
    const ws = sfu.ws;
    sfu.ws = null;
    state.sessionReady = false;
    try {
      if (ws && ws.readyState <= WebSocket.OPEN) ws.close(code, reason);
    } catch { /* already closed */ }
  }

  function enqueue(fn) {
    state.chain = state.chain.then(fn).catch((err) => {
      console.error('signaling step failed:', err);
      if (!state.ended) showBanner('error', `Something went wrong while setting up the call: ${err && err.message ? err.message : err}`);
    });
    return state.chain;
  }

  function onSocketClosed(ev, opened, ws) {
    if (state.ended || sfu.ws !== ws) return;
    state.sessionReady = false;
    if (state.joined && state.resumeToken) {
      // Signaling restarted or crashed (1012, 1006, …): media is unaffected. Resume the session.
      connectionLost('resume', 'Connection to the server lost — reconnecting… Your call continues meanwhile.');
    } else if (state.rejoining || (state.retry && state.retry.mode === 'join')) {
      connectionLost('join', 'Connection to the server lost — rejoining…');
    } else if (!opened) {
      fail('error', 'Could not reach the server', 'The video service could not be reached. Check your internet connection and try again.', { title: 'Could not connect' });
    } else if (ev.code === 1009) {
      fail('disconnected', 'Disconnected', 'The server closed the connection (a message was too big).', { title: 'Disconnected' });
    } else {
      fail('disconnected', 'Disconnected from server', 'The connection to the server was lost. Check your internet connection and rejoin.',
        { title: 'Connection lost', detail: ev.code ? `Close code ${ev.code}` : '' });
    }
  }

  // ---------------------------------------------------------------- reconnect & resume

  /** The WebSocket is gone: start (or continue) reconnecting in `mode` with backoff. */
  function connectionLost(mode, bannerText) {
    if (!state.retry || state.retry.mode !== mode) beginRetry(mode, bannerText);
    scheduleAttempt();
  }

  function beginRetry(mode, bannerText) {
    stopRetry();
    const r = { mode, startedAt: Date.now(), attempt: 0, timer: 0, deadlineTimer: 0 };
    r.deadlineTimer = setTimeout(() => enqueue(() => onRetryDeadline(r)), RETRY.windowMs);
    state.retry = r;
    console.info(`signaling connection lost: ${mode === 'resume' ? 'resuming the session' : 'rejoining'} (for up to ${RETRY.windowMs / 1000} s)`);
    if (bannerText) showBanner('warning', bannerText, { tag: 'reconnect' });
    refreshStatus();
  }

  function stopRetry() {
    const r = state.retry;
    if (!r) return;
    clearTimeout(r.timer);
    clearTimeout(r.deadlineTimer);
    state.retry = null;
  }

  function scheduleAttempt() {
    const r = state.retry;
    if (!r || state.ended) return;
    clearTimeout(r.timer);
    const base = Math.min(RETRY.maxDelayMs, RETRY.firstDelayMs * RETRY.factor ** r.attempt);
    const delay = Math.round(base * (1 + Math.random() * RETRY.jitter));
    r.attempt += 1;
    r.timer = setTimeout(() => {
      if (state.retry !== r || state.ended) return;
      console.info(`reconnect attempt ${r.attempt} (${r.mode})`);
      openSocket(r.mode);
    }, delay);
  }

  function onRetryDeadline(r) {
    if (state.retry !== r || state.ended) return;
    if (r.mode === 'resume') {
      resumeFailed('timeout');
    } else {
      fail('disconnected', 'Disconnected from server', 'Could not reconnect to the server. Check your internet connection and rejoin.', { title: 'Connection lost' });
    }
  }

  /** The session cannot be resumed: drop it (and its peer connection) and join afresh. */
  function resumeFailed(why) {
    console.info(`session resume failed (${why}): joining the room again`);
    stopRetry();
    detachSocket();
    resetSession();
    state.rejoining = true;
    beginRetry('join', why === 'timeout'
      ? 'Could not reconnect to the server in time — rejoining…'
      : 'The session could not be resumed — rejoining…');
    openSocket('join');
  }

  /**
   * Forget the server session: close the peer connection (the local camera stream is kept),
   * remove remote tiles and the participant list. The caller starts a fresh join.
   */
  function resetSession() {
    const { pc, dc } = sfu;
    sfu.pc = null;
    sfu.dc = null;
    try { if (dc) dc.close(); } catch { /* already closed */ }
    try { if (pc) pc.close(); } catch { /* already closed */ }
    for (const id of Array.from(state.tiles.keys())) removeTile(id);
    state.participants.clear();
    state.trackOwner.clear();
    state.leftIds.clear();
    state.remoteMedia.clear();
    state.levelPrev.clear();
    state.speakingUntil.clear();
    state.joined = false;
    state.self = null;
    sfu.participantId = null;
    state.resumeToken = null;
    state.sessionReady = false;
    state.outbox = [];
    state.lastOfferSdp = null;
    state.resentOfferSdp = null;
    renderPeople();
    renderChatTargets();
    updateChatControls();
  }

  /** The status indicator, from the signaling connection and the peer connection state. */
  function refreshStatus() {
    if (state.ended) return;
    if (state.retry) {
      setStatus('reconnecting', state.retry.mode === 'resume' ? 'Reconnecting…' : 'Rejoining…');
      return;
    }
    if (!state.joined) {
      if (state.rejoining) setStatus('reconnecting', 'Rejoining…');
      return; // the join flow sets its own 'connecting' texts
    }
    const pc = sfu.pc;
    const s = pc ? (pc.connectionState || iceToConnectionState(pc.iceConnectionState)) : 'new';
    switch (s) {
      case 'connected':
        setStatus('connected', 'Connected');
        hideBanner('media');
        hideBanner('reconnect');
        break;
      case 'disconnected':
        setStatus('reconnecting', 'Media connection interrupted…');
        break;
      case 'failed':
        setStatus('failed', 'Media connection failed');
        break;
      case 'closed':
        setStatus('closed', 'Connection closed');
        break;
      default:
        setStatus('connecting', 'Connecting media…');
    }
  }

  // ---------------------------------------------------------------- signaling messages

  async function handleMessage(msg, ws) {
    if (state.ended || sfu.ws !== ws) return;
    switch (msg.type) {
      case 'joined': return msg.resumed === true ? onResumed(msg) : onJoined(msg);
      case 'answer': return onAnswer(msg);
      case 'offer': return onOffer(msg);
      case 'participant_joined': return onParticipantJoined(msg);
      case 'participant_left': return onParticipantLeft(msg);
      case 'left': return onLeft(msg);
      case 'room_closed': return onRoomClosed(msg);
      case 'error': return onError(msg);
      default:
        console.warn('ignoring unknown signaling message type', msg.type);
    }
  }

  async function onJoined(msg) {
    if (state.joined) return;
    const me = msg.participant;
    if (!me || typeof me.id !== 'string') throw new Error('malformed joined message');
    stopRetry();
    const rejoin = state.rejoining;
    state.rejoining = false;
    if (rejoin) {
      sfu.rejoins += 1;
      addSystemMessage('Rejoined the room.');
    }
    state.joined = true;
    state.sessionReady = true;
    state.resumeToken = typeof msg.resume === 'string' && msg.resume ? msg.resume : null;
    state.outbox = [];
    state.self = { id: me.id, name: typeof me.name === 'string' ? me.name : state.name };
    sfu.participantId = me.id;
    el.localName.textContent = `${state.self.name} (you)`;
    setAvatar(el.localTile.querySelector('.avatar'), state.self.name, me.id);
    for (const p of Array.isArray(msg.participants) ? msg.participants : []) {
      if (p && typeof p.id === 'string' && p.id !== me.id) {
        state.participants.set(p.id, String(p.name ?? p.id));
        ensureTile(p.id);
      }
    }
    renderPeople();
    renderChatTargets();
    setStatus('connecting', 'Connecting media…');

    // On a rejoin this is the stream opened for the first join (never prompts again).
    const stream = await state.mediaPromise;
    if (state.ended || !state.joined || !state.self || state.self.id !== me.id) return;

    const config = { iceServers: sanitizeIceServers(msg.ice_servers), bundlePolicy: 'max-bundle' };
    if (state.relayOnly) config.iceTransportPolicy = 'relay';
    const pc = new RTCPeerConnection(config);
    sfu.pc = pc;
    wirePeerConnection(pc);

    if (stream) {
      for (const track of stream.getTracks()) {
        pc.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
      }
    }
    setupDataChannel(pc.createDataChannel('chat'));

    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    send({ type: 'offer', sdp: pc.localDescription.sdp });
  }

  /**
   * `joined {resumed: true}`: the session (and its peer connection) survived the lost WebSocket.
   * Keep the same RTCPeerConnection (no renegotiation, no ICE restart); refresh what may have
   * changed meanwhile and send what was queued.
   */
  function onResumed(msg) {
    const pc = sfu.pc;
    if (!state.joined || !pc || !state.retry || state.retry.mode !== 'resume') {
      console.warn('ignoring unexpected resumed joined');
      return;
    }
    stopRetry();
    state.sessionReady = true;
    if (typeof msg.resume === 'string' && msg.resume) state.resumeToken = msg.resume;
    sfu.resumes += 1;
    console.info('session resumed on a new signaling connection');

    // Participants who left or joined while we were away (their events went to the lost socket).
    const now = new Map();
    for (const p of Array.isArray(msg.participants) ? msg.participants : []) {
      if (p && typeof p.id === 'string' && (!state.self || p.id !== state.self.id)) now.set(p.id, String(p.name ?? p.id));
    }
    for (const [id, name] of Array.from(state.participants)) {
      if (now.has(id)) continue;
      forgetParticipant(id);
      addSystemMessage(`${name} left`);
    }
    for (const id of Array.from(state.tiles.keys())) {
      if (!now.has(id)) removeTile(id);
    }
    for (const [id, name] of now) {
      const known = state.participants.has(id);
      state.participants.set(id, name);
      state.leftIds.delete(id);
      renameTile(id, name);
      ensureTile(id);
      if (!known) addSystemMessage(`${name} joined`);
    }
    renderPeople();
    renderChatTargets();

    // Send what was produced while detached. The server re-sends its outstanding offer right
    // after `joined`: if a queued answer answers it, that copy is ignored (see onOffer).
    const queued = state.outbox;
    state.outbox = [];
    let offerSent = false;
    for (const { msg: m, offerSdp } of queued) {
      if (!rawSend(sfu.ws, m)) break;
      if (m.type === 'answer') state.resentOfferSdp = offerSdp;
      if (m.type === 'offer') offerSent = true;
    }
    // Our own offer was sent but its answer may have been lost with the old connection.
    if (!offerSent && pc.signalingState === 'have-local-offer' && pc.localDescription) {
      rawSend(sfu.ws, { type: 'offer', sdp: pc.localDescription.sdp });
    }

    hideBanner('reconnect');
    refreshStatus();
  }

  function sanitizeIceServers(list) {
    if (!Array.isArray(list)) return [];
    const out = [];
    for (const s of list) {
      if (!s || typeof s !== 'object') continue;
      const urls = Array.isArray(s.urls) ? s.urls.filter((u) => typeof u === 'string' && u) : (typeof s.urls === 'string' && s.urls ? [s.urls] : []);
      if (urls.length === 0) continue;
      const entry = { urls };
      if (typeof s.username === 'string') entry.username = s.username;
      if (typeof s.credential === 'string') entry.credential = s.credential;
      out.push(entry);
    }
    return out;
  }

  async function onAnswer(msg) {
    const pc = sfu.pc;
    if (!pc || pc.signalingState !== 'have-local-offer') {
      console.warn('ignoring answer in signaling state', pc && pc.signalingState);
      return;
    }
    await pc.setRemoteDescription({ type: 'answer', sdp: String(msg.sdp) });
    sweepTiles();
  }

  async function onOffer(msg) {
    const pc = sfu.pc;
    if (!pc || pc.signalingState === 'closed') return;
    if (pc.signalingState === 'have-local-offer') {
      // Glare: the client is the impolite peer. The server rolls back, answers our offer and re-offers.
      console.info('glare: ignoring server offer while our offer is outstanding');
      return;
    }
    const sdp = String(msg.sdp);
    const resent = state.resentOfferSdp;
    state.resentOfferSdp = null;
    if (resent !== null && sdp === resent && pc.signalingState === 'stable') {
      // Re-sent after a resume, and already answered by the answer queued during the outage.
      console.info('ignoring re-sent server offer: already answered');
      return;
    }
    state.lastOfferSdp = sdp;
    await pc.setRemoteDescription({ type: 'offer', sdp });
    const answer = await pc.createAnswer();
    await pc.setLocalDescription(answer);
    send({ type: 'answer', sdp: pc.localDescription.sdp });
    sweepTiles();
  }

  function onParticipantJoined(msg) {
    const p = msg.participant;
    if (!p || typeof p.id !== 'string' || (state.self && p.id === state.self.id)) return;
    const name = String(p.name ?? p.id);
    const known = state.participants.has(p.id);
    state.participants.set(p.id, name);
    state.leftIds.delete(p.id);
    renameTile(p.id, name);
    ensureTile(p.id);
    renderPeople();
    renderChatTargets();
    if (!known) addSystemMessage(`${name} joined`);
  }

  function onParticipantLeft(msg) {
    const id = msg.participant_id;
    if (typeof id !== 'string') return;
    const name = state.participants.get(id);
    forgetParticipant(id);
    renderPeople();
    renderChatTargets();
    if (name !== undefined) addSystemMessage(`${name} left`);
  }

  function forgetParticipant(id) {
    state.participants.delete(id);
    state.leftIds.add(id);
    state.remoteMedia.delete(id);
    state.speakingUntil.delete(id);
    removeTile(id);
  }

  function onLeft(msg) {
    const reasons = {
      timeout: 'your connection timed out',
      closed: 'the connection was closed',
      failed: 'the session failed',
      shutdown: 'the server is shutting down for maintenance',
      abandoned: 'the connection to the server was lost for too long',
      room_closed: 'the room was closed',
      replaced: 'this call was continued in another window or tab',
    };
    const why = reasons[msg.reason] || String(msg.reason || 'unknown reason');
    // The server closes the WebSocket next; no automatic reconnect.
    fail('closed', 'Removed from the room', `You were removed from the room: ${why}.`,
      { title: 'You were removed from the room', text: `The call ended because ${why}. You can rejoin.` });
  }

  /**
   * The media node hosting the room failed (or the room moved). The WebSocket stays open: drop the
   * peer connection and join again on it; the room is placed on a healthy node.
   */
  function onRoomClosed(msg) {
    if (!state.joined) return;
    const moved = msg.reason === 'moved';
    // node_failed, worker_failed: the media server failed; moved: the room now lives elsewhere.
    console.info(`room closed (${String(msg.reason)}): joining again`);
    stopRetry();
    resetSession();
    state.rejoining = true;
    showBanner('warning', moved
      ? 'The room moved to another media server — rejoining…'
      : 'The media server for this room failed — rejoining…', { tag: 'reconnect' });
    refreshStatus();
    sendJoin(sfu.ws);
  }

  const JOIN_ERRORS = {
    room_full: ['This room is full', 'This room has reached its maximum number of participants. Try again later, or pick another room.'],
    unauthorized: ['You don\'t have access to this room', 'Your invite link is missing a valid access token, or it has expired. Ask the organizer for a new link.'],
    unavailable: ['The video service is unavailable', 'The media servers are busy or temporarily unreachable. Please try again in a moment.'],
    internal: ['Something went wrong', 'The server hit an unexpected error. Please try again.'],
    bad_request: ['The server refused the request', 'Please reload the page and try again.'],
  };

  function onError(msg) {
    const code = String(msg.code || 'error');
    const text = String(msg.message || '');
    if (code === 'rate_limited' && !state.joined && !(state.retry && state.retry.mode === 'resume')) {
      // A join refused by the server's join rate or session limits: try again shortly on the
      // same connection.
      console.warn('join rate-limited:', text);
      showBanner('warning', 'The server is busy with joins from your network — retrying in a moment…', { tag: 'rate' });
      const ws = sfu.ws;
      setTimeout(() => {
        if (sfu.ws === ws && !state.joined && !state.ended) sendJoin(ws);
      }, 1500 + Math.random() * 1500);
      return;
    }
    if (code === 'rate_limited') {
      // The message was dropped; the connection stays usable.
      console.warn('signaling rate limit hit:', text);
      if (state.bannerTag !== 'reconnect') {
        showBanner('warning', 'Too many requests: the server dropped a message. Slow down a little.', { autoHideMs: 5000, tag: 'rate' });
      }
      return;
    }
    if (state.retry && state.retry.mode === 'resume' && !state.sessionReady) {
      // The answer to our `join {resume}`.
      if (code === 'resume_failed') {
        resumeFailed('rejected');
      } else {
        // e.g. unavailable: the node is not reachable from this instance yet. Try again.
        console.warn(`resume refused (${code}): retrying`);
        detachSocket();
        scheduleAttempt();
      }
      return;
    }
    if (code === 'resume_failed') {
      if (state.joined) resumeFailed('rejected');
      return;
    }
    if (state.rejoining && !state.joined && (code === 'unavailable' || code === 'internal')) {
      // No healthy node yet for the room: retry the fresh join with backoff.
      console.warn(`rejoin refused (${code}): retrying`);
      if (!state.retry) beginRetry('join', null);
      detachSocket();
      scheduleAttempt();
      return;
    }
    const [title, friendly] = JOIN_ERRORS[code] || ['Something went wrong', 'The server reported an error.'];
    console.warn(`server error ${code}: ${text}`);
    if (!state.joined) {
      fail('error', 'Could not join', `${title}. ${friendly}`,
        { title, text: friendly, detail: `Error code: ${code}${text ? ` — ${text}` : ''}`, rejoinLabel: 'Try again' });
    } else {
      // The connection stays usable (e.g. a refused answer after glare is followed by a new offer).
      showBanner('error', `${title}. ${friendly}`, { autoHideMs: 10000 });
    }
  }

  // ---------------------------------------------------------------- peer connection

  function wirePeerConnection(pc) {
    pc.addEventListener('icecandidate', (ev) => {
      const c = ev.candidate;
      // Never send end-of-candidates (null / empty candidate); the server ignores candidates anyway.
      if (!c || !c.candidate) return;
      send({ type: 'candidate', candidate: c.candidate, sdpMid: c.sdpMid, sdpMLineIndex: c.sdpMLineIndex });
    });
    const onState = () => {
      if (state.ended || sfu.pc !== pc) return;
      const s = pc.connectionState || iceToConnectionState(pc.iceConnectionState);
      if (s === 'failed') {
        showBanner('error', 'The media connection failed. Your network may block the call (e.g. a firewall blocking UDP). Check your connection and rejoin.', { tag: 'media' });
      }
      // While signaling reconnects the status says so; refreshStatus() knows both.
      refreshStatus();
    };
    pc.addEventListener('connectionstatechange', onState);
    if (!('connectionState' in pc)) pc.addEventListener('iceconnectionstatechange', onState);
    pc.addEventListener('track', onTrack);
  }

  function iceToConnectionState(s) {
    if (s === 'completed') return 'connected';
    if (s === 'checking') return 'connecting';
    return s;
  }

  function onTrack(ev) {
    const stream = ev.streams && ev.streams[0];
    if (!stream) {
      console.warn('remote track without a stream; ignored', ev.track && ev.track.kind);
      return;
    }
    const id = stream.id;
    if ((state.self && id === state.self.id) || state.leftIds.has(id)) return;
    state.trackOwner.set(ev.track.id, id);
    const tile = ensureTile(id);
    if (tile.stream !== stream) attachStream(id, tile, stream);
    const update = () => {
      const t = state.tiles.get(id);
      if (t) updateTileMedia(t);
    };
    ev.track.addEventListener('ended', () => {
      const t = state.tiles.get(id);
      if (!t) return;
      if (!state.participants.has(id) && t.stream && t.stream.getTracks().every((tr) => tr.readyState === 'ended')) removeTile(id);
      else updateTileMedia(t);
    });
    ev.track.addEventListener('mute', update);
    ev.track.addEventListener('unmute', update);
    updateTileMedia(tile);
    playRemote(tile.video);
  }

  function attachStream(id, tile, stream) {
    tile.stream = stream;
    tile.video.srcObject = stream;
    stream.addEventListener('addtrack', () => updateTileMedia(tile));
    stream.addEventListener('removetrack', () => {
      const t = state.tiles.get(id);
      if (!t || t.stream !== stream) return;
      if (stream.getTracks().length === 0 && !state.participants.has(id)) removeTile(id);
      else updateTileMedia(t);
    });
  }

  // After each completed negotiation: drop tiles of departed participants whose tracks are no
  // longer being received (their m-lines were stopped with port 0), and refresh the others.
  function sweepTiles() {
    const pc = sfu.pc;
    if (!pc) return;
    const live = new Set();
    for (const t of pc.getTransceivers()) {
      const dir = t.currentDirection;
      if (dir !== 'recvonly' && dir !== 'sendrecv') continue;
      const track = t.receiver && t.receiver.track;
      if (!track || track.readyState !== 'live') continue;
      const owner = state.trackOwner.get(track.id);
      if (owner) live.add(owner);
    }
    for (const [id, t] of Array.from(state.tiles)) {
      if (!live.has(id) && !state.participants.has(id)) removeTile(id);
      else updateTileMedia(t);
    }
  }

  // ---------------------------------------------------------------- local media

  /** Adopt the camera/microphone stream for the call (or none: receive-only). */
  function useLocalMedia({ stream, error }) {
    state.mediaReady = true;
    if (state.ended) {
      if (stream) stream.getTracks().forEach((t) => t.stop());
      return null;
    }
    if (!stream) {
      const text = mediaProblemText(error, false, false);
      showBanner('warning', text, { tag: 'devices' });
      addSystemMessage('You joined without camera and microphone.');
      renderLocalMedia();
      sendState();
      return null;
    }
    state.localStream = stream;
    sfu.localStream = stream;
    for (const t of stream.getAudioTracks()) t.enabled = !state.audioMuted;
    for (const t of stream.getVideoTracks()) t.enabled = !state.videoMuted;
    el.localVideo.srcObject = stream;
    el.localVideo.muted = true;
    el.localVideo.play().catch(() => {});
    const hasVideo = stream.getVideoTracks().length > 0;
    const hasAudio = stream.getAudioTracks().length > 0;
    const problem = mediaProblemText(error, hasAudio, hasVideo);
    if (problem) showBanner('warning', problem, { tag: 'devices', autoHideMs: 20000 });
    for (const t of stream.getTracks()) {
      // A device unplugged or revoked: show it and tell the others.
      t.addEventListener('ended', () => {
        renderLocalMedia();
        sendState();
      });
    }
    state.selfMeter = makeMeter(stream);
    renderLocalMedia();
    return stream;
  }

  function hasLiveTrack(kind) {
    const s = state.localStream;
    return !!s && s.getTracks().some((t) => t.kind === kind && t.readyState === 'live');
  }

  /** Muted as others perceive it: turned off by the user, or no such device at all. */
  function effectiveMuted(kind) {
    return (kind === 'audio' ? state.audioMuted : state.videoMuted) || !hasLiveTrack(kind);
  }

  function renderLocalMedia() {
    const audioOff = effectiveMuted('audio');
    const videoOff = effectiveMuted('video');
    el.localTile.classList.toggle('no-video', videoOff);
    el.localState.dataset.muted = mutedList(audioOff, videoOff);
    el.localTile.setAttribute('aria-label', `${state.self ? state.self.name : state.name || 'You'} (you)${audioOff || videoOff ? `, ${describeMuted(audioOff, videoOff)}` : ''}`);
    const mediaKnown = state.mediaReady;
    const setCtrl = (button, kind, offLabel, onLabel, offText, onText, naLabel) => {
      const available = hasLiveTrack(kind);
      const muted = kind === 'audio' ? state.audioMuted : state.videoMuted;
      button.disabled = state.ended || (!available && mediaKnown);
      button.dataset.off = String(!available || muted);
      button.setAttribute('aria-label', !available && mediaKnown ? naLabel : (muted ? onLabel : offLabel));
      button.title = button.getAttribute('aria-label');
      button.querySelector('.ctrl-text').textContent = muted || !available ? onText : offText;
    };
    setCtrl(el.muteAudio, 'audio', 'Mute microphone', 'Unmute microphone', 'Mute', 'Unmute', 'No microphone available');
    setCtrl(el.muteVideo, 'video', 'Turn camera off', 'Turn camera on', 'Stop video', 'Start video', 'No camera available');
    const self = state.peopleItems.get('self');
    if (self) self.querySelector('.person-state').dataset.muted = mutedList(audioOff, videoOff);
  }

  function setMuted(kind, muted) {
    if (!hasLiveTrack(kind)) return;
    if (kind === 'audio') state.audioMuted = muted;
    else state.videoMuted = muted;
    // Disable (not remove) the track: the m-line stays, unmuting restores media instantly.
    for (const t of state.localStream.getTracks()) if (t.kind === kind) t.enabled = !muted;
    if (kind === 'audio' && muted) state.speakingUntil.delete('self');
    renderLocalMedia();
    sendState();
  }

  /** Tell the others (through the SFU) what we have muted. */
  function sendState() {
    const dc = sfu.dc;
    if (!dc || dc.readyState !== 'open') return false;
    try {
      dc.send(JSON.stringify({ type: 'state', audio_muted: effectiveMuted('audio'), video_muted: effectiveMuted('video') }));
      return true;
    } catch (err) {
      console.warn('could not send the mute state:', err);
      return false;
    }
  }

  el.muteAudio.addEventListener('click', () => setMuted('audio', !state.audioMuted));
  el.muteVideo.addEventListener('click', () => setMuted('video', !state.videoMuted));

  // ---------------------------------------------------------------- tiles & grid

  function ensureTile(id) {
    let t = state.tiles.get(id);
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
    state.tiles.set(id, t);
    renameTile(id, state.participants.get(id) ?? 'Participant');
    el.grid.append(tile);
    updateTileMedia(t);
    layoutGrid();
    return t;
  }

  function renameTile(id, name) {
    const t = state.tiles.get(id);
    if (!t) return;
    t.nameEl.textContent = name;
    setAvatar(t.avatar, name, id);
    updateTileMedia(t);
  }

  function updateTileMedia(t) {
    const id = t.tile.dataset.participantId;
    const m = state.remoteMedia.get(id) || { audio: false, video: false };
    // A live, unmuted (media arriving) video track; otherwise the avatar instead of a frozen frame.
    const hasVideo = !!t.stream && t.stream.getVideoTracks().some((tr) => tr.readyState === 'live' && !tr.muted);
    t.tile.classList.toggle('no-video', !hasVideo || m.video);
    t.stateEl.dataset.muted = mutedList(m.audio, m.video);
    const name = state.participants.get(id) ?? 'Participant';
    const muted = describeMuted(m.audio, m.video);
    t.tile.setAttribute('aria-label', muted ? `${name}, ${muted}` : name);
  }

  function removeTile(id) {
    const t = state.tiles.get(id);
    if (!t) return;
    state.tiles.delete(id);
    t.video.srcObject = null;
    t.tile.remove();
    layoutGrid();
  }

  function playRemote(video) {
    video.muted = state.needsUnmute;
    const p = video.play();
    if (!p || !p.catch) return;
    p.catch((err) => {
      if (!err || err.name !== 'NotAllowedError') return; // AbortError etc.: a newer load superseded it
      // Autoplay with sound was blocked: play muted and offer a button to turn the sound on.
      video.muted = true;
      video.play().catch(() => {});
      if (!state.needsUnmute) {
        state.needsUnmute = true;
        el.enableSound.hidden = false;
      }
    });
  }

  function enableSound() {
    if (!state.needsUnmute) return;
    state.needsUnmute = false;
    el.enableSound.hidden = true;
    for (const t of state.tiles.values()) {
      t.video.muted = false;
      t.video.play().catch(() => {});
    }
  }
  el.enableSound.addEventListener('click', enableSound);
  // Any click or key press is a user gesture that allows sound.
  document.addEventListener('click', () => { if (state.needsUnmute) enableSound(); }, { capture: true });
  document.addEventListener('keydown', () => { if (state.needsUnmute) enableSound(); }, { capture: true });

  /** Size the tiles so that all of them fit the grid area at 16:9, as large as possible. */
  function layoutGrid() {
    const tiles = el.grid.querySelectorAll(':scope > .tile');
    const n = Math.max(1, tiles.length);
    el.grid.dataset.count = String(n);
    el.waiting.hidden = !(state.joined && state.participants.size === 0 && !state.ended);
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

  if (typeof ResizeObserver === 'function') new ResizeObserver(() => layoutGrid()).observe(el.grid);
  window.addEventListener('resize', layoutGrid);

  // ---------------------------------------------------------------- speaking indicators

  function startLevelPolling() {
    stopLevelPolling();
    state.levelTimer = setInterval(pollLevels, LEVEL.pollMs);
  }

  function stopLevelPolling() {
    clearInterval(state.levelTimer);
    state.levelTimer = 0;
  }

  /** RMS level since the previous sample from cumulative energy stats, else the instant level. */
  function levelFrom(s) {
    if (typeof s.totalAudioEnergy === 'number' && typeof s.totalSamplesDuration === 'number') {
      const prev = state.levelPrev.get(s.id);
      state.levelPrev.set(s.id, { energy: s.totalAudioEnergy, duration: s.totalSamplesDuration });
      if (prev) {
        const dt = s.totalSamplesDuration - prev.duration;
        if (dt > 0) return Math.sqrt(Math.max(0, s.totalAudioEnergy - prev.energy) / dt);
        return 0;
      }
    }
    return typeof s.audioLevel === 'number' ? s.audioLevel : null;
  }

  async function pollLevels() {
    const pc = sfu.pc;
    if (state.levelBusy || state.ended) return;
    const now = performance.now();
    let selfLevel = null;
    if (pc && pc.connectionState !== 'closed') {
      state.levelBusy = true;
      let report = null;
      try {
        report = await pc.getStats();
      } catch { /* closed meanwhile */ }
      state.levelBusy = false;
      if (report && sfu.pc === pc) {
        const byMid = new Map();
        for (const t of pc.getTransceivers()) {
          if (t.mid && t.receiver && t.receiver.track) byMid.set(t.mid, t.receiver.track.id);
        }
        report.forEach((s) => {
          if (s.kind !== 'audio') return;
          if (s.type === 'inbound-rtp') {
            const owner = state.trackOwner.get(s.trackIdentifier || byMid.get(s.mid));
            const level = levelFrom(s);
            const muted = owner && state.remoteMedia.get(owner)?.audio;
            if (owner && level !== null && level > LEVEL.threshold && !muted) state.speakingUntil.set(owner, now + LEVEL.holdMs);
          } else if (s.type === 'media-source') {
            const level = levelFrom(s);
            if (level !== null) selfLevel = level;
          }
        });
      }
    }
    if (selfLevel === null && !state.selfMeter && state.audioCtx && state.localStream) {
      // No own level in the stats (Firefox): measure it with WebAudio once a gesture allowed it.
      state.selfMeter = makeMeter(state.localStream);
    }
    if (selfLevel === null && state.selfMeter) selfLevel = state.selfMeter.level();
    if (selfLevel !== null && selfLevel > LEVEL.threshold && !effectiveMuted('audio')) state.speakingUntil.set('self', now + LEVEL.holdMs);
    renderSpeaking(performance.now());
  }

  function renderSpeaking(now) {
    const speaking = (key) => (state.speakingUntil.get(key) || 0) > now;
    const set = (node, on) => {
      if (!node) return;
      const v = on ? 'true' : 'false';
      if (node.dataset.speaking !== v) node.dataset.speaking = v;
    };
    for (const [id, t] of state.tiles) {
      const on = speaking(id);
      set(t.tile, on);
      set(state.peopleItems.get(id), on);
    }
    const self = speaking('self') && !effectiveMuted('audio');
    set(el.localTile, self);
    set(state.peopleItems.get('self'), self);
  }

  // ---------------------------------------------------------------- side panel (people / chat)

  function setPanel(tab, { focus = true } = {}) {
    state.panel = tab;
    el.sidePanel.hidden = !tab;
    if (tab) el.sidePanel.dataset.tab = tab;
    el.peoplePanel.hidden = tab !== 'people';
    el.chatPanel.hidden = tab !== 'chat';
    document.body.classList.toggle('panel-open', !!tab);
    el.peopleToggle.setAttribute('aria-expanded', String(tab === 'people'));
    el.chatToggle.setAttribute('aria-expanded', String(tab === 'chat'));
    updatePanelTitle();
    if (tab === 'chat') {
      state.unread = 0;
      renderUnread();
      el.chatLog.scrollTop = el.chatLog.scrollHeight;
      if (focus) el.chatInput.focus();
    } else {
      renderUnread();
    }
    if (tab === 'people' && focus) el.panelClose.focus();
    layoutGrid();
  }

  function updatePanelTitle() {
    el.panelTitle.textContent = state.panel === 'people' ? `People (${state.participants.size + 1})` : 'Chat';
  }

  function renderUnread() {
    const n = state.unread;
    el.chatUnread.hidden = n === 0;
    el.chatUnread.textContent = n > 99 ? '99+' : String(n);
    el.chatToggle.setAttribute('aria-label', n ? `Chat, ${n} unread message${n === 1 ? '' : 's'}` : 'Chat');
    el.chatToggle.title = el.chatToggle.getAttribute('aria-label');
    const base = state.room ? `${state.room} – Video chat` : 'Video chat';
    document.title = n ? `(${n}) ${base}` : base;
  }

  el.chatToggle.addEventListener('click', () => setPanel(state.panel === 'chat' ? null : 'chat'));
  el.peopleToggle.addEventListener('click', () => setPanel(state.panel === 'people' ? null : 'people'));
  el.panelClose.addEventListener('click', () => {
    const was = state.panel;
    setPanel(null);
    (was === 'people' ? el.peopleToggle : el.chatToggle).focus();
  });
  document.addEventListener('keydown', (ev) => {
    // Escape closes the panel when it is an overlay (small screens).
    if (ev.key === 'Escape' && state.panel && narrowScreen.matches) {
      const was = state.panel;
      setPanel(null);
      (was === 'people' ? el.peopleToggle : el.chatToggle).focus();
    }
  });

  function renderPeople() {
    const items = [];
    state.peopleItems.clear();
    const make = (key, name, avatarKey, label = name) => {
      const li = el.personTemplate.content.firstElementChild.cloneNode(true);
      li.querySelector('.person-name').textContent = label;
      setAvatar(li.querySelector('.avatar'), name, avatarKey);
      state.peopleItems.set(key, li);
      items.push(li);
      return li;
    };
    if (state.self || state.name) {
      const myName = state.self ? state.self.name : state.name;
      const me = make('self', myName, state.self ? state.self.id : state.name, `${myName} (you)`);
      me.classList.add('person-self');
      me.querySelector('.person-state').dataset.muted = mutedList(effectiveMuted('audio'), effectiveMuted('video'));
    }
    for (const [id, name] of state.participants) {
      const li = make(id, name, id);
      li.dataset.participantRef = id;
      const m = state.remoteMedia.get(id) || { audio: false, video: false };
      li.querySelector('.person-state').dataset.muted = mutedList(m.audio, m.video);
      const whisper = li.querySelector('.person-whisper');
      whisper.hidden = false;
      whisper.setAttribute('aria-label', `Send a private message to ${name}`);
      whisper.title = whisper.getAttribute('aria-label');
      whisper.addEventListener('click', () => {
        el.chatTo.value = id;
        updateChatTarget();
        setPanel('chat');
      });
    }
    el.people.replaceChildren(...items);
    el.peopleCount.textContent = String(state.participants.size + 1);
    el.peopleToggle.setAttribute('aria-label', `Participants (${state.participants.size + 1})`);
    el.peopleToggle.title = `${state.participants.size + 1} in the call`;
    updatePanelTitle();
    layoutGrid();
    renderSpeaking(performance.now());
  }

  function renderChatTargets() {
    const current = el.chatTo.value;
    const everyone = document.createElement('option');
    everyone.value = '';
    everyone.textContent = 'Everyone';
    const options = [everyone];
    for (const [id, name] of state.participants) {
      const o = document.createElement('option');
      o.value = id;
      o.textContent = `${name} (private)`;
      options.push(o);
    }
    el.chatTo.replaceChildren(...options);
    el.chatTo.value = state.participants.has(current) ? current : '';
    if (current && !state.participants.has(current)) addSystemMessage('The person you were messaging privately left; messages now go to everyone.');
    updateChatTarget();
  }

  function updateChatTarget() {
    const to = el.chatTo.value;
    const isPrivate = to !== '' && state.participants.has(to);
    el.chatForm.classList.toggle('is-private', isPrivate);
    el.chatPrivateNote.hidden = !isPrivate;
    updateChatControls();
  }
  el.chatTo.addEventListener('change', updateChatTarget);

  // ---------------------------------------------------------------- chat

  function setupDataChannel(dc) {
    sfu.dc = dc;
    dc.binaryType = 'arraybuffer';
    dc.addEventListener('open', () => {
      updateChatControls();
      // Tell the others what is muted (they assume nothing is until told).
      if (sfu.dc === dc && (effectiveMuted('audio') || effectiveMuted('video'))) sendState();
    });
    dc.addEventListener('close', updateChatControls);
    dc.addEventListener('error', (ev) => console.warn('chat channel error', ev && ev.error));
    dc.addEventListener('message', (ev) => {
      let text;
      if (typeof ev.data === 'string') text = ev.data;
      else if (ev.data instanceof ArrayBuffer) text = decoder.decode(ev.data);
      else return;
      sfu.dcLog.push(text);
      if (sfu.dcLog.length > DC_LOG_MAX) sfu.dcLog.splice(0, sfu.dcLog.length - DC_LOG_MAX);
      let msg;
      try {
        msg = JSON.parse(text);
      } catch {
        console.warn('ignoring malformed chat message');
        return;
      }
      handleChannelMessage(msg);
    });
  }

  function updateChatControls() {
    const open = !!sfu.dc && sfu.dc.readyState === 'open' && !state.ended;
    const text = el.chatInput.value;
    const over = encoder.encode(text).length > MAX_CHAT_BYTES;
    el.chatSend.disabled = !open || text.trim() === '' || over;
    const to = el.chatTo.value;
    const target = to && state.participants.get(to);
    el.chatInput.placeholder = state.ended ? 'Chat is closed'
      : (!open ? 'Chat is connecting…' : (target ? `Private message to ${target}` : 'Send a message to everyone'));
  }

  function handleChannelMessage(msg) {
    if (!msg || typeof msg !== 'object') return;
    if (msg.type === 'state') {
      if (typeof msg.from !== 'string' || (state.self && msg.from === state.self.id)) return;
      state.remoteMedia.set(msg.from, { audio: msg.audio_muted === true, video: msg.video_muted === true });
      if (msg.audio_muted === true) state.speakingUntil.delete(msg.from);
      const t = state.tiles.get(msg.from);
      if (t) updateTileMedia(t);
      const li = state.peopleItems.get(msg.from);
      if (li) li.querySelector('.person-state').dataset.muted = mutedList(msg.audio_muted === true, msg.video_muted === true);
      return;
    }
    if (msg.type === 'error') {
      const code = String(msg.code || 'error');
      const friendly = {
        unknown_participant: 'That person is no longer in the room, so the message was not delivered.',
        too_large: `The message is too long (more than ${MAX_CHAT_BYTES} bytes) and was not sent.`,
        bad_request: 'The message was refused (it was empty or malformed).',
      }[code] || 'The message could not be sent.';
      console.warn(`chat error ${code}: ${msg.message || ''}`);
      addChatError(friendly);
      return;
    }
    if (msg.type !== 'chat' || typeof msg.from !== 'string' || typeof msg.text !== 'string') return;
    const isPrivate = msg.to !== null && msg.to !== undefined;
    // Broadcasts are not echoed by the SFU; our own copy was shown when sending.
    if (!isPrivate && state.self && msg.from === state.self.id) return;
    addChatMessage({
      from: msg.from,
      name: typeof msg.name === 'string' ? msg.name : (state.participants.get(msg.from) ?? msg.from),
      to: isPrivate ? String(msg.to) : null,
      text: msg.text,
      ts: typeof msg.ts === 'number' ? msg.ts : Date.now(),
    });
  }

  function addChatMessage({ from, name, to, text, ts }) {
    const mine = !!state.self && from === state.self.id;
    const isPrivate = to !== null;
    const item = document.createElement('div');
    item.className = 'chat-message' + (mine ? ' is-mine' : '') + (isPrivate ? ' is-private' : '');
    item.dataset.from = from;
    item.dataset.private = isPrivate ? 'true' : 'false';

    const meta = document.createElement('div');
    meta.className = 'chat-meta';
    const who = document.createElement('span');
    who.className = 'chat-name';
    who.textContent = mine ? 'You' : name;
    meta.append(who);
    if (isPrivate) {
      const tag = document.createElement('span');
      tag.className = 'chat-private-tag';
      const icon = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
      icon.setAttribute('class', 'icon');
      icon.setAttribute('aria-hidden', 'true');
      const use = document.createElementNS('http://www.w3.org/2000/svg', 'use');
      use.setAttribute('href', '#i-lock');
      icon.append(use);
      const label = document.createElement('span');
      if (mine && to !== from) label.textContent = `Private to ${state.participants.get(to) ?? 'someone who left'}`;
      else if (mine) label.textContent = 'Private note to yourself';
      else label.textContent = 'Private message to you';
      tag.append(icon, label);
      meta.append(tag);
    }
    const date = new Date(ts);
    const time = document.createElement('time');
    time.className = 'chat-time';
    if (!Number.isNaN(date.getTime())) {
      time.dateTime = date.toISOString();
      time.textContent = date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
      time.title = date.toLocaleString();
    }
    meta.append(time);

    const body = document.createElement('div');
    body.className = 'chat-text';
    body.textContent = text;

    item.append(meta, body);
    appendToLog(item);
    if (!mine && state.panel !== 'chat') {
      state.unread += 1;
      renderUnread();
    }
  }

  function addChatError(text) {
    const item = document.createElement('div');
    item.className = 'chat-error';
    item.setAttribute('role', 'alert');
    item.textContent = text;
    appendToLog(item, true);
  }

  function addSystemMessage(text) {
    const item = document.createElement('div');
    item.className = 'chat-system';
    item.textContent = text;
    appendToLog(item);
  }

  function appendToLog(item, forceScroll = false) {
    const log = el.chatLog;
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 60;
    log.append(item);
    // Keep the log bounded.
    while (log.children.length > 500) log.firstElementChild.remove();
    if (atBottom || forceScroll || item.classList.contains('is-mine')) log.scrollTop = log.scrollHeight;
  }

  function sendChat() {
    const text = el.chatInput.value;
    if (text.trim() === '') return;
    const bytes = encoder.encode(text).length;
    if (bytes > MAX_CHAT_BYTES) {
      addChatError(`Your message is too long: ${bytes} bytes (the limit is ${MAX_CHAT_BYTES}). Please shorten it — it was not sent.`);
      updateChatCount();
      return;
    }
    const dc = sfu.dc;
    if (!dc || dc.readyState !== 'open' || !state.self) {
      addChatError('Chat is not connected yet; the message was not sent.');
      return;
    }
    const to = el.chatTo.value || null;
    if (to !== null && !state.participants.has(to)) {
      addChatError('That person is no longer in the room.');
      renderChatTargets();
      return;
    }
    try {
      dc.send(JSON.stringify({ type: 'chat', to, text }));
    } catch (err) {
      addChatError(`The message could not be sent (${err && err.message ? err.message : err}).`);
      return;
    }
    el.chatInput.value = '';
    updateChatCount();
    // Whispers are echoed by the SFU (shown when the echo arrives); broadcasts are not.
    if (to === null) addChatMessage({ from: state.self.id, name: state.self.name, to: null, text, ts: Date.now() });
  }

  function updateChatCount() {
    const bytes = encoder.encode(el.chatInput.value).length;
    const over = bytes > MAX_CHAT_BYTES;
    const show = bytes > MAX_CHAT_BYTES * 0.8;
    el.chatCount.hidden = !show;
    el.chatCount.textContent = !show ? '' : (over
      ? `Too long: ${bytes} of ${MAX_CHAT_BYTES} bytes. Shorten the message to send it.`
      : `${bytes} of ${MAX_CHAT_BYTES} bytes`);
    el.chatCount.classList.toggle('over', over);
    if (over) el.chatInput.setAttribute('aria-invalid', 'true');
    else el.chatInput.removeAttribute('aria-invalid');
    updateChatControls();
  }

  el.chatForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    sendChat();
  });
  el.chatInput.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.isComposing && !ev.shiftKey) {
      ev.preventDefault();
      sendChat();
    }
  });
  el.chatInput.addEventListener('input', updateChatCount);

  // ---------------------------------------------------------------- leave / teardown

  function teardown() {
    state.ended = true;
    stopRetry();
    stopLevelPolling();
    state.outbox = [];
    state.sessionReady = false;
    const { dc, pc, ws } = sfu;
    try { if (dc) dc.close(); } catch { /* already closed */ }
    try { if (pc) pc.close(); } catch { /* already closed */ }
    try { if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000, 'bye'); } catch { /* already closed */ }
    if (state.localStream) state.localStream.getTracks().forEach((t) => t.stop());
    if (state.preview && state.preview !== state.localStream) state.preview.getTracks().forEach((t) => t.stop());
    if (state.selfMeter) state.selfMeter.close();
    state.selfMeter = null;
    el.localVideo.srcObject = null;
    for (const id of Array.from(state.tiles.keys())) removeTile(id);
    state.speakingUntil.clear();
    renderSpeaking(performance.now());
    el.leave.disabled = true;
    el.enableSound.hidden = true;
    updateChatControls();
    renderLocalMedia();
  }

  /** Show the end-of-call card instead of the video grid. */
  function showEndCard({ title, text = '', detail = '', rejoinLabel = 'Rejoin' }) {
    document.body.dataset.view = 'ended';
    el.endTitle.textContent = title;
    el.endText.textContent = detail ? `${text} ${detail}`.trim() : text;
    el.endText.hidden = !el.endText.textContent;
    el.rejoin.textContent = rejoinLabel;
    el.endCard.hidden = false;
    el.grid.hidden = true;
    el.waiting.hidden = true;
    el.controls.hidden = true;
    el.rejoin.focus();
  }

  function fail(dataState, statusText, bannerText, card = {}) {
    if (state.ended) return;
    teardown();
    setStatus(dataState, statusText);
    if (bannerText) showBanner(dataState === 'error' || dataState === 'failed' ? 'error' : 'warning', bannerText);
    showEndCard({ title: card.title || statusText, text: card.text || bannerText || '', detail: card.detail || '', rejoinLabel: card.rejoinLabel || 'Rejoin' });
  }

  function leave() {
    if (state.ended) return;
    // Best effort: while signaling is reconnecting there is no session to leave; the server then
    // removes us after its resume window (or the ICE timeout once our peer connection is closed).
    send({ type: 'leave' });
    teardown();
    setStatus('closed', 'You left the room');
    hideBanner();
    addSystemMessage('You left the room.');
    showEndCard({ title: 'You left the room', text: state.room ? `Room: ${state.room}` : '' });
  }

  el.leave.addEventListener('click', leave);
  el.rejoin.addEventListener('click', () => location.reload());
  el.newRoom.addEventListener('click', () => {
    const p = new URLSearchParams();
    if (state.name) p.set('name', state.name);
    location.href = `${location.pathname}${p.toString() ? `?${p}` : ''}`;
  });
  el.invite.addEventListener('click', async () => {
    const link = `${location.origin}${location.pathname}?room=${encodeURIComponent(state.room)}`;
    try {
      await navigator.clipboard.writeText(link);
      el.inviteText.textContent = 'Link copied';
    } catch {
      window.prompt('Invite link:', link);
    }
    setTimeout(() => { el.inviteText.textContent = 'Copy invite link'; }, 2000);
  });
  // Closing the WebSocket alone does not remove us (the server keeps the session for a resume), so a
  // closing tab says `leave` explicitly (best effort; the frame is queued before the close frame).
  const leaveOnUnload = () => {
    if (state.ended || !state.joined) return;
    send({ type: 'leave' });
    teardown();
    setStatus('closed', 'You left the room');
  };
  window.addEventListener('pagehide', leaveOnUnload);
  window.addEventListener('beforeunload', leaveOnUnload);
  // Restored from the back/forward cache after leaving: start over rather than show a dead call.
  window.addEventListener('pageshow', (ev) => {
    if (ev.persisted && state.ended) location.reload();
  });

  // ---------------------------------------------------------------- boot

  function init() {
    const room = params.get('room');
    const name = params.get('name');
    const okName = cleanName(name);
    if (room !== null && name !== null && validRoom(room) && okName) {
      start(room, okName, acquireMedia(prefs.get('camera'), prefs.get('mic')));
      return;
    }
    let error = '';
    if (room !== null && room !== '' && !validRoom(room)) error = `That room name is not valid. ${roomProblem(room)}`;
    else if (name !== null && name.trim() !== '' && !okName) error = nameProblem(name);
    showJoinForm(room && validRoom(room) ? room : '', name !== null ? name.trim() : '', error);
    if (error) validateJoinForm();
  }

  init();
})();
