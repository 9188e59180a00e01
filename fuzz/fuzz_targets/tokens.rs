//! Resume tokens and JWT join tokens as clients present them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use signaling::auth::{Auth, ResumeToken};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Some(t) = ResumeToken::decode(&text) {
        // A decoded token re-encodes to something that decodes to the same token.
        assert_eq!(ResumeToken::decode(&t.encode()), Some(t));
    }
    let auth = Auth::new(b"fuzzing-secret-0123456789");
    assert!(
        auth.verify(&text, "room").is_err(),
        "a token not signed with the secret was accepted"
    );
});
