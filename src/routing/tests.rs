use std::sync::OnceLock;

use super::*;
use crate::config::file::{ArcheioConfig, Mode};
use client_addr::{find_client, ClientAddressRules, Connection};
use policy::Delivery;
use ranges::{CustomRange, RangeSources};

const UP: &str = "https://us-central1-docker.pkg.dev/v2/k8s-artifacts-prod/images";
const SHA: &str = "sha256:4a1c4b21597c1b4415bdbecb28a3296c6b5e23ca4f9feeb599860a1dac6a0108";
const HEX: &str = "4a1c4b21597c1b4415bdbecb28a3296c6b5e23ca4f9feeb599860a1dac6a0108";

fn routes(signature: bool) -> Routes {
    let mut cfg = ArcheioConfig::default();
    if signature {
        cfg.signature_upstream = Some("https://sig.example".into());
    }
    cfg.check("test", |_| None).unwrap().routes
}

/// A table of operator rules `(cidr, provider, region)`, over the embedded snapshots or
/// alone.
pub(super) fn custom_table(rules: &[(&str, &str, &str)], embedded: bool) -> RangeTable {
    let custom = rules
        .iter()
        .map(|(cidr, provider, region)| CustomRange {
            cidr: cidr.parse().unwrap(),
            provider: provider.to_string(),
            region: region.to_string(),
        })
        .collect();
    let documents = if embedded {
        RangeSources::default().documents
    } else {
        Vec::new()
    };
    RangeTable::build(&RangeSources { documents, custom }, &[]).unwrap()
}

/// Embedded ranges plus operator rules for documentation networks.
fn ranges() -> &'static RangeTable {
    static TABLE: OnceLock<RangeTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        custom_table(
            &[
                ("198.51.100.0/24", "aws", "us-east-1"),
                ("203.0.113.0/24", "gcp", "us-central1"),
                ("192.0.2.0/24", "aws", "xx-nomirror-1"),
                ("2001:db8:1::/48", "aws", "eu-west-2"),
            ],
            true,
        )
    })
}

/// The client behind Google's load balancer (`client, lb`: one trusted hop), as these
/// tests were written for; `client_addr` tests the other ways of finding it.
pub(super) fn lb_client(peer: &str, xff: &[&str]) -> Result<IpAddr, ClientAddrError> {
    let lines: Vec<&[u8]> = xff.iter().map(|s| s.as_bytes()).collect();
    let rules = ClientAddressRules {
        trusted_hops: 1,
        ..ClientAddressRules::default()
    };
    let conn = Connection {
        peer: Some(peer.parse().unwrap()),
        proxied: None,
    };
    find_client(&rules, conn, &lines)
}

fn decide_with(method: &str, target: &str, peer: &str, xff: &[&str], routes: &Routes) -> Decision {
    let req = Request {
        method,
        target: target.as_bytes(),
        client: lb_client(peer, xff),
        upstream: 0,
        has_body: false,
        grants: crate::routing::Grants::Unchecked,
    };
    decide(&req, routes, Places::ranges_only(ranges()))
}

fn url(answer: &Answer) -> &str {
    match answer {
        Answer::Redirect { location, .. } => location,
        other => panic!("expected a redirect, got {other:?}"),
    }
}

fn get(target: &str) -> Decision {
    decide_with("GET", target, "10.0.0.1", &[], &routes(false))
}

fn reply(d: Decision) -> Reply {
    match d {
        Decision::Reply(r) => r,
        Decision::CheckMirrors(c) => panic!("expected a reply, got a mirror check {c:?}"),
    }
}

fn location(d: Decision) -> (Route, String, Target) {
    match reply(d) {
        Reply {
            route,
            answer: Answer::Redirect { location, target },
        } => (route, location, target),
        other => panic!("expected a redirect, got {other:?}"),
    }
}

fn status(d: Decision) -> (Route, u16, bool) {
    match reply(d) {
        Reply {
            route,
            answer: Answer::Error { status, oci, .. },
        } => (route, status, oci),
        Reply { route, answer } => (route, answer.status().unwrap(), false),
    }
}

/// A chain of one mirror, as archeio's policy decides for every blob it checks.
#[derive(Debug, Clone)]
struct Candidate {
    mirror_url: String,
    fallback: Answer,
    target: Target,
    chain: MirrorChain,
}

