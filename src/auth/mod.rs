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

use std::hash::BuildHasher;

use xxhash_rust::xxh3::xxh3_128_with_seed;

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

/// Digests of client credentials under keys drawn at start: equal for one credential,
/// unpredictable without the keys, and not reversible into the credential.
///
/// The credential goes through two SipHash-1-3 instances with independent random keys
/// (std's `RandomState`, built to resist chosen inputs): 128 unpredictable bits. What it is
/// remembered with (a request path) is mixed in by a seeded xxh3: two entries can only
/// collide if the credential halves differ by what no one without the keys can know. This
/// runs for every relayed blob request, at a fraction of HMAC-SHA256's cost.
pub struct CredentialKey {
    credential: [std::hash::RandomState; 2],
    context_seed: u64,
}

impl CredentialKey {
    /// Fresh random keys.
    pub fn generate() -> CredentialKey {
        let credential = [std::hash::RandomState::new(), std::hash::RandomState::new()];
        let context_seed = std::hash::RandomState::new().hash_one(0u8);
        CredentialKey {
            credential,
            context_seed,
        }
    }

    /// A 128-bit digest of `credential` together with `context`.
    pub fn digest(&self, credential: &[u8], context: &[u8]) -> u128 {
        let [a, b] = &self.credential;
        let keyed = (u128::from(a.hash_one(credential)) << 64) | u128::from(b.hash_one(credential));
        keyed ^ xxh3_128_with_seed(context, self.context_seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_depend_on_the_keys_the_credential_and_the_context() {
        let (a, b) = (CredentialKey::generate(), CredentialKey::generate());
        let (alice, bob) = (
            b"Basic YWxpY2U6cA==".as_slice(),
            b"Basic Ym9iOnA=".as_slice(),
        );
        let path = b"/v2/app/blobs/x".as_slice();
        let d = a.digest(alice, path);
        assert_eq!(d, a.digest(alice, path));
        assert_ne!(d, b.digest(alice, path), "another process's keys");
        assert_ne!(d, a.digest(bob, path), "another credential");
        assert_ne!(d, a.digest(alice, b"/v2/app/blobs/y"), "another path");
        // Where the credential ends is part of it.
        assert_ne!(a.digest(b"ab", b"c"), a.digest(b"a", b"bc"));
    }
}
