//! Control messages. Every frame holds one JSON object tagged by `kind`.

use serde::{Deserialize, Serialize};

/// Messages from a control client (signaling) to the dataplane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ToDataplane {
    /// First frame of every connection.
    Hello {
        /// Protocol version the client speaks ([`crate::PROTOCOL_VERSION`]).
        version: u32,
        /// Free-form client name for logs (e.g. `signaling@host:pid`).
        client: String,
        /// The signaling instance's id (its reply channel name in cluster mode), so the
        /// dataplane knows a local connection and Redis relays from the same instance apart
        /// from another instance's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signaling_id: Option<String>,
    },
    /// A request; answered by exactly one [`FromDataplane::Response`] with the same `id`.
    Request { id: u64, request: Request },
}

/// Messages from the dataplane to a control client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FromDataplane {
    /// Handshake accepted.
    Welcome {
        version: u32,
        /// Stable id of this dataplane process (random per start unless configured).
        node_id: String,
        /// Number of media workers (one UDP port each).
        workers: u32,
        /// Random per process start: a changed value means the dataplane restarted (and every
        /// session it held is gone), even under the same node id.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        incarnation: String,
    },
    /// Answer to the request with the same `id`.
    Response { id: u64, response: Response },
    /// Unsolicited event for one participant.
    Event { event: Event },
    /// Unsolicited health report, sent to every connection every 2 s: the dataplane is alive and
    /// this is its load.
    Health { stats: NodeStats },
}

/// Requests a control client can make.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Create `participant` in `room`. Answered by [`Response::Joined`]; the requesting
    /// connection owns the participant's events. With `offer` the client's first SDP offer is
    /// answered at once (`Joined.answer`); without it the participant's slot is reserved and the
    /// first offer comes later as [`Request::Offer`] (what signaling does: the client needs
    /// `joined.ice_servers` before it can create its offer).
    Join {
        room: String,
        participant: String,
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offer: Option<String>,
        /// Fencing epoch of the room's placement (cluster mode). A join carrying an older epoch
        /// than the dataplane knows for the room is refused with `unavailable`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<u64>,
        /// What the participant may do (from its token); everything by default.
        #[serde(default)]
        grants: Grants,
        /// The join token's identity (`sub`), kept with the participant and returned by
        /// [`Response::Attached`], so a resumed session still counts against the identity's
        /// session limit.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        identity: Option<String>,
        /// A viewer that cannot renegotiate (WHEP): its `offer`'s recvonly audio/video sections
        /// are filled with the room's tracks instead of server offers adding m-lines.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        viewer: Option<Viewer>,
    },
    /// The client's SDP answer to the last [`Event::Offer`]. Answered by [`Response::Ok`].
    Answer { participant: String, sdp: String },
    /// A client-initiated SDP offer (renegotiation). Answered by [`Response::Answer`].
    /// If a server offer is outstanding it is rolled back (the server is the polite peer) and sent
    /// again, updated, after this answer.
    Offer { participant: String, sdp: String },
    /// Remove the participant. Answered by [`Response::Ok`].
    Leave { participant: String },
    /// Route the participant's events to this connection (session resume after a signaling
    /// restart or reconnect). `resume_key` must be the key from its `joined` response. Answered by
    /// [`Response::Attached`]; an outstanding server offer is re-sent as an event.
    Attach {
        participant: String,
        resume_key: String,
    },
    /// Node, room and participant statistics. Answered by [`Response::Stats`].
    Stats,
    /// Stop taking new rooms, let existing rooms finish, then deregister and exit.
    /// Answered by [`Response::Ok`].
    Drain,
    /// Remove every participant of a room (reason `closed` for them). Answered by [`Response::Ok`].
    CloseRoom { room: String },
    /// **Tests only**: inject a fault to exercise recovery. Refused with `bad_request` unless the
    /// dataplane runs with `--test-faults`. Answered by [`Response::Ok`].
    InjectFault { fault: Fault },
}

/// A fault [`Request::InjectFault`] can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Worker `worker` panics (its supervisor restarts it).
    WorkerPanic { worker: u32 },
    /// Every local control connection is closed (signaling reconnects and re-attaches).
    DropControlLinks,
}

/// What a participant may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    /// Its tracks are forwarded to others.
    pub publish: bool,
    /// It receives the others' tracks.
    pub subscribe: bool,
}

impl Default for Grants {
    fn default() -> Self {
        Self {
            publish: true,
            subscribe: true,
        }
    }
}

/// A viewer's slots: whose tracks fill them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Viewer {
    /// Only this participant's tracks; anyone's in the room when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