impl Candidate {
    fn decide(self, present: bool) -> Reply {
        self.chain.decide(present.then_some((0, self.mirror_url)))
    }
}

fn candidate(d: Decision) -> Candidate {
    match d {
        Decision::CheckMirrors(chain) => {
            assert_eq!(chain.candidates.len(), 1, "{chain:?}");
            assert_eq!(chain.delivery, Delivery::Redirect);
            let c = &chain.candidates[0];
            Candidate {
                mirror_url: c.location.clone(),
                fallback: chain.fallback.clone(),
                target: c.target.clone(),
                chain,
            }
        }
        Decision::Reply(r) => panic!("expected a mirror check, got {r:?}"),
    }
}

#[test]
fn methods_other_than_get_and_head_are_405() {
    for m in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "get", "TRACE"] {
        let d = decide_with(m, "/v2/", "10.0.0.1", &[], &routes(false));
        assert_eq!(status(d), (Route::MethodNotAllowed, 405, true), "{m}");
    }
    let d = decide_with("POST", "/", "10.0.0.1", &[], &routes(false));
    assert_eq!(status(d), (Route::MethodNotAllowed, 405, false));
    let d = decide_with("HEAD", "/v2/", "10.0.0.1", &[], &routes(false));
    assert_eq!(reply(d).answer, Answer::ApiVersion);
}

#[test]
fn info_privacy_and_not_found() {
    let (r, l, _) = location(get("/"));
    assert_eq!(
        (r, l.as_str()),
        (Route::Info, "https://github.com/kubernetes/registry.k8s.io")
    );
    for p in ["/privacy", "/privacy/", "/privacy-policy", "/privacy?x=1"] {
        let (r, l, _) = location(get(p));
        assert_eq!(
            (r, l.as_str()),
            (
                Route::Privacy,
                "https://www.linuxfoundation.org/privacy-policy/"
            ),
            "{p}"
        );
    }
    assert_eq!(location(get("/?x=1&y")).0, Route::Info);
    for p in ["/x", "/v1/", "/index.html"] {
        assert_eq!(status(get(p)), (Route::NotFound, 404, false), "{p}");
    }
}

#[test]
fn api_version_check_with_and_without_slash() {
    for p in ["/v2", "/v2/", "/v2/?foo=bar"] {
        assert_eq!(reply(get(p)).route, Route::ApiVersion, "{p}");
        assert_eq!(reply(get(p)).answer.status(), Some(200));
    }
    assert_eq!(status(get("/v2foo")), (Route::NotFound, 404, true));
}

#[test]
fn catalog_is_not_offered() {
    assert_eq!(status(get("/v2/_catalog")), (Route::Catalog, 404, true));
    assert_eq!(
        status(get("/v2/_catalog?n=100")),
        (Route::Catalog, 404, true)
    );
}

#[test]
fn manifests_tags_and_referrers_go_upstream_with_the_query() {
    let cases = [
        (
            "/v2/pause/manifests/latest",
            format!("{UP}/pause/manifests/latest"),
        ),
        (
            "/v2/pause/manifests/3.9",
            format!("{UP}/pause/manifests/3.9"),
        ),
        (
            &*format!("/v2/kube-apiserver/manifests/{SHA}"),
            format!("{UP}/kube-apiserver/manifests/{SHA}"),
        ),
        ("/v2/a/b/c/manifests/v1", format!("{UP}/a/b/c/manifests/v1")),
        (
            "/v2/pause/tags/list?n=10&last=3.8",
            format!("{UP}/pause/tags/list?n=10&last=3.8"),
        ),
        (
            &*format!("/v2/pause/referrers/{SHA}?artifactType=application%2Fvnd.dev.cosign"),
            format!("{UP}/pause/referrers/{SHA}?artifactType=application%2Fvnd.dev.cosign"),
        ),
    ];
    for (path, want) in cases {
        let (r, l, t) = location(get(path));
        assert_eq!(
            (r, l, t),
            (Route::Upstream, want, Target::Upstream),
            "{path}"
        );
    }
}

