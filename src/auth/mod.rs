//! Client authentication (`client_auth`), without Pingora: what the routing decision asks
//! for is performed here.
//! - [`scope`]: token scopes and challenges moved between the client's names and the
//!   upstream's (pure);
//! - [`relay`]: `relay`'s `/token`, the client's token request relayed to the upstream's
//!   token service;
//! - [`local`]: `local`'s users ([`htpasswd`]), their grants and the gateway's own tokens
//!   ([`token`]);
//! - [`CredentialKey`]: the keyed digest under which a client's credential is remembered
//!   (never the credential itself).

use ring::hmac;

pub mod htpasswd;
pub mod local;
pub mod relay;
pub mod scope;
pub mod token;

use std::sync::Arc;

use local::LocalAuth;
use relay::TokenRelay;

/// What the gateway keeps to authenticate clients, by `client_auth.mode`.
pub enum ClientAuthority {
    /// Nobody is asked.
    Anonymous,
    /// Clients' credentials are relayed.
    Relay {
        /// `/token`'s relay to the upstream's token service.
        tokens: TokenRelay,
        /// `<public_url>/token`: the realm clients are given.
        token_url: String,
    },
    /// The gateway checks credentials itself.
    Local(Arc<LocalAuth>),
}

/// Digests of client credentials under a key drawn at start: equal for one credential,
/// unpredictable without the key, and not reversible into the credential.
pub struct CredentialKey(hmac::Key);

impl CredentialKey {
    /// A fresh random key.
    pub fn generate() -> CredentialKey {
        let rng = ring::rand::SystemRandom::new();
        CredentialKey(
            hmac::Key::generate(hmac::HMAC_SHA256, &rng).expect("the system has randomness"),
        )
    }

    /// A 128-bit digest of `parts`, each length-prefixed so that no two lists collide by
    /// where one part ends.
    pub fn digest(&self, parts: &[&[u8]]) -> u128 {
        let mut ctx = hmac::Context::with_key(&self.0);
        for part in parts {
            ctx.update(&(part.len() as u64).to_le_bytes());
            ctx.update(part);
        }
        let tag = ctx.sign();
        let mut out = [0u8; 16];
        out.copy_from_slice(&tag.as_ref()[..16]);
        u128::from_le_bytes(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_depend_on_the_key_and_on_where_parts_split() {
        let (a, b) = (CredentialKey::generate(), CredentialKey::generate());
        let d = a.digest(&[b"Basic cm9ib3Q6czNjcmV0", b"/v2/app/blobs/x"]);
        assert_eq!(
            d,
            a.digest(&[b"Basic cm9ib3Q6czNjcmV0", b"/v2/app/blobs/x"])
        );
        assert_ne!(
            d,
            b.digest(&[b"Basic cm9ib3Q6czNjcmV0", b"/v2/app/blobs/x"])
        );
        assert_ne!(a.digest(&[b"ab", b"c"]), a.digest(&[b"a", b"bc"]));
    }
}
