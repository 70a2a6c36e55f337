//! The configuration file format: the `archeio:` section of the YAML file that also holds
//! Pingora's own server keys at the top level.
//!
//! These structs are the documentation of every key: each field says what it does and has a
//! default, and `conf/archeio.yaml` shows them all. They are only the file format; the
//! validated form the gateway runs on is [`crate::settings::Settings`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The region-to-mirror table shipped as the default (the registry.k8s.io buckets).
const DEFAULT_MIRRORS_YAML: &str = include_str!("../data/mirrors.yaml");

/// The whole configuration file as far as archeio reads it. Pingora reads the same file for
/// its own top-level keys (`threads`, `pid_file`, `grace_period_seconds`, ...).
#[derive(Debug, Default, Deserialize)]
pub struct ConfigFile {
    /// archeio's own section.
    #[serde(default)]
    pub archeio: ArcheioConfig,
}

/// Everything archeio itself is configured with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArcheioConfig {
    /// Addresses the registry listener binds (IPv4 `0.0.0.0:8080`, IPv6 `[::]:8080`).
    /// The environment variable `PORT` replaces this list with `0.0.0.0:$PORT`.
    pub listen: Vec<String>,
    /// Addresses of the admin listener: `/metrics`, `/healthz`, `/readyz`.
    /// The environment variable `ARCHEIO_ADMIN_PORT` replaces this list with `0.0.0.0:$PORT`.
    pub admin_listen: Vec<String>,
    /// Where `GET /` redirects.
    pub info_url: String,
    /// Where `GET /privacy...` redirects.
    pub privacy_url: String,
    /// How requests bound for the upstream are served: `redirect` sends the client there
    /// with a `307`; `passthrough` proxies them, so clients never reach the upstream.
    pub mode: Mode,
    /// The source-of-truth registry that manifests, tags and unmirrored blobs go to.
    pub upstream: UpstreamConfig,
    /// Registry for cosign signature and attestation tags (`sha256-<hex>.sig|.att`), with the
    /// same path prefix as the upstream. Unset: they go to the upstream like any manifest.
    /// Environment variable `SIGNATURE_UPSTREAM_ENDPOINT`.
    pub signature_upstream: Option<String>,
    /// Object-store mirrors that serve blobs.
    pub mirrors: MirrorsConfig,
    /// Which cloud network and region a client address belongs to.
    pub ranges: RangesConfig,
    /// How the client address is found.
    pub client_address: ClientAddressConfig,
    /// The check that a mirror holds a blob before a client is sent there.
    pub blob_check: BlobCheckConfig,
    /// Manifests kept in memory in pass-through mode.
    pub manifest_cache: ManifestCacheConfig,
    /// Limits on slow and idle clients of the registry listener.
    pub client_timeouts: ClientTimeoutsConfig,
}

impl Default for ArcheioConfig {
    fn default() -> Self {
        ArcheioConfig {
            listen: vec!["0.0.0.0:8080".into()],
            admin_listen: vec!["0.0.0.0:9090".into()],
            info_url: "https://github.com/kubernetes/registry.k8s.io".into(),
            privacy_url: "https://www.linuxfoundation.org/privacy-policy/".into(),
            mode: Mode::Redirect,
            upstream: UpstreamConfig::default(),
            signature_upstream: None,
            mirrors: MirrorsConfig::default(),
            ranges: RangesConfig::default(),
            client_address: ClientAddressConfig::default(),
            blob_check: BlobCheckConfig::default(),
            manifest_cache: ManifestCacheConfig::default(),
            client_timeouts: ClientTimeoutsConfig::default(),
        }
    }
}

/// How requests bound for the upstream are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `307` to the upstream; the client fetches from it.
    #[default]
    Redirect,
    /// The gateway fetches from the upstream and streams the answer back.
    Passthrough,
}

