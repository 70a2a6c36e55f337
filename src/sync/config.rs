//! The `sync:` section of the configuration file: where blobs are copied from and to. It sits
//! beside Pingora's keys and the gateway's `archeio:` section in the same file; each reader
//! ignores the others' sections.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::file::CredentialsConfig;
use crate::config::{at_least_one, ConfigError, Invalid};

#[derive(Debug, Deserialize)]
struct SyncFile {
    sync: Option<SyncConfig>,
}

/// What `archeio sync` copies.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// The registry blobs are read from.
    pub source: SourceConfig,
    /// The object stores blobs are copied to (at least one).
    pub destinations: Vec<DestinationConfig>,
    /// Object key of a blob, `{digest}` replaced by `<algorithm>:<hex>`; the same layout
    /// as the gateway's `mirrors.blob_path`, without the leading `/`.
    #[serde(default = "default_blob_path")]
    pub blob_path: String,
    /// Blob copies in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

/// The source registry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Base URL, e.g. `https://registry.example.com`.
    pub registry: String,
    /// Repositories to copy, e.g. `[k8s-artifacts-prod/images/pause]`.
    #[serde(default)]
    pub repositories: Vec<String>,
    /// Also every repository whose name starts with this, found through `/v2/_catalog`.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Most requests per second to the registry (the original held its source at 80).
    #[serde(default = "default_rate_limit")]
    pub rate_limit: f64,
    /// Attempts per request on connection errors, `429` and `5xx` (honouring `Retry-After`).
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Connecting, and waiting for each response or piece of a blob.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// `{username, password_env | password_file}` for a registry that asks for them: sent
    /// as Basic auth, or to the registry's token service for Bearer tokens, as the gateway's
    /// `upstream.credentials` are. Unset: anonymous.
    #[serde(default)]
    pub credentials: Option<CredentialsConfig>,
    /// Hosts besides the registry's own whose token service may be asked (with the
    /// credentials), e.g. `[auth.docker.io]`.
    #[serde(default)]
    pub auth_realm_hosts: Vec<String>,
}

/// One object store.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// `s3://bucket` (or `s3://bucket/prefix`) or `file:///directory`.
    pub url: String,
    /// S3 endpoint for S3-compatible stores (path-style requests); unset: AWS.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// S3 region.
    #[serde(default = "default_region")]
    pub region: String,
    /// Environment variable holding the access key id (default `AWS_ACCESS_KEY_ID`).
    #[serde(default)]
    pub access_key_id_env: Option<String>,
    /// Environment variable holding the secret key (default `AWS_SECRET_ACCESS_KEY`).
    #[serde(default)]
    pub secret_access_key_env: Option<String>,
    /// File holding the secret key, instead of the environment.
    #[serde(default)]
    pub secret_access_key_file: Option<PathBuf>,
    /// `instance_metadata`: when no other credentials are found, ask the EC2 instance
    /// metadata service. Unset: finding none is an error.
    #[serde(default)]
    pub credentials: Option<Credentials>,
    /// Canned ACL for new objects, e.g. `public-read` so that the gateway's anonymous `HEAD`
    /// and clients' `GET` work. Unset: the bucket's default.
    #[serde(default)]
    pub acl: Option<String>,
}

/// Where an S3 destination's credentials may come from beyond the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Credentials {
    /// The EC2 instance metadata service (IMDSv2), as a last resort.
    InstanceMetadata,
}

fn default_blob_path() -> String {
    "containers/images/{digest}".into()
}
fn default_concurrency() -> usize {
    4
}
fn default_rate_limit() -> f64 {
    80.0
}
fn default_attempts() -> u32 {
    5
}
fn default_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_region() -> String {
    "us-east-1".into()
}

