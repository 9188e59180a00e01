//! The dataplane link: the control connection to the local dataplane over its Unix socket
//! (connect with backoff, peer check, handshake, framed reads and writes, loss) and, in cluster
//! mode, what comes back over Redis (placements, replies, beacons). Messages from either path
//! are handed to routing (responses, events) and liveness (welcome, beacons, incarnations).

use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use control::{
    Framed, FromDataplane, PROTOCOL_VERSION, ReadStatus, Request, Response, ToDataplane,
};
use mio::Interest;
use mio::net::UnixStream;
use registry::RegistryError;
use tracing::{debug, info, warn};

use super::{CONTROL, Server};
use crate::cluster::ClusterEvent;
use crate::router::{Answered, ConnId};

/// The control connection to the local dataplane.
pub(super) struct ControlLink {
    pub(super) path: PathBuf,
    pub(super) stream: Option<UnixStream>,
    pub(super) framed: Framed,
    pub(super) ready: bool,
    pub(super) retry_at: Instant,
    pub(super) backoff: Duration,
    pub(super) writable: bool,
    /// Since when the connection has been down (for node-failure detection without Redis).
    pub(super) down_since: Option<Instant>,
    /// Since when connects are refused (nothing listens on the socket) after we had a node.
    pub(super) refused_since: Option<Instant>,
}

impl ControlLink {
    pub(super) fn new(path: PathBuf) -> Self {
        Self {
            path,
            stream: None,
            framed: Framed::new(control::DEFAULT_MAX_FRAME),
            ready: false,
            retry_at: Instant::now(),
            backoff: Duration::from_millis(100),
            writable: false,
            down_since: Some(Instant::now()),
            refused_since: None,
        }
    }
}