/// Responses to [`Request`]s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Joined {
        /// SDP answer to the join offer, if the join carried one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        answer: Option<String>,
        /// Worker (core) that hosts the room.
        worker: u32,
        /// UDP port of that worker; the answer's only candidate uses it.
        port: u16,
        /// The other participants already in the room.
        participants: Vec<PeerInfo>,
        /// Secret that authorizes a later [`Request::Attach`] of this participant.
        #[serde(default)]
        resume_key: String,
        /// The dataplane process's incarnation (random per start; see [`Beacon::incarnation`]).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        incarnation: String,
    },
    Answer {
        sdp: String,
    },
    Attached {
        room: String,
        /// The participant's display name.
        #[serde(default)]
        name: String,
        participants: Vec<PeerInfo>,
        /// The dataplane process's incarnation.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        incarnation: String,
        /// The identity the participant joined with ([`Request::Join`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        identity: Option<String>,
    },
    Stats(NodeStats),
    Ok,
    Error {
        code: ErrorCode,
        message: String,
    },
}

impl Response {
    /// An error response.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Response::Error {
            code,
            message: message.into(),
        }
    }
}

/// Machine-readable error codes. Signaling maps them onto its client-facing codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// Malformed request or SDP.
    BadRequest,
    /// The participant id is unknown to this dataplane.
    UnknownParticipant,
    /// The participant id is already in use.
    DuplicateParticipant,
    /// The room has reached its participant limit.
    RoomFull,
    /// The node cannot take more (rooms limit, shutting down, worker queue full).
    Unavailable,
    /// The client's protocol version is not supported.
    UnsupportedVersion,
    /// A bug or an unexpected failure inside the dataplane.
    Internal,
}

/// Unsolicited events, each addressed to one participant (`participant`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Another participant joined the recipient's room.
    PeerJoined { participant: String, peer: PeerInfo },
    /// Another participant left the recipient's room.
    PeerLeft {
        participant: String,
        peer_id: String,
        reason: LeaveReason,
    },
    /// The set of tracks the recipient should receive changed: forward this SDP offer to the client
    /// and send its answer back with [`Request::Answer`].
    Offer { participant: String, sdp: String },
    /// The recipient itself was removed by the dataplane (not by a [`Request::Leave`]).
    Gone {
        participant: String,
        reason: LeaveReason,
    },
}

impl Event {
    /// The participant this event is addressed to.
    pub fn participant(&self) -> &str {
        match self {
            Event::PeerJoined { participant, .. }
            | Event::PeerLeft { participant, .. }
            | Event::Offer { participant, .. }
            | Event::Gone { participant, .. } => participant,
        }
    }
}

/// Why a participant left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LeaveReason {
    /// It asked to leave.
    Left,
    /// No packet from it for the ICE timeout.
    Timeout,
    /// Its peer connection closed (DTLS close_notify or SCTP shutdown).
    Closed,
    /// Its session failed inside the dataplane (e.g. a str0m error); other sessions are unaffected.
    Failed,
    /// The dataplane is shutting down.
    Shutdown,
    /// Its room now belongs to another node (fencing after a partition); rejoin.
    Moved,
    /// No signaling connection owned it for the resume window.
    Abandoned,
    /// Its room was closed by an operator (`close_room`).
    RoomClosed,
    /// The worker hosting its room failed and was restarted; rejoin.
    WorkerFailed,
    /// Its session was resumed on another signaling connection; this one is over.
    Replaced,
}

impl LeaveReason {
    /// The `room_closed.reason` a client gets when this removal means "the room is gone from its
    /// node, join again", or `None` when the client itself is out (`left`).
    pub fn room_closed(self) -> Option<&'static str> {
        match self {
            LeaveReason::Moved => Some("moved"),
            LeaveReason::WorkerFailed => Some("worker_failed"),
            _ => None,
        }
    }
}

/// A control request carried over Redis pub/sub to a node's `rpc` channel (cluster mode).
/// Replies ([`FromDataplane`]) go to the `reply_channel` of the sending signaling instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RpcEnvelope {
    /// Id of the sending signaling instance.
    pub from: String,
    pub msg: ToDataplane,
}

/// A liveness beacon published on the health channel every 500 ms by every process (and a
/// [`BeaconKind::NodeDown`] notice when a local dataplane is seen gone).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Beacon {
    pub kind: BeaconKind,
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draining: Option<bool>,
    /// Dataplanes: random per process start. A node that restarted under the same id (a
    /// supervisor brings it back within a beacon or two) has lost every session, and
    /// signaling instances close those sessions' rooms for their clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BeaconKind {
    Dataplane,
    Signaling,
    /// Published by a signaling instance about the dataplane `id` on its own host: its control
    /// socket closed and nothing listens there any more (the process is gone). Other instances
    /// act on it once that node's own beacons have stopped too.
    NodeDown,
}

/// Public identity of a participant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    pub id: String,
    pub name: String,
}

/// Aggregated statistics of a dataplane node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStats {
    pub node_id: String,
    pub workers: Vec<WorkerStats>,
}

