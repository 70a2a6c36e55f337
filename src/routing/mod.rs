//! The pure core: request facts in, an answer out. Nothing here does I/O or knows Pingora;
//! the Pingora glue (`gateway`) executes what [`decide`] returns.
//! `docs/request-handling.md` describes these rules in the same order.
//!
//! - [`target`]: the request line and target checks;
//! - [`grammar`]: the distribution API's endpoints, names, tags and digests;
//! - [`client_addr`](mod@client_addr): the client's address from the connection and the
//!   headers of the proxies the operator trusts (the glue finds it once per request);
//! - [`ranges`]: which provider and region an address belongs to;
//! - [`geo`]: its country, continent and network, from MaxMind DB files ([`Places`] holds
//!   both: the one placement the rules read);
//! - [`policy`]: the ordered rules and the mirrors they name;
//! - [`explain`]: the decision for a sample request, in words, for `archeio -t --explain`.

use std::borrow::Cow;
use std::net::IpAddr;

pub mod client_addr;
pub mod explain;
pub mod geo;
pub mod grammar;
pub mod policy;
pub mod ranges;
pub mod target;

use client_addr::ClientAddrError;
use geo::GeoTable;
use globset::GlobSet;
use grammar::{parse_endpoint, Endpoint, Reference};
use policy::{first_match, Action, Client, Delivery, Kind, Link, Policy};
use ranges::RangeTable;
use target::{parse_target, served_method};

pub use target::{refuse_request_line, MAX_TARGET_LEN};

/// What the decision needs from the configuration, validated by `config`.
#[derive(Debug, Clone)]
pub struct Routes {
    /// Location for `/`.
    pub info_url: String,
    /// Location for `/privacy...`.
    pub privacy_url: String,
    /// Per upstream endpoint, in order: endpoint, `/v2` and the path prefix, e.g.
    /// `https://host/v2/prefix`.
    pub upstreams: Vec<String>,
    /// `/v2` and the path prefix: the upstream's request path in pass-through mode.
    pub upstream_prefix: String,
    /// The path prefix as the start of a repository name (`k8s-artifacts-prod/images/`);
    /// empty without a prefix. A paged request whose name starts with it already carries it
    /// (see `decide_api`).
    pub upstream_name_prefix: String,
    /// Pass-through mode: upstream-bound requests are proxied instead of redirected.
    pub passthrough: bool,
    /// The same for the signature upstream, when configured.
    pub signature_upstream: Option<String>,
    /// A blob goes to a mirror only once the upstream says the named repository holds it:
    /// mirrors hold blobs by digest alone, so without this a client could read a hidden
    /// repository's blob under a name it may read. Set when the policy restricts
    /// repositories ([`Policy::restricts_repositories`]).
    pub confirm_blob_repository: bool,
    /// Whether and how clients authenticate.
    pub auth: AuthMode,
    /// `<client_auth.public_url>/token`: the realm challenges name (empty when clients are
    /// not asked).
    pub token_realm: String,
    /// The policy rules and the mirrors they send blobs to.
    pub policy: Policy,
}

/// How clients authenticate, as far as the decision is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Nobody is asked: archeio's behaviour.
    Anonymous,
    /// Each client's credentials go to the upstream: everything bound there is proxied with
    /// them (never redirected, since clients drop credentials on a redirect to another
    /// host; never cached across clients), `/v2/` is the upstream's answer, and `/token`
    /// relays token requests.
    Relay,
    /// The gateway checks credentials itself ([`Request::grants`]) and reads the upstream
    /// with its own: everything upstream-bound is proxied, `/token` issues its tokens.
    Local,
}

/// Where clients are: the cloud ranges (provider and region) and the geo databases
/// (country, continent, network). A client in a cloud range keeps its provider and region;
/// the geo facts are extra facts about every client, looked up only for a rule that asks.
#[derive(Debug, Clone, Copy)]
pub struct Places<'t> {
    /// The cloud ranges, geofeeds and custom ranges.
    pub ranges: &'t RangeTable,
    /// The geo databases (possibly none).
    pub geo: &'t GeoTable,
}

