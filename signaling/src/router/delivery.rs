//! Which way a control request goes ([`Links::path`]: the local control socket, Redis, or
//! nowhere) and what a dataplane's answer means for routing ([`Answer`]: a session confirmed, a
//! join to undo). Pure.
//!
//! The path rule: a session's events follow the path its join or resume was confirmed over, so
//! in cluster mode a session confirmed over Redis keeps sending over Redis even when the local
//! socket is up — its responses and events never overtake each other on two channels. A new join
//! or resume takes the socket when it can.

use control::{Request, Response};

/// The way a request takes to its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// This instance's own control socket (the node is the local one and the socket is up).
    Socket,
    /// Redis pub/sub (cluster mode).
    Redis,
    /// Neither: the request fails with `unavailable` at once.
    Unreachable,
}

/// What the server knows about its links to the dataplanes when it sends a request.
#[derive(Debug, Clone, Copy)]
pub struct Links<'a> {
    /// The node behind the local control socket, once it said who it is.
    pub local_node: Option<&'a str>,
    /// The local control socket is up (its handshake is done).
    pub socket_ready: bool,
    /// Cluster mode: Redis reaches every node.
    pub cluster: bool,
}

impl Links<'_> {
    /// The path of `request` to `node`, for a session whose join or resume was confirmed over
    /// the socket (`via_socket: Some(true)`), Redis (`Some(false)`) or not yet (`None`, also
    /// for requests of no session).
    pub fn path(&self, node: &str, request: &Request, via_socket: Option<bool>) -> Path {
        let pinned_to_redis = !matches!(request, Request::Join { .. } | Request::Attach { .. })
            && self.cluster
            && via_socket == Some(false);
        if self.local_node == Some(node) && self.socket_ready && !pinned_to_redis {
            Path::Socket
        } else if self.cluster {
            Path::Redis
        } else {
            Path::Unreachable
        }
    }
}

/// A request that starts a session (counted and timed per kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Join,
    Resume,
}

/// What an answer to a control request means for routing, read before the session consumes
/// it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The request was a join or a resume (`attach`).
    pub start: Option<Start>,
    /// The answer is not an error. A started session that succeeded keeps to the path its
    /// request took (see the module docs).
    pub ok: bool,
    /// The node confirmed a session (`joined`, `attached`), run by this incarnation.
    pub incarnation: Option<String>,
    /// A `joined` for this participant: unless the session that asked takes it (the connection
    /// is gone, or the session was closed or moved on meanwhile), it must be undone with a
    /// `leave`, or the node would keep the participant as ours, never orphaned, never removed.
    pub joined: Option<String>,
}

impl Answer {
    pub fn of(request: &Request, response: &Response) -> Self {
        let start = match request {
            Request::Join { .. } => Some(Start::Join),
            Request::Attach { .. } => Some(Start::Resume),
            _ => None,
        };
        let incarnation = match response {
            Response::Joined { incarnation, .. } | Response::Attached { incarnation, .. } => {
                Some(incarnation.clone())
            }
            _ => None,
        };
        let joined = match (request, response) {
            (Request::Join { participant, .. }, Response::Joined { .. }) => {
                Some(participant.clone())
            }
            _ => None,
        };
        Self {
            start,
            ok: !matches!(response, Response::Error { .. }),
            incarnation,
            joined,
        }
    }

