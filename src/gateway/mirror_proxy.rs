//! Proxy delivery from a mirror: for a rule with `delivery: proxy`, the gateway fetches the
//! blob from the mirror that holds it and streams it to the client as it arrives, `Range`
//! honoured, for clients that cannot reach the mirror or do not follow redirects. Only the
//! headers a blob download needs cross, both ways. A whole body is checked against the
//! blob's digest as it streams ([`Verifier`]): a copy that does not match is cut off before
//! its last bytes, counted, and the mirror counts as not holding the blob.

use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType, OrErr, Result};
use pingora_http::{RequestHeader, ResponseHeader};

use bytes::Bytes;
use log::error;
use pingora_proxy::Session;

use super::failure::DIGEST_MISMATCH;
use super::headers::names_not_in;
use super::{Gateway, RequestCtx};
use crate::metrics;
use crate::mirror::verify::Verifier;
use crate::routing::Answer;

/// Client request headers a mirror may see: ranges and revalidation.
const MIRROR_REQUEST_HEADERS: [&str; 5] = [
    "if-modified-since",
    "if-none-match",
    "if-range",
    "range",
    "user-agent",
];

/// Mirror response headers the client may see: the blob's own description. An object
/// store's metadata (`x-amz-*`, `x-ms-*`), cookies and server headers stay here.
const MIRROR_RESPONSE_HEADERS: [&str; 8] = [
    "accept-ranges",
    "content-length",
    "content-range",
    "date",
    "etag",
    "last-modified",
    "transfer-encoding",
    "cache-control",
];

/// The URL being fetched and the mirror's name, when the answer is a mirror's blob.
pub(super) fn mirror_fetch(ctx: &RequestCtx) -> Option<(&str, &str)> {
    match ctx.reply.as_ref().map(|r| &r.answer) {
        Some(Answer::ProxyMirror { url, target, .. }) => {
            Some((url, target.mirror_name().unwrap_or("default")))
        }
        _ => None,
    }
}

impl Gateway {
    /// The peer serving `url`.
    pub(super) async fn mirror_peer(&self, url: &str) -> Result<Box<HttpPeer>> {
        let parsed = url::Url::parse(url).or_err(ErrorType::InternalError, "mirror URL")?;
        let (Some(host), Some(port)) = (parsed.host_str(), parsed.port_or_known_default()) else {
            return Error::e_explain(ErrorType::InternalError, "mirror URL without a host");
        };
        let tls = parsed.scheme() == "https";
        // Bracketed IPv6 literals resolve without their brackets.
        let name = host.trim_start_matches('[').trim_end_matches(']');
        let addr = tokio::net::lookup_host((name, port))
            .await
            .ok()
            .and_then(|mut addrs| addrs.next());
        let Some(addr) = addr else {
            // The mirror's side: a 502, as for a refused connection.
            let e = Error::explain(
                ErrorType::ConnectNoRoute,
                format!("mirror host {host} does not resolve"),
            );
            return Err(e.into_up());
        };
        Ok(self.upstream.peers.mirror(addr, tls, name))
    }

    /// The mirror's request: the URL's path and query (a presigned one included), its host,
    /// and only the client headers a download needs.
    pub(super) fn rewrite_mirror_request(
        &self,
        url: &str,
        upstream_request: &mut RequestHeader,
    ) -> Result<()> {
        // `scheme://authority/path?query`: a configured base URL or a signer's, checked
        // when the peer was built from it.
        let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
        let (host, target) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let uri = target
            .parse::<http::Uri>()
            .or_err(ErrorType::InternalError, "mirror path is not a URI")?;
        upstream_request.set_uri(uri);
        for name in names_not_in(&upstream_request.headers, &MIRROR_REQUEST_HEADERS) {
            upstream_request.remove_header(&name);
        }
        upstream_request.insert_header("Host", host)?;
        Ok(())
    }

    /// The mirror's answer: a blob (`200`, `206`, `304`, `416`) is passed on with its own
    /// headers; anything else means the mirror lost the blob or refused the URL since the
    /// check, and the client gets a `502`. A whole body (`200` to a `GET`) is to be checked
    /// against the digest; an empty one is checked here, before the head goes out.
    pub(super) fn take_mirror_response(
        &self,
        session: &Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some((_, mirror)) = mirror_fetch(ctx) else {
            return Error::e_explain(ErrorType::InternalError, "no mirror fetch decided");
        };
        let status = resp.status.as_u16();
        metrics::MIRROR_PROXIED
            .with_label_values(&[mirror, resp.status.as_str()])
            .inc();
        if !matches!(status, 200 | 206 | 304 | 416) {
            return Error::e_explain(
                ErrorType::HTTPStatus(502),
                format!("the mirror answered {status} for a blob it held"),
            );
        }
        if status == 200 && session.req_header().method == http::Method::GET {
            ctx.blob.verifier = blob_digest(session).and_then(Verifier::new);
            let empty = resp
                .headers
                .get(http::header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() == b"0");
            if empty {
                self.verify_mirror_body(session, &mut None, true, ctx)
                    .map_err(|e| e.into_up())?;
            }
        }
        for name in names_not_in(&resp.headers, &MIRROR_RESPONSE_HEADERS) {
            resp.remove_header(&name);
        }
        resp.insert_header("Content-Type", "application/octet-stream")?;
        Ok(())
    }

    /// Passes a mirror's body on through the digest check, when the body is one to check.
    /// On a mismatch the answer is cut off (the client never sees it complete), counted and
    /// logged, and the mirror counts as not holding the blob, so that the next request for
    /// it goes along the chain.
    pub(super) fn verify_mirror_body(
        &self,
        session: &Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(verifier) = ctx.blob.verifier.as_mut() else {
            return Ok(());
        };
        let Err(mismatch) = verifier.pass(body, end_of_stream) else {
            return Ok(());
        };
        let (Some(Answer::ProxyMirror { mirror, .. }), Some(digest)) =
            (ctx.reply.as_ref().map(|r| &r.answer), blob_digest(session))
        else {
            return Error::e_explain(ErrorType::InternalError, "no mirror fetch decided");
        };
        let name = mirror_fetch(ctx).map_or("", |(_, name)| name);
        let location = self.routes.policy.mirrors[*mirror].location(digest);
        metrics::MIRROR_DIGEST_MISMATCHES
            .with_label_values(&[name])
            .inc();
        self.mirrors.mark_corrupt(*mirror, &location);
        // The location, not the URL fetched: a private mirror's is presigned.
        error!(
            "mirror {name}: the {} bytes of {location} do not hash to {digest}: the answer was \
             cut off before its end, and the blob goes along the chain until the mirror's copy \
             is replaced",
            mismatch.bytes
        );
        Error::e_explain(
            DIGEST_MISMATCH,
            "the mirror's copy does not match the blob's digest",
        )
    }
}

/// The digest of a blob request (`/v2/<name>/blobs/<digest>`), as the decision checked it.
fn blob_digest(session: &Session) -> Option<&str> {
    let path = session.req_header().uri.path();
    path.rsplit_once("/blobs/").map(|(_, digest)| digest)
}
