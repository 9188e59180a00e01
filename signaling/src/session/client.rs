//! The client's messages: a join (validated: room, token, name) or a resume with a token,
//! offers and answers of a joined session, leave; and joins the server refused before they
//! reached a node (rate or session limits).

use control::{Grants, Request};

use super::{Action, Intent, JoinContext, Session, State, bad};
use crate::protocol::{self, ClientMsg, ErrorCode, ServerMsg};

impl Session {
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
            ) => self.resume(&token),
            (
                ClientMsg::Join {
                    room, name, token, ..
                },
                State::Idle,
            ) => match Self::intent(room, name, token, ctx, new_id) {
                Ok(join) => self.place(join),
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
            offer: None,
            viewer: None,
        })
    }

    /// A join that carries its first offer (WHIP and WHEP over HTTP): validated like a client's
    /// `join`, with `allowed` narrowing the token's grants (a WHIP publisher subscribes to
    /// nothing, a WHEP viewer publishes nothing) and `viewer` for a WHEP viewer. The answer comes
    /// as `joined` followed by `answer`.
    #[allow(clippy::too_many_arguments)]
    pub fn join_with_offer(
        &mut self,
        room: String,
        name: String,
        token: Option<String>,
        offer: String,
        allowed: Grants,
        viewer: Option<control::Viewer>,
        ctx: &JoinContext,
        new_id: impl FnOnce() -> String,
    ) -> Vec<Action> {
        if !matches!(self.state, State::Idle) {
            return vec![bad("already joined")];
        }
        match Self::intent(Some(room), Some(name), token, ctx, new_id) {
            Ok(mut join) => {
                if (allowed.publish && !join.grants.publish)
                    || (allowed.subscribe && !join.grants.subscribe)
                {
                    return vec![Action::Send(ServerMsg::error(
                        ErrorCode::Unauthorized,
                        if allowed.publish {
                            "this token may not publish"
                        } else {
                            "this token may not subscribe"
                        },
                    ))];
                }
                join.grants = Grants {
                    publish: join.grants.publish && allowed.publish,
                    subscribe: join.grants.subscribe && allowed.subscribe,
                };
                join.offer = Some(offer);
                join.viewer = viewer;
                self.place(join)
            }
            Err(action) => vec![*action],
        }
    }

    /// A validated join: look up the node that owns its room.
    fn place(&mut self, join: Intent) -> Vec<Action> {
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
}
