//! Messages carried on the `chat` DataChannel (SCTP terminates at the SFU).
//!
//! Client → SFU: `{"type":"chat","to":null|"<participant id>","text":"..."}`,
//! `{"type":"state","audio_muted":bool,"video_muted":bool}` or
//! `{"type":"video_hint","from":"<id>","height":<px>,"visible":bool}`.
//! SFU → client: `{"type":"chat","from":"<id>","name":"<display name>","to":null|"<id>",
//! "text":"...","ts":<unix ms>}`, `{"type":"state","from":"<id>","audio_muted":bool,
//! "video_muted":bool}` or `{"type":"error","code":"...","message":"..."}`.

use serde::{Deserialize, Serialize};

/// Largest raw DataChannel message we even try to parse.
pub const MAX_RAW_MESSAGE: usize = 64 * 1024;

/// A parsed chat request from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatRequest {
    pub to: Option<String>,
    pub text: String,
}

/// Why a chat message was refused. `code()` is what the client sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatError {
    BadRequest(String),
    TooLarge {
        len: usize,
        max: usize,
    },
    UnknownParticipant(String),
    /// The sender exceeded its chat rate; the message was dropped.
    RateLimited {
        per_sec: u32,
    },
}

impl ChatError {
    pub fn code(&self) -> &'static str {
        match self {
            ChatError::BadRequest(_) => "bad_request",
            ChatError::TooLarge { .. } => "too_large",
            ChatError::UnknownParticipant(_) => "unknown_participant",
            ChatError::RateLimited { .. } => "rate_limited",
        }
    }

    pub fn message(&self) -> String {
        match self {
            ChatError::BadRequest(m) => m.clone(),
            ChatError::TooLarge { len, max } => {
                format!("message text is {len} bytes; the limit is {max} bytes")
            }
            ChatError::UnknownParticipant(id) => format!("no participant {id:?} in this room"),
            ChatError::RateLimited { per_sec } => format!(
                "more than {per_sec} messages per second; messages are dropped until you slow down"
            ),
        }
    }

    /// The error as the JSON message sent back on the channel.
    pub fn to_json(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            code: &'a str,
            message: String,
        }
        serde_json::to_vec(&Wire {
            kind: "error",
            code: self.code(),
            message: self.message(),
        })
        .unwrap_or_default()
    }
}

/// A participant's announced media state (mute flags), relayed to the room.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaState {
    pub audio_muted: bool,
    pub video_muted: bool,
}

impl MediaState {
    /// The state as delivered to others.
    pub fn to_json(self, from: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "type": "state",
            "from": from,
            "audio_muted": self.audio_muted,
            "video_muted": self.video_muted,
        }))
        .unwrap_or_default()
    }
}

/// A message a client sends on the `chat` channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelRequest {
    Chat(ChatRequest),
    State(MediaState),
    /// How the page shows one remote participant's video.
    Hint(VideoHint),
}

/// `{"type":"video_hint","from":"<publisher id>","height":<device pixels>,"visible":bool}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoHint {
    pub from: String,
    /// Drawn height in device pixels (clamped to [`MAX_HINT_HEIGHT`]).
    pub height: u32,
    pub visible: bool,
}

/// Largest tile height a hint may claim (8K).
pub const MAX_HINT_HEIGHT: u32 = 4320;

/// Parse and validate a client channel message. `max_text` is in UTF-8 bytes.
pub fn parse_request(data: &[u8], max_text: usize) -> Result<ChannelRequest, ChatError> {
    #[derive(Deserialize)]
    struct Wire {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        to: Option<String>,
        text: Option<String>,
        audio_muted: Option<bool>,
        video_muted: Option<bool>,
        from: Option<String>,
        height: Option<f64>,
        visible: Option<bool>,
    }
    if data.len() > MAX_RAW_MESSAGE {
        return Err(ChatError::TooLarge {
            len: data.len(),
            max: max_text,
        });
    }
    let wire: Wire = serde_json::from_slice(data)
        .map_err(|e| ChatError::BadRequest(format!("invalid JSON: {e}")))?;
    if wire.kind == "state" {
        let (Some(audio_muted), Some(video_muted)) = (wire.audio_muted, wire.video_muted) else {
            return Err(ChatError::BadRequest(
                "state needs audio_muted and video_muted".into(),
            ));
        };
        return Ok(ChannelRequest::State(MediaState {
            audio_muted,
            video_muted,
        }));
    }
    if wire.kind == "video_hint" {
        let Some(from) = wire.from.filter(|f| !f.is_empty() && f.len() <= 256) else {
            return Err(ChatError::BadRequest(
                "video_hint needs \"from\" (a participant id)".into(),
            ));
        };
        let height = wire.height.unwrap_or(f64::from(MAX_HINT_HEIGHT));
        if !height.is_finite() || height < 0.0 {
            return Err(ChatError::BadRequest(
                "video_hint height must be a number >= 0".into(),
            ));
        }
        return Ok(ChannelRequest::Hint(VideoHint {
            from,
            height: (height.round() as u32).min(MAX_HINT_HEIGHT),
            visible: wire.visible.unwrap_or(true),
        }));
    }
    if wire.kind != "chat" {
        return Err(ChatError::BadRequest(format!(
            "unknown message type {:?}",
            wire.kind
        )));
    }
    let text = wire
        .text
        .ok_or_else(|| ChatError::BadRequest("missing \"text\"".into()))?;
    if text.len() > max_text {
        return Err(ChatError::TooLarge {
            len: text.len(),
            max: max_text,
        });
    }
    if text.trim().is_empty() {
        return Err(ChatError::BadRequest("empty text".into()));
    }
    Ok(ChannelRequest::Chat(ChatRequest {
        to: wire.to.filter(|t| !t.is_empty()),
        text,
    }))
}