/// The upstream registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Endpoints of the upstream registry (scheme, host, optional port), in order of
    /// preference: requests go to the first healthy one. Environment variable
    /// `UPSTREAM_REGISTRY_ENDPOINT` replaces the list with one endpoint.
    pub endpoints: Vec<String>,
    /// Path prefix under `/v2/` at the upstream that the request's repository is joined to.
    /// Environment variable `UPSTREAM_REGISTRY_PATH`.
    pub path: String,
    /// PEM file with the CA certificates trusted for TLS to the upstream, instead of the
    /// system's (for private registries). Unset: the system's trust store.
    pub ca_file: Option<PathBuf>,
    /// Credentials the gateway presents to the upstream in pass-through mode: as HTTP Basic
    /// auth, or to its token service when it asks for a Bearer token. Unset: anonymous.
    pub credentials: Option<CredentialsConfig>,
    /// Hosts, besides each endpoint's own, whose token service (the `realm` of a Bearer
    /// challenge) may be asked for tokens, with the credentials when set
    /// (`auth.docker.io` for Docker Hub). A realm elsewhere, or a plain `http` realm for an
    /// `https` endpoint, fails the request with `502` and nothing is sent to it.
    pub auth_realm_hosts: Vec<String>,
    /// Limits on upstream requests in pass-through mode.
    pub timeouts: UpstreamTimeoutsConfig,
    /// Active health checks of the endpoints (used when there are several, or in
    /// pass-through mode).
    pub health_check: HealthCheckConfig,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            endpoints: vec!["https://us-central1-docker.pkg.dev".into()],
            path: "k8s-artifacts-prod/images".into(),
            ca_file: None,
            credentials: None,
            auth_realm_hosts: Vec::new(),
            timeouts: UpstreamTimeoutsConfig::default(),
            health_check: HealthCheckConfig::default(),
        }
    }
}

/// A user name and where its password is read from (never the YAML file itself, so the file
/// can be shared and logged).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsConfig {
    /// The user name.
    pub username: String,
    /// Environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// File holding the password (a trailing newline is ignored).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

/// Time limits for one upstream request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamTimeoutsConfig {
    /// Establishing the connection, TLS handshake included.
    #[serde(with = "humantime_serde")]
    pub connect: Duration,
    /// Waiting for the response header, or for the next piece of the body.
    #[serde(with = "humantime_serde")]
    pub read: Duration,
    /// The whole response, from the request sent to its last byte, enforced by a timer (a
    /// stalled body is cut, a missing answer is a `504`); 0s: no limit.
    #[serde(with = "humantime_serde")]
    pub total: Duration,
}

impl Default for UpstreamTimeoutsConfig {
    fn default() -> Self {
        UpstreamTimeoutsConfig {
            connect: Duration::from_secs(5),
            read: Duration::from_secs(30),
            total: Duration::from_secs(600),
        }
    }
}

/// Active health checks: `GET <endpoint>/v2/` on an interval; any answer below 500 (`401`
/// included) counts as healthy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// Time between checks of each endpoint.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// A check not answered within this counts as failed.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive failed checks that mark an endpoint unhealthy.
    pub unhealthy_after: u32,
    /// Consecutive good checks that mark an unhealthy endpoint healthy again.
    pub healthy_after: u32,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            unhealthy_after: 2,
            healthy_after: 1,
        }
    }
}

/// How long the registry listener waits for clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientTimeoutsConfig {
    /// A whole request header, from its first byte to the empty line that ends it.
    #[serde(with = "humantime_serde")]
    pub header: Duration,
    /// A new connection's first byte, and the next request on a kept-alive connection
    /// (whole seconds).
    #[serde(with = "humantime_serde")]
    pub idle: Duration,
    /// Reading (or draining) a request body, and each read of it.
    #[serde(with = "humantime_serde")]
    pub body: Duration,
    /// Each write of an answer to the client: a client that stops reading (a zero receive
    /// window) is disconnected after this, and in pass-through its upstream request ends.
    #[serde(with = "humantime_serde")]
    pub write: Duration,
    /// Slowest acceptable download, in bytes per second: a write of N bytes may take
    /// N / rate seconds (at least 1 s) instead of `write`; 0: only `write` applies.
    pub min_send_rate: u64,
}

impl Default for ClientTimeoutsConfig {
    fn default() -> Self {
        ClientTimeoutsConfig {
            header: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            body: Duration::from_secs(10),
            write: Duration::from_secs(30),
            min_send_rate: 0,
        }
    }
}

