//! Pass-through manifest cache: upstream `200` answers to `GET .../manifests/<reference>`,
//! bounded in bytes. Answers by digest never change and stay until evicted; answers by tag
//! stay `tag_ttl`. The key holds the `Accept` set, because the upstream picks the manifest
//! format from it: a client that only reads Docker v2 manifests must never get an OCI index
//! cached for another client.
//!
//! With `stale_if_error`, answers by tag are kept that much longer than `tag_ttl`: past it
//! they are no longer served as fresh, only when the gateway gets no answer from the upstream
//! ([`ManifestCache::stale`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use log::{debug, warn};
use moka::sync::Cache;
use moka::Expiry;
use sha2::{Digest, Sha256, Sha512};

use crate::config::ManifestCacheSettings;
use crate::metrics;
use crate::routing::ManifestRef;

/// Largest manifest kept (the distribution spec lets registries refuse larger ones).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// Response headers kept with a cached manifest; `Content-Length` is derived from the body.
pub const KEPT_HEADERS: [&str; 5] = [
    "content-type",
    "docker-content-digest",
    "docker-distribution-api-version",
    "etag",
    "last-modified",
];

/// An upstream answer being collected for the cache as its body streams to the client.
#[derive(Debug)]
pub struct Capture {
    headers: Vec<(&'static str, Bytes)>,
    body: BytesMut,
}

impl Capture {
    /// Starts collecting an answer that may be kept: a `200` to a `GET`, not
    /// content-encoded, not announced longer than [`MAX_MANIFEST_BYTES`]. `None` otherwise.
    pub fn begin(status: u16, headers: &http::HeaderMap, head: bool) -> Option<Capture> {
        let identity = headers.get("content-encoding").is_none();
        let small = headers
            .get("content-length")
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
            .is_none_or(|len| len <= MAX_MANIFEST_BYTES);
        if status != 200 || head || !identity || !small {
            return None;
        }
        let kept = KEPT_HEADERS
            .iter()
            .filter_map(|name| {
                let value = headers.get(*name)?;
                Some((*name, Bytes::copy_from_slice(value.as_bytes())))
            })
            .collect();
        Some(Capture {
            headers: kept,
            body: BytesMut::new(),
        })
    }

    /// Adds a piece of the body; `false` once the answer outgrew [`MAX_MANIFEST_BYTES`]
    /// (it is then not to be kept).
    pub fn push(&mut self, chunk: &[u8]) -> bool {
        if self.body.len() + chunk.len() > MAX_MANIFEST_BYTES {
            return false;
        }
        self.body.extend_from_slice(chunk);
        true
    }

    /// The kept headers and the whole body.
    pub fn into_parts(self) -> (Vec<(&'static str, Bytes)>, Bytes) {
        (self.headers, self.body.freeze())
    }
}

/// A cached answer.
#[derive(Debug)]
pub struct CachedManifest {
    /// The [`KEPT_HEADERS`] the upstream sent, in its order.
    pub headers: Vec<(&'static str, Bytes)>,
    /// The manifest bytes.
    pub body: Bytes,
    reference: ManifestRef,
    /// When it was fetched.
    fetched: Instant,
}

struct TtlByReference {
    /// How long a tag's answer is kept: `tag_ttl` plus `stale_if_error`.
    tag_kept: Duration,
}

impl Expiry<String, Arc<CachedManifest>> for TtlByReference {
    fn expire_after_create(
        &self,
        _: &String,
        entry: &Arc<CachedManifest>,
        _: Instant,
    ) -> Option<Duration> {
        match entry.reference {
            ManifestRef::Digest => None,
            ManifestRef::Tag => Some(self.tag_kept),
        }
    }
}

/// The cache; disabled when `max_bytes` is 0.
pub struct ManifestCache {
    cache: Option<Cache<String, Arc<CachedManifest>>>,
    tag_ttl: Duration,
    stale_if_error: Duration,
}

impl ManifestCache {
    /// A cache of at most `cfg.max_bytes`.
    pub fn new(cfg: &ManifestCacheSettings) -> ManifestCache {
        let cache = cfg.max_bytes.map(|max_bytes| {
            Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|key: &String, entry: &Arc<CachedManifest>| {
                    let headers: usize = entry.headers.iter().map(|(n, v)| n.len() + v.len()).sum();
                    u32::try_from(key.len() + headers + entry.body.len() + 64).unwrap_or(u32::MAX)
                })
                .expire_after(TtlByReference {
                    tag_kept: cfg.tag_ttl + cfg.stale_if_error,
                })
                .eviction_listener(|_, entry: Arc<CachedManifest>, _| {
                    metrics::MANIFEST_CACHE_BYTES.sub(entry.body.len() as i64);
                })
                .build()
        });
        ManifestCache {
            cache,
            tag_ttl: cfg.tag_ttl,
            stale_if_error: cfg.stale_if_error,
        }
    }

