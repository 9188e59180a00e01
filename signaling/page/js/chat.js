// Chat: the `chat` DataChannel (chat, whispers, and the mute `state` messages it also carries),
// the chat log (`#chat-log` with `.chat-message[data-from][data-private]`, `.chat-system`,
// `.chat-error`), the compose form (`#chat-to`, `#chat-input`, `#chat-send`, `#chat-count`) and
// telling the others what we have muted. Every name and text is rendered with textContent.
//
// Interface: peer.js hands over each new channel (useChannel) and closes it (closeChannel);
// room.js re-renders the recipients (renderChatTargets) and receives the `state` messages
// (wireChat's `peerState`); anyone may log a line (addSystemMessage) or re-check whether sending
// is possible (updateChatControls); main.js and the channel's `open` send our mute state
// (sendState).

import { el } from './dom.js';
import { call } from './state.js';
import { effectiveMuted } from './media.js';
import { addUnread, panelTab } from './panel.js';
import { setActiveSpeakers } from './grid.js';
import { setPublishedLayers } from './peer.js';
import { ended } from './signal.js';

const MAX_CHAT_BYTES = 4096;
const DC_LOG_MAX = 200;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

let dc = null; // the current chat DataChannel
// The last DC_LOG_MAX raw messages received on the chat DataChannel (debugging, tests: window.sfu.dcLog).
export const dcLog = [];
let onPeerState = () => {};
// Keys of the chat messages shown (see handleChannelMessage), oldest first, bounded.
const seenChat = new Set();
const SEEN_CHAT_MAX = 5000;

export function currentChannel() {
  return dc;
}

// ---------------------------------------------------------------- the channel

