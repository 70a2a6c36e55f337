//! The configuration: the file format ([`file`](mod@file)), the environment variables over it
//! ([`env`](mod@env)), and the one validated [`Settings`] the gateway runs on. Every check that can
//! fail happens here, before anything listens, and each error names the file (or the
//! environment variable) and the key.
//!
//! [`Settings`] and its parts are what the rest of the crate imports; the file-format
//! structs stay behind this module, so the YAML can change without touching the runtime.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::CertificateDer;

pub mod env;
pub mod file;
pub mod signing;
mod values;

pub use env::ENV_VARS;
pub(crate) use values::{at_least_one, Invalid};
pub use values::{dual_stack, url_host};

use crate::routing::client_addr::ClientAddressRules;
use crate::routing::ranges::RangeSources;
use crate::routing::{AuthMode, Routes};

/// Everything the gateway needs, checked.
#[derive(Debug)]
pub struct Settings {
    /// What the configuration does that its author likely did not mean, keyed as errors
    /// are (printed by `-t`, logged at start and on a reload).
    pub warnings: Vec<String>,
    /// Registry listener addresses.
    pub listen: Vec<SocketAddr>,
    /// TLS listeners and their certificates.
    pub tls: TlsSettings,
    /// Admin listener addresses (`/metrics`, `/healthz`, `/readyz`).
    pub admin_listen: Vec<SocketAddr>,
    /// Registry listeners whose connections start with a PROXY protocol header.
    pub proxy_protocol: Vec<SocketAddr>,
    /// Whom the gateway believes about the client.
    pub client_address: ClientAddressRules,
    /// What the routing decision needs, the mode included.
    pub routes: Routes,
    /// Where the range table comes from and how it is kept fresh.
    pub ranges: RangeSettings,
    /// The geo databases.
    pub geo: GeoSettings,
    /// The mirror check.
    pub blob_check: BlobCheck,
    /// Offload accounting.
    pub offload: OffloadSettings,
    /// How the private mirrors' URLs are signed.
    pub signed_mirrors: Vec<SignedMirror>,
    /// The upstream endpoints and how to reach them.
    pub upstream: UpstreamSettings,
    /// How clients authenticate.
    pub client_auth: ClientAuth,
    /// The pass-through manifest cache.
    pub manifest_cache: ManifestCacheSettings,
    /// Limits on slow and idle clients.
    pub client_timeouts: ClientTimeouts,
    /// The per-client rate limit; `None`: off.
    pub rate_limit: Option<RateLimit>,
    /// How log lines are written.
    pub log: LogSettings,
}

/// TLS listeners, checked (the certificates are read by the gateway, which serves them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// Addresses.
    pub listen: Vec<SocketAddr>,
    /// (certificate chain file, key file), in order of preference.
    pub certificates: Vec<(PathBuf, PathBuf)>,
}

/// How clients authenticate, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAuth {
    /// Nobody is asked.
    Anonymous,
    /// Each client's credentials go to the upstream.
    Relay {
        /// The gateway's base URL as clients reach it, without a trailing slash.
        public_url: String,
        /// Lifetime of a cached "this client may read this blob".
        authorization_ttl: Duration,
    },
    /// The gateway checks credentials itself.
    Local {
        /// The gateway's base URL as clients reach it, without a trailing slash.
        public_url: String,
        /// The users' htpasswd file.
        htpasswd_file: PathBuf,
        /// User to the repository globs it may pull; empty: every user, every repository.
        users: BTreeMap<String, Vec<String>>,
        /// How long an issued token is valid.
        token_lifetime: Duration,
        /// The shared token key's file; `None`: a random key per process.
        token_key_file: Option<PathBuf>,
    },
}

impl ClientAuth {
    /// The mode, as the routing decision sees it.
    pub fn mode(&self) -> AuthMode {
        match self {
            ClientAuth::Anonymous => AuthMode::Anonymous,
            ClientAuth::Relay { .. } => AuthMode::Relay,
            ClientAuth::Local { .. } => AuthMode::Local,
        }
    }

