//! Pass-through's request phases: which endpoint (the first healthy untried one), what
//! happens when connecting to it fails, and the request it gets: the upstream path, only the
//! allowed client headers, `Host`, `X-Forwarded-For` and the gateway's credentials (or,
//! with `client_auth: relay`, the client's own).

use std::time::Instant;

use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorSource, ErrorType, OrErr, Result};
use pingora_http::RequestHeader;
use pingora_proxy::Session;

use super::failure::AUTH_FAILED;
use super::headers::{names_not_in, trace_id, FORWARDED_REQUEST_HEADERS};
use super::slow_clients::set_request_deadline;
use super::{Gateway, RequestCtx};
use crate::metrics;
use crate::routing::{Answer, AuthMode};
use crate::upstream::auth::repository;

impl Gateway {
    /// The peer for the endpoint in use, or the next one to try.
    pub(super) async fn choose_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let up = &mut ctx.upstream;
        let endpoints = &self.upstream.endpoints;
        let Some(i) = up.endpoint.or_else(|| endpoints.next(up.tried)) else {
            return Error::e_explain(
                ErrorType::ConnectNoRoute,
                "no upstream endpoint left to try",
            );
        };
        up.endpoint = Some(i);
        let now = Instant::now();
        if let (None, Some(total)) = (up.sent_at, self.upstream.total_timeout) {
            // The whole upstream exchange, retries included, by a timer on the client's
            // connection (Pingora polls it while proxying): a stalled body is cut too.
            set_request_deadline(session, Some(now + total));
        }
        up.sent_at = Some(now);
        self.upstream.peers.peer(endpoints, i).await
    }

    /// Counts the failed endpoint and lets Pingora retry while an untried one is left (GET
    /// and HEAD are idempotent).
    pub(super) fn connect_failed(&self, ctx: &mut RequestCtx, mut e: Box<Error>) -> Box<Error> {
        let up = &mut ctx.upstream;
        let endpoints = &self.upstream.endpoints;
        if let Some(i) = up.endpoint.take() {
            up.tried |= 1u64.checked_shl(i as u32).unwrap_or(0);
            endpoints.connect_failed(i);
            metrics::UPSTREAM_REQUESTS
                .with_label_values(&[endpoints.label(i), "error"])
                .inc();
        }
        e.set_retry(endpoints.next(up.tried).is_some());
        e
    }

    /// Proxying failed after the connection to the endpoint was made (or reused): a `GET`
    /// or `HEAD` whose answer has not started is tried once more on the next endpoint when
    /// the endpoint went silent or dropped the connection, and the endpoint counts a failure
    /// (so new requests avoid it). Anything else is retried only as Pingora would: an
    /// idempotent request whose reused connection turned out closed.
    pub(super) fn proxy_failed(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
        client_reused: bool,
    ) -> Box<Error> {
        if !idempotent(session) {
            e.set_retry(false);
            return e;
        }
        let silent = *e.esource() == ErrorSource::Upstream
            && matches!(
                e.etype(),
                ErrorType::ReadTimedout
                    | ErrorType::ReadError
                    | ErrorType::ConnectionClosed
                    | ErrorType::WriteTimedout
                    | ErrorType::WriteError
            );
        if silent && session.response_written().is_none() && !ctx.upstream.auth_retried {
            return self.connect_failed(ctx, e);
        }
        retry_if_reused(session, e, client_reused)
    }

    /// Turns the client's request into the upstream's.
    pub(super) async fn rewrite_request(
        &self,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let (Some(Answer::Proxy { path, .. }), Some(i)) =
            (ctx.reply.as_ref().map(|r| &r.answer), ctx.upstream.endpoint)
        else {
            return Error::e_explain(ErrorType::InternalError, "no upstream request decided");
        };
        let uri = path
            .parse::<http::Uri>()
            .or_err(ErrorType::InternalError, "upstream path is not a URI")?;
        upstream_request.set_uri(uri);
        let host = self.upstream.endpoints.endpoint(i).host_header();
        // Relayed: the client's own credentials, and never the gateway's.
        let relayed = match self.routes.auth {
            AuthMode::Relay => Some(
                upstream_request
                    .headers
                    .get(http::header::AUTHORIZATION)
                    .cloned(),
            ),
            AuthMode::Anonymous | AuthMode::Local => None,
        };
        for name in names_not_in(&upstream_request.headers, &FORWARDED_REQUEST_HEADERS) {
            upstream_request.remove_header(&name);
        }
        let mut values = upstream_request.headers.get_all("traceparent").iter();
        let traced = match (values.next(), values.next()) {
            (Some(v), None) => trace_id(v.as_bytes()).is_some(),
            _ => false,
        };
        if !traced {
            upstream_request.remove_header("traceparent");
        }
        upstream_request.insert_header("Host", host)?;
        // The client as the gateway sees it: the peer, or what trusted proxies said.
        if let Some(ip) = ctx.client {
            upstream_request.insert_header("X-Forwarded-For", ip.to_string())?;
        }
        if let Some(client) = relayed {
            if let Some(value) = client {
                upstream_request.insert_header(http::header::AUTHORIZATION, value)?;
            }
            return Ok(());
        }
        match self.upstream.auth.authorization(i, repository(path)).await {
            Ok(Some(value)) => upstream_request.insert_header("Authorization", &*value)?,
            Ok(None) => {}
            Err(e) => {
                return Error::e_explain(
                    AUTH_FAILED,
                    format!("upstream authentication failed: {e}"),
                )
            }
        }
        Ok(())
    }
}

fn idempotent(session: &Session) -> bool {
    matches!(
        session.req_header().method,
        http::Method::GET | http::Method::HEAD
    )
}

/// Pingora's own rule: an idempotent request is retried when the error says a reused
/// connection was found closed.
pub(super) fn retry_if_reused(
    session: &Session,
    mut e: Box<Error>,
    client_reused: bool,
) -> Box<Error> {
    if idempotent(session) {
        e.retry.decide_reuse(client_reused);
    } else {
        e.set_retry(false);
    }
    e
}