impl<'t> Places<'t> {
    /// The ranges alone, without geo databases.
    pub fn ranges_only(ranges: &'t RangeTable) -> Places<'t> {
        static NONE: GeoTable = GeoTable::EMPTY;
        Places { ranges, geo: &NONE }
    }
}

/// The facts of one request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The method as sent.
    pub method: &'a str,
    /// The raw request target: path and query, as received.
    pub target: &'a [u8],
    /// The client, as [`client_addr::find_client`] found it.
    pub client: Result<IpAddr, ClientAddrError>,
    /// Index in [`Routes::upstreams`] of the endpoint to redirect to: the first healthy one.
    pub upstream: usize,
    /// The request has a body (`Content-Length` other than 0, or `Transfer-Encoding`).
    pub has_body: bool,
    /// What the client may read, when the gateway checks credentials itself.
    pub grants: Grants<'a>,
}

/// What a client may read, as the gateway's own check of its credentials found
/// (`client_auth: local`).
#[derive(Debug, Clone, Copy)]
pub enum Grants<'a> {
    /// Not the gateway's question (`anonymous`, `relay`).
    Unchecked,
    /// No credentials, or ones that did not verify.
    Nobody,
    /// Every repository.
    All,
    /// The repositories these globs match.
    Globs(&'a GlobSet),
    /// Exactly these repositories (a token's).
    Names(&'a [String]),
}

impl Grants<'_> {
    /// Whether `repository` (the client's name for it) may be read.
    pub fn allows(&self, repository: &str) -> bool {
        match self {
            Grants::Unchecked | Grants::All => true,
            Grants::Nobody => false,
            Grants::Globs(globs) => globs.is_match(repository),
            Grants::Names(names) => names.iter().any(|n| n == repository),
        }
    }

    /// Whether the client was let in at all (`/v2/`).
    pub fn allows_any(&self) -> bool {
        !matches!(self, Grants::Nobody)
    }
}

/// Which rule answered; a metrics label and the access log's `decision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Not GET or HEAD.
    MethodNotAllowed,
    /// Refused before routing: a malformed target.
    Invalid,
    /// `/`: the info URL.
    Info,
    /// `/privacy...`: the privacy URL.
    Privacy,
    /// `/v2` or `/v2/`: the API version check.
    ApiVersion,
    /// `/v2/_catalog`: not offered.
    Catalog,
    /// A blob by digest.
    Blob,
    /// A cosign signature or attestation tag.
    Signature,
    /// Any other registry API path: manifests, tags, referrers.
    Upstream,
    /// Anything else.
    NotFound,
    /// A policy rule said `deny`.
    Denied,
    /// A repository outside the known repositories.
    UnknownRepository,
    /// Over the per-client rate limit.
    RateLimited,
    /// The client could not be told: a trusted proxy's header entry is unusable.
    ClientAddress,
    /// `/token`: a token request, relayed to the upstream's token service or answered.
    Token,
    /// `401`: credentials missing, wrong, or not for this repository (`client_auth: local`).
    Unauthorized,
}

impl Route {
    /// Every route, in declaration order (`route as usize` indexes it).
    pub const ALL: [Route; 16] = [
        Route::MethodNotAllowed,
        Route::Invalid,
        Route::Info,
        Route::Privacy,
        Route::ApiVersion,
        Route::Catalog,
        Route::Blob,
        Route::Signature,
        Route::Upstream,
        Route::NotFound,
        Route::Denied,
        Route::UnknownRepository,
        Route::RateLimited,
        Route::ClientAddress,
        Route::Token,
        Route::Unauthorized,
    ];

    /// Stable lowercase name for labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::MethodNotAllowed => "method_not_allowed",
            Route::Invalid => "invalid",
            Route::Info => "info",
            Route::Privacy => "privacy",
            Route::ApiVersion => "api_version",
            Route::Catalog => "catalog",
            Route::Blob => "blob",
            Route::Signature => "signature",
            Route::Upstream => "upstream",
            Route::NotFound => "not_found",
            Route::Denied => "denied",
            Route::UnknownRepository => "unknown_repository",
            Route::RateLimited => "rate_limited",
            Route::ClientAddress => "client_address",
            Route::Token => "token",
            Route::Unauthorized => "unauthorized",
        }
    }
}

