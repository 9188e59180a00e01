//! Credentials: JWT join tokens (HS256), TURN REST API credentials, session resume tokens.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::protocol::IceServer;

/// What a join token may grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantClaims {
    #[serde(default = "yes")]
    pub publish: bool,
    #[serde(default = "yes")]
    pub subscribe: bool,
}

fn yes() -> bool {
    true
}

impl Default for GrantClaims {
    fn default() -> Self {
        Self {
            publish: true,
            subscribe: true,
        }
    }
}

/// The claims of a join token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user's identity.
    pub sub: String,
    /// Display name (overrides the name the client sends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The only room this token admits to.
    pub room: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Not valid before, Unix seconds (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default)]
    pub grants: GrantClaims,
}

/// Verifies join tokens.
#[derive(Clone)]
pub struct Auth {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Auth(HS256)")
    }
}

/// Clock skew tolerated between the token's issuer and this server, in seconds.
pub const CLOCK_LEEWAY_SECS: u64 = 5;

impl Auth {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // Time is checked in `verify_at`, against the clock the caller passes.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            key: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Check `token` for `room` now. The error is the message for `error {code:"unauthorized"}`.
    pub fn verify(&self, token: &str, room: &str) -> Result<Claims, String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.verify_at(token, room, now)
    }

    /// Check `token` for `room` at Unix time `now` (seconds): signature, room, `exp` and `nbf`
    /// with [`CLOCK_LEEWAY_SECS`] of tolerance either way. A token not valid yet (`nbf` in the
    /// future) is refused like an expired one.
    pub fn verify_at(&self, token: &str, room: &str, now: u64) -> Result<Claims, String> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| format!("invalid token: {e}"))?;
        if data.claims.exp.saturating_add(CLOCK_LEEWAY_SECS) < now {
            return Err("invalid token: ExpiredSignature".into());
        }
        if data
            .claims
            .nbf
            .is_some_and(|nbf| nbf > now.saturating_add(CLOCK_LEEWAY_SECS))
        {
            return Err("invalid token: ImmatureSignature".into());
        }
        if data.claims.room != room {
            return Err(format!(
                "token is for room {:?}, not {room:?}",
                data.claims.room
            ));
        }
        Ok(data.claims)
    }
}

/// Mint a join token (used by `signaling token` and tests).
pub fn mint(secret: &[u8], claims: &Claims) -> Result<String, String> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| e.to_string())
}

/// TURN servers with ephemeral credentials (TURN REST API, coturn `--use-auth-secret`).
#[derive(Debug, Clone)]
pub struct TurnConfig {
    pub urls: Vec<String>,
    pub secret: String,
    pub ttl_secs: u64,
}

impl TurnConfig {
    /// `username = "<expiry>:<identity>"`, `credential = base64(HMAC-SHA1(secret, username))`.
    pub fn credentials(&self, identity: &str, now_unix: u64) -> IceServer {
        let username = format!("{}:{identity}", now_unix + self.ttl_secs);
        // HMAC accepts keys of any length.
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(self.secret.as_bytes())
            .unwrap_or_else(|_| unreachable!());
        mac.update(username.as_bytes());
        let credential = STANDARD.encode(mac.finalize().into_bytes());
        IceServer {
            urls: self.urls.clone(),
            username: Some(username),
            credential: Some(credential),
        }
    }
}

/// What a resume token carries: where the session lives and the key that proves it is yours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeToken {
    #[serde(rename = "n")]
    pub node: String,
    #[serde(rename = "p")]
    pub participant: String,
    #[serde(rename = "k")]
    pub key: String,
}