/// The pass-through manifest cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManifestCacheConfig {
    /// Most bytes of manifests kept (bodies and keys); least recently used go first.
    /// 0 turns the cache off.
    pub max_bytes: u64,
    /// How long a manifest fetched by tag is served from the cache; 0s: tags are not
    /// cached. Manifests fetched by digest never change and stay until evicted.
    #[serde(with = "humantime_serde")]
    pub tag_ttl: Duration,
    /// How long past `tag_ttl` a manifest fetched by tag may still be served when the gateway
    /// cannot get an answer (no endpoint reachable, none answering in time, its
    /// authentication failing): the answer carries `Warning: 110` and is counted in
    /// `archeio_manifest_cache_stale_served_total`. An upstream's own answer (its `5xx`
    /// included) is always passed on. 0s: never (the client gets the `502`/`504`).
    #[serde(with = "humantime_serde")]
    pub stale_if_error: Duration,
}

impl Default for ManifestCacheConfig {
    fn default() -> Self {
        ManifestCacheConfig {
            max_bytes: 64 * 1024 * 1024,
            tag_ttl: Duration::from_secs(30),
            stale_if_error: Duration::ZERO,
        }
    }
}

/// Blob mirrors: one per cloud region, and a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MirrorsConfig {
    /// Mirror base URL for clients outside every listed region (and outside GCP).
    /// Environment variable `DEFAULT_AWS_BASE_URL`.
    pub default: String,
    /// Where a blob lives under a mirror base URL; `{digest}` is replaced by the digest.
    pub blob_path: String,
    /// Region name (as the range files name it) to mirror base URL.
    pub regions: BTreeMap<String, String>,
}

impl Default for MirrorsConfig {
    fn default() -> Self {
        MirrorsConfig {
            default: "https://d1be1w964nk82h.cloudfront.net".into(),
            blob_path: "/containers/images/{digest}".into(),
            regions: serde_yaml::from_str(DEFAULT_MIRRORS_YAML)
                .expect("data/mirrors.yaml is a map of region to URL"),
        }
    }
}

/// Cloud address ranges.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RangesConfig {
    /// Use the AWS and GCP range snapshots built into the binary.
    pub embedded: bool,
    /// Extra files in the AWS `ip-ranges.json` format.
    pub aws_files: Vec<PathBuf>,
    /// Extra files in the GCP `cloud.json` format.
    pub gcp_files: Vec<PathBuf>,
    /// Range documents fetched over HTTP(S) in the AWS format, e.g.
    /// `https://ip-ranges.amazonaws.com/ip-ranges.json`. Fetched after start-up (the gateway
    /// serves with the other sources meanwhile) and on every refresh.
    pub aws_urls: Vec<String>,
    /// Range documents fetched over HTTP(S) in the GCP format, e.g.
    /// `https://www.gstatic.com/ipranges/cloud.json`.
    pub gcp_urls: Vec<String>,
    /// How often files and URLs are read again; `0s`: only on `SIGHUP`.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// A refreshed file or URL with fewer prefixes than this fraction of its last good
    /// version is refused (a truncated download must not empty the table).
    pub min_prefix_ratio: f64,
    /// Operator rules mapping a network to a cloud and region; they win over the files for
    /// the same prefix. Longest prefix wins across all sources.
    pub custom: Vec<CustomRange>,
}

impl Default for RangesConfig {
    fn default() -> Self {
        RangesConfig {
            embedded: true,
            aws_files: Vec::new(),
            gcp_files: Vec::new(),
            aws_urls: Vec::new(),
            gcp_urls: Vec::new(),
            refresh_interval: Duration::from_secs(6 * 3600),
            min_prefix_ratio: 0.5,
            custom: Vec::new(),
        }
    }
}

/// One operator rule: clients in `cidr` are treated as `cloud` clients in `region`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomRange {
    /// The network, e.g. `10.0.0.0/8` or `2001:db8::/32`.
    pub cidr: IpNet,
    /// `aws` (blobs go to the region's mirror) or `gcp` (blobs go to the upstream).
    pub cloud: Cloud,
    /// Region name, looked up in `mirrors.regions` for `aws`.
    pub region: String,
}

