//! The source registry: tag and catalog listing with paging, manifests, blob streams. Every
//! request waits its turn under the rate limit and is retried on connection errors, `429`
//! and `5xx`, after `Retry-After` when the registry sends one, else with doubling backoff.
//!
//! The registry is not trusted: next pages stay on its origin and may not repeat, index walks
//! are bounded, and manifests fetched by digest must have that digest.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use log::warn;
use reqwest::redirect::Policy;
use reqwest::{Response, StatusCode};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;
use url::{Origin, Url};

use super::config::SourceConfig;
use super::with_causes;
use crate::config::url_host;
use crate::upstream::auth::{parse_challenge, repository, RealmPolicy, UpstreamAuth};

/// Manifest types asked for: indexes and image manifests, OCI and Docker.
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Most levels of manifests under a tag (indexes of indexes ...); images use one or two.
const MAX_DEPTH: usize = 8;

/// Spaces requests `1 / rate` apart. A dozen lines instead of a rate-limiting crate: one
/// limit, one process, no bursts wanted.
struct Pacer {
    interval: Duration,
    next: Mutex<Instant>,
}

impl Pacer {
    async fn wait(&self) {
        let at = {
            let mut next = self.next.lock().await;
            let at = (*next).max(Instant::now());
            *next = at + self.interval;
            at
        };
        tokio::time::sleep_until(at.into()).await;
    }
}

/// A blob some manifest refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRef {
    /// A repository that has it (blobs are fetched through a repository).
    pub repository: String,
    /// Its size as the manifest says.
    pub size: u64,
}

