//! Pass-through's response phases: the upstream's answer is counted, a `401` is answered
//! once with the gateway's credentials (Pingora retries the request; with relayed client
//! credentials it goes to the client, its challenge naming the gateway's `/token`), the
//! allowed headers are passed on with `Link` and `Location` rewritten, and a manifest's body
//! is collected for the cache as it streams to the client.

use bytes::Bytes;
use log::warn;
use pingora_core::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use super::failure::{AUTH_RETRY, REALM_REFUSED};
use super::headers::forward_response_headers;
use super::{Gateway, RequestCtx};
use crate::auth::scope::client_challenge;
use crate::auth::ClientAuthority;
use crate::metrics;
use crate::routing::{Answer, Reply};
use crate::upstream::auth::{parse_challenge, repository};
use crate::upstream::manifest_cache::Capture;

impl Gateway {
    /// The upstream's response header.
    pub(super) async fn take_response(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let up = &mut ctx.upstream;
        let i = up.endpoint.unwrap_or(0);
        let endpoints = &self.upstream.endpoints;
        let label = endpoints.label(i);
        metrics::UPSTREAM_REQUESTS
            .with_label_values(&[label, resp.status.as_str()])
            .inc();
        if let Some(sent) = up.sent_at {
            metrics::UPSTREAM_SECONDS
                .with_label_values(&[label])
                .observe(sent.elapsed().as_secs_f64());
        }
        let path = match ctx.reply.as_ref().map(|r| &r.answer) {
            Some(Answer::Proxy { path, .. }) => path.as_str(),
            _ => "",
        };
        let relay = match &self.clients.auth {
            ClientAuthority::Relay { token_url, .. } => Some(token_url.as_str()),
            ClientAuthority::Anonymous | ClientAuthority::Local(_) => None,
        };
        if resp.status.as_u16() == 401 && !up.auth_retried && relay.is_none() {
            let challenge = resp
                .headers
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .and_then(parse_challenge);
            if let Some(challenge) = challenge {
                let learnt = match self
                    .upstream
                    .auth
                    .learn(i, challenge, repository(path))
                    .await
                {
                    Ok(learnt) => learnt,
                    Err(why) => {
                        warn!(
                            "{path}: not asking the upstream's token service: {why} \
                             (allow it with upstream.auth_realm_hosts)"
                        );
                        return Error::e_explain(REALM_REFUSED, "token realm not allowed");
                    }
                };
                if learnt {
                    up.auth_retried = true;
                    let mut e = Error::explain(
                        AUTH_RETRY,
                        "upstream asked for credentials; retrying with them",
                    );
                    e.set_retry(true);
                    return Err(e);
                }
            }
        }
        forward_response_headers(
            resp,
            &self.routes.upstream_prefix,
            &endpoints.endpoint(i).url,
        );
        if let Some(token_url) = relay {
            relay_challenges(resp, token_url, &self.routes.upstream_name_prefix)?;
        }
        if up.cache_key.is_some() {
            let head = session.req_header().method == http::Method::HEAD;
            up.capture = Capture::begin(resp.status.as_u16(), &resp.headers, head);
        }
        Ok(())
    }

    /// A piece of the upstream's body: the total time limit, and the manifest capture,
    /// stored once the body is complete.
    pub(super) fn take_body(
        &self,
        body: Option<&Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let up = &mut ctx.upstream;
        if let (Some(total), Some(sent)) = (self.upstream.total_timeout, up.sent_at) {
            if sent.elapsed() > total {
                return Error::e_explain(
                    ErrorType::ReadTimedout,
                    "upstream response took longer than upstream.timeouts.total",
                );
            }
        }
        if let (Some(capture), Some(chunk)) = (&mut up.capture, body) {
            if !capture.push(chunk) {
                up.capture = None;
            }
        }
        if !end_of_stream {
            return Ok(());
        }
        if let (
            Some(capture),
            Some(key),
            Some(Reply {
                answer:
                    Answer::Proxy {
                        path,
                        manifest: Some(reference),
                    },
                ..
            }),
        ) = (up.capture.take(), up.cache_key.take(), ctx.reply.as_ref())
        {
            let (headers, body) = capture.into_parts();
            self.upstream
                .manifests
                .insert(key, path, *reference, headers, body);
        }
        Ok(())
    }
}

/// The upstream's challenges as a relaying gateway's clients must see them: a Bearer realm
/// is the gateway's `/token`, scopes are in the client's names. One that cannot be read is
/// dropped (the client still gets the `401`), so no upstream realm reaches clients.
fn relay_challenges(resp: &mut ResponseHeader, token_url: &str, name_prefix: &str) -> Result<()> {
    let challenges: Vec<String> = resp
        .headers
        .get_all("www-authenticate")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| client_challenge(v, token_url, name_prefix))
        .collect();
    resp.remove_header("www-authenticate");
    for c in challenges {
        resp.append_header("WWW-Authenticate", c)?;
    }
    Ok(())
}
