//! The core's own vocabulary for what it is asked ([`Op`]) and what it answers ([`Reply`],
//! [`Event`], [`Stats`]). The I/O shell (`dataplane/src/io/translate.rs`) maps these to and from
//! the control protocol, so the core does not depend on the wire format and the wire format can
//! evolve (versions, optional fields) without touching the core.

use std::fmt;

use crate::Counters;

/// A room's name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomId(pub String);

/// A participant's id (unique per node).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParticipantId(pub String);

macro_rules! id_type {
    ($t:ident) => {
        impl $t {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl From<String> for $t {
            fn from(s: String) -> Self {
                Self(s)
            }
        }
        impl From<&str> for $t {
            fn from(s: &str) -> Self {
                Self(s.to_string())
            }
        }
        impl From<$t> for String {
            fn from(id: $t) -> String {
                id.0
            }
        }
        impl std::ops::Deref for $t {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }
        impl std::borrow::Borrow<str> for $t {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
        impl PartialEq<str> for $t {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }
        impl PartialEq<&str> for $t {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}
id_type!(RoomId);
id_type!(ParticipantId);

/// What a participant may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// Create a participant in a room.
#[derive(Debug, Clone, PartialEq)]
pub struct Join {
    pub room: RoomId,
    pub participant: ParticipantId,
    /// Display name.
    pub name: String,
    /// The client's first SDP offer, answered in [`Reply::Joined`]; without it the slot is
    /// reserved and the first offer comes as [`Op::Offer`].
    pub offer: Option<String>,
    pub grants: Grants,
    /// The join token's identity, kept and returned by [`Reply::Attached`].
    pub identity: Option<String>,
    /// A viewer that cannot renegotiate (WHEP): the recvonly audio/video sections of `offer`
    /// are filled with the room's tracks (or only `from`'s) instead of server offers.
    pub viewer: Option<Viewer>,
}

/// Whose tracks fill a viewer's slots ([`Join::viewer`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Viewer {
    /// Only this participant's; anyone's in the room when `None`.
    pub from: Option<ParticipantId>,
}

/// What a [`crate::Command`] asks the core to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Answered by [`Reply::Joined`] (or an error).
    Join(Join),
    /// The client's answer to the last server offer ([`Event::Offer`]). Answered by [`Reply::Ok`].
    Answer {
        participant: ParticipantId,
        sdp: String,
    },
    /// A client-initiated offer (renegotiation). Answered by [`Reply::Answer`].
    Offer {
        participant: ParticipantId,
        sdp: String,
    },
    /// The participant leaves. Answered by [`Reply::Ok`].
    Leave { participant: ParticipantId },
    /// Session resume: `resume_key` must be the one from [`Reply::Joined`]. Answered by
    /// [`Reply::Attached`]; an outstanding server offer is emitted again.
    Attach {
        participant: ParticipantId,
        resume_key: String,
    },
    /// Remove every participant of a room (reason [`LeaveReason::RoomClosed`]). Answered by
    /// [`Reply::Ok`].
    CloseRoom { room: RoomId },
    /// Remove a participant for a reason other than its own leave (the shell uses it for
    /// sessions abandoned by their signaling). No reply.
    Remove {
        participant: ParticipantId,
        reason: LeaveReason,
    },
}

/// Another participant, as others see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub id: ParticipantId,
    pub name: String,
}

/// The answer to an [`Op`].
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Joined {
        /// SDP answer to the join's offer, if it carried one.
        answer: Option<String>,
        /// Worker hosting the room, and its UDP port (the answer's only candidate).
        worker: u32,
        port: u16,
        /// The others already in the room.
        participants: Vec<PeerInfo>,
        /// Secret authorizing a later [`Op::Attach`].
        resume_key: String,
    },
    Answer {
        sdp: String,
    },
    Attached {
        room: RoomId,
        name: String,
        participants: Vec<PeerInfo>,
        identity: Option<String>,
    },
    Ok,
    Error {
        code: ErrorCode,
        message: String,
    },
}

impl Reply {
    /// An error reply.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Reply::Error {
            code,
            message: message.into(),
        }
    }
}

/// Why an [`Op`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Malformed request or SDP.
    BadRequest,
    /// No such participant on this worker.
    UnknownParticipant,
    /// The participant id is in use.
    DuplicateParticipant,
    /// The room is at its participant limit.
    RoomFull,
    /// The worker cannot take more (rooms limit).
    Unavailable,
    /// A failure inside the core.
    Internal,
}

/// Something that happened to a participant's view of its room, addressed to `participant`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `peer` joined the recipient's room.
    PeerJoined {
        participant: ParticipantId,
        peer: PeerInfo,
    },
    /// `peer_id` left the recipient's room.
    PeerLeft {
        participant: ParticipantId,
        peer_id: ParticipantId,
        reason: LeaveReason,
    },
    /// A server offer for the recipient's client; its answer comes back as [`Op::Answer`].
    Offer {
        participant: ParticipantId,
        sdp: String,
    },
    /// The recipient itself was removed by the core (not by its own [`Op::Leave`]).
    Gone {
        participant: ParticipantId,
        reason: LeaveReason,
    },
}

impl Event {
    /// The participant this event is addressed to.
    pub fn participant(&self) -> &ParticipantId {
        match self {
            Event::PeerJoined { participant, .. }
            | Event::PeerLeft { participant, .. }
            | Event::Offer { participant, .. }
            | Event::Gone { participant, .. } => participant,
        }
    }
}

/// Why a participant left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    /// It asked to leave.
    Left,
    /// No packet from it for the ICE timeout.
    Timeout,
    /// Its peer connection closed (DTLS close_notify or SCTP shutdown).
    Closed,
    /// Its session failed inside the core; others are unaffected.
    Failed,
    /// The worker is shutting down.
    Shutdown,
    /// Its room moved to another node (fencing).
    Moved,
    /// No signaling owned it for the resume window.
    Abandoned,
    /// Its room was closed by an operator.
    RoomClosed,
    /// The worker hosting it failed.
    WorkerFailed,
    /// Its session was resumed elsewhere.
    Replaced,
}

/// One participant in a [`Stats`] snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct ParticipantStats {
    pub id: ParticipantId,
    pub name: String,
    pub connected: bool,
    pub tracks_in: u32,
    pub tracks_out: u32,
    pub rtp_in: u64,
    pub rtp_out: u64,
}

/// One room in a [`Stats`] snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct RoomStats {
    pub room: RoomId,
    pub participants: Vec<ParticipantStats>,
}

/// A statistics snapshot of one worker core (rooms sorted by name).
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub worker: u32,
    pub port: u16,
    pub participants: u32,
    pub rooms: Vec<RoomStats>,
    pub counters: Counters,
    /// Join → connected durations (seconds) since the last snapshot.
    pub join_seconds: Vec<f64>,
}
