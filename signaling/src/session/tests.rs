//! Table and scenario tests of the session state machine, by concern: joining
//! (`tests/join.rs`), resuming and re-attaching (`tests/resume.rs`), what a session refuses or
//! ignores (`tests/errors.rs`), and events and the ends of a session (`tests/events.rs`). The
//! builders they share are here.

use super::*;
use control::{Event, LeaveReason};
use registry::{Placement, RegistryError};

mod errors;
mod events;
mod join;
mod resume;

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
