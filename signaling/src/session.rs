//! The per-connection session state machine. Pure: it consumes client messages, placement
//! results, control responses and events, and returns [`Action`]s; the server performs them.
//!
//! States: `Idle` → `Placing` (which node owns the room?) → `Joining` (control `join` sent to that
//! node) → `Joined` → `Leaving` → `Closed`; or `Idle` → `Resuming` (control `attach` sent to the
//! node named in the resume token) → `Joined`. A failed join returns to `Idle` so the client can
//! retry on the same connection; a failed node (`room_closed`) does too.
//!
//! Every transition matches `(state, input)` before it replaces the state: an input the current
//! state does not expect (a late response to an earlier session of this connection, an event for
//! another participant) changes nothing. A `Joined` session whose control link came back
//! re-attaches and **stays joined**; what it missed meanwhile (participants who came or went) is
//! sent to the client from the `attached` answer.

use registry::{Placement, RegistryError};
use control::{Event, Grants, LeaveReason, Request, Response};

use crate::auth::{Auth, ResumeToken, TurnConfig};
use crate::protocol::{self, ClientMsg, ErrorCode, IceServer, PeerInfo, ServerMsg};

#[cfg(test)]
mod tests;

/// What the server must do for a session.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send a message to the client.
    Send(ServerMsg),
    /// Find the node that owns `room` (answered by [`Session::handle_placement`]).
    Place { room: String, exclude: Vec<String> },
    /// Send a request to the dataplane on `node`; its response comes back through
    /// [`Session::handle_response`] with the same request.
    Request { node: String, request: Request },
    /// Send a request whose answer nobody waits for (clean-up on a node this session left).
    Forget { node: String, request: Request },
    /// Close the WebSocket (normal closure).
    Close,
}

/// A join on its way to a node.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Intent {
    room: String,
    id: String,
    name: String,
    grants: Grants,
    /// The token's identity (`sub`), when auth is on.
    identity: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Idle,
    Placing {
        join: Intent,
        /// Set when this placement retries a join a node refused as `unavailable`: if no other
        /// node can take it, the client gets that first answer (it says why).
        first_error: Option<(ErrorCode, String)>,
    },
    Joining {
        node: String,
        join: Intent,
        first_error: Option<(ErrorCode, String)>,
        leave_after: bool,
    },
    Resuming {
        token: ResumeToken,
    },
    Joined {
        node: String,
        room: String,
        id: String,
        name: String,
        resume: ResumeToken,
        identity: Option<String>,
        /// The other participants as this client knows them (for a re-attach's diff).
        peers: Vec<PeerInfo>,
        /// The last server offer relayed to this client: a re-attach over another path (e.g.
        /// Redis, then the local socket) makes the dataplane re-send an outstanding offer the
        /// client already has; it is not relayed twice.
        last_offer: Option<String>,
        /// The incarnation of the dataplane process that confirmed the session (empty: unknown).
        incarnation: String,
    },
    Leaving {
        node: String,
        id: String,
    },
    Closed,
}

/// What the session needs from its server for joins.
#[derive(Debug, Clone, Default)]
pub struct JoinContext {
    pub ice_servers: Vec<IceServer>,
    pub turn: Option<TurnConfig>,
    pub auth: Option<Auth>,
    /// Unix time (seconds) for TURN credential expiry.
    pub now_unix: u64,
}

impl JoinContext {
    fn ice_servers(&self, identity: &str) -> Vec<IceServer> {
        let mut v = self.ice_servers.clone();
        if let Some(t) = &self.turn {
            v.push(t.credentials(identity, self.now_unix));
        }
        v
    }
}

/// One client connection. See the module docs.
#[derive(Debug)]
pub struct Session {
    state: State,
    /// A joined session of this connection ended without the client asking (`room_closed`):
    /// offers and answers it still had in flight are dropped silently until the next join is
    /// confirmed, instead of being refused with errors the client would take for its new join's.
    after_room_closed: bool,
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

impl Session {
    pub fn new() -> Self {
        Self {
            state: State::Idle,
            after_room_closed: false,
        }
    }

    /// The participant id once a join or resume is under way.
    pub fn participant(&self) -> Option<&str> {
        match &self.state {
            State::Placing { join, .. } | State::Joining { join, .. } => Some(&join.id),
            State::Joined { id, .. } | State::Leaving { id, .. } => Some(id),
            State::Resuming { token } => Some(&token.participant),
            State::Idle | State::Closed => None,
        }
    }

