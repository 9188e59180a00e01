//! The client-facing WebSocket JSON protocol (`docs/protocol.md`).

use serde::{Deserialize, Serialize};

pub use control::PeerInfo;

/// Maximum length (characters) of a room name and of a display name.
pub const MAX_NAME_CHARS: usize = 64;

/// Messages from a client.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    /// Join a room (`room`, `name`, `token` when auth is on) or resume a session (`resume`).
    Join {
        #[serde(default)]
        room: Option<String>,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        token: Option<String>,
        #[serde(default)]
        resume: Option<String>,
    },
    Offer {
        sdp: String,
    },
    Answer {
        sdp: String,
    },
    /// Trickled ICE candidate: accepted and ignored (the dataplane is ICE-lite).
    Candidate {
        #[serde(default)]
        candidate: Option<serde_json::Value>,
        #[serde(default, rename = "sdpMid")]
        sdp_mid: Option<serde_json::Value>,
        #[serde(default, rename = "sdpMLineIndex")]
        sdp_mline_index: Option<serde_json::Value>,
    },
    Leave {},
}

/// One entry of `joined.ice_servers` (the `RTCIceServer` dictionary).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// Error codes sent to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    RoomFull,
    Unauthorized,
    Unavailable,
    /// Too many messages; slow down.
    RateLimited,
    /// A `join {resume}` whose session no longer exists (expired, or the node restarted).
    ResumeFailed,
    Internal,
}

impl From<control::ErrorCode> for ErrorCode {
    fn from(c: control::ErrorCode) -> Self {
        match c {
            control::ErrorCode::BadRequest | control::ErrorCode::UnknownParticipant => {
                ErrorCode::BadRequest
            }
            control::ErrorCode::RoomFull => ErrorCode::RoomFull,
            control::ErrorCode::Unavailable => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        }
    }
}

/// Messages to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    Joined {
        room: String,
        participant: PeerInfo,
        participants: Vec<PeerInfo>,
        ice_servers: Vec<IceServer>,
        /// Token for `join {resume}` after a lost WebSocket.
        resume: String,
        /// This `joined` answers a resume: keep the same peer connection.
        resumed: bool,
    },
    Answer {
        sdp: String,
    },
    Offer {
        sdp: String,
    },
    ParticipantJoined {
        participant: PeerInfo,
    },
    ParticipantLeft {
        participant_id: String,
    },
    /// The server removed this participant.
    Left {
        reason: control::LeaveReason,
    },
    /// The room's media node failed or the room moved: the session is over; join again (the same
    /// room lands on a healthy node).
    RoomClosed {
        reason: String,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

impl ServerMsg {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerMsg::Error {
            code,
            message: message.into(),
        }
    }

    pub fn to_json(&self) -> String {
        // Plain data with string keys: serialization cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Parse a client text frame. The error is a message for `error {code:"bad_request"}`.
pub fn parse(text: &str) -> Result<ClientMsg, String> {
    serde_json::from_str(text).map_err(|e| {
        let m = e.to_string();
        if m.contains("unknown variant") {
            format!("unknown message type: {m}")
        } else {
            format!("invalid message: {m}")
        }
    })
}

/// Validate a room name: 1–64 characters from `A–Z a–z 0–9 _ . -`.
pub fn validate_room(room: &str) -> Result<(), String> {
    let n = room.chars().count();
    if n == 0 || n > MAX_NAME_CHARS {
        return Err(format!("room must be 1–{MAX_NAME_CHARS} characters"));
    }
    if !room
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err("room may only contain letters, digits, '_', '.' and '-'".into());
    }
    Ok(())
}

/// Validate and normalise a display name: trimmed, 1–64 characters, no control characters.
pub fn validate_name(name: &str) -> Result<String, String> {
    let name = name.trim();
    let n = name.chars().count();
    if n == 0 || n > MAX_NAME_CHARS {
        return Err(format!("name must be 1–{MAX_NAME_CHARS} characters"));
    }
    if name.chars().any(char::is_control) {
        return Err("name must not contain control characters".into());
    }
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_client_messages() {
        assert_eq!(
            parse(r#"{"type":"join","room":"demo","name":"alice"}"#),
            Ok(ClientMsg::Join {
                room: Some("demo".into()),
                name: Some("alice".into()),
                token: None,
                resume: None,
            })
        );
        assert_eq!(parse(r#"{"type":"leave"}"#), Ok(ClientMsg::Leave {}));
        assert!(matches!(
            parse(
                r#"{"type":"candidate","candidate":"candidate:1 1 udp 1 1.2.3.4 5 typ host","sdpMid":"0","sdpMLineIndex":0}"#
            ),
            Ok(ClientMsg::Candidate { .. })
        ));
        assert!(matches!(
            parse(r#"{"type":"candidate","candidate":null}"#),
            Ok(ClientMsg::Candidate { .. })
        ));
    }

    #[test]
    fn bad_messages_are_errors() {
        for bad in [
            "",
            "{",
            "[]",
            "null",
            r#"{"type":"dance"}"#,
            r#"{"type":"offer"}"#,
            r#"{"room":"x"}"#,
            r#"{"type":"join","room":1,"name":"a"}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(parse(r#"{"type":"dance"}"#).is_err_and(|e| e.contains("unknown message type")));
    }

    #[test]
    fn server_messages_have_the_documented_shape() {
        let m = ServerMsg::Joined {
            room: "r".into(),
            participant: PeerInfo {
                id: "p1".into(),
                name: "A".into(),
            },
            participants: vec![],
            ice_servers: vec![IceServer {
                urls: vec!["stun:x".into()],
                username: None,
                credential: None,
            }],
            resume: "tok".into(),
            resumed: false,
        };
        assert_eq!(
            m.to_json(),
            r#"{"type":"joined","room":"r","participant":{"id":"p1","name":"A"},"participants":[],"ice_servers":[{"urls":["stun:x"]}],"resume":"tok","resumed":false}"#
        );
        assert_eq!(
            ServerMsg::RoomClosed {
                reason: "node_failed".into()
            }
            .to_json(),
            r#"{"type":"room_closed","reason":"node_failed"}"#
        );
        assert_eq!(
            ServerMsg::ParticipantLeft {
                participant_id: "x".into()
            }
            .to_json(),
            r#"{"type":"participant_left","participant_id":"x"}"#
        );
        assert_eq!(
            ServerMsg::error(ErrorCode::RoomFull, "m").to_json(),
            r#"{"type":"error","code":"room_full","message":"m"}"#
        );
        assert_eq!(
            ServerMsg::Left {
                reason: control::LeaveReason::Timeout
            }
            .to_json(),
            r#"{"type":"left","reason":"timeout"}"#
        );
    }

    #[test]
    fn validates_rooms_and_names() {
        assert!(validate_room("demo-1_a.b").is_ok());
        for bad in ["", "a b", "x/y", "<script>", &"r".repeat(65)] {
            assert!(validate_room(bad).is_err(), "{bad}");
        }
        assert_eq!(validate_name("  Zoë <b>  "), Ok("Zoë <b>".into()));
        assert!(validate_name(&"é".repeat(64)).is_ok());
        for bad in ["", "   ", "a\nb", "\u{7}", &"n".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}
