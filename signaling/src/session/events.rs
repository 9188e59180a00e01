//! What the dataplane and the server report about a joined session: events for its own
//! participant (peers joining and leaving, offers once each, its end), and what ends it from
//! outside: another connection resumed it, its node failed or restarted, its WebSocket closed.

use control::{Event, LeaveReason, Request};

use super::{Action, Session, State};
use crate::protocol::ServerMsg;

impl Session {
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
}
