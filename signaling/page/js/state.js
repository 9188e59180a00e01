// The one piece of state several modules read: who is in the call, as this page knows it.
// Everything else lives in the module that owns it (the socket and its state machine in
// signal.js, the peer connection in peer.js, local devices in media.js, tiles in grid.js, …) and
// is reached through that module's functions.
//
// Writers: `room` and `name` are set by main.js when the call starts; `self`, `participants`,
// `leftIds` and `remoteMedia` only by room.js (from signaling events and `state` messages on the
// chat channel). Readers: grid, panel, chat, peer, speaking, media.

export const call = {
  room: null, // the room asked for (set when the call view opens)
  name: null, // the display name asked for
  self: null, // {id, name} once joined (the server may have changed the name)
  participants: new Map(), // other participant id -> name
  leftIds: new Set(), // ids that left: late tracks for them are ignored
  remoteMedia: new Map(), // participant id -> {audio, video} (muted flags from `state` messages)
};
