//! The boundary between the control protocol (the `control` crate: what signaling sends and
//! receives) and the core's own types (`sfu_core`: [`Op`], [`Reply`], [`Event`], [`Stats`]).
//! Commands are translated when the control thread hands a request to a worker; reports when the
//! worker hands them back ([`WireReport`]). Nothing else in the dataplane converts between the
//! two, and the core never sees the wire format.

use control::{
    ErrorCode as WireErrorCode, Event as WireEvent, LeaveReason as WireLeaveReason,
    ParticipantStats as WireParticipantStats, PeerInfo as WirePeer, Request, Response,
    RoomStats as WireRoomStats, WorkerStats,
};
use sfu_core::{
    Command, DropReason, ErrorCode, Event, Grants, Join, LeaveReason, Op, PeerInfo, Reply, Report,
    Stats,
};

/// What a worker reports to the control thread, in control-protocol terms.
#[derive(Debug, Clone, PartialEq)]
pub enum WireReport {
    /// The answer to the command with this `tag`.
    Response { tag: u64, response: Response },
    /// An event for one participant, routed to its signaling connection.
    Event(WireEvent),
    /// A participant no longer exists on the worker.
    ParticipantClosed { participant: String },
    /// A room became empty on the worker.
    RoomClosed { room: String },
    /// Periodic statistics (the worker adds its socket figures). Boxed: it is rare and large,
    /// and every report on the queue would otherwise be as large.
    Stats(Box<WorkerStats>),
}

/// The core command for a control request, or `None` if a worker does not handle it (`stats`,
/// `drain`, `inject_fault` are the control thread's).
pub fn command(tag: u64, request: Request) -> Option<Command> {
    let op = match request {
        Request::Join {
            room,
            participant,
            name,
            offer,
            grants,
            identity,
            epoch: _,
            viewer,
        } => Op::Join(Join {
            room: room.into(),
            participant: participant.into(),
            name,
            offer,
            grants: Grants {
                publish: grants.publish,
                subscribe: grants.subscribe,
            },
            identity,
            viewer: viewer.map(|v| sfu_core::Viewer {
                from: v.from.map(Into::into),
            }),
        }),
        Request::Answer { participant, sdp } => Op::Answer {
            participant: participant.into(),
            sdp,
        },
        Request::Offer { participant, sdp } => Op::Offer {
            participant: participant.into(),
            sdp,
        },
        Request::Leave { participant } => Op::Leave {
            participant: participant.into(),
        },
        Request::Attach {
            participant,
            resume_key,
        } => Op::Attach {
            participant: participant.into(),
            resume_key,
        },
        Request::CloseRoom { room } => Op::CloseRoom { room: room.into() },
        Request::Stats | Request::Drain | Request::InjectFault { .. } => return None,
    };
    Some(Command { tag, op })
}

/// The core's `Remove` command.
pub fn remove(participant: String, reason: WireLeaveReason) -> Op {
    Op::Remove {
        participant: participant.into(),
        reason: leave_reason_in(reason),
    }
}

/// A core report in control-protocol terms.
pub fn report(report: Report) -> WireReport {
    match report {
        Report::Reply { tag, reply: r } => WireReport::Response {
            tag,
            response: reply(r),
        },
        Report::Event(e) => WireReport::Event(event(e)),
        Report::ParticipantClosed { participant } => WireReport::ParticipantClosed {
            participant: participant.into(),
        },
        Report::RoomClosed { room } => WireReport::RoomClosed { room: room.into() },
        Report::Stats(s) => WireReport::Stats(Box::new(stats(*s))),
    }
}

/// A core reply as a control response. `incarnation` is left empty: the control thread fills in
/// its own.
pub fn reply(reply: Reply) -> Response {
    match reply {
        Reply::Joined {
            answer,
            worker,
            port,
            participants,
            resume_key,
        } => Response::Joined {
            answer,
            worker,
            port,
            participants: participants.into_iter().map(peer).collect(),
            resume_key,
            incarnation: String::new(),
        },
        Reply::Answer { sdp } => Response::Answer { sdp },
        Reply::Attached {
            room,
            name,
            participants,
            identity,
        } => Response::Attached {
            room: room.into(),
            name,
            participants: participants.into_iter().map(peer).collect(),
            incarnation: String::new(),
            identity,
        },
        Reply::Ok => Response::Ok,
        Reply::Error { code, message } => Response::Error {
            code: error_code(code),
            message,
        },
    }
}

