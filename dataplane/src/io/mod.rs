//! The I/O shell: the only code that touches sockets, threads and the clock.
//!
//! - [`udp`]: one worker's UDP socket with GRO/recvmmsg receive and GSO send via quinn-udp.
//! - [`tcp`]: one worker's passive ICE-TCP listener and connections (RFC 6544/4571 framing).
//! - [`worker`]: one pinned mio event loop per core around a [`sfu_core::WorkerCore`].
//! - [`control`]: the control thread serving the Unix socket (and, in cluster mode, Redis rpc),
//!   supervising the workers.
//! - [`routes`]: the control thread's pure routing and fencing state.
//! - [`admin`]: `/metrics` and `/healthz` for operators.
//! - [`cluster`]: the Redis threads of cluster mode (registry heartbeats, pub/sub).

pub mod admin;
pub mod cluster;
pub mod control;
pub mod metrics;
pub mod routes;
pub mod tcp;
pub mod translate;
pub mod udp;
pub mod worker;
