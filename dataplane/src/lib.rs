//! The SFU media plane.
//!
//! Where it sits: browsers and synthetic peers send SRTP/SCTP over UDP straight to a dataplane
//! worker; `signaling` drives it through the control protocol on a local Unix socket.
//!
//! - `sfu_core` (crate `sfu-core`, `dataplane/core/`): the sans-IO SFU of one worker (rooms,
//!   participants, str0m `Rtc`s in RTP mode, forwarding, keyframe requests, chat,
//!   renegotiation). Time and a random seed are arguments; no sockets, threads, clock or OS
//!   randomness.
//! - [`crypto`]: the str0m crypto-provider adapter (one certificate and one cached DTLS
//!   configuration per process) every core's `Rtc`s share.
//! - [`io`]: the only OS-facing code: one pinned mio event loop per core with its own UDP port
//!   (quinn-udp GRO receive, GSO send), and the control thread serving the Unix socket.
//!
//! Panic policy: input from the network or the control socket never panics; a bad packet is
//! dropped and counted, a failing `Rtc` closes that participant only.

pub mod crypto;
pub mod io;