/// Where a redirect sends the client; a metrics label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The upstream registry.
    Upstream,
    /// The signature upstream.
    SignatureUpstream,
    /// The mirror of this region, or the named mirror.
    Mirror(Box<str>),
    /// The default mirror.
    DefaultMirror,
    /// The info or privacy page.
    Page,
}

impl Target {
    /// Label value for the kind of target.
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Upstream => "upstream",
            Target::SignatureUpstream => "signature_upstream",
            Target::Mirror(_) => "mirror",
            Target::DefaultMirror => "default_mirror",
            Target::Page => "page",
        }
    }

    /// The mirror's name: its region or `mirrors.named` name, `default` for the default
    /// mirror; `None` for anything but a mirror.
    pub fn mirror_name(&self) -> Option<&str> {
        match self {
            Target::Mirror(name) => Some(name),
            Target::DefaultMirror => Some("default"),
            _ => None,
        }
    }
}

/// A complete answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `307` to `location`.
    Redirect { location: String, target: Target },
    /// `200` with `Docker-Distribution-Api-Version: registry/2.0`.
    ApiVersion,
    /// An error; `oci` asks for an OCI-style JSON body (registry API paths).
    Error {
        status: u16,
        code: &'static str,
        message: Cow<'static, str>,
        oci: bool,
    },
    /// Pass-through: fetch `path` (the upstream's request target, query included) from the
    /// upstream and stream the answer back. `manifest` says whether and how long the answer
    /// may be cached.
    Proxy {
        path: String,
        manifest: Option<ManifestRef>,
    },
    /// `429`: the client is over its rate limit; it may try again after `retry_after`
    /// seconds. `oci` as for errors.
    TooManyRequests { retry_after: u64, oci: bool },
    /// A token request (`/token` with this query, as received): relayed to the upstream's
    /// token service with the scopes moved into its path space, or answered by the gateway.
    Token { query: Option<String> },
    /// `401` `UNAUTHORIZED` with this `WWW-Authenticate` challenge: the gateway's token
    /// realm and, for a repository, the scope `repository:<name>:pull`.
    Unauthorized { challenge: String },
    /// Fetch the blob from `url` at mirror `mirror` (an index in [`Policy::mirrors`]) and
    /// stream it back.
    ProxyMirror {
        mirror: usize,
        url: String,
        target: Target,
    },
}

/// How a manifest was asked for, which decides how long its answer stays valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestRef {
    /// By digest: the answer never changes.
    Digest,
    /// By tag: the answer changes when the tag moves.
    Tag,
}

impl Answer {
    /// The HTTP status code, when the gateway decides it (not for proxied requests).
    pub fn status(&self) -> Option<u16> {
        match self {
            Answer::Redirect { .. } => Some(307),
            Answer::ApiVersion => Some(200),
            Answer::Unauthorized { .. } => Some(401),
            Answer::Error { status, .. } => Some(*status),
            Answer::TooManyRequests { .. } => Some(429),
            Answer::Proxy { .. } | Answer::ProxyMirror { .. } | Answer::Token { .. } => None,
        }
    }
}

/// A decided answer and the rule that gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The rule.
    pub route: Route,
    /// The answer.
    pub answer: Answer,
}

/// A blob a mirror may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorCandidate {
    /// Index of the mirror in [`Policy::mirrors`].
    pub mirror: usize,
    /// The blob's URL at a public mirror; its object key at a signed one.
    pub location: String,
    /// Which mirror it is.
    pub target: Target,
}

/// Mirrors to ask in order whether they hold a blob: the caller checks the candidates and
/// calls [`MirrorChain::decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorChain {
    /// The mirrors, in the rule's order.
    pub candidates: Vec<MirrorCandidate>,
    /// The answer when none holds the blob: the upstream.
    pub fallback: Answer,
    /// How a mirror's blob reaches the client.
    pub delivery: Delivery,
    /// Before any mirror: the upstream request path of the blob in the named repository
    /// (`/v2/<prefix>/<name>/blobs/<digest>`), whose `HEAD` must say the repository holds
    /// it; the fallback answers otherwise. `None`: the digest alone decides.
    pub confirm: Option<String>,
}