    /// Whether answers for `reference` are cached at all.
    pub fn caches(&self, reference: ManifestRef) -> bool {
        self.cache.is_some() && (reference == ManifestRef::Digest || !self.tag_ttl.is_zero())
    }

    /// The key for an upstream path and the request's `Accept` header lines: media types
    /// without parameters, lowercased, sorted, deduplicated.
    pub fn key<'a>(path: &str, accept: impl Iterator<Item = &'a [u8]>) -> String {
        let mut types: Vec<String> = accept
            .flat_map(|line| line.split(|b| *b == b','))
            .map(|item| {
                let media = item.split(|b| *b == b';').next().unwrap_or_default();
                String::from_utf8_lossy(media.trim_ascii()).to_ascii_lowercase()
            })
            .filter(|m| !m.is_empty())
            .collect();
        types.sort_unstable();
        types.dedup();
        let mut key = String::with_capacity(
            path.len() + 1 + types.iter().map(|t| t.len() + 1).sum::<usize>(),
        );
        key.push_str(path);
        key.push('\n');
        key.push_str(&types.join(","));
        key
    }

    /// The fresh cached answer for `key`, counting the hit or miss.
    pub fn get(&self, key: &str) -> Option<Arc<CachedManifest>> {
        let found =
            self.cache.as_ref()?.get(key).filter(|m| {
                m.reference == ManifestRef::Digest || m.fetched.elapsed() < self.tag_ttl
            });
        let label = if found.is_some() { "hit" } else { "miss" };
        metrics::MANIFEST_CACHE_LOOKUPS
            .with_label_values(&[label])
            .inc();
        found
    }

    /// An answer past its `tag_ttl` but within `stale_if_error`, for when no upstream
    /// answers; counted.
    pub fn stale(&self, key: &str) -> Option<Arc<CachedManifest>> {
        if self.stale_if_error.is_zero() {
            return None;
        }
        let found = self.cache.as_ref()?.get(key)?;
        metrics::MANIFEST_CACHE_STALE_SERVED.inc();
        Some(found)
    }

