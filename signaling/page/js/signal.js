// The signaling connection: the WebSocket to /ws, its messages handled one at a time in arrival
// order, and the connection state machine that joins, resumes a session after a lost socket
// (docs/protocol.md, "Connection loss and resume") and rejoins when the session is gone. The
// peer connection survives a resume; only a rejoin replaces it (main.js's `lost` hook).
//
// States (the client-side mirror of the server's session in signaling/src/session.rs):
//
//   idle          the pre-join screen; no socket                          (server: Idle)
//   connecting    the first socket is opening
//   joining       `join` sent, waiting for `joined`                       (server: Placing, Joining)
//   joined        the session is attached to the current socket           (server: Joined)
//   reconnecting  the socket is gone: waiting out a backoff or opening a new socket, to resume
//                 the session (retry.mode 'resume') or to join afresh (retry.mode 'join')
//   resuming      `join {resume}` sent on a new socket                    (server: Resuming)
//   closed        ended: left, or removed by the server                   (server: Leaving, Closed)
//   failed        ended: could not connect or join, or lost for good
//
// Transitions (TRANSITIONS below is the same table; go() refuses nothing but logs a move the
// table does not list):
//
//   idle          → connecting    connect(): the call view opened
//   connecting    → joining       the socket opened: `join` sent
//   joining       → joined        `joined`
//   joining       → reconnecting  a rejoin's socket closed, or its join was refused (unavailable,
//                                 internal): back off and join again
//   joined        → reconnecting  the socket closed (a resume token is held): back off, resume
//   joined        → reconnecting  `error resume_failed`: rejoin (retry.mode 'join')
//   joined        → joining       `room_closed`: the session is gone; join again on this socket
//   reconnecting  → resuming      a new socket opened: `join {resume}` sent
//   reconnecting  → joining       a new socket opened: `join` sent (retry.mode 'join')
//   reconnecting  → reconnecting  the attempt failed (next one after the backoff); or the resume
//                                 window ran out: rejoin (retry.mode 'join')
//   resuming      → joined        `joined {resumed: true}`
//   resuming      → reconnecting  the socket closed, or the resume was refused (`resume_failed`:
//                                 rejoin; anything else: resume again)
//   resuming      → joining       `room_closed`
//   (all but idle)→ closed        leave, or `left`
//   (all but idle)→ failed        could not connect or join; the socket closed with no session to
//                                 resume; a rejoin ran out of time
//
// Data beside the state: `retry` (the backoff and the resume window's deadline) lives from the
// first lost socket until joined or ended, so it spans reconnecting → joining/resuming attempts;
// `rejoin` marks a join that replaces a lost session (status "Rejoining…", `sfu.rejoins`). Every
// handler checks the state (and the socket it came from) before it changes anything; a message or
// timer the state does not expect changes nothing.
//
// Interface: main.js calls connect(hooks) once; the hooks hand the application's part over:
// `joined(msg, {rejoin})`, `resumed(msg)`, `canResume()`, `message(msg)` (offer, answer,
// participant_joined, participant_left), `lost()` (drop the session's peer connection and
// roster), `fail(dataState, statusText, bannerText, card)` and `status()` (refresh the status
// pill). Everyone else asks ended() / joined() and sends with send().

import { bannerTag, hideBanner, setStatus, showBanner } from './dom.js';
import { call } from './state.js';

// Reconnecting after a lost WebSocket: exponential backoff with a little jitter, for at most the
// server's resume window. A connection attempt that does not open in time is abandoned.
const RETRY = { firstDelayMs: 250, factor: 2, maxDelayMs: 4000, jitter: 0.2, windowMs: 30000, connectTimeoutMs: 5000 };

/** The allowed transitions: state -> the states it may move to (see the table above). */
const TRANSITIONS = {
  idle: ['connecting'],
  connecting: ['joining', 'closed', 'failed'],
  joining: ['joined', 'reconnecting', 'closed', 'failed'],
  joined: ['reconnecting', 'joining', 'closed', 'failed'],
  reconnecting: ['reconnecting', 'resuming', 'joining', 'closed', 'failed'],
  resuming: ['joined', 'reconnecting', 'joining', 'closed', 'failed'],
  closed: [],
  failed: [],
};

const token = new URLSearchParams(location.search).get('token') || null;

const conn = {
  state: 'idle',
  ws: null, // the current WebSocket; events of any other are ignored
  retry: null, // {mode: 'resume' | 'join', startedAt, attempt, timer, deadlineTimer} while reconnecting
  rejoin: false, // the join under way replaces a lost session (resume failed, room closed)
  resumeToken: null, // joined.resume: resumes this session on a new WebSocket
  chain: Promise.resolve(), // every incoming signaling message is handled in order on this chain
  resumes: 0, // sessions resumed on a new WebSocket (same peer connection)
  rejoins: 0, // fresh joins after a failed resume or a closed room (new peer connection)
};

