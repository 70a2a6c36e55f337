//! The request phase: client limits on the session, the request's facts, the routing
//! decision and the mirror check it asks for, the manifest cache, and every answer the
//! gateway gives itself. Only proxied requests go further.

use std::net::IpAddr;

use pingora_core::{Error, ErrorType, Result};
use pingora_http::RequestHeader;
use pingora_proxy::Session;

use super::headers::trace_id;
use super::responses::{write_answer, write_cached, write_token};
use super::slow_clients::proxied_source;
use super::{Gateway, RequestCtx};
use crate::auth::ClientAuthority;
use crate::config::ClientTimeouts;
use crate::metrics;
use crate::routing::client_addr::{canonical, find_client, Connection};
use crate::routing::{
    decide_by_rule, rate_limited, Answer, AuthMode, Decision, Grants, Places, Request, Route,
    Target,
};
use crate::upstream::blob_access::Asker;
use crate::upstream::manifest_cache::ManifestCache;

/// Pingora waits for the next keep-alive request without limit, reads bodies with a
/// per-read limit only, and writes without a limit: a client that stops reading would hold
/// the connection (and in pass-through an upstream one) forever.
pub(super) fn apply_client_limits(session: &mut Session, t: &ClientTimeouts) {
    if session.get_keepalive().is_some() {
        session.set_keepalive(Some(t.idle.as_secs()));
    }
    session.set_read_timeout(Some(t.body));
    session.set_total_drain_timeout(Some(t.body));
    session.set_write_timeout(Some(t.write));
    session.set_min_send_rate(t.min_send_rate);
}

impl Gateway {
    /// Decides the request and answers it, unless it is to be proxied: `Ok(true)` when
    /// answered here.
    ///
    /// The calls that may wait on a network or a password hash (the upstream's word, its blob
    /// sizes, tokens, a local password) are boxed: inline, their state made this future
    /// 5,456 bytes, moved into a new box for every request (`request_filter` is boxed per
    /// call); without them it is 1,824.
    pub(super) async fn answer(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let req = session.req_header();
        let headers = RequestHeaders::of(req, self.clients.address.header.name());
        let connection = Connection {
            peer: ctx.peer,
            proxied: proxied_source(session),
        };
        let client = find_client(&self.clients.address, connection, &headers.forwarded);
        ctx.client = client.ok().or(connection.peer);
        ctx.client_error = client.err();
        if let Some(limiter) = &self.ops.rate_limiter {
            if let Some(wait) = ctx.client.and_then(|ip| limiter.check(ip).err()) {
                metrics::RATE_LIMITED.inc();
                let reply = ctx.reply.insert(rate_limited(req.raw_path(), wait));
                write_answer(session, &reply.answer, req.method == http::Method::HEAD).await?;
                return Ok(true);
            }
        }
        // After the rate limit: checking a password is slow by design.
        let identity = match &self.clients.auth {
            ClientAuthority::Local(auth) => {
                Some(Box::pin(auth.identify(headers.authorization)).await)
            }
            _ => None,
        };
        let grants = match (&self.clients.auth, &identity) {
            (ClientAuthority::Local(auth), Some(id)) => auth.grants(id),
            _ => Grants::Unchecked,
        };
        let facts = Request {
            method: req.method.as_str(),
            target: req.raw_path(),
            client,
            upstream: self.upstream.endpoints.preferred(),
            has_body: headers.has_body,
            grants,
        };
        let (ranges, geo) = (self.places.ranges.load(), self.places.geo.load());
        let places = Places {
            ranges: &ranges,
            geo: &geo,
        };
        let (decision, rule) = decide_by_rule(&facts, &self.routes, places);
        ctx.rule = rule;
        if let Some(counter) = rule.and_then(|i| self.rule_matches.get(i)) {
            counter.inc();
        }
        let reply = match decision {
            Decision::Reply(reply) => reply,
            Decision::CheckMirrors(chain) => {
                let traceparent = headers
                    .traceparent
                    .and_then(|v| trace_id(v).map(|_| std::str::from_utf8(v).unwrap_or_default()));
                let up = &self.upstream;
                let asker = match self.routes.auth {
                    AuthMode::Anonymous | AuthMode::Local => Asker::Gateway,
                    AuthMode::Relay => Asker::Client(headers.authorization),
                };
                let confirmed = match &chain.confirm {
                    Some(path) => {
                        Box::pin(
                            up.blobs
                                .held(&up.endpoints, &up.auth, path, asker, traceparent),
                        )
                        .await
                    }
                    None => true,
                };
                let found = match confirmed {
                    true => {
                        self.mirrors
                            .first_holding(&chain.candidates, &req.method, traceparent)
                            .await
                    }
                    false => None,
                };
                ctx.blob.size = found.as_ref().and_then(|f| f.size);
                chain.decide(found.map(|f| (f.index, f.url)))
            }
        };
        if self.upstream.size_blobs
            && reply.route == Route::Blob
            && req.method == http::Method::GET
            && matches!(
                &reply.answer,
                Answer::Redirect {
                    target: Target::Upstream,
                    ..
                }
            )
        {
            // The blob's upstream path: names of blob requests never carry the prefix.
            let path = format!("{}{}", self.routes.upstream_prefix, &req.uri.path()[3..]);
            let traceparent = headers
                .traceparent
                .and_then(|v| std::str::from_utf8(v).ok());
            let up = &self.upstream;
            ctx.blob.size =
                Box::pin(up.blobs.size(&up.endpoints, &up.auth, &path, traceparent)).await;
        }
        let head = req.method == http::Method::HEAD;
        if let Answer::Token { query } = &reply.answer {
            let query = query.as_deref();
            let up = &self.upstream;
            let answer = match &self.clients.auth {
                ClientAuthority::Relay { tokens, .. } => {
                    Box::pin(tokens.token(&up.endpoints, &up.auth, query, headers.authorization))
                        .await
                }
                ClientAuthority::Local(auth) => {
                    Box::pin(auth.token(query, headers.authorization)).await
                }
                ClientAuthority::Anonymous => {
                    return Error::e_explain(ErrorType::InternalError, "no token endpoint")
                }
            };
            ctx.reply = Some(reply);
            Box::pin(write_token(session, &answer, head)).await?;
            return Ok(true);
        }
        let reply = ctx.reply.insert(reply);
        if let Answer::Proxy {
            path,
            manifest: Some(reference),
        } = &reply.answer
        {
            if self.upstream.manifests.caches(*reference) {
                let accept = req.headers.get_all("accept").iter().map(|v| v.as_bytes());
                let key = ManifestCache::key(path, accept);
                if let Some(cached) = self.upstream.manifests.get(&key) {
                    ctx.upstream.from_cache = true;
                    write_cached(session, &cached, head, false).await?;
                    return Ok(true);
                }
                // Every endpoint known to be down: a stale answer now, not after their
                // timeouts.
                if !self.upstream.endpoints.any_healthy() {
                    if let Some(stale) = self.upstream.manifests.stale(&key) {
                        ctx.upstream.from_cache = true;
                        ctx.upstream.stale = true;
                        write_cached(session, &stale, head, true).await?;
                        return Ok(true);
                    }
                }
                ctx.upstream.cache_key = Some(key);
            }
        }
        if matches!(
            reply.answer,
            Answer::Proxy { .. } | Answer::ProxyMirror { .. }
        ) {
            return Ok(false);
        }
        if headers.has_body {
            // Refused without reading it: the connection cannot carry another request.
            session.set_keepalive(None);
        }
        write_answer(session, &reply.answer, head).await?;
        Ok(true)
    }
}

