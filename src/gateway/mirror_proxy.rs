//! Proxy delivery from a mirror: for a rule with `delivery: proxy`, the gateway fetches the
//! blob from the mirror that holds it and streams it to the client as it arrives, `Range`
//! honoured, for clients that cannot reach the mirror or do not follow redirects. Only the
//! headers a blob download needs cross, both ways.

use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType, OrErr, Result};
use pingora_http::{RequestHeader, ResponseHeader};

use super::headers::names_not_in;
use super::{Gateway, RequestCtx};
use crate::metrics;
use crate::routing::{Answer, Target};

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
            let name = match target {
                Target::Mirror(name) => name,
                _ => "default",
            };
            Some((url, name))
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
    /// check, and the client gets a `502`.
    pub(super) fn take_mirror_response(
        &self,
        resp: &mut ResponseHeader,
        mirror: &str,
    ) -> Result<()> {
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
        for name in names_not_in(&resp.headers, &MIRROR_RESPONSE_HEADERS) {
            resp.remove_header(&name);
        }
        resp.insert_header("Content-Type", "application/octet-stream")?;
        Ok(())
    }
}
