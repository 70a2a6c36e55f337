//! The configuration file format: the `archeio:` section of the YAML file that also holds
//! Pingora's own server keys at the top level.
//!
//! These structs are the documentation of every key: each field says what it does and has a
//! default, and `conf/archeio.yaml` shows them all. Each section's `check` validates it next
//! to its fields and returns the form the gateway runs on ([`super::Settings`] and its
//! parts). No runtime module imports these structs; tests, benchmarks and fuzz targets
//! build their settings from them as an operator's file would.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::signing::SigningConfig;
use super::values::{
    at_least_one, base_url, ca_certs, distinct_listeners, endpoint, http_url, path_prefix,
    positive_duration, provider_name, realm_host, redirect_url, socket_addrs, Invalid,
};
use super::{
    BlobCheck, ClientAuth, ClientTimeouts, ConfigError, Credentials, GeoSettings, HealthCheck,
    LogSettings, ManifestCacheSettings, MirrorProbe, OffloadSettings, Price, RangeSettings,
    RateLimit, Settings, TlsSettings, UpstreamSettings, UpstreamTimeouts,
};
use crate::routing::client_addr::{canonical_net, ClientAddressRules, ForwardingHeader};
use crate::routing::policy::{glob_set, Policy};
use crate::routing::ranges::{CustomRange, Format, Origin, RangeSources, Source};
use crate::routing::{AuthMode, Routes};

mod policy;

pub use policy::{ActionName, MatchConfig, NamedMirrorConfig, OneOrMany, PolicyConfig, RuleConfig};

/// The region-to-mirror table shipped as the default (the registry.k8s.io buckets).
const DEFAULT_MIRRORS_YAML: &str = include_str!("../../data/mirrors.yaml");

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
    /// Addresses the registry listener binds (IPv4 `0.0.0.0:8080`, IPv6 `[::]:8080`), each
    /// an address or `{address, proxy_protocol: true}` for a listener behind an L4 load
    /// balancer that sends PROXY protocol v1 or v2 headers (accepted from
    /// `client_address.trusted_proxies` only; every connection must start with one).
    /// May be empty when `tls.listen` is not: TLS only.
    /// The environment variable `PORT` replaces this list with `0.0.0.0:$PORT`.
    pub listen: Vec<ListenConfig>,
    /// TLS listeners for registry clients: addresses and certificates. Plain `listen` stays
    /// for setups that terminate TLS before the gateway.
    pub tls: TlsConfig,
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
    /// Which requests go where: ordered rules over the client's provider, region and
    /// address, the repository and the kind of request.
    pub policy: PolicyConfig,
    /// Which provider network and region a client address belongs to.
    pub ranges: RangesConfig,
    /// Country, continent and network (autonomous system) of client addresses, from MaxMind
    /// DB files, for rules' `country`, `continent` and `asn`.
    pub geo: GeoConfig,
    /// How the client address is found.
    pub client_address: ClientAddressConfig,
    /// How the gateway treats its clients' credentials. Must be set when
    /// `upstream.credentials` is: the gateway then reads the upstream with its own account
    /// for whoever reaches it. Unset otherwise: anonymous.
    pub client_auth: Option<ClientAuthConfig>,
    /// The check that a mirror holds a blob before a client is sent there.
    pub blob_check: BlobCheckConfig,
    /// What the mirrors save: blob sizes for the upstream's redirects, and egress prices
    /// for the dashboard's estimate.
    pub offload: OffloadConfig,
    /// Manifests kept in memory in pass-through mode.
    pub manifest_cache: ManifestCacheConfig,
    /// Limits on slow and idle clients of the registry listener.
    pub client_timeouts: ClientTimeoutsConfig,
    /// Per-client request rate limit on the registry listener; off by default.
    pub rate_limit: RateLimitConfig,
    /// Log lines as `text` (one readable line each) or `json` (one object a line, for a log
    /// pipeline), the access records included.
    pub log_format: LogFormat,
    /// Whether access records carry client addresses (`client`, `peer`). `false` keeps
    /// them out, for privacy; the provider and region stay.
    pub log_client_address: bool,
}

impl Default for ArcheioConfig {
    fn default() -> Self {
        ArcheioConfig {
            listen: vec![ListenConfig::Address("0.0.0.0:8080".into())],
            tls: TlsConfig::default(),
            admin_listen: vec!["0.0.0.0:9090".into()],
            info_url: "https://github.com/kubernetes/registry.k8s.io".into(),
            privacy_url: "https://www.linuxfoundation.org/privacy-policy/".into(),
            mode: Mode::Redirect,
            upstream: UpstreamConfig::default(),
            signature_upstream: None,
            mirrors: MirrorsConfig::default(),
            policy: PolicyConfig::default(),
            ranges: RangesConfig::default(),
            geo: GeoConfig::default(),
            client_address: ClientAddressConfig::default(),
            client_auth: None,
            blob_check: BlobCheckConfig::default(),
            offload: OffloadConfig::default(),
            manifest_cache: ManifestCacheConfig::default(),
            client_timeouts: ClientTimeoutsConfig::default(),
            rate_limit: RateLimitConfig::default(),
            log_format: LogFormat::Text,
            log_client_address: true,
        }
    }
}

impl ArcheioConfig {
    /// Validates every section; `source` names the file in errors; `env` looks up the
    /// environment variables that secrets are read from.
    pub fn check(
        &self,
        source: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        self.checked(env).map_err(|e| ConfigError {
            source: source.to_string(),
            message: format!("archeio.{}: {}", e.key, e.message),
        })
    }

