//! Authenticating to the upstream in pass-through mode, so that clients never see its
//! challenge: Basic auth with the configured credentials, or Bearer tokens fetched from the
//! realm the upstream names (anonymously, or with the credentials), cached per endpoint and
//! scope until they expire.
//!
//! What an endpoint wants is learnt from its first `401`: the request is then retried once
//! with the answer, and later requests send it up front. A Bearer realm is asked only when
//! it is on the endpoint's own host or an allowed one, and over `https` unless the endpoint
//! itself is plain `http`: the realm receives the credentials.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use log::warn;
use moka::future::Cache;
use moka::Expiry;
use serde::Deserialize;

use crate::config::{url_host, Credentials, UpstreamSettings};
use crate::metrics;

/// What an upstream asked for in `WWW-Authenticate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// HTTP Basic.
    Basic,
    /// A token from `realm` (the distribution token protocol).
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` value: `Basic realm="x"` or
/// `Bearer realm="https://auth",service="registry",scope="repository:a:pull"`.
pub fn parse_challenge(value: &str) -> Option<Challenge> {
    let value = value.trim();
    let (scheme, params) = value.split_once(' ').unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut realm = None;
    let mut service = None;
    for (k, v) in auth_params(params).0 {
        match k.to_ascii_lowercase().as_str() {
            "realm" => realm = Some(v),
            "service" => service = Some(v),
            _ => {}
        }
    }
    let realm = realm.filter(|r| r.starts_with("http://") || r.starts_with("https://"))?;
    Some(Challenge::Bearer { realm, service })
}

/// `k=v` and `k="v, with commas"` pairs, comma separated, and whether every quoted value
/// was closed (an unclosed one runs to the end).
pub(crate) fn auth_params(mut s: &str) -> (Vec<(String, String)>, bool) {
    let mut out = Vec::new();
    let mut closed = true;
    loop {
        s = s.trim_start_matches([' ', ',']);
        let Some((key, rest)) = s.split_once('=') else {
            return (out, closed);
        };
        let (value, rest) = match rest.trim_start().strip_prefix('"') {
            Some(quoted) => {
                let mut value = String::new();
                let mut chars = quoted.char_indices();
                let mut end = None;
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => value.extend(chars.next().map(|(_, c)| c)),
                        '"' => {
                            end = Some(i + 1);
                            break;
                        }
                        c => value.push(c),
                    }
                }
                closed &= end.is_some();
                (value, &quoted[end.unwrap_or(quoted.len())..])
            }
            None => {
                let end = rest.find(',').unwrap_or(rest.len());
                (rest[..end].trim().to_string(), &rest[end..])
            }
        };
        out.push((key.trim().to_string(), value));
        s = rest;
    }
}

/// The repository a registry API path names: `/v2/<repo>/manifests/...` gives `<repo>`.
pub fn repository(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v2/")?;
    let rest = &rest[..rest.find('?').unwrap_or(rest.len())];
    ["/manifests/", "/blobs/", "/tags/", "/referrers/"]
        .iter()
        .filter_map(|marker| rest.rfind(marker))
        .max()
        .map(|end| &rest[..end])
        .filter(|repo| !repo.is_empty())
}

#[derive(Clone)]
struct Token {
    header: Arc<str>,
    ttl: Duration,
}

struct TokenTtl;

impl Expiry<String, Token> for TokenTtl {
    fn expire_after_create(&self, _: &String, token: &Token, _: Instant) -> Option<Duration> {
        Some(token.ttl)
    }
}

/// Why no `Authorization` could be made.
#[derive(Debug, Clone)]
pub struct AuthError(pub String);

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where an endpoint's token realm may be.
#[derive(Debug, Clone)]
pub struct RealmPolicy {
    /// The endpoint's host (lowercase).
    pub host: String,
    /// The endpoint uses TLS: its realm must too.
    pub tls: bool,
}

/// The gateway's authentication to each upstream endpoint.
pub struct UpstreamAuth {
    credentials: Option<Credentials>,
    /// Per endpoint: its host and scheme.
    realms: Vec<RealmPolicy>,
    /// Other hosts whose realms may be asked (`upstream.auth_realm_hosts`).
    realm_hosts: Vec<String>,
    /// Per endpoint: the challenge learnt from its last `401`.
    challenges: Vec<RwLock<Option<Challenge>>>,
    /// `Authorization` values for Bearer tokens, by endpoint and scope.
    tokens: Cache<String, Token>,
    client: reqwest::Client,
}

impl UpstreamAuth {
    /// Authentication to the endpoints of `settings`, with its credentials and allowed realm
    /// hosts; `client` fetches tokens.
    pub fn for_upstream(settings: &UpstreamSettings, client: reqwest::Client) -> UpstreamAuth {
        let realms = settings
            .endpoints
            .iter()
            .map(|e| RealmPolicy {
                host: e.host.to_ascii_lowercase(),
                tls: e.tls,
            })
            .collect();
        UpstreamAuth::new(
            realms,
            settings.auth_realm_hosts.clone(),
            settings.credentials.clone(),
            client,
        )
    }

    /// Authentication for the endpoints described by `realms`, in order; `client` fetches
    /// tokens.
    pub fn new(
        realms: Vec<RealmPolicy>,
        realm_hosts: Vec<String>,
        credentials: Option<Credentials>,
        client: reqwest::Client,
    ) -> UpstreamAuth {
        UpstreamAuth {
            credentials,
            challenges: (0..realms.len()).map(|_| RwLock::new(None)).collect(),
            realms,
            realm_hosts,
            tokens: Cache::builder()
                .max_capacity(10_000)
                .expire_after(TokenTtl)
                .build(),
            client,
        }
    }

    /// Records the challenge endpoint `i` answered with. Returns whether a retry can succeed:
    /// Basic needs credentials; a token cached for this scope was refused, so it is dropped
    /// and a new one fetched. An error: the realm is not one the gateway may ask.
    pub async fn learn(
        &self,
        i: usize,
        challenge: Challenge,
        repository: Option<&str>,
    ) -> Result<bool, AuthError> {
        if challenge == Challenge::Basic && self.credentials.is_none() {
            return Ok(false);
        }
        if let Challenge::Bearer { realm, .. } = &challenge {
            self.realm_allowed(i, realm)?;
        }
        *self.challenges[i].write().expect("lock is never poisoned") = Some(challenge);
        self.tokens.invalidate(&token_key(i, repository)).await;
        Ok(true)
    }

    /// A realm on endpoint `i`'s host or an allowed one, `https` unless the endpoint is not.
    pub fn realm_allowed(&self, i: usize, realm: &str) -> Result<(), AuthError> {
        let endpoint = &self.realms[i];
        let url =
            url::Url::parse(realm).map_err(|_| AuthError("the token realm is not a URL".into()))?;
        let host = url_host(&url);
        let scheme_ok = url.scheme() == "https" || (url.scheme() == "http" && !endpoint.tls);
        if !scheme_ok {
            return Err(AuthError(format!(
                "token realm on {host} is not https while the endpoint is"
            )));
        }
        if host != endpoint.host && !self.realm_hosts.contains(&host) {
            return Err(AuthError(format!(
                "token realm host {host} is neither the endpoint's ({}) nor allowed",
                endpoint.host
            )));
        }
        Ok(())
    }

    /// The `Authorization` value for a request to endpoint `i` about `repository`, if the
    /// endpoint asked for one.
    pub async fn authorization(
        &self,
        i: usize,
        repository: Option<&str>,
    ) -> Result<Option<Arc<str>>, AuthError> {
        let challenge = self.challenges[i]
            .read()
            .expect("lock is never poisoned")
            .clone();
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(self.credentials.as_ref().map(|c| basic(c).into())),
            Some(Challenge::Bearer { realm, service }) => {
                let key = token_key(i, repository);
                let scope = repository.map(|r| format!("repository:{r}:pull"));
                let token = self
                    .tokens
                    .try_get_with(
                        key,
                        self.fetch(&realm, service.as_deref(), scope.as_deref()),
                    )
                    .await
                    .map_err(|e| AuthError(e.0.clone()))?;
                Ok(Some(token.header))
            }
        }
    }

    async fn fetch(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: Option<&str>,
    ) -> Result<Token, AuthError> {
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some(s) = service {
            query.push(("service", s));
        }
        if let Some(s) = scope {
            query.push(("scope", s));
        }
        let mut req = self.client.get(realm).query(&query);
        if let Some(c) = &self.credentials {
            req = req.basic_auth(&c.username, Some(&c.password));
        }
        let result = async {
            let resp = req
                .send()
                .await
                .map_err(|e| format!("token request to {realm} failed: {e}"))?;
            let status = resp.status();
            if !status.is_success() {
                return Err(format!("token service {realm} answered {status}"));
            }
            let body: TokenResponse = resp
                .json()
                .await
                .map_err(|e| format!("token service {realm} sent an unreadable answer: {e}"))?;
            let token = body
                .token
                .or(body.access_token)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| format!("token service {realm} sent no token"))?;
            // The protocol's default lifetime is 60 s; renew a little early.
            let lifetime = Duration::from_secs(body.expires_in.unwrap_or(60).max(1));
            Ok(Token {
                header: format!("Bearer {token}").into(),
                ttl: lifetime.mul_f64(0.9),
            })
        }
        .await;
        match result {
            Ok(t) => {
                metrics::TOKEN_FETCHES.with_label_values(&["ok"]).inc();
                Ok(t)
            }
            Err(why) => {
                metrics::TOKEN_FETCHES.with_label_values(&["error"]).inc();
                warn!("upstream token for scope {}: {why}", scope.unwrap_or("-"));
                Err(AuthError(why))
            }
        }
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

fn token_key(i: usize, repository: Option<&str>) -> String {
    format!("{i}\n{}", repository.unwrap_or(""))
}

fn basic(c: &Credentials) -> String {
    let raw = format!("{}:{}", c.username, c.password);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_parsed_as_registries_send_them() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into())
            })
        );
        assert_eq!(
            parse_challenge(r#"bearer realm=http://127.0.0.1:1/t, service = "a\"b""#),
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:1/t".into(),
                service: Some("a\"b".into())
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        // A realm that is not an http(s) URL is not followed.
        assert_eq!(
            parse_challenge(r#"Bearer realm="file:///etc/passwd""#),
            None
        );
        assert_eq!(parse_challenge(r#"Bearer service="x""#), None);
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(parse_challenge(""), None);
    }

    #[test]
    fn repository_is_the_name_before_the_api_part() {
        assert_eq!(repository("/v2/a/b/manifests/v1"), Some("a/b"));
        assert_eq!(repository("/v2/p/blobs/sha256:00"), Some("p"));
        assert_eq!(repository("/v2/p/tags/list?n=1"), Some("p"));
        assert_eq!(repository("/v2/p/referrers/sha256:00"), Some("p"));
        // A repository may itself contain an API word.
        assert_eq!(
            repository("/v2/x/manifests/y/manifests/v1"),
            Some("x/manifests/y")
        );
        assert_eq!(repository("/v2/a/tags/b/manifests/v1"), Some("a/tags/b"));
        assert_eq!(repository("/v2/"), None);
        assert_eq!(repository("/v2/manifests/x"), None);
    }

    /// Issue 12, item 5.
    #[tokio::test]
    async fn realms_must_be_on_the_endpoint_or_an_allowed_host_and_https_for_https() {
        let auth = UpstreamAuth::new(
            vec![
                RealmPolicy {
                    host: "registry.example".into(),
                    tls: true,
                },
                RealmPolicy {
                    host: "127.0.0.1".into(),
                    tls: false,
                },
            ],
            vec!["auth.example".into()],
            None,
            reqwest::Client::new(),
        );
        let bearer = |realm: &str| Challenge::Bearer {
            realm: realm.into(),
            service: None,
        };
        for (i, realm) in [
            (0, "https://registry.example/token"),
            (0, "https://Auth.Example:8443/token"),
            (1, "http://127.0.0.1:5001/token"),
            (1, "https://auth.example/token"),
        ] {
            assert_eq!(
                auth.learn(i, bearer(realm), None).await.ok(),
                Some(true),
                "{realm}"
            );
        }
        for (i, realm) in [
            (0, "http://registry.example/token"),
            (0, "https://evil.example/token"),
            (0, "https://registry.example.evil/token"),
            (1, "http://127.0.0.2/token"),
        ] {
            assert!(auth.learn(i, bearer(realm), None).await.is_err(), "{realm}");
        }
    }

    #[test]
    fn basic_credentials_are_encoded() {
        let c = Credentials {
            username: "u".into(),
            password: "p:w".into(),
        };
        assert_eq!(basic(&c), "Basic dTpwOnc=");
    }
}
