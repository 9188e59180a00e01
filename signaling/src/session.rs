//! The per-connection session state machine. Pure: it consumes client messages, control
//! responses and control events and returns [`Action`]s; the server performs them.
//!
//! States: `Idle` (connected, not joined) → `Joining` (control `join` sent) → `Joined` →
//! `Leaving` (control `leave` sent) → `Closed`. A failed join returns to `Idle`, so the client can
//! retry on the same connection.

use control::{Event, Request, Response};

use crate::protocol::{self, ClientMsg, ErrorCode, IceServer, PeerInfo, ServerMsg};

/// What the server must do for a session.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send a message to the client.
    Send(ServerMsg),
    /// Send a request to the dataplane; its response comes back through
    /// [`Session::handle_response`] with the same request.
    Request(Request),
    /// Close the WebSocket (normal closure).
    Close,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Idle,
    Joining {
        room: String,
        id: String,
        name: String,
        leave_after: bool,
    },
    Joined {
        room: String,
        id: String,
        name: String,
    },
    Leaving,
    Closed,
}

/// Context the session needs from its server for a join.
#[derive(Debug, Clone, Default)]
pub struct JoinContext {
    pub ice_servers: Vec<IceServer>,
}

/// One client connection. See the module docs.
#[derive(Debug)]
pub struct Session {
    state: State,
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

impl Session {
    pub fn new() -> Self {
        Self { state: State::Idle }
    }

    /// The participant id once a join was sent.
    pub fn participant(&self) -> Option<&str> {
        match &self.state {
            State::Joining { id, .. } | State::Joined { id, .. } => Some(id),
            _ => None,
        }
    }

    pub fn is_joined(&self) -> bool {
        matches!(self.state, State::Joined { .. })
    }

    /// A text frame from the client. `new_id` makes a participant id (only called for a join).
    pub fn handle_text(&mut self, text: &str, new_id: impl FnOnce() -> String) -> Vec<Action> {
        let msg = match protocol::parse(text) {
            Ok(m) => m,
            Err(e) => return vec![Action::Send(ServerMsg::error(ErrorCode::BadRequest, e))],
        };
        match (msg, &mut self.state) {
            (ClientMsg::Candidate { .. }, _) => vec![],
            (ClientMsg::Join { room, name, .. }, State::Idle) => {
                if let Err(e) = protocol::validate_room(&room) {
                    return vec![bad(e)];
                }
                let name = match protocol::validate_name(&name) {
                    Ok(n) => n,
                    Err(e) => return vec![bad(e)],
                };
                let id = new_id();
                self.state = State::Joining {
                    room: room.clone(),
                    id: id.clone(),
                    name: name.clone(),
                    leave_after: false,
                };
                vec![Action::Request(Request::Join {
                    room,
                    participant: id,
                    name,
                    offer: None,
                })]
            }
            (ClientMsg::Join { .. }, _) => vec![bad("already joined")],
            (ClientMsg::Offer { sdp }, State::Joined { id, .. }) => {
                vec![Action::Request(Request::Offer {
                    participant: id.clone(),
                    sdp,
                })]
            }
            (ClientMsg::Answer { sdp }, State::Joined { id, .. }) => {
                vec![Action::Request(Request::Answer {
                    participant: id.clone(),
                    sdp,
                })]
            }
            (ClientMsg::Offer { .. } | ClientMsg::Answer { .. }, _) => {
                vec![bad("join the room first")]
            }
            (ClientMsg::Leave {}, State::Joined { id, .. }) => {
                let id = id.clone();
                self.state = State::Leaving;
                vec![Action::Request(Request::Leave { participant: id })]
            }
            (ClientMsg::Leave {}, State::Joining { leave_after, .. }) => {
                *leave_after = true;
                vec![]
            }
            (ClientMsg::Leave {}, State::Leaving) => vec![],
            (ClientMsg::Leave {}, _) => {
                self.state = State::Closed;
                vec![Action::Close]
            }
        }
    }

    /// The dataplane's response to a request this session made.
    pub fn handle_response(
        &mut self,
        request: &Request,
        response: Response,
        ctx: &JoinContext,
    ) -> Vec<Action> {
        match (request, response) {
            (Request::Join { .. }, Response::Joined { participants, .. }) => {
                let State::Joining {
                    room,
                    id,
                    name,
                    leave_after,
                } = std::mem::replace(&mut self.state, State::Idle)
                else {
                    return vec![];
                };
                if leave_after {
                    self.state = State::Leaving;
                    return vec![Action::Request(Request::Leave { participant: id })];
                }
                let msg = ServerMsg::Joined {
                    room: room.clone(),
                    participant: PeerInfo {
                        id: id.clone(),
                        name: name.clone(),
                    },
                    participants,
                    ice_servers: ctx.ice_servers.clone(),
                };
                self.state = State::Joined { room, id, name };
                vec![Action::Send(msg)]
            }
            (Request::Join { .. }, Response::Error { code, message }) => {
                let leave_after = matches!(
                    self.state,
                    State::Joining {
                        leave_after: true,
                        ..
                    }
                );
                self.state = if leave_after {
                    State::Closed
                } else {
                    State::Idle
                };
                let mut actions = vec![Action::Send(ServerMsg::error(code.into(), message))];
                if leave_after {
                    actions.push(Action::Close);
                }
                actions
            }
            (Request::Offer { .. }, Response::Answer { sdp }) => {
                vec![Action::Send(ServerMsg::Answer { sdp })]
            }
            (Request::Leave { .. }, _) => {
                self.state = State::Closed;
                vec![Action::Close]
            }
            (Request::Attach { .. }, Response::Attached { .. }) => vec![],
            (Request::Attach { .. }, Response::Error { .. }) => {
                // The dataplane no longer knows this participant (it restarted).
                self.state = State::Closed;
                vec![
                    Action::Send(ServerMsg::Left {
                        reason: control::LeaveReason::Failed,
                    }),
                    Action::Close,
                ]
            }
            (_, Response::Error { code, message }) => {
                vec![Action::Send(ServerMsg::error(code.into(), message))]
            }
            _ => vec![],
        }
    }

