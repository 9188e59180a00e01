//! Table and scenario tests of the session state machine.

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
        incarnation: "i1".into(),
    }
}

fn req_to(node: &str, request: Request) -> Action {
    Action::Request {
        node: node.into(),
        request,
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
    let Some(Action::Request { node, request: req }) = a.into_iter().next() else {
        panic!("no join request")
    };
    assert!(
        matches!(&req, Request::Join { epoch: Some(7), participant, name, .. } if participant == "p1" && name == "Al")
    );
    assert_eq!((s.node(), node.as_str()), (Some("n1"), "n1"));
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
    assert_eq!(a, vec![req_to("n1", offer.clone())]);
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
    assert_eq!(a, vec![req_to("n2", attach.clone())]);
    assert_eq!(s.node(), Some("n2"));
    let a = s.handle_response(
        &attach,
        Response::Attached {
            room: "r".into(),
            name: "Nine".into(),
            participants: vec![],
            incarnation: "i1".into(),
            identity: Some("user-9".into()),
        },
        &ctx(),
    );
    assert!(
        matches!(&a[..], [Action::Send(ServerMsg::Joined { resumed: true, participant, .. })] if participant.id == "p9" && participant.name == "Nine")
    );
    assert!(s.is_joined());
    assert_eq!(
        s.identity(),
        Some("user-9"),
        "a resumed session counts against its identity's session limit"
    );

    // An expired session: resume_failed, and the connection can join normally.
    let mut s = Session::new();
    let a = s.handle_text(
        &format!(r#"{{"type":"join","resume":"{token}"}}"#),
        &ctx(),
        || unreachable!(),
    );
    let Action::Request {
        request: attach, ..
    } = &a[0]
    else {
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
    let Action::Request { request: req2, .. } = &a[0] else {
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
        nbf: None,
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
    let Action::Request { request: req, .. } = &a[0] else {
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

fn peer(id: &str) -> PeerInfo {
    PeerInfo {
        id: id.into(),
        name: id.to_uppercase(),
    }
}

fn attached(participants: Vec<PeerInfo>) -> Response {
    Response::Attached {
        room: "r".into(),
        name: "Al".into(),
        participants,
        incarnation: "i1".into(),
        identity: None,
    }
}

/// Defect: after a control reconnect every re-attached session became `Idle` (its answers got
/// "join the room first", it never heard of newcomers). Two reconnects in a row, the first
/// re-attach lost with the link; then events and answers still work, and what the client
/// missed while the link was down is sent.
#[test]
fn reattach_after_control_reconnects_keeps_the_session_joined() {
    let (mut s, req) = join("r");
    let joined = Response::Joined {
        answer: None,
        worker: 0,
        port: 1,
        participants: vec![peer("p2"), peer("p3")],
        resume_key: "k1".into(),
        incarnation: "i1".into(),
    };
    s.handle_response(&req, joined, &ctx());
    assert!(s.handle_control_restored("other-node").is_empty());
    let attach = Request::Attach {
        participant: "p1".into(),
        resume_key: "k1".into(),
    };
    assert_eq!(
        s.handle_control_restored("n1"),
        vec![req_to("n1", attach.clone())]
    );
    // The link drops again before the answer: the request fails with `unavailable`.
    let lost = Response::error(control::ErrorCode::Unavailable, "link lost");
    assert!(s.handle_response(&attach, lost, &ctx()).is_empty());
    assert!(s.is_joined(), "still joined after a lost re-attach");
    assert_eq!(
        s.handle_control_restored("n1"),
        vec![req_to("n1", attach.clone())]
    );
    // Meanwhile p3 left and p4 came.
    let a = s.handle_response(&attach, attached(vec![peer("p2"), peer("p4")]), &ctx());
    assert_eq!(
        a,
        vec![
            Action::Send(ServerMsg::ParticipantJoined {
                participant: peer("p4")
            }),
            Action::Send(ServerMsg::ParticipantLeft {
                participant_id: "p3".into()
            }),
        ]
    );
    assert!(s.is_joined());
    assert_eq!(s.joined_participant(), Some("p1"));
    // The re-attach re-sends an outstanding offer the client already has: relayed once.
    let offer = Event::Offer {
        participant: "p1".into(),
        sdp: "o1".into(),
    };
    assert_eq!(s.handle_event(offer.clone()).len(), 1);
    assert!(
        s.handle_event(offer).is_empty(),
        "the same offer twice in a row"
    );
    // An event and an answer still work.
    assert_eq!(
        s.handle_event(Event::PeerJoined {
            participant: "p1".into(),
            peer: peer("p5")
        }),
        vec![Action::Send(ServerMsg::ParticipantJoined {
            participant: peer("p5")
        })]
    );
    assert_eq!(
        s.handle_text(r#"{"type":"answer","sdp":"a"}"#, &ctx(), || unreachable!()),
        vec![req_to(
            "n1",
            Request::Answer {
                participant: "p1".into(),
                sdp: "a".into()
            }
        )]
    );
    // A re-attach answered "unknown participant": the session is gone.
    s.handle_control_restored("n1");
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

/// Defect: a session must ignore events that are not about its own participant (a stale route
/// after a dropped WebSocket delivered another participant's events, across rooms).
#[test]
fn events_for_other_participants_are_ignored() {
    let mut s = joined_session();
    for ev in [
        Event::PeerJoined {
            participant: "victim".into(),
            peer: peer("x"),
        },
        Event::Offer {
            participant: "victim".into(),
            sdp: "o".into(),
        },
        Event::Gone {
            participant: "victim".into(),
            reason: LeaveReason::Timeout,
        },
    ] {
        assert!(s.handle_event(ev).is_empty());
    }
    assert!(
        s.is_joined(),
        "another participant's timeout does not close us"
    );
    // Nor before the join is confirmed.
    let (mut s, _) = join("r");
    assert!(
        s.handle_event(Event::Offer {
            participant: "p1".into(),
            sdp: "o".into()
        })
        .is_empty()
    );
}

/// Responses that belong to an earlier state of the connection change nothing.
#[test]
fn stale_responses_are_dropped() {
    let mut s = joined_session();
    let old_offer = Request::Offer {
        participant: "someone-else".into(),
        sdp: "o".into(),
    };
    assert!(
        s.handle_response(&old_offer, Response::Answer { sdp: "a".into() }, &ctx())
            .is_empty()
    );
    assert!(
        s.handle_response(
            &Request::Leave {
                participant: "p1".into()
            },
            Response::Ok,
            &ctx()
        )
        .is_empty(),
        "a leave answer outside Leaving does not close the session"
    );
    assert!(s.is_joined());
    // After room_closed the connection is Idle: a late answer is not forwarded.
    s.handle_node_failed("n1");
    let offer = Request::Offer {
        participant: "p1".into(),
        sdp: "o".into(),
    };
    assert!(
        s.handle_response(&offer, Response::Answer { sdp: "a".into() }, &ctx())
            .is_empty()
    );
    assert!(
        s.handle_placement(placed("n1", 1)).is_empty(),
        "not placing"
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

#[test]
fn refused_joins_return_to_idle() {
    let mut s = Session::new();
    s.handle_text(r#"{"type":"join","room":"r","name":"a"}"#, &ctx(), || {
        "p".into()
    });
    assert_eq!(
        error_code(&s.refuse_join(ErrorCode::RateLimited, "slow down")),
        Some(ErrorCode::RateLimited)
    );
    assert!(!s.is_active());
    assert!(
        joined_session()
            .refuse_join(ErrorCode::RateLimited, "x")
            .is_empty()
    );
}