    /// The participant this session owns, once the dataplane confirmed it (joined or resumed).
    pub fn joined_participant(&self) -> Option<&str> {
        match &self.state {
            State::Joined { id, .. } => Some(id),
            _ => None,
        }
    }

    /// The incarnation of the dataplane process holding this joined session, if known.
    pub fn incarnation(&self) -> Option<&str> {
        match &self.state {
            State::Joined { incarnation, .. } if !incarnation.is_empty() => Some(incarnation),
            _ => None,
        }
    }

    /// The node the session's requests go to.
    pub fn node(&self) -> Option<&str> {
        match &self.state {
            State::Joining { node, .. }
            | State::Joined { node, .. }
            | State::Leaving { node, .. } => Some(node),
            State::Resuming { token } => Some(&token.node),
            State::Idle | State::Placing { .. } | State::Closed => None,
        }
    }

    /// The session holds `participant` (joined as it, or leaving it).
    pub fn holds(&self, participant: &str) -> bool {
        matches!(&self.state, State::Joined { id, .. } | State::Leaving { id, .. } if id == participant)
    }

    /// A resume is in flight (its node comes from the client's token, not from the cluster).
    pub fn is_resuming(&self) -> bool {
        matches!(self.state, State::Resuming { .. })
    }

    pub fn is_joined(&self) -> bool {
        matches!(self.state, State::Joined { .. })
    }

    /// A join or resume is in progress or done (the session counts against per-token limits).
    pub fn is_active(&self) -> bool {
        !matches!(self.state, State::Idle | State::Closed)
    }

    /// The token identity of a session that joined (or is joining) with one.
    pub fn identity(&self) -> Option<&str> {
        match &self.state {
            State::Placing { join, .. } | State::Joining { join, .. } => join.identity.as_deref(),
            State::Joined { identity, .. } => identity.as_deref(),
            _ => None,
        }
    }

    /// A text frame from the client. `new_id` makes a participant id (only called for a join).
    pub fn handle_text(
        &mut self,
        text: &str,
        ctx: &JoinContext,
        new_id: impl FnOnce() -> String,
    ) -> Vec<Action> {
        let msg = match protocol::parse(text) {
            Ok(m) => m,
            Err(e) => return vec![bad(e)],
        };
        match (msg, &mut self.state) {
            (ClientMsg::Candidate { .. }, _) => vec![],
            (
                ClientMsg::Join {
                    resume: Some(token),
                    ..
                },
                State::Idle,
            ) => {
                let Some(token) = ResumeToken::decode(&token) else {
                    return vec![Action::Send(ServerMsg::error(
                        ErrorCode::ResumeFailed,
                        "invalid resume token",
                    ))];
                };
                let action = Action::Request {
                    node: token.node.clone(),
                    request: Request::Attach {
                        participant: token.participant.clone(),
                        resume_key: token.key.clone(),
                    },
                };
                self.state = State::Resuming { token };
                vec![action]
            }
            (
                ClientMsg::Join {
                    room, name, token, ..
                },
                State::Idle,
            ) => match Self::intent(room, name, token, ctx, new_id) {
                Ok(join) => {
                    let room = join.room.clone();
                    self.state = State::Placing {
                        join,
                        first_error: None,
                    };
                    vec![Action::Place {
                        room,
                        exclude: vec![],
                    }]
                }
                Err(action) => vec![*action],
            },
            (ClientMsg::Join { .. }, _) => vec![bad("already joined")],
            (ClientMsg::Offer { sdp }, State::Joined { id, node, .. }) => vec![Action::Request {
                node: node.clone(),
                request: Request::Offer {
                    participant: id.clone(),
                    sdp,
                },
            }],
            (ClientMsg::Answer { sdp }, State::Joined { id, node, .. }) => {
                vec![Action::Request {
                    node: node.clone(),
                    request: Request::Answer {
                        participant: id.clone(),
                        sdp,
                    },
                }]
            }
            (ClientMsg::Offer { .. } | ClientMsg::Answer { .. }, _) if self.after_room_closed => {
                vec![]
            }
            (ClientMsg::Offer { .. } | ClientMsg::Answer { .. }, _) => {
                vec![bad("join the room first")]
            }
            (ClientMsg::Leave {}, State::Joined { id, node, .. }) => {
                let (id, node) = (id.clone(), node.clone());
                self.state = State::Leaving {
                    node: node.clone(),
                    id: id.clone(),
                };
                vec![Action::Request {
                    node,
                    request: Request::Leave { participant: id },
                }]
            }
            (ClientMsg::Leave {}, State::Joining { leave_after, .. }) => {
                *leave_after = true;
                vec![]
            }
            (ClientMsg::Leave {}, State::Leaving { .. }) => vec![],
            (ClientMsg::Leave {}, _) => {
                self.state = State::Closed;
                vec![Action::Close]
            }
        }
    }