#[test]
fn cosign_tags_go_to_the_signature_upstream_when_configured() {
    for suffix in ["sig", "att"] {
        let path = format!("/v2/pause/manifests/sha256-{HEX}.{suffix}");
        let d = decide_with("GET", &path, "10.0.0.1", &[], &routes(true));
        let want = format!("https://sig.example/v2/k8s-artifacts-prod/images/pause/manifests/sha256-{HEX}.{suffix}");
        assert_eq!(
            location(d),
            (Route::Signature, want, Target::SignatureUpstream)
        );
        let d = decide_with("GET", &path, "10.0.0.1", &[], &routes(false));
        assert_eq!(
            location(d).0,
            Route::Upstream,
            "without a signature upstream"
        );
    }
    for not_sig in [
        format!("/v2/pause/manifests/sha256-{}.sig", &HEX[..63]),
        format!("/v2/pause/manifests/sha256-{}.sig", HEX.to_uppercase()),
        format!("/v2/pause/manifests/sha256-{HEX}.sbom"),
        format!("/v2/pause/manifests/sha512-{HEX}.sig"),
        format!("/v2/pause/tags/sha256-{HEX}.sig"),
    ] {
        let d = decide_with("GET", &not_sig, "10.0.0.1", &[], &routes(true));
        assert_ne!(reply(d).route, Route::Signature, "{not_sig}");
    }
}

#[test]
fn blob_for_an_aws_client_checks_the_regional_mirror() {
    let c = candidate(decide_with(
        "GET",
        &format!("/v2/pause/blobs/{SHA}"),
        "198.51.100.20",
        &[],
        &routes(false),
    ));
    assert_eq!(
        c.mirror_url,
        format!("https://prod-registry-k8s-io-us-east-1.s3.dualstack.us-east-1.amazonaws.com/containers/images/{SHA}")
    );
    assert_eq!(c.target, Target::Mirror("us-east-1".into()));
    assert_eq!(url(&c.fallback), format!("{UP}/pause/blobs/{SHA}"));

    let present = c.clone().decide(true);
    assert_eq!(present.route, Route::Blob);
    assert_eq!(
        present.answer,
        Answer::Redirect {
            location: c.mirror_url.clone(),
            target: Target::Mirror("us-east-1".into())
        }
    );
    let absent = c.clone().decide(false);
    assert_eq!(
        absent.answer,
        Answer::Redirect {
            location: format!("{UP}/pause/blobs/{SHA}"),
            target: Target::Upstream
        }
    );
}

#[test]
fn blob_digests_of_other_algorithms_and_nested_names() {
    let sha512 = format!("sha512:{}", "ab".repeat(64));
    let c = candidate(decide_with(
        "GET",
        &format!("/v2/a/b/c/blobs/{sha512}"),
        "198.51.100.20",
        &[],
        &routes(false),
    ));
    assert!(c
        .mirror_url
        .ends_with(&format!("/containers/images/{sha512}")));
    assert_eq!(url(&c.fallback), format!("{UP}/a/b/c/blobs/{sha512}"));
    // The original's pattern allows '=', '_' and '-' in the encoded part.
    let odd = "multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8";
    let c = candidate(decide_with(
        "GET",
        &format!("/v2/x/blobs/{odd}"),
        "198.51.100.20",
        &[],
        &routes(false),
    ));
    assert!(c.mirror_url.ends_with(odd));
}

#[test]
fn blob_query_is_kept_upstream_and_dropped_at_the_mirror() {
    let c = candidate(decide_with(
        "GET",
        &format!("/v2/pause/blobs/{SHA}?ns=x"),
        "198.51.100.20",
        &[],
        &routes(false),
    ));
    assert!(c.mirror_url.ends_with(SHA));
    assert!(url(&c.fallback).ends_with(&format!("{SHA}?ns=x")));
}

#[test]
fn blob_for_a_gcp_client_goes_upstream_without_a_check() {
    let path = format!("/v2/pause/blobs/{SHA}");
    let d = decide_with("GET", &path, "203.0.113.9", &[], &routes(false));
    assert_eq!(
        location(d),
        (
            Route::Blob,
            format!("{UP}/pause/blobs/{SHA}"),
            Target::Upstream
        )
    );
    // A real GCP address from the embedded snapshot (34.1.208.0/20, africa-south1).
    let d = decide_with("GET", &path, "34.1.208.5", &[], &routes(false));
    assert_eq!(location(d).2, Target::Upstream);
}

