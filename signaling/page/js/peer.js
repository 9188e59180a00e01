// The peer connection to the SFU: one RTCPeerConnection per session, sendonly camera and
// microphone, the `chat` DataChannel (handed to chat.js), and the negotiation: the server
// initiates renegotiation and the client is the impolite peer (docs/protocol.md). Offers and
// answers produced while the signaling socket is being resumed are queued and sent after the
// resume. Received tracks become tiles (grid.js), keyed by their stream id (the publisher's id).
//
// Interface: main.js starts the peer connection once joined (startPeer), hands it server offers
// and answers (handleOffer, handleAnswer), flushes the queue after a resume (resumed), and drops
// it for a rejoin (dropPeer) or closes it at the end (closePeer). speaking.js reads the stats
// (currentPc, trackOwner); the status pill reads mediaState.

import { showBanner } from './dom.js';
import { call } from './state.js';
import { attachStream, ensureTile, playRemote, removeTile, tileEntries, tileOf, updateTileMedia } from './grid.js';
import { closeChannel, useChannel } from './chat.js';
import { ended, joined, send } from './signal.js';

const relayOnly = new URLSearchParams(location.search).get('iceTransportPolicy') === 'relay';
// The camera goes out as simulcast encodings, lowest first (the SFU forwards each subscriber the
// one its link allows): q/h/f (¼, ½, full) from 540 lines up, h/f below that down to 360 lines
// (Chromium encodes at most two layers of a 640×360…960×540 picture and drops the top one), one
// encoding for smaller cameras or with `?simulcast=0`.
const simulcastOn = new URLSearchParams(location.search).get('simulcast') !== '0';
const ENCODINGS = {
  q: { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  h: { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  f: { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 1_500_000 },
};

/** The send encodings for a camera track (undefined: one plain encoding). */
export function simulcastEncodings(track) {
  if (!simulcastOn || track.kind !== 'video') return undefined;
  const s = typeof track.getSettings === 'function' ? track.getSettings() : {};
  const lines = Math.min(s.height || 0, s.width || 0) || 0;
  const rids = lines >= 540 ? ['q', 'h', 'f'] : lines >= 360 ? ['h', 'f'] : [];
  if (rids.length === 0) return undefined;
  return rids.map((r) => ({ ...ENCODINGS[r] }));
}

let pc = null;
const trackOwners = new Map(); // remote track id -> participant id
let outbox = []; // {msg, offerSdp} offers/answers produced while the session was detached; sent after the resume
let lastOfferSdp = null; // the last server offer applied
let resentOfferSdp = null; // a server offer answered by a queued answer: ignore it when re-sent after the resume

/**
 * Dynacast (`{"type":"layers","mid":…,"active":[rids]}` from the SFU): encode only the listed
 * simulcast layers of the sender on `mid`; the others stop until a subscriber needs them.
 */
export async function setPublishedLayers(mid, active) {
  const p = pc;
  if (!p || typeof mid !== 'string' || !Array.isArray(active)) return;
  const tr = p.getTransceivers().find((t) => t.mid === mid && t.sender && t.sender.track);
  if (!tr) return;
  const params = tr.sender.getParameters();
  if (!params.encodings || params.encodings.length < 2) return;
  let changed = false;
  for (const e of params.encodings) {
    if (!e.rid) continue;
    const on = active.includes(e.rid);
    if (e.active !== on) {
      e.active = on;
      changed = true;
    }
  }
  if (!changed) return;
  try {
    await tr.sender.setParameters(params);
  } catch (err) {
    console.warn('could not switch simulcast layers:', err);
  }
}

export function currentPc() {
  return pc;
}

/** The participant whose track `trackId` is, or undefined. */
export function trackOwner(trackId) {
  return trackOwners.get(trackId);
}

/** The peer connection's state ('new' without one). */
export function mediaState() {
  return pc ? (pc.connectionState || iceToConnectionState(pc.iceConnectionState)) : 'new';
}

function iceToConnectionState(s) {
  if (s === 'completed') return 'connected';
  if (s === 'checking') return 'connecting';
  return s;
}

/**
 * Send an offer or answer; while the session is detached (the WebSocket is being resumed) queue
 * it for resumed(). Dropped if the session is gone.
 */
function sendSdp(msg) {
  if (send(msg)) return true;
  if (joined() && !ended()) {
    outbox.push({ msg, offerSdp: msg.type === 'answer' ? lastOfferSdp : null });
    console.info(`signaling connection is down: ${msg.type} queued until the session is resumed`);
  }
  return false;
}

// ---------------------------------------------------------------- lifecycle

/**
 * Create the session's peer connection with `iceServers` (from `joined`), send `stream`'s tracks
 * (if any), open the chat channel and send the first offer. `onStateChange` runs on every
 * connection state change.
 */
export async function startPeer(iceServers, stream, onStateChange) {
  const config = { iceServers: sanitizeIceServers(iceServers), bundlePolicy: 'max-bundle' };
  if (relayOnly) config.iceTransportPolicy = 'relay';
  const p = new RTCPeerConnection(config);
  pc = p;
  wirePeerConnection(p, onStateChange);

  if (stream) {
    for (const track of stream.getTracks()) {
      const init = { direction: 'sendonly', streams: [stream] };
      const sendEncodings = simulcastEncodings(track);
      if (sendEncodings) init.sendEncodings = sendEncodings;
      p.addTransceiver(track, init);
    }
  }
  useChannel(p.createDataChannel('chat'));

  const offer = await p.createOffer();
  await p.setLocalDescription(offer);
  sendSdp({ type: 'offer', sdp: p.localDescription.sdp });
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

function wirePeerConnection(p, onStateChange) {
  p.addEventListener('icecandidate', (ev) => {
    const c = ev.candidate;
    // Never send end-of-candidates (null / empty candidate); the server ignores candidates anyway.
    if (!c || !c.candidate) return;
    send({ type: 'candidate', candidate: c.candidate, sdpMid: c.sdpMid, sdpMLineIndex: c.sdpMLineIndex });
  });
  const onState = () => {
    if (ended() || pc !== p) return;
    const s = p.connectionState || iceToConnectionState(p.iceConnectionState);
    if (s === 'failed') {
      showBanner('error', 'The media connection failed. Your network may block the call (e.g. a firewall blocking UDP). Check your connection and rejoin.', { tag: 'media' });
    }
    // While signaling reconnects the status says so; the status refresh knows both.
    onStateChange();
  };
  p.addEventListener('connectionstatechange', onState);
  if (!('connectionState' in p)) p.addEventListener('iceconnectionstatechange', onState);
  p.addEventListener('track', onTrack);
}

/**
 * The session is gone (a rejoin follows): forget the peer connection and its chat channel and
 * close them (the local camera stream is kept), and forget the negotiation.
 */
export function dropPeer() {
  const p = pc;
  pc = null;
  closeChannel({ forget: true });
  try { if (p) p.close(); } catch { /* already closed */ }
  trackOwners.clear();
  outbox = [];
  lastOfferSdp = null;
  resentOfferSdp = null;
}

/** The call ended: close the chat channel and the peer connection (they stay visible on window.sfu). */
export function closePeer() {
  outbox = [];
  closeChannel({ forget: false });
  try { if (pc) pc.close(); } catch { /* already closed */ }
}

// ---------------------------------------------------------------- negotiation

export async function handleAnswer(msg) {
  const p = pc;
  if (!p || p.signalingState !== 'have-local-offer') {
    console.warn('ignoring answer in signaling state', p && p.signalingState);
    return;
  }
  await p.setRemoteDescription({ type: 'answer', sdp: String(msg.sdp) });
  sweepTiles();
}

export async function handleOffer(msg) {
  const p = pc;
  if (!p || p.signalingState === 'closed') return;
  if (p.signalingState === 'have-local-offer') {
    // Glare: the client is the impolite peer. The server rolls back, answers our offer and re-offers.
    console.info('glare: ignoring server offer while our offer is outstanding');
    return;
  }
  const sdp = String(msg.sdp);
  const resent = resentOfferSdp;
  resentOfferSdp = null;
  if (resent !== null && sdp === resent && p.signalingState === 'stable') {
    // Re-sent after a resume, and already answered by the answer queued during the outage.
    console.info('ignoring re-sent server offer: already answered');
    return;
  }
  lastOfferSdp = sdp;
  await p.setRemoteDescription({ type: 'offer', sdp });
  const answer = await p.createAnswer();
  await p.setLocalDescription(answer);
  sendSdp({ type: 'answer', sdp: p.localDescription.sdp });
  sweepTiles();
}

/**
 * The session was resumed on a new WebSocket (same peer connection): send what was queued. The
 * server re-sends its outstanding offer right after `joined`: if a queued answer answers it,
 * that copy is ignored (see handleOffer).
 */
export function resumed() {
  const queued = outbox;
  outbox = [];
  let offerSent = false;
  for (const { msg: m, offerSdp } of queued) {
    if (!send(m)) break;
    if (m.type === 'answer') resentOfferSdp = offerSdp;
    if (m.type === 'offer') offerSent = true;
  }
  // Our own offer was sent but its answer may have been lost with the old connection.
  if (!offerSent && pc.signalingState === 'have-local-offer' && pc.localDescription) {
    send({ type: 'offer', sdp: pc.localDescription.sdp });
  }
}

// ---------------------------------------------------------------- received tracks

function onTrack(ev) {
  const stream = ev.streams && ev.streams[0];
  if (!stream) {
    console.warn('remote track without a stream; ignored', ev.track && ev.track.kind);
    return;
  }
  const id = stream.id;
  if ((call.self && id === call.self.id) || call.leftIds.has(id)) return;
  trackOwners.set(ev.track.id, id);
  const tile = ensureTile(id);
  if (tile.stream !== stream) attachStream(id, tile, stream);
  const update = () => {
    const t = tileOf(id);
    if (t) updateTileMedia(t);
  };
  ev.track.addEventListener('ended', () => {
    const t = tileOf(id);
    if (!t) return;
    if (!call.participants.has(id) && t.stream && t.stream.getTracks().every((tr) => tr.readyState === 'ended')) removeTile(id);
    else updateTileMedia(t);
  });
  ev.track.addEventListener('mute', update);
  ev.track.addEventListener('unmute', update);
  updateTileMedia(tile);
  playRemote(tile.video);
}

// After each completed negotiation: drop tiles of departed participants whose tracks are no
// longer being received (their m-lines were stopped with port 0), and refresh the others.
function sweepTiles() {
  const p = pc;
  if (!p) return;
  const live = new Set();
  for (const t of p.getTransceivers()) {
    const dir = t.currentDirection;
    if (dir !== 'recvonly' && dir !== 'sendrecv') continue;
    const track = t.receiver && t.receiver.track;
    if (!track || track.readyState !== 'live') continue;
    const owner = trackOwners.get(track.id);
    if (owner) live.add(owner);
  }
  for (const [id, t] of tileEntries()) {
    if (!live.has(id) && !call.participants.has(id)) removeTile(id);
    else updateTileMedia(t);
  }
}
