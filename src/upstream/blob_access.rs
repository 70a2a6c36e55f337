//! Does the upstream say a repository holds a blob, for this client? Mirrors keep blobs by
//! digest alone, so before one serves a blob for a repository the upstream is asked: a
//! `HEAD` of `/v2/<repository>/blobs/<digest>` at the preferred endpoint, authenticated as
//! the gateway's proxied requests are, or with the client's own `Authorization` when
//! clients' credentials are relayed. Answers are cached (bounded, "held" and "not held"
//! with their own lifetimes; a client's under a keyed digest of its credential and the
//! path, never the credential) and concurrent requests for one answer share one `HEAD`.

use std::time::{Duration, Instant};

use log::warn;
use quick_cache::sync::Cache;
use xxhash_rust::xxh3::xxh3_128_with_seed;

use super::auth::{parse_challenge, repository, UpstreamAuth};
use super::Upstreams;
use crate::auth::CredentialKey;
use crate::config::BlobCheck;
use crate::logging::error_chain;
use crate::metrics;
use prometheus::IntCounter;

/// How a question was answered; a metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    CacheHit,
    Held,
    NotHeld,
    Error,
}

impl Outcome {
    const ALL: [Outcome; 4] = [
        Outcome::CacheHit,
        Outcome::Held,
        Outcome::NotHeld,
        Outcome::Error,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Outcome::CacheHit => "cache_hit",
            Outcome::Held => "held",
            Outcome::NotHeld => "not_held",
            Outcome::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Answer {
    held: bool,
    /// The blob's size, from the `HEAD`'s `Content-Length`.
    size: Option<u64>,
    /// Milliseconds since [`BlobAccess::epoch`].
    expires_ms: u64,
}

/// Who asks the upstream.
#[derive(Debug, Clone, Copy)]
pub enum Asker<'a> {
    /// The gateway, with `upstream.credentials` if any.
    Gateway,
    /// A client, with its own `Authorization` value (or none): its answer is its own.
    Client(Option<&'a [u8]>),
}

/// The upstream's answers about which repository holds which blob.
pub struct BlobAccess {
    client: reqwest::Client,
    /// The gateway's answers keyed by a seeded hash of the request path, as the mirror
    /// check's cache is; a client's by a keyed digest of its credential and the path.
    cache: Cache<u128, Answer>,
    credentials: CredentialKey,
    epoch: Instant,
    held_ttl_ms: u64,
    not_held_ttl_ms: u64,
    seed: u64,
    /// Per [`Outcome`], resolved once: the request path hashes no label values.
    counters: [IntCounter; 4],
}

impl BlobAccess {
    /// Answers asked with `client` (see [`Upstreams::no_redirect_client`]), as many kept as
    /// the mirror check keeps, "held" for `held_ttl`, "not held" for the mirror check's
    /// miss lifetime.
    pub fn new(cfg: &BlobCheck, held_ttl: Duration, client: reqwest::Client) -> BlobAccess {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        BlobAccess {
            client,
            cache: Cache::new(usize::try_from(cfg.capacity).unwrap_or(usize::MAX).max(1)),
            credentials: CredentialKey::generate(),
            epoch: Instant::now(),
            held_ttl_ms: ms(held_ttl),
            not_held_ttl_ms: ms(cfg.miss_ttl),
            seed: std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), 1u8),
            counters: Outcome::ALL
                .map(|o| metrics::REPOSITORY_CHECKS.with_label_values(&[o.as_str()])),
        }
    }

    /// Whether the upstream says the repository `path` names holds its blob, to `asker`.
    /// `path` is the upstream request path, `/v2/<prefix>/<name>/blobs/<digest>`. Only a
    /// clear "held" is true: a refusal, an error or no answer keeps the blob away from the
    /// mirrors.
    pub async fn held(
        &self,
        endpoints: &Upstreams,
        auth: &UpstreamAuth,
        path: &str,
        asker: Asker<'_>,
        traceparent: Option<&str>,
    ) -> bool {
        self.answer(endpoints, auth, path, asker, traceparent)
            .await
            .is_some_and(|a| a.held)
    }

    /// The size of the blob `path` names, as the upstream's `HEAD` gave it to the gateway
    /// (the same cached answer as [`BlobAccess::held`]'s).
    pub async fn size(
        &self,
        endpoints: &Upstreams,
        auth: &UpstreamAuth,
        path: &str,
        traceparent: Option<&str>,
    ) -> Option<u64> {
        self.answer(endpoints, auth, path, Asker::Gateway, traceparent)
            .await
            .filter(|a| a.held)
            .and_then(|a| a.size)
    }

