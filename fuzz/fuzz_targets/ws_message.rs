//! WebSocket client messages through the parser and the session state machine, as signaling
//! sees them: any bytes, any order, any state. Never a panic.
#![no_main]

use registry::Placement;
use control::{Event, LeaveReason, Response};
use libfuzzer_sys::fuzz_target;
use signaling::auth::Auth;
use signaling::session::{Action, JoinContext, Session};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = signaling::protocol::parse(&text);
    let ctx = JoinContext {
        auth: (data.first() == Some(&b'A')).then(|| Auth::new(b"fuzzing-secret-0123456789")),
        ..JoinContext::default()
    };
    let mut s = Session::new();
    let mut n = 0u64;
    // Messages separated by NUL; between them the server's side moves the session on.
    for (i, msg) in text.split('\0').take(16).enumerate() {
        for a in s.handle_text(msg, &ctx, || {
            n += 1;
            format!("p{n}")
        }) {
            match a {
                Action::Place { .. } => {
                    let _ = s.handle_placement(Ok(Placement {
                        node: "n".into(),
                        epoch: i as u64,
                    }));
                }
                Action::Request { request, .. } => {
                    let response = match i % 4 {
                        0 => Response::Joined {
                            answer: None,
                            worker: 0,
                            port: 1,
                            participants: vec![],
                            resume_key: "k".into(),
                            incarnation: "i".into(),
                        },
                        1 => Response::Answer { sdp: msg.into() },
                        2 => Response::error(control::ErrorCode::Unavailable, "x"),
                        _ => Response::Ok,
                    };
                    let _ = s.handle_response(&request, response, &ctx);
                }
                _ => {}
            }
        }
        if let Some(p) = s.participant().map(str::to_string) {
            let _ = s.handle_event(Event::Gone {
                participant: p,
                reason: if i % 2 == 0 {
                    LeaveReason::Moved
                } else {
                    LeaveReason::Timeout
                },
            });
        }
    }
});