    /// Keeps a complete `200` answer. A manifest fetched by digest is kept only if its bytes
    /// have that digest, which the cache can check for `sha256` and `sha512` only.
    pub fn insert(
        &self,
        key: String,
        path: &str,
        reference: ManifestRef,
        headers: Vec<(&'static str, Bytes)>,
        body: Bytes,
    ) {
        let Some(cache) = &self.cache else {
            return;
        };
        if reference == ManifestRef::Digest {
            let path = &path[..path.find('?').unwrap_or(path.len())];
            let reference = path.rsplit_once('/').map_or("", |(_, r)| r);
            let actual = match reference.split_once(':') {
                Some(("sha256", _)) => format!("sha256:{:x}", Sha256::digest(&body)),
                Some(("sha512", _)) => format!("sha512:{:x}", Sha512::digest(&body)),
                _ => {
                    debug!("upstream manifest {path}: digest algorithm not verifiable, not cached");
                    return;
                }
            };
            if actual != reference {
                warn!("upstream manifest {path} has digest {actual}: not cached");
                return;
            }
        }
        metrics::MANIFEST_CACHE_BYTES.add(body.len() as i64);
        cache.insert(
            key,
            Arc::new(CachedManifest {
                headers,
                body,
                reference,
                fetched: Instant::now(),
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(tag_ttl: u64) -> ManifestCache {
        ManifestCache::new(&ManifestCacheSettings {
            max_bytes: Some(1 << 20),
            tag_ttl: Duration::from_secs(tag_ttl),
            stale_if_error: Duration::ZERO,
        })
    }

    #[test]
    fn key_normalises_the_accept_set() {
        let a = ManifestCache::key(
            "/v2/a/manifests/v1",
            [
                b"application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json;q=0.9".as_slice(),
                b"Application/vnd.oci.image.index.v1+json".as_slice(),
            ]
            .into_iter(),
        );
        let b = ManifestCache::key(
            "/v2/a/manifests/v1",
            [b"application/vnd.docker.distribution.manifest.v2+json,application/vnd.oci.image.index.v1+json".as_slice()]
                .into_iter(),
        );
        assert_eq!(a, b);
        let docker_only = ManifestCache::key(
            "/v2/a/manifests/v1",
            [b"application/vnd.docker.distribution.manifest.v2+json".as_slice()].into_iter(),
        );
        assert_ne!(a, docker_only);
        assert_ne!(
            ManifestCache::key("/v2/a/manifests/v2", std::iter::empty()),
            ManifestCache::key("/v2/a/manifests/v1", std::iter::empty())
        );
    }

    #[test]
    fn digest_answers_are_kept_only_when_the_bytes_match() {
        let c = cache(30);
        let body = Bytes::from_static(b"{\"schemaVersion\":2}");
        let good = format!("/v2/a/manifests/sha256:{:x}", Sha256::digest(&body));
        c.insert(
            "k1".into(),
            &good,
            ManifestRef::Digest,
            vec![("content-type", Bytes::from_static(b"application/json"))],
            body.clone(),
        );
        assert_eq!(c.get("k1").unwrap().body, body);
        let bad = format!("/v2/a/manifests/sha256:{}", "0".repeat(64));
        c.insert("k2".into(), &bad, ManifestRef::Digest, vec![], body);
        assert!(c.get("k2").is_none());
    }

    /// Issue 12, item 9: sha512 references are verified too; references of algorithms the
    /// cache cannot verify are not kept.
    #[test]
    fn only_verified_digest_answers_are_kept() {
        let c = cache(30);
        let body = Bytes::from_static(b"{\"schemaVersion\":2}");
        let sha512 = format!("{:x}", Sha512::digest(&body));
        let good = format!("/v2/a/manifests/sha512:{sha512}");
        c.insert(
            "k1".into(),
            &good,
            ManifestRef::Digest,
            vec![],
            body.clone(),
        );
        assert_eq!(c.get("k1").unwrap().body, body);
        let bad = format!("/v2/a/manifests/sha512:{}", "0".repeat(128));
        c.insert("k2".into(), &bad, ManifestRef::Digest, vec![], body.clone());
        assert!(c.get("k2").is_none(), "a sha512 mismatch was cached");
        let unknown = "/v2/a/manifests/blake3:0000000000000000000000000000000000000000000000000000000000000000";
        c.insert("k3".into(), unknown, ManifestRef::Digest, vec![], body);
        assert!(c.get("k3").is_none(), "an unverifiable digest was cached");
    }

    #[test]
    fn tags_are_not_cached_with_a_zero_ttl_and_nothing_with_zero_bytes() {
        assert!(!cache(0).caches(ManifestRef::Tag));
        assert!(cache(0).caches(ManifestRef::Digest));
        assert!(cache(1).caches(ManifestRef::Tag));
        let off = ManifestCache::new(&ManifestCacheSettings {
            max_bytes: None,
            tag_ttl: Duration::from_secs(30),
            stale_if_error: Duration::ZERO,
        });
        assert!(!off.caches(ManifestRef::Digest));
    }

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| {
                (
                    http::HeaderName::from_static(n),
                    http::HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn only_plain_complete_get_answers_are_captured() {
        let plain = headers(&[
            ("content-type", "application/vnd.oci.image.index.v1+json"),
            ("docker-content-digest", "sha256:ab"),
            ("set-cookie", "x=1"),
            ("content-length", "5"),
        ]);
        let mut c = Capture::begin(200, &plain, false).unwrap();
        assert!(c.push(b"ab"));
        assert!(c.push(b"cde"));
        let (kept, body) = c.into_parts();
        assert_eq!(
            kept.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            ["content-type", "docker-content-digest"],
            "only the kept headers, in their order"
        );
        assert_eq!(body, Bytes::from_static(b"abcde"));

        assert!(Capture::begin(404, &plain, false).is_none());
        assert!(
            Capture::begin(200, &plain, true).is_none(),
            "HEAD has no body"
        );
        let gzip = headers(&[("content-encoding", "gzip")]);
        assert!(Capture::begin(200, &gzip, false).is_none());
        let big = headers(&[("content-length", &(MAX_MANIFEST_BYTES + 1).to_string())]);
        assert!(Capture::begin(200, &big, false).is_none());
    }

    #[test]
    fn a_capture_that_outgrows_the_limit_says_so() {
        let mut c = Capture::begin(200, &http::HeaderMap::new(), false).unwrap();
        assert!(c.push(&vec![0; MAX_MANIFEST_BYTES]));
        assert!(!c.push(b"x"));
    }
}