#[test]
fn blob_for_unknown_clients_and_regions_without_a_bucket_checks_the_default_mirror() {
    let path = format!("/v2/pause/blobs/{SHA}");
    for peer in ["10.0.0.1", "192.0.2.7", "2001:db8:ffff::1"] {
        let c = candidate(decide_with("GET", &path, peer, &[], &routes(false)));
        assert_eq!(
            c.mirror_url,
            format!("https://d1be1w964nk82h.cloudfront.net/containers/images/{SHA}"),
            "{peer}"
        );
        assert_eq!(c.target, Target::DefaultMirror);
    }
    // Embedded AWS GLOBAL prefix: no bucket for GLOBAL.
    let c = candidate(decide_with(
        "GET",
        &path,
        "15.193.31.1",
        &[],
        &routes(false),
    ));
    assert_eq!(c.target, Target::DefaultMirror);
    // The nested us-east-1 prefix inside it wins (the original sent it to the default).
    let c = candidate(decide_with(
        "GET",
        &path,
        "15.193.6.10",
        &[],
        &routes(false),
    ));
    assert_eq!(c.target, Target::Mirror("us-east-1".into()));
}

#[test]
fn ipv6_and_ipv4_mapped_clients() {
    let path = format!("/v2/pause/blobs/{SHA}");
    let c = candidate(decide_with(
        "GET",
        &path,
        "2001:db8:1::5",
        &[],
        &routes(false),
    ));
    assert_eq!(c.target, Target::Mirror("eu-west-2".into()));
    assert!(c
        .mirror_url
        .starts_with("https://767373bbdcb8270361b96548387bf2a9ad0d48758c35-eu-west-2."));
    let c = candidate(decide_with(
        "GET",
        &path,
        "::ffff:198.51.100.20",
        &[],
        &routes(false),
    ));
    assert_eq!(c.target, Target::Mirror("us-east-1".into()));
    // An embedded AWS IPv6 prefix (2406:daba:f000::/40, ap-southeast-4).
    let c = candidate(decide_with(
        "GET",
        &path,
        "2406:daba:f000::9",
        &[],
        &routes(false),
    ));
    assert_eq!(c.target, Target::Mirror("ap-southeast-4".into()));
}

#[test]
fn blob_client_comes_from_x_forwarded_for() {
    let path = format!("/v2/pause/blobs/{SHA}");
    let d = decide_with(
        "GET",
        &path,
        "10.0.0.1",
        &["6.6.6.6, 203.0.113.9, 130.211.0.5"],
        &routes(false),
    );
    assert_eq!(
        location(d).2,
        Target::Upstream,
        "GCP client behind the load balancer"
    );
    let c = candidate(decide_with(
        "GET",
        &path,
        "203.0.113.9",
        &["198.51.100.20,130.211.0.5"],
        &routes(false),
    ));
    assert_eq!(c.target, Target::Mirror("us-east-1".into()));
    for bad in ["198.51.100.20", "garbage, 130.211.0.5", ""] {
        let d = decide_with("GET", &path, "10.0.0.1", &[bad], &routes(false));
        assert_eq!(status(d), (Route::ClientAddress, 400, true), "{bad:?}");
    }
    // Only blob requests need the client: a malformed header elsewhere is ignored.
    let d = decide_with(
        "GET",
        "/v2/pause/manifests/latest",
        "10.0.0.1",
        &["garbage"],
        &routes(false),
    );
    assert_eq!(location(d).0, Route::Upstream);
}

#[test]
fn without_trusted_proxies_the_peer_decides() {
    let conn = Connection {
        peer: Some("198.51.100.1".parse().unwrap()),
        proxied: None,
    };
    let req = Request {
        method: "GET",
        target: format!("/v2/pause/blobs/{SHA}").leak().as_bytes(),
        client: find_client(&ClientAddressRules::default(), conn, &[b"garbage"]),
        upstream: 0,
        has_body: false,
        grants: crate::routing::Grants::Unchecked,
    };
    let c = candidate(decide(&req, &routes(false), Places::ranges_only(ranges())));
    assert_eq!(c.target, Target::Mirror("us-east-1".into()));
}