/// A core event as a control event.
pub fn event(event: Event) -> WireEvent {
    match event {
        Event::PeerJoined {
            participant,
            peer: p,
        } => WireEvent::PeerJoined {
            participant: participant.into(),
            peer: peer(p),
        },
        Event::PeerLeft {
            participant,
            peer_id,
            reason,
        } => WireEvent::PeerLeft {
            participant: participant.into(),
            peer_id: peer_id.into(),
            reason: leave_reason(reason),
        },
        Event::Offer { participant, sdp } => WireEvent::Offer {
            participant: participant.into(),
            sdp,
        },
        Event::Gone {
            participant,
            reason,
        } => WireEvent::Gone {
            participant: participant.into(),
            reason: leave_reason(reason),
        },
    }
}

/// A core statistics snapshot as the control protocol's worker statistics (socket figures and
/// the busy ratio zero: the worker loop fills them in).
pub fn stats(s: Stats) -> WorkerStats {
    let c = &s.counters;
    WorkerStats {
        worker: s.worker,
        port: s.port,
        rooms: s
            .rooms
            .into_iter()
            .map(|r| WireRoomStats {
                room: r.room.into(),
                participants: r
                    .participants
                    .into_iter()
                    .map(|p| WireParticipantStats {
                        id: p.id.into(),
                        name: p.name,
                        connected: p.connected,
                        tracks_in: p.tracks_in,
                        tracks_out: p.tracks_out,
                        rtp_in: p.rtp_in,
                        rtp_out: p.rtp_out,
                    })
                    .collect(),
            })
            .collect(),
        participants: s.participants,
        datagrams_in: c.datagrams_in,
        datagrams_out: c.datagrams_out,
        bytes_in: c.bytes_in,
        bytes_out: c.bytes_out,
        rtp_in: c.rtp_in,
        rtp_forwarded: c.rtp_forwarded,
        keyframe_requests: c.keyframe_requests,
        chat_messages: c.chat_messages,
        nacks_received: c.nacks_received,
        drops: DropReason::ALL
            .iter()
            .map(|r| (r.as_str().to_string(), c.dropped(*r)))
            .filter(|(_, n)| *n > 0)
            .collect(),
        join_seconds: s.join_seconds,
        ..WorkerStats::default()
    }
}

fn peer(p: PeerInfo) -> WirePeer {
    WirePeer {
        id: p.id.into(),
        name: p.name,
    }
}

fn error_code(code: ErrorCode) -> WireErrorCode {
    match code {
        ErrorCode::BadRequest => WireErrorCode::BadRequest,
        ErrorCode::UnknownParticipant => WireErrorCode::UnknownParticipant,
        ErrorCode::DuplicateParticipant => WireErrorCode::DuplicateParticipant,
        ErrorCode::RoomFull => WireErrorCode::RoomFull,
        ErrorCode::Unavailable => WireErrorCode::Unavailable,
        ErrorCode::Internal => WireErrorCode::Internal,
    }
}

/// A core leave reason in control-protocol terms.
pub fn leave_reason(r: LeaveReason) -> WireLeaveReason {
    match r {
        LeaveReason::Left => WireLeaveReason::Left,
        LeaveReason::Timeout => WireLeaveReason::Timeout,
        LeaveReason::Closed => WireLeaveReason::Closed,
        LeaveReason::Failed => WireLeaveReason::Failed,
        LeaveReason::Shutdown => WireLeaveReason::Shutdown,
        LeaveReason::Moved => WireLeaveReason::Moved,
        LeaveReason::Abandoned => WireLeaveReason::Abandoned,
        LeaveReason::RoomClosed => WireLeaveReason::RoomClosed,
        LeaveReason::WorkerFailed => WireLeaveReason::WorkerFailed,
        LeaveReason::Replaced => WireLeaveReason::Replaced,
    }
}

