//! The routing decision: request facts in, an answer out. No I/O happens here; the Pingora
//! glue in [`crate::proxy`] executes what this decides. `docs/request-handling.md` describes
//! these rules in the same order.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;

use crate::client_addr::client_addr;
use crate::config::Cloud;
use crate::ranges::RangeTable;

/// Longest request target (path and query) accepted.
pub const MAX_TARGET_LEN: usize = 4096;

/// What the decision needs from the configuration, validated by [`crate::settings`].
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
/// 2. malformed target (over 4 KiB, not starting with `/`, characters outside RFC 3986,
///    bad or dangerous percent-escapes, `.`/`..`/empty segments): `400`;
/// 3. path starting with `/v2`: the registry API ([`decide_api`]);
/// 4. `/`: `307` to the info URL;
/// 5. path starting with `/privacy`: `307` to the privacy URL;
/// 6. anything else: `404`.
pub fn decide(req: &Request<'_>, routes: &Routes, ranges: &RangeTable) -> Decision {
    let api = req.target.starts_with(b"/v2");
    if req.method != "GET" && req.method != "HEAD" {
        return error(
            Route::MethodNotAllowed,
            405,
            "UNSUPPORTED",
            "only GET and HEAD are served",
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
/// 4. blob (`/v2/<name>/blobs/<alg>:<hex>`): client address (`400` if unusable); GCP client:
///    upstream; else the region's mirror (or the default one) if it has the blob, else
///    upstream;
/// 5. cosign tag (`/v2/<name>/manifests/sha256-<64 hex>.sig|.att`) with a signature upstream:
///    `307` there;
/// 6. anything else: upstream.
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
    if let Some(digest) = blob_digest(rest) {
        let client = match client_addr(req.peer, req.forwarded_for, routes.trusted_proxy_hops) {
            Ok(ip) => ip,
            Err(e) => return error(Route::Invalid, 400, "UNSUPPORTED", e.to_string(), true),
        };
        let fallback = upstream(rest, query, req, routes, None);
        let placement = ranges.lookup(client);
        let (base, target) = match placement {
            Some(p) if p.cloud == Cloud::Gcp => {
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
    if let Some(sig) = routes
        .signature_upstream
        .as_deref()
        .filter(|_| is_signature_tag(rest))
    {
        return redirect(
            Route::Signature,
            join(sig, rest, query),
            Target::SignatureUpstream,
        );
    }
    Decision::Reply(Reply {
        route: Route::Upstream,
        answer: upstream(rest, query, req, routes, manifest_ref(rest)),
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

/// `/<name>/manifests/<reference>`: by digest when the reference has a `:`.
fn manifest_ref(rest: &str) -> Option<ManifestRef> {
    let (before, reference) = rest.rsplit_once('/')?;
    let name = before.strip_suffix("/manifests")?;
    if name.is_empty() || reference.is_empty() {
        return None;
    }
    Some(if reference.contains(':') {
        ManifestRef::Digest
    } else {
        ManifestRef::Tag
    })
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
    Decision::Reply(Reply {
        route,
        answer: Answer::Error {
            status,
            code,
            message: message.into(),
            oci,
        },
    })
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

/// The digest of `/<name>/blobs/<alg>:<encoded>`, as the original's
/// `^/v2/.*/blobs/([^/]+:[a-zA-Z0-9=_-]+)$` (here without the `/v2`).
fn blob_digest(rest: &str) -> Option<&str> {
    let (before, digest) = rest.rsplit_once('/')?;
    let name = before.strip_suffix("/blobs")?;
    let (alg, encoded) = digest.rsplit_once(':')?;
    let encoded_ok = !encoded.is_empty()
        && encoded
            .bytes()
            .all(|b| CLASSES[b as usize] & DIGEST_ENCODED != 0);
    (!name.is_empty() && !alg.is_empty() && encoded_ok).then_some(digest)
}

/// `/<name>/manifests/sha256-<64 lowercase hex>.sig` or `.att`.
fn is_signature_tag(rest: &str) -> bool {
    let Some((before, tag)) = rest.rsplit_once('/') else {
        return false;
    };
    let Some(name) = before.strip_suffix("/manifests") else {
        return false;
    };
    let Some(hex) = tag
        .strip_prefix("sha256-")
        .and_then(|t| t.strip_suffix(".sig").or_else(|| t.strip_suffix(".att")))
    else {
        return false;
    };
    !name.is_empty()
        && hex.len() == 64
        && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Splits and checks the raw target. Paths may hold only RFC 3986 path characters;
/// percent-escapes must be well formed and must not hide `/`, `.`, `\` or control bytes;
/// no segment may be `.`, `..` or empty (a trailing `/` counts as empty on API paths other
/// than `/v2/`). The query may hold the path characters, `/` and `?`.
fn parse_target(target: &[u8], api: bool) -> Result<(&str, Option<&str>), &'static str> {
    if target.len() > MAX_TARGET_LEN {
        return Err("request target is longer than 4096 bytes");
    }
    if target.first() != Some(&b'/') {
        return Err("request target must be a path starting with '/'");
    }
    let (path, query) = match target.iter().position(|b| *b == b'?') {
        Some(i) => (&target[..i], Some(&target[i + 1..])),
        None => (target, None),
    };
    check_chars(path, false)?;
    if let Some(q) = query {
        check_chars(q, true)?;
    }
    let mut segments = path[1..].split(|b| *b == b'/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        match seg {
            b"." | b".." => return Err("path has a '.' or '..' segment"),
            b"" if !last => return Err("path has an empty segment ('//')"),
            b"" if api && path != b"/v2/" && path != b"/" => {
                return Err("registry API path ends with '/'")
            }
            _ => {}
        }
    }
    Ok((ascii(path), query.map(ascii)))
}

/// Bytes that [`check_chars`] accepted, which are all ASCII.
fn ascii(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("checked ASCII")
}

/// Byte classes for [`check_chars`] and [`blob_digest`], looked up once per byte.
const PATH: u8 = 1;
const QUERY: u8 = 2;
const DIGEST_ENCODED: u8 = 4;
static CLASSES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        let alnum = c.is_ascii_alphanumeric();
        let path = alnum
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
                    | b'/'
            );
        let mut class = 0;
        if path {
            class |= PATH | QUERY;
        }
        if c == b'?' {
            class |= QUERY;
        }
        if alnum || matches!(c, b'=' | b'_' | b'-') {
            class |= DIGEST_ENCODED;
        }
        t[b] = class;
        b += 1;
    }
    t
};

fn check_chars(part: &[u8], query: bool) -> Result<(), &'static str> {
    let allowed = if query { QUERY } else { PATH };
    let mut i = 0;
    while i < part.len() {
        let b = part[i];
        if CLASSES[b as usize] & allowed != 0 {
            i += 1;
            continue;
        }
        match b {
            b'%' => {
                let hex = |b: u8| (b as char).to_digit(16);
                let decoded = match (
                    part.get(i + 1).and_then(|b| hex(*b)),
                    part.get(i + 2).and_then(|b| hex(*b)),
                ) {
                    (Some(h), Some(l)) => (h * 16 + l) as u8,
                    _ => return Err("malformed percent-escape"),
                };
                if !query
                    && (matches!(decoded, b'/' | b'.' | b'\\') || decoded < 0x20 || decoded == 0x7f)
                {
                    return Err("path has a percent-escaped '/', '.', '\\' or control byte");
                }
                i += 3;
            }
            0..=0x1f | 0x7f => return Err("request target has a control byte"),
            _ => return Err("request target has a character that must be percent-encoded"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