    /// An event addressed to this session's participant.
    pub fn handle_event(&mut self, event: Event) -> Vec<Action> {
        if !self.is_joined() {
            // Events can only follow a successful join; anything else is stale.
            return vec![];
        }
        match event {
            Event::PeerJoined { peer, .. } => vec![Action::Send(ServerMsg::ParticipantJoined {
                participant: peer,
            })],
            Event::PeerLeft { peer_id, .. } => vec![Action::Send(ServerMsg::ParticipantLeft {
                participant_id: peer_id,
            })],
            Event::Offer { sdp, .. } => vec![Action::Send(ServerMsg::Offer { sdp })],
            Event::Gone { reason, .. } => {
                self.state = State::Closed;
                vec![Action::Send(ServerMsg::Left { reason }), Action::Close]
            }
        }
    }

    /// The WebSocket closed: leave the room (the dataplane keeps nothing for a closed tab).
    pub fn handle_disconnect(&mut self) -> Vec<Action> {
        let state = std::mem::replace(&mut self.state, State::Closed);
        match state {
            State::Joined { id, .. } => vec![Action::Request(Request::Leave { participant: id })],
            // The join response will find no session; the server then sends the leave.
            _ => vec![],
        }
    }

    /// The control connection came back: re-attach the participant to this signaling instance.
    pub fn handle_control_restored(&mut self) -> Vec<Action> {
        match &self.state {
            State::Joined { id, .. } => vec![Action::Request(Request::Attach {
                participant: id.clone(),
            })],
            _ => vec![],
        }
    }
}

fn bad(message: impl Into<String>) -> Action {
    Action::Send(ServerMsg::error(ErrorCode::BadRequest, message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use control::LeaveReason;

    fn ctx() -> JoinContext {
        JoinContext {
            ice_servers: vec![IceServer {
                urls: vec!["stun:s".into()],
                username: None,
                credential: None,
            }],
        }
    }

    fn joined_session() -> Session {
        let mut s = Session::new();
        let a = s.handle_text(r#"{"type":"join","room":"r","name":" Al "}"#, || {
            "p1".into()
        });
        let Action::Request(req) = &a[0] else {
            panic!("{a:?}")
        };
        s.handle_response(
            req,
            Response::Joined {
                answer: None,
                worker: 0,
                port: 1,
                participants: vec![],
            },
            &ctx(),
        );
        assert!(s.is_joined());
        s
    }

    fn error_code(actions: &[Action]) -> Option<ErrorCode> {
        actions.iter().find_map(|a| match a {
            Action::Send(ServerMsg::Error { code, .. }) => Some(*code),
            _ => None,
        })
    }

    #[test]
    fn join_flow() {
        let mut s = Session::new();
        let a = s.handle_text(r#"{"type":"join","room":"r","name":" Al "}"#, || {
            "p1".into()
        });
        let req = Request::Join {
            room: "r".into(),
            participant: "p1".into(),
            name: "Al".into(),
            offer: None,
        };
        assert_eq!(a, vec![Action::Request(req.clone())]);
        assert_eq!(s.participant(), Some("p1"));
        let peers = vec![PeerInfo {
            id: "p0".into(),
            name: "Zed".into(),
        }];
        let a = s.handle_response(
            &req,
            Response::Joined {
                answer: None,
                worker: 0,
                port: 1,
                participants: peers.clone(),
            },
            &ctx(),
        );
        assert_eq!(
            a,
            vec![Action::Send(ServerMsg::Joined {
                room: "r".into(),
                participant: PeerInfo {
                    id: "p1".into(),
                    name: "Al".into()
                },
                participants: peers,
                ice_servers: ctx().ice_servers,
            })]
        );
        let a = s.handle_text(r#"{"type":"offer","sdp":"v=0"}"#, || unreachable!());
        let offer = Request::Offer {
            participant: "p1".into(),
            sdp: "v=0".into(),
        };
        assert_eq!(a, vec![Action::Request(offer.clone())]);
        assert_eq!(
            s.handle_response(&offer, Response::Answer { sdp: "ans".into() }, &ctx()),
            vec![Action::Send(ServerMsg::Answer { sdp: "ans".into() })]
        );
    }

    #[test]
    fn failed_join_allows_retry() {
        let mut s = Session::new();
        let a = s.handle_text(r#"{"type":"join","room":"r","name":"a"}"#, || "p1".into());
        let Action::Request(req) = &a[0] else {
            panic!()
        };
        let a = s.handle_response(
            req,
            Response::error(control::ErrorCode::RoomFull, "full"),
            &ctx(),
        );
        assert_eq!(error_code(&a), Some(ErrorCode::RoomFull));
        let a = s.handle_text(r#"{"type":"join","room":"r2","name":"a"}"#, || "p2".into());
        assert!(matches!(&a[0], Action::Request(Request::Join { .. })));
    }

    #[test]
    fn bad_input_gets_bad_request_and_keeps_the_session() {
        let mut s = Session::new();
        for bad in [
            "{",
            r#"{"type":"nope"}"#,
            r#"{"type":"offer","sdp":"x"}"#,
            r#"{"type":"answer","sdp":"x"}"#,
            r#"{"type":"join","room":"bad room","name":"a"}"#,
            r#"{"type":"join","room":"r","name":""}"#,
        ] {
            assert_eq!(
                error_code(&s.handle_text(bad, || "p".into())),
                Some(ErrorCode::BadRequest),
                "{bad}"
            );
        }
        assert!(
            s.handle_text(r#"{"type":"candidate","candidate":"x"}"#, || "p".into())
                .is_empty()
        );
        let mut s = joined_session();
        assert_eq!(
            error_code(&s.handle_text(r#"{"type":"join","room":"r","name":"a"}"#, || "p".into())),
            Some(ErrorCode::BadRequest)
        );
        assert!(s.is_joined());
    }

    #[test]
    fn events_become_client_messages() {
        let mut s = joined_session();
        let peer = PeerInfo {
            id: "p2".into(),
            name: "B".into(),
        };
        assert_eq!(
            s.handle_event(Event::PeerJoined {
                participant: "p1".into(),
                peer: peer.clone()
            }),
            vec![Action::Send(ServerMsg::ParticipantJoined {
                participant: peer
            })]
        );
        assert_eq!(
            s.handle_event(Event::Offer {
                participant: "p1".into(),
                sdp: "o".into()
            }),
            vec![Action::Send(ServerMsg::Offer { sdp: "o".into() })]
        );
        assert_eq!(
            s.handle_event(Event::PeerLeft {
                participant: "p1".into(),
                peer_id: "p2".into(),
                reason: LeaveReason::Left
            }),
            vec![Action::Send(ServerMsg::ParticipantLeft {
                participant_id: "p2".into()
            })]
        );
        assert_eq!(
            s.handle_event(Event::Gone {
                participant: "p1".into(),
                reason: LeaveReason::Timeout
            }),
            vec![
                Action::Send(ServerMsg::Left {
                    reason: LeaveReason::Timeout
                }),
                Action::Close
            ]
        );
    }

    #[test]
    fn leave_and_disconnect() {
        let mut s = joined_session();
        let a = s.handle_text(r#"{"type":"leave"}"#, || unreachable!());
        let req = Request::Leave {
            participant: "p1".into(),
        };
        assert_eq!(a, vec![Action::Request(req.clone())]);
        assert_eq!(
            s.handle_response(&req, Response::Ok, &ctx()),
            vec![Action::Close]
        );

        let mut s = joined_session();
        assert_eq!(
            s.handle_disconnect(),
            vec![Action::Request(Request::Leave {
                participant: "p1".into()
            })]
        );
        assert!(
            s.handle_event(Event::Offer {
                participant: "p1".into(),
                sdp: "o".into()
            })
            .is_empty()
        );

        // Leave while the join is in flight: leave as soon as it lands.
        let mut s = Session::new();
        let a = s.handle_text(r#"{"type":"join","room":"r","name":"a"}"#, || "p1".into());
        let Action::Request(join) = &a[0] else {
            panic!()
        };
        assert!(
            s.handle_text(r#"{"type":"leave"}"#, || unreachable!())
                .is_empty()
        );
        assert_eq!(
            s.handle_response(
                join,
                Response::Joined {
                    answer: None,
                    worker: 0,
                    port: 1,
                    participants: vec![]
                },
                &ctx()
            ),
            vec![Action::Request(Request::Leave {
                participant: "p1".into()
            })]
        );
    }

    #[test]
    fn control_restored_reattaches_and_a_lost_session_ends() {
        let mut s = joined_session();
        let a = s.handle_control_restored();
        let attach = Request::Attach {
            participant: "p1".into(),
        };
        assert_eq!(a, vec![Action::Request(attach.clone())]);
        let a = s.handle_response(
            &attach,
            Response::error(control::ErrorCode::UnknownParticipant, "gone"),
            &ctx(),
        );
        assert_eq!(
            a,
            vec![
                Action::Send(ServerMsg::Left {
                    reason: LeaveReason::Failed
                }),
                Action::Close
            ]
        );
        assert!(Session::new().handle_control_restored().is_empty());
    }
}