/// A control-protocol leave reason in core terms.
pub fn leave_reason_in(r: WireLeaveReason) -> LeaveReason {
    match r {
        WireLeaveReason::Left => LeaveReason::Left,
        WireLeaveReason::Timeout => LeaveReason::Timeout,
        WireLeaveReason::Closed => LeaveReason::Closed,
        WireLeaveReason::Failed => LeaveReason::Failed,
        WireLeaveReason::Shutdown => LeaveReason::Shutdown,
        WireLeaveReason::Moved => LeaveReason::Moved,
        WireLeaveReason::Abandoned => LeaveReason::Abandoned,
        WireLeaveReason::RoomClosed => LeaveReason::RoomClosed,
        WireLeaveReason::WorkerFailed => LeaveReason::WorkerFailed,
        WireLeaveReason::Replaced => LeaveReason::Replaced,
        // `LeaveReason` is non-exhaustive on the wire; a reason this build does not know is a
        // plain failure for the core.
        _ => LeaveReason::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use control::Grants as WireGrants;

    #[test]
    fn every_worker_request_becomes_a_command_and_the_rest_stay_with_the_control_thread() {
        let join = Request::Join {
            room: "r".into(),
            participant: "p".into(),
            name: "n".into(),
            offer: Some("sdp".into()),
            epoch: Some(3),
            grants: WireGrants {
                publish: false,
                subscribe: true,
            },
            identity: Some("u".into()),
            viewer: None,
        };
        let Some(Command {
            tag: 9,
            op: Op::Join(j),
        }) = command(9, join)
        else {
            panic!("join must become Op::Join");
        };
        assert_eq!(j.room, "r");
        assert_eq!(j.participant, "p");
        assert_eq!(j.offer.as_deref(), Some("sdp"));
        assert!(!j.grants.publish && j.grants.subscribe);
        assert_eq!(j.identity.as_deref(), Some("u"));
        for r in [Request::Stats, Request::Drain] {
            assert!(command(1, r).is_none());
        }
        assert!(matches!(
            command(1, Request::CloseRoom { room: "x".into() }),
            Some(Command { op: Op::CloseRoom { room }, .. }) if room == "x"
        ));
    }

    #[test]
    fn leave_reasons_survive_the_round_trip() {
        for r in [
            LeaveReason::Left,
            LeaveReason::Timeout,
            LeaveReason::Closed,
            LeaveReason::Failed,
            LeaveReason::Shutdown,
            LeaveReason::Moved,
            LeaveReason::Abandoned,
            LeaveReason::RoomClosed,
            LeaveReason::WorkerFailed,
            LeaveReason::Replaced,
        ] {
            assert_eq!(leave_reason_in(leave_reason(r)), r);
        }
    }

    #[test]
    fn replies_and_events_keep_every_field() {
        let r = reply(Reply::Joined {
            answer: Some("a".into()),
            worker: 2,
            port: 40002,
            participants: vec![PeerInfo {
                id: "q".into(),
                name: "Q".into(),
            }],
            resume_key: "k".into(),
        });
        assert_eq!(
            r,
            Response::Joined {
                answer: Some("a".into()),
                worker: 2,
                port: 40002,
                participants: vec![WirePeer {
                    id: "q".into(),
                    name: "Q".into()
                }],
                resume_key: "k".into(),
                incarnation: String::new(),
            }
        );
        let e = event(Event::PeerLeft {
            participant: "a".into(),
            peer_id: "b".into(),
            reason: LeaveReason::Timeout,
        });
        assert_eq!(
            e,
            WireEvent::PeerLeft {
                participant: "a".into(),
                peer_id: "b".into(),
                reason: WireLeaveReason::Timeout
            }
        );
        assert_eq!(
            reply(Reply::error(ErrorCode::RoomFull, "full")),
            Response::error(WireErrorCode::RoomFull, "full")
        );
    }
}