/// A chat message as delivered to clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatDelivery {
    #[serde(rename = "type")]
    pub kind: String,
    pub from: String,
    pub name: String,
    pub to: Option<String>,
    pub text: String,
    pub ts: u64,
    /// Per-room sequence number of chat messages (whispers included), from 1: a client shows each
    /// message once by it and in its order.
    #[serde(default)]
    pub seq: u64,
    /// Replayed from the room's history (sent before this participant joined), not live.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub history: bool,
}

impl ChatDelivery {
    pub fn new(from: &str, name: &str, to: Option<&str>, text: &str, ts: u64) -> Self {
        Self {
            kind: "chat".into(),
            from: from.into(),
            name: name.into(),
            to: to.map(Into::into),
            text: text.into(),
            ts,
            seq: 0,
            history: false,
        }
    }

    /// Bytes this message holds in a room's history (for the history's byte bound).
    pub fn weight(&self) -> usize {
        self.from.len() + self.name.len() + self.text.len() + 64
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_broadcast_and_whisper() {
        assert_eq!(
            parse_request(br#"{"type":"chat","to":null,"text":"hi"}"#, 10),
            Ok(ChannelRequest::Chat(ChatRequest {
                to: None,
                text: "hi".into()
            }))
        );
        assert_eq!(
            parse_request(
                br#"{"type":"state","audio_muted":true,"video_muted":false}"#,
                10
            ),
            Ok(ChannelRequest::State(MediaState {
                audio_muted: true,
                video_muted: false
            }))
        );
        assert!(parse_request(br#"{"type":"state","audio_muted":true}"#, 10).is_err());
        assert_eq!(
            parse_request(br#"{"type":"chat","text":"hi"}"#, 10),
            Ok(ChannelRequest::Chat(ChatRequest {
                to: None,
                text: "hi".into()
            }))
        );
        assert_eq!(
            parse_request(br#"{"type":"chat","to":"p2","text":"psst"}"#, 10),
            Ok(ChannelRequest::Chat(ChatRequest {
                to: Some("p2".into()),
                text: "psst".into()
            }))
        );
    }

    #[test]
    fn video_hints_are_parsed_and_bounded() {
        let hint = |data: &str| match parse_request(data.as_bytes(), 10) {
            Ok(ChannelRequest::Hint(h)) => Ok(h),
            Ok(other) => panic!("not a hint: {other:?}"),
            Err(e) => Err(e.code()),
        };
        assert_eq!(
            hint(r#"{"type":"video_hint","from":"p1","height":359.6,"visible":false}"#),
            Ok(VideoHint {
                from: "p1".into(),
                height: 360,
                visible: false
            })
        );
        // Absurd heights are clamped; a missing one means no limit, a missing visibility
        // means visible.
        assert_eq!(
            hint(r#"{"type":"video_hint","from":"p1","height":1e12}"#).map(|h| h.height),
            Ok(MAX_HINT_HEIGHT)
        );
        assert_eq!(
            hint(r#"{"type":"video_hint","from":"p1"}"#).map(|h| (h.height, h.visible)),
            Ok((MAX_HINT_HEIGHT, true))
        );
        for bad in [
            r#"{"type":"video_hint","height":100}"#,
            r#"{"type":"video_hint","from":"","height":100}"#,
            r#"{"type":"video_hint","from":"p1","height":-1}"#,
            r#"{"type":"video_hint","from":"p1","height":"tall"}"#,
            r#"{"type":"video_hint","from":"p1","visible":"yes"}"#,
        ] {
            assert_eq!(hint(bad).map(|_| ()), Err("bad_request"), "{bad}");
        }
    }

    #[test]
    fn rejects_bad_input_with_codes() {
        let cases: &[(&[u8], &str)] = &[
            (b"not json", "bad_request"),
            (b"{}", "bad_request"),
            (br#"{"type":"hello","text":"x"}"#, "bad_request"),
            (br#"{"type":"chat"}"#, "bad_request"),
            (br#"{"type":"chat","text":"   "}"#, "bad_request"),
            (br#"{"type":"chat","text":42}"#, "bad_request"),
            (br#"{"type":"chat","text":"0123456789A"}"#, "too_large"),
        ];
        for (data, code) in cases {
            let err = parse_request(data, 10).expect_err("must be rejected");
            assert_eq!(err.code(), *code, "{}", String::from_utf8_lossy(data));
        }
        // Exactly at the limit (in bytes, not chars) is fine; one multi-byte char over is not.
        assert!(parse_request(r#"{"type":"chat","text":"ééééé"}"#.as_bytes(), 10).is_ok());
        assert!(parse_request(r#"{"type":"chat","text":"éééééa"}"#.as_bytes(), 10).is_err());
        let huge = vec![b' '; MAX_RAW_MESSAGE + 1];
        assert_eq!(
            parse_request(&huge, 10).expect_err("huge").code(),
            "too_large"
        );
    }

    #[test]
    fn delivery_escapes_text_as_json() {
        let mut d = ChatDelivery::new("a", "<b>", Some("c"), "\"quoted\"\n", 5);
        d.seq = 3;
        let json = String::from_utf8(d.to_json()).expect("utf8");
        assert_eq!(
            json,
            r#"{"type":"chat","from":"a","name":"<b>","to":"c","text":"\"quoted\"\n","ts":5,"seq":3}"#
        );
        let back: ChatDelivery = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, d);
    }
}