    fn checked(&self, env: impl Fn(&str) -> Option<String>) -> Result<Settings, Invalid> {
        let listen_addresses: Vec<String> = self
            .listen
            .iter()
            .map(|l| l.address().to_string())
            .collect();
        let listen = socket_addrs(&listen_addresses, "listen")?;
        let proxy_protocol = listen
            .iter()
            .zip(&self.listen)
            .filter(|(_, l)| l.proxy_protocol())
            .map(|(a, _)| *a)
            .collect::<Vec<_>>();
        let client_address = self
            .client_address
            .check()
            .map_err(|e| e.under("client_address"))?;
        if !proxy_protocol.is_empty() && client_address.trusted_proxies.is_empty() {
            return Err(Invalid::new(
                "listen",
                "a listener with proxy_protocol: true needs client_address.trusted_proxies \
                 (the load balancers whose PROXY headers are believed)",
            ));
        }
        let admin_listen = socket_addrs(&self.admin_listen, "admin_listen")?;
        let tls = self.tls.check().map_err(|e| e.under("tls"))?;
        if listen.is_empty() && tls.listen.is_empty() {
            return Err(Invalid::new(
                "listen",
                "needs at least one address (or tls.listen: TLS only)",
            ));
        }
        distinct_listeners(&[
            ("listen", &listen),
            ("tls.listen", &tls.listen),
            ("admin_listen", &admin_listen),
        ])?;
        let info_url = redirect_url(&self.info_url).map_err(|m| Invalid::new("info_url", m))?;
        let privacy_url =
            redirect_url(&self.privacy_url).map_err(|m| Invalid::new("privacy_url", m))?;
        let (upstream, prefix) = self.upstream.check(&env).map_err(|e| e.under("upstream"))?;
        if upstream.credentials.is_some() && self.client_auth.is_none() {
            return Err(Invalid::new(
                "client_auth",
                "upstream.credentials are set, so whoever reaches the gateway reads the \
                 upstream (proxied requests) with the gateway's account, and clients are not \
                 asked for credentials of their own. Set client_auth: {mode: anonymous} to \
                 serve it so on purpose (only to clients that may read everything, e.g. \
                 behind a NetworkPolicy)",
            ));
        }
        let client_auth = self
            .client_auth
            .as_ref()
            .map_or(Ok(ClientAuth::Anonymous), |c| c.check(&upstream))
            .map_err(|e| e.under("client_auth"))?;
        let signature_upstream = match &self.signature_upstream {
            Some(e) => {
                let base = base_url(e).map_err(|m| Invalid::new("signature_upstream", m))?;
                Some(format!("{base}/v2{prefix}"))
            }
            None => None,
        };
        let ranges = self.ranges.check().map_err(|e| e.under("ranges"))?;
        let geo = self.geo.check().map_err(|e| e.under("geo"))?;
        let (policy, signed_mirrors) = self.policy.check(
            &self.mirrors,
            &ranges.sources.providers(),
            !geo.databases.is_empty(),
            &env,
        )?;
        let blob_check = self.blob_check.check().map_err(|e| e.under("blob_check"))?;
        let offload = self
            .offload
            .check(&policy)
            .map_err(|e| e.under("offload"))?;
        let client_timeouts = self
            .client_timeouts
            .check()
            .map_err(|e| e.under("client_timeouts"))?;
        let rate_limit = self.rate_limit.check().map_err(|e| e.under("rate_limit"))?;
        let warnings = self.policy.warnings(&self.mirrors);
        Ok(Settings {
            warnings,
            listen,
            tls,
            admin_listen,
            routes: Routes {
                info_url,
                privacy_url,
                upstreams: upstream
                    .endpoints
                    .iter()
                    .map(|e| format!("{}/v2{prefix}", e.url))
                    .collect(),
                upstream_prefix: format!("/v2{prefix}"),
                upstream_name_prefix: match prefix.strip_prefix('/') {
                    Some(name) => format!("{name}/"),
                    None => String::new(),
                },
                passthrough: self.mode == Mode::Passthrough,
                signature_upstream,
                confirm_blob_repository: policy.restricts_repositories()
                    || client_auth.mode() != AuthMode::Anonymous,
                auth: client_auth.mode(),
                token_realm: client_auth.token_realm(),
                policy,
            },
            client_address,
            proxy_protocol,
            ranges,
            geo,
            blob_check,
            offload,
            upstream,
            signed_mirrors,
            client_auth,
            manifest_cache: self.manifest_cache.check(),
            client_timeouts,
            rate_limit,
            log: LogSettings {
                format: self.log_format,
                client_address: self.log_client_address,
            },
        })
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

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line: time, level, target, message; access records as `key=value`.
    #[default]
    Text,
    /// One JSON object a line: `ts`, `level`, `target`, `msg`, or an access record's fields.
    Json,
}

/// A token bucket per client address (the one routing uses), for the registry listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained requests per second allowed per client; 0 turns the limit off.
    pub requests_per_second: u32,
    /// Requests a client may send at once above the sustained rate (the bucket's size);
    /// at least 1 when the limit is on.
    pub burst: u32,
    /// Clients are IPv4 addresses grouped by this prefix length (32: each address).
    pub ipv4_prefix: u8,
    /// IPv6 addresses grouped by this prefix length (64: one customer's network).
    pub ipv6_prefix: u8,
    /// Most clients tracked at once; the least recently seen is forgotten first (a client
    /// that keeps sending keeps its bucket), so a flood of distinct addresses costs bounded
    /// memory.
    pub max_clients: u64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            requests_per_second: 0,
            burst: 100,
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            max_clients: 100_000,
        }
    }
}

