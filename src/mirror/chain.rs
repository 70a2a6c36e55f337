//! Which mirror of a rule's chain serves a blob: the first whose breaker is closed and which
//! holds it, by the cached check; a private mirror's `HEAD` and the URL the client gets are
//! presigned, with credentials read again when their files change.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use log::{info, warn};

use super::breaker::host_of;
use super::check::{Access, Counters, Held, Outcome};
use super::signing::MirrorSigner;
use super::MirrorCheck;
use crate::config::signing::{Signing, SigningConfig};
use crate::config::SignedMirror;
use crate::metrics;
use crate::routing::policy::Policy;
use crate::routing::MirrorCandidate;

/// A private mirror's signer, swapped whole when its credentials change.
struct SignerSlot {
    /// `mirrors.named.<name>`, for logs.
    name: Box<str>,
    /// What the credentials are read from.
    source: SigningConfig,
    /// The signing in use and its signer.
    current: ArcSwap<(Signing, MirrorSigner)>,
    /// Why the last reading failed, while it keeps failing: logged and counted once.
    failing: Mutex<Option<String>>,
}

/// The mirror of a chain that holds a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Its index among the candidates.
    pub index: usize,
    /// The URL for the client's method (presigned for a private mirror).
    pub url: String,
    /// The blob's size, when the mirror's `HEAD` gave it.
    pub size: Option<u64>,
}

/// The mirrors of the policy, by their index in it, and the check that asks them.
pub struct Mirrors {
    check: MirrorCheck,
    /// Per mirror of the policy: its signer, for a private one.
    signers: Vec<Option<SignerSlot>>,
    /// Per mirror of the policy: its check counters.
    counters: Vec<Counters>,
    /// Per mirror of the policy: where its health check asks (a URL, or a private
    /// mirror's object key) for an object no mirror holds.
    probe_at: Vec<String>,
    /// Per mirror of the policy: when a client's blob last went through its check, in
    /// milliseconds from `epoch` (0: never); only mirrors in use get health checks.
    used_ms: Vec<AtomicU64>,
    epoch: Instant,
}

/// A digest no blob has: the object a health check asks for.
const PROBE_DIGEST: &str =
    "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// How long a mirror counts as in use after a client's blob last went through its check.
const IN_USE: Duration = Duration::from_secs(600);

impl Mirrors {
    /// The mirrors of `policy`, checked by `check`, the private ones signed as `signed`
    /// says.
    pub fn new(
        check: MirrorCheck,
        policy: &Policy,
        signed: &[SignedMirror],
    ) -> Result<Mirrors, String> {
        let mut signers: Vec<Option<SignerSlot>> = std::iter::repeat_with(|| None)
            .take(policy.mirrors.len())
            .collect();
        for s in signed {
            let name = &policy.mirrors[s.mirror].name;
            let signer = MirrorSigner::new(&s.signing)
                .map_err(|e| format!("mirrors.named.{name}.signing: {e}"))?;
            signers[s.mirror] = Some(SignerSlot {
                name: name.clone(),
                source: s.source.clone(),
                current: ArcSwap::from_pointee((s.signing.clone(), signer)),
                failing: Mutex::new(None),
            });
        }
        let counters = policy
            .mirrors
            .iter()
            .map(|m| Counters::for_mirror(&m.name))
            .collect();
        Ok(Mirrors {
            check,
            signers,
            counters,
            probe_at: policy
                .mirrors
                .iter()
                .map(|m| m.location(PROBE_DIGEST))
                .collect(),
            used_ms: policy.mirrors.iter().map(|_| AtomicU64::new(0)).collect(),
            epoch: Instant::now(),
        })
    }

    /// Time between two health checks of a mirror host; `None`: they are off.
    pub fn probe_interval(&self) -> Option<Duration> {
        self.check.probe_interval()
    }

    /// One health check of each mirror host in use, all at once.
    pub async fn probe(&self) {
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        let window = IN_USE.as_millis() as u64;
        let mut hosts = HashMap::new();
        for (i, used) in self.used_ms.iter().enumerate() {
            let used = used.load(Ordering::Relaxed);
            if used == 0 || now_ms.saturating_sub(used) > window {
                continue;
            }
            let at = &self.probe_at[i];
            let (host, url) = match self.signers[i].as_ref() {
                None => (host_of(at).to_string(), Ok(at.clone())),
                Some(slot) => {
                    let current = slot.current.load();
                    let signer = &current.1;
                    let url = signer.url(http::Method::HEAD, at).await;
                    (signer.store().to_string(), url)
                }
            };
            // Mirrors sharing a host share its breaker: one check each.
            hosts.entry(host).or_insert(url);
        }
        let checks = hosts
            .into_iter()
            .map(|(host, url)| async move { self.check.probe(&host, url).await });
        futures::future::join_all(checks).await;
    }

