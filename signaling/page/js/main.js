// Browser client for the SFU video chat: the entry module. Plain standards JavaScript as native
// ES modules served by signaling, no build step. Implements docs/protocol.md: WebSocket JSON
// signaling on /ws, one RTCPeerConnection to the SFU, sendonly camera + microphone,
// server-initiated renegotiation (the client is the impolite peer), the `chat` DataChannel (chat,
// whispers and mute `state`), and session resume after a lost WebSocket: the peer connection and
// its media survive a signaling restart.
//
// Flow: a pre-join screen (name, room, camera/microphone preview and device choice) unless the URL
// carries both `room` and `name` (then it joins at once), then the call view: an adaptive video
// grid, mute/camera/leave controls, a participant list, speaking indicators (received audio
// energy from getStats, polled 4×/s) and a chat panel.
//
// This module owns the call's start and end (the end card, the status pill, leaving), wires the
// modules together and exposes `window.sfu` for tests and debugging. The modules:
//   signal.js   the WebSocket and the connection state machine (join, resume, rejoin)
//   peer.js     the RTCPeerConnection and the negotiation
//   room.js     who is in the call (state.js's `call`), re-rendered everywhere it shows
//   media.js    local camera/microphone, mute choices, the own tile, WebAudio meters
//   prejoin.js  the pre-join screen and its preview
//   grid.js     remote tiles and the layout
//   speaking.js speaking indicators
//   panel.js    the side panel and the people list
//   chat.js     the chat channel, log and compose form
//   dom.js      element lookups, the status pill and the banner; util.js pure helpers
//
// Security: every name and chat text is rendered with textContent, never innerHTML.

import { el, hideBanner, setStatus, showBanner, wireBanner } from './dom.js';
import { call } from './state.js';
import { cleanName, nameProblem, prefs, roomProblem, setAvatar, validRoom } from './util.js';
import {
  acquireMedia, adoptLocalStream, effectiveMuted, localStream, markMediaReady, mediaProblemText, renderLocalMedia, setMuted,
  stopLocalMedia, userMuted, wireMedia,
} from './media.js';
import { closePreview, showJoinForm, stopPreview, validateJoinForm, wirePrejoin } from './prejoin.js';
import { layoutGrid, removeAllTiles, wireGrid } from './grid.js';
import { clearSpeaking, forget, renderSpeaking, startLevelPolling, stopLevelPolling } from './speaking.js';
import { startHints, stopHints } from './hints.js';
import { narrowScreen, renderSelfMuted, setPanel, wirePanel } from './panel.js';
import {
  addSystemMessage, addressTo, currentChannel, dcLog, renderChatTargets, sendState, updateChatControls, wireChat,
} from './chat.js';
import { closePeer, currentPc, dropPeer, handleAnswer, handleOffer, mediaState, resumed, startPeer } from './peer.js';
import {
  participantJoined, participantLeft, peerState, renderRoster, joinedRoom, resetRoom, resumedRoom,
} from './room.js';
import {
  closeSocket, connect, connection, currentSocket, end, ended, joined, rejoinCount, resumeCount, send,
} from './signal.js';

const params = new URLSearchParams(location.search);

let mediaPromise = null; // the call's local media: resolves to the stream (or null) once adopted

// Exposed for tests and debugging: read-only views of the current objects (replaced after a
// rejoin). After a resume `pc` and `dc` stay the same objects and `ws` is the new socket.
const sfu = {
  get pc() { return currentPc(); },
  get ws() { return currentSocket(); },
  get participantId() { return call.self ? call.self.id : null; },
  get dc() { return currentChannel(); },
  get localStream() { return localStream(); },
  get room() { return call.room; },
  get name() { return call.name; },
  get resumes() { return resumeCount(); }, // sessions resumed on a new WebSocket (same peer connection)
  get rejoins() { return rejoinCount(); }, // fresh joins after a failed resume or a closed room (new peer connection)
  dcLog, // the last raw messages received on the chat DataChannel
  get muted() { return { audio: effectiveMuted('audio'), video: effectiveMuted('video') }; },
};
window.sfu = sfu;

// ---------------------------------------------------------------- start

/** Enter the call view and join `room` as `name`; `media` resolves to {stream, error}. */
function start(room, name, media) {
  call.room = room;
  call.name = name;
  document.body.dataset.view = 'call';
  closePreview();
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
  renderRoster();
  renderChatTargets();
  renderLocal();
  layoutGrid();
  updateChatControls();

  // Start the camera in parallel with the signaling handshake; awaited before the first offer.
  mediaPromise = media.then(useLocalMedia);
  connect({
    joined: onJoined,
    resumed: (msg) => {
      resumedRoom(msg);
      resumed();
    },
    canResume: () => currentPc() !== null,
    message: onSessionMessage,
    lost: () => {
      dropPeer();
      resetRoom();
    },
    fail,
    status: refreshStatus,
  });
  startLevelPolling();
  startHints();
}

/** `joined`: show who is here, then (once the camera is settled) start the peer connection. */
async function onJoined(msg, { rejoin }) {
  if (rejoin) addSystemMessage('Rejoined the room.');
  const me = msg.participant;
  joinedRoom(msg);
  setStatus('connecting', 'Connecting media…');

  // On a rejoin this is the stream opened for the first join (never prompts again).
  const stream = await mediaPromise;
  if (ended() || !joined() || !call.self || call.self.id !== me.id) return;
  await startPeer(msg.ice_servers, stream, refreshStatus);
}