impl RateLimitConfig {
    fn check(&self) -> Result<Option<RateLimit>, Invalid> {
        if self.requests_per_second == 0 {
            return Ok(None);
        }
        if self.burst == 0 {
            return Err(Invalid::new("burst", "must be at least 1"));
        }
        if self.ipv4_prefix == 0 || self.ipv4_prefix > 32 {
            return Err(Invalid::new("ipv4_prefix", "expected 1 to 32"));
        }
        if self.ipv6_prefix == 0 || self.ipv6_prefix > 128 {
            return Err(Invalid::new("ipv6_prefix", "expected 1 to 128"));
        }
        if self.max_clients == 0 {
            return Err(Invalid::new("max_clients", "must be at least 1"));
        }
        Ok(Some(RateLimit {
            per_second: self.requests_per_second,
            burst: self.burst,
            ipv4_prefix: self.ipv4_prefix,
            ipv6_prefix: self.ipv6_prefix,
            max_clients: self.max_clients,
        }))
    }
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

impl UpstreamConfig {
    /// The endpoints, trust, credentials and limits, and the path prefix (`/a/b`, or empty).
    fn check(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(UpstreamSettings, String), Invalid> {
        if self.endpoints.is_empty() {
            return Err(Invalid::new("endpoints", "needs at least one URL"));
        }
        let endpoints = self
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| endpoint(e).map_err(|m| Invalid::new(format!("endpoints[{i}]"), m)))
            .collect::<Result<Vec<_>, _>>()?;
        let prefix = path_prefix(&self.path).map_err(|m| Invalid::new("path", m))?;
        let ca_certs = match &self.ca_file {
            Some(path) => Some(ca_certs(path).map_err(|m| Invalid::new("ca_file", m))?),
            None => None,
        };
        let credentials = match &self.credentials {
            Some(c) => Some(c.check(env).map_err(|e| e.under("credentials"))?),
            None => None,
        };
        let timeouts = self.timeouts.check().map_err(|e| e.under("timeouts"))?;
        let health_check = self
            .health_check
            .check()
            .map_err(|e| e.under("health_check"))?;
        let auth_realm_hosts = self
            .auth_realm_hosts
            .iter()
            .enumerate()
            .map(|(i, host)| {
                realm_host(host).map_err(|m| Invalid::new(format!("auth_realm_hosts[{i}]"), m))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let settings = UpstreamSettings {
            endpoints,
            ca_certs,
            credentials,
            auth_realm_hosts,
            timeouts,
            health_check,
        };
        Ok((settings, prefix))
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

impl CredentialsConfig {
    /// Reads the password from exactly one of the environment variable or the file.
    pub(crate) fn check(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Credentials, Invalid> {
        if self.username.is_empty() || self.username.contains(':') {
            return Err(Invalid::new(
                "username",
                "must be non-empty and without ':'",
            ));
        }
        let password = match (&self.password_env, &self.password_file) {
            (Some(var), None) => env(var).ok_or_else(|| {
                Invalid::new(
                    "password_env",
                    format!("environment variable {var} is not set"),
                )
            })?,
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| {
                    Invalid::new(
                        "password_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?
                .trim_end_matches(['\n', '\r'])
                .to_string(),
            _ => {
                return Err(Invalid::new(
                    "password_env",
                    "expected exactly one of password_env and password_file",
                ))
            }
        };
        Ok(Credentials {
            username: self.username.clone(),
            password,
        })
    }
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

impl UpstreamTimeoutsConfig {
    fn check(&self) -> Result<UpstreamTimeouts, Invalid> {
        positive_duration("connect", self.connect)?;
        positive_duration("read", self.read)?;
        Ok(UpstreamTimeouts {
            connect: self.connect,
            read: self.read,
            total: Some(self.total).filter(|t| !t.is_zero()),
        })
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

impl HealthCheckConfig {
    fn check(&self) -> Result<HealthCheck, Invalid> {
        positive_duration("interval", self.interval)?;
        positive_duration("timeout", self.timeout)?;
        at_least_one("unhealthy_after", self.unhealthy_after.into())?;
        at_least_one("healthy_after", self.healthy_after.into())?;
        Ok(HealthCheck {
            interval: self.interval,
            timeout: self.timeout,
            unhealthy_after: self.unhealthy_after,
            healthy_after: self.healthy_after,
        })
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

impl ClientTimeoutsConfig {
    fn check(&self) -> Result<ClientTimeouts, Invalid> {
        positive_duration("header", self.header)?;
        positive_duration("body", self.body)?;
        positive_duration("write", self.write)?;
        if self.idle < Duration::from_secs(1) || self.idle.subsec_nanos() != 0 {
            return Err(Invalid::new(
                "idle",
                format!(
                    "must be at least 1s and whole seconds (Pingora counts keep-alive in seconds), got {}",
                    humantime_serde::re::humantime::format_duration(self.idle)
                ),
            ));
        }
        Ok(ClientTimeouts {
            header: self.header,
            idle: self.idle,
            body: self.body,
            write: self.write,
            min_send_rate: usize::try_from(self.min_send_rate).ok().filter(|r| *r > 0),
        })
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

impl ManifestCacheConfig {
    fn check(&self) -> ManifestCacheSettings {
        ManifestCacheSettings {
            max_bytes: Some(self.max_bytes).filter(|b| *b > 0),
            tag_ttl: self.tag_ttl,
            stale_if_error: self.stale_if_error,
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
    /// Region name (as the range files name it) to mirror base URL: the `regions` entry of
    /// a rule's mirror chain. The built-in default is registry.k8s.io's table; the regions
    /// listed here are added to it (an entry for a built-in region replaces that one).
    pub regions: BTreeMap<String, String>,
    /// `true`: `regions` is the whole table, the built-in one is dropped.
    pub replace_regions: bool,
    /// Mirrors named for the policy rules' chains, e.g.
    /// `{cdn: {url: https://cdn.example.com}}`.
    pub named: BTreeMap<String, NamedMirrorConfig>,
}

impl Default for MirrorsConfig {
    fn default() -> Self {
        MirrorsConfig {
            default: "https://d1be1w964nk82h.cloudfront.net".into(),
            blob_path: "/containers/images/{digest}".into(),
            regions: serde_yaml::from_str(DEFAULT_MIRRORS_YAML)
                .expect("data/mirrors.yaml is a map of region to URL"),
            replace_regions: false,
            named: BTreeMap::new(),
        }
    }
}

impl MirrorsConfig {
    /// The region table in use: `regions` over the built-in table, or alone with
    /// `replace_regions`.
    pub fn effective_regions(&self) -> BTreeMap<String, String> {
        if self.replace_regions {
            return self.regions.clone();
        }
        let mut table = MirrorsConfig::default().regions;
        table.extend(self.regions.clone());
        table
    }
}

/// IP address ranges: which provider and region a client address belongs to. For an
/// identical prefix the first of these wins: `custom`, then `sources` in the order listed,
/// then GCP files, GCP URLs, the embedded GCP snapshot, AWS files, AWS URLs, the embedded AWS
/// snapshot. Across all of them the most specific prefix wins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RangesConfig {
    /// Use the AWS and GCP range snapshots built into the binary.
    pub embedded: bool,
    /// Range documents in any format (AWS, GCP, Azure, Oracle, RFC 8805 geofeed, plain CIDR
    /// list), from a file or a URL, each under a provider name.
    pub sources: Vec<RangeSourceConfig>,
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
    /// Operator rules mapping a network to a provider and region; they win over every
    /// document for the same prefix.
    pub custom: Vec<CustomRangeConfig>,
}

impl Default for RangesConfig {
    fn default() -> Self {
        RangesConfig {
            embedded: true,
            sources: Vec::new(),
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

impl RangesConfig {
    fn check(&self) -> Result<RangeSettings, Invalid> {
        let ratio = self.min_prefix_ratio;
        if !(0.0..=1.0).contains(&ratio) {
            return Err(Invalid::new(
                "min_prefix_ratio",
                format!("expected a fraction between 0 and 1, got {ratio}"),
            ));
        }
        for (key, urls) in [("aws_urls", &self.aws_urls), ("gcp_urls", &self.gcp_urls)] {
            for (i, u) in urls.iter().enumerate() {
                http_url(u).map_err(|m| Invalid::new(format!("{key}[{i}]"), m))?;
            }
        }
        let mut custom = Vec::with_capacity(self.custom.len());
        for (i, rule) in self.custom.iter().enumerate() {
            provider_name(&rule.provider)
                .map_err(|m| Invalid::new(format!("custom[{i}].provider"), m))?;
            if rule.region.is_empty() {
                return Err(Invalid::new(
                    format!("custom[{i}].region"),
                    "must not be empty",
                ));
            }
            custom.push(CustomRange {
                cidr: canonical_net(rule.cidr),
                provider: rule.provider.clone(),
                region: rule.region.clone(),
            });
        }
        let mut documents = self
            .sources
            .iter()
            .enumerate()
            .map(|(i, s)| s.check().map_err(|e| e.under(&format!("sources[{i}]"))))
            .collect::<Result<Vec<_>, _>>()?;
        for format in [Format::Gcp, Format::Aws] {
            let (files, urls) = match format {
                Format::Gcp => (&self.gcp_files, &self.gcp_urls),
                _ => (&self.aws_files, &self.aws_urls),
            };
            let provider = format.default_provider().unwrap_or_default();
            let source = |location: String, origin| Source {
                location,
                origin,
                format,
                provider: provider.into(),
                region: None,
            };
            documents.extend(
                files
                    .iter()
                    .map(|p| source(p.display().to_string(), Origin::File)),
            );
            documents.extend(urls.iter().map(|u| source(u.clone(), Origin::Url)));
            if self.embedded {
                documents.push(Source::embedded(format));
            }
        }
        Ok(RangeSettings {
            sources: RangeSources { documents, custom },
            refresh_interval: Some(self.refresh_interval).filter(|t| !t.is_zero()),
            min_prefix_ratio: ratio,
        })
    }
}

/// Offload accounting: `archeio_blob_bytes_total` counts the bytes of each blob answer by
/// where it came from (a mirror's from its check's `Content-Length`, a proxied answer's as
/// streamed); these settings fill in the rest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OffloadConfig {
    /// Learn the size of blobs redirected to the upstream with a `HEAD` there (made by the
    /// gateway with its credentials, cached like the mirror answers), so that the upstream's
    /// bytes are counted too. Off: such answers are counted in
    /// `archeio_blob_size_unknown_total` only.
    pub upstream_head: bool,
    /// Egress price per gigabyte (10^9 bytes) by mirror name (`default`, a region of
    /// `mirrors.regions`, a name of `mirrors.named`) or `upstream`, e.g.
    /// `{upstream: 0.09, eu: 0.02}`: exported as `archeio_egress_cost_per_gigabyte` for the
    /// dashboard's cost estimate. Empty: no estimate.
    pub cost_per_gb: BTreeMap<String, f64>,
}

impl OffloadConfig {
    fn check(&self, policy: &Policy) -> Result<OffloadSettings, Invalid> {
        let mut prices = Vec::with_capacity(self.cost_per_gb.len());
        for (name, price) in &self.cost_per_gb {
            let key = format!("cost_per_gb.{name}");
            if !price.is_finite() || *price < 0.0 {
                return Err(Invalid::new(
                    key,
                    format!("expected a price of 0 or more, got {price}"),
                ));
            }
            let (source, mirror) = if name == "upstream" {
                ("upstream", "")
            } else if policy.mirrors.iter().any(|m| *m.name == **name) {
                ("mirror", name.as_str())
            } else {
                let mut known: Vec<&str> = policy.mirrors.iter().map(|m| &*m.name).collect();
                known.push("upstream");
                return Err(Invalid::new(
                    key,
                    format!("{name:?} is no mirror; one of {}", known.join(", ")),
                ));
            };
            prices.push(Price {
                source,
                mirror: mirror.to_string(),
                per_gb: *price,
            });
        }
        Ok(OffloadSettings {
            upstream_head: self.upstream_head,
            prices,
        })
    }
}

/// The geo databases: MaxMind DB files (GeoLite2/GeoIP2 Country, City or ASN, DB-IP,
/// ip-location-db, IPinfo), read at start-up (a missing or corrupt file stops the start)
/// and again when one changes or on `SIGHUP`; a changed file that does not open keeps its
/// last good version. The gateway never downloads them: keep them current with the
/// vendor's updater (e.g. `geoipupdate`) or an image rebuild.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeoConfig {
    /// The files, in order: for each fact (country, continent, network) the first file
    /// that has it for an address gives it, so a country file and an ASN file combine.
    /// Empty: no geo facts (rules cannot use `country`, `continent` or `asn`).
    pub databases: Vec<PathBuf>,
    /// How often the files are looked at for a change (size or modification time).
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
}

impl Default for GeoConfig {
    fn default() -> Self {
        GeoConfig {
            databases: Vec::new(),
            check_interval: Duration::from_secs(60),
        }
    }
}

impl GeoConfig {
    fn check(&self) -> Result<GeoSettings, Invalid> {
        if self.check_interval.is_zero() {
            return Err(Invalid::new("check_interval", "must be more than 0s"));
        }
        for (i, path) in self.databases.iter().enumerate() {
            if self.databases[..i].contains(path) {
                return Err(Invalid::new(
                    format!("databases[{i}]"),
                    format!("{} is listed twice", path.display()),
                ));
            }
        }
        Ok(GeoSettings {
            databases: self.databases.clone(),
            check_interval: self.check_interval,
        })
    }
}

/// One range document under `ranges.sources`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeSourceConfig {
    /// Its layout: `aws` (`ip-ranges.json`), `gcp` (`cloud.json`), `azure` (Service Tags
    /// JSON), `oracle` (`public_ip_ranges.json`), `geofeed` (RFC 8805 CSV) or `cidrs` (one
    /// CIDR a line).
    pub format: Format,
    /// A file to read at start-up (a bad one stops the start) and on every refresh. Exactly
    /// one of `file` and `url`.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// An HTTP(S) URL fetched after start-up and on every refresh. Exactly one of `file` and
    /// `url`.
    #[serde(default)]
    pub url: Option<String>,
    /// The provider its prefixes are placed under (lowercase letters, digits, `_`, `-`).
    /// Unset: the format's (`aws`, `gcp`, `azure`, `oracle`); required for `geofeed` and
    /// `cidrs`.
    #[serde(default)]
    pub provider: Option<String>,
    /// The region every prefix is placed in, instead of the document's. Required for
    /// `cidrs`, which names none. Unset: the document's regions.
    #[serde(default)]
    pub region: Option<String>,
}

impl RangeSourceConfig {
    fn check(&self) -> Result<Source, Invalid> {
        let (location, origin) = match (&self.file, &self.url) {
            (Some(path), None) => (path.display().to_string(), Origin::File),
            (None, Some(url)) => {
                http_url(url).map_err(|m| Invalid::new("url", m))?;
                (url.clone(), Origin::Url)
            }
            _ => return Err(Invalid::new("file", "expected exactly one of file and url")),
        };
        let provider = match (&self.provider, self.format.default_provider()) {
            (Some(name), _) => name.as_str(),
            (None, Some(name)) => name,
            (None, None) => {
                return Err(Invalid::new(
                    "provider",
                    "required for the geofeed and cidrs formats, which name no provider",
                ))
            }
        };
        provider_name(provider).map_err(|m| Invalid::new("provider", m))?;
        match &self.region {
            Some(region) if region.is_empty() => {
                return Err(Invalid::new("region", "must not be empty"))
            }
            None if self.format == Format::Cidrs => {
                return Err(Invalid::new(
                    "region",
                    "required for the cidrs format, whose lines name none",
                ))
            }
            _ => {}
        }
        Ok(Source {
            location,
            origin,
            format: self.format,
            provider: provider.into(),
            region: self.region.as_deref().map(Into::into),
        })
    }
}

/// One operator rule: clients in `cidr` are treated as `provider` clients in `region`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomRangeConfig {
    /// The network, e.g. `10.0.0.0/8` or `2001:db8::/32`.
    pub cidr: IpNet,
    /// The provider its clients count as (lowercase letters, digits, `_`, `-`): `gcp` sends
    /// blobs to the upstream, any other (`aws`, `onprem`, ...) to the region's mirror. Also
    /// accepted as `cloud`, its former name.
    #[serde(alias = "cloud")]
    pub provider: String,
    /// Region name, looked up in `mirrors.regions`.
    pub region: String,
}

/// TLS listeners: TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`, the certificate chosen by SNI.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Addresses, e.g. `["0.0.0.0:8443"]`. Empty: no TLS listener.
    pub listen: Vec<String>,
    /// PEM certificate chains and their keys. A connection gets the first whose names
    /// (subject alternative names, else the common name; `*.example.com` covers one label)
    /// match its SNI, else the first. Files are read again when they change and on `SIGHUP`.
    pub certificates: Vec<CertificateConfig>,
}

/// One certificate chain and its private key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// PEM: the server's certificate first, then its intermediates.
    pub cert_file: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

impl TlsConfig {
    fn check(&self) -> Result<TlsSettings, Invalid> {
        let listen = socket_addrs(&self.listen, "listen")?;
        if !listen.is_empty() && self.certificates.is_empty() {
            return Err(Invalid::new(
                "certificates",
                "a TLS listener needs at least one {cert_file, key_file}",
            ));
        }
        Ok(TlsSettings {
            listen,
            certificates: self
                .certificates
                .iter()
                .map(|c| (c.cert_file.clone(), c.key_file.clone()))
                .collect(),
        })
    }
}

/// How the gateway treats its clients' credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientAuthConfig {
    /// `anonymous`: clients are not asked for credentials (`/v2/` answers `200`); what the
    /// gateway proxies it reads with `upstream.credentials`, for anyone.
    /// `relay`: each client authenticates to the upstream with its own credentials, through
    /// the gateway: the upstream's challenge is relayed at `/v2/` (a Bearer realm through
    /// the gateway's `/token`), manifests, tags and referrers are proxied with the client's
    /// `Authorization`, and a blob goes to a mirror only after the upstream let this client
    /// read it from the named repository.
    pub mode: ClientAuthMode,
    /// The gateway's own address as clients reach it, e.g. `https://registry.example.com`:
    /// challenges name `<public_url>/token` as the token realm. Required by `relay`.
    pub public_url: Option<String>,
    /// `relay`: how long the upstream's "this client may read this blob from this
    /// repository" is kept, per credential (by a keyed digest, never the credential),
    /// repository and blob. A revoked credential reads mirrored blobs at most this long.
    #[serde(with = "humantime_serde")]
    pub authorization_ttl: Duration,
    /// `local`: the users, an htpasswd file of bcrypt entries (`htpasswd -B`), read again
    /// when it changes.
    pub htpasswd_file: Option<PathBuf>,
    /// `local`: user name to the repository globs it may pull. Empty: every user pulls
    /// every repository; otherwise users not listed pull nothing.
    pub users: BTreeMap<String, Vec<String>>,
    /// `local`: how long a token from `/token` is valid.
    #[serde(with = "humantime_serde")]
    pub token_lifetime: Duration,
    /// `local`: a file holding the key (at least 32 bytes) tokens are signed with, the same
    /// for every replica. Unset: a random key per process, so a token works only on the
    /// replica that issued it (and not after a restart).
    pub token_key_file: Option<PathBuf>,
}

impl Default for ClientAuthConfig {
    fn default() -> Self {
        ClientAuthConfig {
            mode: ClientAuthMode::Anonymous,
            public_url: None,
            authorization_ttl: Duration::from_secs(60),
            htpasswd_file: None,
            users: BTreeMap::new(),
            token_lifetime: Duration::from_secs(300),
            token_key_file: None,
        }
    }
}

/// Whether and how clients authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuthMode {
    /// Nobody is asked: archeio's behaviour.
    #[default]
    Anonymous,
    /// Clients authenticate to the upstream with their own credentials, through the gateway.
    Relay,
    /// The gateway checks clients' credentials itself and reads the upstream with its own.
    Local,
}

impl ClientAuthConfig {
    fn check(&self, upstream: &UpstreamSettings) -> Result<ClientAuth, Invalid> {
        match self.mode {
            ClientAuthMode::Anonymous => Ok(ClientAuth::Anonymous),
            ClientAuthMode::Relay => {
                if upstream.credentials.is_some() {
                    return Err(Invalid::new(
                        "mode",
                        "relay sends each client's own credentials upstream; \
                         upstream.credentials would not be used: remove them",
                    ));
                }
                positive_duration("authorization_ttl", self.authorization_ttl)?;
                Ok(ClientAuth::Relay {
                    public_url: self.public_url("relay")?,
                    authorization_ttl: self.authorization_ttl,
                })
            }
            ClientAuthMode::Local => {
                let htpasswd_file = self.htpasswd_file.clone().ok_or_else(|| {
                    Invalid::new(
                        "htpasswd_file",
                        "local needs the users' htpasswd file (bcrypt entries, htpasswd -B)",
                    )
                })?;
                for (user, globs) in &self.users {
                    glob_set(globs).map_err(|e| Invalid::new(format!("users.{user}"), e))?;
                }
                positive_duration("token_lifetime", self.token_lifetime)?;
                Ok(ClientAuth::Local {
                    public_url: self.public_url("local")?,
                    htpasswd_file,
                    users: self.users.clone(),
                    token_lifetime: self.token_lifetime,
                    token_key_file: self.token_key_file.clone(),
                })
            }
        }
    }

    fn public_url(&self, mode: &str) -> Result<String, Invalid> {
        let url = self.public_url.as_deref().ok_or_else(|| {
            Invalid::new(
                "public_url",
                format!(
                    "{mode} needs the gateway's address as clients reach it \
                     (e.g. https://registry.example.com) for the token realm"
                ),
            )
        })?;
        base_url(url).map_err(|m| Invalid::new("public_url", m))
    }
}

/// A registry listener: an address, or an address with options.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ListenConfig {
    /// `0.0.0.0:8080`: plain HTTP, clients (or proxies sending forwarding headers) connect.
    Address(String),
    /// `{address: 0.0.0.0:8081, proxy_protocol: true}`.
    Detailed(ListenerDetail),
}

/// A registry listener with its options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerDetail {
    /// IP:port, as in the short form.
    pub address: String,
    /// Every connection starts with a PROXY protocol (v1 or v2) header naming the client,
    /// sent by an L4 load balancer listed in `client_address.trusted_proxies` (AWS NLB,
    /// HAProxy `send-proxy-v2`); connections from elsewhere, or without one, are closed.
    #[serde(default)]
    pub proxy_protocol: bool,
}

impl ListenConfig {
    /// The address as written.
    pub fn address(&self) -> &str {
        match self {
            ListenConfig::Address(a) => a,
            ListenConfig::Detailed(d) => &d.address,
        }
    }

    /// Whether connections start with a PROXY protocol header.
    pub fn proxy_protocol(&self) -> bool {
        matches!(self, ListenConfig::Detailed(d) if d.proxy_protocol)
    }
}

impl From<&str> for ListenConfig {
    fn from(address: &str) -> ListenConfig {
        ListenConfig::Address(address.to_string())
    }
}

// By hand rather than `untagged`, so that a bad mapping gets serde's message naming the key.
impl<'de> Deserialize<'de> for ListenConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ListenConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an address such as 0.0.0.0:8080, or {address, proxy_protocol}")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ListenConfig, E> {
                Ok(ListenConfig::Address(v.to_string()))
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                m: M,
            ) -> Result<ListenConfig, M::Error> {
                let detail =
                    ListenerDetail::deserialize(serde::de::value::MapAccessDeserializer::new(m))?;
                Ok(ListenConfig::Detailed(detail))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Who the client is: the socket peer, unless it is a proxy listed here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientAddressConfig {
    /// Networks of the load balancers and proxies in front of the gateway (CIDRs, or single
    /// addresses). Only a connection from one of them may name another client, by its
    /// forwarding header or (on `proxy_protocol` listeners) a PROXY protocol header; the
    /// client is then the rightmost header entry not itself in this list. Empty: the socket
    /// peer is the client and forwarding headers are ignored.
    pub trusted_proxies: Vec<IpNet>,
    /// The header the trusted proxies name clients in: `x-forwarded-for` (nginx, ALB,
    /// Envoy, HAProxy, Traefik) or `forwarded` (RFC 7239).
    pub header: ForwardingHeaderName,
    /// Only for a load balancer whose own addresses cannot be listed and that writes
    /// `client, lb` (Google's external HTTP(S) load balancer, Cloud Run), where no client
    /// can reach the gateway directly: this many entries at the right end of the header are
    /// believed from any peer, and the client is the one before them. 0 (the default) with
    /// `trusted_proxies`.
    pub trusted_proxy_hops: usize,
}

impl Default for ClientAddressConfig {
    fn default() -> Self {
        ClientAddressConfig {
            trusted_proxies: Vec::new(),
            header: ForwardingHeaderName::XForwardedFor,
            trusted_proxy_hops: 0,
        }
    }
}

/// The forwarding header's name, as the file spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardingHeaderName {
    /// `X-Forwarded-For`.
    XForwardedFor,
    /// RFC 7239 `Forwarded`.
    Forwarded,
}

impl ClientAddressConfig {
    fn check(&self) -> Result<ClientAddressRules, Invalid> {
        if self.trusted_proxy_hops > 0 && !self.trusted_proxies.is_empty() {
            return Err(Invalid::new(
                "trusted_proxy_hops",
                "counts entries for load balancers whose addresses cannot be listed; with \
                 trusted_proxies set, leave it at 0 (list the load balancers instead)",
            ));
        }
        if self.trusted_proxy_hops > 16 {
            return Err(Invalid::new("trusted_proxy_hops", "expected 0 to 16"));
        }
        Ok(ClientAddressRules {
            trusted_proxies: self
                .trusted_proxies
                .iter()
                .map(|n| canonical_net(n.trunc()))
                .collect(),
            header: match self.header {
                ForwardingHeaderName::XForwardedFor => ForwardingHeader::XForwardedFor,
                ForwardingHeaderName::Forwarded => ForwardingHeader::Forwarded,
            },
            trusted_hops: self.trusted_proxy_hops,
        })
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
    /// Most answers kept (100,000 take about 10 MiB); when full, answers asked for only once
    /// go first; a new blob's answer is always stored.
    pub capacity: u64,
    /// When a mirror host is considered down and skipped.
    pub breaker: BreakerConfig,
    /// The gateway's own health checks of the mirror hosts in use.
    pub probe: ProbeConfig,
    /// How long the upstream's word that a repository holds a blob is cached (asked before
    /// a mirror serves it whenever the policy restricts repositories); a refusal is cached
    /// for `miss_ttl`.
    #[serde(with = "humantime_serde")]
    pub repository_ttl: Duration,
}

/// The circuit breaker per mirror host: after `failures` failed checks in a row (timeout,
/// connection error, 5xx) the host is skipped for `cool_down` (its clients go to the next
/// mirror of their chain, else the upstream); then one check probes whether it is back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Failed checks in a row that open the breaker.
    pub failures: u32,
    /// How long an open breaker skips the host's checks.
    #[serde(with = "humantime_serde")]
    pub cool_down: Duration,
}

/// Health checks of each mirror host in use (one a client's blob went to or was checked at
/// in the last 10 minutes), in parallel with client traffic and whatever the cache holds: a
/// `HEAD` of an object no mirror holds, signed for a private mirror. Any answer below 500
/// within `timeout` is healthy; `failures` unhealthy ones in a row open the host's breaker
/// (cached "present" answers are then not used) and keep it open while they last; the first
/// healthy one closes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProbeConfig {
    /// Time between two checks of a host; 0s turns them off.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// An answer slower than this counts as unhealthy (the host is skipped as if down).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// A healthy answer slower than this marks the host degraded: skipped while a later
    /// mirror of the chain is not, used when none is better.
    #[serde(with = "humantime_serde")]
    pub slow_after: Duration,
    /// Unhealthy checks in a row that open the breaker.
    pub failures: u32,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            slow_after: Duration::from_millis(500),
            failures: 1,
        }
    }
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
            probe: ProbeConfig::default(),
            repository_ttl: Duration::from_secs(600),
        }
    }
}

impl BlobCheckConfig {
    fn check(&self) -> Result<BlobCheck, Invalid> {
        positive_duration("timeout", self.timeout)?;
        at_least_one("capacity", self.capacity)?;
        at_least_one("breaker.failures", self.breaker.failures.into())?;
        positive_duration("breaker.cool_down", self.breaker.cool_down)?;
        positive_duration("probe.timeout", self.probe.timeout)?;
        at_least_one("probe.failures", self.probe.failures.into())?;
        if self.probe.slow_after > self.probe.timeout {
            return Err(Invalid::new(
                "probe.slow_after",
                "must be at most probe.timeout (slower answers are failures)",
            ));
        }
        if !self.probe.interval.is_zero() && self.probe.interval < self.probe.timeout {
            return Err(Invalid::new(
                "probe.interval",
                "must be at least probe.timeout (or 0s: no probes)",
            ));
        }
        Ok(BlobCheck {
            timeout: self.timeout,
            hit_ttl: self.hit_ttl,
            miss_ttl: self.miss_ttl,
            capacity: self.capacity,
            breaker_failures: self.breaker.failures,
            breaker_cool_down: self.breaker.cool_down,
            probe: (!self.probe.interval.is_zero()).then_some(MirrorProbe {
                interval: self.probe.interval,
                timeout: self.probe.timeout,
                slow_after: self.probe.slow_after,
                failures: self.probe.failures,
            }),
            repository_ttl: self.repository_ttl,
        })
    }
}

impl ArcheioConfig {
    /// The first key whose change a running gateway cannot take without a restart (or an
    /// upgrade with `-u`): the listeners' addresses. `None`: `next` can replace `self` in
    /// place.
    pub fn needs_restart_for(&self, next: &ArcheioConfig) -> Option<&'static str> {
        [
            ("listen", self.listen != next.listen),
            ("tls.listen", self.tls.listen != next.tls.listen),
            ("admin_listen", self.admin_listen != next.admin_listen),
        ]
        .into_iter()
        .find_map(|(key, changed)| changed.then_some(key))
    }

    /// Whether `next` reaches the upstream as `self` does (its credentials aside), in the
    /// same mode: the endpoints, their health and connections can stay.
    pub fn same_upstream_reach(&self, next: &ArcheioConfig) -> bool {
        let reach = |c: &ArcheioConfig| UpstreamConfig {
            credentials: None,
            auth_realm_hosts: Vec::new(),
            ..c.upstream.clone()
        };
        self.mode == next.mode && reach(self) == reach(next)
    }

    /// Reads the `archeio:` section of `path`. Relative paths in it (every `*_file` and
    /// `*_files` key, range sources' `file`) are taken from the file's directory, as
    /// nginx takes them from its prefix: an example runs from any working directory.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source: source.clone(),
            message: format!("cannot read the file: {e}"),
        })?;
        let mut cfg = Self::from_yaml(&text, &source)?;
        if let Some(dir) = path.parent() {
            cfg.resolve_paths(dir);
        }
        Ok(cfg)
    }

