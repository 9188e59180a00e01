//! Routing between sessions and nodes, the I/O half of [`crate::router`]: placement lookups
//! (the registry in cluster mode, the local node otherwise), requests sent over the path the
//! router picks, responses delivered to their session (joins nobody took undone), a session's
//! actions performed, and the routing table and per-token counts settled after each change.

use std::time::Instant;

use control::{CodecError, Request, Response, ToDataplane};
use registry::{Placement, RegistryError};
use tracing::info;

use super::{ConnState, Server};
use crate::cluster::Job;
use crate::metrics::ResultLabel;
use crate::router::{Answer, ConnId, Links, Path, PendingRequest, PlaceJob, Start};
use crate::session::Action;

impl Server {
    pub(super) fn deliver_placement(
        &mut self,
        conn: ConnId,
        result: Result<Placement, RegistryError>,
    ) {
        if let Err(e) = &result {
            self.metrics
                .joins
                .get_or_create(&ResultLabel { result: "error" })
                .inc();
            if matches!(
                e,
                RegistryError::Unavailable(_) | RegistryError::Protocol(_)
            ) && self.cluster.is_some()
            {
                self.metrics.redis_errors.inc();
            }
        }
        let actions = match self.conns.get_mut(conn).and_then(|c| c.state.session_mut()) {
            Some(session) => session.handle_placement(result),
            None => return,
        };
        self.apply(conn, actions);
    }

    /// Retry the placements deferred while the registry recovers, when due.
    pub(super) fn retry_deferred(&mut self, now: Instant) {
        for job in self.placements.due(now) {
            if self.conns.contains(job.conn) {
                self.send_place(job);
            }
        }
    }

    fn send_place(&mut self, job: PlaceJob) {
        let Some(c) = &self.cluster else {
            return;
        };
        let ticket = self.pending.next_id();
        c.send(Job::Place {
            ticket,
            room: job.room.clone(),
            exclude: job.exclude.clone(),
        });
        self.placements.insert(ticket, job);
    }

    fn place(&mut self, conn: ConnId, room: String, exclude: Vec<String>) {
        match &self.cluster {
            Some(_) => {
                let job = PlaceJob::new(conn, room, exclude, Instant::now());
                self.send_place(job);
            }
            None => {
                // Single node: the local dataplane owns every room.
                let result = match &self.local_node {
                    Some(node) if self.control.ready && !exclude.contains(node) => Ok(Placement {
                        node: node.clone(),
                        epoch: 0,
                    }),
                    _ => Err(RegistryError::Unavailable(
                        "the media server is not reachable".into(),
                    )),
                };
                self.deliver_placement(conn, result);
            }
        }
    }

    pub(super) fn deliver_response(&mut self, p: PendingRequest, response: Response) {
        let answer = Answer::of(&p.request, &response);
        let Some(conn) = p.conn.filter(|c| self.conns.contains(*c)) else {
            // The client went away while its join was in flight: undo it.
            if let Some(participant) = answer.joined {
                self.send_request(None, p.node.clone(), Request::Leave { participant });
            }
            return;
        };
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        let counter = match answer.start {
            Some(Start::Join) => Some(&self.metrics.joins),
            Some(Start::Resume) => Some(&self.metrics.resumes),
            None => None,
        };
        if let Some(counter) = counter {
            let result = if answer.ok { "ok" } else { "error" };
            counter.get_or_create(&ResultLabel { result }).inc();
            if let (true, Some(t)) = (answer.ok, c.join_started.take()) {
                self.metrics.join_seconds.observe(t.elapsed().as_secs_f64());
            }
        }
        if let Some(via_socket) = answer.confirmed_path(p.local) {
            // The dataplane now routes this session's events over the path this request took.
            c.via_socket = Some(via_socket);
        }
        let Some(session) = c.state.session_mut() else {
            return;
        };
        let actions = session.handle_response(&p.request, response, &self.ctx);
        // A join the session did not take (it was closed or moved on meanwhile) is undone: the
        // node would otherwise keep the participant as ours, never orphaned, never removed.
        if let Some(participant) = answer.joined.filter(|id| !session.holds(id)) {
            self.send_request(None, p.node.clone(), Request::Leave { participant });
        }
        self.apply(conn, actions);
        if let Some(incarnation) = answer.incarnation {
            self.confirmed_incarnation(conn, &p.node, &incarnation);
        }
    }

    pub(super) fn fail_request(&mut self, p: PendingRequest, why: &str) {
        let resp = Response::error(control::ErrorCode::Unavailable, why);
        self.deliver_response(p, resp);
    }