    /// `<public_url>/token`, or empty when clients are not asked.
    pub fn token_realm(&self) -> String {
        match self {
            ClientAuth::Anonymous => String::new(),
            ClientAuth::Relay { public_url, .. } | ClientAuth::Local { public_url, .. } => {
                format!("{public_url}/token")
            }
        }
    }
}

/// The per-client token bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained requests per second; at least 1.
    pub per_second: u32,
    /// The bucket's size; at least 1.
    pub burst: u32,
    /// IPv4 addresses are grouped by this prefix length (1 to 32).
    pub ipv4_prefix: u8,
    /// IPv6 addresses by this one (1 to 128).
    pub ipv6_prefix: u8,
    /// Most clients tracked at once.
    pub max_clients: u64,
}

/// Log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogSettings {
    /// Text or JSON.
    pub format: file::LogFormat,
    /// Whether access records carry client addresses.
    pub client_address: bool,
}

/// A private mirror's signing.
#[derive(Debug, Clone, PartialEq)]
pub struct SignedMirror {
    /// The mirror's index in the policy's mirrors.
    pub mirror: usize,
    /// Its store, credentials and URL lifetime.
    pub signing: signing::Signing,
    /// What `signing` was read from, to read its secret files again when they change.
    pub source: signing::SigningConfig,
}

/// The range sources and their refresh.
#[derive(Debug, Clone, PartialEq)]
pub struct RangeSettings {
    /// What the table is built from.
    pub sources: RangeSources,
    /// Time between reads of the files and URLs; `None`: only on `SIGHUP`.
    pub refresh_interval: Option<Duration>,
    /// A refreshed source with fewer prefixes than this fraction of its last good version
    /// is refused.
    pub min_prefix_ratio: f64,
}

/// Offload accounting, checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OffloadSettings {
    /// Size the upstream's blob redirects with a cached `HEAD`.
    pub upstream_head: bool,
    /// Egress prices.
    pub prices: Vec<Price>,
}

/// One egress price.
#[derive(Debug, Clone, PartialEq)]
pub struct Price {
    /// `mirror` or `upstream`.
    pub source: &'static str,
    /// The mirror's name; empty for the upstream.
    pub mirror: String,
    /// Per gigabyte.
    pub per_gb: f64,
}

/// The geo databases and how often they are looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeoSettings {
    /// MaxMind DB files, in order.
    pub databases: Vec<PathBuf>,
    /// Time between looks at the files for a change.
    pub check_interval: Duration,
}

/// The mirror `HEAD` check, its cache and its breaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobCheck {
    /// Longest wait for a `HEAD`; more than zero.
    pub timeout: Duration,
    /// Lifetime of a cached "present".
    pub hit_ttl: Duration,
    /// Lifetime of a cached "absent" or failed check.
    pub miss_ttl: Duration,
    /// Most answers kept; at least 1.
    pub capacity: u64,
    /// Failed checks in a row that open a host's breaker; at least 1.
    pub breaker_failures: u32,
    /// How long an open breaker skips the host; more than zero.
    pub breaker_cool_down: Duration,
    /// The gateway's own checks of the mirror hosts in use; `None`: off.
    pub probe: Option<MirrorProbe>,
    /// Lifetime of the upstream's cached "this repository holds this blob".
    pub repository_ttl: Duration,
}

/// Health checks of the mirror hosts in use, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MirrorProbe {
    /// Time between two checks of a host; more than zero.
    pub interval: Duration,
    /// An answer slower than this is unhealthy; at most `interval`.
    pub timeout: Duration,
    /// A healthy answer slower than this marks the host degraded; at most `timeout`.
    pub slow_after: Duration,
    /// Unhealthy checks in a row that open the host's breaker; at least 1.
    pub failures: u32,
}