/// The clouds whose published ranges archeio understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cloud {
    /// Amazon Web Services: blobs come from the region's mirror.
    Aws,
    /// Google Cloud: blobs come from the upstream registry, which runs there.
    Gcp,
}

/// Finding the client's address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientAddressConfig {
    /// Number of `X-Forwarded-For` entries, counted from the right, added by proxies we trust
    /// after the client's own entry. 1 fits Google's load balancer, which appends
    /// `<client>,<lb>`. 0 ignores the header and uses the socket peer.
    pub trusted_proxy_hops: usize,
}

impl Default for ClientAddressConfig {
    fn default() -> Self {
        ClientAddressConfig {
            trusted_proxy_hops: 1,
        }
    }
}

/// The mirror `HEAD` check and its cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BlobCheckConfig {
    /// Give up on a mirror `HEAD` after this long (the blob then counts as absent).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How long a "present" answer is cached.
    #[serde(with = "humantime_serde")]
    pub hit_ttl: Duration,
    /// How long an "absent" answer (or a failed check) is cached.
    #[serde(with = "humantime_serde")]
    pub miss_ttl: Duration,
    /// Most answers kept; least recently used ones go first.
    pub capacity: u64,
    /// When a mirror host is considered down and skipped.
    pub breaker: BreakerConfig,
}

/// The circuit breaker per mirror host: after `failures` failed checks in a row (timeout,
/// connection error, 5xx) the host's blobs go to the upstream without a check for
/// `cool_down`; then one check probes whether it is back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Failed checks in a row that open the breaker.
    pub failures: u32,
    /// How long an open breaker skips the host's checks.
    #[serde(with = "humantime_serde")]
    pub cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: 5,
            cool_down: Duration::from_secs(30),
        }
    }
}

impl Default for BlobCheckConfig {
    fn default() -> Self {
        BlobCheckConfig {
            timeout: Duration::from_secs(5),
            hit_ttl: Duration::from_secs(24 * 3600),
            miss_ttl: Duration::from_secs(60),
            capacity: 100_000,
            breaker: BreakerConfig::default(),
        }
    }
}

/// A configuration problem, naming where it came from and which key.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// The file, or the environment variable, that held the bad value.
    pub source: String,
    /// What is wrong, starting with the key.
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.source, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The environment variables [`ArcheioConfig::apply_env`] reads: the original archeio's, plus
/// our admin port.
pub const ENV_VARS: [&str; 6] = [
    "PORT",
    "UPSTREAM_REGISTRY_ENDPOINT",
    "UPSTREAM_REGISTRY_PATH",
    "SIGNATURE_UPSTREAM_ENDPOINT",
    "DEFAULT_AWS_BASE_URL",
    "ARCHEIO_ADMIN_PORT",
];

impl ArcheioConfig {
    /// Reads the `archeio:` section of `path`.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source: source.clone(),
            message: format!("cannot read the file: {e}"),
        })?;
        Self::from_yaml(&text, &source)
    }

    /// Parses the `archeio:` section of a YAML document; `source` names it in errors.
    pub fn from_yaml(text: &str, source: &str) -> Result<Self, ConfigError> {
        if text.trim().is_empty() {
            return Ok(ArcheioConfig::default());
        }
        let file: ConfigFile = serde_yaml::from_str(text).map_err(|e| ConfigError {
            source: source.to_string(),
            message: yaml_error_message(&e),
        })?;
        Ok(file.archeio)
    }

    /// Applies the original archeio's environment variables (and `ARCHEIO_ADMIN_PORT`) on top
    /// of the file. `get` looks a variable up; it is `std::env::var` outside tests.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let port = |name: &str, value: String| -> Result<String, ConfigError> {
            match value.trim().parse::<u16>() {
                Ok(p) if p > 0 => Ok(format!("0.0.0.0:{p}")),
                _ => Err(ConfigError {
                    source: format!("environment variable {name}"),
                    message: format!("expected a TCP port number (1-65535), got {value:?}"),
                }),
            }
        };
        if let Some(v) = get("PORT") {
            self.listen = vec![port("PORT", v)?];
        }
        if let Some(v) = get("ARCHEIO_ADMIN_PORT") {
            self.admin_listen = vec![port("ARCHEIO_ADMIN_PORT", v)?];
        }
        if let Some(v) = get("UPSTREAM_REGISTRY_ENDPOINT") {
            self.upstream.endpoints = vec![v];
        }
        if let Some(v) = get("UPSTREAM_REGISTRY_PATH") {
            self.upstream.path = v;
        }
        if let Some(v) = get("SIGNATURE_UPSTREAM_ENDPOINT") {
            self.signature_upstream = Some(v).filter(|s| !s.is_empty());
        }
        if let Some(v) = get("DEFAULT_AWS_BASE_URL") {
            self.mirrors.default = v;
        }
        Ok(())
    }
}

