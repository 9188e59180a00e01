//! One worker thread: a pinned mio loop around one [`WorkerCore`] and one UDP socket.
//!
//! Each loop turn reads the clock once, takes commands from the bounded queue, receives datagrams
//! in batches (bounded per turn so timers and commands are never starved), fires due timers and
//! then flushes the core's output: datagrams to the socket (GSO-coalesced), reports to the control
//! thread (which it wakes).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mio::{Events, Interest, Poll, Token, Waker};
use tracing::{error, info, warn};

use super::udp::UdpShell;
use crate::core::{
    Command, CoreConfig, Input, Output, Report, SharedCrypto, WallClock, WorkerCore,
};

const SOCKET: Token = Token(0);
const WAKER: Token = Token(1);
/// Receive calls per loop turn before timers and commands get a look in.
const MAX_RECV_CALLS_PER_TURN: usize = 64;
/// The loop wakes at least this often (shutdown flag, stats).
const MAX_SLEEP: Duration = Duration::from_millis(250);

/// Settings of one worker.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub core: CoreConfig,
    pub bind: SocketAddr,
    pub batching: bool,
    pub socket_buffer: usize,
    /// CPU to pin the thread to, if any.
    pub cpu: Option<usize>,
    pub command_queue: usize,
}

/// What the control thread holds of a worker.
#[derive(Debug)]
pub struct WorkerHandle {
    pub id: u32,
    pub commands: Sender<Command>,
    pub waker: Arc<Waker>,
    pub local_addr: SocketAddr,
    pub thread: JoinHandle<()>,
}

/// Reports from all workers, tagged with the worker id.
pub type ReportSender = Sender<(u32, Report)>;

/// Bind the socket and start the worker thread.
pub fn spawn(
    settings: WorkerSettings,
    crypto: SharedCrypto,
    reports: ReportSender,
    control_waker: Arc<Waker>,
    shutdown: Arc<AtomicBool>,
) -> anyhow::Result<WorkerHandle> {
    let mut udp = UdpShell::bind(settings.bind, settings.batching, settings.socket_buffer)?;
    let local_addr = udp.local_addr()?;
    let poll = Poll::new()?;
    poll.registry()
        .register(udp.socket(), SOCKET, Interest::READABLE)?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let (tx, rx) = crossbeam_channel::bounded(settings.command_queue);
    let id = settings.core.worker;
    let thread = std::thread::Builder::new()
        .name(format!("worker-{id}"))
        .spawn(move || {
            if let Some(cpu) = settings.cpu
                && !core_affinity::set_for_current(core_affinity::CoreId { id: cpu })
            {
                warn!(worker = id, cpu, "could not pin worker thread");
            }
            let clock = WallClock {
                instant: Instant::now(),
                unix_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0),
            };
            let core = WorkerCore::new(settings.core.clone(), crypto, clock);
            let mut w = Worker {
                id,
                core,
                udp,
                poll,
                commands: rx,
                reports,
                control_waker,
                shutdown,
                advertised: settings.core.local_addr,
                writable: false,
                waited: Duration::ZERO,
                since_report: Instant::now(),
            };
            info!(worker = id, bind = %local_addr, advertised = %w.advertised,
                batching = w.udp.batching(), gso_segments = w.udp.max_segments(), "worker started");
            if let Err(e) = w.run() {
                error!(worker = id, error = %e, "worker loop failed");
            }
        })?;
    Ok(WorkerHandle {
        id,
        commands: tx,
        waker,
        local_addr,
        thread,
    })
}

struct Worker {
    id: u32,
    core: WorkerCore,
    udp: UdpShell,
    poll: Poll,
    commands: Receiver<Command>,
    reports: ReportSender,
    control_waker: Arc<Waker>,
    shutdown: Arc<AtomicBool>,
    advertised: SocketAddr,
    /// WRITABLE interest is registered (send backlog pending).
    writable: bool,
    /// Time spent waiting in `poll` and in total since the last stats report (busy ratio).
    waited: Duration,
    since_report: Instant,
}

