//! One worker thread: a pinned mio loop around one [`WorkerCore`], one UDP socket and (with
//! ICE-TCP on) one TCP listener with its connections ([`super::tcp`]), under a supervisor.
//!
//! Each loop turn reads the clock once, takes commands from the bounded queue, receives datagrams
//! in batches (bounded per turn so timers and commands are never starved), fires due timers and
//! then flushes the core's output: datagrams to the socket (GSO-coalesced), reports to the control
//! thread (which it wakes).
//!
//! Supervision: the loop runs inside `catch_unwind`. If it panics (a bug, or an injected fault in
//! tests), its core and socket are dropped, the control thread gets [`FromWorker::Failed`] and
//! tells every participant of the worker (`room_closed {reason:"worker_failed"}`: their clients
//! join again), then sends [`ToWorker::Restart`]; every command queued before that is answered
//! `unavailable`. The thread then binds a new socket on the same port, builds a fresh core and
//! reports [`FromWorker::Restarted`]. The TCP listener is bound again the same way (its
//! connections were dropped with the old core).

use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use control::{ErrorCode, Response};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use mio::{Events, Interest, Poll, Token, Waker};
use tracing::{error, info, warn};

use super::tcp::{TcpLimits, TcpShell};
use super::translate::{self, WireReport};
use super::udp::UdpShell;
use sfu_core::{
    Command, CoreConfig, Input, Op, Output, Remote, SharedCrypto, Transport, WallClock, WorkerCore,
};

const SOCKET: Token = Token(0);
const WAKER: Token = Token(1);
/// Receive calls per loop turn before timers and commands get a look in.
const MAX_RECV_CALLS_PER_TURN: usize = 64;
/// The loop wakes at least this often (shutdown flag, stats).
const MAX_SLEEP: Duration = Duration::from_millis(250);
/// How often ICE-TCP connections are checked for handshake and idle timeouts.
const TCP_SWEEP: Duration = Duration::from_millis(100);

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
    /// Passive ICE-TCP: the address its listener binds and the limits on its connections
    /// (`None`: UDP only). The advertised candidate is `core.tcp_addr`.
    pub tcp: Option<(SocketAddr, TcpLimits)>,
}

/// What the control thread sends a worker.
#[derive(Debug)]
pub enum ToWorker {
    Command(Command),
    /// After a failure: start again with a fresh core (everything queued before is refused).
    Restart,
    /// Test fault injection (`--test-faults`): panic inside the worker loop.
    InjectPanic,
}

/// What a worker tells the control thread.
#[derive(Debug)]
pub enum FromWorker {
    Report(WireReport),
    /// The loop panicked or failed; the worker is down until told to [`ToWorker::Restart`].
    Failed {
        reason: String,
    },
    /// Running again with a fresh core, on the same port.
    Restarted,
}

/// What the control thread holds of a worker.
#[derive(Debug)]
pub struct WorkerHandle {
    pub id: u32,
    pub commands: Sender<ToWorker>,
    pub waker: Arc<Waker>,
    pub local_addr: SocketAddr,
    /// The ICE-TCP listener's address, if any.
    pub tcp_addr: Option<SocketAddr>,
    pub thread: JoinHandle<()>,
}

/// A worker's sockets: replaced together after a failure.
struct Sockets {
    udp: UdpShell,
    tcp: Option<TcpShell>,
}

impl Sockets {
    fn bind(settings: &WorkerSettings) -> std::io::Result<Self> {
        let udp = UdpShell::bind(settings.bind, settings.batching, settings.socket_buffer)?;
        let tcp = match &settings.tcp {
            Some((addr, limits)) => Some(TcpShell::bind(*addr, limits.clone())?),
            None => None,
        };
        Ok(Self { udp, tcp })
    }
}

/// Messages from all workers, tagged with the worker id.
pub type ReportSender = Sender<(u32, FromWorker)>;

