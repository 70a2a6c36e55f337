//! Pingora glue: gathers the request facts, runs the routing decision (and the mirror check
//! it asks for), and executes it. Answers the gateway decides are written from
//! `request_filter`, so no upstream is contacted; in pass-through mode the rest goes through
//! Pingora's proxy path to the upstream endpoint chosen by health, with the gateway's own
//! credentials, and manifests may come from the cache.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use log::{info, log_enabled, warn, Level};
use pingora_core::modules::http::HttpModules;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorSource, ErrorType, OrErr, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};

use crate::client_addr::client_addr;
use crate::config::ClientTimeoutsConfig;
use crate::manifest_cache::{CachedManifest, ManifestCache, KEPT_HEADERS, MAX_MANIFEST_BYTES};
use crate::metrics;
use crate::mirror_check::MirrorCheck;
use crate::range_refresh::LiveRanges;
use crate::routing::{decide, Answer, Decision, Reply, Request, Routes};
use crate::slow_clients::DeadlineStream;
use crate::upstream::Upstreams;
use crate::upstream_auth::{parse_challenge, repository, UpstreamAuth};

/// Client request headers the upstream may see: what a pull needs to negotiate formats,
/// ask for ranges and revalidate, and who is asking. Everything else (cookies, forwarding
/// claims, the client's own credentials) stays here.
const FORWARDED_REQUEST_HEADERS: [&str; 9] = [
    "accept",
    "accept-encoding",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "range",
    "user-agent",
];

/// Upstream response headers the client may see: the answer's own description and the
/// registry's. Connection-level headers, cookies and anything else stay here; `Link` and
/// `Location` are rewritten into the gateway's path space.
const FORWARDED_RESPONSE_HEADERS: [&str; 20] = [
    "accept-ranges",
    "age",
    "cache-control",
    "content-encoding",
    "content-length",
    "content-range",
    "content-type",
    "date",
    "docker-content-digest",
    "docker-distribution-api-version",
    "etag",
    "expires",
    "last-modified",
    "link",
    "location",
    "oci-filters-applied",
    "retry-after",
    "transfer-encoding",
    "vary",
    "www-authenticate",
];

/// An upstream's token realm the gateway may not send its credentials to.
const REALM_REFUSED: ErrorType = ErrorType::Custom("upstream token realm refused");

/// The registry-facing service.
pub struct Gateway {
    routes: Routes,
    ranges: LiveRanges,
    mirror_check: MirrorCheck,
    upstream: UpstreamAccess,
    /// Limits on slow and idle clients.
    client_timeouts: ClientTimeoutsConfig,
}

/// How the gateway reaches the upstream: endpoint choice in both modes, the rest for
/// pass-through.
pub struct UpstreamAccess {
    /// The endpoints and their health.
    pub endpoints: Arc<Upstreams>,
    /// The gateway's credentials.
    pub auth: UpstreamAuth,
    /// Manifests already fetched.
    pub manifests: ManifestCache,
    /// Limit on a whole upstream response; zero: none.
    pub total_timeout: Duration,
}

impl Gateway {
    /// A gateway answering by `routes` over `ranges`, checking mirrors with `mirror_check`,
    /// reaching the upstream through `upstream`.
    pub fn new(
        routes: Routes,
        ranges: LiveRanges,
        mirror_check: MirrorCheck,
        upstream: UpstreamAccess,
        client_timeouts: ClientTimeoutsConfig,
    ) -> Gateway {
        Gateway {
            routes,
            ranges,
            mirror_check,
            upstream,
            client_timeouts,
        }
    }
}

/// What one request did, for the access log and the metrics.
pub struct RequestCtx {
    started: Instant,
    /// The answer decided, once decided.
    reply: Option<Reply>,
    /// Pass-through progress.
    upstream: UpstreamCtx,
}

