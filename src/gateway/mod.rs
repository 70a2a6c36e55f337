//! Everything that touches Pingora. The registry service is [`Gateway`]: its `ProxyHttp`
//! impl only hands each phase to the file that does that phase's work:
//! - `request`: client limits, the request's facts, the decision (and the mirror check it
//!   asks for), the manifest cache lookup, the gateway's own answers;
//! - `upstream_request`: pass-through's endpoint choice and the request sent to it;
//! - `upstream_response`: the upstream's answer: the credentials retry, the headers passed
//!   on, the body collected for the manifest cache;
//! - `mirror_proxy`: proxy delivery of a blob from the mirror that holds it;
//! - `failure`: what a client is told when proxying fails, classified first;
//! - `access_log`: the access-log line and the request metrics.
//!
//! Beside it: `responses` writes answers, `headers` filters and rewrites headers,
//! [`peer`] builds upstream peers, [`slow_clients`] guards the listener's connections (and
//! reads PROXY protocol headers there, [`proxy_protocol`]),
//! [`admin`] serves `/metrics` and the probes, [`services`] runs background work.

use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::modules::http::HttpModules;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};
use prometheus::IntCounter;

use crate::auth::ClientAuthority;
use crate::config::ClientTimeouts;
use crate::geo_refresh::LiveGeo;
use crate::metrics;
use crate::mirror::verify::Verifier;
use crate::mirror::Mirrors;
use crate::range_refresh::LiveRanges;
use crate::rate_limit::RateLimiter;
use crate::routing::client_addr::{ClientAddrError, ClientAddressRules};
use crate::routing::{Reply, Routes};
use crate::upstream::auth::UpstreamAuth;
use crate::upstream::blob_access::BlobAccess;
use crate::upstream::manifest_cache::{Capture, ManifestCache};
use crate::upstream::Upstreams;

mod access_log;
pub mod admin;
mod failure;
pub mod generation;
mod headers;
pub mod lifecycle;
mod mirror_proxy;
pub mod peer;
pub mod proxy_protocol;
mod request;
mod responses;
pub mod server_conf;
pub mod services;
pub mod slow_clients;
pub mod tls;
mod upstream_request;
mod upstream_response;

use lifecycle::{InFlight, Lifecycle};
use peer::Peers;
use slow_clients::ConnectionRules;

/// The registry-facing service.
pub struct Gateway {
    /// Who the clients are, how long they may take, how they authenticate.
    clients: Clients,
    routes: Routes,
    places: LivePlaces,
    mirrors: Arc<Mirrors>,
    upstream: UpstreamAccess,
    /// Requests decided per policy rule, by the rule's index.
    rule_matches: Vec<IntCounter>,
    /// What is around the requests.
    ops: Operations,
}

/// Where clients are: the live range table and geo databases, each swapped whole by its
/// refresher.
pub struct LivePlaces {
    /// Cloud ranges, geofeeds, custom ranges.
    pub ranges: LiveRanges,
    /// Geo databases.
    pub geo: LiveGeo,
}

/// What the gateway knows and asks of its clients.
pub struct Clients {
    /// Whom the gateway believes about the client.
    pub address: ClientAddressRules,
    /// Limits on slow and idle clients.
    pub timeouts: ClientTimeouts,
    /// How clients authenticate.
    pub auth: ClientAuthority,
    /// What the listener asks of new connections.
    pub connections: Arc<ConnectionRules>,
}

/// What the gateway does around each request: in-flight counting for the drain and the
/// rate limit.
pub struct Operations {
    /// Readiness and the requests in flight.
    pub lifecycle: Arc<Lifecycle>,
    /// The per-client rate limit, when on.
    pub rate_limiter: Option<RateLimiter>,
}

/// How the gateway reaches the upstream: endpoint choice in both modes, the rest for
/// pass-through.
pub struct UpstreamAccess {
    /// The endpoints and their health.
    pub endpoints: Arc<Upstreams>,
    /// Pingora peers for the endpoints.
    pub peers: Peers,
    /// The gateway's credentials.
    pub auth: UpstreamAuth,
    /// Which repository holds which blob, by the upstream's word.
    pub blobs: BlobAccess,
    /// Manifests already fetched.
    pub manifests: ManifestCache,
    /// Limit on a whole upstream response.
    pub total_timeout: Option<Duration>,
    /// Blobs redirected to the upstream are sized with a cached `HEAD` there, for the
    /// offload accounting.
    pub size_blobs: bool,
}

impl Gateway {
    /// A gateway answering by `routes` over `places`, asking `mirrors` for blobs,
    /// reaching the upstream through `upstream`.
    pub fn new(
        clients: Clients,
        routes: Routes,
        places: LivePlaces,
        mirrors: Arc<Mirrors>,
        upstream: UpstreamAccess,
        ops: Operations,
    ) -> Gateway {
        let rules = routes.policy.rules.iter().map(|r| &*r.name);
        Gateway {
            rule_matches: metrics::policy_rule_counters(rules),
            clients,
            routes,
            places,
            mirrors,
            upstream,
            ops,
        }
    }
}

/// The gateway in effect: one generation of the configuration, replaced whole on a reload.
/// Each request takes the generation current when it starts and keeps it to its end.
/// Clones share the generation.
#[derive(Clone)]
pub struct LiveGateway {
    current: Arc<ArcSwap<Gateway>>,
    /// The current generation's rules for new connections, which the listener reads
    /// before there is a request.
    connections: Arc<ArcSwap<ConnectionRules>>,
}

