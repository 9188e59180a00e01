//! The I/O shell: the only code that touches sockets, threads and the clock.
//!
//! - [`udp`]: one worker's UDP socket with GRO/recvmmsg receive and GSO send via quinn-udp.
//! - [`worker`]: one pinned mio event loop per core around a [`crate::core::WorkerCore`].
//! - [`control`]: the control thread serving the Unix socket (and, in cluster mode, Redis rpc).
//! - [`cluster`]: the Redis threads of cluster mode (registry heartbeats, pub/sub).

pub mod cluster;
pub mod control;
pub mod metrics;
pub mod udp;
pub mod worker;
