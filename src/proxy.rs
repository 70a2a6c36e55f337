//! Pingora glue: gathers the request facts, runs the routing decision (and the mirror check
//! it asks for), and executes it. Answers the gateway decides are written from
//! `request_filter`, so no upstream is contacted; in pass-through mode the rest goes through
//! Pingora's proxy path to the upstream endpoint chosen by health, with the gateway's own
//! credentials, and manifests may come from the cache.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use log::{info, log_enabled, Level};
use pingora_core::modules::http::HttpModules;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorSource, ErrorType, OrErr, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};

use crate::config::ClientTimeoutsConfig;
use crate::manifest_cache::{CachedManifest, ManifestCache, KEPT_HEADERS, MAX_MANIFEST_BYTES};
use crate::metrics;
use crate::mirror_check::MirrorCheck;
use crate::range_refresh::LiveRanges;
use crate::routing::{decide, Answer, Decision, Reply, Request, Routes};
use crate::upstream::Upstreams;
use crate::upstream_auth::{parse_challenge, repository, UpstreamAuth};

/// Response headers that describe one connection, not the answer (RFC 9110, 7.6.1).
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

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
    /// Manifest cache key, when the answer may be kept.
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
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let req = session.req_header();
        let forwarded_for: Vec<&[u8]> = req
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        let facts = Request {
            method: req.method.as_str(),
            target: req.raw_path(),
            peer: peer_ip(session),
            forwarded_for: &forwarded_for,
            upstream: self.upstream.endpoints.preferred(),
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
                    write_cached(session, &cached, head).await?;
                    return Ok(true);
                }
                if !head {
                    ctx.upstream.cache_key = Some(key);
                }
            }
        }
        if matches!(reply.answer, Answer::Proxy { .. }) {
            return Ok(false);
        }
        write_reply(session, reply, head).await?;
        Ok(true)
    }

    fn init_downstream_modules(&self, _modules: &mut HttpModules) {
        // Answers are either built here or the upstream's bytes as they came: no response
        // compression module to consult.
    }

    async fn upstream_peer(&self, _: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
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
        up.sent_at = Some(Instant::now());
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
        _session: &mut Session,
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
        upstream_request.insert_header("Host", host)?;
        // The upstream sees the gateway's credentials, never a client's.
        upstream_request.remove_header("Authorization");
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
        _session: &mut Session,
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
                if self
                    .upstream
                    .auth
                    .learn(i, challenge, repository(path))
                    .await
                {
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
        strip_hop_by_hop(resp);
        let identity = resp.headers.get("content-encoding").is_none();
        if status == 200 && identity && up.cache_key.is_some() {
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

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _ctx: &mut RequestCtx,
    ) -> FailToProxy {
        use ErrorType::*;
        // The body says what kind of failure it was, not where: upstream addresses and
        // causes stay in the log.
        let (status, message) = match (e.etype(), e.esource()) {
            (HTTPStatus(code), _) => (
                *code,
                "the upstream registry refused the gateway's credentials",
            ),
            (ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout, _) => {
                (504, "the upstream registry did not answer in time")
            }
            (_, ErrorSource::Upstream) => (502, "the upstream registry could not be reached"),
            (ReadError | WriteError | ConnectionClosed, ErrorSource::Downstream) => (0, ""),
            (_, ErrorSource::Downstream) => (400, "bad request"),
            _ => (500, "internal error"),
        };
        if status > 0 && session.response_written().is_none() {
            let code = if status >= 500 {
                "UNAVAILABLE"
            } else {
                "UNSUPPORTED"
            };
            let json = serde_json::json!({ "errors": [{ "code": code, "message": message }] });
            let body = Bytes::from(format!("{json}\n"));
            let written = async {
                let mut resp = ResponseHeader::build(status, Some(4))?;
                resp.insert_header("Content-Type", "application/json; charset=utf-8")?;
                resp.insert_header("Docker-Distribution-Api-Version", "registry/2.0")?;
                resp.insert_header("Content-Length", body.len().to_string())?;
                let head = session.req_header().method == http::Method::HEAD;
                session.write_response_header(Box::new(resp), head).await?;
                if !head {
                    session.write_response_body(Some(body), true).await?;
                }
                Ok::<_, Box<Error>>(())
            };
            if let Err(write_error) = written.await {
                log::debug!("cannot send the error answer: {write_error}");
            }
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, error: Option<&Error>, ctx: &mut RequestCtx) {
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
        let (route, target) = match reply {
            Some(Reply {
                route,
                answer: Answer::Redirect { target, .. },
            }) => (route.as_str(), target.kind()),
            Some(Reply {
                route,
                answer: Answer::Proxy { .. },
            }) => {
                let how = if ctx.upstream.from_cache {
                    "cache"
                } else {
                    "proxy"
                };
                (route.as_str(), how)
            }
            Some(r) => (r.route.as_str(), "-"),
            None => ("error", "-"),
        };
        let detail = match (reply.map(|r| &r.answer), error) {
            (Some(Answer::Error { message, .. }), _) => {
                format!(" detail=\"{}\"", message.escape_default())
            }
            (_, Some(e)) => format!(" error=\"{}\"", e.to_string().escape_default()),
            _ => String::new(),
        };
        let upstream = match ctx.upstream.endpoint {
            Some(i) if !ctx.upstream.from_cache => {
                format!(" upstream={}", self.upstream.endpoints.label(i))
            }
            _ => String::new(),
        };
        let req = session.req_header();
        let path = req.raw_path();
        let path = &path[..path.iter().position(|b| *b == b'?').unwrap_or(path.len())];
        let client = peer_ip(session).map_or_else(|| "-".to_string(), |ip| ip.to_string());
        info!(
            target: "archeio::access",
            "{} {} client={} decision={}/{} status={} duration_ms={:.3}{}{}",
            req.method,
            path.escape_ascii(),
            client,
            route,
            target,
            status,
            elapsed.as_secs_f64() * 1e3,
            upstream,
            detail
        );
    }
}

/// Drops hop-by-hop headers and any the upstream's `Connection` header names.
fn strip_hop_by_hop(resp: &mut ResponseHeader) {
    let named: Vec<String> = resp
        .headers
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    for name in HOP_BY_HOP
        .iter()
        .copied()
        .chain(named.iter().map(String::as_str))
    {
        // Framing headers are Pingora's to manage.
        if name != "content-length" && name != "transfer-encoding" {
            resp.remove_header(name);
        }
    }
}

/// Writes a manifest from the cache; HEAD gets the headers only.
async fn write_cached(session: &mut Session, cached: &CachedManifest, head: bool) -> Result<()> {
    let mut resp = ResponseHeader::build(200, Some(cached.headers.len() + 1))?;
    for (name, value) in &cached.headers {
        resp.insert_header(*name, value.as_ref())?;
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

fn peer_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// Writes the answer: redirects and the version check with an empty body, errors with a JSON
/// (registry API) or text body; HEAD gets the headers only.
async fn write_reply(session: &mut Session, reply: &Reply, head: bool) -> Result<()> {
    let status = reply.answer.status().unwrap_or(500);
    let mut resp = ResponseHeader::build(status, Some(4))?;
    let body = match &reply.answer {
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
            if status == 405 {
                resp.insert_header("Allow", "GET, HEAD")?;
            }
            let (content_type, body) = if *oci {
                resp.insert_header("Docker-Distribution-Api-Version", "registry/2.0")?;
                let json = serde_json::json!({ "errors": [{ "code": code, "message": message }] });
                ("application/json; charset=utf-8", format!("{json}\n"))
            } else {
                ("text/plain; charset=utf-8", format!("{message}\n"))
            };
            resp.insert_header("Content-Type", content_type)?;
            Some(Bytes::from(body))
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
