// Browser client for the SFU video chat. Plain standards JavaScript, no build step.
// Implements docs/protocol.md: WebSocket JSON signaling on /ws, one RTCPeerConnection to the SFU,
// sendonly camera + microphone, server-initiated renegotiation (the client is the impolite peer),
// the `chat` DataChannel, and session resume after a lost WebSocket (docs/protocol.md, "Connection
// loss and resume"): the peer connection and its media survive a signaling restart.
//
// Security: every name and chat text is rendered with textContent, never innerHTML.
'use strict';

(() => {
  const MAX_CHAT_BYTES = 4096;
  const ROOM_RE = /^[A-Za-z0-9_.-]{1,64}$/;
  // C0 and C1 control characters (the server refuses names containing them).
  const CONTROL_RE = /[\u0000-\u001f\u007f-\u009f]/;
  // Reconnecting after a lost WebSocket: exponential backoff with a little jitter, for at most the
  // server's resume window. A connection attempt that does not open in time is abandoned.
  const RETRY = { firstDelayMs: 250, factor: 2, maxDelayMs: 4000, jitter: 0.2, windowMs: 30000, connectTimeoutMs: 5000 };

  const $ = (id) => document.getElementById(id);
  const el = {
    status: $('status'),
    statusText: $('status-text'),
    roomLabel: $('room-label'),
    invite: $('invite'),
    rejoin: $('rejoin'),
    leave: $('leave'),
    banner: $('banner'),
    bannerText: $('banner-text'),
    bannerClose: $('banner-close'),
    joinView: $('join-view'),
    joinForm: $('join-form'),
    joinRoom: $('join-room'),
    joinName: $('join-name'),
    joinError: $('join-error'),
    joinButton: $('join-button'),
    callView: $('call-view'),
    grid: $('video-grid'),
    localTile: $('local-tile'),
    localVideo: $('local-video'),
    localName: $('local-name'),
    people: $('people-list'),
    chatLog: $('chat-log'),
    chatForm: $('chat-form'),
    chatTo: $('chat-to'),
    chatInput: $('chat-input'),
    chatSend: $('chat-send'),
    chatCount: $('chat-count'),
  };

  const params = new URLSearchParams(location.search);
  const encoder = new TextEncoder();
  const decoder = new TextDecoder();

  const state = {
    room: null,
    name: null,
    token: params.get('token') || null,
    relayOnly: params.get('iceTransportPolicy') === 'relay',
    self: null, // {id, name} once joined
    participants: new Map(), // other participant id -> name
    leftIds: new Set(), // ids that left: late tracks for them are ignored
    tiles: new Map(), // participant id -> {tile, video, nameEl, stream}
    trackOwner: new Map(), // remote track id -> participant id
    joined: false,
    ended: false, // left / disconnected / failed for good: no more status changes
    mediaPromise: null,
    localStream: null,
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
  };

  // Exposed for tests and debugging; properties are updated as objects are created (and replaced
  // after a rejoin). After a resume `pc` and `dc` stay the same objects and `ws` is the new socket.
  const sfu = {
    pc: null, ws: null, participantId: null, dc: null, localStream: null, room: null, name: null,
    resumes: 0, // sessions resumed on a new WebSocket (same peer connection)
    rejoins: 0, // fresh joins after a failed resume or a closed room (new peer connection)
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

  // ---------------------------------------------------------------- validation

  function cleanName(raw) {
    const name = String(raw ?? '').trim();
    const chars = Array.from(name).length;
    if (chars < 1 || chars > 64 || CONTROL_RE.test(name)) return null;
    return name;
  }

  function validRoom(raw) {
    return typeof raw === 'string' && ROOM_RE.test(raw);
  }

  function randomRoom() {
    const bytes = new Uint8Array(4);
    crypto.getRandomValues(bytes);
    return 'room-' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  // ---------------------------------------------------------------- join form

  function showJoinForm(room, name, error) {
    setStatus('idle', 'Not connected');
    el.joinView.hidden = false;
    el.callView.hidden = true;
    el.joinRoom.value = room || randomRoom();
    el.joinName.value = name || '';
    if (error) {
      el.joinError.textContent = error;
      el.joinError.hidden = false;
    }
    const update = () => {
      el.joinButton.disabled = !(cleanName(el.joinName.value) && validRoom(el.joinRoom.value.trim()));
    };
    el.joinRoom.addEventListener('input', update);
    el.joinName.addEventListener('input', update);
    update();
    el.joinForm.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const r = el.joinRoom.value.trim();
      const n = cleanName(el.joinName.value);
      if (!validRoom(r)) {
        el.joinError.textContent = 'Room: 1–64 characters from A–Z a–z 0–9 _ . -';
        el.joinError.hidden = false;
        return;
      }
      if (!n) {
        el.joinError.textContent = 'Name: 1–64 characters, no control characters.';
        el.joinError.hidden = false;
        return;
      }
      // Put room and name in the URL so a reload rejoins.
      const p = new URLSearchParams(location.search);
      p.set('room', r);
      p.set('name', n);
      history.replaceState(null, '', `${location.pathname}?${p}`);
      start(r, n);
    });
    (name ? el.joinRoom : el.joinName).focus();
  }

  // ---------------------------------------------------------------- start / socket

  function start(room, name) {
    state.room = room;
    state.name = name;
    sfu.room = room;
    sfu.name = name;
    el.joinView.hidden = true;
    el.callView.hidden = false;
    el.roomLabel.textContent = room;
    el.roomLabel.hidden = false;
    el.invite.hidden = false;
    el.leave.hidden = false;
    el.leave.disabled = false;
    el.localName.textContent = `${name} (you)`;
    setInitial(el.localTile, name);
    document.title = `${room} – Video chat`;
    setStatus('connecting', 'Connecting…');
    renderPeople();
    updateGrid();
    updateChatControls();

    // Start the camera in parallel with the signaling handshake; awaited before the first offer.
    state.mediaPromise = getLocalMedia();
    openSocket('join');
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
      else fail('error', 'Could not connect to the server.', String(err));
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
      if (!state.ended) showBanner('error', `Something went wrong while negotiating media: ${err && err.message ? err.message : err}`);
    });
    return state.chain;
  }

  function onSocketClosed(ev, opened, ws) {
    if (state.ended || sfu.ws !== ws) return;
    state.sessionReady = false;
    if (state.joined && state.resumeToken) {
      // Signaling restarted or crashed (1012, 1006, …): media is unaffected. Resume the session.
      connectionLost('resume', 'Connection to the server lost — reconnecting…');
    } else if (state.rejoining || (state.retry && state.retry.mode === 'join')) {
      connectionLost('join', 'Connection to the server lost — rejoining…');
    } else if (!opened) {
      fail('error', 'Could not reach the server.', 'The connection to the server could not be opened. Please try again later.');
    } else if (ev.code === 1009) {
      fail('disconnected', 'Disconnected', 'The server closed the connection (message too big).');
    } else {
      fail('disconnected', 'Disconnected from server', `The connection to the server was lost${ev.code ? ` (code ${ev.code})` : ''}.`);
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
      fail('disconnected', 'Disconnected from server', 'Could not reconnect to the server. Check your network and click Rejoin.');
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
    setInitial(el.localTile, state.self.name);
    for (const p of Array.isArray(msg.participants) ? msg.participants : []) {
      if (p && typeof p.id === 'string' && p.id !== me.id) state.participants.set(p.id, String(p.name ?? p.id));
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
      state.participants.delete(id);
      state.leftIds.add(id);
      removeTile(id);
      addSystemMessage(`${name} left`);
    }
    for (const id of Array.from(state.tiles.keys())) {
      if (!now.has(id)) removeTile(id);
    }
    for (const [id, name] of now) {
      const known = state.participants.has(id);
      state.participants.set(id, name);
      state.leftIds.delete(id);
      const tile = state.tiles.get(id);
      if (tile) {
        tile.nameEl.textContent = name;
        setInitial(tile.tile, name);
      }
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
    const tile = state.tiles.get(p.id);
    if (tile) {
      tile.nameEl.textContent = name;
      setInitial(tile.tile, name);
    }
    renderPeople();
    renderChatTargets();
    if (!known) addSystemMessage(`${name} joined`);
  }

  function onParticipantLeft(msg) {
    const id = msg.participant_id;
    if (typeof id !== 'string') return;
    const name = state.participants.get(id);
    state.participants.delete(id);
    state.leftIds.add(id);
    removeTile(id);
    renderPeople();
    renderChatTargets();
    if (name !== undefined) addSystemMessage(`${name} left`);
  }

  function onLeft(msg) {
    const reasons = {
      timeout: 'the connection timed out',
      closed: 'the connection was closed',
      failed: 'the session failed',
      shutdown: 'the server is shutting down',
      abandoned: 'the connection to the server was lost for too long',
      room_closed: 'the room was closed',
    };
    const why = reasons[msg.reason] || String(msg.reason || 'unknown reason');
    // The server closes the WebSocket next; no automatic reconnect.
    fail('closed', 'Removed from the room', `You were removed from the room: ${why}.`);
  }

  /**
   * The media node hosting the room failed (or the room moved). The WebSocket stays open: drop the
   * peer connection and join again on it; the room is placed on a healthy node.
   */
  function onRoomClosed(msg) {
    if (!state.joined) return;
    const moved = msg.reason === 'moved';
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

  function onError(msg) {
    const code = String(msg.code || 'error');
    const text = String(msg.message || '');
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
    const friendly = {
      room_full: 'This room is full.',
      unauthorized: 'You are not allowed to join this room (missing or invalid token).',
      unavailable: 'The media server is unavailable right now. Please try again later.',
      internal: 'The server hit an internal error.',
      bad_request: 'The server refused a request.',
    }[code] || 'The server reported an error.';
    const detail = text ? ` (${code}: ${text})` : ` (${code})`;
    if (!state.joined) {
      fail('error', 'Could not join', friendly + detail);
    } else {
      // The connection stays usable (e.g. a refused answer after glare is followed by a new offer).
      showBanner('error', friendly + detail, { autoHideMs: 10000 });
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
        showBanner('error', 'The media connection failed. Check your network (a firewall may block UDP) and rejoin.', { tag: 'media' });
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
    ev.track.addEventListener('ended', () => {
      const t = state.tiles.get(id);
      if (t && t.stream && t.stream.getTracks().every((tr) => tr.readyState === 'ended')) removeTile(id);
    });
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
      if (stream.getTracks().length === 0) removeTile(id);
      else updateTileMedia(t);
    });
  }

  // After each completed negotiation: drop tiles whose tracks are no longer being received
  // (their m-lines were stopped with port 0 or made inactive by the server).
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
    for (const id of Array.from(state.tiles.keys())) {
      if (!live.has(id)) removeTile(id);
    }
  }

  // ---------------------------------------------------------------- local media

  async function getLocalMedia() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      mediaNotice('Camera and microphone are not available here (the page needs HTTPS). You joined without them and can still watch, listen and chat.');
      return null;
    }
    const attempts = [
      { audio: true, video: true },
      { audio: true, video: false },
      { audio: false, video: true },
    ];
    let stream = null;
    let firstError = null;
    for (const constraints of attempts) {
      try {
        stream = await navigator.mediaDevices.getUserMedia(constraints);
        break;
      } catch (err) {
        if (!firstError) firstError = err;
        // A refused permission will be refused again: do not prompt repeatedly.
        if (err && (err.name === 'NotAllowedError' || err.name === 'SecurityError')) break;
      }
    }
    if (!stream) {
      const denied = firstError && (firstError.name === 'NotAllowedError' || firstError.name === 'SecurityError');
      mediaNotice(denied
        ? 'Camera and microphone access was not allowed. You joined without them and can still watch, listen and chat.'
        : 'No camera or microphone could be opened. You joined without them and can still watch, listen and chat.');
      el.localTile.classList.add('no-video');
      return null;
    }
    if (state.ended) {
      stream.getTracks().forEach((t) => t.stop());
      return null;
    }
    state.localStream = stream;
    sfu.localStream = stream;
    el.localVideo.srcObject = stream;
    el.localVideo.muted = true;
    el.localVideo.play().catch(() => {});
    const hasVideo = stream.getVideoTracks().length > 0;
    const hasAudio = stream.getAudioTracks().length > 0;
    el.localTile.classList.toggle('no-video', !hasVideo);
    if (!hasVideo) mediaNotice('No camera could be opened: you joined with your microphone only.');
    else if (!hasAudio) mediaNotice('No microphone could be opened: you joined with your camera only.');
    return stream;
  }

  function mediaNotice(text) {
    showBanner('warning', text, { autoHideMs: 15000 });
  }

  // ---------------------------------------------------------------- tiles

  function ensureTile(id) {
    let t = state.tiles.get(id);
    if (t) return t;
    const tile = document.createElement('div');
    tile.className = 'tile tile-remote no-video';
    tile.dataset.tileFor = id;
    const video = document.createElement('video');
    video.autoplay = true;
    video.playsInline = true;
    video.setAttribute('autoplay', '');
    video.setAttribute('playsinline', '');
    video.dataset.participantId = id;
    video.muted = false;
    const placeholder = document.createElement('div');
    placeholder.className = 'tile-placeholder';
    placeholder.setAttribute('aria-hidden', 'true');
    const initial = document.createElement('span');
    initial.className = 'tile-initial';
    placeholder.append(initial);
    const label = document.createElement('div');
    label.className = 'tile-label';
    const nameEl = document.createElement('span');
    nameEl.className = 'tile-name';
    const name = state.participants.get(id) ?? 'Participant';
    nameEl.textContent = name;
    label.append(nameEl);
    tile.append(video, placeholder, label);
    setInitial(tile, name);
    el.grid.append(tile);
    t = { tile, video, nameEl, stream: null };
    state.tiles.set(id, t);
    updateGrid();
    return t;
  }

  function updateTileMedia(t) {
    const hasVideo = !!t.stream && t.stream.getVideoTracks().some((tr) => tr.readyState === 'live');
    t.tile.classList.toggle('no-video', !hasVideo);
  }

  function removeTile(id) {
    const t = state.tiles.get(id);
    if (!t) return;
    state.tiles.delete(id);
    t.video.srcObject = null;
    t.tile.remove();
    updateGrid();
  }

  function setInitial(tile, name) {
    const initial = tile.querySelector('.tile-initial');
    if (initial) initial.textContent = (Array.from(String(name || '?').trim())[0] || '?').toUpperCase();
  }

  function playRemote(video) {
    video.muted = state.needsUnmute;
    const p = video.play();
    if (!p || !p.catch) return;
    p.catch((err) => {
      if (!err || err.name !== 'NotAllowedError') return; // AbortError etc.: a newer load superseded it
      // Autoplay with sound was blocked: play muted and unmute on the first user gesture.
      video.muted = true;
      video.play().catch(() => {});
      if (!state.needsUnmute) {
        state.needsUnmute = true;
        showBanner('info', 'Click anywhere to turn on sound.', { tag: 'unmute' });
        const unmute = () => {
          state.needsUnmute = false;
          for (const t of state.tiles.values()) {
            t.video.muted = false;
            t.video.play().catch(() => {});
          }
          hideBanner('unmute');
        };
        document.addEventListener('click', unmute, { once: true, capture: true });
        document.addEventListener('keydown', unmute, { once: true, capture: true });
      }
    });
  }

  function updateGrid() {
    const count = state.tiles.size + 1;
    el.grid.dataset.count = String(count);
    const width = el.grid.clientWidth || window.innerWidth;
    const maxCols = Math.max(1, Math.floor(width / 240));
    const cols = Math.max(1, Math.min(Math.ceil(Math.sqrt(count)), maxCols));
    el.grid.style.setProperty('--cols', String(cols));
  }

  window.addEventListener('resize', updateGrid);

  // ---------------------------------------------------------------- people & chat targets

  function renderPeople() {
    const items = [];
    if (state.self || state.name) {
      const li = document.createElement('li');
      li.className = 'person person-self';
      li.textContent = `${state.self ? state.self.name : state.name} (you)`;
      items.push(li);
    }
    for (const [id, name] of state.participants) {
      const li = document.createElement('li');
      li.className = 'person';
      li.dataset.participantRef = id;
      li.textContent = name;
      items.push(li);
    }
    el.people.replaceChildren(...items);
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
      o.textContent = name;
      options.push(o);
    }
    el.chatTo.replaceChildren(...options);
    el.chatTo.value = state.participants.has(current) ? current : '';
  }

  // ---------------------------------------------------------------- chat

  function setupDataChannel(dc) {
    sfu.dc = dc;
    dc.binaryType = 'arraybuffer';
    dc.addEventListener('open', updateChatControls);
    dc.addEventListener('close', updateChatControls);
    dc.addEventListener('error', (ev) => console.warn('chat channel error', ev && ev.error));
    dc.addEventListener('message', (ev) => {
      let text;
      if (typeof ev.data === 'string') text = ev.data;
      else if (ev.data instanceof ArrayBuffer) text = decoder.decode(ev.data);
      else return;
      let msg;
      try {
        msg = JSON.parse(text);
      } catch {
        console.warn('ignoring malformed chat message');
        return;
      }
      handleChat(msg);
    });
  }

  function updateChatControls() {
    const open = !!sfu.dc && sfu.dc.readyState === 'open' && !state.ended;
    el.chatSend.disabled = !open;
    el.chatInput.placeholder = open ? 'Type a message…' : (state.ended ? 'Chat is closed' : 'Chat connecting…');
  }

  function handleChat(msg) {
    if (!msg || typeof msg !== 'object') return;
    if (msg.type === 'error') {
      const code = String(msg.code || 'error');
      const friendly = {
        unknown_participant: 'That person is no longer in the room; the message was not delivered.',
        too_large: `The message is too long (max ${MAX_CHAT_BYTES} bytes) and was not sent.`,
        bad_request: 'The message was refused.',
      }[code] || 'The message could not be sent.';
      addChatError(msg.message ? `${friendly} (${code}: ${msg.message})` : `${friendly} (${code})`);
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
    who.textContent = mine ? `${name} (you)` : name;
    meta.append(who);
    if (isPrivate) {
      const tag = document.createElement('span');
      tag.className = 'chat-private-tag';
      if (mine) {
        const target = state.participants.get(to) ?? to;
        tag.textContent = `private to ${target}`;
      } else {
        tag.textContent = 'private';
      }
      meta.append(tag);
    }
    const date = new Date(ts);
    const time = document.createElement('time');
    time.className = 'chat-time';
    if (!Number.isNaN(date.getTime())) {
      time.dateTime = date.toISOString();
      time.textContent = date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    }
    meta.append(time);

    const body = document.createElement('div');
    body.className = 'chat-text';
    body.textContent = text;

    item.append(meta, body);
    appendToLog(item);
  }

  function addChatError(text) {
    const item = document.createElement('div');
    item.className = 'chat-error';
    item.setAttribute('role', 'alert');
    item.textContent = text;
    appendToLog(item);
  }

  function addSystemMessage(text) {
    const item = document.createElement('div');
    item.className = 'chat-system';
    item.textContent = text;
    appendToLog(item);
  }

  function appendToLog(item) {
    const log = el.chatLog;
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    log.append(item);
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  function sendChat() {
    const text = el.chatInput.value;
    if (text.trim() === '') return;
    const bytes = encoder.encode(text).length;
    if (bytes > MAX_CHAT_BYTES) {
      addChatError(`Your message is too long: ${bytes} bytes (the limit is ${MAX_CHAT_BYTES} bytes). It was not sent.`);
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
    dc.send(JSON.stringify({ type: 'chat', to, text }));
    el.chatInput.value = '';
    updateChatCount();
    // Whispers are echoed by the SFU (shown when the echo arrives); broadcasts are not.
    if (to === null) addChatMessage({ from: state.self.id, name: state.self.name, to: null, text, ts: Date.now() });
  }

  function updateChatCount() {
    const bytes = encoder.encode(el.chatInput.value).length;
    const show = bytes > MAX_CHAT_BYTES * 0.75;
    el.chatCount.hidden = !show;
    el.chatCount.textContent = show ? `${bytes} / ${MAX_CHAT_BYTES} bytes` : '';
    el.chatCount.classList.toggle('over', bytes > MAX_CHAT_BYTES);
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
    state.outbox = [];
    state.sessionReady = false;
    const { dc, pc, ws } = sfu;
    try { if (dc) dc.close(); } catch { /* already closed */ }
    try { if (pc) pc.close(); } catch { /* already closed */ }
    try { if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000, 'bye'); } catch { /* already closed */ }
    if (state.localStream) state.localStream.getTracks().forEach((t) => t.stop());
    el.localVideo.srcObject = null;
    for (const id of Array.from(state.tiles.keys())) removeTile(id);
    el.leave.disabled = true;
    el.leave.hidden = true;
    el.rejoin.hidden = false;
    updateChatControls();
  }

  function fail(dataState, statusText, bannerText) {
    if (state.ended) return;
    teardown();
    setStatus(dataState, statusText);
    if (bannerText) showBanner(dataState === 'error' || dataState === 'failed' ? 'error' : 'warning', bannerText);
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
  }

  el.leave.addEventListener('click', leave);
  el.rejoin.addEventListener('click', () => location.reload());
  el.invite.addEventListener('click', async () => {
    const link = `${location.origin}${location.pathname}?room=${encodeURIComponent(state.room)}`;
    try {
      await navigator.clipboard.writeText(link);
      el.invite.textContent = 'Link copied';
    } catch {
      window.prompt('Invite link:', link);
    }
    setTimeout(() => { el.invite.textContent = 'Copy invite link'; }, 2000);
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

  // ---------------------------------------------------------------- boot

  function init() {
    const room = params.get('room');
    const name = params.get('name');
    const okName = cleanName(name);
    if (room !== null && name !== null && validRoom(room) && okName) {
      start(room, okName);
      return;
    }
    let error = '';
    if (room !== null && room !== '' && !validRoom(room)) error = 'That room name is not valid: use 1–64 characters from A–Z a–z 0–9 _ . -';
    else if (name !== null && name.trim() !== '' && !okName) error = 'That name is not valid: use 1–64 characters, no control characters.';
    showJoinForm(room && validRoom(room) ? room : '', okName || '', error);
  }

  init();
})();