impl MirrorChain {
    /// The answer once the checks are done: `found` is the index of the first candidate that
    /// holds the blob and the URL to send the client to (or fetch), signed when the mirror
    /// is private.
    pub fn decide(self, found: Option<(usize, String)>) -> Reply {
        let answer = match found {
            Some((i, url)) => {
                let c = &self.candidates[i];
                match self.delivery {
                    Delivery::Redirect => Answer::Redirect {
                        location: url,
                        target: c.target.clone(),
                    },
                    Delivery::Proxy => Answer::ProxyMirror {
                        mirror: c.mirror,
                        url,
                        target: c.target.clone(),
                    },
                }
            }
            None => self.fallback,
        };
        Reply {
            route: Route::Blob,
            answer,
        }
    }
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Answer at once.
    Reply(Reply),
    /// Ask the mirrors whether they have the blob first.
    CheckMirrors(MirrorChain),
}

/// The answer to a client over its rate limit, which may send again in `wait`.
pub fn rate_limited(target: &[u8], wait: std::time::Duration) -> Reply {
    Reply {
        route: Route::RateLimited,
        answer: Answer::TooManyRequests {
            retry_after: wait.as_secs_f64().ceil().max(1.0) as u64,
            oci: target.starts_with(b"/v2"),
        },
    }
}

/// Decides a request. The rules, in order (see `docs/request-handling.md`):
/// 1. method other than GET or HEAD: `405`;
/// 2. a body: `400`;
/// 3. malformed target (over 4 KiB, not starting with `/`, characters outside RFC 3986,
///    bad or dangerous percent-escapes, `.`/`..`/empty segments): `400`;
/// 4. path starting with `/v2`: the registry API (`decide_api`);
/// 5. `/`: `307` to the info URL;
/// 6. path starting with `/privacy`: `307` to the privacy URL;
/// 7. `/token` when clients authenticate (`client_auth` not anonymous): the token request;
/// 8. anything else: `404`.
pub fn decide(req: &Request<'_>, routes: &Routes, places: Places<'_>) -> Decision {
    decide_by_rule(req, routes, places).0
}

/// [`decide`], with the index in [`Policy::rules`] of the rule that decided, if one did.
pub fn decide_by_rule(
    req: &Request<'_>,
    routes: &Routes,
    places: Places<'_>,
) -> (Decision, Option<usize>) {
    let api = req.target.starts_with(b"/v2");
    if !served_method(req.method.as_bytes()) {
        return (Decision::Reply(method_not_allowed(api)), None);
    }
    if req.has_body {
        // Nothing here reads a body; forwarding one would let a client hold an upstream
        // connection a slow chunk at a time.
        let e = error(
            Route::Invalid,
            400,
            "UNSUPPORTED",
            "GET and HEAD requests must not carry a body",
            api,
        );
        return (e, None);
    }
    let (path, query) = match parse_target(req.target, api) {
        Ok(parts) => parts,
        Err(why) => return (error(Route::Invalid, 400, "NAME_INVALID", why, api), None),
    };
    if api {
        return decide_api(path, query, req, routes, places);
    }
    if path == "/" {
        return (
            redirect(Route::Info, routes.info_url.clone(), Target::Page),
            None,
        );
    }
    if path.starts_with("/privacy") {
        return (
            redirect(Route::Privacy, routes.privacy_url.clone(), Target::Page),
            None,
        );
    }
    if path == "/token" && routes.auth != AuthMode::Anonymous {
        let reply = Reply {
            route: Route::Token,
            answer: Answer::Token {
                query: query.map(str::to_string),
            },
        };
        return (Decision::Reply(reply), None);
    }
    (
        error(Route::NotFound, 404, "NOT_FOUND", "not found", false),
        None,
    )
}

