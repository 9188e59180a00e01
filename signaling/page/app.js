// Browser client for the SFU video chat. Plain standards JavaScript, no build step.
// Implements docs/protocol.md: WebSocket JSON signaling on /ws, one RTCPeerConnection to the SFU,
// sendonly camera + microphone, server-initiated renegotiation (the client is the impolite peer),
// and the `chat` DataChannel.
//
// Security: every name and chat text is rendered with textContent, never innerHTML.
'use strict';

(() => {
  const MAX_CHAT_BYTES = 4096;
  const ROOM_RE = /^[A-Za-z0-9_.-]{1,64}$/;
  // C0 and C1 control characters (the server refuses names containing them).
  const CONTROL_RE = /[\u0000-\u001f\u007f-\u009f]/;

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
    needsUnmute: false,
  };

  // Exposed for tests and debugging; properties are updated as objects are created.
  const sfu = { pc: null, ws: null, participantId: null, dc: null, localStream: null, room: null, name: null };
  window.sfu = sfu;

  // ---------------------------------------------------------------- status & banner

  function setStatus(dataState, text) {
    el.status.dataset.state = dataState;
    el.statusText.textContent = text;
    document.body.dataset.callState = dataState;
  }

  function showBanner(kind, text, { autoHideMs = 0 } = {}) {
    clearTimeout(state.bannerTimer);
    el.banner.dataset.state = kind;
    el.bannerText.textContent = text;
    el.banner.hidden = false;
    if (autoHideMs > 0) state.bannerTimer = setTimeout(hideBanner, autoHideMs);
  }

  function hideBanner() {
    clearTimeout(state.bannerTimer);
    el.banner.hidden = true;
    el.banner.dataset.state = 'none';
    el.bannerText.textContent = '';
  }

  el.bannerClose.addEventListener('click', hideBanner);

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
    openSocket();
  }

  function openSocket() {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    let ws;
    try {
      ws = new WebSocket(`${proto}//${location.host}/ws`);
    } catch (err) {
      fail('error', 'Could not connect to the server.', String(err));
      return;
    }
    sfu.ws = ws;
    let opened = false;
    ws.addEventListener('open', () => {
      opened = true;
      const join = { type: 'join', room: state.room, name: state.name };
      if (state.token) join.token = state.token;
      send(join);
      setStatus('connecting', 'Joining room…');
    });
    ws.addEventListener('message', (ev) => {
      if (typeof ev.data !== 'string') return;
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        console.warn('ignoring malformed signaling message');
        return;
      }
      if (!msg || typeof msg !== 'object' || typeof msg.type !== 'string') return;
      enqueue(() => handleMessage(msg));
    });
    ws.addEventListener('close', (ev) => {
      if (sfu.ws !== ws) return;
      // Let queued messages (e.g. `left`, `error`) be handled first so their status wins.
      enqueue(() => onSocketClosed(ev, opened));
    });
  }

  function send(msg) {
    const ws = sfu.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(msg));
    return true;
  }

  function enqueue(fn) {
    state.chain = state.chain.then(fn).catch((err) => {
      console.error('signaling step failed:', err);
      if (!state.ended) showBanner('error', `Something went wrong while negotiating media: ${err && err.message ? err.message : err}`);
    });
    return state.chain;
  }

  function onSocketClosed(ev, opened) {
    if (state.ended) return;
    if (!opened) {
      fail('error', 'Could not reach the server.', 'The connection to the server could not be opened. Please try again later.');
    } else if (ev.code === 1009) {
      fail('disconnected', 'Disconnected', 'The server closed the connection (message too big).');
    } else {
      fail('disconnected', 'Disconnected from server', `The connection to the server was lost${ev.code ? ` (code ${ev.code})` : ''}.`);
    }
  }

  // ---------------------------------------------------------------- signaling messages

  async function handleMessage(msg) {
    if (state.ended) return;
    switch (msg.type) {
      case 'joined': return onJoined(msg);
      case 'answer': return onAnswer(msg);
      case 'offer': return onOffer(msg);
      case 'participant_joined': return onParticipantJoined(msg);
      case 'participant_left': return onParticipantLeft(msg);
      case 'left': return onLeft(msg);
      case 'error': return onError(msg);
      default:
        console.warn('ignoring unknown signaling message type', msg.type);
    }
  }

  async function onJoined(msg) {
    if (state.joined) return;
    const me = msg.participant;
    if (!me || typeof me.id !== 'string') throw new Error('malformed joined message');
    state.joined = true;
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

    const stream = await state.mediaPromise;
    if (state.ended) return;

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
    await pc.setRemoteDescription({ type: 'offer', sdp: String(msg.sdp) });
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
    };
    const why = reasons[msg.reason] || String(msg.reason || 'unknown reason');
    fail('disconnected', 'Removed from the room', `You were removed from the room: ${why}.`);
  }

  function onError(msg) {
    const code = String(msg.code || 'error');
    const text = String(msg.message || '');
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
      switch (s) {
        case 'connected':
          if (state.joined) {
            setStatus('connected', 'Connected');
            if (el.banner.dataset.state === 'warning-connection') hideBanner();
          }
          break;
        case 'disconnected':
          setStatus('disconnected', 'Connection interrupted – reconnecting…');
          break;
        case 'failed':
          setStatus('failed', 'Media connection failed');
          showBanner('error', 'The media connection failed. Check your network (a firewall may block UDP) and rejoin.');
          break;
        case 'closed':
          setStatus('closed', 'Connection closed');
          break;
        default:
          setStatus('connecting', 'Connecting media…');
      }
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
        showBanner('info', 'Click anywhere to turn on sound.');
        const unmute = () => {
          state.needsUnmute = false;
          for (const t of state.tiles.values()) {
            t.video.muted = false;
            t.video.play().catch(() => {});
          }
          if (el.banner.dataset.state === 'info') hideBanner();
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
  window.addEventListener('pagehide', () => {
    if (!state.ended && state.joined) send({ type: 'leave' });
  });

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