    /// Validate a fresh join: room, token, name.
    fn intent(
        room: Option<String>,
        name: Option<String>,
        token: Option<String>,
        ctx: &JoinContext,
        new_id: impl FnOnce() -> String,
    ) -> Result<Intent, Box<Action>> {
        let room = room.unwrap_or_default();
        protocol::validate_room(&room).map_err(|e| Box::new(bad(e)))?;
        let mut grants = Grants::default();
        let mut name = name.unwrap_or_default();
        let mut identity = None;
        if let Some(auth) = &ctx.auth {
            let Some(token) = token else {
                return Err(Box::new(Action::Send(ServerMsg::error(
                    ErrorCode::Unauthorized,
                    "this server requires a token",
                ))));
            };
            let claims = auth.verify(&token, &room).map_err(|e| {
                Box::new(Action::Send(ServerMsg::error(ErrorCode::Unauthorized, e)))
            })?;
            if let Some(n) = claims.name {
                name = n;
            }
            grants = Grants {
                publish: claims.grants.publish,
                subscribe: claims.grants.subscribe,
            };
            identity = Some(claims.sub);
        }
        let name = protocol::validate_name(&name).map_err(|e| Box::new(bad(e)))?;
        Ok(Intent {
            room,
            id: new_id(),
            name,
            grants,
            identity,
        })
    }

    /// The server refused a join or resume before it reached a node (rate or session limits).
    pub fn refuse_join(&mut self, code: ErrorCode, message: impl Into<String>) -> Vec<Action> {
        match self.state {
            State::Placing { .. } | State::Resuming { .. } => {
                self.state = State::Idle;
                vec![Action::Send(ServerMsg::error(code, message))]
            }
            _ => vec![],
        }
    }

    /// The placement of the room this session is joining.
    pub fn handle_placement(&mut self, result: Result<Placement, RegistryError>) -> Vec<Action> {
        let State::Placing { join, first_error } = &self.state else {
            return vec![];
        };
        match result {
            Ok(p) => {
                let request = Request::Join {
                    room: join.room.clone(),
                    participant: join.id.clone(),
                    name: join.name.clone(),
                    offer: None,
                    epoch: Some(p.epoch),
                    grants: join.grants,
                    identity: join.identity.clone(),
                };
                self.state = State::Joining {
                    node: p.node.clone(),
                    join: join.clone(),
                    first_error: first_error.clone(),
                    leave_after: false,
                };
                vec![Action::Request {
                    node: p.node,
                    request,
                }]
            }
            Err(e) => {
                let (code, message) = match (first_error.clone(), e) {
                    (Some(first), _) => first,
                    (None, RegistryError::NoNodes) => (
                        ErrorCode::Unavailable,
                        "no media server is available; retry later".into(),
                    ),
                    (None, e) => (ErrorCode::Unavailable, format!("room lookup failed: {e}")),
                };
                self.state = State::Idle;
                vec![Action::Send(ServerMsg::error(code, message))]
            }
        }
    }