/// Pass-through state of one request.
#[derive(Default)]
struct UpstreamCtx {
    /// The endpoint in use; cleared when connecting to it failed.
    endpoint: Option<usize>,
    /// Bit set of endpoints that could not be reached.
    tried: u64,
    /// The one retry after the upstream asked for authentication was spent.
    auth_retried: bool,
    /// When the current attempt started.
    sent_at: Option<Instant>,
    /// The answer came from the manifest cache.
    from_cache: bool,
    /// The answer was an expired one from the manifest cache: no upstream answered.
    stale: bool,
    /// Manifest cache key, when the answer may be kept (kept for `GET` only).
    cache_key: Option<String>,
    /// The answer being collected for the cache.
    capture: Option<Capture>,
}

struct Capture {
    headers: Vec<(&'static str, Bytes)>,
    body: BytesMut,
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            reply: None,
            upstream: UpstreamCtx::default(),
        }
    }

    async fn early_request_filter(&self, session: &mut Session, _: &mut RequestCtx) -> Result<()> {
        // Pingora waits for the next keep-alive request without limit and reads bodies with
        // a per-read limit only.
        let t = &self.client_timeouts;
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(t.idle.as_secs()));
        }
        session.set_read_timeout(Some(t.body));
        session.set_total_drain_timeout(Some(t.body));
        // Pingora writes without a limit: a client that stops reading would hold the
        // connection (and in pass-through an upstream one) forever.
        session.set_write_timeout(Some(t.write));
        session.set_min_send_rate(usize::try_from(t.min_send_rate).ok().filter(|r| *r > 0));
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let req = session.req_header();
        let forwarded_for = forwarded_for(req);
        let has_body = has_body(req);
        let facts = Request {
            method: req.method.as_str(),
            target: req.raw_path(),
            peer: peer_ip(session),
            forwarded_for: &forwarded_for,
            upstream: self.upstream.endpoints.preferred(),
            has_body,
        };
        let reply = match decide(&facts, &self.routes, &self.ranges.load()) {
            Decision::Reply(reply) => reply,
            Decision::CheckMirror(candidate) => {
                let present = self.mirror_check.check(&candidate.mirror_url).await;
                candidate.decide(present)
            }
        };
        let head = req.method == http::Method::HEAD;
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
                ctx.upstream.cache_key = Some(key);
            }
        }
        if matches!(reply.answer, Answer::Proxy { .. }) {
            return Ok(false);
        }
        if has_body {
            // Refused without reading it: the connection cannot carry another request.
            session.set_keepalive(None);
        }
        write_answer(session, &reply.answer, head).await?;
        Ok(true)
    }

    fn init_downstream_modules(&self, _modules: &mut HttpModules) {
        // Answers are either built here or the upstream's bytes as they came: no response
        // compression module to consult.
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let up = &mut ctx.upstream;
        let i = match up.endpoint {
            Some(i) => i,
            None => match self.upstream.endpoints.next(up.tried) {
                Some(i) => i,
                None => {
                    return Error::e_explain(
                        ErrorType::ConnectNoRoute,
                        "no upstream endpoint left to try",
                    )
                }
            },
        };
        up.endpoint = Some(i);
        let now = Instant::now();
        if up.sent_at.is_none() && !self.upstream.total_timeout.is_zero() {
            // The whole upstream exchange, retries included, by a timer on the client's
            // connection (Pingora polls it while proxying): a stalled body is cut too.
            set_request_deadline(session, Some(now + self.upstream.total_timeout));
        }
        up.sent_at = Some(now);
        self.upstream.endpoints.peer(i).await
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let up = &mut ctx.upstream;
        if let Some(i) = up.endpoint.take() {
            up.tried |= 1u64.checked_shl(i as u32).unwrap_or(0);
            self.upstream.endpoints.connect_failed(i);
            metrics::UPSTREAM_REQUESTS
                .with_label_values(&[self.upstream.endpoints.label(i), "error"])
                .inc();
        }
        // GET and HEAD are idempotent: the next endpoint may answer.
        e.set_retry(self.upstream.endpoints.next(up.tried).is_some());
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
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
        for name in names_not_in(&upstream_request.headers, &FORWARDED_REQUEST_HEADERS) {
            upstream_request.remove_header(&name);
        }
        upstream_request.insert_header("Host", host)?;
        // The client as the gateway sees it: the peer, or what trusted proxies said.
        let peer = peer_ip(session);
        let forwarded = forwarded_for(session.req_header());
        let client = client_addr(peer, &forwarded, self.routes.trusted_proxy_hops)
            .ok()
            .or(peer);
        if let Some(ip) = client {
            upstream_request.insert_header("X-Forwarded-For", ip.to_string())?;
        }
        match self.upstream.auth.authorization(i, repository(path)).await {
            Ok(Some(value)) => upstream_request.insert_header("Authorization", &*value)?,
            Ok(None) => {}
            Err(e) => {
                return Error::e_explain(
                    ErrorType::HTTPStatus(502),
                    format!("upstream authentication failed: {e}"),
                )
            }
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let up = &mut ctx.upstream;
        let i = up.endpoint.unwrap_or(0);
        let label = self.upstream.endpoints.label(i);
        let status = resp.status.as_u16();
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
        if status == 401 && !up.auth_retried {
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
                        ErrorType::Custom("upstream authentication"),
                        "upstream asked for credentials; retrying with them",
                    );
                    e.set_retry(true);
                    return Err(e);
                }
            }
        }
        let endpoint = self.upstream.endpoints.endpoint(i);
        forward_response_headers(resp, &self.routes.upstream_prefix, &endpoint.url);
        let identity = resp.headers.get("content-encoding").is_none();
        let head = session.req_header().method == http::Method::HEAD;
        if status == 200 && identity && !head && up.cache_key.is_some() {
            let small = resp
                .headers
                .get("content-length")
                .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
                .is_none_or(|len| len <= MAX_MANIFEST_BYTES);
            if small {
                let headers = KEPT_HEADERS
                    .iter()
                    .filter_map(|name| {
                        let value = resp.headers.get(*name)?;
                        Some((*name, Bytes::copy_from_slice(value.as_bytes())))
                    })
                    .collect();
                up.capture = Some(Capture {
                    headers,
                    body: BytesMut::new(),
                });
            }
        }
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        let up = &mut ctx.upstream;
        if !self.upstream.total_timeout.is_zero()
            && up
                .sent_at
                .is_some_and(|t| t.elapsed() > self.upstream.total_timeout)
        {
            return Error::e_explain(
                ErrorType::ReadTimedout,
                "upstream response took longer than upstream.timeouts.total",
            );
        }
        if let Some(capture) = &mut up.capture {
            if let Some(chunk) = body {
                if capture.body.len() + chunk.len() > MAX_MANIFEST_BYTES {
                    up.capture = None;
                } else {
                    capture.body.extend_from_slice(chunk);
                }
            }
        }
        if end_of_stream {
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
                self.upstream.manifests.insert(
                    key,
                    path,
                    *reference,
                    capture.headers,
                    capture.body.freeze(),
                );
            }
        }
        Ok(None)
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &RequestCtx,
        error: &Error,
        _context: ProxyWarnLogContext,
    ) -> bool {
        // Learning that the upstream wants credentials is routine, not a failure.
        matches!(error.etype(), ErrorType::Custom("upstream authentication"))
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, error: &Error) -> bool {
        // Logged once, with its reason, where it was found.
        *error.etype() == REALM_REFUSED
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        use ErrorType::*;
        let deadline_passed = !self.upstream.total_timeout.is_zero()
            && ctx
                .upstream
                .sent_at
                .is_some_and(|t| t.elapsed() >= self.upstream.total_timeout);
        // The body says what kind of failure it was, not where: upstream addresses and
        // causes stay in the log.
        let (status, message) = match (e.etype(), e.esource()) {
            (t, _) if *t == REALM_REFUSED => (
                502,
                "the upstream registry's token service is not one the gateway may use",
            ),
            (HTTPStatus(code), _) => (
                *code,
                "the upstream registry refused the gateway's credentials",
            ),
            // The request deadline fires on the client's connection.
            (_, ErrorSource::Downstream) if deadline_passed => {
                (504, "the upstream registry did not answer in time")
            }
            (ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout, _) => {
                (504, "the upstream registry did not answer in time")
            }
            (_, ErrorSource::Upstream) => (502, "the upstream registry could not be reached"),
            (ReadError | WriteError | ConnectionClosed, ErrorSource::Downstream) => (0, ""),
            (_, ErrorSource::Downstream) => (400, "bad request"),
            _ => (500, "internal error"),
        };
        if status >= 500 && session.response_written().is_none() {
            if let Some(stale) = ctx
                .upstream
                .cache_key
                .as_deref()
                .and_then(|key| self.upstream.manifests.stale(key))
            {
                let head = session.req_header().method == http::Method::HEAD;
                match write_cached(session, &stale, head, true).await {
                    Ok(()) => {
                        ctx.upstream.stale = true;
                        return FailToProxy {
                            error_code: 200,
                            can_reuse_downstream: false,
                        };
                    }
                    Err(write_error) => log::debug!("cannot send the stale answer: {write_error}"),
                }
            }
        }
        if status > 0 && session.response_written().is_none() {
            let code = if status >= 500 {
                "UNAVAILABLE"
            } else {
                "UNSUPPORTED"
            };
            let answer = Answer::Error {
                status,
                code,
                message: Cow::Borrowed(message),
                oci: true,
            };
            let head = session.req_header().method == http::Method::HEAD;
            if let Err(write_error) = write_answer(session, &answer, head).await {
                log::debug!("cannot send the error answer: {write_error}");
            }
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, error: Option<&Error>, ctx: &mut RequestCtx) {
        if ctx.upstream.sent_at.is_some() {
            set_request_deadline(session, None);
        }
        let elapsed = ctx.started.elapsed();
        let reply = ctx.reply.as_ref();
        let status = reply
            .and_then(|r| r.answer.status())
            .or_else(|| session.response_written().map(|r| r.status.as_u16()))
            .unwrap_or(0);
        if let Some(reply) = reply {
            metrics::record_request(reply.route, status, elapsed.as_secs_f64());
            if let Answer::Redirect { target, .. } = &reply.answer {
                metrics::record_redirect(target);
            }
        }
        if !log_enabled!(target: "archeio::access", Level::Info) {
            return;
        }
        let how = match reply.map(|r| &r.answer) {
            Some(Answer::Redirect { target, .. }) => target.kind(),
            Some(Answer::Proxy { .. }) if ctx.upstream.stale => "stale",
            Some(Answer::Proxy { .. }) if ctx.upstream.from_cache => "cache",
            Some(Answer::Proxy { .. }) => "proxy",
            _ => "-",
        };
        let detail = AccessEntry::detail(reply.map(|r| &r.answer), error);
        let upstream = match ctx.upstream.endpoint {
            Some(i) if !ctx.upstream.from_cache => Some(self.upstream.endpoints.label(i)),
            _ => None,
        };
        let req = session.req_header();
        AccessEntry {
            method: req.method.as_str().as_bytes(),
            target: req.raw_path(),
            client: peer_ip(session),
            route: reply.map_or("error", |r| r.route.as_str()),
            how,
            status,
            elapsed,
            upstream,
            detail,
        }
        .write();
    }
}

