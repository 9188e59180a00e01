//! A deterministic simulated network: one real `WorkerCore`, real str0m peers, a virtual clock.
//!
//! `progress()` always handles the earliest pending thing (a packet due, a peer timeout, the core
//! timeout, a media tick), so minutes of call run in well under a second of real time and every run
//! is identical. Links have a fixed one-way latency and optional seeded loss. The simulation also
//! plays signaling: it relays the core's server offers to the peers and their answers back.
#![allow(dead_code)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bench::Peer;
use control::{Event, Request, Response};
use dataplane::io::translate;
use sfu_core::{CoreConfig, Input, Output, Report, Transport, WallClock, WorkerCore};

mod log;
mod observe;
mod viewer;

pub const SERVER: &str = "10.0.0.1:40000";

/// Upper bound on simulation steps per `run_*` call: a livelock fails fast instead of hanging.
const MAX_STEPS: usize = 5_000_000;

struct InFlight {
    at: Instant,
    seq: u64,
    from: SocketAddr,
    to: SocketAddr,
    /// Sent over ICE-TCP (reliable here: the simulated link never drops it).
    tcp: bool,
    data: Vec<u8>,
}

impl PartialEq for InFlight {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for InFlight {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// What a simulated peer publishes: the same media profile the load generator's clients use.
pub type Publish = bench::client::Media;

/// Video only, 30 fps, frames of `packets_per_frame` RTP packets of `packet_size` bytes.
pub fn video_only(packets_per_frame: usize, packet_size: usize) -> Publish {
    Publish {
        audio: false,
        video: true,
        fps: 30,
        packets_per_frame,
        packet_size,
        ..Publish::default()
    }
}

pub struct SimPeer {
    pub peer: Peer,
    pub id: String,
    pub publish: Option<Publish>,
    pub next_audio: Instant,
    pub next_video: Instant,
    /// Frozen peers neither send nor receive (a crashed browser).
    pub frozen: bool,
    /// Loss probability on the server → peer link, in 1/1000.
    pub loss_down_permille: u32,
    pub dropped_down: u64,
    pub keyframes_sent: u64,
    /// Server offers this peer ignores (to provoke glare), counted down.
    pub ignore_offers: u32,
    /// A bottleneck on the server → peer link: bits per second (a token-bucket shaper like
    /// `tc tbf`: datagrams queue behind each other, and are dropped once the queue holds more
    /// than [`LINK_QUEUE`] of sending time).
    pub rate_down_bps: Option<u64>,
    /// When the bottleneck has sent everything queued so far.
    pub link_free_at: Instant,
    /// Datagrams dropped by the bottleneck's full queue.
    pub dropped_queue: u64,
}

/// How much sending time a bottleneck link queues before it drops (`tc tbf latency`).
pub const LINK_QUEUE: Duration = Duration::from_millis(200);

pub struct Sim {
    pub now: Instant,
    pub start: Instant,
    pub core: WorkerCore,
    pub server: SocketAddr,
    pub peers: Vec<SimPeer>,
    flight: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    pub latency: Duration,
    rng: u64,
    next_tag: u64,
    /// Every event the core emitted, in order.
    pub events: Vec<Event>,
    /// Responses not yet claimed by `command()`.
    responses: Vec<(u64, Response)>,
    pub stats_reports: usize,
    stuck: u64,
    steps: u64,
    pub closed_rooms: Vec<String>,
    /// Server offers waiting for a peer answer (participant, sdp).
    offers: Vec<(String, String)>,
    /// Resume keys from `joined`, by participant.
    pub resume_keys: std::collections::HashMap<String, String>,
    /// Peer addresses handed out so far.
    addrs_used: u32,
    /// Datagrams the core received / sent over ICE-TCP.
    pub tcp_in: u64,
    pub tcp_out: u64,
    /// When set, every datagram sent on the simulated network is recorded (fuzz seed capture).
    pub capture: Option<Vec<Vec<u8>>>,
    /// When set, everything the core outputs is logged (see [`Sim::log_line`]): the determinism
    /// test compares two runs with the same seed.
    pub log: Option<Vec<String>>,
}

/// The core's 256-bit seed derived from the simulation's seed.
fn core_seed(seed: u64) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(
            &(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_le_bytes(),
        );
    }
    out
}

impl Sim {
    pub fn new(seed: u64) -> Self {
        Self::with_config(seed, |_| {})
    }