/// The registry API, in order:
/// 1. `/v2` or `/v2/`: `200` with the API version header (`client_auth: relay`: the
///    upstream's answer to `/v2/`, proxied with the client's credentials; `local`: `401`
///    without verified credentials);
/// 2. `/v2` followed by anything but `/` (`/v2foo`): `404` (the original sent these upstream);
/// 3. `/v2/_catalog`: `404`;
/// 4. not a pull endpoint of the distribution grammar ([`grammar::parse_endpoint`]): `404`
///    with `NAME_UNKNOWN`, `NAME_INVALID`, `TAG_INVALID` or `DIGEST_INVALID`;
/// 5. a paged request (tag list or referrers, with a query) whose name starts with the
///    upstream path prefix: the prefix is taken off (the client followed a `Link` in the
///    upstream's path space);
/// 6. `client_auth: local`: a repository the client's credentials do not grant: `401`
///    with the repository's scope;
/// 7. a repository outside the known repositories (when listed): `404` `NAME_UNKNOWN`;
/// 8. blob: the client address (`400` if unusable);
/// 9. the first policy rule that matches the kind, repository and client (a rule that looks
///    at the client needs its address: `400` if unusable; the client's placement is its
///    cloud range, then its country, continent and network from the geo databases, looked
///    up once by the first rule that asks) decides:
///    - `deny`: `404` `NAME_UNKNOWN`;
///    - `mirrors`: the first mirror of the chain that holds the blob, else the upstream;
///      when the policy restricts repositories or clients authenticate, only after the
///      upstream says the named repository holds the blob (else the upstream); with
///      `delivery: proxy`, a digest the gateway cannot check (not `sha256`/`sha512`) goes
///      to the upstream;
///    - `upstream`: a cosign tag (`/v2/<name>/manifests/sha256-<64 hex>.sig|.att`) with a
///      signature upstream is redirected there; anything else goes upstream;
/// 10. no rule matches: upstream.
///
/// "Upstream" is a `307` to the first healthy endpoint in redirect mode, and proxying there
/// in pass-through mode, unless the rule names a delivery; with `client_auth` `relay` or
/// `local` always proxying (`relay`: never cached). Both keep the query string.
fn decide_api(
    path: &str,
    query: Option<&str>,
    req: &Request<'_>,
    routes: &Routes,
    places: Places<'_>,
) -> (Decision, Option<usize>) {
    let rest = &path[3..];
    if rest.is_empty() || rest == "/" {
        let (route, answer) = match routes.auth {
            AuthMode::Local if !req.grants.allows_any() => (
                Route::Unauthorized,
                Answer::Unauthorized {
                    challenge: challenge(routes, None),
                },
            ),
            AuthMode::Anonymous | AuthMode::Local => (Route::ApiVersion, Answer::ApiVersion),
            AuthMode::Relay => (
                Route::ApiVersion,
                Answer::Proxy {
                    path: "/v2/".into(),
                    manifest: None,
                },
            ),
        };
        let reply = Reply { route, answer };
        return (Decision::Reply(reply), None);
    }
    if !rest.starts_with('/') {
        let e = error(
            Route::NotFound,
            404,
            "UNSUPPORTED",
            "not a registry API path",
            true,
        );
        return (e, None);
    }
    if rest == "/_catalog" {
        let e = error(
            Route::Catalog,
            404,
            "UNSUPPORTED",
            "repository listing is not offered",
            true,
        );
        return (e, None);
    }
    let endpoint = match parse_endpoint(rest) {
        Ok(endpoint) => endpoint,
        Err(why) => {
            return (
                error(Route::NotFound, 404, why.code(), why.message(), true),
                None,
            )
        }
    };
    let prefix = routes.upstream_name_prefix.as_str();
    let (rest, repository) = match endpoint {
        Endpoint::TagList { name } | Endpoint::Referrers { name, .. }
            if query.is_some() && !prefix.is_empty() && name.starts_with(prefix) =>
        {
            // `rest` is `/<prefix><name>...` and `prefix` ends with `/`.
            (&rest[prefix.len()..], &name[prefix.len()..])
        }
        _ => (rest, endpoint.name()),
    };
    if !req.grants.allows(repository) {
        let reply = Reply {
            route: Route::Unauthorized,
            answer: Answer::Unauthorized {
                challenge: challenge(routes, Some(repository)),
            },
        };
        return (Decision::Reply(reply), None);
    }
    let policy = &routes.policy;
    if !policy.knows(repository) {
        return (unknown_repository(Route::UnknownRepository), None);
    }
    let (kind, manifest) = match endpoint {
        Endpoint::Blob { .. } => (Kind::Blob, None),
        Endpoint::Manifest {
            reference: Reference::Tag(tag),
            ..
        } if is_signature_tag(tag) => (Kind::Signature, Some(ManifestRef::Tag)),
        Endpoint::Manifest {
            reference: Reference::Tag(_),
            ..
        } => (Kind::Manifest, Some(ManifestRef::Tag)),
        Endpoint::Manifest {
            reference: Reference::Digest(_),
            ..
        } => (Kind::Manifest, Some(ManifestRef::Digest)),
        Endpoint::TagList { .. } => (Kind::TagList, None),
        Endpoint::Referrers { .. } => (Kind::Referrers, None),
    };
    let find_client = || {
        let address = req.client.map_err(|e| e.to_string());
        let placement = address
            .as_ref()
            .ok()
            .and_then(|ip| places.ranges.lookup(*ip));
        Client {
            address,
            placement,
            geo: None,
        }
    };
    let geo_of = |ip| places.geo.lookup(ip);
    let mut client = None;
    if kind == Kind::Blob {
        let c = client.insert(find_client());
        if let Err(e) = &c.address {
            return (
                error(Route::ClientAddress, 400, "UNSUPPORTED", e.clone(), true),
                None,
            );
        }
    }
    let matched = match first_match(
        &policy.rules,
        kind,
        repository,
        &mut client,
        find_client,
        geo_of,
    ) {
        Ok(matched) => matched,
        Err(e) => {
            return (
                error(Route::ClientAddress, 400, "UNSUPPORTED", e, true),
                None,
            )
        }
    };
    let rule = matched.map(|i| &policy.rules[i]);
    let delivery = rule.and_then(|r| r.delivery);
    let route = if kind == Kind::Blob {
        Route::Blob
    } else {
        Route::Upstream
    };
    let decision = match rule.map(|r| &r.action) {
        Some(Action::Deny) => unknown_repository(Route::Denied),
        Some(Action::Mirrors(chain))
            if kind == Kind::Blob
                && (delivery != Some(Delivery::Proxy) || checkable(&endpoint)) =>
        {
            let Endpoint::Blob { digest, .. } = endpoint else {
                unreachable!("the kind is Blob")
            };
            let region = client
                .as_ref()
                .and_then(|c| c.placement)
                .map(|p| &*p.region);
            let candidates = chain
                .iter()
                .map(|link| {
                    let (mirror, target) = match *link {
                        Link::Mirror(i) => (i, Target::Mirror(policy.mirrors[i].name.clone())),
                        Link::Regional => {
                            let i = policy.regional(region);
                            let target = if i == policy.default_mirror {
                                Target::DefaultMirror
                            } else {
                                Target::Mirror(policy.mirrors[i].name.clone())
                            };
                            (i, target)
                        }
                    };
                    MirrorCandidate {
                        mirror,
                        location: policy.mirrors[mirror].location(digest),
                        target,
                    }
                })
                .collect();
            Decision::CheckMirrors(MirrorChain {
                candidates,
                fallback: upstream(rest, query, req, routes, None, delivery),
                delivery: delivery.unwrap_or(Delivery::Redirect),
                confirm: routes
                    .confirm_blob_repository
                    .then(|| join(&routes.upstream_prefix, rest, None)),
            })
        }
        _ => {
            if let Some(sig) = routes
                .signature_upstream
                .as_deref()
                .filter(|_| kind == Kind::Signature)
            {
                redirect(
                    Route::Signature,
                    join(sig, rest, query),
                    Target::SignatureUpstream,
                )
            } else {
                Decision::Reply(Reply {
                    route,
                    answer: upstream(rest, query, req, routes, manifest, delivery),
                })
            }
        }
    };
    (decision, matched)
}