/// One access-log line (`archeio::access`, level info).
pub struct AccessEntry<'a> {
    /// The method as sent.
    pub method: &'a [u8],
    /// The request target; the query is left out of the log.
    pub target: &'a [u8],
    /// The socket peer.
    pub client: Option<IpAddr>,
    /// The rule that answered ([`crate::routing::Route::as_str`]), or `error`.
    pub route: &'a str,
    /// Where the answer came from: a redirect target kind, `proxy`, `cache`, `stale`, or `-`.
    pub how: &'a str,
    /// The status sent; 0 when none was.
    pub status: u16,
    /// Time from the request to the answer.
    pub elapsed: Duration,
    /// The upstream endpoint's label, when one was asked.
    pub upstream: Option<&'a str>,
    /// ` detail="..."` or ` error="..."`, or empty.
    pub detail: String,
}

impl<'a> AccessEntry<'a> {
    /// The entry for a request line refused before Pingora parsed it, also counted in the
    /// request metrics.
    pub fn refused(
        method: &'a [u8],
        target: &'a [u8],
        client: Option<IpAddr>,
        reply: &'a Reply,
    ) -> AccessEntry<'a> {
        let status = reply.answer.status().unwrap_or(0);
        metrics::record_request(reply.route, status, 0.0);
        let detail = AccessEntry::detail(Some(&reply.answer), None);
        AccessEntry {
            method,
            target,
            client,
            route: reply.route.as_str(),
            how: "-",
            status,
            elapsed: Duration::ZERO,
            upstream: None,
            detail,
        }
    }

    /// ` detail="<why>"` for an error the gateway decided, else ` error="<what failed>"`
    /// when something failed, else nothing.
    fn detail(answer: Option<&Answer>, error: Option<&Error>) -> String {
        match (answer, error) {
            (Some(Answer::Error { message, .. }), _) => {
                format!(" detail=\"{}\"", message.escape_default())
            }
            (_, Some(e)) => format!(" error=\"{}\"", e.to_string().escape_default()),
            _ => String::new(),
        }
    }

    /// Writes the line.
    pub fn write(&self) {
        let path = &self.target[..self
            .target
            .iter()
            .position(|b| *b == b'?')
            .unwrap_or(self.target.len())];
        let client = self
            .client
            .map_or_else(|| "-".to_string(), |ip| ip.to_string());
        let upstream = self
            .upstream
            .map_or_else(String::new, |u| format!(" upstream={u}"));
        info!(
            target: "archeio::access",
            "{} {} client={} decision={}/{} status={} duration_ms={:.3}{}{}",
            self.method.escape_ascii(),
            path.escape_ascii(),
            client,
            self.route,
            self.how,
            self.status,
            self.elapsed.as_secs_f64() * 1e3,
            upstream,
            self.detail
        );
    }
}