impl SyncConfig {
    /// Reads and checks the `sync:` section of `path`.
    pub fn from_file(path: &Path) -> Result<SyncConfig, ConfigError> {
        let source = path.display().to_string();
        let err = |message: String| ConfigError {
            source: source.clone(),
            message,
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| err(format!("cannot read the file: {e}")))?;
        let file: SyncFile = serde_yaml::from_str(&text).map_err(|e| err(e.to_string()))?;
        let cfg = file
            .sync
            .ok_or_else(|| err("sync: section missing (see conf/sync.example.yaml)".into()))?;
        cfg.check()
            .map_err(|e| err(format!("sync.{}: {}", e.key, e.message)))?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), Invalid> {
        self.source.check().map_err(|e| e.under("source"))?;
        if self.destinations.is_empty() {
            return Err(Invalid::new("destinations", "needs at least one"));
        }
        for (i, d) in self.destinations.iter().enumerate() {
            d.check()
                .map_err(|e| e.under(&format!("destinations[{i}]")))?;
        }
        if self.blob_path.matches("{digest}").count() != 1 || self.blob_path.starts_with('/') {
            return Err(Invalid::new(
                "blob_path",
                format!(
                    "expected a relative key with one {{digest}}, got {:?}",
                    self.blob_path
                ),
            ));
        }
        at_least_one("concurrency", self.concurrency as u64)
    }
}

impl SourceConfig {
    fn check(&self) -> Result<(), Invalid> {
        let url = url::Url::parse(&self.registry).map_err(|e| {
            Invalid::new(
                "registry",
                format!("expected an http(s) URL, got {:?} ({e})", self.registry),
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Invalid::new("registry", "expected an http(s) URL"));
        }
        if self.repositories.is_empty() && self.prefix.is_none() {
            return Err(Invalid::new("", "name repositories, a prefix, or both"));
        }
        if self.rate_limit.is_nan() || self.rate_limit <= 0.0 {
            return Err(Invalid::new("rate_limit", "must be above 0"));
        }
        self.credentials()?;
        at_least_one("attempts", self.attempts.into())
    }

    /// The credentials, their password read from the environment or the file.
    pub(crate) fn credentials(&self) -> Result<Option<crate::config::Credentials>, Invalid> {
        self.credentials
            .as_ref()
            .map(|c| c.check(|k| std::env::var(k).ok()))
            .transpose()
            .map_err(|e| e.under("credentials"))
    }
}

impl DestinationConfig {
    fn check(&self) -> Result<(), Invalid> {
        if !(self.url.starts_with("s3://") || self.url.starts_with("file:///")) {
            return Err(Invalid::new(
                "url",
                format!("expected s3://bucket or file:///dir, got {:?}", self.url),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<SyncConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, yaml).unwrap();
        SyncConfig::from_file(&path)
    }

    #[test]
    fn defaults_and_errors_naming_the_key() {
        let cfg = parse(
            "archeio: {}\nsync:\n  source: {registry: 'http://r:5000', repositories: [a]}\n  destinations: [{url: 's3://b'}]\n",
        )
        .unwrap();
        assert_eq!(cfg.blob_path, "containers/images/{digest}");
        assert_eq!(cfg.source.rate_limit, 80.0);
        assert_eq!(cfg.destinations[0].region, "us-east-1");
        assert_eq!(cfg.destinations[0].credentials, None);
        let cfg = parse(
            "sync:\n  source: {registry: 'http://r:5000', repositories: [a]}\n  destinations: [{url: 's3://b', credentials: instance_metadata}]\n",
        )
        .unwrap();
        assert_eq!(
            cfg.destinations[0].credentials,
            Some(Credentials::InstanceMetadata)
        );
        for (yaml, key) in [
            ("threads: 1\n", "sync: section missing"),
            ("sync:\n  source: {registry: 'ftp://x', repositories: [a]}\n  destinations: [{url: 's3://b'}]\n", "sync.source.registry"),
            ("sync:\n  source: {registry: 'http://x'}\n  destinations: [{url: 's3://b'}]\n", "sync.source"),
            ("sync:\n  source: {registry: 'http://x', repositories: [a]}\n  destinations: []\n", "sync.destinations"),
            ("sync:\n  source: {registry: 'http://x', repositories: [a]}\n  destinations: [{url: 'gs://b'}]\n", "sync.destinations[0].url"),
            ("sync:\n  source: {registry: 'http://x', repositories: [a], rate_limit: 0}\n  destinations: [{url: 's3://b'}]\n", "sync.source.rate_limit"),
            ("sync:\n  source: {registry: 'http://x', repositories: [a]}\n  destinations: [{url: 's3://b', secret: x}]\n", "unknown field `secret`"),
            ("sync:\n  source: {registry: 'http://x', repositories: [a]}\n  destinations: [{url: 's3://b', credentials: imds}]\n", "unknown variant `imds`, expected `instance_metadata`"),
        ] {
            let msg = parse(yaml).unwrap_err().to_string();
            assert!(msg.contains(key), "{yaml} -> {msg}");
        }
    }
}
