//! The pure core: request facts in, an answer out. Nothing here does I/O or knows Pingora;
//! the Pingora glue (`gateway`) executes what [`decide`] returns.
//! `docs/request-handling.md` describes these rules in the same order.
//!
//! - [`target`]: the request line and target checks;
//! - [`grammar`]: the distribution API's endpoints, names, tags and digests;
//! - [`client_addr`](mod@client_addr): the client's address from the peer and `X-Forwarded-For`;
//! - [`ranges`]: which cloud and region an address belongs to.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;

pub mod client_addr;
pub mod grammar;
pub mod ranges;
pub mod target;

use client_addr::client_addr;
use grammar::{parse_endpoint, Endpoint, Reference};
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
    /// Mirror base URL for clients without a regional mirror.
    pub default_mirror: String,
    /// Region to mirror base URL.
    pub mirrors: HashMap<Box<str>, String>,
    /// Blob path under a mirror base, before the digest (`/containers/images/`).
    pub blob_path_prefix: String,
    /// Blob path under a mirror base, after the digest (usually empty).
    pub blob_path_suffix: String,
    /// Trusted `X-Forwarded-For` entries at the right end of the header.
    pub trusted_proxy_hops: usize,
}

/// The facts of one request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The method as sent.
    pub method: &'a str,
    /// The raw request target: path and query, as received.
    pub target: &'a [u8],
    /// The socket peer address.
    pub peer: Option<IpAddr>,
    /// Values of every `X-Forwarded-For` header line, in order.
    pub forwarded_for: &'a [&'a [u8]],
    /// Index in [`Routes::upstreams`] of the endpoint to redirect to: the first healthy one.
    pub upstream: usize,
    /// The request has a body (`Content-Length` other than 0, or `Transfer-Encoding`).
    pub has_body: bool,
}

/// Which rule answered; a metrics label and the access log's `decision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Not GET or HEAD.
    MethodNotAllowed,
    /// Refused before routing: malformed target or client address.
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
}