    /// The session's connection now reaches its node over the path its request took
    /// (`Some(true)`: the socket), or keeps the path it had (`None`).
    pub fn confirmed_path(&self, over_socket: bool) -> Option<bool> {
        (self.start.is_some() && self.ok).then_some(over_socket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(participant: &str) -> Request {
        Request::Join {
            room: "r".into(),
            participant: participant.into(),
            name: "n".into(),
            offer: None,
            epoch: None,
            grants: control::Grants::default(),
            identity: None,
            viewer: None,
        }
    }

    fn attach() -> Request {
        Request::Attach {
            participant: "p1".into(),
            resume_key: "k".into(),
        }
    }

    fn offer() -> Request {
        Request::Offer {
            participant: "p1".into(),
            sdp: "o".into(),
        }
    }

    #[test]
    fn requests_take_the_socket_redis_or_fail() {
        use Path::{Redis, Socket, Unreachable};
        // (local node, socket ready, cluster, node, request, session's path, expected)
        type Case = (
            Option<&'static str>,
            bool,
            bool,
            &'static str,
            Request,
            Option<bool>,
            Path,
        );
        let cases: Vec<Case> = vec![
            // Single node: the socket or nothing.
            (Some("n1"), true, false, "n1", join("p1"), None, Socket),
            (
                Some("n1"),
                false,
                false,
                "n1",
                join("p1"),
                None,
                Unreachable,
            ),
            (None, false, false, "n1", join("p1"), None, Unreachable),
            (
                Some("n1"),
                true,
                false,
                "n2",
                offer(),
                Some(true),
                Unreachable,
            ),
            // Pinning to Redis is a cluster-mode rule only.
            (Some("n1"), true, false, "n1", offer(), Some(false), Socket),
            // Cluster: the local node over the socket while it is up, else Redis.
            (Some("n1"), true, true, "n1", join("p1"), None, Socket),
            (Some("n1"), false, true, "n1", join("p1"), None, Redis),
            (Some("n1"), true, true, "n2", join("p1"), None, Redis),
            (None, false, true, "n1", attach(), None, Redis),
            // A session confirmed over Redis keeps to Redis for its offers, answers, leaves...
            (Some("n1"), true, true, "n1", offer(), Some(false), Redis),
            (
                Some("n1"),
                true,
                true,
                "n1",
                Request::Leave {
                    participant: "p1".into(),
                },
                Some(false),
                Redis,
            ),
            // ... but a new join or resume takes the socket.
            (
                Some("n1"),
                true,
                true,
                "n1",
                join("p1"),
                Some(false),
                Socket,
            ),
            (Some("n1"), true, true, "n1", attach(), Some(false), Socket),
            (Some("n1"), true, true, "n1", offer(), Some(true), Socket),
            (Some("n1"), true, true, "n1", offer(), None, Socket),
        ];
        for (local_node, socket_ready, cluster, node, request, via, want) in cases {
            let links = Links {
                local_node,
                socket_ready,
                cluster,
            };
            assert_eq!(
                links.path(node, &request, via),
                want,
                "{links:?} to {node}: {request:?} via {via:?}"
            );
        }
    }

    #[test]
    fn answers_tell_what_was_confirmed_and_what_to_undo() {
        let joined = Response::Joined {
            answer: None,
            worker: 0,
            port: 1,
            participants: vec![],
            resume_key: "k".into(),
            incarnation: "i1".into(),
        };
        let attached = Response::Attached {
            room: "r".into(),
            name: "n".into(),
            participants: vec![],
            incarnation: "i2".into(),
            identity: None,
        };
        let error = Response::error(control::ErrorCode::Unavailable, "x");
        let answer = Response::Answer { sdp: "a".into() };
        // (request, response, start, ok, incarnation, joined participant)
        type Case<'a> = (
            Request,
            &'a Response,
            Option<Start>,
            bool,
            Option<&'a str>,
            Option<&'a str>,
        );
        let cases: Vec<Case<'_>> = vec![
            (
                join("p1"),
                &joined,
                Some(Start::Join),
                true,
                Some("i1"),
                Some("p1"),
            ),
            (join("p1"), &error, Some(Start::Join), false, None, None),
            (
                attach(),
                &attached,
                Some(Start::Resume),
                true,
                Some("i2"),
                None,
            ),
            (attach(), &error, Some(Start::Resume), false, None, None),
            (offer(), &answer, None, true, None, None),
            (offer(), &error, None, false, None, None),
            (
                Request::Leave {
                    participant: "p1".into(),
                },
                &Response::Ok,
                None,
                true,
                None,
                None,
            ),
            // A `joined` answering anything but a join names no participant to undo.
            (
                attach(),
                &joined,
                Some(Start::Resume),
                true,
                Some("i1"),
                None,
            ),
        ];
        for (request, response, start, ok, incarnation, joined) in cases {
            let a = Answer::of(&request, response);
            assert_eq!(
                (a.start, a.ok, a.incarnation.as_deref(), a.joined.as_deref()),
                (start, ok, incarnation, joined),
                "{request:?} → {response:?}"
            );
            // Only a successful join or resume moves the session's path.
            let moves = start.is_some() && ok;
            assert_eq!(a.confirmed_path(true), moves.then_some(true));
            assert_eq!(a.confirmed_path(false), moves.then_some(false));
        }
    }
}