/// The upstream registry, checked.
#[derive(Debug)]
pub struct UpstreamSettings {
    /// Endpoints in order of preference.
    pub endpoints: Vec<Endpoint>,
    /// CA certificates (DER) trusted instead of the system's, from `upstream.ca_file`.
    pub ca_certs: Option<Vec<CertificateDer<'static>>>,
    /// What the gateway authenticates with.
    pub credentials: Option<Credentials>,
    /// Hosts (lowercase) besides the endpoints' own whose token realms may be asked.
    pub auth_realm_hosts: Vec<String>,
    /// Request time limits.
    pub timeouts: UpstreamTimeouts,
    /// Active health checks.
    pub health_check: HealthCheck,
}

/// Time limits of one upstream request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamTimeouts {
    /// Connecting, TLS included; more than zero.
    pub connect: Duration,
    /// Each wait for the header or the next piece of the body; more than zero.
    pub read: Duration,
    /// The whole response; `None`: no limit.
    pub total: Option<Duration>,
}

/// Active health checks of the endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthCheck {
    /// Time between checks; more than zero.
    pub interval: Duration,
    /// Longest wait for a check; more than zero.
    pub timeout: Duration,
    /// Failures in a row that mark an endpoint unhealthy; at least 1.
    pub unhealthy_after: u32,
    /// Successes in a row that mark it healthy again; at least 1.
    pub healthy_after: u32,
}

/// The pass-through manifest cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManifestCacheSettings {
    /// Most bytes kept; `None`: the cache is off.
    pub max_bytes: Option<u64>,
    /// How long a manifest fetched by tag is fresh; zero: tags are not cached.
    pub tag_ttl: Duration,
    /// How long past `tag_ttl` it may still stand in when no upstream answers.
    pub stale_if_error: Duration,
}

/// Limits on the registry listener's clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientTimeouts {
    /// A whole request header; more than zero.
    pub header: Duration,
    /// Waiting for a first or next request; at least 1 s (Pingora counts whole seconds).
    pub idle: Duration,
    /// Reading or draining a request body; more than zero.
    pub body: Duration,
    /// Each write of an answer; more than zero.
    pub write: Duration,
    /// Slowest acceptable download in bytes per second; `None`: only `write` applies.
    pub min_send_rate: Option<usize>,
}

/// One upstream endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Base URL without a trailing slash, e.g. `https://registry.example:5000`.
    pub url: String,
    /// `https`.
    pub tls: bool,
    /// Host name or address literal (without IPv6 brackets), also the TLS server name.
    pub host: String,
    /// Port, the scheme's default when the URL has none.
    pub port: u16,
}

impl Endpoint {
    /// `host:port` for labels and logs (IPv6 in brackets).
    pub fn authority(&self) -> String {
        format!("{}:{}", self.bracketed_host(), self.port)
    }

    /// The `Host` header for requests to it: the port only when not the scheme's default.
    pub fn host_header(&self) -> String {
        let default_port = if self.tls { 443 } else { 80 };
        if self.port == default_port {
            self.bracketed_host()
        } else {
            self.authority()
        }
    }

    fn bracketed_host(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }
}

/// Upstream credentials; the password is read from the environment or a file and never
/// printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
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

impl ConfigError {
    /// The same error, named after the environment variable when one set the bad key.
    fn blamed_on_env(self, env: impl Fn(&str) -> Option<String>) -> ConfigError {
        let set_by = env::ENV_KEYS.iter().find(|(var, key)| {
            env(var).is_some()
                && self
                    .message
                    .strip_prefix("archeio.")
                    .and_then(|m| m.strip_prefix(key))
                    .is_some_and(|rest| rest.starts_with(['[', ':', '.']))
        });
        match set_by {
            Some((var, _)) => ConfigError {
                source: format!("environment variable {var}"),
                message: self.message,
            },
            None => self,
        }
    }
}

impl Settings {
    /// Loads `path` (or the defaults when there is none), applies the environment variables,
    /// and validates the result.
    pub fn load(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        Ok(Settings::load_effective(path, env)?.1)
    }