    /// A simulation with send-side bandwidth estimation on (the default) or off.
    pub fn with_bwe(seed: u64, bwe: bool) -> Self {
        Self::with_config(seed, |c| {
            if !bwe {
                c.bwe_initial = None;
            }
        })
    }

    pub fn with_config(seed: u64, f: impl FnOnce(&mut CoreConfig)) -> Self {
        let now = Instant::now();
        let server: SocketAddr = SERVER.parse().expect("addr");
        let mut cfg = CoreConfig::new(0, server);
        // ICE-TCP on, on the same address (as the dataplane's default: same port number).
        cfg.tcp_addr = Some(server);
        f(&mut cfg);
        let crypto = dataplane::crypto::shared_crypto().expect("certificate");
        let clock = WallClock {
            instant: now,
            unix_ms: 1_700_000_000_000,
        };
        Self {
            now,
            start: now,
            core: WorkerCore::new(cfg, crypto, clock, core_seed(seed)),
            server,
            peers: Vec::new(),
            flight: BinaryHeap::new(),
            seq: 0,
            latency: Duration::from_millis(5),
            rng: seed.max(1),
            next_tag: 1,
            events: Vec::new(),
            responses: Vec::new(),
            stats_reports: 0,
            stuck: 0,
            steps: 0,
            closed_rooms: Vec::new(),
            offers: Vec::new(),
            resume_keys: std::collections::HashMap::new(),
            addrs_used: 0,
            tcp_in: 0,
            tcp_out: 0,
            capture: None,
            log: None,
        }
    }

    fn rand_permille(&mut self) -> u32 {
        // xorshift64: deterministic per seed.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % 1000) as u32
    }

    /// Add a peer with participant id `id`; returns its index.
    pub fn add_peer(&mut self, id: &str) -> usize {
        self.add_peer_on(id, false)
    }

    /// Add a peer that speaks ICE over TCP only (an active TCP candidate); returns its index.
    /// Its datagrams reach the core as [`Transport::Tcp`] on the core's passive candidate (the
    /// same address as its UDP one, as in the default configuration).
    pub fn add_tcp_peer(&mut self, id: &str) -> usize {
        self.add_peer_on(id, true)
    }

    fn add_peer_on(&mut self, id: &str, tcp: bool) -> usize {
        // Addresses are never reused, even after peers are removed from the list.
        self.addrs_used += 1;
        let n = self.addrs_used;
        let addr = SocketAddr::from(([10, 0, (n / 250) as u8 + 1, (n % 250) as u8 + 2], 5000));
        let peer = if tcp {
            Peer::new_tcp(id, addr, self.now, self.start)
        } else {
            Peer::new(id, addr, self.now, self.start)
        };
        self.peers.push(SimPeer {
            peer,
            id: id.into(),
            publish: None,
            next_audio: self.now,
            next_video: self.now,
            frozen: false,
            loss_down_permille: 0,
            dropped_down: 0,
            keyframes_sent: 0,
            ignore_offers: 0,
            rate_down_bps: None,
            link_free_at: self.now,
            dropped_queue: 0,
        });
        self.peers.len() - 1
    }

    pub fn peer(&self, id: &str) -> &SimPeer {
        self.peers.iter().find(|p| p.id == id).expect("peer exists")
    }

    pub fn peer_mut(&mut self, id: &str) -> &mut SimPeer {
        self.peers
            .iter_mut()
            .find(|p| p.id == id)
            .expect("peer exists")
    }

    /// Send a control request to the core and return its response.
    pub fn command(&mut self, request: Request) -> Response {
        let tag = self.next_tag;
        self.next_tag += 1;
        let joining = match &request {
            Request::Join { participant, .. } => Some(participant.clone()),
            _ => None,
        };
        let command = translate::command(tag, request).expect("a worker's request");
        self.core.handle_input(Input::Command(self.now, command));
        self.collect_core_output();
        let pos = self
            .responses
            .iter()
            .position(|(t, _)| *t == tag)
            .expect("the core answers every command synchronously");
        let resp = self.responses.remove(pos).1;
        if let (Some(id), Response::Joined { resume_key, .. }) = (joining, &resp) {
            self.resume_keys.insert(id, resume_key.clone());
        }
        resp
    }

