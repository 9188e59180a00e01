//! Joining: the placement of the room (which node owns it), the `join` sent there, and its
//! answer: joined (or left at once if the client left meanwhile), or refused — an `unavailable`
//! node is replaced by another placement once, any other error returns the session to `Idle`.

use control::{Request, Response};
use registry::{Placement, RegistryError};

use super::{Action, JoinContext, Session, State};
use crate::auth::ResumeToken;
use crate::protocol::{ErrorCode, PeerInfo, ServerMsg};

impl Session {
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
                    offer: join.offer.clone(),
                    epoch: Some(p.epoch),
                    grants: join.grants,
                    identity: join.identity.clone(),
                    viewer: join.viewer.clone(),
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

    /// The answer to a `join` (see [`Session::handle_response`]).
    pub(super) fn join_answer(
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
                    answer,
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
                let mut actions = vec![Action::Send(msg)];
                // A join that carried its offer (WHIP/WHEP) is answered at once.
                if let Some(sdp) = answer {
                    actions.push(Action::Send(ServerMsg::Answer { sdp }));
                }
                actions
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
            _ => vec![],
        }
    }
}