    /// The `archeio:` section of `path` (or the defaults) with the environment applied,
    /// unchecked, and how errors name where it came from.
    fn read(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(file::ArcheioConfig, String), ConfigError> {
        let mut cfg = match path {
            Some(p) => file::ArcheioConfig::from_file(p)?,
            None => file::ArcheioConfig::default(),
        };
        cfg.apply_env(&env)?;
        let source = path.map_or_else(
            || "built-in defaults".to_string(),
            |p| p.display().to_string(),
        );
        Ok((cfg, source))
    }

    /// The admin listener's addresses of `path` (or the defaults), environment applied,
    /// and nothing else checked: what `archeio health` needs, without the secrets a full
    /// check reads.
    pub fn admin_listen(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Vec<SocketAddr>, ConfigError> {
        let (cfg, source) = Settings::read(path, &env)?;
        values::socket_addrs(&cfg.admin_listen, "admin_listen").map_err(|e| {
            ConfigError {
                source,
                message: format!("archeio.{}: {}", e.key, e.message),
            }
            .blamed_on_env(&env)
        })
    }

    /// [`Settings::load`], with the `archeio:` section in effect: the file with the
    /// environment variables applied and the region table merged (what `-t --print` shows).
    pub fn load_effective(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(file::ArcheioConfig, Settings), ConfigError> {
        let (mut cfg, source) = Settings::read(path, &env)?;
        let settings = cfg
            .check(&source, &env)
            .map_err(|e| e.blamed_on_env(&env))?;
        cfg.mirrors.regions = cfg.mirrors.effective_regions();
        cfg.mirrors.replace_regions = true;
        Ok((cfg, settings))
    }

    /// Whether upstream-bound requests are proxied rather than redirected (pass-through
    /// mode, or clients' credentials relayed).
    pub fn passthrough(&self) -> bool {
        self.routes.passthrough || self.client_auth != ClientAuth::Anonymous
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::file::ArcheioConfig;

    fn settings(yaml: &str) -> Result<Settings, ConfigError> {
        let cfg = ArcheioConfig::from_yaml(yaml, "test.yaml")?;
        cfg.check("test.yaml", |k| {
            (k == "REG_PASSWORD").then(|| "s3cret".to_string())
        })
    }

    /// Issue 26: a named mirror no rule uses and a rule an earlier one shadows pass the
    /// check silently; `-t` now warns, and only where the shadowing is certain.
    #[test]
    fn unused_mirrors_and_shadowed_rules_are_warned_about() {
        let s = settings(
            "archeio:
  mirrors: {named: {eu: {url: 'https://eu.example'}, spare: {url: 'https://spare.example'}}}
  policy:
    rules:
      - {match: {repository: 'team/**'}, action: upstream}
      - {name: shadowed, match: {repository: 'team/**', kind: manifest}, action: deny}
      - {match: {provider: aws, kind: blob}, action: mirrors, mirrors: [eu]}
      - {name: other-kind, match: {provider: aws, kind: manifest}, action: deny}
      - {name: wider, match: {provider: [aws, gcp], kind: blob}, action: upstream}
      - {match: {cidr: 10.0.0.0/8}, action: deny}
      - {name: inside, match: {cidr: [10.1.0.0/16]}, action: upstream}
      - {name: outside, match: {cidr: [10.1.0.0/16, 192.168.0.0/16]}, action: upstream}
",
        )
        .unwrap();
        assert_eq!(
            s.warnings,
            [
                "mirrors.named.spare is in no rule's mirrors: no blob goes to it",
                "policy.rules[1] (\"shadowed\") never decides: policy.rules[0] (\"rule 1\") before it matches every request it would",
                "policy.rules[6] (\"inside\") never decides: policy.rules[5] (\"rule 6\") before it matches every request it would",
            ]
        );
    }

    #[test]
    fn defaults_build_the_original_urls() {
        let s = settings("").unwrap();
        assert_eq!(
            s.routes.upstreams,
            ["https://us-central1-docker.pkg.dev/v2/k8s-artifacts-prod/images"]
        );
        assert_eq!(s.routes.upstream_prefix, "/v2/k8s-artifacts-prod/images");
        assert!(!s.routes.passthrough);
        assert_eq!(
            s.upstream.endpoints[0].authority(),
            "us-central1-docker.pkg.dev:443"
        );
        assert!(s.upstream.endpoints[0].tls);
        let default = &s.routes.policy.mirrors[s.routes.policy.default_mirror];
        assert_eq!(&*default.base, "https://d1be1w964nk82h.cloudfront.net");
        assert_eq!(&*default.blob_prefix, "/containers/images/");
        assert_eq!(&*default.blob_suffix, "");
        // Nobody is trusted to name another client.
        assert_eq!(s.client_address, Default::default());
        assert!(s.proxy_protocol.is_empty());
        assert_eq!(s.listen, ["0.0.0.0:8080".parse().unwrap()]);
        assert_eq!(s.admin_listen, ["0.0.0.0:9090".parse().unwrap()]);
        assert!(s.routes.signature_upstream.is_none());
    }

    #[test]
    fn slashes_in_endpoint_and_prefix_are_normalised() {
        let s = settings(
            "archeio:\n  upstream: {endpoints: ['http://127.0.0.1:5000/', 'https://[::1]'], path: '/'}\n  signature_upstream: http://sig:1/\n",
        )
        .unwrap();
        assert_eq!(
            s.routes.upstreams,
            ["http://127.0.0.1:5000/v2", "https://[::1]/v2"]
        );
        assert_eq!(s.upstream.endpoints[1].authority(), "[::1]:443");
        assert_eq!(s.upstream.endpoints[1].host_header(), "[::1]");
        assert_eq!(s.upstream.endpoints[0].host_header(), "127.0.0.1:5000");
        assert_eq!(s.upstream.endpoints[1].host, "::1");
        assert_eq!(
            s.routes.signature_upstream.as_deref(),
            Some("http://sig:1/v2")
        );
        let s = settings("archeio:\n  upstream: {path: '/a/b/'}\n").unwrap();
        assert!(s.routes.upstreams[0].ends_with("/v2/a/b"));
    }

    #[test]
    fn ipv6_and_several_listen_addresses() {
        let s = settings("archeio:\n  listen: ['0.0.0.0:8080', '[::]:8080']\n").unwrap();
        assert_eq!(s.listen.len(), 2);
        assert!(s.listen[1].is_ipv6());
    }

    #[test]
    fn listeners_take_proxy_protocol_and_trusted_proxies_one_form() {
        let s = settings(
            "archeio:\n  listen: ['0.0.0.0:8080', {address: '0.0.0.0:8081', proxy_protocol: true}]\n\
             \x20 client_address: {trusted_proxies: ['::ffff:10.0.0.0/104', 10.9.0.1/32], header: forwarded}\n",
        )
        .unwrap();
        assert_eq!(s.listen.len(), 2);
        assert_eq!(s.proxy_protocol, ["0.0.0.0:8081".parse().unwrap()]);
        let nets: Vec<String> = s
            .client_address
            .trusted_proxies
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(nets, ["10.0.0.0/8", "10.9.0.1/32"]);
        assert_eq!(
            s.client_address.header,
            crate::routing::client_addr::ForwardingHeader::Forwarded
        );
    }

    #[test]
    fn bad_values_name_the_key_and_the_file() {
        let cases = [
            (
                "archeio:\n  listen: [{address: '0.0.0.0:8081', proxy_protocol: true}]\n",
                "archeio.listen: a listener with proxy_protocol: true needs client_address.trusted_proxies",
            ),
            (
                "archeio:\n  listen: [{address: '0.0.0.0:8081', proxy: true}]\n",
                "unknown field `proxy`",
            ),
            (
                "archeio:\n  client_address: {trusted_proxies: [10.0.0.0/8], trusted_proxy_hops: 1}\n",
                "archeio.client_address.trusted_proxy_hops",
            ),
            (
                "archeio:\n  client_address: {header: x-real-ip}\n",
                "unknown variant `x-real-ip`",
            ),
            ("archeio:\n  listen: ['8080']\n", "archeio.listen[0]"),
            ("archeio:\n  listen: []\n", "archeio.listen"),
            ("archeio:\n  info_url: 'ftp://x'\n", "archeio.info_url"),
            (
                "archeio:\n  upstream: {endpoints: ['http://u:p@host']}\n",
                "archeio.upstream.endpoints[0]",
            ),
            (
                "archeio:\n  upstream: {endpoints: ['http://a', 'http://h/?q=1']}\n",
                "archeio.upstream.endpoints[1]",
            ),
            (
                "archeio:\n  upstream: {endpoints: ['http://h/v2']}\n",
                "archeio.upstream.endpoints[0]",
            ),
            (
                "archeio:\n  upstream: {endpoints: []}\n",
                "archeio.upstream.endpoints",
            ),
            (
                "archeio:\n  upstream: {ca_file: /nonexistent/ca.pem}\n",
                "archeio.upstream.ca_file",
            ),
            (
                "archeio:\n  upstream: {ca_file: Cargo.toml}\n",
                "archeio.upstream.ca_file",
            ),
            (
                "archeio:\n  upstream: {credentials: {username: u}}\n",
                "archeio.upstream.credentials.password_env",
            ),
            (
                "archeio:\n  upstream: {credentials: {username: u, password_env: NOPE}}\n",
                "archeio.upstream.credentials.password_env",
            ),
            (
                "archeio:\n  upstream: {credentials: {username: u, password_file: /nonexistent}}\n",
                "archeio.upstream.credentials.password_file",
            ),
            (
                "archeio:\n  upstream: {timeouts: {read: 0s}}\n",
                "archeio.upstream.timeouts.read",
            ),
            (
                "archeio:\n  upstream: {health_check: {unhealthy_after: 0}}\n",
                "archeio.upstream.health_check.unhealthy_after",
            ),
            ("archeio:\n  mode: mirror\n", "archeio.mode"),
            (
                "archeio:\n  upstream: {path: 'a/../b'}\n",
                "archeio.upstream.path",
            ),
            (
                "archeio:\n  upstream: {path: 'a//b'}\n",
                "archeio.upstream.path",
            ),
            (
                "archeio:\n  signature_upstream: 'nope'\n",
                "archeio.signature_upstream",
            ),
            (
                "archeio:\n  mirrors: {default: 'x'}\n",
                "archeio.mirrors.default",
            ),
            (
                "archeio:\n  mirrors: {regions: {r1: 'x'}}\n",
                "archeio.mirrors.regions.r1",
            ),
            (
                "archeio:\n  mirrors: {blob_path: '/a/b'}\n",
                "archeio.mirrors.blob_path",
            ),
            (
                "archeio:\n  mirrors: {blob_path: 'a/{digest}'}\n",
                "archeio.mirrors.blob_path",
            ),
            (
                "archeio:\n  mirrors: {blob_path: '/a/{digest}/{digest}'}\n",
                "archeio.mirrors.blob_path",
            ),
            (
                "archeio:\n  mirrors: {blob_path: '/a?x={digest}'}\n",
                "archeio.mirrors.blob_path",
            ),
            (
                "archeio:\n  blob_check: {timeout: 0s}\n",
                "archeio.blob_check.timeout",
            ),
            (
                "archeio:\n  blob_check: {capacity: 0}\n",
                "archeio.blob_check.capacity",
            ),
            (
                "archeio:\n  ranges: {custom: [{cidr: 10.0.0.0/8, cloud: aws, region: ''}]}\n",
                "archeio.ranges.custom[0].region",
            ),
            (
                "archeio:\n  ranges: {custom: [{cidr: 10.0.0.0/8, cloud: Azure, region: x}]}\n",
                "archeio.ranges.custom[0].provider",
            ),
            (
                "archeio:\n  ranges: {sources: [{format: aws, file: a}, {format: azure}]}\n",
                "archeio.ranges.sources[1].file: expected exactly one of file and url",
            ),
            (
                "archeio:\n  ranges: {sources: [{format: oracle, file: a, url: 'http://b'}]}\n",
                "archeio.ranges.sources[0].file",
            ),
            (
                "archeio:\n  ranges: {sources: [{format: gcp, url: 'ftp://b'}]}\n",
                "archeio.ranges.sources[0].url",
            ),
            (
                "archeio:\n  ranges: {sources: [{format: aws, file: a}, {format: aws, file: b}, {format: geofeed, file: g}]}\n",
                "archeio.ranges.sources[2].provider: required",
            ),
            (
                "archeio:\n  ranges: {sources: [{format: cidrs, file: c, provider: cf}]}\n",
                "archeio.ranges.sources[0].region: required",
            ),
            (
                "archeio:\n  ranges: {sources: [{format: geofeed, file: g, provider: 'On Prem'}]}\n",
                "archeio.ranges.sources[0].provider: expected a lowercase name",
            ),
            (
                "archeio:\n  ranges: {sources: [{format: azure, file: g, region: ''}]}\n",
                "archeio.ranges.sources[0].region",
            ),
            (
                "archeio:\n  ranges: {sources: [{format: csv, file: g}]}\n",
                "archeio.ranges.sources[0].format",
            ),
            (
                "archeio:\n  ranges: {custom: [{cidr: 10.0.0.0/33, cloud: aws, region: x}]}\n",
                "archeio.ranges.custom[0].cidr",
            ),
            (
                "archeio:\n  client_auth: {mode: relay}\n",
                "archeio.client_auth.public_url: relay needs",
            ),
            (
                "archeio:\n  client_auth: {mode: relay, public_url: 'registry.example'}\n",
                "archeio.client_auth.public_url",
            ),
            (
                "archeio:\n  client_auth: {mode: relay, public_url: 'https://gw', authorization_ttl: 0s}\n",
                "archeio.client_auth.authorization_ttl",
            ),
            (
                "archeio:\n  upstream: {credentials: {username: u, password_env: REG_PASSWORD}}\n  client_auth: {mode: relay, public_url: 'https://gw'}\n",
                "archeio.client_auth.mode: relay sends each client's own credentials",
            ),
            (
                "archeio:\n  client_auth: {mode: Relay}\n",
                "archeio.client_auth",
            ),
            (
                "archeio:\n  tls: {listen: ['0.0.0.0:8443']}\n",
                "archeio.tls.certificates: a TLS listener needs",
            ),
            (
                "archeio:\n  listen: []\n",
                "archeio.listen: needs at least one address (or tls.listen: TLS only)",
            ),
            // Issue 26: a bad value inside `match` names its key and what the key takes.
            (
                "archeio:\n  policy: {rules: [{match: {kind: blobs}, action: upstream}]}\n",
                "archeio.policy.rules[0].match.kind: \"blobs\" is not a kind; one of blob, manifest, tag_list, referrers, signature",
            ),
            (
                "archeio:\n  policy: {rules: [{match: {kind: [blob, {x: 1}]}, action: upstream}]}\n",
                "archeio.policy.rules[0].match.kind[1]: invalid type: map, expected a value (a list holds values",
            ),
            (
                "archeio:\n  policy: {rules: [{match: {cidr: 10.20.0.0/33}, action: upstream}]}\n",
                "archeio.policy.rules[0].match.cidr: \"10.20.0.0/33\" is not a network; write an address and a prefix length",
            ),
            (
                "archeio:\n  policy: {rules: [{match: {cidr: [10.0.0.0/8, 10.20.0.1/16]}, action: upstream}]}\n",
                "archeio.policy.rules[0].match.cidr: 10.20.0.1/16 has host bits set; the network is 10.20.0.0/16",
            ),
            (
                "archeio:\n  policy: {rules: [{match: {provider: AWS}, action: upstream}]}\n",
                "archeio.policy.rules[0].match.provider: \"AWS\" is not a provider the range sources place clients under; one of aws, azure, gcp, oracle",
            ),
            (
                "archeio:\n  ranges: {custom: [{cidr: 10.0.0.0/8, provider: corp, region: hq}]}\n  policy: {rules: [{match: {provider: amazon}, action: upstream}]}\n",
                "one of aws, azure, corp, gcp, oracle",
            ),
            (
                "archeio:\n  blob_check: {capacity: lots}\n",
                "archeio.blob_check.capacity: invalid type: string \"lots\", expected a whole number",
            ),
            (
                "archeio:\n  tls: {listen: ['0.0.0.0:8080'], certificates: [{cert_file: c, key_file: k}]}\n",
                "archeio.tls.listen[0]: 0.0.0.0:8080 is also in archeio.listen",
            ),
            (
                "archeio:\n  tls: {listen: ['nowhere:443'], certificates: [{cert_file: c, key_file: k}]}\n",
                "archeio.tls.listen",
            ),
        ];
        for (yaml, key) in cases {
            let msg = settings(yaml).unwrap_err().to_string();
            assert!(msg.starts_with("test.yaml: "), "{yaml} -> {msg}");
            assert!(msg.contains(key), "{yaml} -> {msg}");
        }
    }

    #[test]
    fn passthrough_credentials_come_from_the_environment_and_are_never_printed() {
        let s = settings(
            "archeio:\n  mode: passthrough\n  upstream:\n    credentials: {username: bot, password_env: REG_PASSWORD}\n  client_auth: {mode: anonymous}\n",
        )
        .unwrap();
        assert!(s.routes.passthrough);
        let c = s.upstream.credentials.as_ref().unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("bot", "s3cret")
        );
        assert!(!format!("{s:?}").contains("s3cret"));

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-file\n").unwrap();
        let s = settings(&format!(
            "archeio:\n  upstream:\n    credentials: {{username: bot, password_file: {}}}\n  client_auth: {{}}\n",
            file.display()
        ))
        .unwrap();
        assert_eq!(s.upstream.credentials.unwrap().password, "from-file");
    }

    #[test]
    fn range_sources_come_in_the_documented_order_with_their_providers() {
        let s = settings(
            "archeio:\n  ranges:\n    gcp_files: [g.json]\n    aws_urls: ['https://a/ip-ranges.json']\n    custom: [{cidr: 10.0.0.0/8, cloud: onprem, region: lab}]\n    sources:\n      - {format: azure, url: 'https://az/tags.json'}\n      - {format: geofeed, file: feed.csv, provider: corp}\n      - {format: cidrs, file: cf.txt, provider: cloudflare, region: edge}\n      - {format: oracle, file: oci.json, region: us-ashburn-1}\n",
        )
        .unwrap();
        let docs: Vec<String> = s
            .ranges
            .sources
            .documents
            .iter()
            .map(|d| {
                let region = d.region.as_deref().unwrap_or("-");
                format!(
                    "{:?} {:?} {} {} {region}",
                    d.origin, d.format, d.location, d.provider
                )
            })
            .collect();
        assert_eq!(
            docs,
            [
                "Url Azure https://az/tags.json azure -",
                "File Geofeed feed.csv corp -",
                "File Cidrs cf.txt cloudflare edge",
                "File Oracle oci.json oracle us-ashburn-1",
                "File Gcp g.json gcp -",
                "Embedded Gcp embedded:gcp gcp -",
                "Url Aws https://a/ip-ranges.json aws -",
                "Embedded Aws embedded:aws aws -",
            ]
        );
        // The former key `cloud` still names the provider.
        assert_eq!(&*s.ranges.sources.custom[0].provider, "onprem");
        // The defaults: the two snapshots, GCP first, as before `sources` existed.
        assert_eq!(
            settings("").unwrap().ranges.sources,
            crate::routing::ranges::RangeSources::default()
        );
    }
}