    /// Join peer `id` to `room` publishing `publish` (None: receive only). Panics on failure.
    pub fn join(&mut self, id: &str, room: &str, publish: Option<Publish>) {
        let resp = self.try_join(id, room, publish);
        assert!(
            matches!(resp, Response::Joined { .. }),
            "join failed: {resp:?}"
        );
    }

    pub fn try_join(&mut self, id: &str, room: &str, publish: Option<Publish>) -> Response {
        self.try_join_as(id, room, publish, control::Grants::default())
    }

    /// [`Sim::try_join`] with explicit grants (what the participant's token allows).
    pub fn try_join_as(
        &mut self,
        id: &str,
        room: &str,
        publish: Option<Publish>,
        grants: control::Grants,
    ) -> Response {
        if !self.peers.iter().any(|p| p.id == id) {
            self.add_peer(id);
        }
        let (audio, video) = publish.map_or((false, false), |p| (p.audio, p.video));
        let sp = self.peer_mut(id);
        sp.publish = publish;
        if publish.is_some_and(|p| p.simulcast) && !sp.peer.simulcast() {
            sp.peer.enable_simulcast();
        }
        let offer = sp.peer.create_offer(audio, video);
        let resp = self.command(Request::Join {
            room: room.into(),
            participant: id.into(),
            name: format!("name-{id}"),
            offer: Some(offer),
            epoch: None,
            grants,
            identity: None,
            viewer: None,
        });
        self.after_join(id, resp)
    }

    /// Apply a join's answer at the peer, then relay what the core offered meanwhile.
    fn after_join(&mut self, id: &str, resp: Response) -> Response {
        if let Response::Joined {
            answer: Some(answer),
            ..
        } = &resp
        {
            let answer = answer.clone();
            self.peer_mut(id)
                .peer
                .handle_answer(&answer)
                .expect("answer applies");
            self.flush_peer(self.index(id));
        }
        self.relay_offers();
        resp
    }

    /// A valid offer from a throwaway peer (for requests that must fail).
    pub fn fresh_offer(&mut self) -> String {
        let addr = SocketAddr::from(([10, 0, 2, 1], 5000));
        Peer::new("throwaway", addr, self.now, self.start).create_offer(true, true)
    }

    pub fn leave(&mut self, id: &str) -> Response {
        let r = self.command(Request::Leave {
            participant: id.into(),
        });
        self.relay_offers();
        r
    }

    fn index(&self, id: &str) -> usize {
        self.peers
            .iter()
            .position(|p| p.id == id)
            .expect("peer exists")
    }

    fn collect_core_output(&mut self) {
        while let Some(o) = self.core.poll_output() {
            if self.log.is_some() {
                let line = self.log_line(&o);
                if let Some(log) = &mut self.log {
                    log.push(line);
                }
            }
            match o {
                Output::Transmit(t) => {
                    let from = self.server;
                    let tcp = t.transport == Transport::Tcp;
                    self.tcp_out += u64::from(tcp);
                    self.send_on(from, t.destination, tcp, t.contents);
                }
                // The tests speak the control protocol, through the dataplane's own translation.
                Output::Report(Report::Reply { tag, reply }) => {
                    self.responses.push((tag, translate::reply(reply)))
                }
                Output::Report(Report::Event(e)) => {
                    let e = translate::event(e);
                    if let Event::Offer { participant, sdp } = &e {
                        self.offers.push((participant.clone(), sdp.clone()));
                    }
                    self.events.push(e);
                }
                Output::Report(Report::Stats(_)) => self.stats_reports += 1,
                Output::Report(Report::RoomClosed { room }) => self.closed_rooms.push(room.into()),
                Output::Report(Report::ParticipantClosed { .. }) => {}
            }
        }
    }