impl Server {
    pub(super) fn connect_control(&mut self, now: Instant) {
        let result = UnixStream::connect(&self.control.path).and_then(|s| {
            control::local::check_peer(&s, &self.settings.control_peer_uids)?;
            Ok(s)
        });
        match result {
            Ok(mut stream) => {
                self.control.refused_since = None;
                if let Err(e) = self.poll.registry().register(
                    &mut stream,
                    CONTROL,
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    warn!(error = %e, "register control stream");
                    self.control.retry_at = now + self.control.backoff;
                    self.control.backoff = (self.control.backoff * 2).min(Duration::from_secs(2));
                    return;
                }
                self.control.writable = true;
                self.control.framed = Framed::new(control::DEFAULT_MAX_FRAME);
                let hello = ToDataplane::Hello {
                    version: PROTOCOL_VERSION,
                    client: format!("{}@{}", self.settings.signaling_id, self.settings.listen),
                    signaling_id: Some(self.settings.signaling_id.clone()),
                };
                let _ = self.control.framed.queue(&hello);
                self.control.stream = Some(stream);
                debug!(path = %self.control.path.display(), "control socket connected; handshaking");
            }
            Err(e) => {
                if self.local_node.is_some()
                    && matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
                    )
                {
                    self.control.refused_since.get_or_insert(now);
                }
                if e.kind() == io::ErrorKind::PermissionDenied {
                    // Someone else's socket at our path: never talk to it; keep checking.
                    warn!(path = %self.control.path.display(), error = %e, "refusing the control socket");
                }
                self.control.retry_at = now + self.control.backoff;
                if self.control.backoff >= Duration::from_secs(2) {
                    debug!(error = %e, "dataplane control socket not reachable");
                }
                self.control.backoff = (self.control.backoff * 2).min(Duration::from_secs(2));
            }
        }
    }

    pub(super) fn control_ready(&mut self, readable: bool) {
        let Some(stream) = self.control.stream.as_mut() else {
            return;
        };
        if readable {
            let status = self.control.framed.read_from(stream);
            loop {
                match self.control.framed.next_message::<FromDataplane>() {
                    Ok(Some(msg)) => self.handle_dataplane_message(msg, true),
                    Ok(None) => break,
                    Err(e) => {
                        warn!(error = %e, "bad frame from dataplane");
                        self.control_lost();
                        return;
                    }
                }
            }
            if !matches!(status, Ok(ReadStatus::Open)) {
                self.control_lost();
                return;
            }
        }
        self.flush_control();
    }

    pub(super) fn flush_control(&mut self) {
        let Some(stream) = self.control.stream.as_mut() else {
            return;
        };
        match self.control.framed.flush_to(stream) {
            Ok(done) => {
                if done == self.control.writable {
                    let interest = if done {
                        Interest::READABLE
                    } else {
                        Interest::READABLE | Interest::WRITABLE
                    };
                    let _ = self.poll.registry().reregister(stream, CONTROL, interest);
                    self.control.writable = !done;
                }
            }
            Err(_) => self.control_lost(),
        }
    }

    fn control_lost(&mut self) {
        if let Some(mut s) = self.control.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        if self.control.ready {
            warn!("lost the dataplane control connection; sessions keep their media, reconnecting");
            self.control.down_since = Some(Instant::now());
        }
        self.control.ready = false;
        self.control.retry_at = Instant::now() + Duration::from_millis(100);
        self.control.backoff = Duration::from_millis(200);
        // Requests written to the lost socket will never be answered: fail them now (in cluster
        // mode too) rather than after the request timeout. Sessions retry or re-attach.
        for p in self.pending.take_where(|p| p.local) {
            self.fail_request(p, "the media server connection was lost; retry");
        }
    }

    /// A message from a dataplane: over the socket (`local`) or Redis.
    fn handle_dataplane_message(&mut self, msg: FromDataplane, local: bool) {
        match msg {
            FromDataplane::Welcome {
                node_id,
                workers,
                incarnation,
                ..
            } if local => {
                info!(%node_id, workers, "connected to the local dataplane");
                // A restarted dataplane (same id) lost every session: close those rooms before
                // trying to re-attach anything.
                self.node_incarnation(&node_id, &incarnation);
                self.control.ready = true;
                self.control.down_since = None;
                self.control.refused_since = None;
                self.live.announced_down = false;
                self.control.backoff = Duration::from_millis(100);
                self.live.failed.remove(&node_id);
                self.live.witnessed_down.remove(&node_id);
                self.local_node = Some(node_id.clone());
                // Re-attach the sessions on this node that were attached over the socket (the
                // dataplane orphaned them when it closed). Sessions attached over Redis stay
                // there: moving them would let events on the two paths overtake each other.
                let ids: Vec<ConnId> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.via_socket == Some(true))
                    .map(|(i, _)| i)
                    .collect();
                for id in ids {
                    let actions = match self.conns.get_mut(id).and_then(|c| c.state.session_mut()) {
                        Some(session) => session.handle_control_restored(&node_id),
                        None => continue,
                    };
                    self.apply(id, actions);
                }
            }
            FromDataplane::Welcome { .. } => {}
            // Health reports feed nothing here (signaling judges node liveness by beacons and
            // the registry); they keep the link's read side busy and prove it alive.
            FromDataplane::Health { .. } => {}
            FromDataplane::Response { id, response } => {
                let Some(p) = self.pending.take(id) else {
                    // A join that timed out here succeeded after all: nobody will use it.
                    if let Response::Joined { .. } = response
                        && let Some((node, participant)) = self.pending.take_late_join(id)
                    {
                        info!(%node, %participant, "late answer to a join that timed out: leaving");
                        self.send_request(None, node, Request::Leave { participant });
                    }
                    return;
                };
                self.deliver_response(p, response);
            }
            FromDataplane::Event { event } => {
                let Some(conn) = self.routes.owner(event.participant()) else {
                    return;
                };
                let actions = match self.conns.get_mut(conn).and_then(|c| c.state.session_mut()) {
                    Some(session) => session.handle_event(event),
                    None => return,
                };
                self.apply(conn, actions);
            }
        }
    }

    pub(super) fn handle_cluster(&mut self) {
        let Some(c) = &self.cluster else {
            return;
        };
        let events: Vec<ClusterEvent> = c.rx.try_iter().collect();
        for e in events {
            match e {
                ClusterEvent::Placed { ticket, result } => {
                    let recovering = result == Err(RegistryError::Recovering);
                    match self.placements.answer(ticket, recovering, Instant::now()) {
                        Answered::Deliver(conn) => self.deliver_placement(conn, result),
                        Answered::Deferred { room } => {
                            // Redis lost data moments ago; nodes are re-asserting their rooms.
                            debug!(%room, "registry recovering: placement retried shortly");
                        }
                        Answered::Unknown => {}
                    }
                }
                ClusterEvent::Reply(msg) => self.handle_dataplane_message(msg, false),
                ClusterEvent::Beacon(b) => self.handle_beacon(b),
                ClusterEvent::Alive { node, alive } => {
                    self.live
                        .registry_says
                        .insert(node, (Instant::now(), alive));
                }
                ClusterEvent::Subscribed(up) => {
                    self.live.subscribed_since = up.then(Instant::now);
                }
                ClusterEvent::RpcFailed { msg, .. } => {
                    self.metrics.redis_errors.inc();
                    if let ToDataplane::Request { id, .. } = msg
                        && let Some(p) = self.pending.take(id)
                    {
                        self.fail_request(p, "the media node could not be reached; retry later");
                    }
                }
            }
        }
    }
}