/// The request headers the decision reads, found in one pass over them: cheaper than a
/// lookup by name for each, with the few headers a registry client sends.
struct RequestHeaders<'a> {
    /// Every line of the forwarding header the trusted proxies write, in order.
    forwarded: Vec<&'a [u8]>,
    /// The request announces a body.
    has_body: bool,
    /// The first `traceparent`.
    traceparent: Option<&'a [u8]>,
    /// The first `Authorization`: the client's credentials, relayed or checked.
    authorization: Option<&'a [u8]>,
}

impl<'a> RequestHeaders<'a> {
    /// The headers of `req`; `forwarding` names the forwarding header (lowercase).
    fn of(req: &'a RequestHeader, forwarding: &str) -> RequestHeaders<'a> {
        let mut found = RequestHeaders {
            forwarded: Vec::new(),
            has_body: false,
            traceparent: None,
            authorization: None,
        };
        for (name, value) in &req.headers {
            let value = value.as_bytes();
            if *name == http::header::TRANSFER_ENCODING {
                found.has_body = true;
            } else if *name == http::header::CONTENT_LENGTH {
                found.has_body |= value != b"0";
            } else if name.as_str() == forwarding {
                found.forwarded.push(value);
            } else if name.as_str() == "traceparent" && found.traceparent.is_none() {
                found.traceparent = Some(value);
            } else if *name == http::header::AUTHORIZATION && found.authorization.is_none() {
                found.authorization = Some(value);
            }
        }
        found
    }
}

/// The socket peer's address, IPv4-mapped ones as IPv4.
pub(super) fn peer_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| canonical(a.ip()))
}