    /// The dataplane's response to a request this session made. A response that does not belong
    /// to the session's current state (e.g. to an offer of a session that was closed since) is
    /// dropped.
    pub fn handle_response(
        &mut self,
        request: &Request,
        response: Response,
        ctx: &JoinContext,
    ) -> Vec<Action> {
        match (&mut self.state, request, response) {
            (
                State::Joining {
                    node,
                    join,
                    leave_after,
                    ..
                },
                Request::Join { participant, .. },
                Response::Joined {
                    participants,
                    resume_key,
                    incarnation,
                    ..
                },
            ) if *participant == join.id => {
                let (node, join) = (node.clone(), join.clone());
                if *leave_after {
                    self.state = State::Leaving {
                        node: node.clone(),
                        id: join.id.clone(),
                    };
                    return vec![Action::Request {
                        node,
                        request: Request::Leave {
                            participant: join.id,
                        },
                    }];
                }
                let resume = ResumeToken {
                    node: node.clone(),
                    participant: join.id.clone(),
                    key: resume_key,
                };
                let msg = ServerMsg::Joined {
                    room: join.room.clone(),
                    participant: PeerInfo {
                        id: join.id.clone(),
                        name: join.name.clone(),
                    },
                    participants: participants.clone(),
                    ice_servers: ctx.ice_servers(&join.id),
                    resume: resume.encode(),
                    resumed: false,
                };
                self.state = State::Joined {
                    node,
                    room: join.room,
                    id: join.id,
                    name: join.name,
                    resume,
                    identity: join.identity,
                    peers: participants,
                    last_offer: None,
                    incarnation,
                };
                self.after_room_closed = false;
                vec![Action::Send(msg)]
            }
            (
                State::Joining {
                    node,
                    join,
                    first_error,
                    leave_after,
                },
                Request::Join { participant, .. },
                Response::Error { code, message },
            ) if *participant == join.id => {
                if *leave_after {
                    self.state = State::Closed;
                    return vec![
                        Action::Send(ServerMsg::error(code.into(), message)),
                        Action::Close,
                    ];
                }
                if code == control::ErrorCode::Unavailable && first_error.is_none() {
                    // The placement was stale or the node is going away: look the room up again
                    // without that node, once.
                    let exclude = vec![node.clone()];
                    let room = join.room.clone();
                    self.state = State::Placing {
                        join: join.clone(),
                        first_error: Some((code.into(), message)),
                    };
                    return vec![Action::Place { room, exclude }];
                }
                self.state = State::Idle;
                vec![Action::Send(ServerMsg::error(code.into(), message))]
            }
            (
                State::Resuming { token },
                Request::Attach { participant, .. },
                Response::Attached {
                    room,
                    name,
                    participants,
                    incarnation,
                    identity,
                },
            ) if *participant == token.participant => {
                let token = token.clone();
                let msg = ServerMsg::Joined {
                    room: room.clone(),
                    participant: PeerInfo {
                        id: token.participant.clone(),
                        name: name.clone(),
                    },
                    participants: participants.clone(),
                    ice_servers: ctx.ice_servers(&token.participant),
                    resume: token.encode(),
                    resumed: true,
                };
                self.state = State::Joined {
                    node: token.node.clone(),
                    room,
                    id: token.participant.clone(),
                    name,
                    resume: token,
                    identity,
                    peers: participants,
                    last_offer: None,
                    incarnation,
                };
                self.after_room_closed = false;
                vec![Action::Send(msg)]
            }
            (
                State::Resuming { token },
                Request::Attach { participant, .. },
                Response::Error { code, message },
            ) if *participant == token.participant => {
                self.state = State::Idle;
                let code = if code == control::ErrorCode::Unavailable {
                    ErrorCode::Unavailable
                } else {
                    ErrorCode::ResumeFailed
                };
                vec![Action::Send(ServerMsg::error(
                    code,
                    format!("cannot resume: {message}"),
                ))]
            }
            // A re-attach after the control link came back: the session stays joined; tell the
            // client who came and went while the link was down.
            (
                State::Joined { id, peers, .. },
                Request::Attach { participant, .. },
                Response::Attached { participants, .. },
            ) if participant == id => {
                let mut actions = Vec::new();
                for p in &participants {
                    if !peers.iter().any(|k| k.id == p.id) {
                        actions.push(Action::Send(ServerMsg::ParticipantJoined {
                            participant: p.clone(),
                        }));
                    }
                }
                for k in peers.iter() {
                    if !participants.iter().any(|p| p.id == k.id) {
                        actions.push(Action::Send(ServerMsg::ParticipantLeft {
                            participant_id: k.id.clone(),
                        }));
                    }
                }
                *peers = participants;
                actions
            }
            (
                State::Joined { id, .. },
                Request::Attach { participant, .. },
                Response::Error { code, .. },
            ) if participant == id => {
                if code == control::ErrorCode::Unavailable {
                    // The link dropped again before the answer: the next reconnect re-attaches.
                    return vec![];
                }
                // The dataplane no longer knows the participant: the session is gone.
                self.state = State::Closed;
                vec![
                    Action::Send(ServerMsg::Left {
                        reason: LeaveReason::Failed,
                    }),
                    Action::Close,
                ]
            }
            (
                State::Joined { id, .. },
                Request::Offer { participant, .. },
                Response::Answer { sdp },
            ) if participant == id => vec![Action::Send(ServerMsg::Answer { sdp })],
            (
                State::Joined { id, .. },
                Request::Offer { participant, .. } | Request::Answer { participant, .. },
                Response::Error { code, message },
            ) if participant == id => vec![Action::Send(ServerMsg::error(code.into(), message))],
            (State::Leaving { id, .. }, Request::Leave { participant }, _) if participant == id => {
                self.state = State::Closed;
                vec![Action::Close]
            }
            _ => vec![],
        }
    }