#[derive(Deserialize)]
struct Tags {
    tags: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct Catalog {
    repositories: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct Manifest {
    manifests: Option<Vec<Descriptor>>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
    size: u64,
}

/// The source registry client.
pub struct Source {
    base: String,
    origin: Origin,
    /// For the catalog, tag lists and manifests: redirects followed on the source's origin
    /// only (the registry is not trusted to send the run, and its credentials, elsewhere).
    client: reqwest::Client,
    /// For blobs, which registries redirect to storage on other hosts: any http(s) host but
    /// a link-local one (a cloud's metadata service). The bytes are checked by digest.
    blob_client: reqwest::Client,
    /// Basic credentials or Bearer tokens, learnt from the registry's `401`s (the gateway's
    /// pass-through authentication, for one endpoint). Storage redirects get none: reqwest
    /// drops `Authorization` when a redirect leaves the host.
    auth: UpstreamAuth,
    pacer: Pacer,
    attempts: u32,
}

impl Source {
    pub fn new(cfg: &SourceConfig) -> Result<Source, String> {
        let origin = Url::parse(&cfg.registry)
            .map_err(|e| format!("{}: {e}", cfg.registry))?
            .origin();
        let build = |policy: Policy| {
            reqwest::Client::builder()
                .connect_timeout(cfg.timeout)
                .read_timeout(cfg.timeout)
                .user_agent(concat!("archeio-sync/", env!("CARGO_PKG_VERSION")))
                .redirect(policy)
                .build()
                .map_err(|e| format!("cannot build the registry client: {}", with_causes(&e)))
        };
        let same_origin = origin.clone();
        let client = build(redirects(move |to| to.origin() == same_origin))?;
        let blob_client = build(redirects(|to| !link_local(to)))?;
        let registry = Url::parse(&cfg.registry).map_err(|e| format!("{}: {e}", cfg.registry))?;
        let credentials = cfg
            .credentials()
            .map_err(|e| format!("sync.source.{}: {}", e.key, e.message))?;
        let auth = UpstreamAuth::new(
            vec![RealmPolicy {
                host: url_host(&registry),
                tls: registry.scheme() == "https",
            }],
            cfg.auth_realm_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            credentials,
            client.clone(),
        );
        Ok(Source {
            base: cfg.registry.trim_end_matches('/').to_string(),
            origin,
            client,
            blob_client,
            auth,
            pacer: Pacer {
                interval: Duration::from_secs_f64(1.0 / cfg.rate_limit),
                next: Mutex::new(Instant::now()),
            },
            attempts: cfg.attempts,
        })
    }

    /// The URL of `path` (from `/v2/`) at the registry.
    fn at(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET url` (not a blob), paced and retried; the answer has status 200.
    async fn get(&self, url: &str, accept: Option<&str>) -> Result<Response, String> {
        self.get_with(Reading::Listing, url, accept).await
    }

    /// `GET url` for `reading`; the answer has status 200. A redirect that reading's policy
    /// did not follow is an error naming where it pointed (its origin: a storage URL's
    /// query may be signed).
    async fn get_with(
        &self,
        reading: Reading,
        url: &str,
        accept: Option<&str>,
    ) -> Result<Response, String> {
        let client = match reading {
            Reading::Listing => &self.client,
            Reading::Blob => &self.blob_client,
        };
        let resp = self
            .send(client, url, accept)
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if resp.status().is_redirection() {
            let to = resp
                .headers()
                .get("location")
                .and_then(|l| resp.url().join(l.to_str().ok()?).ok());
            let to = to.map_or_else(
                || "nowhere usable".into(),
                |u| u.origin().ascii_serialization(),
            );
            let why = match reading {
                Reading::Listing => {
                    "another origin or past the redirect limit (lists and manifests are read \
                     from the source's origin only)"
                }
                Reading::Blob => "a metadata address or past the redirect limit",
            };
            return Err(format!("GET {url}: redirected to {why}: {to}: refused"));
        }
        if resp.status() != StatusCode::OK {
            return Err(format!("GET {url}: answered {}", resp.status()));
        }
        Ok(resp)
    }

    /// `GET url`, paced, and retried on connection errors, `429` and `5xx`; the first other
    /// answer.
    async fn send(
        &self,
        client: &reqwest::Client,
        url: &str,
        accept: Option<&str>,
    ) -> Result<Response, String> {
        let repo = Url::parse(url)
            .ok()
            .and_then(|u| repository(u.path()).map(str::to_string));
        let repo = repo.as_deref();
        let mut attempt = 0;
        let mut authenticated_again = false;
        loop {
            attempt += 1;
            self.pacer.wait().await;
            let mut req = client.get(url);
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            if let Some(value) = self.auth.authorization(0, repo).await.map_err(|e| e.0)? {
                req = req.header("Authorization", &*value);
            }
            let (why, retry_after) = match req.send().await {
                // Once per request: what the registry asks for is learnt, and asked again.
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED && !authenticated_again => {
                    let challenge = resp
                        .headers()
                        .get("www-authenticate")
                        .and_then(|v| parse_challenge(v.to_str().ok()?));
                    let Some(challenge) = challenge else {
                        return Ok(resp);
                    };
                    if !self.auth.learn(0, challenge, repo).await.map_err(|e| e.0)? {
                        return Ok(resp);
                    }
                    authenticated_again = true;
                    attempt -= 1;
                    continue;
                }
                Ok(resp)
                    if resp.status() == StatusCode::TOO_MANY_REQUESTS
                        || resp.status().is_server_error() =>
                {
                    let after = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    (format!("answered {}", resp.status()), after)
                }
                Ok(resp) => return Ok(resp),
                // Without its URL (that of a redirect may be signed): the caller names the
                // one it asked for. The causes say refused, DNS, TLS or timeout.
                Err(e) => (with_causes(&e.without_url()), None),
            };
            if attempt >= self.attempts {
                return Err(format!("{why} ({attempt} attempts)"));
            }
            let backoff = retry_after
                .unwrap_or(Duration::from_millis(500) * 2u32.pow(attempt - 1))
                .min(Duration::from_secs(60));
            warn!("GET {url}: {why}; retrying in {backoff:?}");
            tokio::time::sleep(backoff).await;
        }
    }

    /// Asks for `/v2/` (retried as any request), so that a source that cannot be reached
    /// stops the run with one error instead of one per repository. Any answer means it is
    /// there: `401` included, as the listings that follow may not need it.
    pub async fn reach(&self) -> Result<(), String> {
        let url = self.at("/v2/");
        self.send(&self.client, &url, None)
            .await
            .map(drop)
            .map_err(|e| format!("cannot reach the source {url}: {e}"))
    }

    /// Follows `Link: <...>; rel="next"` pages of a list endpoint from `first` (a path). A
    /// next page on another origin, or one already read, ends the listing with an error.
    async fn pages<T: for<'de> Deserialize<'de>>(&self, first: &str) -> Result<Vec<T>, String> {
        let mut out = Vec::new();
        let mut url = Url::parse(&self.at(first)).map_err(|e| format!("{first}: {e}"))?;
        let mut seen = HashSet::from([url.to_string()]);
        loop {
            let resp = self.get(url.as_str(), None).await?;
            let next = resp
                .headers()
                .get("link")
                .and_then(|v| v.to_str().ok())
                .and_then(next_link);
            out.push(resp.json::<T>().await.map_err(|e| {
                format!(
                    "GET {url}: unreadable answer: {}",
                    with_causes(&e.without_url())
                )
            })?);
            let Some(next) = next else {
                return Ok(out);
            };
            // A relative target is relative to the page (RFC 8288), hence to the source.
            let next = url
                .join(&next)
                .map_err(|e| format!("GET {url}: unusable next-page Link {next:?}: {e}"))?;
            if next.origin() != self.origin {
                return Err(format!(
                    "GET {url}: the next-page Link points to another origin ({next}): refused"
                ));
            }
            if !seen.insert(next.to_string()) {
                return Err(format!(
                    "GET {url}: the next-page Link repeats an earlier page: the listing loops; stopped"
                ));
            }
            url = next;
        }
    }

    /// Repositories named `prefix...`, from the catalog.
    pub async fn repositories_under(&self, prefix: &str) -> Result<Vec<String>, String> {
        let pages: Vec<Catalog> = self.pages("/v2/_catalog?n=1000").await?;
        Ok(pages
            .into_iter()
            .flat_map(|p| p.repositories.unwrap_or_default())
            .filter(|r| r.starts_with(prefix))
            .collect())
    }

    /// Every tag of `repo`.
    pub async fn tags(&self, repo: &str) -> Result<Vec<String>, String> {
        let pages: Vec<Tags> = self.pages(&format!("/v2/{repo}/tags/list?n=1000")).await?;
        Ok(pages
            .into_iter()
            .flat_map(|p| p.tags.unwrap_or_default())
            .collect())
    }

    /// Adds the blobs of `repo:reference` (every platform of an index) to `blobs`. A manifest
    /// that cannot be read or is refused adds nothing; the problems met, one per manifest.
    pub async fn collect(
        &self,
        repo: &str,
        reference: &str,
        blobs: &mut BTreeMap<String, BlobRef>,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        // Each digest is walked once, so an index listing a manifest many times (at every
        // level) cannot multiply the requests, nor a cycle repeat them.
        let mut seen = HashSet::new();
        let mut pending = vec![(reference.to_string(), 1)];
        while let Some((r, depth)) = pending.pop() {
            let manifest = match self.manifest(repo, &r).await {
                Ok(m) => m,
                Err(e) => {
                    problems.push(e);
                    continue;
                }
            };
            let children = manifest.manifests.unwrap_or_default();
            if depth == MAX_DEPTH && !children.is_empty() {
                problems.push(format!(
                    "indexes nested more than {MAX_DEPTH} levels deep (at {r}): not followed"
                ));
            } else {
                for child in children {
                    if seen.insert(child.digest.clone()) {
                        pending.push((child.digest, depth + 1));
                    }
                }
            }
            for blob in manifest
                .config
                .into_iter()
                .chain(manifest.layers.unwrap_or_default())
            {
                blobs.entry(blob.digest).or_insert(BlobRef {
                    repository: repo.to_string(),
                    size: blob.size,
                });
            }
        }
        problems
    }

    /// The manifest `repo:reference`; one asked for by digest only if its bytes have it.
    async fn manifest(&self, repo: &str, reference: &str) -> Result<Manifest, String> {
        let url = self.at(&format!("/v2/{repo}/manifests/{reference}"));
        let bytes = self
            .get(&url, Some(ACCEPT))
            .await?
            .bytes()
            .await
            .map_err(|e| format!("GET {url}: {}", with_causes(&e.without_url())))?;
        // A tag cannot hold ':'; a digest always does.
        if reference.contains(':') {
            if !reference.starts_with("sha256:") {
                return Err(format!(
                    "manifest {reference}: only sha256 digests can be verified: refused"
                ));
            }
            let actual = format!("sha256:{:x}", Sha256::digest(&bytes));
            if actual != reference {
                return Err(format!(
                    "manifest {reference}: the registry sent bytes with digest {actual}: refused"
                ));
            }
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("GET {url}: not a manifest: {e}"))
    }

    /// The blob's bytes as they arrive.
    pub async fn blob(&self, repo: &str, digest: &str) -> Result<Response, String> {
        let url = self.at(&format!("/v2/{repo}/blobs/{digest}"));
        self.get_with(Reading::Blob, &url, None).await
    }
}

/// What a request reads, which decides where its redirects may go.
#[derive(Clone, Copy)]
enum Reading {
    /// The catalog, tag lists, manifests: the source's origin only.
    Listing,
    /// A blob: storage on other hosts too.
    Blob,
}

/// Follows at most [`MAX_REDIRECTS`] redirects, each to a URL `allowed`; stops (the
/// redirect becomes the answer) at the first other.
fn redirects(allowed: impl Fn(&Url) -> bool + Send + Sync + 'static) -> Policy {
    Policy::custom(move |attempt| {
        if attempt.previous().len() < MAX_REDIRECTS && allowed(attempt.url()) {
            attempt.follow()
        } else {
            attempt.stop()
        }
    })
}

/// Redirects followed at most.
const MAX_REDIRECTS: usize = 10;

/// Whether `url`'s host is where clouds answer instance metadata: a link-local address
/// (`169.254.169.254`, `fe80::/10`), or AWS's IPv6 one (`fd00:ec2::254`).
fn link_local(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_link_local(),
        Some(url::Host::Ipv6(ip)) => {
            ip.is_unicast_link_local()
                || ip == std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
        }
        _ => false,
    }
}

/// The target of `<...>; rel="next"`.
fn next_link(value: &str) -> Option<String> {
    value.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        params.contains("rel=\"next\"").then(|| {
            target
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_addresses_are_not_followed_for_blobs() {
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "http://[fe80::1]/x",
            "http://[fd00:ec2::254]/latest",
        ] {
            assert!(link_local(&Url::parse(url).unwrap()), "{url}");
        }
        for url in [
            "https://bucket.s3.amazonaws.com/x",
            "http://10.0.0.1/x",
            "http://[2001:db8::1]/",
        ] {
            assert!(!link_local(&Url::parse(url).unwrap()), "{url}");
        }
    }

    #[test]
    fn next_page_links() {
        assert_eq!(
            next_link("</v2/a/tags/list?last=x&n=2>; rel=\"next\"").as_deref(),
            Some("/v2/a/tags/list?last=x&n=2")
        );
        assert_eq!(next_link("</x>; rel=\"prev\""), None);
    }
}