/// serde_yaml's message already names the key path (`archeio.blob_check.timeout: ...`);
/// make sure it also says where in the file.
fn yaml_error_message(e: &serde_yaml::Error) -> String {
    let text = e.to_string();
    match e.location() {
        Some(loc) if !text.contains(" at line ") => {
            format!("{text} (line {}, column {})", loc.line(), loc.column())
        }
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_file_equals_the_built_in_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/archeio.yaml");
        let shipped = ArcheioConfig::from_file(&path).unwrap();
        assert_eq!(shipped, ArcheioConfig::default());
    }

    #[test]
    fn default_mirror_table_is_the_registry_k8s_io_table() {
        let m = MirrorsConfig::default().regions;
        assert_eq!(m.len(), 36);
        assert_eq!(
            m["us-east-1"],
            "https://prod-registry-k8s-io-us-east-1.s3.dualstack.us-east-1.amazonaws.com"
        );
        assert!(m["eu-west-2"].starts_with("https://767373bbdcb8270361b96548387bf2a9ad0d48758c35"));
        assert_eq!(m["cn-north-1"], m["ap-east-1"]);
        assert_eq!(m["me-south-1"], m["me-central-1"]);
        assert!(!m.contains_key("us-gov-west-1"));
    }

    #[test]
    fn errors_name_the_file_the_key_and_the_expectation() {
        let err = ArcheioConfig::from_yaml(
            "threads: 2\narcheio:\n  blob_check:\n    timeout: soon\n",
            "conf/x.yaml",
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("conf/x.yaml: "), "{msg}");
        assert!(msg.contains("archeio.blob_check.timeout"), "{msg}");
        assert!(msg.contains("line 4"), "{msg}");

        let err = ArcheioConfig::from_yaml("archeio:\n  upstrem: {}\n", "conf/y.yaml").unwrap_err();
        assert!(err.to_string().contains("unknown field `upstrem`"), "{err}");
    }

    #[test]
    fn pingora_keys_and_an_empty_section_leave_the_defaults() {
        let c = ArcheioConfig::from_yaml("version: 1\nthreads: 4\n", "f").unwrap();
        assert_eq!(c, ArcheioConfig::default());
        assert_eq!(
            ArcheioConfig::from_yaml("", "f").unwrap(),
            ArcheioConfig::default()
        );
    }

    #[test]
    fn environment_variables_override_the_file() {
        let mut c = ArcheioConfig::default();
        let env = |k: &str| match k {
            "PORT" => Some("5001".to_string()),
            "UPSTREAM_REGISTRY_ENDPOINT" => Some("http://up.example".to_string()),
            "UPSTREAM_REGISTRY_PATH" => Some("a/b".to_string()),
            "SIGNATURE_UPSTREAM_ENDPOINT" => Some("http://sig.example".to_string()),
            "DEFAULT_AWS_BASE_URL" => Some("http://mirror.example".to_string()),
            _ => None,
        };
        c.apply_env(env).unwrap();
        assert_eq!(c.listen, ["0.0.0.0:5001"]);
        assert_eq!(c.admin_listen, ["0.0.0.0:9090"]);
        assert_eq!(c.upstream.endpoints, ["http://up.example"]);
        assert_eq!(c.upstream.path, "a/b");
        assert_eq!(c.signature_upstream.as_deref(), Some("http://sig.example"));
        assert_eq!(c.mirrors.default, "http://mirror.example");

        let err = c
            .apply_env(|k| (k == "PORT").then(|| "eighty".to_string()))
            .unwrap_err();
        assert_eq!(err.source, "environment variable PORT");
    }
}
