//! `client_auth: relay`'s token endpoint: a client's token request (`/token?service=..&
//! scope=repository:app:pull`, with its own credentials) goes to the upstream's token
//! service with the scopes in the upstream's names, and the answer comes back as it was.
//! The upstream's realm is learnt from its `/v2/` challenge and asked only when the realm
//! policy of `upstream.auth_realm_hosts` allows it, as the gateway's own token requests are.

use std::sync::RwLock;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use log::warn;

use super::scope::upstream_token_query;
use crate::logging::error_chain;
use crate::upstream::auth::{parse_challenge, Challenge, UpstreamAuth};
use crate::upstream::Upstreams;

/// A token service's answer is a small JSON document; anything larger is not one.
const MAX_TOKEN_ANSWER: usize = 64 * 1024;

/// How long a learnt realm is used before `/v2/` is asked again.
const REALM_LIFETIME: Duration = Duration::from_secs(300);

/// What the client gets back.
#[derive(Debug)]
pub struct TokenAnswer {
    /// `200` with a token, `401`/`403` as the token service said; `502`, `504` or `404` from
    /// the gateway.
    pub status: u16,
    /// The token service's `Content-Type`, for its own answers.
    pub content_type: Option<String>,
    pub body: Bytes,
    /// `WWW-Authenticate` of a `401` the gateway gives itself.
    pub challenge: Option<String>,
}

impl TokenAnswer {
    fn from_gateway(status: u16, message: &str) -> TokenAnswer {
        let body = serde_json::json!({"errors": [{"code": "UNAVAILABLE", "message": message}]});
        TokenAnswer {
            status,
            content_type: Some("application/json".into()),
            body: Bytes::from(body.to_string()),
            challenge: None,
        }
    }
}

#[derive(Clone)]
struct Realm {
    url: String,
    service: Option<String>,
    learnt: Instant,
}

/// The token relay.
pub struct TokenRelay {
    client: reqwest::Client,
    /// The upstream path prefix as the start of a name (`test/`), or empty.
    name_prefix: String,
    realm: RwLock<Option<Realm>>,
}

impl TokenRelay {
    /// Relays with `client` (no redirects followed) for an upstream whose repositories
    /// start with `name_prefix`.
    pub fn new(client: reqwest::Client, name_prefix: &str) -> TokenRelay {
        TokenRelay {
            client,
            name_prefix: name_prefix.to_string(),
            realm: RwLock::new(None),
        }
    }

    /// The answer to a client's `/token` request with `query`, sent on with the client's
    /// `authorization` (if any) to the realm of the preferred endpoint.
    pub async fn token(
        &self,
        endpoints: &Upstreams,
        auth: &UpstreamAuth,
        query: Option<&str>,
        authorization: Option<&[u8]>,
    ) -> TokenAnswer {
        let realm = match self.realm(endpoints, auth).await {
            Ok(realm) => realm,
            Err(answer) => return answer,
        };
        let mut pairs = upstream_token_query(query.unwrap_or(""), &self.name_prefix);
        if let Some(service) = realm
            .service
            .filter(|_| !pairs.iter().any(|(k, _)| k == "service"))
        {
            pairs.push(("service".into(), service));
        }
        let mut request = self.client.get(&realm.url).query(&pairs);
        if let Some(value) = authorization {
            request = request.header(http::header::AUTHORIZATION, value);
        }
        let resp = match request.send().await {
            Ok(resp) => resp,
            Err(e) => {
                let timeout = e.is_timeout();
                warn!(
                    "token relay to {}: {}",
                    realm.url,
                    error_chain(&e.without_url())
                );
                let status = if timeout { 504 } else { 502 };
                return TokenAnswer::from_gateway(status, "the token service did not answer");
            }
        };
        let status = resp.status().as_u16();
        if !matches!(status, 200 | 401 | 403) {
            warn!("token relay to {}: answered {status}", realm.url);
            return TokenAnswer::from_gateway(502, "the token service failed");
        }
        let content_type = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        match read_limited(resp).await {
            Ok(body) => TokenAnswer {
                status,
                content_type,
                body,
                challenge: None,
            },
            Err(why) => {
                warn!("token relay to {}: {why}", realm.url);
                TokenAnswer::from_gateway(502, "the token service sent an unusable answer")
            }
        }
    }

    /// The realm of the preferred endpoint, learnt from its anonymous `/v2/` challenge.
    async fn realm(
        &self,
        endpoints: &Upstreams,
        auth: &UpstreamAuth,
    ) -> Result<Realm, TokenAnswer> {
        if let Some(realm) = self
            .realm
            .read()
            .expect("lock is never poisoned")
            .clone()
            .filter(|r| r.learnt.elapsed() < REALM_LIFETIME)
        {
            return Ok(realm);
        }
        let i = endpoints.preferred();
        let url = format!("{}/v2/", endpoints.endpoint(i).url);
        let resp = self.client.get(&url).send().await.map_err(|e| {
            warn!("token relay: GET {url}: {}", error_chain(&e.without_url()));
            TokenAnswer::from_gateway(502, "the upstream did not answer")
        })?;
        let challenge = resp
            .headers()
            .get(http::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_challenge);
        let Some(Challenge::Bearer { realm, service }) = challenge else {
            // A Basic (or open) upstream: its clients never get a realm to ask.
            return Err(TokenAnswer::from_gateway(
                404,
                "the upstream does not use tokens",
            ));
        };
        auth.realm_allowed(i, &realm).map_err(|e| {
            warn!("token relay: {e} (allow it with upstream.auth_realm_hosts)");
            TokenAnswer::from_gateway(502, "the upstream's token service is not allowed")
        })?;
        let learnt = Realm {
            url: realm,
            service,
            learnt: Instant::now(),
        };
        *self.realm.write().expect("lock is never poisoned") = Some(learnt.clone());
        Ok(learnt)
    }
}

/// The body, refused past [`MAX_TOKEN_ANSWER`].
async fn read_limited(mut resp: reqwest::Response) -> Result<Bytes, String> {
    let mut body = BytesMut::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("reading the answer: {}", error_chain(&e.without_url())))?
    {
        if body.len() + chunk.len() > MAX_TOKEN_ANSWER {
            return Err(format!("answer larger than {MAX_TOKEN_ANSWER} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}