/// Keeps the [`FORWARDED_RESPONSE_HEADERS`] of an upstream answer, with `Link` and
/// `Location` rewritten by [`gateway_uri`].
fn forward_response_headers(resp: &mut ResponseHeader, upstream_prefix: &str, endpoint: &str) {
    for name in names_not_in(&resp.headers, &FORWARDED_RESPONSE_HEADERS) {
        resp.remove_header(&name);
    }
    if let Some(link) = resp.headers.get("link").and_then(|v| v.to_str().ok()) {
        let links: Vec<String> = split_links(link)
            .filter_map(|(uri, params)| {
                let uri = gateway_uri(uri, upstream_prefix, endpoint)?;
                Some(format!("<{uri}>{params}"))
            })
            .collect();
        resp.remove_header("link");
        if !links.is_empty() {
            // Built from a valid header value with ASCII URIs: still valid.
            let _ = resp.insert_header("Link", links.join(", "));
        }
    }
    if let Some(location) = resp.headers.get("location").and_then(|v| v.to_str().ok()) {
        let rewritten = gateway_uri(location, upstream_prefix, endpoint)
            .map(|uri| uri.into_owned())
            .or_else(|| {
                location
                    .starts_with('/')
                    .then(|| format!("{endpoint}{location}"))
            });
        if let Some(uri) = rewritten {
            let _ = resp.insert_header("Location", uri);
        }
    }
}

