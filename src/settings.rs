//! The validated configuration the gateway runs on, built from the file format in
//! [`crate::config`]. Every check that can fail happens here, before anything listens, and
//! each error names the key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use url::Url;

use crate::config::{
    ArcheioConfig, BlobCheckConfig, ClientTimeoutsConfig, ConfigError, CredentialsConfig,
    HealthCheckConfig, ManifestCacheConfig, Mode, RangesConfig, UpstreamTimeoutsConfig,
};
use crate::routing::Routes;

/// Everything the gateway needs, checked.
#[derive(Debug)]
pub struct Settings {
    /// Registry listener addresses.
    pub listen: Vec<SocketAddr>,
    /// Admin listener addresses (`/metrics`, `/healthz`, `/readyz`).
    pub admin_listen: Vec<SocketAddr>,
    /// What the routing decision needs.
    pub routes: Routes,
    /// Range sources, loaded by [`crate::ranges::RangeTable::load`].
    pub ranges: RangesConfig,
    /// Mirror check settings.
    pub blob_check: BlobCheckConfig,
    /// Redirect or pass-through.
    pub mode: Mode,
    /// The upstream endpoints and how to reach them.
    pub upstream: UpstreamSettings,
    /// The pass-through manifest cache.
    pub manifest_cache: ManifestCacheConfig,
    /// Limits on slow and idle clients.
    pub client_timeouts: ClientTimeoutsConfig,
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
    pub timeouts: UpstreamTimeoutsConfig,
    /// Active health checks.
    pub health_check: HealthCheckConfig,
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

impl Settings {
    /// Loads `path` (or the defaults when there is none), applies the environment variables,
    /// and validates the result.
    pub fn load(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        let mut cfg = match path {
            Some(p) => ArcheioConfig::from_file(p)?,
            None => ArcheioConfig::default(),
        };
        cfg.apply_env(&env)?;
        let source = path.map_or_else(
            || "built-in defaults".to_string(),
            |p| p.display().to_string(),
        );
        Settings::from_config(&cfg, &source, env)
    }

    /// Validates `cfg`; `source` names where it came from in errors; `env` looks up the
    /// environment variables that secrets are read from.
    pub fn from_config(
        cfg: &ArcheioConfig,
        source: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        let err = |key: &str, message: String| ConfigError {
            source: source.to_string(),
            message: format!("archeio.{key}: {message}"),
        };
        let listen = socket_addrs(&cfg.listen, "listen").map_err(|(k, m)| err(&k, m))?;
        let admin_listen =
            socket_addrs(&cfg.admin_listen, "admin_listen").map_err(|(k, m)| err(&k, m))?;
        if listen.is_empty() {
            return Err(err("listen", "needs at least one address".into()));
        }

        let info_url = redirect_url(&cfg.info_url).map_err(|m| err("info_url", m))?;
        let privacy_url = redirect_url(&cfg.privacy_url).map_err(|m| err("privacy_url", m))?;
        let up = &cfg.upstream;
        if up.endpoints.is_empty() {
            return Err(err("upstream.endpoints", "needs at least one URL".into()));
        }
        let endpoints = up
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| endpoint(e).map_err(|m| err(&format!("upstream.endpoints[{i}]"), m)))
            .collect::<Result<Vec<_>, _>>()?;
        let prefix = path_prefix(&up.path).map_err(|m| err("upstream.path", m))?;
        let ca_certs = match &up.ca_file {
            Some(path) => Some(ca_certs(path).map_err(|m| err("upstream.ca_file", m))?),
            None => None,
        };
        let credentials = match &up.credentials {
            Some(c) => Some(credentials(c, &env).map_err(|(k, m)| err(&k, m))?),
            None => None,
        };
        for (key, value) in [
            ("upstream.timeouts.connect", up.timeouts.connect),
            ("upstream.timeouts.read", up.timeouts.read),
            ("upstream.health_check.interval", up.health_check.interval),
            ("upstream.health_check.timeout", up.health_check.timeout),
        ] {
            if value.is_zero() {
                return Err(err(key, "must be longer than 0s".into()));
            }
        }
        for (key, value) in [
            (
                "upstream.health_check.unhealthy_after",
                up.health_check.unhealthy_after,
            ),
            (
                "upstream.health_check.healthy_after",
                up.health_check.healthy_after,
            ),
        ] {
            if value == 0 {
                return Err(err(key, "must be at least 1".into()));
            }
        }
        let upstreams = endpoints
            .iter()
            .map(|e| format!("{}/v2{prefix}", e.url))
            .collect();
        let signature_upstream = match &cfg.signature_upstream {
            Some(e) => Some(format!(
                "{}/v2{prefix}",
                base_url(e).map_err(|m| err("signature_upstream", m))?
            )),
            None => None,
        };
        let default_mirror =
            base_url(&cfg.mirrors.default).map_err(|m| err("mirrors.default", m))?;
        let mut mirrors = HashMap::new();
        for (region, url) in &cfg.mirrors.regions {
            let base = base_url(url).map_err(|m| err(&format!("mirrors.regions.{region}"), m))?;
            mirrors.insert(region.as_str().into(), base);
        }
        let (blob_path_prefix, blob_path_suffix) =
            blob_path(&cfg.mirrors.blob_path).map_err(|m| err("mirrors.blob_path", m))?;