#[test]
fn malformed_targets_are_400_with_an_oci_body_on_api_paths() {
    let long = format!("/v2/{}/manifests/latest", "a".repeat(MAX_TARGET_LEN));
    let cases: Vec<(String, bool)> = vec![
        ("/v2/../x/manifests/latest".into(), true),
        ("/v2/a/../../secret/manifests/latest".into(), true),
        ("/v2/./a/manifests/latest".into(), true),
        ("/v2/a/manifests/..".into(), true),
        ("/v2//a/manifests/latest".into(), true),
        ("/v2/a//manifests/latest".into(), true),
        ("/v2/a/manifests/latest/".into(), true),
        ("/v2/a%2F..%2Fb/manifests/latest".into(), true),
        ("/v2/a/%2e%2e/manifests/latest".into(), true),
        ("/v2/a%5c/manifests/latest".into(), true),
        ("/v2/a%00/manifests/latest".into(), true),
        ("/v2/a%zz/manifests/latest".into(), true),
        ("/v2/a%2/manifests/latest".into(), true),
        ("/v2/a\u{1}b/manifests/latest".into(), true),
        ("/v2/a b/manifests/latest".into(), true),
        ("/v2/a\\b/manifests/latest".into(), true),
        ("/v2/a#frag/manifests/latest".into(), true),
        ("/v2/é/manifests/latest".into(), true),
        ("/v2/a/manifests/latest?x=\u{7f}".into(), true),
        ("/v2/a/tags/list?n=1 2".into(), true),
        (long, true),
        ("/privacy/../etc".into(), false),
        ("//evil.example/".into(), false),
        ("/a\u{0}".into(), false),
    ];
    for (target, oci) in cases {
        let d = get(&target);
        assert_eq!(status(d), (Route::Invalid, 400, oci), "{target:?}");
    }
    let d = reply(get("http://evil.example/v2/"));
    assert_eq!(d.answer.status(), Some(400));
    // A target of exactly the limit is fine.
    let path = "/v2/a/manifests/b?";
    let exact = format!("{path}{}", "q".repeat(MAX_TARGET_LEN - path.len()));
    assert_eq!(location(get(&exact)).0, Route::Upstream);
}

#[test]
fn locations_never_leave_the_configured_hosts() {
    let hosts = [
        "https://us-central1-docker.pkg.dev/",
        "https://sig.example/",
    ];
    let nasty = [
        "/v2/@evil.example/manifests/latest",
        "/v2/a/manifests/latest?@evil.example",
        "/v2/a/manifests/latest?//evil.example",
        "/v2/:evil.example/manifests/x",
        "/v2/a;b=c/manifests/x",
    ];
    for target in nasty {
        let d = decide_with("GET", target, "10.0.0.1", &[], &routes(true));
        match reply(d).answer {
            Answer::Redirect { location: l, .. } => {
                assert!(hosts.iter().any(|h| l.starts_with(h)), "{target} -> {l}")
            }
            Answer::Error { status, .. } => assert_eq!(status, 404, "{target}"),
            other => panic!("{target}: {other:?}"),
        }
    }
}

fn passthrough_routes() -> Routes {
    let cfg = ArcheioConfig {
        mode: Mode::Passthrough,
        ..ArcheioConfig::default()
    };
    cfg.check("test", |_| None).unwrap().routes
}

#[test]
fn passthrough_proxies_manifests_tags_and_referrers_with_the_upstream_path() {
    let routes = passthrough_routes();
    let cases = [
        ("/v2/pause/manifests/3.9", Some(ManifestRef::Tag)),
        (
            &*format!("/v2/pause/manifests/{SHA}"),
            Some(ManifestRef::Digest),
        ),
        ("/v2/a/b/tags/list?n=10&last=x", None),
        (&*format!("/v2/pause/referrers/{SHA}"), None),
    ];
    for (target, manifest) in cases {
        let r = reply(decide_with("HEAD", target, "10.0.0.1", &[], &routes));
        assert_eq!(r.route, Route::Upstream, "{target}");
        assert_eq!(
            r.answer,
            Answer::Proxy {
                path: format!("/v2/k8s-artifacts-prod/images{}", &target[3..]),
                manifest
            },
            "{target}"
        );
        assert_eq!(r.answer.status(), None);
    }
    // The API version check and bad input are still answered by the gateway.
    assert_eq!(
        reply(decide_with("GET", "/v2/", "10.0.0.1", &[], &routes)).answer,
        Answer::ApiVersion
    );
    let bad = reply(decide_with(
        "GET",
        "/v2/a/../b/manifests/x",
        "10.0.0.1",
        &[],
        &routes,
    ));
    assert_eq!(bad.answer.status(), Some(400));
}