/// The challenge of a `401`: the gateway's token realm, and the scope a token for
/// `repository` needs.
fn challenge(routes: &Routes, repository: Option<&str>) -> String {
    let mut c = format!(
        "Bearer realm=\"{}\",service=\"{TOKEN_SERVICE}\"",
        routes.token_realm
    );
    if let Some(name) = repository {
        c.push_str(&format!(",scope=\"repository:{name}:pull\""));
    }
    c
}

/// The `service` of the gateway's own tokens.
pub const TOKEN_SERVICE: &str = "archeio";

/// `404` for a repository the gateway does not serve.
fn unknown_repository(route: Route) -> Decision {
    error(
        route,
        404,
        "NAME_UNKNOWN",
        "repository name not known to registry",
        true,
    )
}

/// Sends `rest` to the upstream: a redirect to the chosen endpoint, or a proxied request,
/// as `delivery` says, else as the mode says. Relayed credentials are always proxied, and
/// an answer to one client's credentials is never cached for another.
fn upstream(
    rest: &str,
    query: Option<&str>,
    req: &Request<'_>,
    routes: &Routes,
    manifest: Option<ManifestRef>,
    delivery: Option<Delivery>,
) -> Answer {
    let relay = routes.auth == AuthMode::Relay;
    let proxy = match delivery {
        _ if routes.auth != AuthMode::Anonymous => true,
        Some(d) => d == Delivery::Proxy,
        None => routes.passthrough,
    };
    if proxy {
        return Answer::Proxy {
            path: join(&routes.upstream_prefix, rest, query),
            manifest: manifest.filter(|_| !relay),
        };
    }
    let base = routes
        .upstreams
        .get(req.upstream)
        .unwrap_or(&routes.upstreams[0]);
    Answer::Redirect {
        location: join(base, rest, query),
        target: Target::Upstream,
    }
}