impl ResumeToken {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    pub fn decode(token: &str) -> Option<Self> {
        if token.len() > 1024 {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(token).ok()?;
        serde_json::from_slice(&raw).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    fn claims(room: &str, exp: u64) -> Claims {
        Claims {
            sub: "alice@example".into(),
            name: Some("Alice".into()),
            room: room.into(),
            exp,
            nbf: None,
            grants: GrantClaims {
                publish: false,
                subscribe: true,
            },
        }
    }

    #[test]
    fn tokens_verify_for_their_room_only() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let auth = Auth::new(secret);
        let t = mint(secret, &claims("demo", now() + 60)).expect("mint");
        let c = auth.verify(&t, "demo").expect("valid");
        assert_eq!(
            (c.sub.as_str(), c.name.as_deref(), c.grants.publish),
            ("alice@example", Some("Alice"), false)
        );
        assert!(
            auth.verify(&t, "other")
                .is_err_and(|e| e.contains("not \"other\""))
        );
        let expired = mint(secret, &claims("demo", now() - 120)).expect("mint");
        assert!(
            auth.verify(&expired, "demo")
                .is_err_and(|e| e.contains("xpired"))
        );
        let foreign = mint(
            b"another secret entirely, 32 bytes",
            &claims("demo", now() + 60),
        )
        .expect("mint");
        assert!(auth.verify(&foreign, "demo").is_err());
        assert!(auth.verify("not.a.jwt", "demo").is_err());
        // Not valid yet (beyond the 5 s leeway): refused; valid from now: accepted.
        let mut early = claims("demo", now() + 600);
        early.nbf = Some(now() + 300);
        let t = mint(secret, &early).expect("mint");
        assert!(
            auth.verify(&t, "demo")
                .is_err_and(|e| e.contains("mmature") || e.contains("nbf")),
            "{:?}",
            auth.verify(&t, "demo")
        );
        early.nbf = Some(now());
        assert!(
            auth.verify(&mint(secret, &early).expect("mint"), "demo")
                .is_ok()
        );
        assert!(auth.verify("", "demo").is_err());
    }

    #[test]
    fn expiry_and_not_before_are_checked_against_the_given_clock() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let auth = Auth::new(secret);
        let t0 = 1_700_000_000;
        let mut c = claims("demo", t0);
        c.nbf = Some(t0 - 100);
        let token = mint(secret, &c).expect("mint");
        // Valid until exp + leeway, inclusive; expired one second later.
        assert!(
            auth.verify_at(&token, "demo", t0 + CLOCK_LEEWAY_SECS)
                .is_ok()
        );
        assert!(
            auth.verify_at(&token, "demo", t0 + CLOCK_LEEWAY_SECS + 1)
                .is_err_and(|e| e.contains("xpired"))
        );
        // Not before nbf − leeway.
        assert!(
            auth.verify_at(&token, "demo", t0 - 100 - CLOCK_LEEWAY_SECS)
                .is_ok()
        );
        assert!(
            auth.verify_at(&token, "demo", t0 - 100 - CLOCK_LEEWAY_SECS - 1)
                .is_err_and(|e| e.contains("mmature"))
        );
        // The room is checked whatever the time.
        assert!(auth.verify_at(&token, "other", t0).is_err());
    }

    #[test]
    fn turn_credentials_follow_the_rest_api_convention() {
        let t = TurnConfig {
            urls: vec!["turn:127.0.0.1:3478?transport=udp".into()],
            secret: "s3cret".into(),
            ttl_secs: 3600,
        };
        let s = t.credentials("alice", 1_700_000_000);
        assert_eq!(s.username.as_deref(), Some("1700003600:alice"));
        // echo -n "1700003600:alice" | openssl dgst -sha1 -hmac s3cret -binary | base64
        assert_eq!(
            s.credential.as_deref(),
            Some("YAFdW/YDZewZsR1QSgUk2IrfbRI=")
        );
    }

    #[test]
    fn resume_tokens_round_trip_and_reject_garbage() {
        let t = ResumeToken {
            node: "node-1".into(),
            participant: "p1".into(),
            key: "k".repeat(32),
        };
        assert_eq!(ResumeToken::decode(&t.encode()), Some(t));
        for bad in ["", "!!!", "eyJ4Ijox", &"A".repeat(2000)] {
            assert_eq!(ResumeToken::decode(bad), None, "{bad}");
        }
    }
}
