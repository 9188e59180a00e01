//! Resuming with a token, and re-attaching after the control link came back.

use super::*;

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
