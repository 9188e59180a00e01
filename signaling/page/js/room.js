// The room as this page knows it: who we are, who else is in the call and what they have muted
// (the `call` object of state.js; this module is its only writer after start), kept up to date
// from `joined`, a resume's participant list, `participant_joined` / `participant_left` and the
// `state` messages on the chat channel, and re-rendered everywhere it shows: tiles, the people
// list, the chat's recipients and the system lines in the chat log.
//
// Interface: main.js routes the signaling events here (joinedRoom, resumedRoom,
// participantJoined, participantLeft, resetRoom) and the chat channel's `state` messages
// (peerState).

import { el } from './dom.js';
import { call } from './state.js';
import { setAvatar } from './util.js';
import { ensureTile, removeAllTiles, removeTile, renameTile, tileEntries, tileOf, updateTileMedia } from './grid.js';
import { renderPeople, setPersonMuted } from './panel.js';
import { addSystemMessage, renderChatTargets, updateChatControls } from './chat.js';
import { forget, renderSpeaking, reset as resetSpeaking } from './speaking.js';

/** Rebuild the people list and its speaking marks. */
export function renderRoster() {
  renderPeople();
  renderSpeaking(performance.now());
}

/** `joined`: who we are (the server may have changed the name) and who is already here. */
export function joinedRoom(msg) {
  const me = msg.participant;
  call.self = { id: me.id, name: typeof me.name === 'string' ? me.name : call.name };
  el.localName.textContent = `${call.self.name} (you)`;
  setAvatar(el.localTile.querySelector('.avatar'), call.self.name, me.id);
  for (const p of Array.isArray(msg.participants) ? msg.participants : []) {
    if (p && typeof p.id === 'string' && p.id !== me.id) {
      call.participants.set(p.id, String(p.name ?? p.id));
      ensureTile(p.id);
    }
  }
  renderRoster();
  renderChatTargets();
}

/** A resume's `joined`: participants who left or joined while we were away (their events went to the lost socket). */
export function resumedRoom(msg) {
  const now = new Map();
  for (const p of Array.isArray(msg.participants) ? msg.participants : []) {
    if (p && typeof p.id === 'string' && (!call.self || p.id !== call.self.id)) now.set(p.id, String(p.name ?? p.id));
  }
  for (const [id, name] of Array.from(call.participants)) {
    if (now.has(id)) continue;
    forgetParticipant(id);
    addSystemMessage(`${name} left`);
  }
  for (const [id] of tileEntries()) {
    if (!now.has(id)) removeTile(id);
  }
  for (const [id, name] of now) {
    const known = call.participants.has(id);
    call.participants.set(id, name);
    call.leftIds.delete(id);
    renameTile(id, name);
    ensureTile(id);
    if (!known) addSystemMessage(`${name} joined`);
  }
  renderRoster();
  renderChatTargets();
}

export function participantJoined(msg) {
  const p = msg.participant;
  if (!p || typeof p.id !== 'string' || (call.self && p.id === call.self.id)) return;
  const name = String(p.name ?? p.id);
  const known = call.participants.has(p.id);
  call.participants.set(p.id, name);
  call.leftIds.delete(p.id);
  renameTile(p.id, name);
  ensureTile(p.id);
  renderRoster();
  renderChatTargets();
  if (!known) addSystemMessage(`${name} joined`);
}

export function participantLeft(msg) {
  const id = msg.participant_id;
  if (typeof id !== 'string') return;
  const name = call.participants.get(id);
  forgetParticipant(id);
  renderRoster();
  renderChatTargets();
  if (name !== undefined) addSystemMessage(`${name} left`);
}

function forgetParticipant(id) {
  call.participants.delete(id);
  call.leftIds.add(id);
  call.remoteMedia.delete(id);
  forget(id);
  removeTile(id);
}

/** A `state` message on the chat channel: what participant `id` has muted. */
export function peerState(id, audio, video) {
  call.remoteMedia.set(id, { audio, video });
  if (audio) forget(id);
  const t = tileOf(id);
  if (t) updateTileMedia(t);
  setPersonMuted(id, audio, video);
}

/** The session is gone (a rejoin follows): remove the remote tiles and forget everyone. */
export function resetRoom() {
  removeAllTiles();
  call.participants.clear();
  call.leftIds.clear();
  call.remoteMedia.clear();
  resetSpeaking();
  call.self = null;
  renderRoster();
  renderChatTargets();
  updateChatControls();
}
