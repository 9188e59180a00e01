//! Control protocol between `signaling` and `dataplane`.
//!
//! Where it sits: every node runs one `dataplane` (the SFU media plane) and one or more `signaling`
//! processes on the same host. Signaling connects to the dataplane's local Unix socket and speaks
//! this protocol; the dataplane owns all media sessions, so a signaling process may disconnect,
//! restart or be joined by a second one without disturbing media in progress.
//!
//! Contract:
//! - **Framing** ([`codec`]): every message is one frame, a `u32` big-endian payload length followed
//!   by that many bytes of UTF-8 JSON. Frames larger than the negotiated maximum
//!   ([`DEFAULT_MAX_FRAME`]) are a protocol error and close the connection.
//! - **Handshake**: the client's first frame is [`ToDataplane::Hello`] with its protocol version;
//!   the dataplane answers [`FromDataplane::Welcome`] or an error followed by a close.
//! - **Requests** carry a client-chosen `id` and get exactly one [`FromDataplane::Response`] with
//!   the same id. **Events** ([`Event`]) are unsolicited and addressed to one participant; the
//!   dataplane routes them to the connection that joined or last attached that participant.
//!
//! The full message reference is `docs/control.md`. Nothing here does I/O on its own: [`Framed`]
//! buffers frames in and out of any non-blocking `Read`/`Write`, so the same code serves the
//! dataplane's mio loop, signaling's mio loop and blocking test clients. [`local`] holds the
//! Unix-socket checks both ends make (private directory, peer credentials).
//!
//! This crate is only the protocol: it links no Redis client and no config parser. The cluster
//! registry and the flags both binaries share live in the `registry` crate (`control/registry`).

pub mod codec;
mod framed;
pub mod local;
mod message;

pub use codec::{CodecError, DEFAULT_MAX_FRAME, FrameDecoder, encode_frame};
pub use framed::{Framed, ReadStatus};
pub use message::*;

/// Version of the control protocol spoken by this build. Bumped on incompatible changes.
pub const PROTOCOL_VERSION: u32 = 1;
