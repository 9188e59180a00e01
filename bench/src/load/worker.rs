//! One load-generator thread: joins its clients (paced), then serves their UDP and WebSocket
//! sockets and timers from one `mio::Poll` until told to stop, reporting counters every second.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use str0m::media::MediaKind;

use super::Sfu;
use crate::client::{Client, Media};
use crate::janus::JanusClient;
use crate::peer::LatencyHist;

/// A synthetic participant of either SFU.
enum AnyClient {
    Ours(Box<Client>),
    Janus(Box<JanusClient>),
}

impl AnyClient {
    fn peer(&self) -> &crate::peer::Peer {
        match self {
            AnyClient::Ours(c) => &c.peer,
            AnyClient::Janus(c) => &c.peer,
        }
    }
    fn peer_mut(&mut self) -> &mut crate::peer::Peer {
        match self {
            AnyClient::Ours(c) => &mut c.peer,
            AnyClient::Janus(c) => &mut c.peer,
        }
    }
    fn fds(&self) -> (RawFd, Option<RawFd>) {
        match self {
            AnyClient::Ours(c) => c.fds(),
            AnyClient::Janus(c) => c.fds(),
        }
    }
    fn poll(&mut self, now: Instant) {
        match self {
            AnyClient::Ours(c) => {
                let _ = c.poll(now);
            }
            AnyClient::Janus(c) => c.poll(now),
        }
    }
    /// Media socket and timers only (the WebSocket has its own readiness events).
    fn poll_media(&mut self, now: Instant) {
        match self {
            AnyClient::Ours(c) => {
                let _ = c.poll_media(now);
            }
            AnyClient::Janus(c) => c.poll_media(now),
        }
    }
    fn next_deadline(&self) -> Instant {
        match self {
            AnyClient::Ours(c) => c.next_deadline(),
            AnyClient::Janus(c) => c.next_deadline(),
        }
    }
    fn set_rate_scale(&mut self, scale: crate::client::RateScale) {
        match self {
            AnyClient::Ours(c) => c.set_rate_scale(scale),
            AnyClient::Janus(c) => c.set_rate_scale(scale),
        }
    }
    fn leave(&mut self) {
        if let AnyClient::Ours(c) = self {
            let _ = c.leave();
        }
    }
}

/// Cumulative counters a worker reports every second.
#[derive(Debug, Clone, Default)]
pub(super) struct WorkerReport {
    pub(super) worker: usize,
    pub(super) joined: usize,
    pub(super) connected: usize,
    pub(super) failed_joins: usize,
    pub(super) sent: u64,
    /// Σ over its publishers: sent × (room size − 1).
    pub(super) expected: u64,
    pub(super) received: u64,
    /// RTP payload bytes received by its subscribers.
    pub(super) received_bytes: u64,
    pub(super) lost: u64,
    pub(super) hist: LatencyHist,
    pub(super) jitter_sum: f64,
    pub(super) jitter_n: u64,
    pub(super) join_latencies_ms: Vec<f64>,
    pub(super) subscribed_streams: u64,
}

pub(super) struct WorkerPlan {
    pub(super) sfu: Sfu,
    /// (url, room, name, publisher)
    pub(super) clients: Vec<(String, String, String, bool)>,
    pub(super) join_interval: Duration,
    pub(super) media: Media,
    pub(super) per_room: usize,
    pub(super) pin: Option<usize>,
    /// Subscribers count received RTP from headers, decrypting one packet in N (`None`: every
    /// packet through str0m).
    pub(super) light_sample_every: Option<u32>,
    /// The address the peers' media sockets bind.
    pub(super) bind_ip: std::net::IpAddr,
    /// Media over ICE-TCP instead of UDP (our SFU only).
    pub(super) ice_tcp: bool,
    /// The run's offered-load multiplier (the capacity ramp turns it up).
    pub(super) scale: crate::client::RateScale,
}

/// Make `due` client `idx`'s one live heap entry (unless it already is).
fn reschedule(
    heap: &mut BinaryHeap<Reverse<(Instant, usize)>>,
    scheduled: &mut [Instant],
    idx: usize,
    due: Instant,
) {
    if scheduled[idx] != due {
        scheduled[idx] = due;
        heap.push(Reverse((due, idx)));
    }
}