let app = null; // the hooks given to connect()

function go(next) {
  if (!TRANSITIONS[conn.state].includes(next)) {
    console.error(`signaling: unexpected transition ${conn.state} -> ${next}`);
  }
  conn.state = next;
}

// ---------------------------------------------------------------- what others may ask

/** The call is over (left, removed, failed): nothing changes any more. */
export function ended() {
  return conn.state === 'closed' || conn.state === 'failed';
}

/** The server holds a session for us: attached, or detached and being resumed. */
export function joined() {
  return conn.state === 'joined' || conn.state === 'resuming'
    || (conn.state === 'reconnecting' && conn.retry !== null && conn.retry.mode === 'resume');
}

/** What the status pill needs: the state, the retry mode (or null) and whether this is a rejoin. */
export function connection() {
  return { state: conn.state, retry: conn.retry ? conn.retry.mode : null, rejoin: conn.rejoin };
}

export function currentSocket() {
  return conn.ws;
}

export function resumeCount() {
  return conn.resumes;
}

export function rejoinCount() {
  return conn.rejoins;
}

// ---------------------------------------------------------------- sending

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
 * Send a message of the joined session: only while it is attached to the current WebSocket
 * (state `joined`); false otherwise (peer.js queues offers and answers meanwhile). Never throws.
 */
export function send(msg) {
  return conn.state === 'joined' && rawSend(conn.ws, msg);
}

function sendJoin(ws) {
  const join = { type: 'join', room: call.room, name: call.name };
  if (token) join.token = token;
  rawSend(ws, join);
}

// ---------------------------------------------------------------- the socket

/** Start: join `call.room` as `call.name` (idle → connecting). */
export function connect(hooks) {
  app = hooks;
  go('connecting');
  openSocket('join');
}

/**
 * Open a WebSocket to /ws. `mode` 'join' sends a normal `join`; 'resume' sends `join {resume}`
 * to take the existing session (and its peer connection) over.
 */
function openSocket(mode) {
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  let ws;
  try {
    ws = new WebSocket(`${proto}//${location.host}/ws`);
  } catch (err) {
    if (conn.retry) scheduleAttempt();
    else app.fail('error', 'Could not connect', 'Could not connect to the server.', { title: 'Could not connect', detail: String(err) });
    return;
  }
  conn.ws = ws;
  let opened = false;
  // An attempt that hangs (e.g. packets silently dropped) is abandoned; its close schedules the next.
  const connectTimer = conn.retry ? setTimeout(() => {
    if (!opened && conn.ws === ws) ws.close();
  }, RETRY.connectTimeoutMs) : 0;
  ws.addEventListener('open', () => {
    opened = true;
    clearTimeout(connectTimer);
    if (conn.ws !== ws || ended()) return;
    if (mode === 'resume') {
      go('resuming');
      rawSend(ws, { type: 'join', resume: conn.resumeToken });
    } else {
      go('joining');
      sendJoin(ws);
      if (!conn.rejoin) setStatus('connecting', 'Joining room…');
    }
  });
  ws.addEventListener('message', (ev) => {
    if (typeof ev.data !== 'string' || conn.ws !== ws) return;
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
    if (conn.ws !== ws) return;
    // Let queued messages (e.g. `left`, `error`) be handled first so their status wins.
    enqueue(() => onSocketClosed(ev, opened, ws));
  });
}

/** Stop using the current WebSocket (its events are ignored from now on) and close it. */
function detachSocket(code = 1000, reason = '') {
  const ws = conn.ws;
  conn.ws = null;
  try {
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(code, reason);
  } catch { /* already closed */ }
}

function enqueue(fn) {
  conn.chain = conn.chain.then(fn).catch((err) => {
    console.error('signaling step failed:', err);
    if (!ended()) showBanner('error', `Something went wrong while setting up the call: ${err && err.message ? err.message : err}`);
  });
  return conn.chain;
}

function onSocketClosed(ev, opened, ws) {
  if (ended() || conn.ws !== ws) return;
  if (joined() && conn.resumeToken) {
    // Signaling restarted or crashed (1012, 1006, …): media is unaffected. Resume the session.
    connectionLost('resume', 'Connection to the server lost — reconnecting… Your call continues meanwhile.');
  } else if (conn.rejoin || (conn.retry && conn.retry.mode === 'join')) {
    connectionLost('join', 'Connection to the server lost — rejoining…');
  } else if (!opened) {
    app.fail('error', 'Could not reach the server', 'The video service could not be reached. Check your internet connection and try again.', { title: 'Could not connect' });
  } else if (ev.code === 1009) {
    app.fail('disconnected', 'Disconnected', 'The server closed the connection (a message was too big).', { title: 'Disconnected' });
  } else {
    app.fail('disconnected', 'Disconnected from server', 'The connection to the server was lost. Check your internet connection and rejoin.',
      { title: 'Connection lost', detail: ev.code ? `Close code ${ev.code}` : '' });
  }
}