    /// Play signaling: hand server offers to peers and their answers back to the core.
    fn relay_offers(&mut self) {
        while !self.offers.is_empty() {
            let (participant, sdp) = self.offers.remove(0);
            let Some(i) = self.peers.iter().position(|p| p.id == participant) else {
                continue;
            };
            if self.peers[i].frozen {
                continue;
            }
            if self.peers[i].ignore_offers > 0 {
                self.peers[i].ignore_offers -= 1;
                continue;
            }
            let answer = self.peers[i]
                .peer
                .handle_offer(&sdp)
                .expect("server offer applies");
            self.flush_peer(i);
            let resp = self.command(Request::Answer {
                participant,
                sdp: answer,
            });
            assert_eq!(resp, Response::Ok, "answer accepted");
        }
    }

    fn send(&mut self, from: SocketAddr, to: SocketAddr, data: Vec<u8>) {
        self.send_on(from, to, false, data);
    }

    fn send_on(&mut self, from: SocketAddr, to: SocketAddr, tcp: bool, data: Vec<u8>) {
        if let Some(c) = &mut self.capture {
            c.push(data.clone());
        }
        self.seq += 1;
        let mut at = self.now + self.latency;
        if let Some(p) = self.peers.iter_mut().find(|p| p.peer.local_addr() == to)
            && let Some(bps) = p.rate_down_bps
        {
            let start = p.link_free_at.max(self.now);
            if start.saturating_duration_since(self.now) > LINK_QUEUE {
                p.dropped_queue += 1;
                return;
            }
            // Payload plus IP/UDP headers on the wire.
            let bits = (data.len() as u64 + 28) * 8;
            p.link_free_at = start + Duration::from_nanos(bits * 1_000_000_000 / bps.max(1));
            at = p.link_free_at + self.latency;
        }
        self.flight.push(Reverse(InFlight {
            at,
            seq: self.seq,
            from,
            to,
            tcp,
            data,
        }));
    }

    fn flush_peer(&mut self, i: usize) {
        while let Some((to, data)) = self.peers[i].peer.poll_transmit() {
            if self.peers[i].frozen {
                continue;
            }
            let from = self.peers[i].peer.local_addr();
            let tcp = self.peers[i].peer.is_tcp();
            self.send_on(from, to, tcp, data);
        }
    }