    /// Send `request` to `node`: over the socket if it is the local node and the socket is up,
    /// else over Redis, else fail it with `unavailable`.
    pub(super) fn send_request(&mut self, conn: Option<ConnId>, node: String, request: Request) {
        let id = self.pending.next_id();
        // A session attached over Redis keeps using Redis (see `Conn::via_socket`); a new join
        // or resume takes the socket when it can.
        let via_socket = conn
            .and_then(|c| self.conns.get(c))
            .and_then(|c| c.via_socket);
        let links = Links {
            local_node: self.local_node.as_deref(),
            socket_ready: self.control.ready,
            cluster: self.cluster.is_some(),
        };
        let path = links.path(&node, &request, via_socket);
        let p = PendingRequest {
            conn,
            node: node.clone(),
            request,
            sent: Instant::now(),
            local: path == Path::Socket,
        };
        let msg = ToDataplane::Request {
            id,
            request: p.request.clone(),
        };
        match (path, &self.cluster) {
            (Path::Socket, _) => match self.control.framed.queue(&msg) {
                Ok(()) => {}
                Err(CodecError::MessageTooLarge { len, max }) => {
                    // One oversized request fails alone; the shared link stays up.
                    let resp = Response::error(
                        control::ErrorCode::BadRequest,
                        format!("message of {len} bytes exceeds the control limit of {max}"),
                    );
                    self.deliver_response(p, resp);
                    return;
                }
                Err(_) => {
                    self.fail_request(p, "the media server is not keeping up; retry later");
                    return;
                }
            },
            (Path::Redis, Some(c)) => c.send(Job::Rpc { node, msg }),
            (Path::Redis | Path::Unreachable, _) => {
                self.fail_request(p, "the media server is not reachable; retry later");
                return;
            }
        }
        self.pending.insert(id, p);
    }

    /// Perform a session's actions. If the client cannot be written to (it is disconnected),
    /// what concerns only the nodes (leaving a participant) still happens.
    pub(super) fn apply(&mut self, id: ConnId, actions: Vec<Action>) {
        self.settle(id);
        if matches!(
            self.conns.get(id).map(|c| &c.state),
            Some(ConnState::Headless(_))
        ) {
            return self.apply_headless(id, actions);
        }
        let mut gone = false;
        for action in actions {
            if gone {
                match action {
                    Action::Request { node, request } | Action::Forget { node, request } => {
                        self.send_request(None, node, request);
                    }
                    Action::Send(_) | Action::Place { .. } | Action::Close => {}
                }
                continue;
            }
            match action {
                Action::Send(msg) => gone = !self.send_ws(id, &msg.to_json()),
                Action::Request { node, request } => self.send_request(Some(id), node, request),
                Action::Forget { node, request } => self.send_request(None, node, request),
                Action::Place { room, exclude } => self.place(id, room, exclude),
                Action::Close => self.close_ws(id, None),
            }
        }
        self.flush_ws(id);
    }

    /// [`Server::apply`] for a WHIP/WHEP session: its messages are consumed by `whip.rs`, and it
    /// is removed once over.
    fn apply_headless(&mut self, id: ConnId, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send(msg) => self.headless_msg(id, msg),
                Action::Request { node, request } => self.send_request(Some(id), node, request),
                Action::Forget { node, request } => self.send_request(None, node, request),
                Action::Place { room, exclude } => self.place(id, room, exclude),
                Action::Close => {}
            }
        }
        self.end_headless_if_idle(id);
    }

    /// Bring the routing table and the per-identity counts in line with the session's state
    /// after it changed. A session is routed only once joined (a dataplane confirmation); a
    /// confirmed resume on this connection replaces the connection that held it before.
    pub(super) fn settle(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let Some(session) = conn.state.session() else {
            return;
        };
        let joined = session.joined_participant().map(str::to_string);
        let identity = session
            .is_active()
            .then(|| session.identity().map(str::to_string))
            .flatten();
        if !session.is_active() && conn.idle_since.is_none() {
            conn.idle_since = Some(Instant::now());
        } else if session.is_active() {
            conn.idle_since = None;
        }
        self.sessions_per_token
            .recount(&mut conn.identity, identity);
        let displaced = match joined {
            Some(p) => self.routes.confirm(id, &p),
            None => {
                self.routes.release(id);
                None
            }
        };
        if let Some(old) = displaced {
            info!(
                conn = old,
                "session resumed on another connection: closing the old one"
            );
            let actions = match self.conns.get_mut(old).and_then(|c| c.state.session_mut()) {
                Some(session) => session.handle_replaced(),
                None => vec![],
            };
            self.apply(old, actions);
        }
    }
}