    /// The answer, cached; `None` when the upstream could not be asked.
    async fn answer(
        &self,
        endpoints: &Upstreams,
        auth: &UpstreamAuth,
        path: &str,
        asker: Asker<'_>,
        traceparent: Option<&str>,
    ) -> Option<Answer> {
        let key = match asker {
            Asker::Gateway => xxh3_128_with_seed(path.as_bytes(), self.seed),
            Asker::Client(authorization) => self
                .credentials
                .digest(authorization.unwrap_or_default(), path.as_bytes()),
        };
        let guard = loop {
            match self.cache.get_value_or_guard_async(&key).await {
                Ok(answer) if answer.expires_ms > self.now_ms() => {
                    self.record(Outcome::CacheHit);
                    return Some(answer);
                }
                Ok(_) => {
                    let now = self.now_ms();
                    self.cache.remove_if(&key, |a| a.expires_ms <= now);
                }
                Err(guard) => break guard,
            }
        };
        let (outcome, size) = self.ask(endpoints, auth, path, asker, traceparent).await;
        self.record(outcome);
        let ttl = match outcome {
            Outcome::Held => self.held_ttl_ms,
            Outcome::NotHeld => self.not_held_ttl_ms,
            // Not the repository's answer: the next request asks again.
            Outcome::Error | Outcome::CacheHit => return None,
        };
        let answer = Answer {
            held: outcome == Outcome::Held,
            size,
            expires_ms: self.now_ms().saturating_add(ttl),
        };
        let _ = guard.insert(answer);
        Some(answer)
    }

    /// One `HEAD` at the preferred endpoint; for the gateway, one more when it asked for
    /// credentials the gateway has (or a fresh token). A client's answer is its own: no
    /// second try. With the blob's size when the upstream answered `200` with it.
    async fn ask(
        &self,
        endpoints: &Upstreams,
        auth: &UpstreamAuth,
        path: &str,
        asker: Asker<'_>,
        traceparent: Option<&str>,
    ) -> (Outcome, Option<u64>) {
        let i = endpoints.preferred();
        let url = format!("{}{path}", endpoints.endpoint(i).url);
        let repo = repository(path);
        let mut retried = matches!(asker, Asker::Client(_));
        loop {
            let mut request = self.client.head(&url);
            match asker {
                Asker::Client(Some(value)) => {
                    request = request.header(http::header::AUTHORIZATION, value);
                }
                Asker::Client(None) => {}
                Asker::Gateway => match auth.authorization(i, repo).await {
                    Ok(Some(value)) => {
                        request = request.header(http::header::AUTHORIZATION, &*value);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        warn!("upstream HEAD {path}: authentication failed: {e}");
                        return (Outcome::Error, None);
                    }
                },
            }
            if let Some(value) = traceparent {
                request = request.header("traceparent", value);
            }
            let resp = match request.send().await {
                Ok(resp) => resp,
                Err(e) => {
                    warn!(
                        "upstream HEAD {path} at {} failed: {}",
                        endpoints.label(i),
                        error_chain(&e.without_url())
                    );
                    return (Outcome::Error, None);
                }
            };
            let status = resp.status();
            if status == reqwest::StatusCode::UNAUTHORIZED && !retried {
                let challenge = resp
                    .headers()
                    .get(http::header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_challenge);
                if let Some(challenge) = challenge {
                    match auth.learn(i, challenge, repo).await {
                        Ok(true) => {
                            retried = true;
                            continue;
                        }
                        Ok(false) => {}
                        Err(e) => {
                            warn!("upstream HEAD {path}: {e}");
                            return (Outcome::Error, None);
                        }
                    }
                }
            }
            let size = resp
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .filter(|_| status == reqwest::StatusCode::OK);
            let outcome = if status.is_success() || status.is_redirection() {
                // A registry may send the blob's bytes from its storage: it holds it.
                Outcome::Held
            } else if status.is_server_error() {
                warn!(
                    "upstream HEAD {path} at {} answered {status}",
                    endpoints.label(i)
                );
                Outcome::Error
            } else {
                Outcome::NotHeld
            };
            return (outcome, size);
        }
    }

    fn record(&self, outcome: Outcome) {
        self.counters[outcome as usize].inc();
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}
