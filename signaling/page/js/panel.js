// The side panel: which tab is open (people or chat, or none), the toggles and their badges
// (participant count, unread chat messages, mirrored in the page title), and the people list
// (`#people-list`, one `li[data-participant-ref]` per other participant).
//
// Interface: room.js re-renders the list (renderPeople) when the roster changes; chat.js counts
// unread messages (panelTab, addUnread) and updates a person's mute state (setPersonMuted);
// main.js gives the whisper button its action (wirePanel) and opens the panel at start.

import { el } from './dom.js';
import { call } from './state.js';
import { mutedList, setAvatar } from './util.js';
import { effectiveMuted } from './media.js';
import { layoutGrid } from './grid.js';

export const narrowScreen = window.matchMedia('(max-width: 760px)');

let tab = null; // 'chat' | 'people' | null
let unread = 0;
const items = new Map(); // participant id (or 'self') -> <li>
let onWhisper = () => {};

export function panelTab() {
  return tab;
}

export function setPanel(next, { focus = true } = {}) {
  tab = next;
  el.sidePanel.hidden = !next;
  if (next) el.sidePanel.dataset.tab = next;
  el.peoplePanel.hidden = next !== 'people';
  el.chatPanel.hidden = next !== 'chat';
  document.body.classList.toggle('panel-open', !!next);
  el.peopleToggle.setAttribute('aria-expanded', String(next === 'people'));
  el.chatToggle.setAttribute('aria-expanded', String(next === 'chat'));
  updatePanelTitle();
  if (next === 'chat') {
    unread = 0;
    renderUnread();
    el.chatLog.scrollTop = el.chatLog.scrollHeight;
    if (focus) el.chatInput.focus();
  } else {
    renderUnread();
  }
  if (next === 'people' && focus) el.panelClose.focus();
  layoutGrid();
}

function updatePanelTitle() {
  el.panelTitle.textContent = tab === 'people' ? `People (${call.participants.size + 1})` : 'Chat';
}

/** A chat message arrived while the chat tab is not open. */
export function addUnread() {
  unread += 1;
  renderUnread();
}

function renderUnread() {
  const n = unread;
  el.chatUnread.hidden = n === 0;
  el.chatUnread.textContent = n > 99 ? '99+' : String(n);
  el.chatToggle.setAttribute('aria-label', n ? `Chat, ${n} unread message${n === 1 ? '' : 's'}` : 'Chat');
  el.chatToggle.title = el.chatToggle.getAttribute('aria-label');
  const base = call.room ? `${call.room} – Video chat` : 'Video chat';
  document.title = n ? `(${n}) ${base}` : base;
}

/**
 * Wire the toggles, the close button and Escape. `whisper(id)`: what the lock button next to a
 * person does (main.js: address the chat to them and open it).
 */
export function wirePanel({ whisper }) {
  onWhisper = whisper;
  el.chatToggle.addEventListener('click', () => setPanel(tab === 'chat' ? null : 'chat'));
  el.peopleToggle.addEventListener('click', () => setPanel(tab === 'people' ? null : 'people'));
  el.panelClose.addEventListener('click', () => {
    const was = tab;
    setPanel(null);
    (was === 'people' ? el.peopleToggle : el.chatToggle).focus();
  });
  document.addEventListener('keydown', (ev) => {
    // Escape closes the panel when it is an overlay (small screens).
    if (ev.key === 'Escape' && tab && narrowScreen.matches) {
      const was = tab;
      setPanel(null);
      (was === 'people' ? el.peopleToggle : el.chatToggle).focus();
    }
  });
}

// ---------------------------------------------------------------- people list

/** The list item of participant `key` (an id, or 'self'), or undefined. */
export function personItem(key) {
  return items.get(key);
}

/** Show participant `key`'s mute state in the list (if listed). */
export function setPersonMuted(key, audio, video) {
  const li = items.get(key);
  if (li) li.querySelector('.person-state').dataset.muted = mutedList(audio, video);
}

/** Show the own mute state in the list. */
export function renderSelfMuted() {
  setPersonMuted('self', effectiveMuted('audio'), effectiveMuted('video'));
}

/** Rebuild the list (and the counts) from the roster. Speaking marks are set by the caller. */
export function renderPeople() {
  const list = [];
  items.clear();
  const make = (key, name, avatarKey, label = name) => {
    const li = el.personTemplate.content.firstElementChild.cloneNode(true);
    li.querySelector('.person-name').textContent = label;
    setAvatar(li.querySelector('.avatar'), name, avatarKey);
    items.set(key, li);
    list.push(li);
    return li;
  };
  if (call.self || call.name) {
    const myName = call.self ? call.self.name : call.name;
    const me = make('self', myName, call.self ? call.self.id : call.name, `${myName} (you)`);
    me.classList.add('person-self');
    me.querySelector('.person-state').dataset.muted = mutedList(effectiveMuted('audio'), effectiveMuted('video'));
  }
  for (const [id, name] of call.participants) {
    const li = make(id, name, id);
    li.dataset.participantRef = id;
    const m = call.remoteMedia.get(id) || { audio: false, video: false };
    li.querySelector('.person-state').dataset.muted = mutedList(m.audio, m.video);
    const whisper = li.querySelector('.person-whisper');
    whisper.hidden = false;
    whisper.setAttribute('aria-label', `Send a private message to ${name}`);
    whisper.title = whisper.getAttribute('aria-label');
    whisper.addEventListener('click', () => onWhisper(id));
  }
  el.people.replaceChildren(...list);
  el.peopleCount.textContent = String(call.participants.size + 1);
  el.peopleToggle.setAttribute('aria-label', `Participants (${call.participants.size + 1})`);
  el.peopleToggle.title = `${call.participants.size + 1} in the call`;
  updatePanelTitle();
  layoutGrid();
}