    /// Handle the earliest pending thing. Returns the time it happened at.
    pub fn progress(&mut self) -> Instant {
        #[derive(Clone, Copy)]
        enum Next {
            Packet,
            Core,
            PeerTimeout(usize),
            Audio(usize),
            Video(usize),
        }
        let mut best: Option<(Instant, Next)> = None;
        let mut consider = |t: Instant, n: Next| {
            if best.is_none_or(|(b, _)| t < b) {
                best = Some((t, n));
            }
        };
        if let Some(Reverse(f)) = self.flight.peek() {
            consider(f.at, Next::Packet);
        }
        if let Some(t) = self.core.poll_timeout() {
            consider(t, Next::Core);
        }
        for (i, p) in self.peers.iter().enumerate() {
            if p.frozen {
                continue;
            }
            consider(p.peer.poll_timeout(), Next::PeerTimeout(i));
            if let Some(publ) = p.publish
                && p.peer.is_connected()
            {
                if publ.audio {
                    consider(p.next_audio, Next::Audio(i));
                }
                if publ.video {
                    consider(p.next_video, Next::Video(i));
                }
            }
        }
        let Some((t, next)) = best else {
            self.now += Duration::from_millis(10);
            return self.now;
        };
        // Never go back in time; a component asking for "now" again is handled at now + 1µs, so
        // a component that keeps asking for the same instant cannot stall the clock forever.
        if t <= self.now {
            self.stuck += 1;
            if self.stuck > 100_000 {
                let what = match next {
                    Next::Packet => "packet".to_string(),
                    Next::Core => "core".to_string(),
                    Next::PeerTimeout(i) => format!("peer timeout {}", self.peers[i].id),
                    Next::Audio(i) => format!("audio {}", self.peers[i].id),
                    Next::Video(i) => format!("video {}", self.peers[i].id),
                };
                panic!(
                    "simulation stuck at {:?}: {what} keeps asking for the past",
                    self.now - self.start
                );
            }
        } else {
            self.stuck = 0;
        }
        self.now = if t > self.now {
            t
        } else {
            self.now + Duration::from_micros(1)
        };
        let now = self.now;
        self.steps += 1;
        if std::env::var("SIM_TRACE").is_ok() && self.steps.is_multiple_of(20_000) {
            let what = match next {
                Next::Packet => "packet".to_string(),
                Next::Core => "core".to_string(),
                Next::PeerTimeout(i) => format!("peer timeout {}", self.peers[i].id),
                Next::Audio(i) => format!("audio {}", self.peers[i].id),
                Next::Video(i) => format!("video {}", self.peers[i].id),
            };
            eprintln!(
                "step {} at {:?}: {what} flight={}",
                self.steps,
                now - self.start,
                self.flight.len()
            );
        }
        match next {
            Next::Packet => {
                let Some(Reverse(f)) = self.flight.pop() else {
                    return now;
                };
                if f.to == self.server {
                    self.tcp_in += u64::from(f.tcp);
                    self.core.handle_input(Input::Receive {
                        now,
                        transport: if f.tcp {
                            Transport::Tcp
                        } else {
                            Transport::Udp
                        },
                        source: f.from,
                        destination: self.server,
                        data: &f.data,
                    });
                } else if let Some(i) = self.peers.iter().position(|p| p.peer.local_addr() == f.to)
                {
                    if self.peers[i].frozen {
                        return now;
                    }
                    // TCP is reliable: loss on the link shows up as delay, never as a gap.
                    if self.peers[i].loss_down_permille > 0 && !f.tcp {
                        let r = self.rand_permille();
                        if r < self.peers[i].loss_down_permille {
                            self.peers[i].dropped_down += 1;
                            return now;
                        }
                    }
                    self.peers[i].peer.handle_receive(now, f.from, &f.data);
                    self.flush_peer(i);
                }
            }
            Next::Core => self.core.handle_input(Input::Timeout(now)),
            Next::PeerTimeout(i) => {
                self.peers[i].peer.handle_timeout(now);
                self.flush_peer(i);
            }
            Next::Audio(i) => {
                self.peers[i].next_audio = now + Duration::from_millis(20);
                self.peers[i].peer.send_audio(now, 120);
                self.flush_peer(i);
            }
            Next::Video(i) => {
                let publ = self.peers[i].publish.unwrap_or_default();
                self.peers[i].next_video =
                    now + Duration::from_micros(1_000_000 / publ.fps.max(1) as u64);
                if self.peers[i].peer.send_video_frame(
                    now,
                    false,
                    publ.packets_per_frame,
                    publ.packet_size,
                    publ.fps,
                ) {
                    self.peers[i].keyframes_sent += 1;
                }
                self.flush_peer(i);
            }
        }
        self.collect_core_output();
        self.relay_offers();
        now
    }

    /// Run for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        for _ in 0..MAX_STEPS {
            if self.progress() >= end {
                return;
            }
        }
        panic!("simulation did not reach {d:?} within {MAX_STEPS} steps (livelock?)");
    }

    /// Run until `cond` holds or `max` of virtual time passed. Returns whether it held.
    pub fn run_until(&mut self, max: Duration, mut cond: impl FnMut(&Sim) -> bool) -> bool {
        let end = self.now + max;
        for _ in 0..MAX_STEPS {
            if cond(self) {
                return true;
            }
            if self.progress() >= end {
                return cond(self);
            }
        }
        panic!("simulation did not finish within {MAX_STEPS} steps (livelock?)");
    }

    /// Inject a raw datagram into the core from `from`.
    pub fn inject(&mut self, from: SocketAddr, data: &[u8]) {
        self.inject_on(Transport::Udp, from, data);
    }

    /// Inject a raw datagram into the core from `from` over `transport`.
    pub fn inject_on(&mut self, transport: Transport, from: SocketAddr, data: &[u8]) {
        self.core.handle_input(Input::Receive {
            now: self.now,
            transport,
            source: from,
            destination: self.server,
            data,
        });
        self.collect_core_output();
    }
}
