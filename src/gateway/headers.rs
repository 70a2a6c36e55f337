//! Which headers cross between the client and the upstream in pass-through, by allowlist,
//! and how the upstream's `Link` and `Location` are moved into the gateway's path space.

use std::borrow::Cow;

use pingora_http::ResponseHeader;

/// Client request headers the upstream may see: what a pull needs to negotiate formats,
/// ask for ranges and revalidate, and who is asking. Everything else (cookies, forwarding
/// claims, the client's own credentials) stays here.
pub const FORWARDED_REQUEST_HEADERS: [&str; 10] = [
    "accept",
    "accept-encoding",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "range",
    // Only a well-formed one (see `trace_id`); others are removed.
    "traceparent",
    "user-agent",
];

/// The trace id of a W3C `traceparent` value (`00-<32 hex>-<16 hex>-<2 hex>`, lowercase,
/// neither id all zeros), or `None` when it is not one: only a well-formed value is logged
/// or sent on.
pub fn trace_id(traceparent: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(traceparent).ok()?;
    let mut parts = text.split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    // Version 00 has exactly four fields; later versions may append more.
    let ok = hex(version, 2)
        && version != "ff"
        && (version != "00" || parts.next().is_none())
        && hex(trace, 32)
        && nonzero(trace)
        && hex(parent, 16)
        && nonzero(parent)
        && hex(flags, 2);
    ok.then_some(trace)
}

/// Upstream response headers the client may see: the answer's own description and the
/// registry's. Connection-level headers, cookies and anything else stay here; `Link` and
/// `Location` are rewritten into the gateway's path space.
pub const FORWARDED_RESPONSE_HEADERS: [&str; 20] = [
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

/// Keeps the [`FORWARDED_RESPONSE_HEADERS`] of an upstream answer, with `Link` and
/// `Location` rewritten by [`gateway_uri`].
pub fn forward_response_headers(resp: &mut ResponseHeader, upstream_prefix: &str, endpoint: &str) {
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
pub fn names_not_in(headers: &http::HeaderMap, allowed: &[&str]) -> Vec<http::HeaderName> {
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

#[cfg(test)]
mod tests {
    use super::*;

    const EP: &str = "https://reg.example:5000";

    #[test]
    fn only_well_formed_traceparents_give_a_trace_id() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(
            trace_id(format!("00-{id}-00f067aa0ba902b7-01").as_bytes()),
            Some(id)
        );
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "",
        ] {
            assert_eq!(trace_id(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(
            trace_id(format!("01-{id}-00f067aa0ba902b7-01-future").as_bytes()),
            Some(id)
        );
    }

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
}
