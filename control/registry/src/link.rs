//! The thread glue both binaries' Redis links share (signaling's `cluster.rs`, the dataplane's
//! `io/cluster.rs`): background threads stopped together, an [`Outbox`] (channel + wake-up)
//! through which they report to an event loop, and the body of the subscriber thread. Redis is
//! never called on an event loop, so a slow or dead Redis never stalls one.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use control::Beacon;
use crossbeam_channel::{Receiver, Sender};
use tracing::warn;

use crate::{RedisSettings, Subscription, subscribe};

/// A link thread's way to an event loop: a channel, and a wake-up for the loop's poller.
pub struct Outbox<T> {
    tx: Sender<T>,
    wake: Arc<dyn Fn() + Send + Sync>,
}

impl<T> Clone for Outbox<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            wake: self.wake.clone(),
        }
    }
}

impl<T> Outbox<T> {
    /// An outbox and the receiving end the event loop drains when `wake` has woken it.
    pub fn new(wake: impl Fn() + Send + Sync + 'static) -> (Self, Receiver<T>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        (
            Self {
                tx,
                wake: Arc::new(wake),
            },
            rx,
        )
    }

    /// Deliver `m` and wake the loop. A loop that is gone is not an error (shutdown).
    pub fn emit(&self, m: T) {
        let _ = self.tx.send(m);
        (self.wake)();
    }
}

/// The background threads of a link: started one by one, stopped together (each checks the
/// stop flag at least every 500 ms, so stopping is bounded).
#[derive(Debug, Default)]
pub struct LinkThreads {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl LinkThreads {
    pub fn new() -> Self {
        Self::default()
    }

    /// Start a thread named `name` running `f` with the shared stop flag.
    pub fn spawn(
        &mut self,
        name: &str,
        f: impl FnOnce(&AtomicBool) + Send + 'static,
    ) -> io::Result<()> {
        let stop = self.stop.clone();
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || f(&stop))?;
        self.threads.push(handle);
        Ok(())
    }

    /// Raise the stop flag and wait for every thread.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// What a subscriber thread reports, in the event loop's own terms.
pub struct SubscriberEvents<T, M: Fn(&[u8]) -> Option<T>> {
    /// The subscription came up (`true`) or was lost (`false`; it reconnects with backoff).
    pub subscribed: fn(bool) -> T,
    /// A beacon on the health channel.
    pub beacon: fn(Beacon) -> T,
    /// A message on `channel`; `None` drops it (the closure logs why).
    pub message: M,
}

/// Body of a subscriber thread: stay subscribed to `channel` and the health channel until
/// `stop`, reporting through `out`.
pub fn run_subscriber<T, M: Fn(&[u8]) -> Option<T>>(
    settings: &RedisSettings,
    channel: &str,
    stop: &AtomicBool,
    out: &Outbox<T>,
    events: SubscriberEvents<T, M>,
) {
    subscribe(settings, channel, stop, |s| match s {
        Subscription::Up => out.emit((events.subscribed)(true)),
        Subscription::Down(e) => {
            warn!(error = %e, "redis subscription lost; reconnecting");
            out.emit((events.subscribed)(false));
        }
        Subscription::Beacon(b) => out.emit((events.beacon)(b)),
        Subscription::Message(payload) => {
            if let Some(m) = (events.message)(payload) {
                out.emit(m);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    #[test]
    fn outbox_delivers_and_wakes_and_threads_stop_together() {
        let woken = Arc::new(AtomicUsize::new(0));
        let w = woken.clone();
        let (out, rx) = Outbox::new(move || {
            w.fetch_add(1, Ordering::SeqCst);
        });
        let mut threads = LinkThreads::new();
        for i in 0..2 {
            let out = out.clone();
            threads
                .spawn("t", move |stop| {
                    out.emit(i);
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                })
                .expect("spawn");
        }
        let mut got: Vec<i32> = (0..2)
            .map(|_| rx.recv_timeout(Duration::from_secs(5)).expect("emitted"))
            .collect();
        got.sort();
        assert_eq!(got, [0, 1]);
        assert_eq!(woken.load(Ordering::SeqCst), 2);
        threads.stop();
        assert!(threads.threads.is_empty());
    }
}