function onSessionMessage(msg) {
  switch (msg.type) {
    case 'answer': return handleAnswer(msg);
    case 'offer': return handleOffer(msg);
    case 'participant_joined': return participantJoined(msg);
    case 'participant_left': return participantLeft(msg);
    default: return undefined;
  }
}

/** The status indicator, from the signaling connection and the peer connection state. */
function refreshStatus() {
  if (ended()) return;
  const c = connection();
  if (c.retry) {
    setStatus('reconnecting', c.retry === 'resume' ? 'Reconnecting…' : 'Rejoining…');
    return;
  }
  if (!joined()) {
    if (c.rejoin) setStatus('reconnecting', 'Rejoining…');
    return; // the join flow sets its own 'connecting' texts
  }
  switch (mediaState()) {
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

// ---------------------------------------------------------------- local media in the call

/** Adopt the camera/microphone stream for the call (or none: receive-only). */
function useLocalMedia({ stream, error }) {
  markMediaReady();
  if (ended()) {
    if (stream) stream.getTracks().forEach((t) => t.stop());
    return null;
  }
  if (!stream) {
    const text = mediaProblemText(error, false, false);
    showBanner('warning', text, { tag: 'devices' });
    addSystemMessage('You joined without camera and microphone.');
    renderLocal();
    sendState();
    return null;
  }
  // A device unplugged or revoked: show it and tell the others.
  adoptLocalStream(stream, () => {
    renderLocal();
    sendState();
  });
  const hasVideo = stream.getVideoTracks().length > 0;
  const hasAudio = stream.getAudioTracks().length > 0;
  const problem = mediaProblemText(error, hasAudio, hasVideo);
  if (problem) showBanner('warning', problem, { tag: 'devices', autoHideMs: 20000 });
  renderLocal();
  return stream;
}

/** The own tile, the mute buttons and the own entry in the people list. */
function renderLocal() {
  renderLocalMedia();
  renderSelfMuted();
}

function toggleMute(kind) {
  const muted = !userMuted(kind);
  if (!setMuted(kind, muted)) return;
  if (kind === 'audio' && muted) forget('self');
  renderLocal();
  sendState();
}

// ---------------------------------------------------------------- leave / teardown

/** Stop everything; `terminal` is the connection's final state ('closed' or 'failed'). */
function teardown(terminal) {
  end(terminal);
  stopLevelPolling();
  stopHints();
  closePeer();
  closeSocket();
  stopLocalMedia();
  stopPreview(localStream());
  removeAllTiles();
  clearSpeaking();
  renderSpeaking(performance.now());
  el.leave.disabled = true;
  el.enableSound.hidden = true;
  updateChatControls();
  renderLocal();
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
  if (ended()) return;
  teardown(dataState === 'closed' ? 'closed' : 'failed');
  setStatus(dataState, statusText);
  if (bannerText) showBanner(dataState === 'error' || dataState === 'failed' ? 'error' : 'warning', bannerText);
  showEndCard({ title: card.title || statusText, text: card.text || bannerText || '', detail: card.detail || '', rejoinLabel: card.rejoinLabel || 'Rejoin' });
}

function leave() {
  if (ended()) return;
  // Best effort: while signaling is reconnecting there is no session to leave; the server then
  // removes us after its resume window (or the ICE timeout once our peer connection is closed).
  send({ type: 'leave' });
  teardown('closed');
  setStatus('closed', 'You left the room');
  hideBanner();
  addSystemMessage('You left the room.');
  showEndCard({ title: 'You left the room', text: call.room ? `Room: ${call.room}` : '' });
}

function wireCall() {
  el.leave.addEventListener('click', leave);
  el.rejoin.addEventListener('click', () => location.reload());
  el.newRoom.addEventListener('click', () => {
    const p = new URLSearchParams();
    if (call.name) p.set('name', call.name);
    location.href = `${location.pathname}${p.toString() ? `?${p}` : ''}`;
  });
  el.invite.addEventListener('click', async () => {
    const link = `${location.origin}${location.pathname}?room=${encodeURIComponent(call.room)}`;
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
    if (ended() || !joined()) return;
    send({ type: 'leave' });
    teardown('closed');
    setStatus('closed', 'You left the room');
  };
  window.addEventListener('pagehide', leaveOnUnload);
  window.addEventListener('beforeunload', leaveOnUnload);
  // Restored from the back/forward cache after leaving: start over rather than show a dead call.
  window.addEventListener('pageshow', (ev) => {
    if (ev.persisted && ended()) location.reload();
  });
}

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

// Listeners in the order the page always attached them (document-level ones share targets).
wireBanner();
wirePrejoin({ join: start });
wireMedia();
el.muteAudio.addEventListener('click', () => toggleMute('audio'));
el.muteVideo.addEventListener('click', () => toggleMute('video'));
wireGrid();
wirePanel({
  whisper: (id) => {
    addressTo(id);
    setPanel('chat');
  },
});
wireChat({ peerState });
wireCall();
init();