    /// The first mirror in `candidates` that holds the blob, or `None` when none does.
    pub async fn first_holding(
        &self,
        candidates: &[MirrorCandidate],
        method: &http::Method,
        traceparent: Option<&str>,
    ) -> Option<Found> {
        let now_ms = (self.epoch.elapsed().as_millis() as u64).max(1);
        for (i, c) in candidates.iter().enumerate() {
            // Marked at first use, then at most once a second: no cache line bounces
            // between threads.
            let used = &self.used_ms[c.mirror];
            let last = used.load(Ordering::Relaxed);
            if last == 0 || now_ms.saturating_sub(last) >= 1000 {
                used.store(now_ms, Ordering::Relaxed);
            }
            let counters = &self.counters[c.mirror];
            if self.check.any_degraded()
                && self.check.degraded(&self.host(c))
                && self.better_after(&candidates[i + 1..])
            {
                counters.count(Outcome::Skipped);
                continue;
            }
            let found = match self.signers.get(c.mirror).and_then(Option::as_ref) {
                None => self
                    .check
                    .check(&c.location, counters, traceparent)
                    .await
                    .map(|held| (c.location.clone(), held)),
                Some(slot) => {
                    let current = slot.current.load();
                    let signer = &current.1;
                    self.signed(signer, &c.location, method, counters, traceparent)
                        .await
                }
            };
            if let Some((url, held)) = found {
                return Some(Found {
                    index: i,
                    url,
                    size: held.size,
                });
            }
        }
        None
    }

    /// The host whose breaker and health stand for candidate `c`'s mirror.
    fn host(&self, c: &MirrorCandidate) -> String {
        match self.signers.get(c.mirror).and_then(Option::as_ref) {
            None => host_of(&c.location).to_string(),
            Some(slot) => slot.current.load().1.store().to_string(),
        }
    }

    /// Whether one of `rest` is neither degraded nor skipped: a degraded mirror before it
    /// gives way.
    fn better_after(&self, rest: &[MirrorCandidate]) -> bool {
        rest.iter().any(|c| {
            let host = self.host(c);
            !self.check.degraded(&host) && !self.check.skipped(&host)
        })
    }

    /// A private mirror: the check with a presigned `HEAD` (cached under the store and
    /// key, and with the breaker of the store), then the client's URL.
    async fn signed(
        &self,
        signer: &MirrorSigner,
        key: &str,
        method: &http::Method,
        counters: &Counters,
        traceparent: Option<&str>,
    ) -> Option<(String, Held)> {
        let store = signer.store();
        let name = format!("{store}/{key}");
        let held = self
            .check
            .check_via(&name, store, Access::Signed, counters, traceparent, || {
                signer.url(http::Method::HEAD, key)
            })
            .await?;
        match signer.url(method.clone(), key).await {
            Ok(url) => Some((url, held)),
            Err(e) => {
                warn!("mirror {name}: cannot sign the client's URL: {e}");
                None
            }
        }
    }

    /// Mirror `mirror`'s copy of the blob at `location` (its URL, or object key) did not
    /// hash to the blob's digest: the mirror counts as not holding it for a while.
    pub fn mark_corrupt(&self, mirror: usize, location: &str) {
        match self.signers.get(mirror).and_then(Option::as_ref) {
            None => self.check.mark_corrupt(location),
            Some(slot) => {
                let store = slot.current.load().1.store().to_string();
                self.check.mark_corrupt(&format!("{store}/{location}"));
            }
        }
    }

    /// Reads the private mirrors' credentials again (from their files; environment
    /// variables do not change in a running process). A mirror whose credentials changed
    /// gets a new signer and a closed breaker; one whose files cannot be read or are
    /// unusable keeps its old credentials, logged and counted.
    pub fn reload_secrets(&self) {
        for slot in self.signers.iter().flatten() {
            let current = slot.current.load();
            let key = format!("mirrors.named.{}.signing", slot.name);
            let reread = slot
                .source
                .check(|k| std::env::var(k).ok())
                .map_err(|e| format!("{key}.{}: {}", e.key, e.message))
                .and_then(|signing| match signing == current.0 {
                    true => Ok(None),
                    false => MirrorSigner::new(&signing)
                        .map(|signer| Some((signing, signer)))
                        .map_err(|e| format!("{key}: {e}")),
                });
            let mut failing = slot.failing.lock().expect("lock is never poisoned");
            match reread {
                Ok(None) => *failing = None,
                Ok(Some(next)) => {
                    *failing = None;
                    let store = next.1.store().to_string();
                    slot.current.store(Arc::new(next));
                    self.check.reset(&store);
                    metrics::record_secret_reload(&slot.name, true);
                    info!("mirror {}: credentials changed, now in use", slot.name);
                }
                Err(why) if failing.as_deref() != Some(why.as_str()) => {
                    metrics::record_secret_reload(&slot.name, false);
                    warn!("mirror {}: keeping its credentials: {why}", slot.name);
                    *failing = Some(why);
                }
                Err(_) => {}
            }
        }
    }
}