/// The header names in `headers` that `allowed` (lowercase) does not list.
fn names_not_in(headers: &http::HeaderMap, allowed: &[&str]) -> Vec<http::HeaderName> {
    headers
        .keys()
        .filter(|name| !allowed.contains(&name.as_str()))
        .cloned()
        .collect()
}

/// `<uri>; params` items of a `Link` value (RFC 8288).
fn split_links(value: &str) -> impl Iterator<Item = (&str, &str)> {
    let mut rest = value;
    std::iter::from_fn(move || {
        let start = rest.find('<')?;
        let end = start + rest[start..].find('>')?;
        let uri = &rest[start + 1..end];
        let after = &rest[end + 1..];
        // Parameters run to the next link (`, <`) or the end.
        let next = after
            .find('<')
            .map_or(after.len(), |i| after[..i].rfind(',').unwrap_or(i));
        rest = &after[next..];
        Some((uri, after[..next].trim_end()))
    })
}

/// An upstream URI (relative, or absolute at `endpoint`) under the upstream's `/v2/<prefix>/`
/// as the gateway's `/v2/...` path; `Some` unchanged for URIs elsewhere that clients reach
/// directly (storage redirects); `None` for the upstream's own URIs outside the prefix.
fn gateway_uri<'a>(uri: &'a str, upstream_prefix: &str, endpoint: &str) -> Option<Cow<'a, str>> {
    let path = match uri.strip_prefix(endpoint) {
        Some(p) if p.starts_with('/') => p,
        Some(_) => return Some(Cow::Borrowed(uri)),
        None if uri.starts_with('/') && !uri.starts_with("//") => uri,
        None if uri.starts_with("http://") || uri.starts_with("https://") => {
            return Some(Cow::Borrowed(uri))
        }
        None => return None,
    };
    let rest = path.strip_prefix(upstream_prefix)?;
    if !rest.starts_with('/') {
        return None;
    }
    Some(Cow::Owned(format!("/v2{rest}")))
}