/// One worker thread: join its clients (paced), then serve them until `stop`.
pub(super) fn worker(
    w: usize,
    plan: WorkerPlan,
    epoch: Instant,
    tx: &Sender<WorkerReport>,
    stop: &AtomicBool,
) {
    if let Some(cpu) = plan.pin {
        core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
    }
    let Ok(poll) = Poll::new() else {
        return;
    };
    let mut poll = poll;
    let mut events = Events::with_capacity(1024);
    let mut clients: Vec<(AnyClient, bool, Instant, bool)> = Vec::new(); // (client, publisher, join start, counted join latency)
    // Peer deadlines. A client has at most one live entry: `scheduled[idx]` is the deadline it
    // was last pushed with, and a popped entry that does not match it is stale and dropped.
    // (Re-pushing stale entries made the heap grow by one per socket event for the whole run,
    // and the generator's CPU climb with time at constant load.)
    let mut heap: BinaryHeap<Reverse<(Instant, usize)>> = BinaryHeap::new();
    let mut scheduled: Vec<Instant> = Vec::new();
    let mut pending = plan.clients.into_iter().peekable();
    let mut next_join = Instant::now();
    let mut failed = 0;
    let mut next_report = Instant::now();
    let mut join_latencies = Vec::new();
    let mut done_joining = false;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        // Janus only lists a publisher (and lets subscribers join it) once its peer connection
        // is up, so subscribers wait for the publishers this thread already started.
        let janus_wait = matches!(plan.sfu, Sfu::Janus)
            && pending
                .peek()
                .is_some_and(|(_, _, _, publisher)| !publisher)
            && clients
                .iter()
                .any(|(c, p, ..)| *p && !c.peer().is_connected());
        if janus_wait {
            next_join = now + Duration::from_millis(20);
        }
        if !done_joining && now >= next_join {
            match pending.next() {
                Some((url, room, name, publisher)) => {
                    let media = publisher.then_some(plan.media);
                    let start = Instant::now();
                    let joined = match &plan.sfu {
                        Sfu::Ours => {
                            let join = if plan.ice_tcp {
                                Client::join_tcp_from
                            } else {
                                Client::join_from
                            };
                            join(
                                plan.bind_ip,
                                &url,
                                &room,
                                &name,
                                media,
                                epoch,
                                Duration::from_secs(10),
                            )
                            .map(|c| AnyClient::Ours(Box::new(c)))
                        }
                        Sfu::Janus => {
                            let room: u64 = room.parse().unwrap_or(10_000);
                            JanusClient::join(
                                &url,
                                room,
                                &name,
                                media,
                                plan.bind_ip,
                                epoch,
                                Duration::from_secs(10),
                            )
                            .map(|c| AnyClient::Janus(Box::new(c)))
                        }
                    };
                    match joined {
                        Ok(mut c) => {
                            if let Some(every) = plan.light_sample_every {
                                c.peer_mut().set_light_receive(every);
                            }
                            c.set_rate_scale(plan.scale.clone());
                            // Server messages that arrived during the (blocking) join may sit
                            // in the WebSocket's buffer with no readiness event to come: read
                            // them now (later, only WebSocket events read it).
                            c.poll(Instant::now());
                            let idx = clients.len();
                            let (udp, ws) = c.fds();
                            let _ = poll.registry().register(
                                &mut SourceFd(&udp),
                                Token(idx * 2),
                                Interest::READABLE,
                            );
                            if let Some(ws) = ws {
                                let _ = poll.registry().register(
                                    &mut SourceFd(&(ws as RawFd)),
                                    Token(idx * 2 + 1),
                                    Interest::READABLE,
                                );
                            }
                            let due = Instant::now();
                            heap.push(Reverse((due, idx)));
                            scheduled.push(due);
                            clients.push((c, publisher, start, false));
                        }
                        Err(e) => {
                            failed += 1;
                            tracing::warn!(error = %e, "join failed");
                        }
                    }
                    next_join = start + plan.join_interval;
                }
                None => done_joining = true,
            }
        }
        // Sleep until the next socket event, peer deadline, join or report.
        let mut wake = next_report;
        if let Some(Reverse((t, _))) = heap.peek() {
            wake = wake.min(*t);
        }
        if !done_joining {
            wake = wake.min(next_join);
        }
        let timeout = wake
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(100));
        if poll.poll(&mut events, Some(timeout)).is_err() {
            continue;
        }
        let now = Instant::now();
        for ev in events.iter() {
            let idx = ev.token().0 / 2;
            let ws = ev.token().0 % 2 == 1;
            if let Some((c, ..)) = clients.get_mut(idx) {
                if ws {
                    c.poll(now);
                } else {
                    c.poll_media(now);
                }
                reschedule(&mut heap, &mut scheduled, idx, c.next_deadline());
            }
        }
        while let Some(Reverse((t, idx))) = heap.peek().copied() {
            if t > now {
                break;
            }
            heap.pop();
            if scheduled.get(idx) != Some(&t) {
                continue; // stale: the client was rescheduled since
            }
            if let Some((c, ..)) = clients.get_mut(idx) {
                if c.next_deadline() <= now {
                    c.poll_media(now);
                }
                let due = c.next_deadline().max(now + Duration::from_micros(200));
                heap.push(Reverse((due, idx)));
                scheduled[idx] = due;
            }
        }
        if now >= next_report {
            next_report = now + Duration::from_millis(500);
            // Join → first remote RTP, for clients that got their first packet since last time.
            for (c, _, start, counted) in clients.iter_mut() {
                if !*counted && let Some(first) = c.peer().received.first_rtp {
                    *counted = true;
                    join_latencies
                        .push(first.saturating_duration_since(*start).as_secs_f64() * 1e3);
                }
            }
            let mut r = WorkerReport {
                worker: w,
                joined: clients.len(),
                failed_joins: failed,
                join_latencies_ms: join_latencies.clone(),
                ..WorkerReport::default()
            };
            for (c, publisher, ..) in &clients {
                let peer = c.peer();
                if peer.is_connected() {
                    r.connected += 1;
                }
                if *publisher {
                    r.sent += peer.sent_packets;
                    r.expected += peer.sent_packets * (plan.per_room as u64 - 1);
                }
                for t in peer.received.tracks.values() {
                    r.received += t.packets;
                    r.received_bytes += t.bytes;
                    r.lost += t.lost;
                    r.hist.merge(&t.latency);
                    if t.packets > 0 {
                        r.jitter_sum += t.jitter_us;
                        r.jitter_n += 1;
                    }
                    if t.kind == Some(MediaKind::Video) || t.kind == Some(MediaKind::Audio) {
                        r.subscribed_streams += 1;
                    }
                }
            }
            let _ = tx.send(r);
        }
    }
    for (c, ..) in clients.iter_mut() {
        c.leave();
    }
}
