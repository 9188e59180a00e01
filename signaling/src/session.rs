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
//!
//! This file owns the states, the actions and what the server may ask about a session; the
//! transitions live by input:
//! - `session/client.rs`: the client's messages (join, offer, answer, leave) and refused joins;
//! - `session/join.rs`: placement results and the answers to `join`;
//! - `session/resume.rs`: resuming with a token, the answers to `attach` (resumes and
//!   re-attaches after the control link came back);
//! - `session/events.rs`: dataplane events and what ends a joined session (replaced, node failed
//!   or restarted, disconnected).

use control::{Grants, Request, Response};

use crate::auth::{Auth, ResumeToken, TurnConfig};
use crate::protocol::{ErrorCode, IceServer, PeerInfo, ServerMsg};

mod client;
mod events;
mod join;
mod resume;

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

impl Action {
    /// Whether these actions start a join (a placement) or a resume (an attach): what the
    /// server admits against its join limits and times.
    pub fn start_session(actions: &[Action]) -> bool {
        actions.iter().any(|a| {
            matches!(
                a,
                Action::Place { .. }
                    | Action::Request {
                        request: Request::Attach { .. },
                        ..
                    }
            )
        })
    }
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
    /// The client's first offer, sent with the join (WHIP/WHEP; a WebSocket client sends its
    /// offer after `joined`).
    offer: Option<String>,
    /// A viewer that cannot renegotiate (WHEP).
    viewer: Option<control::Viewer>,
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

    /// The dataplane's response to a request this session made. A response that does not belong
    /// to the session's current state (e.g. to an offer of a session that was closed since) is
    /// dropped. Answers to a `join` are taken in `join.rs`, to an `attach` in `resume.rs`.
    pub fn handle_response(
        &mut self,
        request: &Request,
        response: Response,
        ctx: &JoinContext,
    ) -> Vec<Action> {
        match request {
            Request::Join { .. } => return self.join_answer(request, response, ctx),
            Request::Attach { .. } => return self.attach_answer(request, response, ctx),
            _ => {}
        }
        match (&mut self.state, request, response) {
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
}

fn bad(message: impl Into<String>) -> Action {
    Action::Send(ServerMsg::error(ErrorCode::BadRequest, message))
}
