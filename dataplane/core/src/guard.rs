//! The core's boundary for input it does not control: every str0m call fed by network or client
//! input runs under [`guard`] (a panic there drops that input or fails that one participant,
//! never the worker), client-visible error texts go through [`clean_error`] (str0m's parser
//! errors can carry heap addresses), and SDP is sized up with [`media_sections`] before it is
//! parsed.
//!
//! Panic policy (`docs/architecture.md`): a panic caught here is a bug in str0m or in us; it is
//! logged, the participant concerned is removed (`failed`), other sessions go on. A panic that
//! escapes anyway is caught by the worker's supervisor, which restarts the worker.

use std::fmt::Display;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Run `f`, turning a panic into `None`.
pub fn guard<T>(f: impl FnOnce() -> T) -> Option<T> {
    catch_unwind(AssertUnwindSafe(f)).ok()
}

/// Longest error detail returned to a client.
const MAX_DETAIL: usize = 160;

/// An error's text fit for a client: one line, at most `MAX_DETAIL` (160) characters, and no
/// hexadecimal numbers of pointer size (`0x7f…`), which str0m's parser errors can contain.
pub fn clean_error(e: impl Display) -> String {
    let raw = e.to_string();
    let line = raw.lines().next().unwrap_or("");
    let mut out = String::with_capacity(line.len().min(MAX_DETAIL));
    let mut rest = line;
    while let Some(i) = rest.find("0x") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let hex = after
            .find(|c: char| !c.is_ascii_hexdigit())
            .unwrap_or(after.len());
        if hex >= 6 {
            out.push('…');
        } else {
            out.push_str(&rest[i..i + 2 + hex]);
        }
        rest = &after[hex..];
    }
    out.push_str(rest);
    if out.chars().count() > MAX_DETAIL {
        out = out.chars().take(MAX_DETAIL).collect::<String>() + "…";
    }
    out
}

/// The number of media sections (`m=` lines) in an SDP text.
pub fn media_sections(sdp: &str) -> usize {
    sdp.lines().filter(|l| l.starts_with("m=")).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_become_none() {
        assert_eq!(guard(|| 7), Some(7));
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let r: Option<()> = guard(|| panic!("boom"));
        std::panic::set_hook(hook);
        assert_eq!(r, None);
    }

    #[test]
    fn error_texts_lose_pointers_and_length() {
        assert_eq!(
            clean_error("parse failed at PointerOffset(0x7ffd5a3c9e10) near 0x1f"),
            "parse failed at PointerOffset(…) near 0x1f"
        );
        assert_eq!(clean_error("two\nlines"), "two");
        let long = "x".repeat(500);
        assert_eq!(clean_error(&long).chars().count(), MAX_DETAIL + 1);
        assert_eq!(clean_error("0x"), "0x");
    }

    #[test]
    fn counts_media_sections() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n";
        assert_eq!(media_sections(sdp), 3);
        assert_eq!(media_sections("garbage"), 0);
    }
}