    /// Joins each relative path of the section to `dir`.
    fn resolve_paths(&mut self, dir: &Path) {
        let one = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        let maybe = |p: &mut Option<PathBuf>| p.iter_mut().for_each(one);
        maybe(&mut self.upstream.ca_file);
        if let Some(c) = &mut self.upstream.credentials {
            maybe(&mut c.password_file);
        }
        self.ranges.aws_files.iter_mut().for_each(one);
        self.ranges.gcp_files.iter_mut().for_each(one);
        for source in &mut self.ranges.sources {
            maybe(&mut source.file);
        }
        self.geo.databases.iter_mut().for_each(one);
        for pair in &mut self.tls.certificates {
            one(&mut pair.cert_file);
            one(&mut pair.key_file);
        }
        if let Some(auth) = &mut self.client_auth {
            maybe(&mut auth.htpasswd_file);
            maybe(&mut auth.token_key_file);
        }
        for mirror in self.mirrors.named.values_mut() {
            match &mut mirror.signing {
                Some(SigningConfig::S3(c)) => {
                    maybe(&mut c.access_key_id_file);
                    maybe(&mut c.secret_access_key_file);
                    maybe(&mut c.session_token_file);
                }
                Some(SigningConfig::Gcs(c)) => maybe(&mut c.service_account_key_file),
                Some(SigningConfig::Azure(c)) => maybe(&mut c.access_key_file),
                None => {}
            }
        }
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
}

/// serde_yaml's message already names the key path (`archeio.blob_check.timeout: ...`);
/// make sure it also says where in the file.
fn yaml_error_message(e: &serde_yaml::Error) -> String {
    let mut text = e.to_string();
    // In the configuration's words, not Rust's.
    for (rust, words) in [
        ("expected usize", "expected a whole number"),
        ("expected u64", "expected a whole number"),
        ("expected u32", "expected a whole number"),
        ("expected u16", "expected a whole number (at most 65535)"),
        ("expected u8", "expected a whole number (at most 255)"),
        ("expected f64", "expected a number"),
        ("expected a boolean", "expected true or false"),
        ("expected a string", "expected a text value"),
    ] {
        text = text.replace(rust, words);
    }
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
}