    /// An event from the dataplane. Only events addressed to this session's own, confirmed
    /// participant are acted on; anything else (a stale route, another participant) is dropped.
    pub fn handle_event(&mut self, event: Event) -> Vec<Action> {
        let State::Joined {
            id,
            peers,
            last_offer,
            ..
        } = &mut self.state
        else {
            return vec![];
        };
        if event.participant() != id.as_str() {
            return vec![];
        }
        match event {
            Event::PeerJoined { peer, .. } => {
                if !peers.iter().any(|p| p.id == peer.id) {
                    peers.push(peer.clone());
                }
                vec![Action::Send(ServerMsg::ParticipantJoined {
                    participant: peer,
                })]
            }
            Event::PeerLeft { peer_id, .. } => {
                peers.retain(|p| p.id != peer_id);
                vec![Action::Send(ServerMsg::ParticipantLeft {
                    participant_id: peer_id,
                })]
            }
            Event::Offer { sdp, .. } => {
                if last_offer.as_deref() == Some(sdp.as_str()) {
                    return vec![];
                }
                *last_offer = Some(sdp.clone());
                vec![Action::Send(ServerMsg::Offer { sdp })]
            }
            Event::Gone { reason, .. } => match reason.room_closed() {
                // The room is gone from its node, not the client's fault: it joins again.
                Some(why) => {
                    self.state = State::Idle;
                    self.after_room_closed = true;
                    vec![Action::Send(ServerMsg::RoomClosed { reason: why.into() })]
                }
                None => {
                    self.state = State::Closed;
                    vec![Action::Send(ServerMsg::Left { reason }), Action::Close]
                }
            },
        }
    }

    /// Another connection resumed this session's participant: this one is over.
    pub fn handle_replaced(&mut self) -> Vec<Action> {
        if !self.is_joined() {
            return vec![];
        }
        self.state = State::Closed;
        vec![
            Action::Send(ServerMsg::Left {
                reason: LeaveReason::Replaced,
            }),
            Action::Close,
        ]
    }

    /// The node hosting this session failed: the room is closed for this client, which may join
    /// again (the room is re-placed on a healthy node). If the node was only slow, not dead, the
    /// participant left behind on it is removed (`Forget`).
    pub fn handle_node_failed(&mut self, node: &str) -> Vec<Action> {
        if self.node() != Some(node) {
            return vec![];
        }
        let forget = |id: &str| Action::Forget {
            node: node.to_string(),
            request: Request::Leave {
                participant: id.to_string(),
            },
        };
        match &self.state {
            State::Leaving { id, .. } => {
                let f = forget(id);
                self.state = State::Closed;
                vec![f, Action::Close]
            }
            State::Joined { id, .. } => {
                let f = forget(id);
                self.state = State::Idle;
                self.after_room_closed = true;
                vec![
                    Action::Send(ServerMsg::RoomClosed {
                        reason: "node_failed".into(),
                    }),
                    f,
                ]
            }
            // The pending join or attach fails on its own (the server fails requests to a failed
            // node); nothing to undo here.
            _ => vec![],
        }
    }

    /// `node` is running as `incarnation`: if this session was confirmed by an earlier
    /// incarnation, the process restarted (under the same id) and the session is gone with it —
    /// the room is closed for the client, which joins again.
    pub fn handle_node_restarted(&mut self, node: &str, incarnation: &str) -> Vec<Action> {
        let stale =
            self.node() == Some(node) && self.incarnation().is_some_and(|mine| mine != incarnation);
        if stale {
            self.handle_node_failed(node)
        } else {
            vec![]
        }
    }

    /// The WebSocket closed. The participant is **not** removed: its client may resume the
    /// session through any signaling instance within the resume window (the dataplane removes it
    /// after that). Only an explicit `leave` removes it at once. A join still in flight is undone
    /// by the server when its answer finds no connection.
    pub fn handle_disconnect(&mut self) {
        self.state = State::Closed;
    }

    /// The control link to `node` came back: a joined session on it re-attaches.
    pub fn handle_control_restored(&mut self, node: &str) -> Vec<Action> {
        match &self.state {
            State::Joined {
                id,
                node: n,
                resume,
                ..
            } if n == node => vec![Action::Request {
                node: node.to_string(),
                request: Request::Attach {
                    participant: id.clone(),
                    resume_key: resume.key.clone(),
                },
            }],
            _ => vec![],
        }
    }
}

fn bad(message: impl Into<String>) -> Action {
    Action::Send(ServerMsg::error(ErrorCode::BadRequest, message))
}