// ---------------------------------------------------------------- reconnect & resume

/** The WebSocket is gone: start (or continue) reconnecting in `mode` with backoff. */
function connectionLost(mode, bannerText) {
  if (!conn.retry || conn.retry.mode !== mode) beginRetry(mode, bannerText);
  else go('reconnecting');
  scheduleAttempt();
}

/** Enter `reconnecting` with a fresh retry in `mode`: backoff from the start, a new deadline. */
function beginRetry(mode, bannerText) {
  stopRetry();
  const r = { mode, startedAt: Date.now(), attempt: 0, timer: 0, deadlineTimer: 0 };
  r.deadlineTimer = setTimeout(() => enqueue(() => onRetryDeadline(r)), RETRY.windowMs);
  conn.retry = r;
  go('reconnecting');
  console.info(`signaling connection lost: ${mode === 'resume' ? 'resuming the session' : 'rejoining'} (for up to ${RETRY.windowMs / 1000} s)`);
  if (bannerText) showBanner('warning', bannerText, { tag: 'reconnect' });
  app.status();
}

function stopRetry() {
  const r = conn.retry;
  if (!r) return;
  clearTimeout(r.timer);
  clearTimeout(r.deadlineTimer);
  conn.retry = null;
}

/** Drop the current socket and try again after the backoff (in the current retry's mode). */
function retryLater() {
  detachSocket();
  go('reconnecting');
  scheduleAttempt();
}

function scheduleAttempt() {
  const r = conn.retry;
  if (!r || ended()) return;
  clearTimeout(r.timer);
  const base = Math.min(RETRY.maxDelayMs, RETRY.firstDelayMs * RETRY.factor ** r.attempt);
  const delay = Math.round(base * (1 + Math.random() * RETRY.jitter));
  r.attempt += 1;
  r.timer = setTimeout(() => {
    if (conn.retry !== r || ended()) return;
    console.info(`reconnect attempt ${r.attempt} (${r.mode})`);
    openSocket(r.mode);
  }, delay);
}

function onRetryDeadline(r) {
  if (conn.retry !== r || ended()) return;
  if (r.mode === 'resume') {
    resumeFailed('timeout');
  } else {
    app.fail('disconnected', 'Disconnected from server', 'Could not reconnect to the server. Check your internet connection and rejoin.', { title: 'Connection lost' });
  }
}

/** The session cannot be resumed: drop it (and its peer connection) and join afresh. */
function resumeFailed(why) {
  console.info(`session resume failed (${why}): joining the room again`);
  stopRetry();
  detachSocket();
  conn.resumeToken = null;
  conn.rejoin = true;
  beginRetry('join', why === 'timeout'
    ? 'Could not reconnect to the server in time — rejoining…'
    : 'The session could not be resumed — rejoining…');
  app.lost();
  openSocket('join');
}

// ---------------------------------------------------------------- incoming messages

// A message is handled only if it came on the current socket, which is then open: the state is
// joining, joined or resuming (a socket that opens leaves `connecting` / `reconnecting`).
async function handleMessage(msg, ws) {
  if (ended() || conn.ws !== ws) return;
  switch (msg.type) {
    case 'joined': return msg.resumed === true ? onResumed(msg) : onJoined(msg);
    case 'answer':
    case 'offer':
    case 'participant_joined':
    case 'participant_left':
      return app.message(msg);
    case 'left': return onLeft(msg);
    case 'room_closed': return onRoomClosed(msg);
    case 'error': return onError(msg);
    default:
      console.warn('ignoring unknown signaling message type', msg.type);
  }
}

/** `joined`: joining → joined. The application then sets up the peer connection. */
async function onJoined(msg) {
  if (joined()) return;
  const me = msg.participant;
  if (!me || typeof me.id !== 'string') throw new Error('malformed joined message');
  stopRetry();
  const rejoin = conn.rejoin;
  conn.rejoin = false;
  if (rejoin) conn.rejoins += 1;
  go('joined');
  conn.resumeToken = typeof msg.resume === 'string' && msg.resume ? msg.resume : null;
  return app.joined(msg, { rejoin });
}

/**
 * `joined {resumed: true}`: resuming → joined. The session (and its peer connection) survived the
 * lost WebSocket; the application refreshes what may have changed meanwhile and sends what was
 * queued.
 */