/// Everything a worker thread needs across restarts. The poll (and so the waker the control
/// thread holds) lives as long as the thread; only the socket and the core are replaced.
struct Supervisor {
    id: u32,
    settings: WorkerSettings,
    crypto: SharedCrypto,
    poll: Poll,
    commands: Receiver<ToWorker>,
    reports: ReportSender,
    control_waker: Arc<Waker>,
    shutdown: Arc<AtomicBool>,
}

/// Bind the socket and start the worker thread.
pub fn spawn(
    settings: WorkerSettings,
    crypto: SharedCrypto,
    reports: ReportSender,
    control_waker: Arc<Waker>,
    shutdown: Arc<AtomicBool>,
) -> anyhow::Result<WorkerHandle> {
    let sockets = Sockets::bind(&settings)?;
    let local_addr = sockets.udp.local_addr()?;
    let tcp_addr = match &sockets.tcp {
        Some(t) => Some(t.local_addr()?),
        None => None,
    };
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let (tx, rx) = crossbeam_channel::bounded(settings.command_queue);
    let id = settings.core.worker;
    let sup = Supervisor {
        id,
        settings,
        crypto,
        poll,
        commands: rx,
        reports,
        control_waker,
        shutdown,
    };
    let thread = std::thread::Builder::new()
        .name(format!("worker-{id}"))
        .spawn(move || sup.run(sockets))?;
    Ok(WorkerHandle {
        id,
        commands: tx,
        waker,
        local_addr,
        tcp_addr,
        thread,
    })
}

impl Supervisor {
    fn run(mut self, sockets: Sockets) {
        if let Some(cpu) = self.settings.cpu
            && !core_affinity::set_for_current(core_affinity::CoreId { id: cpu })
        {
            warn!(worker = self.id, cpu, "could not pin worker thread");
        }
        let mut sockets = Some(sockets);
        loop {
            let socks = match sockets.take() {
                Some(s) => s,
                None => match self.rebind() {
                    Some(s) => s,
                    None => return,
                },
            };
            let outcome = catch_unwind(AssertUnwindSafe(|| self.run_loop(socks)));
            // The worker (core, socket) was dropped while unwinding: the port is free again, and
            // closing the socket removed it from the poll.
            let reason = match outcome {
                Ok(Ok(())) => return, // shutdown
                Ok(Err(e)) => format!("worker loop failed: {e}"),
                Err(panic) => format!("worker panicked: {}", panic_message(&panic)),
            };
            error!(worker = self.id, %reason, "worker failed; its participants are told, restarting");
            self.emit(FromWorker::Failed { reason });
            if !self.await_restart() {
                return;
            }
        }
    }

    fn emit(&self, m: FromWorker) {
        let _ = self.reports.send((self.id, m));
        let _ = self.control_waker.wake();
    }

    /// Wait for [`ToWorker::Restart`], refusing what was queued for the dead core. `false` on
    /// shutdown.
    fn await_restart(&self) -> bool {
        loop {
            match self.refuse_requests(MAX_SLEEP) {
                Some(true) => return true,
                Some(false) => {}
                None => return false,
            }
        }
    }