#[test]
fn passthrough_blob_falls_back_to_proxying_not_redirecting() {
    let routes = passthrough_routes();
    let target = format!("/v2/pause/blobs/{SHA}");
    let c = candidate(decide_with("GET", &target, "198.51.100.20", &[], &routes));
    let proxied = Answer::Proxy {
        path: format!("/v2/k8s-artifacts-prod/images/pause/blobs/{SHA}"),
        manifest: None,
    };
    assert_eq!(c.fallback, proxied);
    assert_eq!(c.clone().decide(false).answer, proxied);
    assert!(matches!(
        c.decide(true).answer,
        Answer::Redirect {
            target: Target::Mirror(_),
            ..
        }
    ));
    // A GCP client is proxied at once, as it would be redirected upstream at once.
    let r = reply(decide_with("GET", &target, "203.0.113.9", &[], &routes));
    assert_eq!(r.answer, proxied);
}

#[test]
fn redirects_go_to_the_endpoint_the_health_checks_chose() {
    let mut cfg = ArcheioConfig::default();
    cfg.upstream.endpoints = vec!["https://a.example".into(), "https://b.example".into()];
    let routes = cfg.check("test", |_| None).unwrap().routes;
    for (choice, host) in [(0, "a.example"), (1, "b.example"), (7, "a.example")] {
        let req = Request {
            method: "GET",
            target: b"/v2/pause/manifests/3.9?x=1",
            client: Ok("10.0.0.1".parse().unwrap()),
            upstream: choice,
            has_body: false,
            grants: crate::routing::Grants::Unchecked,
        };
        let r = reply(decide(&req, &routes, Places::ranges_only(ranges())));
        assert_eq!(
            url(&r.answer),
            format!("https://{host}/v2/k8s-artifacts-prod/images/pause/manifests/3.9?x=1")
        );
    }
}

/// Issue 12, item 1: only the pull endpoints with names, tags and digests of the
/// distribution grammar reach the upstream, in both modes.
#[test]
fn paths_outside_the_distribution_grammar_are_404_in_both_modes() {
    let cases = [
        ("/v2/..;/..;/other/private/manifests/latest", "NAME_INVALID"),
        ("/v2/.;x/manifests/latest", "NAME_INVALID"),
        ("/v2/%252e%252e/manifests/latest", "NAME_INVALID"),
        ("/v2/%c0%ae/manifests/latest", "NAME_INVALID"),
        ("/v2/Pause/manifests/latest", "NAME_INVALID"),
        ("/v2/a;b=c/manifests/x", "NAME_INVALID"),
        ("/v2/pause/manifests/..;", "TAG_INVALID"),
        ("/v2/pause/manifests/-x", "TAG_INVALID"),
        ("/v2/pause/manifests/sha256:abc", "DIGEST_INVALID"),
        ("/v2/pause/blobs/sha256:abc", "DIGEST_INVALID"),
        ("/v2/pause/blobs/uploads", "DIGEST_INVALID"),
        ("/v2/pause/referrers/v1", "DIGEST_INVALID"),
        ("/v2/blobs/sha256:abc", "NAME_UNKNOWN"),
        ("/v2/pause/tags/other", "NAME_UNKNOWN"),
        ("/v2/pause", "NAME_UNKNOWN"),
    ];
    for routes in [routes(true), passthrough_routes()] {
        for (target, want) in cases {
            let d = decide_with("GET", target, "198.51.100.20", &[], &routes);
            match reply(d) {
                Reply {
                    route: Route::NotFound,
                    answer:
                        Answer::Error {
                            status: 404,
                            code,
                            oci: true,
                            ..
                        },
                } => assert_eq!(code, want, "{target}"),
                other => panic!("{target}: {other:?}"),
            }
        }
    }
}