fn redirect(route: Route, location: String, target: Target) -> Decision {
    Decision::Reply(Reply {
        route,
        answer: Answer::Redirect { location, target },
    })
}

fn error(
    route: Route,
    status: u16,
    code: &'static str,
    message: impl Into<Cow<'static, str>>,
    oci: bool,
) -> Decision {
    Decision::Reply(error_reply(route, status, code, message, oci))
}

pub(crate) fn error_reply(
    route: Route,
    status: u16,
    code: &'static str,
    message: impl Into<Cow<'static, str>>,
    oci: bool,
) -> Reply {
    Reply {
        route,
        answer: Answer::Error {
            status,
            code,
            message: message.into(),
            oci,
        },
    }
}

/// The answer to any other method.
pub(crate) fn method_not_allowed(api: bool) -> Reply {
    error_reply(
        Route::MethodNotAllowed,
        405,
        "UNSUPPORTED",
        "only GET and HEAD are served",
        api,
    )
}

/// `base` + `rest` (+ `?query`). `rest` was validated: it starts with `/` and has no dot or
/// empty segments, so it cannot climb out of the upstream prefix.
fn join(base: &str, rest: &str, query: Option<&str>) -> String {
    let mut url = String::with_capacity(base.len() + rest.len() + query.map_or(0, |q| q.len() + 1));
    url.push_str(base);
    url.push_str(rest);
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

/// Whether the gateway can check a proxied blob's bytes against its digest: `sha256` and
/// `sha512`. A mirror's copy of any other is not proxied (it goes to the upstream).
fn checkable(endpoint: &Endpoint<'_>) -> bool {
    matches!(endpoint, Endpoint::Blob { digest, .. }
        if digest.starts_with("sha256:") || digest.starts_with("sha512:"))
}

/// A cosign tag: `sha256-<64 lowercase hex>.sig` or `.att`.
fn is_signature_tag(tag: &str) -> bool {
    let Some(hex) = tag
        .strip_prefix("sha256-")
        .and_then(|t| t.strip_suffix(".sig").or_else(|| t.strip_suffix(".att")))
    else {
        return false;
    };
    grammar::is_lower_hex(hex, 64)
}

#[cfg(test)]
mod policy_tests;
#[cfg(test)]
mod tests;