impl Route {
    /// Every route, in declaration order (`route as usize` indexes it).
    pub const ALL: [Route; 10] = [
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
    /// The mirror of this region.
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
            Answer::Error { status, .. } => Some(*status),
            Answer::Proxy { .. } => None,
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

/// A blob a mirror may hold: the caller checks `mirror_url` and calls [`MirrorCandidate::decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorCandidate {
    /// The blob's URL at the chosen mirror.
    pub mirror_url: String,
    /// The answer when the mirror does not have it: to the upstream.
    pub fallback: Answer,
    /// Which mirror it is.
    pub target: Target,
}

impl MirrorCandidate {
    /// The answer once the mirror check said whether the blob is there.
    pub fn decide(self, present: bool) -> Reply {
        let answer = if present {
            Answer::Redirect {
                location: self.mirror_url,
                target: self.target,
            }
        } else {
            self.fallback
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
    /// Ask whether the mirror has the blob first.
    CheckMirror(MirrorCandidate),
}

/// Decides a request. The rules, in order (see `docs/request-handling.md`):
/// 1. method other than GET or HEAD: `405`;
/// 2. a body: `400`;
/// 3. malformed target (over 4 KiB, not starting with `/`, characters outside RFC 3986,
///    bad or dangerous percent-escapes, `.`/`..`/empty segments): `400`;
/// 4. path starting with `/v2`: the registry API (`decide_api`);
/// 5. `/`: `307` to the info URL;
/// 6. path starting with `/privacy`: `307` to the privacy URL;
/// 7. anything else: `404`.
pub fn decide(req: &Request<'_>, routes: &Routes, ranges: &RangeTable) -> Decision {
    let api = req.target.starts_with(b"/v2");
    if !served_method(req.method.as_bytes()) {
        return Decision::Reply(method_not_allowed(api));
    }
    if req.has_body {
        // Nothing here reads a body; forwarding one would let a client hold an upstream
        // connection a slow chunk at a time.
        return error(
            Route::Invalid,
            400,
            "UNSUPPORTED",
            "GET and HEAD requests must not carry a body",
            api,
        );
    }
    let (path, query) = match parse_target(req.target, api) {
        Ok(parts) => parts,
        Err(why) => return error(Route::Invalid, 400, "NAME_INVALID", why, api),
    };
    if api {
        return decide_api(path, query, req, routes, ranges);
    }
    if path == "/" {
        return redirect(Route::Info, routes.info_url.clone(), Target::Page);
    }
    if path.starts_with("/privacy") {
        return redirect(Route::Privacy, routes.privacy_url.clone(), Target::Page);
    }
    error(Route::NotFound, 404, "NOT_FOUND", "not found", false)
}

/// The registry API, in order:
/// 1. `/v2` or `/v2/`: `200` with the API version header;
/// 2. `/v2` followed by anything but `/` (`/v2foo`): `404` (the original sent these upstream);
/// 3. `/v2/_catalog`: `404`;
/// 4. not a pull endpoint of the distribution grammar ([`grammar::parse_endpoint`]): `404`
///    with `NAME_UNKNOWN`, `NAME_INVALID`, `TAG_INVALID` or `DIGEST_INVALID`;
/// 5. a paged request (tag list or referrers, with a query) whose name starts with the
///    upstream path prefix: the prefix is taken off (the client followed a `Link` in the
///    upstream's path space);
/// 6. blob: client address (`400` if unusable); GCP client: upstream; else the region's
///    mirror (or the default one) if it has the blob, else upstream;
/// 7. cosign tag (`/v2/<name>/manifests/sha256-<64 hex>.sig|.att`) with a signature upstream:
///    `307` there;
/// 8. anything else (manifests, tag lists, referrers): upstream.
///
/// "Upstream" is a `307` to the first healthy endpoint in redirect mode, and proxying there
/// in pass-through mode. Both keep the query string.
fn decide_api(
    path: &str,
    query: Option<&str>,
    req: &Request<'_>,
    routes: &Routes,
    ranges: &RangeTable,
) -> Decision {
    let rest = &path[3..];
    if rest.is_empty() || rest == "/" {
        return Decision::Reply(Reply {
            route: Route::ApiVersion,
            answer: Answer::ApiVersion,
        });
    }
    if !rest.starts_with('/') {
        return error(
            Route::NotFound,
            404,
            "UNSUPPORTED",
            "not a registry API path",
            true,
        );
    }
    if rest == "/_catalog" {
        return error(
            Route::Catalog,
            404,
            "UNSUPPORTED",
            "repository listing is not offered",
            true,
        );
    }
    let endpoint = match parse_endpoint(rest) {
        Ok(endpoint) => endpoint,
        Err(why) => return error(Route::NotFound, 404, why.code(), why.message(), true),
    };
    let prefix = routes.upstream_name_prefix.as_str();
    let rest = match endpoint {
        Endpoint::TagList { name } | Endpoint::Referrers { name, .. }
            if query.is_some() && !prefix.is_empty() && name.starts_with(prefix) =>
        {
            // `rest` is `/<prefix><name>...` and `prefix` ends with `/`.
            &rest[prefix.len()..]
        }
        _ => rest,
    };
    if let Endpoint::Blob { digest, .. } = endpoint {
        let client = match client_addr(req.peer, req.forwarded_for, routes.trusted_proxy_hops) {
            Ok(ip) => ip,
            Err(e) => return error(Route::Invalid, 400, "UNSUPPORTED", e.to_string(), true),
        };
        let fallback = upstream(rest, query, req, routes, None);
        let placement = ranges.lookup(client);
        let (base, target) = match placement {
            Some(p) if &*p.provider == "gcp" => {
                return Decision::Reply(Reply {
                    route: Route::Blob,
                    answer: fallback,
                });
            }
            Some(p) => match routes.mirrors.get(&p.region) {
                Some(base) => (base, Target::Mirror(p.region.clone())),
                None => (&routes.default_mirror, Target::DefaultMirror),
            },
            None => (&routes.default_mirror, Target::DefaultMirror),
        };
        let mut mirror_url = String::with_capacity(
            base.len()
                + routes.blob_path_prefix.len()
                + digest.len()
                + routes.blob_path_suffix.len(),
        );
        mirror_url.push_str(base);
        mirror_url.push_str(&routes.blob_path_prefix);
        mirror_url.push_str(digest);
        mirror_url.push_str(&routes.blob_path_suffix);
        return Decision::CheckMirror(MirrorCandidate {
            mirror_url,
            fallback,
            target,
        });
    }
    let manifest = match endpoint {
        Endpoint::Manifest {
            reference: Reference::Tag(tag),
            ..
        } => {
            if let Some(sig) = routes
                .signature_upstream
                .as_deref()
                .filter(|_| is_signature_tag(tag))
            {
                return redirect(
                    Route::Signature,
                    join(sig, rest, query),
                    Target::SignatureUpstream,
                );
            }
            Some(ManifestRef::Tag)
        }
        Endpoint::Manifest {
            reference: Reference::Digest(_),
            ..
        } => Some(ManifestRef::Digest),
        _ => None,
    };
    Decision::Reply(Reply {
        route: Route::Upstream,
        answer: upstream(rest, query, req, routes, manifest),
    })
}

/// Sends `rest` to the upstream: a redirect to the chosen endpoint, or a proxied request.
fn upstream(
    rest: &str,
    query: Option<&str>,
    req: &Request<'_>,
    routes: &Routes,
    manifest: Option<ManifestRef>,
) -> Answer {
    if routes.passthrough {
        return Answer::Proxy {
            path: join(&routes.upstream_prefix, rest, query),
            manifest,
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
mod tests;