impl LiveGateway {
    /// Serves `gateway` until [`LiveGateway::replace`].
    pub fn new(gateway: Gateway) -> LiveGateway {
        LiveGateway {
            connections: Arc::new(ArcSwap::new(gateway.clients.connections.clone())),
            current: Arc::new(ArcSwap::from_pointee(gateway)),
        }
    }

    /// New connections and requests are served by `gateway`; those in flight finish on
    /// theirs.
    pub fn replace(&self, gateway: Gateway) {
        self.connections.store(gateway.clients.connections.clone());
        self.current.store(Arc::new(gateway));
    }

    /// The rules for new connections, following [`LiveGateway::replace`].
    pub fn connection_rules(&self) -> Arc<ArcSwap<ConnectionRules>> {
        self.connections.clone()
    }

    /// Reads the current generation's secret files again (private mirrors' credentials,
    /// the htpasswd file) where they changed.
    pub fn reload_secret_files(&self) {
        let gw = self.current.load();
        gw.mirrors.reload_secrets();
        if let ClientAuthority::Local(auth) = &gw.clients.auth {
            auth.reload();
        }
    }
}

/// What one request did, for the access log and the metrics.
pub struct RequestCtx {
    /// The generation of the gateway that serves it.
    gw: Arc<Gateway>,
    started: Instant,
    /// Counts the request as in flight while it lives.
    _in_flight: InFlight,
    /// The socket peer (IPv4-mapped addresses as IPv4), from the request's first phase.
    peer: Option<IpAddr>,
    /// The client routing uses (the peer when it could not be told), once found.
    client: Option<IpAddr>,
    /// Why the client could not be told.
    client_error: Option<ClientAddrError>,
    /// The answer decided, once decided.
    reply: Option<Reply>,
    /// The policy rule that decided it, by index.
    rule: Option<usize>,
    /// Pass-through progress.
    upstream: UpstreamCtx,
    /// The blob answered, for the offload accounting and the digest check.
    blob: BlobCtx,
}

/// What the gateway knows of the blob it answers with.
#[derive(Default)]
struct BlobCtx {
    /// Its size, when the `HEAD` of the mirror sent to (or, with `offload.upstream_head`,
    /// of the upstream) gave it.
    size: Option<u64>,
    /// Bytes of it that arrived to be streamed to the client (proxied answers).
    streamed: u64,
    /// The check of a proxied mirror body against the blob's digest.
    verifier: Option<Verifier>,
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

#[async_trait]
impl ProxyHttp for LiveGateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        let gw = self.current.load_full();
        RequestCtx {
            started: Instant::now(),
            _in_flight: gw.ops.lifecycle.request(),
            gw,
            peer: None,
            client: None,
            client_error: None,
            reply: None,
            rule: None,
            upstream: UpstreamCtx::default(),
            blob: BlobCtx::default(),
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.peer = request::peer_ip(session);
        request::apply_client_limits(session, &ctx.gw.clients.timeouts);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.gw.clone().answer(session, ctx).await
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
        let gw = ctx.gw.clone();
        match mirror_proxy::mirror_fetch(ctx) {
            Some((url, _)) => gw.mirror_peer(url).await,
            None => gw.choose_peer(session, ctx).await,
        }
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        let gw = ctx.gw.clone();
        match mirror_proxy::mirror_fetch(ctx) {
            // The chain was walked already: no other mirror to try.
            Some(_) => e,
            None => gw.connect_failed(ctx, e),
        }
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let gw = ctx.gw.clone();
        let e = e.more_context(format!("Peer: {peer}"));
        match mirror_proxy::mirror_fetch(ctx) {
            Some(_) => upstream_request::retry_if_reused(session, e, client_reused),
            None => gw.proxy_failed(session, ctx, e, client_reused),
        }
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let gw = ctx.gw.clone();
        match mirror_proxy::mirror_fetch(ctx) {
            Some((url, _)) => gw.rewrite_mirror_request(url, upstream_request),
            None => gw.rewrite_request(upstream_request, ctx).await,
        }
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let gw = ctx.gw.clone();
        match mirror_proxy::mirror_fetch(ctx) {
            Some(_) => gw.take_mirror_response(session, resp, ctx),
            None => gw.take_response(session, resp, ctx).await,
        }
    }

    fn upstream_response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        let gw = ctx.gw.clone();
        ctx.blob.streamed += body.as_ref().map_or(0, |b| b.len() as u64);
        if mirror_proxy::mirror_fetch(ctx).is_some() {
            gw.verify_mirror_body(session, body, end_of_stream, ctx)?;
        }
        gw.take_body(body.as_ref(), end_of_stream, ctx)?;
        Ok(None)
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &RequestCtx,
        error: &Error,
        _context: ProxyWarnLogContext,
    ) -> bool {
        failure::is_routine(error)
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, error: &Error) -> bool {
        failure::is_logged_where_found(error)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        ctx.gw.clone().answer_failure(session, e, ctx).await
    }

    async fn logging(&self, session: &mut Session, error: Option<&Error>, ctx: &mut RequestCtx) {
        if ctx.upstream.sent_at.is_some() {
            // The next request on the connection starts without this one's deadline.
            slow_clients::set_request_deadline(session, None);
        }
        ctx.gw.clone().finish(session, error, ctx);
    }
}
