//! What a session refuses or ignores: bad input, events for other participants, stale
//! responses.

use super::*;

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
