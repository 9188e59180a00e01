//! Where [`MemoryRegistry`](crate::MemoryRegistry) reads the time: the real monotonic clock
//! ([`SystemClock`], what the binaries use), or a clock that moves only when told
//! ([`ManualClock`]), so tests of expiry (dead-after) advance it instead of sleeping.
//! The Redis registry needs neither: it compares Redis server time inside its scripts.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A source of monotonic time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> Instant;
}

/// The real clock: [`Instant::now`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that starts at the real time of its creation and then moves only by
/// [`ManualClock::advance`]. Clones share the time.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<Instant>>);

impl ManualClock {
    pub fn new() -> Self {
        Self(Arc::new(Mutex::new(Instant::now())))
    }

    /// Move the time forward by `d`.
    pub fn advance(&self, d: Duration) {
        *self.lock() += d;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Instant> {
        // A panic elsewhere while holding the lock leaves a valid `Instant`.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.lock()
    }
}
