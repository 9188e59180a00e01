// The page's elements, looked up once by id (index.html owns the ids), and the two indicators
// every part of the page reports through: the status pill (`#status[data-state]`, mirrored on
// `body[data-call-state]`) and the banner (`#banner[data-state]`). Module scripts run after the
// document is parsed, so the lookups below find their elements.

const $ = (id) => document.getElementById(id);

export const el = {
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

// ---------------------------------------------------------------- status

/**
 * Set the status pill. `dataState` is one of: idle, connecting, connected, reconnecting, failed,
 * closed, error, disconnected (style.css and the browser tests key on these values).
 */
export function setStatus(dataState, text) {
  el.status.dataset.state = dataState;
  el.statusText.textContent = text;
  document.body.dataset.callState = dataState;
}

// ---------------------------------------------------------------- banner

const banner = {
  timer: 0,
  tag: null, // what the visible banner is about ('reconnect', 'media', …), so it is hidden by the right event
};

/** Show the banner: `kind` 'warning' or 'error'; `tag` names what it is about (see hideBanner). */
export function showBanner(kind, text, { autoHideMs = 0, tag = null } = {}) {
  clearTimeout(banner.timer);
  el.banner.dataset.state = kind;
  el.bannerText.textContent = text;
  el.banner.hidden = false;
  banner.tag = tag;
  if (autoHideMs > 0) banner.timer = setTimeout(() => hideBanner(tag), autoHideMs);
}

/** Hide the banner; with `tag`, only if the visible banner is about that. */
export function hideBanner(tag) {
  if (typeof tag === 'string' && banner.tag !== tag) return;
  clearTimeout(banner.timer);
  el.banner.hidden = true;
  el.banner.dataset.state = 'none';
  el.bannerText.textContent = '';
  banner.tag = null;
}

/** The tag of the visible banner (null: none, or untagged). */
export function bannerTag() {
  return banner.tag;
}

export function wireBanner() {
  el.bannerClose.addEventListener('click', () => hideBanner());
}