/// Issue 12, item 2: a paged request that followed an upstream `Link` (its name already
/// starts with the upstream prefix) is not prefixed twice; a first page is.
#[test]
fn paged_requests_that_carry_the_upstream_prefix_are_not_prefixed_again() {
    let (r, l, _) = location(get(
        "/v2/k8s-artifacts-prod/images/pause/tags/list?last=3.9&n=2",
    ));
    assert_eq!(
        (r, l.as_str()),
        (
            Route::Upstream,
            &*format!("{UP}/pause/tags/list?last=3.9&n=2")
        )
    );
    let (_, l, _) = location(get(&format!(
        "/v2/k8s-artifacts-prod/images/pause/referrers/{SHA}?n=1"
    )));
    assert_eq!(l, format!("{UP}/pause/referrers/{SHA}?n=1"));
    // Without a query it is a first page of a repository that happens to start so.
    let (_, l, _) = location(get("/v2/k8s-artifacts-prod/images/pause/tags/list"));
    assert_eq!(l, format!("{UP}/k8s-artifacts-prod/images/pause/tags/list"));
    // Manifests are never unprefixed.
    let (_, l, _) = location(get("/v2/k8s-artifacts-prod/images/pause/manifests/v1?x=1"));
    assert_eq!(
        l,
        format!("{UP}/k8s-artifacts-prod/images/pause/manifests/v1?x=1")
    );
    let d = decide_with(
        "GET",
        "/v2/k8s-artifacts-prod/images/pause/tags/list?last=a",
        "10.0.0.1",
        &[],
        &passthrough_routes(),
    );
    match reply(d).answer {
        Answer::Proxy { path, .. } => {
            assert_eq!(path, "/v2/k8s-artifacts-prod/images/pause/tags/list?last=a")
        }
        other => panic!("{other:?}"),
    }
}

/// Issue 12, item 4: a GET or HEAD with a body is refused before anything else is read.
#[test]
fn requests_with_a_body_are_400() {
    for method in ["GET", "HEAD"] {
        let req = Request {
            method,
            target: b"/v2/pause/manifests/latest",
            client: Ok("10.0.0.1".parse().unwrap()),
            upstream: 0,
            has_body: true,
            grants: crate::routing::Grants::Unchecked,
        };
        assert_eq!(
            status(decide(
                &req,
                &passthrough_routes(),
                Places::ranges_only(ranges())
            )),
            (Route::Invalid, 400, true)
        );
    }
}

/// Issue 12, item 11: request lines the HTTP parser would rewrite or refuse on its own are
/// answered by the rules, as `decide` would answer them.
#[test]
fn request_lines_the_parser_would_change_are_refused() {
    let refused: [(&[u8], u16, bool); 11] = [
        (b"GET /v2/pause/manifests/a b HTTP/1.1", 400, true),
        (b"GET /v2/pause/manifests/1#frag HTTP/1.1\r", 400, true),
        (b"GET http://evil/v2/pause/manifests/1 HTTP/1.1", 400, false),
        (b"GET * HTTP/1.1", 400, false),
        (b"GET /v2/\"x\" HTTP/1.1", 400, true),
        (b"GET /v2/<x> HTTP/1.1", 400, true),
        (b"GET /v2/p\xc3\xa9 HTTP/1.1", 400, true),
        (b"GET /v2/", 400, true),
        (b"\x16\x03\x01\x02\x00", 400, false),
        (b"CONNECT upstream.test:443 HTTP/1.1", 405, false),
        (b"GET /v2/ HTTP/1.1 extra", 400, true),
    ];
    for (line, want, oci) in refused {
        let r = refuse_request_line(line)
            .unwrap_or_else(|| panic!("{:?} passed", line.escape_ascii().to_string()));
        match r.answer {
            Answer::Error { status, oci: o, .. } => {
                assert_eq!((status, o), (want, oci), "{}", line.escape_ascii())
            }
            other => panic!("{other:?}"),
        }
    }
    for line in [
        b"GET /v2/pause/manifests/latest HTTP/1.1\r".as_slice(),
        b"HEAD /v2/ HTTP/1.0",
        b"GET /v2/a%20b/manifests/x?q=%23 HTTP/1.1",
        b"POST /v2/a/blobs/uploads/ HTTP/1.1",
        b"GET /v2/a\\b HTTP/1.1",
    ] {
        assert!(
            refuse_request_line(line).is_none(),
            "{}",
            line.escape_ascii()
        );
    }
}