/** Use `channel` (just created on the peer connection) for chat and mute state. */
export function useChannel(channel) {
  dc = channel;
  channel.binaryType = 'arraybuffer';
  channel.addEventListener('open', () => {
    updateChatControls();
    // Tell the others what is muted (they assume nothing is until told).
    if (dc === channel && (effectiveMuted('audio') || effectiveMuted('video'))) sendState();
  });
  channel.addEventListener('close', updateChatControls);
  channel.addEventListener('error', (ev) => console.warn('chat channel error', ev && ev.error));
  channel.addEventListener('message', (ev) => {
    let text;
    if (typeof ev.data === 'string') text = ev.data;
    else if (ev.data instanceof ArrayBuffer) text = decoder.decode(ev.data);
    else return;
    dcLog.push(text);
    if (dcLog.length > DC_LOG_MAX) dcLog.splice(0, dcLog.length - DC_LOG_MAX);
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

/** Close the channel; with `forget`, stop using it too (the peer connection is being replaced). */
export function closeChannel({ forget }) {
  const channel = dc;
  if (forget) dc = null;
  try { if (channel) channel.close(); } catch { /* already closed */ }
}

/** Tell the others (through the SFU) what we have muted. */
export function sendState() {
  if (!dc || dc.readyState !== 'open') return false;
  try {
    dc.send(JSON.stringify({ type: 'state', audio_muted: effectiveMuted('audio'), video_muted: effectiveMuted('video') }));
    return true;
  } catch (err) {
    console.warn('could not send the mute state:', err);
    return false;
  }
}

function handleChannelMessage(msg) {
  if (!msg || typeof msg !== 'object') return;
  if (msg.type === 'state') {
    if (typeof msg.from !== 'string' || (call.self && msg.from === call.self.id)) return;
    onPeerState(msg.from, msg.audio_muted === true, msg.video_muted === true);
    return;
  }
  if (msg.type === 'layers') {
    setPublishedLayers(msg.mid, msg.active);
    return;
  }
  if (msg.type === 'active_speakers') {
    if (Array.isArray(msg.speakers)) setActiveSpeakers(msg.speakers.filter((s) => typeof s === 'string').slice(0, 8));
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
  // Each message once: a rejoin (a new session in the same room) replays the room's history,
  // which this log may already show. The SFU numbers a room's messages (`seq`); with the sender
  // and time the key stays unique across rooms and room restarts.
  if (typeof msg.seq === 'number') {
    const key = `${msg.seq}|${msg.from}|${msg.ts}`;
    if (seenChat.has(key)) return;
    seenChat.add(key);
    if (seenChat.size > SEEN_CHAT_MAX) seenChat.delete(seenChat.values().next().value);
  }
  const isPrivate = msg.to !== null && msg.to !== undefined;
  // Broadcasts are not echoed by the SFU; our own copy was shown when sending.
  if (!isPrivate && call.self && msg.from === call.self.id) return;
  addChatMessage({
    from: msg.from,
    name: typeof msg.name === 'string' ? msg.name : (call.participants.get(msg.from) ?? msg.from),
    to: isPrivate ? String(msg.to) : null,
    text: msg.text,
    ts: typeof msg.ts === 'number' ? msg.ts : Date.now(),
  });
}

// ---------------------------------------------------------------- the log

function addChatMessage({ from, name, to, text, ts }) {
  const mine = !!call.self && from === call.self.id;
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
    if (mine && to !== from) label.textContent = `Private to ${call.participants.get(to) ?? 'someone who left'}`;
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
  if (!mine && panelTab() !== 'chat') addUnread();
}

function addChatError(text) {
  const item = document.createElement('div');
  item.className = 'chat-error';
  item.setAttribute('role', 'alert');
  item.textContent = text;
  appendToLog(item, true);
}

/** A line from the page itself ("Bob joined", "You left the room."). */
export function addSystemMessage(text) {
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

// ---------------------------------------------------------------- compose

/** Enable the send button and word the placeholder for the channel state and recipient. */
export function updateChatControls() {
  const open = !!dc && dc.readyState === 'open' && !ended();
  const text = el.chatInput.value;
  const over = encoder.encode(text).length > MAX_CHAT_BYTES;
  el.chatSend.disabled = !open || text.trim() === '' || over;
  const to = el.chatTo.value;
  const target = to && call.participants.get(to);
  el.chatInput.placeholder = ended() ? 'Chat is closed'
    : (!open ? 'Chat is connecting…' : (target ? `Private message to ${target}` : 'Send a message to everyone'));
}

/** Rebuild the recipient list (`#chat-to`) from the roster, keeping the choice if possible. */
export function renderChatTargets() {
  const current = el.chatTo.value;
  const everyone = document.createElement('option');
  everyone.value = '';
  everyone.textContent = 'Everyone';
  const options = [everyone];
  for (const [id, name] of call.participants) {
    const o = document.createElement('option');
    o.value = id;
    o.textContent = `${name} (private)`;
    options.push(o);
  }
  el.chatTo.replaceChildren(...options);
  el.chatTo.value = call.participants.has(current) ? current : '';
  if (current && !call.participants.has(current)) addSystemMessage('The person you were messaging privately left; messages now go to everyone.');
  updateChatTarget();
}

/** Address the next message privately to participant `id`. */
export function addressTo(id) {
  el.chatTo.value = id;
  updateChatTarget();
}

function updateChatTarget() {
  const to = el.chatTo.value;
  const isPrivate = to !== '' && call.participants.has(to);
  el.chatForm.classList.toggle('is-private', isPrivate);
  el.chatPrivateNote.hidden = !isPrivate;
  updateChatControls();
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
  if (!dc || dc.readyState !== 'open' || !call.self) {
    addChatError('Chat is not connected yet; the message was not sent.');
    return;
  }
  const to = el.chatTo.value || null;
  if (to !== null && !call.participants.has(to)) {
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
  if (to === null) addChatMessage({ from: call.self.id, name: call.self.name, to: null, text, ts: Date.now() });
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

/**
 * Wire the recipient select and the compose form. `peerState(id, audioMuted, videoMuted)`
 * receives the others' mute `state` messages (room.js).
 */
export function wireChat({ peerState }) {
  onPeerState = peerState;
  el.chatTo.addEventListener('change', updateChatTarget);
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
}