impl Worker {
    fn run(&mut self) -> std::io::Result<()> {
        let mut events = Events::with_capacity(64);
        let mut more_to_read = false;
        loop {
            let timeout = if more_to_read {
                Duration::ZERO
            } else {
                let now = Instant::now();
                self.core.poll_timeout().map_or(MAX_SLEEP, |t| {
                    t.saturating_duration_since(now).min(MAX_SLEEP)
                })
            };
            let before = Instant::now();
            if let Err(e) = self.poll.poll(&mut events, Some(timeout))
                && e.kind() != std::io::ErrorKind::Interrupted
            {
                return Err(e);
            }
            // The loop's clock read (the one before `poll` only measures the wait).
            let now = Instant::now();
            self.waited += now.saturating_duration_since(before);
            let mut readable = more_to_read;
            for ev in events.iter() {
                if ev.token() == SOCKET {
                    readable |= ev.is_readable();
                    if ev.is_writable() && self.udp.retry_backlog() {
                        self.set_writable(false)?;
                    }
                }
            }
            if self.shutdown.load(Ordering::Relaxed) {
                self.core.shutdown(now);
                self.flush_output();
                info!(worker = self.id, "worker stopped");
                return Ok(());
            }
            while let Ok(cmd) = self.commands.try_recv() {
                self.core.handle_input(Input::Command(now, cmd));
            }
            more_to_read = false;
            if readable {
                let mut drained = false;
                for _ in 0..MAX_RECV_CALLS_PER_TURN {
                    let core = &mut self.core;
                    let dst = self.advertised;
                    let n = match self.udp.recv(|source, data| {
                        core.handle_input(Input::Receive {
                            now,
                            source,
                            destination: dst,
                            data,
                        })
                    }) {
                        Ok(n) => n,
                        Err(e) => {
                            // e.g. ECONNREFUSED from an ICMP error: not fatal, keep reading.
                            tracing::debug!(worker = self.id, error = %e, "udp recv error");
                            1
                        }
                    };
                    self.flush_output();
                    if n == 0 {
                        drained = true;
                        break;
                    }
                }
                // Budget spent with data possibly left: the socket is edge-triggered, so no new
                // event would come for it. Poll again without sleeping.
                more_to_read = !drained;
            }
            if self.core.poll_timeout().is_some_and(|t| t <= now) {
                self.core.handle_input(Input::Timeout(now));
            }
            self.flush_output();
            if self.udp.has_backlog() && !self.writable {
                self.set_writable(true)?;
            }
        }
    }

    fn set_writable(&mut self, on: bool) -> std::io::Result<()> {
        let interest = if on {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        self.poll
            .registry()
            .reregister(self.udp.socket(), SOCKET, interest)?;
        self.writable = on;
        Ok(())
    }

    fn flush_output(&mut self) {
        let mut reported = false;
        while let Some(o) = self.core.poll_output() {
            match o {
                Output::Transmit(t) => self.udp.send(t.destination, &t.contents),
                Output::Report(mut r) => {
                    if let Report::Stats(ws) = &mut r {
                        let u = &self.udp.stats;
                        ws.udp_recv_calls = u.recv_calls;
                        ws.udp_send_calls = u.send_calls;
                        ws.udp_gso_sends = u.gso_sends;
                        ws.udp_send_errors = u.send_errors;
                        ws.udp_backlog_drops = u.backlog_drops;
                        let total = self.since_report.elapsed();
                        ws.busy_ratio = if total.is_zero() {
                            0.0
                        } else {
                            (1.0 - self.waited.as_secs_f64() / total.as_secs_f64()).clamp(0.0, 1.0)
                        };
                        self.waited = Duration::ZERO;
                        self.since_report = Instant::now();
                    }
                    // Unbounded: the control thread never blocks on a worker, so a report is
                    // never lost; its volume is bounded by commands and participants.
                    let _ = self.reports.send((self.id, r));
                    reported = true;
                }
            }
        }
        self.udp.flush();
        if reported {
            let _ = self.control_waker.wake();
        }
    }
}
