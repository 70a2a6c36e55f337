//! The gateway's own Bearer tokens (`client_auth: local`): who, until when, which
//! repositories, signed with HMAC-SHA256. The gateway is both issuer and verifier, so no
//! public-key format is needed; replicas share the key through `client_auth.token_key_file`.
//!
//! A token is `base64url(claims JSON) "." base64url(HMAC(key, first part))`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;
use serde::{Deserialize, Serialize};

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Repositories (the client's names) it may pull.
    pub repos: Vec<String>,
}

/// Issues and verifies tokens with one key.
pub struct Tokens {
    key: hmac::Key,
    lifetime: Duration,
}

impl Tokens {
    /// Tokens valid for `lifetime`, signed with `key` (at least 32 bytes), or with a random
    /// key when none is given (then only this process accepts them).
    pub fn new(key: Option<&[u8]>, lifetime: Duration) -> Tokens {
        let key = match key {
            Some(bytes) => hmac::Key::new(hmac::HMAC_SHA256, bytes),
            None => hmac::Key::generate(hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())
                .expect("the system has randomness"),
        };
        Tokens { key, lifetime }
    }

    /// How long a new token is valid.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// A token for `user` to pull `repos`, valid from `now`.
    pub fn issue(&self, user: &str, repos: Vec<String>, now: SystemTime) -> String {
        let claims = Claims {
            sub: user.to_string(),
            exp: unix(now) + self.lifetime.as_secs(),
            repos,
        };
        let payload =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims serialize"));
        let tag = hmac::sign(&self.key, payload.as_bytes());
        format!("{payload}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// The claims of `token` if this key signed it and it has not expired at `now`.
    pub fn verify(&self, token: &str, now: SystemTime) -> Option<Claims> {
        let (payload, signature) = token.split_once('.')?;
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        hmac::verify(&self.key, payload.as_bytes(), &signature).ok()?;
        let claims: Claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        (claims.exp > unix(now)).then_some(claims)
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_verifies_until_it_expires_and_not_once_altered() {
        let tokens = Tokens::new(Some(&[7u8; 32]), Duration::from_secs(300));
        let now = SystemTime::now();
        let t = tokens.issue("alice", vec!["app".into()], now);
        let claims = tokens.verify(&t, now).unwrap();
        assert_eq!(
            (claims.sub.as_str(), &claims.repos[..]),
            ("alice", &["app".to_string()][..])
        );
        assert!(tokens.verify(&t, now + Duration::from_secs(301)).is_none());

        // Claims edited and re-encoded: the signature no longer matches.
        let (_, sig) = t.split_once('.').unwrap();
        let forged = Claims {
            sub: "alice".into(),
            exp: claims.exp,
            repos: vec!["app".into(), "secret".into()],
        };
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        assert!(tokens.verify(&format!("{payload}.{sig}"), now).is_none());
        // Another key's token, and garbage.
        let other = Tokens::new(Some(&[8u8; 32]), Duration::from_secs(300));
        assert!(tokens
            .verify(&other.issue("alice", vec![], now), now)
            .is_none());
        for junk in ["", ".", "a.b", "no-dot"] {
            assert!(tokens.verify(junk, now).is_none());
        }
        // A random key per process: its tokens are its own.
        let a = Tokens::new(None, Duration::from_secs(60));
        let b = Tokens::new(None, Duration::from_secs(60));
        assert!(b.verify(&a.issue("x", vec![], now), now).is_none());
    }
}
