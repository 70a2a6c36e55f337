//! The source registry: tag and catalog listing with paging, manifests, blob streams. Every
//! request waits its turn under the rate limit and is retried on connection errors, `429`
//! and `5xx`, after `Retry-After` when the registry sends one, else with doubling backoff.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use log::warn;
use reqwest::{Response, StatusCode};
use serde::Deserialize;
use tokio::sync::Mutex;

use super::config::SourceConfig;

/// Manifest types asked for: indexes and image manifests, OCI and Docker.
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

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
    client: reqwest::Client,
    pacer: Pacer,
    attempts: u32,
}

impl Source {
    pub fn new(cfg: &SourceConfig) -> Result<Source, String> {
        let client = reqwest::Client::builder()
            .connect_timeout(cfg.timeout)
            .read_timeout(cfg.timeout)
            .user_agent(concat!("archeio-sync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the registry client: {e}"))?;
        Ok(Source {
            base: cfg.registry.trim_end_matches('/').to_string(),
            client,
            pacer: Pacer {
                interval: Duration::from_secs_f64(1.0 / cfg.rate_limit),
                next: Mutex::new(Instant::now()),
            },
            attempts: cfg.attempts,
        })
    }

    /// `GET path` (relative to the registry), paced and retried; the answer has status 200.
    async fn get(&self, path: &str, accept: Option<&str>) -> Result<Response, String> {
        // Link headers may carry absolute URLs.
        let url = if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.pacer.wait().await;
            let mut req = self.client.get(&url);
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            let (why, retry_after) = match req.send().await {
                Ok(resp) if resp.status() == StatusCode::OK => return Ok(resp),
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
                Ok(resp) => return Err(format!("GET {url}: answered {}", resp.status())),
                Err(e) => (format!("failed: {e}"), None),
            };
            if attempt >= self.attempts {
                return Err(format!("GET {url}: {why} ({attempt} attempts)"));
            }
            let backoff = retry_after
                .unwrap_or(Duration::from_millis(500) * 2u32.pow(attempt - 1))
                .min(Duration::from_secs(60));
            warn!("GET {url}: {why}; retrying in {backoff:?}");
            tokio::time::sleep(backoff).await;
        }
    }

    /// Follows `Link: <...>; rel="next"` pages of a list endpoint.
    async fn pages<T: for<'de> Deserialize<'de>>(&self, first: String) -> Result<Vec<T>, String> {
        let mut out = Vec::new();
        let mut next = Some(first);
        while let Some(path) = next.take() {
            let resp = self.get(&path, None).await?;
            next = resp
                .headers()
                .get("link")
                .and_then(|v| v.to_str().ok())
                .and_then(next_link);
            out.push(
                resp.json::<T>()
                    .await
                    .map_err(|e| format!("GET {path}: unreadable answer: {e}"))?,
            );
        }
        Ok(out)
    }

    /// Repositories named `prefix...`, from the catalog.
    pub async fn repositories_under(&self, prefix: &str) -> Result<Vec<String>, String> {
        let pages: Vec<Catalog> = self.pages("/v2/_catalog?n=1000".into()).await?;
        Ok(pages
            .into_iter()
            .flat_map(|p| p.repositories.unwrap_or_default())
            .filter(|r| r.starts_with(prefix))
            .collect())
    }

    /// Every tag of `repo`.
    pub async fn tags(&self, repo: &str) -> Result<Vec<String>, String> {
        let pages: Vec<Tags> = self.pages(format!("/v2/{repo}/tags/list?n=1000")).await?;
        Ok(pages
            .into_iter()
            .flat_map(|p| p.tags.unwrap_or_default())
            .collect())
    }

    /// Adds the blobs of `repo:reference` (every platform of an index) to `blobs`.
    pub async fn collect(
        &self,
        repo: &str,
        reference: &str,
        blobs: &mut BTreeMap<String, BlobRef>,
    ) -> Result<(), String> {
        let mut pending = vec![reference.to_string()];
        while let Some(r) = pending.pop() {
            let path = format!("/v2/{repo}/manifests/{r}");
            let manifest: Manifest = self
                .get(&path, Some(ACCEPT))
                .await?
                .json()
                .await
                .map_err(|e| format!("GET {path}: not a manifest: {e}"))?;
            for child in manifest.manifests.unwrap_or_default() {
                pending.push(child.digest);
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
        Ok(())
    }

    /// The blob's bytes as they arrive.
    pub async fn blob(&self, repo: &str, digest: &str) -> Result<Response, String> {
        self.get(&format!("/v2/{repo}/blobs/{digest}"), None).await
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
    fn next_page_links() {
        assert_eq!(
            next_link("</v2/a/tags/list?last=x&n=2>; rel=\"next\"").as_deref(),
            Some("/v2/a/tags/list?last=x&n=2")
        );
        assert_eq!(next_link("</x>; rel=\"prev\""), None);
    }
}