/// Statistics of one worker (core).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerStats {
    pub worker: u32,
    pub port: u16,
    pub rooms: Vec<RoomStats>,
    pub participants: u32,
    /// UDP datagrams received / sent.
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// RTP packets received from publishers / written to subscribers.
    pub rtp_in: u64,
    pub rtp_forwarded: u64,
    /// Keyframe requests sent to publishers.
    pub keyframe_requests: u64,
    pub chat_messages: u64,
    /// Dropped input by reason (see `docs/control.md` for the reasons).
    pub drops: Vec<(String, u64)>,
    /// Socket layer: receive calls (recvmmsg), send calls (sendmsg; one per GSO run), GSO sends,
    /// send errors, datagrams dropped because the send backlog was full.
    #[serde(default)]
    pub udp_recv_calls: u64,
    #[serde(default)]
    pub udp_send_calls: u64,
    #[serde(default)]
    pub udp_gso_sends: u64,
    #[serde(default)]
    pub udp_send_errors: u64,
    #[serde(default)]
    pub udp_backlog_drops: u64,
    /// ICE-TCP: open connections; connections accepted, refused at accept (over a limit),
    /// evicted (unbound, to make room at the worker limit), closed for not speaking ICE, closed by the handshake or idle timeout; frames received and
    /// sent; datagrams dropped because a connection's write buffer was full (slow reader).
    #[serde(default)]
    pub tcp_connections: u64,
    #[serde(default)]
    pub tcp_accepted: u64,
    #[serde(default)]
    pub tcp_refused: u64,
    #[serde(default)]
    pub tcp_evicted: u64,
    #[serde(default)]
    pub tcp_garbage: u64,
    #[serde(default)]
    pub tcp_timeouts: u64,
    #[serde(default)]
    pub tcp_frames_in: u64,
    #[serde(default)]
    pub tcp_frames_out: u64,
    #[serde(default)]
    pub tcp_send_drops: u64,
    /// ICE-TCP read and write system calls (with the UDP ones: syscalls per forwarded packet).
    #[serde(default)]
    pub tcp_recv_calls: u64,
    #[serde(default)]
    pub tcp_send_calls: u64,
    /// NACKs received from subscribers (answered from the RTX cache by str0m).
    #[serde(default)]
    pub nacks_received: u64,
    /// Join → connected durations (seconds) of participants that connected since the last report.
    #[serde(default)]
    pub join_seconds: Vec<f64>,
    /// Fraction of wall time the worker loop spent working (not waiting in `poll`) since the last
    /// report.
    #[serde(default)]
    pub busy_ratio: f64,
}

/// Statistics of one room.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RoomStats {
    pub room: String,
    pub participants: Vec<ParticipantStats>,
}

/// Statistics of one participant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ParticipantStats {
    pub id: String,
    pub name: String,
    pub connected: bool,
    pub tracks_in: u32,
    pub tracks_out: u32,
    pub rtp_in: u64,
    pub rtp_out: u64,
}

/// Decode one frame payload as a message.
pub fn decode<T: serde::de::DeserializeOwned>(frame: &[u8]) -> Result<T, crate::CodecError> {
    serde_json::from_slice(frame).map_err(|e| crate::CodecError::Malformed {
        reason: e.to_string(),
    })
}

/// Encode a message as one frame payload.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serializing these plain data types to JSON cannot fail: no maps with non-string keys, no
    // custom Serialize impls.
    serde_json::to_vec(msg).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_with_stable_tags() {
        let msg = ToDataplane::Request {
            id: 7,
            request: Request::Join {
                room: "r".into(),
                participant: "p".into(),
                name: "n".into(),
                offer: Some("v=0".into()),
                epoch: None,
                grants: Grants::default(),
                identity: None,
                viewer: None,
            },
        };
        let json = String::from_utf8(encode(&msg)).expect("utf8");
        assert!(
            json.contains(r#""kind":"request""#) && json.contains(r#""op":"join""#),
            "{json}"
        );
        assert_eq!(decode::<ToDataplane>(json.as_bytes()), Ok(msg));

        let ev = FromDataplane::Event {
            event: Event::PeerLeft {
                participant: "a".into(),
                peer_id: "b".into(),
                reason: LeaveReason::Timeout,
            },
        };
        let json = String::from_utf8(encode(&ev)).expect("utf8");
        assert!(json.contains(r#""reason":"timeout""#), "{json}");
        assert_eq!(decode::<FromDataplane>(json.as_bytes()), Ok(ev));

        let stats = Request::Stats;
        assert_eq!(
            String::from_utf8(encode(&stats)).expect("utf8"),
            r#"{"op":"stats"}"#
        );
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        for bad in [
            &b""[..],
            b"{",
            b"{\"kind\":\"nope\"}",
            b"\xff\xfe",
            b"[1,2]",
            b"null",
        ] {
            assert!(decode::<ToDataplane>(bad).is_err());
            assert!(decode::<FromDataplane>(bad).is_err());
        }
    }
}
