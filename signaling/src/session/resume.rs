//! Resuming: a client's `join` with a resume token sends `attach` to the node the token names;
//! its answer joins the session (`resumed`) or fails it (`resume_failed`, or `unavailable`). A
//! joined session whose control link came back re-attaches and stays joined: the `attached`
//! answer tells the client who came and went meanwhile; an `unknown participant` ends it.

use control::{LeaveReason, Request, Response};

use super::{Action, JoinContext, Session, State};
use crate::auth::ResumeToken;
use crate::protocol::{ErrorCode, PeerInfo, ServerMsg};

impl Session {
    /// An idle session's `join` with a resume `token`: attach at the node it names.
    pub(super) fn resume(&mut self, token: &str) -> Vec<Action> {
        let Some(token) = ResumeToken::decode(token) else {
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

    /// The answer to an `attach` (see [`Session::handle_response`]): of a resume, or of a
    /// re-attach after the control link came back.
    pub(super) fn attach_answer(
        &mut self,
        request: &Request,
        response: Response,
        ctx: &JoinContext,
    ) -> Vec<Action> {
        match (&mut self.state, request, response) {
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
            _ => vec![],
        }
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
