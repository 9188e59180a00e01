//! Dataplane events and the ends of a session: leave, disconnect, node failure or restart,
//! worker failure, replacement by another connection.

use super::*;

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
        vec![
            Action::Send(ServerMsg::RoomClosed {
                reason: "node_failed".into()
            }),
            // If the node was only slow, the participant it still holds is removed.
            Action::Forget {
                node: "n1".into(),
                request: Request::Leave {
                    participant: "p1".into()
                }
            }
        ]
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
    assert_eq!(a, vec![req_to("n1", req.clone())]);
    assert_eq!(s.node(), Some("n1"), "the leave goes to the session's node");
    assert_eq!(
        s.handle_response(&req, Response::Ok, &ctx()),
        vec![Action::Close]
    );

    // A dropped WebSocket does not remove the participant: it may resume.
    let mut s = joined_session();
    s.handle_disconnect();
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
        vec![req_to(
            "n1",
            Request::Leave {
                participant: "p1".into()
            }
        )]
    );
}

/// A dataplane restarted under the same node id (a supervisor brought it back within a beacon)
/// lost every session: sessions an earlier incarnation confirmed get `room_closed`; a session the
/// new incarnation confirmed is untouched.
#[test]
fn a_restarted_node_closes_only_the_sessions_it_lost() {
    let mut s = joined_session();
    assert_eq!(s.incarnation(), Some("i1"));
    assert!(
        s.handle_node_restarted("n1", "i1").is_empty(),
        "same incarnation"
    );
    assert!(
        s.handle_node_restarted("other", "i2").is_empty(),
        "another node"
    );
    let a = s.handle_node_restarted("n1", "i2");
    assert!(
        matches!(&a[0], Action::Send(ServerMsg::RoomClosed { reason }) if reason == "node_failed"),
        "{a:?}"
    );
    assert!(!s.is_joined());
}

#[test]
fn worker_failure_closes_the_room_and_replaced_sessions_end() {
    let mut s = joined_session();
    assert_eq!(
        s.handle_event(Event::Gone {
            participant: "p1".into(),
            reason: LeaveReason::WorkerFailed
        }),
        vec![Action::Send(ServerMsg::RoomClosed {
            reason: "worker_failed".into()
        })]
    );
    assert!(!s.is_joined());
    let mut s = joined_session();
    assert_eq!(
        s.handle_replaced(),
        vec![
            Action::Send(ServerMsg::Left {
                reason: LeaveReason::Replaced
            }),
            Action::Close
        ]
    );
    assert!(Session::new().handle_replaced().is_empty());
}

/// A dropped WebSocket ends the session on this connection whatever its state: it holds no
/// participant any more (so the server undoes a join that lands later, and the routing table
/// releases the connection), counts against no token, and acts on nothing that still arrives.
/// The participant itself stays on its node for the resume window: no action asks to remove it.
#[test]
fn a_disconnect_ends_the_session_in_every_state() {
    let token = ResumeToken {
        node: "n1".into(),
        participant: "p1".into(),
        key: "k1".into(),
    }
    .encode();
    let placing = || {
        let mut s = Session::new();
        s.handle_text(r#"{"type":"join","room":"r","name":"a"}"#, &ctx(), || {
            "p1".into()
        });
        s
    };
    let resuming = || {
        let mut s = Session::new();
        s.handle_text(
            &format!(r#"{{"type":"join","resume":"{token}"}}"#),
            &ctx(),
            || unreachable!(),
        );
        s
    };
    let leaving = || {
        let mut s = joined_session();
        s.handle_text(r#"{"type":"leave"}"#, &ctx(), || unreachable!());
        s
    };
    let room_closed = || {
        let mut s = joined_session();
        s.handle_node_failed("n1");
        s
    };
    let join_request = join("r").1;
    let attach = Request::Attach {
        participant: "p1".into(),
        resume_key: "k1".into(),
    };
    let leave = Request::Leave {
        participant: "p1".into(),
    };
    // (state, the session, its request in flight and that request's successful answer)
    type Case = (&'static str, Session, Option<(Request, Response)>);
    let cases: Vec<Case> = vec![
        ("idle", Session::new(), None),
        ("placing", placing(), None),
        (
            "joining",
            join("r").0,
            Some((join_request, joined_response("k1"))),
        ),
        (
            "resuming",
            resuming(),
            Some((attach.clone(), attached(vec![]))),
        ),
        ("joined", joined_session(), Some((attach, attached(vec![])))),
        ("leaving", leaving(), Some((leave, Response::Ok))),
        ("after room_closed", room_closed(), None),
    ];
    for (state, mut s, in_flight) in cases {
        s.handle_disconnect();
        assert!(!s.is_active() && !s.is_joined(), "{state}");
        assert_eq!(
            (
                s.participant(),
                s.joined_participant(),
                s.node(),
                s.identity()
            ),
            (None, None, None, None),
            "{state}"
        );
        assert!(!s.holds("p1"), "{state}");
        if let Some((request, response)) = in_flight {
            assert_eq!(
                s.handle_response(&request, response, &ctx()),
                vec![],
                "{state}"
            );
            assert!(!s.holds("p1"), "{state}: a late join is not taken");
        }
        let offer = Event::Offer {
            participant: "p1".into(),
            sdp: "o".into(),
        };
        assert_eq!(s.handle_event(offer), vec![], "{state}");
        assert_eq!(s.handle_placement(placed("n1", 1)), vec![], "{state}");
        assert_eq!(s.handle_control_restored("n1"), vec![], "{state}");
        assert_eq!(s.handle_node_failed("n1"), vec![], "{state}");
        assert_eq!(s.handle_replaced(), vec![], "{state}");
        assert!(!s.is_active(), "{state}: nothing revives it");
    }
}