    /// For up to `wait`, answer queued requests `unavailable` (there is no core to serve them).
    /// `Some(true)` once [`ToWorker::Restart`] arrives, `Some(false)` when the time is up, `None`
    /// on shutdown.
    fn refuse_requests(&self, wait: Duration) -> Option<bool> {
        let until = Instant::now() + wait;
        loop {
            if self.shutdown.load(Ordering::Relaxed) {
                return None;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Some(false);
            }
            match self.commands.recv_timeout(left.min(MAX_SLEEP)) {
                Ok(ToWorker::Restart) => return Some(true),
                Ok(ToWorker::Command(Command { tag, op })) if !matches!(op, Op::Remove { .. }) => {
                    let response =
                        Response::error(ErrorCode::Unavailable, "the worker is restarting");
                    self.emit(FromWorker::Report(WireReport::Response { tag, response }));
                }
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// New sockets on the same ports. Retried until it works (100 ms doubling to 5 s; another
    /// process may hold a port for a while): the node stays degraded meanwhile, requests for
    /// this worker are refused, and shutdown still ends it. `None` on shutdown.
    fn rebind(&self) -> Option<Sockets> {
        let mut backoff = Duration::from_millis(100);
        for attempt in 0u64.. {
            match Sockets::bind(&self.settings) {
                Ok(u) => {
                    info!(worker = self.id, attempt, "worker restarted");
                    self.emit(FromWorker::Restarted);
                    return Some(u);
                }
                Err(e) => {
                    if attempt % 10 == 0 {
                        error!(worker = self.id, attempt, error = %e,
                            "could not rebind the worker socket; retrying (the node is degraded)");
                    }
                    self.refuse_requests(backoff)?;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        None
    }

    fn run_loop(&mut self, sockets: Sockets) -> std::io::Result<()> {
        let Sockets { mut udp, mut tcp } = sockets;
        self.poll
            .registry()
            .register(udp.socket(), SOCKET, Interest::READABLE)?;
        if let Some(t) = &mut tcp {
            t.register(self.poll.registry())?;
        }
        let clock = WallClock {
            instant: Instant::now(),
            unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        };
        // The core draws ICE credentials and resume keys from this seed: 256 bits from the OS.
        let seed: [u8; 32] = rand::random();
        let core = WorkerCore::new(self.settings.core.clone(), self.crypto.clone(), clock, seed);
        let local_addr = udp.local_addr()?;
        let tcp_bind = tcp.as_ref().and_then(|t| t.local_addr().ok());
        info!(worker = self.id, bind = %local_addr, advertised = %self.settings.core.local_addr,
            batching = udp.batching(), gso_segments = udp.max_segments(),
            ice_tcp = ?tcp_bind, "worker started");
        let mut w = Worker {
            id: self.id,
            core,
            udp,
            tcp,
            next_sweep: Instant::now(),
            poll: &mut self.poll,
            commands: &self.commands,
            reports: &self.reports,
            control_waker: &self.control_waker,
            shutdown: &self.shutdown,
            advertised: self.settings.core.local_addr,
            tcp_advertised: self
                .settings
                .core
                .tcp_addr
                .unwrap_or(self.settings.core.local_addr),
            writable: false,
            waited: Duration::ZERO,
            since_report: Instant::now(),
        };
        w.run()
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}

struct Worker<'a> {
    id: u32,
    core: WorkerCore,
    udp: UdpShell,
    tcp: Option<TcpShell>,
    next_sweep: Instant,
    poll: &'a mut Poll,
    commands: &'a Receiver<ToWorker>,
    reports: &'a ReportSender,
    control_waker: &'a Waker,
    shutdown: &'a AtomicBool,
    advertised: SocketAddr,
    /// The destination of datagrams received over ICE-TCP (the advertised TCP candidate).
    tcp_advertised: SocketAddr,
    /// WRITABLE interest is registered (send backlog pending).
    writable: bool,
    /// Time spent waiting in `poll` and in total since the last stats report (busy ratio).
    waited: Duration,
    since_report: Instant,
}

impl Worker<'_> {
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
                } else if TcpShell::owns(ev.token())
                    && let Some(tcp) = &mut self.tcp
                {
                    tcp.event(
                        self.poll.registry(),
                        ev.token(),
                        ev.is_readable() || ev.is_read_closed() || ev.is_error(),
                        ev.is_writable(),
                    );
                }
            }
            if self.shutdown.load(Ordering::Relaxed) {
                self.core.shutdown(now);
                self.flush_output();
                info!(worker = self.id, "worker stopped");
                return Ok(());
            }
            while let Ok(cmd) = self.commands.try_recv() {
                match cmd {
                    ToWorker::Command(cmd) => self.core.handle_input(Input::Command(now, cmd)),
                    ToWorker::InjectPanic => panic!("injected fault (--test-faults)"),
                    ToWorker::Restart => {}
                }
            }
            more_to_read = false;
            if readable {
                let mut drained = false;
                let mut now = now;
                for call in 0..MAX_RECV_CALLS_PER_TURN {
                    if call > 0 {
                        now = Instant::now();
                    }
                    let core = &mut self.core;
                    let dst = self.advertised;
                    let n = match self.udp.recv(|source, data| {
                        core.handle_input(Input::Receive {
                            now,
                            transport: Transport::Udp,
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
                    // Release what this batch forwarded now, not after the whole receive loop:
                    // str0m sends written RTP on its next time input, so without this a packet
                    // read early in a long loop waited for every later batch (the SFU-added
                    // latency grew with load).
                    if self.core.poll_timeout().is_some_and(|t| t <= now) {
                        self.core.handle_input(Input::Timeout(now));
                    }
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
            if self.tcp.is_some() {
                more_to_read |= self.handle_tcp(now);
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

    /// Accept and read ICE-TCP connections (on their budgets), feed their datagrams to the core,
    /// and close connections past their timeouts. Returns whether work is left for the next turn.
    /// (What the datagrams produced is released by the turn's closing timeout and flush.)
    fn handle_tcp(&mut self, now: Instant) -> bool {
        let Some(tcp) = &mut self.tcp else {
            return false;
        };
        let core = &mut self.core;
        let dst = self.tcp_advertised;
        tcp.process(self.poll.registry(), now, &mut |source, data, ask_bound| {
            core.handle_input(Input::Receive {
                now,
                transport: Transport::Tcp,
                source,
                destination: dst,
                data,
            });
            ask_bound
                && core.is_bound(&Remote {
                    transport: Transport::Tcp,
                    addr: source,
                })
        });
        if now >= self.next_sweep {
            tcp.sweep(self.poll.registry(), now);
            self.next_sweep = now + TCP_SWEEP;
        }
        tcp.has_pending()
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
                Output::Transmit(t) => match (t.transport, &mut self.tcp) {
                    (Transport::Tcp, Some(tcp)) => tcp.send(t.destination, &t.contents),
                    (Transport::Tcp, None) => {}
                    (Transport::Udp, _) => self.udp.send(t.destination, t.contents),
                },
                Output::Report(r) => {
                    let mut r = translate::report(r);
                    if let WireReport::Stats(ws) = &mut r {
                        let u = &self.udp.stats;
                        ws.udp_recv_calls = u.recv_calls;
                        ws.udp_send_calls = u.send_calls;
                        ws.udp_gso_sends = u.gso_sends;
                        ws.udp_send_errors = u.send_errors;
                        ws.udp_backlog_drops = u.backlog_drops;
                        if let Some(tcp) = &self.tcp {
                            let t = &tcp.stats;
                            ws.tcp_connections = tcp.connections() as u64;
                            ws.tcp_accepted = t.accepted;
                            ws.tcp_refused = t.refused;
                            ws.tcp_garbage = t.garbage;
                            ws.tcp_evicted = t.evicted;
                            ws.tcp_timeouts = t.timeouts;
                            ws.tcp_frames_in = t.frames_in;
                            ws.tcp_frames_out = t.frames_out;
                            ws.tcp_send_drops = t.send_drops;
                            ws.tcp_recv_calls = t.recv_calls;
                            ws.tcp_send_calls = t.send_calls;
                        }
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
                    let _ = self.reports.send((self.id, FromWorker::Report(r)));
                    reported = true;
                }
            }
        }
        self.udp.flush();
        if let Some(tcp) = &mut self.tcp {
            tcp.flush(self.poll.registry());
        }
        if reported {
            let _ = self.control_waker.wake();
        }
    }
}
