//! The per-connection session state machine. Pure: it consumes client messages, placement
//! results, control responses and events, and returns [`Action`]s; the server performs them.
//!
//! States: `Idle` → `Placing` (which node owns the room?) → `Joining` (control `join` sent to that
//! node) → `Joined` → `Leaving` → `Closed`; or `Idle` → `Resuming` (control `attach` sent to the
//! node named in the resume token) → `Joined`. A failed join returns to `Idle` so the client can
//! retry on the same connection; a failed node (`room_closed`) does too.

use control::registry::{Placement, RegistryError};
use control::{Event, Grants, Request, Response};

use crate::auth::{Auth, ResumeToken, TurnConfig};
use crate::protocol::{self, ClientMsg, ErrorCode, IceServer, PeerInfo, ServerMsg};

/// What the server must do for a session.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send a message to the client.
    Send(ServerMsg),
    /// Find the node that owns `room` (answered by [`Session::handle_placement`]).
    Place { room: String, exclude: Vec<String> },
    /// Send a request to the dataplane on the session's node (see [`Session::node`]); its
    /// response comes back through [`Session::handle_response`] with the same request.
    Request(Request),
    /// Close the WebSocket (normal closure).
    Close,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Idle,
    Placing {
        room: String,
        id: String,
        name: String,
        grants: Grants,
        retried: bool,
    },
    Joining {
        node: String,
        room: String,
        id: String,
        name: String,
        grants: Grants,
        retried: bool,
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
    },
    Leaving {
        node: String,
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

    /// The participant id once a join or resume is under way.
    pub fn participant(&self) -> Option<&str> {
        match &self.state {
            State::Placing { id, .. } | State::Joining { id, .. } | State::Joined { id, .. } => {
                Some(id)
            }
            State::Resuming { token } => Some(&token.participant),
            _ => None,
        }
    }

    /// The node requests of this session go to.
    pub fn node(&self) -> Option<&str> {
        match &self.state {
            State::Joining { node, .. } | State::Joined { node, .. } | State::Leaving { node } => {
                Some(node)
            }
            State::Resuming { token } => Some(&token.node),
            _ => None,
        }
    }

    pub fn is_joined(&self) -> bool {
        matches!(self.state, State::Joined { .. })
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
            Err(e) => return vec![Action::Send(ServerMsg::error(ErrorCode::BadRequest, e))],
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
                let request = Request::Attach {
                    participant: token.participant.clone(),
                    resume_key: token.key.clone(),
                };
                self.state = State::Resuming { token };
                vec![Action::Request(request)]
            }
            (
                ClientMsg::Join {
                    room, name, token, ..
                },
                State::Idle,
            ) => {
                let room = room.unwrap_or_default();
                if let Err(e) = protocol::validate_room(&room) {
                    return vec![bad(e)];
                }
                let mut grants = Grants::default();
                let mut name = name.unwrap_or_default();
                if let Some(auth) = &ctx.auth {
                    let Some(token) = token else {
                        return vec![Action::Send(ServerMsg::error(
                            ErrorCode::Unauthorized,
                            "this server requires a token",
                        ))];
                    };
                    match auth.verify(&token, &room) {
                        Ok(claims) => {
                            if let Some(n) = claims.name {
                                name = n;
                            }
                            grants = Grants {
                                publish: claims.grants.publish,
                                subscribe: claims.grants.subscribe,
                            };
                        }
                        Err(e) => {
                            return vec![Action::Send(ServerMsg::error(
                                ErrorCode::Unauthorized,
                                e,
                            ))];
                        }
                    }
                }
                let name = match protocol::validate_name(&name) {
                    Ok(n) => n,
                    Err(e) => return vec![bad(e)],
                };
                self.state = State::Placing {
                    room: room.clone(),
                    id: new_id(),
                    name,
                    grants,
                    retried: false,
                };
                vec![Action::Place {
                    room,
                    exclude: vec![],
                }]
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
            (ClientMsg::Leave {}, State::Joined { id, node, .. }) => {
                let id = id.clone();
                self.state = State::Leaving { node: node.clone() };
                vec![Action::Request(Request::Leave { participant: id })]
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

    /// The placement of the room this session is joining.
    pub fn handle_placement(&mut self, result: Result<Placement, RegistryError>) -> Vec<Action> {
        let State::Placing {
            room,
            id,
            name,
            grants,
            retried,
        } = std::mem::replace(&mut self.state, State::Idle)
        else {
            return vec![];
        };
        match result {
            Ok(p) => {
                let request = Request::Join {
                    room: room.clone(),
                    participant: id.clone(),
                    name: name.clone(),
                    offer: None,
                    epoch: Some(p.epoch),
                    grants,
                };
                self.state = State::Joining {
                    node: p.node,
                    room,
                    id,
                    name,
                    grants,
                    retried,
                    leave_after: false,
                };
                vec![Action::Request(request)]
            }
            Err(RegistryError::NoNodes) => vec![Action::Send(ServerMsg::error(
                ErrorCode::Unavailable,
                "no media server is available; retry later",
            ))],
            Err(e) => vec![Action::Send(ServerMsg::error(
                ErrorCode::Unavailable,
                format!("room lookup failed: {e}"),
            ))],
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
            (
                Request::Join { .. },
                Response::Joined {
                    participants,
                    resume_key,
                    ..
                },
            ) => {
                let State::Joining {
                    node,
                    room,
                    id,
                    name,
                    leave_after,
                    ..
                } = std::mem::replace(&mut self.state, State::Idle)
                else {
                    return vec![];
                };
                if leave_after {
                    self.state = State::Leaving { node };
                    return vec![Action::Request(Request::Leave { participant: id })];
                }
                let resume = ResumeToken {
                    node: node.clone(),
                    participant: id.clone(),
                    key: resume_key,
                };
                let msg = ServerMsg::Joined {
                    room: room.clone(),
                    participant: PeerInfo {
                        id: id.clone(),
                        name: name.clone(),
                    },
                    participants,
                    ice_servers: ctx.ice_servers(&id),
                    resume: resume.encode(),
                    resumed: false,
                };
                self.state = State::Joined {
                    node,
                    room,
                    id,
                    name,
                    resume,
                };
                vec![Action::Send(msg)]
            }
            (Request::Join { .. }, Response::Error { code, message }) => {
                let State::Joining {
                    node,
                    room,
                    id,
                    name,
                    grants,
                    retried,
                    leave_after,
                } = std::mem::replace(&mut self.state, State::Idle)
                else {
                    return vec![];
                };
                if leave_after {
                    self.state = State::Closed;
                    return vec![
                        Action::Send(ServerMsg::error(code.into(), message)),
                        Action::Close,
                    ];
                }
                if code == control::ErrorCode::Unavailable && !retried {
                    // The placement was stale or the node is going away: look the room up again
                    // without that node, once.
                    self.state = State::Placing {
                        room: room.clone(),
                        id,
                        name,
                        grants,
                        retried: true,
                    };
                    return vec![Action::Place {
                        room,
                        exclude: vec![node],
                    }];
                }
                vec![Action::Send(ServerMsg::error(code.into(), message))]
            }
            (
                Request::Attach { .. },
                Response::Attached {
                    room,
                    name,
                    participants,
                },
            ) => {
                let State::Resuming { token } = std::mem::replace(&mut self.state, State::Idle)
                else {
                    return vec![];
                };
                let msg = ServerMsg::Joined {
                    room: room.clone(),
                    participant: PeerInfo {
                        id: token.participant.clone(),
                        name: name.clone(),
                    },
                    participants,
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
                };
                vec![Action::Send(msg)]
            }
            (Request::Attach { .. }, Response::Error { code, message }) => {
                let was_resuming = matches!(self.state, State::Resuming { .. });
                if was_resuming {
                    self.state = State::Idle;
                    let code = if code == control::ErrorCode::Unavailable {
                        ErrorCode::Unavailable
                    } else {
                        ErrorCode::ResumeFailed
                    };
                    return vec![Action::Send(ServerMsg::error(
                        code,
                        format!("cannot resume: {message}"),
                    ))];
                }
                // A re-attach after a control reconnect failed: the session is gone.
                self.state = State::Closed;
                vec![
                    Action::Send(ServerMsg::Left {
                        reason: control::LeaveReason::Failed,
                    }),
                    Action::Close,
                ]
            }
            (Request::Offer { .. }, Response::Answer { sdp }) => {
                vec![Action::Send(ServerMsg::Answer { sdp })]
            }
            (Request::Leave { .. }, _) => {
                self.state = State::Closed;
                vec![Action::Close]
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
            // Events can only follow a successful join or resume; anything else is stale.
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
            Event::Gone {
                reason: control::LeaveReason::Moved,
                ..
            } => {
                self.state = State::Idle;
                vec![Action::Send(ServerMsg::RoomClosed {
                    reason: "moved".into(),
                })]
            }
            Event::Gone { reason, .. } => {
                self.state = State::Closed;
                vec![Action::Send(ServerMsg::Left { reason }), Action::Close]
            }
        }
    }

    /// The node hosting this session failed: the room is closed for this client, which may join
    /// again (the room is re-placed on a healthy node).
    pub fn handle_node_failed(&mut self, node: &str) -> Vec<Action> {
        if self.node() != Some(node) {
            return vec![];
        }
        let was_leaving = matches!(self.state, State::Leaving { .. });
        self.state = if was_leaving {
            State::Closed
        } else {
            State::Idle
        };
        if was_leaving {
            return vec![Action::Close];
        }
        vec![Action::Send(ServerMsg::RoomClosed {
            reason: "node_failed".into(),
        })]
    }

    /// The WebSocket closed. The participant is **not** removed: its client may resume the
    /// session through any signaling instance within the resume window (the dataplane removes it
    /// after that). Only an explicit `leave` removes it at once.
    pub fn handle_disconnect(&mut self) -> Vec<Action> {
        let state = std::mem::replace(&mut self.state, State::Closed);
        match state {
            // The join response will find no session; the server then sends the leave.
            State::Joining { .. } | State::Placing { .. } => vec![],
            _ => vec![],
        }
    }

    /// The control connection to this session's node came back: re-attach.
    pub fn handle_control_restored(&mut self, node: &str) -> Vec<Action> {
        match &self.state {
            State::Joined {
                id,
                node: n,
                resume,
                ..
            } if n == node => vec![Action::Request(Request::Attach {
                participant: id.clone(),
                resume_key: resume.key.clone(),
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
            ..JoinContext::default()
        }
    }

    fn placed(node: &str, epoch: u64) -> Result<Placement, RegistryError> {
        Ok(Placement {
            node: node.into(),
            epoch,
        })
    }

    fn joined_response(key: &str) -> Response {
        Response::Joined {
            answer: None,
            worker: 0,
            port: 1,
            participants: vec![],
            resume_key: key.into(),
        }
    }

    /// Join through placement; returns the session and the join request.
    fn join(room: &str) -> (Session, Request) {
        let mut s = Session::new();
        let a = s.handle_text(
            &format!(r#"{{"type":"join","room":"{room}","name":" Al "}}"#),
            &ctx(),
            || "p1".into(),
        );
        assert_eq!(
            a,
            vec![Action::Place {
                room: room.into(),
                exclude: vec![]
            }]
        );
        assert_eq!(s.participant(), Some("p1"));
        assert_eq!(s.node(), None);
        let a = s.handle_placement(placed("n1", 7));
        let Some(Action::Request(req)) = a.into_iter().next() else {
            panic!("no join request")
        };
        assert!(
            matches!(&req, Request::Join { epoch: Some(7), participant, name, .. } if participant == "p1" && name == "Al")
        );
        assert_eq!(s.node(), Some("n1"));
        (s, req)
    }

    fn joined_session() -> Session {
        let (mut s, req) = join("r");
        s.handle_response(&req, joined_response("k1"), &ctx());
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
    fn join_flow_with_placement_and_resume_token() {
        let (mut s, req) = join("r");
        let a = s.handle_response(&req, joined_response("key"), &ctx());
        let [
            Action::Send(ServerMsg::Joined {
                room,
                participant,
                resume,
                resumed,
                ice_servers,
                ..
            }),
        ] = &a[..]
        else {
            panic!("{a:?}")
        };
        assert_eq!(
            (
                room.as_str(),
                participant.id.as_str(),
                participant.name.as_str(),
                *resumed
            ),
            ("r", "p1", "Al", false)
        );
        assert_eq!(ice_servers, &ctx().ice_servers);
        let token = ResumeToken::decode(resume).expect("token");
        assert_eq!(
            (
                token.node.as_str(),
                token.participant.as_str(),
                token.key.as_str()
            ),
            ("n1", "p1", "key")
        );
        let a = s.handle_text(r#"{"type":"offer","sdp":"v=0"}"#, &ctx(), || unreachable!());
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
    fn resume_attaches_at_the_token_node() {
        let token = ResumeToken {
            node: "n2".into(),
            participant: "p9".into(),
            key: "kk".into(),
        }
        .encode();
        let mut s = Session::new();
        let a = s.handle_text(
            &format!(r#"{{"type":"join","resume":"{token}"}}"#),
            &ctx(),
            || unreachable!(),
        );
        let attach = Request::Attach {
            participant: "p9".into(),
            resume_key: "kk".into(),
        };
        assert_eq!(a, vec![Action::Request(attach.clone())]);
        assert_eq!(s.node(), Some("n2"));
        let a = s.handle_response(
            &attach,
            Response::Attached {
                room: "r".into(),
                name: "Nine".into(),
                participants: vec![],
            },
            &ctx(),
        );
        assert!(
            matches!(&a[..], [Action::Send(ServerMsg::Joined { resumed: true, participant, .. })] if participant.id == "p9" && participant.name == "Nine")
        );
        assert!(s.is_joined());

        // An expired session: resume_failed, and the connection can join normally.
        let mut s = Session::new();
        let a = s.handle_text(
            &format!(r#"{{"type":"join","resume":"{token}"}}"#),
            &ctx(),
            || unreachable!(),
        );
        let Action::Request(attach) = &a[0] else {
            panic!()
        };
        let a = s.handle_response(
            attach,
            Response::error(control::ErrorCode::UnknownParticipant, "gone"),
            &ctx(),
        );
        assert_eq!(error_code(&a), Some(ErrorCode::ResumeFailed));
        assert!(matches!(
            s.handle_text(r#"{"type":"join","room":"r","name":"a"}"#, &ctx(), || "p"
                .into())[0],
            Action::Place { .. }
        ));
        let mut s = Session::new();
        assert_eq!(
            error_code(&s.handle_text(
                r#"{"type":"join","resume":"garbage!"}"#,
                &ctx(),
                || unreachable!()
            )),
            Some(ErrorCode::ResumeFailed)
        );
    }

    #[test]
    fn failed_join_retries_placement_once_then_allows_retry() {
        let (mut s, req) = join("r");
        let a = s.handle_response(
            &req,
            Response::error(control::ErrorCode::Unavailable, "stale"),
            &ctx(),
        );
        assert_eq!(
            a,
            vec![Action::Place {
                room: "r".into(),
                exclude: vec!["n1".into()]
            }]
        );
        let a = s.handle_placement(placed("n2", 8));
        let Action::Request(req2) = &a[0] else {
            panic!()
        };
        let a = s.handle_response(
            req2,
            Response::error(control::ErrorCode::Unavailable, "again"),
            &ctx(),
        );
        assert_eq!(error_code(&a), Some(ErrorCode::Unavailable));
        let a = s.handle_text(r#"{"type":"join","room":"r2","name":"a"}"#, &ctx(), || {
            "p2".into()
        });
        assert!(matches!(&a[0], Action::Place { .. }));
        assert_eq!(
            error_code(&s.handle_placement(Err(RegistryError::NoNodes))),
            Some(ErrorCode::Unavailable)
        );
        // Room full is not retried.
        let (mut s, req) = join("r");
        assert_eq!(
            error_code(&s.handle_response(
                &req,
                Response::error(control::ErrorCode::RoomFull, "full"),
                &ctx()
            )),
            Some(ErrorCode::RoomFull)
        );
    }

    #[test]
    fn auth_and_turn() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let mut c = ctx();
        c.auth = Some(Auth::new(secret));
        c.turn = Some(TurnConfig {
            urls: vec!["turn:t".into()],
            secret: "x".into(),
            ttl_secs: 60,
        });
        c.now_unix = 1000;
        let mut s = Session::new();
        assert_eq!(
            error_code(
                &s.handle_text(r#"{"type":"join","room":"r","name":"a"}"#, &c, || "p"
                    .into())
            ),
            Some(ErrorCode::Unauthorized)
        );
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            + 60;
        let claims = crate::auth::Claims {
            sub: "u".into(),
            name: Some("From Token".into()),
            room: "r".into(),
            exp,
            grants: crate::auth::GrantClaims {
                publish: false,
                subscribe: true,
            },
        };
        let token = crate::auth::mint(secret, &claims).expect("mint");
        let other_room = s.handle_text(
            &format!(r#"{{"type":"join","room":"x","name":"a","token":"{token}"}}"#),
            &c,
            || "p".into(),
        );
        assert_eq!(error_code(&other_room), Some(ErrorCode::Unauthorized));
        let a = s.handle_text(
            &format!(r#"{{"type":"join","room":"r","name":"a","token":"{token}"}}"#),
            &c,
            || "p".into(),
        );
        assert!(matches!(&a[0], Action::Place { .. }));
        let a = s.handle_placement(placed("n", 1));
        let Action::Request(req) = &a[0] else {
            panic!()
        };
        assert!(
            matches!(req, Request::Join { name, grants: Grants { publish: false, subscribe: true }, .. } if name == "From Token")
        );
        let a = s.handle_response(req, joined_response("k"), &c);
        let Action::Send(ServerMsg::Joined { ice_servers, .. }) = &a[0] else {
            panic!()
        };
        assert_eq!(ice_servers.len(), 2);
        assert_eq!(ice_servers[1].username.as_deref(), Some("1060:p"));
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
            r#"{"type":"join","name":"a"}"#,
        ] {
            assert_eq!(
                error_code(&s.handle_text(bad, &ctx(), || "p".into())),
                Some(ErrorCode::BadRequest),
                "{bad}"
            );
        }
        assert!(
            s.handle_text(r#"{"type":"candidate","candidate":"x"}"#, &ctx(), || "p"
                .into())
                .is_empty()
        );
        let mut s = joined_session();
        assert_eq!(
            error_code(
                &s.handle_text(r#"{"type":"join","room":"r","name":"a"}"#, &ctx(), || "p"
                    .into())
            ),
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
        let mut s = joined_session();
        assert_eq!(
            s.handle_event(Event::Gone {
                participant: "p1".into(),
                reason: LeaveReason::Moved
            }),
            vec![Action::Send(ServerMsg::RoomClosed {
                reason: "moved".into()
            })]
        );
        assert!(matches!(
            s.handle_text(r#"{"type":"join","room":"r","name":"a"}"#, &ctx(), || "p"
                .into())[0],
            Action::Place { .. }
        ));
    }

    #[test]
    fn node_failure_closes_the_room_for_the_client() {
        let mut s = joined_session();
        assert!(s.handle_node_failed("other").is_empty());
        assert_eq!(
            s.handle_node_failed("n1"),
            vec![Action::Send(ServerMsg::RoomClosed {
                reason: "node_failed".into()
            })]
        );
        assert!(!s.is_joined());
        assert!(matches!(
            s.handle_text(r#"{"type":"join","room":"r","name":"a"}"#, &ctx(), || "p"
                .into())[0],
            Action::Place { .. }
        ));
    }

    #[test]
    fn leave_and_disconnect() {
        let mut s = joined_session();
        let a = s.handle_text(r#"{"type":"leave"}"#, &ctx(), || unreachable!());
        let req = Request::Leave {
            participant: "p1".into(),
        };
        assert_eq!(a, vec![Action::Request(req.clone())]);
        assert_eq!(s.node(), Some("n1"), "the leave goes to the session's node");
        assert_eq!(
            s.handle_response(&req, Response::Ok, &ctx()),
            vec![Action::Close]
        );

        // A dropped WebSocket does not remove the participant: it may resume.
        let mut s = joined_session();
        assert!(s.handle_disconnect().is_empty());
        assert!(
            s.handle_event(Event::Offer {
                participant: "p1".into(),
                sdp: "o".into()
            })
            .is_empty()
        );

        // Leave while the join is in flight: leave as soon as it lands.
        let (mut s, join) = join("r");
        assert!(
            s.handle_text(r#"{"type":"leave"}"#, &ctx(), || unreachable!())
                .is_empty()
        );
        assert_eq!(
            s.handle_response(&join, joined_response("k"), &ctx()),
            vec![Action::Request(Request::Leave {
                participant: "p1".into()
            })]
        );
    }

    #[test]
    fn control_restored_reattaches_and_a_lost_session_ends() {
        let mut s = joined_session();
        assert!(s.handle_control_restored("other-node").is_empty());
        let a = s.handle_control_restored("n1");
        let attach = Request::Attach {
            participant: "p1".into(),
            resume_key: "k1".into(),
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
        assert!(Session::new().handle_control_restored("n1").is_empty());
    }
}
