//! Joining: placement, the join and its answer, retries, auth and TURN, refused joins.

use super::*;

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
