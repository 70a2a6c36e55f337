//! Checks and parsers for single values, shared by the sections in [`super::file`].

use std::net::SocketAddr;
use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use url::Url;

use super::Endpoint;

/// A bad value: its key below the section (`archeio.`, `sync.`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invalid {
    pub key: String,
    pub message: String,
}

impl Invalid {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Invalid {
        Invalid {
            key: key.into(),
            message: message.into(),
        }
    }

    /// The same error one section further out (`timeout` under `blob_check`); an error
    /// about a whole section (empty key) becomes one about that section.
    pub fn under(mut self, section: &str) -> Invalid {
        self.key = if self.key.is_empty() {
            section.to_string()
        } else {
            format!("{section}.{}", self.key)
        };
        self
    }
}

/// `Err` naming `key` when `value` is zero.
pub(crate) fn positive_duration(key: &str, value: std::time::Duration) -> Result<(), Invalid> {
    if value.is_zero() {
        return Err(Invalid::new(key, "must be longer than 0s"));
    }
    Ok(())
}

/// `Err` naming `key` when `value` is zero.
pub(crate) fn at_least_one(key: &str, value: u64) -> Result<(), Invalid> {
    if value == 0 {
        return Err(Invalid::new(key, "must be at least 1"));
    }
    Ok(())
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
pub(super) fn realm_host(text: &str) -> Result<String, String> {
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

/// A range provider's name: lowercase letters, digits, `_` and `-`, as placements carry it.
pub(super) fn provider_name(text: &str) -> Result<(), String> {
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
    if text.is_empty() || !text.chars().all(ok) {
        return Err(format!(
            "expected a lowercase name of letters, digits, '_' and '-' such as aws or onprem, got {text:?}"
        ));
    }
    Ok(())
}

/// Listener addresses; `key` names the list in errors.
pub(super) fn socket_addrs(list: &[String], key: &str) -> Result<Vec<SocketAddr>, Invalid> {
    list.iter()
        .enumerate()
        .map(|(i, a)| {
            a.parse().map_err(|_| {
                Invalid::new(
                    format!("{key}[{i}]"),
                    format!("expected IP:port such as 0.0.0.0:8080 or [::]:8080, got {a:?}"),
                )
            })
        })
        .collect()
}

/// Whether `[::]:port` is bound dual-stack: when no IPv4 address with its port is also
/// listed (that one takes the IPv4 clients then, and the IPv6 socket stays IPv6-only).
pub fn dual_stack(addr: &SocketAddr, all: &[SocketAddr]) -> bool {
    addr.is_ipv6()
        && addr.ip().is_unspecified()
        && !all.iter().any(|a| a.is_ipv4() && a.port() == addr.port())
}

/// Whether binding `a` and `b` on one host collides (the second bind would fail, or both
/// would take the same connections): the same port and the same address, or a wildcard of
/// the family (a dual-stack `[::]` takes both families).
fn collide(a: &SocketAddr, b: &SocketAddr, all: &[SocketAddr]) -> bool {
    if a.port() != b.port() {
        return false;
    }
    if a.ip() == b.ip() {
        return true;
    }
    let covers = |w: &SocketAddr, other: &SocketAddr| {
        w.ip().is_unspecified() && (w.is_ipv4() == other.is_ipv4() || dual_stack(w, all))
    };
    covers(a, b) || covers(b, a)
}

/// Addresses listed twice, or that collide, across the listener lists (`listen`,
/// `tls.listen`, `admin_listen`), each given with its key: no two services may share a port
/// (connections would split between them).
pub(super) fn distinct_listeners(lists: &[(&str, &[SocketAddr])]) -> Result<(), Invalid> {
    let named: Vec<(String, &SocketAddr)> = lists
        .iter()
        .flat_map(|(key, list)| {
            list.iter()
                .enumerate()
                .map(move |(i, a)| (format!("{key}[{i}]"), a))
        })
        .collect();
    let all: Vec<SocketAddr> = named.iter().map(|(_, a)| **a).collect();
    for (j, (key, b)) in named.iter().enumerate() {
        for (earlier, a) in &named[..j] {
            if !collide(a, b, &all) {
                continue;
            }
            let list = |k: &str| k.split('[').next().unwrap_or(k).to_string();
            let message = if a == b && list(earlier) == list(key) {
                format!("{b} is listed twice (also {earlier})")
            } else if a == b {
                format!("{b} is also in archeio.{}", list(earlier))
            } else {
                format!("{b} overlaps {a} of archeio.{earlier} (the same port)")
            };
            return Err(Invalid::new(key.clone(), message));
        }
    }
    Ok(())
}

pub(super) fn http_url(text: &str) -> Result<Url, String> {
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
pub(super) fn redirect_url(text: &str) -> Result<String, String> {
    http_url(text).map(|u| u.to_string())
}

/// A URL that paths are appended to: no query or fragment, no trailing slash.
pub(super) fn base_url(text: &str) -> Result<String, String> {
    let url = http_url(text)?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("must not have a query or fragment, got {text:?}"));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// An upstream endpoint: http(s), host, optional port, nothing else.
pub(super) fn endpoint(text: &str) -> Result<Endpoint, String> {
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
pub(super) fn ca_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
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

/// `a/b` becomes `/a/b`; empty stays empty. Segments are plain names: no `.`/`..`, no empty
/// segments, only characters that need no escaping.
pub(super) fn path_prefix(text: &str) -> Result<String, String> {
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
pub(super) fn blob_path(text: &str) -> Result<(String, String), String> {
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
