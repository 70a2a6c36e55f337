//! Which mirror of a rule's chain serves a blob: the first whose breaker is closed and which
//! holds it, by the cached check; a private mirror's `HEAD` and the URL the client gets are
//! presigned.

use log::warn;

use super::signing::MirrorSigner;
use super::MirrorCheck;
use crate::config::SignedMirror;
use crate::routing::policy::Policy;
use crate::routing::MirrorCandidate;

/// The mirrors of the policy, by their index in it, and the check that asks them.
pub struct Mirrors {
    check: MirrorCheck,
    /// Per mirror of the policy: its signer, for a private one.
    signers: Vec<Option<MirrorSigner>>,
}

impl Mirrors {
    /// The mirrors of `policy`, checked by `check`, the private ones signed as `signed`
    /// says.
    pub fn new(
        check: MirrorCheck,
        policy: &Policy,
        signed: &[SignedMirror],
    ) -> Result<Mirrors, String> {
        let mut signers: Vec<Option<MirrorSigner>> = std::iter::repeat_with(|| None)
            .take(policy.mirrors.len())
            .collect();
        for s in signed {
            let signer = MirrorSigner::new(&s.signing).map_err(|e| {
                format!(
                    "mirrors.named.{}.signing: {e}",
                    policy.mirrors[s.mirror].name
                )
            })?;
            signers[s.mirror] = Some(signer);
        }
        Ok(Mirrors { check, signers })
    }

    /// The index in `candidates` of the first mirror that holds the blob and the URL for
    /// the client's `method` (presigned for a private mirror), or `None` when none does.
    pub async fn first_holding(
        &self,
        candidates: &[MirrorCandidate],
        method: &http::Method,
        traceparent: Option<&str>,
    ) -> Option<(usize, String)> {
        for (i, c) in candidates.iter().enumerate() {
            let url = match self.signers.get(c.mirror).and_then(Option::as_ref) {
                None => self
                    .check
                    .check(&c.location, traceparent)
                    .await
                    .then(|| c.location.clone()),
                Some(signer) => self.signed(signer, &c.location, method, traceparent).await,
            };
            if let Some(url) = url {
                return Some((i, url));
            }
        }
        None
    }

    /// A private mirror: the check with a presigned `HEAD` (cached under the store and
    /// key, and with the breaker of the store), then the client's URL.
    async fn signed(
        &self,
        signer: &MirrorSigner,
        key: &str,
        method: &http::Method,
        traceparent: Option<&str>,
    ) -> Option<String> {
        let store = signer.store();
        let name = format!("{store}/{key}");
        let held = self
            .check
            .check_via(&name, store, traceparent, || {
                signer.url(http::Method::HEAD, key)
            })
            .await;
        if !held {
            return None;
        }
        match signer.url(method.clone(), key).await {
            Ok(url) => Some(url),
            Err(e) => {
                warn!("mirror {name}: cannot sign the client's URL: {e}");
                None
            }
        }
    }
}