        let check = &cfg.blob_check;
        if check.timeout.is_zero() {
            return Err(err("blob_check.timeout", "must be longer than 0s".into()));
        }
        if check.capacity == 0 {
            return Err(err("blob_check.capacity", "must be at least 1".into()));
        }
        if check.breaker.failures == 0 {
            return Err(err(
                "blob_check.breaker.failures",
                "must be at least 1".into(),
            ));
        }
        if check.breaker.cool_down.is_zero() {
            return Err(err(
                "blob_check.breaker.cool_down",
                "must be longer than 0s".into(),
            ));
        }
        let auth_realm_hosts = up
            .auth_realm_hosts
            .iter()
            .enumerate()
            .map(|(i, host)| {
                realm_host(host).map_err(|m| err(&format!("upstream.auth_realm_hosts[{i}]"), m))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let t = &cfg.client_timeouts;
        for (key, value) in [
            ("client_timeouts.header", t.header),
            ("client_timeouts.body", t.body),
            ("client_timeouts.write", t.write),
        ] {
            if value.is_zero() {
                return Err(err(key, "must be longer than 0s".into()));
            }
        }
        if t.idle < std::time::Duration::from_secs(1) {
            return Err(err(
                "client_timeouts.idle",
                "must be at least 1s (Pingora counts keep-alive in seconds)".into(),
            ));
        }
        let ratio = cfg.ranges.min_prefix_ratio;
        if !(0.0..=1.0).contains(&ratio) {
            return Err(err(
                "ranges.min_prefix_ratio",
                format!("expected a fraction between 0 and 1, got {ratio}"),
            ));
        }
        for (key, urls) in [
            ("ranges.aws_urls", &cfg.ranges.aws_urls),
            ("ranges.gcp_urls", &cfg.ranges.gcp_urls),
        ] {
            for (i, u) in urls.iter().enumerate() {
                http_url(u).map_err(|m| err(&format!("{key}[{i}]"), m))?;
            }
        }
        for (i, rule) in cfg.ranges.custom.iter().enumerate() {
            if rule.region.is_empty() {
                return Err(err(
                    &format!("ranges.custom[{i}].region"),
                    "must not be empty".into(),
                ));
            }
        }

        Ok(Settings {
            listen,
            admin_listen,
            routes: Routes {
                info_url,
                privacy_url,
                upstreams,
                upstream_prefix: format!("/v2{prefix}"),
                upstream_name_prefix: match prefix.strip_prefix('/') {
                    Some(name) => format!("{name}/"),
                    None => String::new(),
                },
                passthrough: cfg.mode == Mode::Passthrough,
                signature_upstream,
                default_mirror,
                mirrors,
                blob_path_prefix,
                blob_path_suffix,
                trusted_proxy_hops: cfg.client_address.trusted_proxy_hops,
            },
            ranges: cfg.ranges.clone(),
            blob_check: check.clone(),
            mode: cfg.mode,
            upstream: UpstreamSettings {
                endpoints,
                ca_certs,
                credentials,
                auth_realm_hosts,
                timeouts: up.timeouts.clone(),
                health_check: up.health_check.clone(),
            },
            manifest_cache: cfg.manifest_cache.clone(),
            client_timeouts: cfg.client_timeouts.clone(),
        })
    }
}

/// A URL's host as hosts are compared: lowercase, IPv6 without brackets.
pub fn url_host(url: &Url) -> String {
    url.host_str()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

/// A host name or address as a realm URL's host: no scheme, port, path or user.
fn realm_host(text: &str) -> Result<String, String> {
    let url = Url::parse(&format!("https://{text}/"))
        .map_err(|e| format!("expected a host name such as auth.docker.io ({e}), got {text:?}"))?;
    match url.host_str() {
        Some(_) if url.port().is_none() && url.username().is_empty() && url.path() == "/" => {
            Ok(url_host(&url))
        }
        _ => Err(format!(
            "expected a host name only (no scheme, port or path), got {text:?}"
        )),
    }
}

fn socket_addrs(list: &[String], key: &str) -> Result<Vec<SocketAddr>, (String, String)> {
    list.iter()
        .enumerate()
        .map(|(i, a)| {
            a.parse().map_err(|_| {
                (
                    format!("{key}[{i}]"),
                    format!("expected IP:port such as 0.0.0.0:8080 or [::]:8080, got {a:?}"),
                )
            })
        })
        .collect()
}

fn http_url(text: &str) -> Result<Url, String> {
    let url =
        Url::parse(text).map_err(|e| format!("expected an http(s) URL, got {text:?} ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(format!("expected an http(s) URL with a host, got {text:?}"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // It would be sent to every client in a Location header.
        return Err("must not hold credentials".into());
    }
    Ok(url)
}

/// A URL clients are sent to as it is (info, privacy).
fn redirect_url(text: &str) -> Result<String, String> {
    http_url(text).map(|u| u.to_string())
}

/// A URL that paths are appended to: no query or fragment, no trailing slash.
fn base_url(text: &str) -> Result<String, String> {
    let url = http_url(text)?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("must not have a query or fragment, got {text:?}"));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// An upstream endpoint: http(s), host, optional port, nothing else.
fn endpoint(text: &str) -> Result<Endpoint, String> {
    let url = base_url(text)?;
    let parsed = Url::parse(&url).map_err(|e| e.to_string())?;
    if parsed.path() != "/" && !parsed.path().is_empty() {
        return Err(format!(
            "expected scheme, host and port only (the path prefix is upstream.path), got {text:?}"
        ));
    }
    let host = match parsed.host() {
        Some(url::Host::Ipv6(a)) => a.to_string(),
        Some(h) => h.to_string(),
        None => return Err(format!("expected a host, got {text:?}")),
    };
    Ok(Endpoint {
        tls: parsed.scheme() == "https",
        port: parsed.port_or_known_default().unwrap_or(443),
        host,
        url,
    })
}

/// The certificates in a PEM file; at least one.
fn ca_certs(path: &PathBuf) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("expected PEM certificates in {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "expected PEM certificates in {}, found none",
            path.display()
        ));
    }
    Ok(certs)
}

/// Reads the password from exactly one of the environment variable or the file.
fn credentials(
    c: &CredentialsConfig,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Credentials, (String, String)> {
    let key = |k: &str| format!("upstream.credentials.{k}");
    if c.username.is_empty() || c.username.contains(':') {
        return Err((key("username"), "must be non-empty and without ':'".into()));
    }
    let password = match (&c.password_env, &c.password_file) {
        (Some(var), None) => env(var).ok_or_else(|| {
            (
                key("password_env"),
                format!("environment variable {var} is not set"),
            )
        })?,
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| {
                (
                    key("password_file"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?
            .trim_end_matches(['\n', '\r'])
            .to_string(),
        _ => {
            return Err((
                key("password_env"),
                "expected exactly one of password_env and password_file".into(),
            ))
        }
    };
    Ok(Credentials {
        username: c.username.clone(),
        password,
    })
}

/// `a/b` becomes `/a/b`; empty stays empty. Segments are plain names: no `.`/`..`, no empty
/// segments, only characters that need no escaping.
fn path_prefix(text: &str) -> Result<String, String> {
    let trimmed = text.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    for seg in trimmed.split('/') {
        let plain = seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if seg.is_empty() || seg == "." || seg == ".." || !plain {
            return Err(format!(
                "expected path segments of letters, digits, '.', '_' and '-', got {text:?}"
            ));
        }
    }
    Ok(format!("/{trimmed}"))
}

/// Splits the layout around its one `{digest}`.
fn blob_path(text: &str) -> Result<(String, String), String> {
    let (prefix, suffix) = text
        .split_once("{digest}")
        .ok_or_else(|| format!("must contain {{digest}}, got {text:?}"))?;
    if suffix.contains("{digest}") {
        return Err("must contain {digest} once".into());
    }
    if !prefix.starts_with('/') {
        return Err(format!("must start with '/', got {text:?}"));
    }
    let plain = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-'))
    };
    if !plain(prefix)
        || !plain(suffix)
        || text.contains("//")
        || text.contains("/./")
        || text.contains("/../")
    {
        return Err(format!(
            "expected a path of letters, digits, '/', '.', '_' and '-' around {{digest}}, got {text:?}"
        ));
    }
    Ok((prefix.to_string(), suffix.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(yaml: &str) -> Result<Settings, ConfigError> {
        let cfg = ArcheioConfig::from_yaml(yaml, "test.yaml")?;
        Settings::from_config(&cfg, "test.yaml", |k| {
            (k == "REG_PASSWORD").then(|| "s3cret".to_string())
        })
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
        assert_eq!(
            s.routes.default_mirror,
            "https://d1be1w964nk82h.cloudfront.net"
        );
        assert_eq!(s.routes.blob_path_prefix, "/containers/images/");
        assert_eq!(s.routes.blob_path_suffix, "");
        assert_eq!(s.routes.trusted_proxy_hops, 1);
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
    fn bad_values_name_the_key_and_the_file() {
        let cases = [
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
                "archeio:\n  ranges: {custom: [{cidr: 10.0.0.0/8, cloud: azure, region: x}]}\n",
                "archeio.ranges.custom[0].cloud",
            ),
            (
                "archeio:\n  ranges: {custom: [{cidr: 10.0.0.0/33, cloud: aws, region: x}]}\n",
                "archeio.ranges.custom[0].cidr",
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
            "archeio:\n  mode: passthrough\n  upstream:\n    credentials: {username: bot, password_env: REG_PASSWORD}\n",
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
            "archeio:\n  upstream:\n    credentials: {{username: bot, password_file: {}}}\n",
            file.display()
        ))
        .unwrap();
        assert_eq!(s.upstream.credentials.unwrap().password, "from-file");
    }
}