function onResumed(msg) {
  if (conn.state !== 'resuming' || !app.canResume()) {
    console.warn('ignoring unexpected resumed joined');
    return;
  }
  stopRetry();
  go('joined');
  if (typeof msg.resume === 'string' && msg.resume) conn.resumeToken = msg.resume;
  conn.resumes += 1;
  console.info('session resumed on a new signaling connection');
  app.resumed(msg);
  hideBanner('reconnect');
  app.status();
}

const LEFT_REASONS = {
  timeout: 'your connection timed out',
  closed: 'the connection was closed',
  failed: 'the session failed',
  shutdown: 'the server is shutting down for maintenance',
  abandoned: 'the connection to the server was lost for too long',
  room_closed: 'the room was closed',
  replaced: 'this call was continued in another window or tab',
};

/** `left`: removed by the server (→ closed). It closes the WebSocket next; no reconnect. */
function onLeft(msg) {
  const why = LEFT_REASONS[msg.reason] || String(msg.reason || 'unknown reason');
  app.fail('closed', 'Removed from the room', `You were removed from the room: ${why}.`,
    { title: 'You were removed from the room', text: `The call ended because ${why}. You can rejoin.` });
}

/**
 * `room_closed`: the media node hosting the room failed (or the room moved); joined or resuming
 * → joining. The WebSocket stays open: drop the peer connection and join again on it; the room
 * is placed on a healthy node.
 */
function onRoomClosed(msg) {
  if (!joined()) return;
  const moved = msg.reason === 'moved';
  // node_failed, worker_failed: the media server failed; moved: the room now lives elsewhere.
  console.info(`room closed (${String(msg.reason)}): joining again`);
  stopRetry();
  conn.resumeToken = null;
  conn.rejoin = true;
  go('joining');
  app.lost();
  showBanner('warning', moved
    ? 'The room moved to another media server — rejoining…'
    : 'The media server for this room failed — rejoining…', { tag: 'reconnect' });
  app.status();
  sendJoin(conn.ws);
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
  if (code === 'rate_limited' && conn.state === 'joining') {
    // A join refused by the server's join rate or session limits: try again shortly on the
    // same connection.
    console.warn('join rate-limited:', text);
    showBanner('warning', 'The server is busy with joins from your network — retrying in a moment…', { tag: 'rate' });
    const ws = conn.ws;
    setTimeout(() => {
      if (conn.ws === ws && !joined() && !ended()) sendJoin(ws);
    }, 1500 + Math.random() * 1500);
    return;
  }
  if (code === 'rate_limited') {
    // The message was dropped; the connection stays usable.
    console.warn('signaling rate limit hit:', text);
    if (bannerTag() !== 'reconnect') {
      showBanner('warning', 'Too many requests: the server dropped a message. Slow down a little.', { autoHideMs: 5000, tag: 'rate' });
    }
    return;
  }
  if (conn.state === 'resuming') {
    // The answer to our `join {resume}`.
    if (code === 'resume_failed') {
      resumeFailed('rejected');
    } else {
      // e.g. unavailable: the node is not reachable from this instance yet. Try again.
      console.warn(`resume refused (${code}): retrying`);
      retryLater();
    }
    return;
  }
  if (code === 'resume_failed') {
    if (conn.state === 'joined') resumeFailed('rejected');
    return;
  }
  if (conn.state === 'joining' && conn.rejoin && (code === 'unavailable' || code === 'internal')) {
    // No healthy node yet for the room: retry the fresh join with backoff.
    console.warn(`rejoin refused (${code}): retrying`);
    if (!conn.retry) beginRetry('join', null);
    retryLater();
    return;
  }
  const [title, friendly] = JOIN_ERRORS[code] || ['Something went wrong', 'The server reported an error.'];
  console.warn(`server error ${code}: ${text}`);
  if (conn.state === 'joining') {
    app.fail('error', 'Could not join', `${title}. ${friendly}`,
      { title, text: friendly, detail: `Error code: ${code}${text ? ` — ${text}` : ''}`, rejoinLabel: 'Try again' });
  } else {
    // The connection stays usable (e.g. a refused answer after glare is followed by a new offer).
    showBanner('error', `${title}. ${friendly}`, { autoHideMs: 10000 });
  }
}

// ---------------------------------------------------------------- the end

/** The call ended (`closed`: left or removed; `failed`): no retry, no more state changes. */
export function end(terminal) {
  go(terminal);
  stopRetry();
}

/** Close the socket at the end of the call (it stays `currentSocket()` for debugging). */
export function closeSocket() {
  const ws = conn.ws;
  try { if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000, 'bye'); } catch { /* already closed */ }
}