/// Sets (or clears) the deadline of the request on the client's connection.
fn set_request_deadline(session: &Session, deadline: Option<Instant>) {
    if let Some(stream) = session
        .as_downstream()
        .stream()
        .and_then(|s| s.as_any().downcast_ref::<DeadlineStream>())
    {
        stream.set_request_deadline(deadline);
    }
}

/// Writes a manifest from the cache; HEAD gets the headers only. A stale one says so.
async fn write_cached(
    session: &mut Session,
    cached: &CachedManifest,
    head: bool,
    stale: bool,
) -> Result<()> {
    let mut resp = ResponseHeader::build(200, Some(cached.headers.len() + 2))?;
    for (name, value) in &cached.headers {
        resp.insert_header(*name, value.as_ref())?;
    }
    if stale {
        resp.insert_header("Warning", "110 archeio \"Response is Stale\"")?;
    }
    resp.insert_header("Content-Length", cached.body.len().to_string())?;
    if head {
        return session.write_response_header(Box::new(resp), true).await;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(cached.body.clone()), true)
        .await
}

/// Every `X-Forwarded-For` header line, in order.
fn forwarded_for(req: &RequestHeader) -> Vec<&[u8]> {
    req.headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.as_bytes())
        .collect()
}

/// Whether the request announces a body.
fn has_body(req: &RequestHeader) -> bool {
    req.headers.contains_key(http::header::TRANSFER_ENCODING)
        || req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

fn peer_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// Writes the answer: redirects and the version check with an empty body, errors with a JSON
/// (registry API) or text body; HEAD gets the headers only.
async fn write_answer(session: &mut Session, answer: &Answer, head: bool) -> Result<()> {
    let status = answer.status().unwrap_or(500);
    let mut resp = ResponseHeader::build(status, Some(4))?;
    let body = match answer {
        Answer::Redirect { location, .. } => {
            resp.insert_header("Location", location.as_str())?;
            None
        }
        Answer::ApiVersion => {
            resp.insert_header("Docker-Distribution-Api-Version", "registry/2.0")?;
            None
        }
        Answer::Error {
            code, message, oci, ..
        } => {
            let (headers, body) = error_parts(status, code, message, *oci);
            for (name, value) in headers {
                resp.insert_header(name, value)?;
            }
            Some(body)
        }
        Answer::Proxy { .. } => {
            return Error::e_explain(
                ErrorType::InternalError,
                "a proxied answer is not written here",
            )
        }
    };
    let len = body.as_ref().map_or(0, Bytes::len);
    resp.insert_header("Content-Length", len.to_string())?;
    match body {
        Some(body) if !head => {
            session.write_response_header(Box::new(resp), false).await?;
            session.write_response_body(Some(body), true).await
        }
        _ => session.write_response_header(Box::new(resp), true).await,
    }
}

/// The headers of an error answer (its framing aside) and its body: OCI JSON
/// (`{"errors":[{"code":...,"message":...}]}`) with `Docker-Distribution-Api-Version` on
/// registry API paths, one line of text elsewhere; `Allow` with a `405`.
fn error_parts(
    status: u16,
    code: &str,
    message: &str,
    oci: bool,
) -> (Vec<(&'static str, &'static str)>, Bytes) {
    let mut headers = Vec::with_capacity(3);
    let body = if oci {
        headers.push(("Content-Type", "application/json; charset=utf-8"));
        headers.push(("Docker-Distribution-Api-Version", "registry/2.0"));
        let json = serde_json::json!({ "errors": [{ "code": code, "message": message }] });
        Bytes::from(format!("{json}\n"))
    } else {
        headers.push(("Content-Type", "text/plain; charset=utf-8"));
        Bytes::from(format!("{message}\n"))
    };
    if status == 405 {
        headers.push(("Allow", "GET, HEAD"));
    }
    (headers, body)
}

/// A whole HTTP/1.1 error answer as bytes, for requests refused before Pingora parsed them;
/// the connection closes after it.
pub fn error_response_bytes(reply: &Reply, head: bool) -> Bytes {
    let Answer::Error {
        status,
        code,
        message,
        oci,
    } = &reply.answer
    else {
        return Bytes::new();
    };
    let (headers, body) = error_parts(*status, code, message, *oci);
    let reason = http::StatusCode::from_u16(*status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut out = format!("HTTP/1.1 {status} {reason}\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let mut bytes = BytesMut::from(out.as_bytes());
    if !head {
        bytes.extend_from_slice(&body);
    }
    bytes.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EP: &str = "https://reg.example:5000";

    #[test]
    fn upstream_uris_are_moved_into_the_gateway_path_space() {
        let cases = [
            // Relative and absolute at the endpoint, under the prefix: the gateway's path.
            (
                "/v2/a/b/x/tags/list?last=t&n=2",
                Some("/v2/x/tags/list?last=t&n=2"),
            ),
            (
                "https://reg.example:5000/v2/a/b/x/tags/list?last=t",
                Some("/v2/x/tags/list?last=t"),
            ),
            // Elsewhere at the upstream: not reachable through the gateway.
            ("/v2/other/x/tags/list", None),
            ("/v2/a/bc/x", None),
            ("https://reg.example:5000/v2/other", None),
            ("relative/path", None),
            ("//evil.example/v2/a/b/x", None),
            // Other hosts (storage): as they are.
            (
                "https://storage.example/blob?sig=1",
                Some("https://storage.example/blob?sig=1"),
            ),
            (
                "https://reg.example:5001/v2/a/b/x",
                Some("https://reg.example:5001/v2/a/b/x"),
            ),
        ];
        for (uri, want) in cases {
            assert_eq!(gateway_uri(uri, "/v2/a/b", EP).as_deref(), want, "{uri}");
        }
        // Without a prefix the path stays.
        assert_eq!(
            gateway_uri("/v2/x/tags/list?last=t", "/v2", EP).as_deref(),
            Some("/v2/x/tags/list?last=t")
        );
    }

    #[test]
    fn link_values_are_split_into_uri_and_parameters() {
        let links: Vec<_> =
            split_links(r#"</v2/a/b/x/tags/list?last=t&n=2>; rel="next", <https://x/y>;rel=prev"#)
                .collect();
        assert_eq!(
            links,
            [
                ("/v2/a/b/x/tags/list?last=t&n=2", r#"; rel="next""#),
                ("https://x/y", ";rel=prev")
            ]
        );
        assert_eq!(split_links("no link here").count(), 0);
    }

    #[test]
    fn refused_requests_are_answered_in_full() {
        let reply = Reply {
            route: crate::routing::Route::Invalid,
            answer: Answer::Error {
                status: 400,
                code: "NAME_INVALID",
                message: "bad".into(),
                oci: true,
            },
        };
        let text = String::from_utf8(error_response_bytes(&reply, false).to_vec()).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        assert!(text.contains("Connection: close\r\n"));
        assert!(text
            .ends_with("\r\n\r\n{\"errors\":[{\"code\":\"NAME_INVALID\",\"message\":\"bad\"}]}\n"));
        let head = String::from_utf8(error_response_bytes(&reply, true).to_vec()).unwrap();
        assert!(
            head.ends_with("\r\n\r\n") && head.contains("Content-Length: 53"),
            "{head}"
        );
    }
}
