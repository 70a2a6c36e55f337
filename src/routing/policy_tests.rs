//! `decide` under configured policies: rules, chains, deliveries, known repositories.

use std::sync::OnceLock;

use super::*;
use crate::config::file::ArcheioConfig;
use policy::Delivery;
use ranges::RangeSources;

const SHA: &str = "sha256:4a1c4b21597c1b4415bdbecb28a3296c6b5e23ca4f9feeb599860a1dac6a0108";
const UP: &str = "https://us-central1-docker.pkg.dev/v2/k8s-artifacts-prod/images";

/// The routes of an `archeio:` section given as YAML.
fn routes(yaml: &str) -> Routes {
    let text = format!("archeio:\n{yaml}");
    ArcheioConfig::from_yaml(&text, "test")
        .unwrap()
        .check("test", |_| None)
        .unwrap()
        .routes
}

fn config_error(yaml: &str) -> String {
    let text = format!("archeio:\n{yaml}");
    ArcheioConfig::from_yaml(&text, "test")
        .unwrap()
        .check("test", |_| None)
        .unwrap_err()
        .to_string()
}

/// Operator rules for documentation networks: an AWS eu-west-1 client, a GCP one, one in
/// a region without a bucket.
fn ranges() -> &'static RangeTable {
    static TABLE: OnceLock<RangeTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        super::tests::custom_table(
            &[
                ("198.51.100.0/24", "aws", "eu-west-1"),
                ("203.0.113.0/24", "gcp", "us-central1"),
                ("192.0.2.0/24", "aws", "xx-none-1"),
            ],
            false,
        )
    })
}

fn decide_for(
    routes: &Routes,
    target: &str,
    peer: &str,
    xff: &[&str],
) -> (Decision, Option<usize>) {
    decide_over(routes, ranges(), target, peer, xff)
}

fn decide_over(
    routes: &Routes,
    ranges: &RangeTable,
    target: &str,
    peer: &str,
    xff: &[&str],
) -> (Decision, Option<usize>) {
    let req = Request {
        method: "GET",
        target: target.as_bytes(),
        client: super::tests::lb_client(peer, xff),
        upstream: 0,
        has_body: false,
        grants: crate::routing::Grants::Unchecked,
    };
    decide_by_rule(&req, routes, Places::ranges_only(ranges))
}

fn chain(d: Decision) -> MirrorChain {
    match d {
        Decision::CheckMirrors(c) => c,
        Decision::Reply(r) => panic!("expected a mirror chain, got {r:?}"),
    }
}

fn reply(d: Decision) -> Reply {
    match d {
        Decision::Reply(r) => r,
        Decision::CheckMirrors(c) => panic!("expected a reply, got {c:?}"),
    }
}

const CHAIN: &str = "
  mirrors:
    named:
      private-eu: {url: 'http://eu.mirror.test/bucket', blob_path: '/blobs/{digest}/data'}
      cdn: {url: 'https://cdn.test'}
  policy:
    rules:
      - name: deny-internal
        match: {repository: 'internal/**'}
        action: deny
      - name: eu
        match: {provider: aws, region: 'eu-*'}
        action: mirrors
        mirrors: [private-eu, regions, cdn]
      - name: office
        match: {cidr: 10.0.0.0/8}
        action: mirrors
        mirrors: [cdn]
        delivery: proxy
      - name: office-manifests
        match: {cidr: 10.0.0.0/8, kind: [manifest, tag_list]}
        action: upstream
        delivery: proxy
";

#[test]
fn a_chain_lists_its_mirrors_in_order_with_their_own_blob_paths() {
    let r = routes(CHAIN);
    let (d, rule) = decide_for(&r, &format!("/v2/app/blobs/{SHA}"), "198.51.100.7", &[]);
    assert_eq!(rule, Some(1));
    let c = chain(d);
    let got: Vec<(&str, &Target)> = c
        .candidates
        .iter()
        .map(|c| (c.location.as_str(), &c.target))
        .collect();
    assert_eq!(
        got,
        [
            (
                format!("http://eu.mirror.test/bucket/blobs/{SHA}/data").as_str(),
                &Target::Mirror("private-eu".into())
            ),
            (
                format!("https://prod-registry-k8s-io-eu-west-1.s3.dualstack.eu-west-1.amazonaws.com/containers/images/{SHA}").as_str(),
                &Target::Mirror("eu-west-1".into())
            ),
            (
                format!("https://cdn.test/containers/images/{SHA}").as_str(),
                &Target::Mirror("cdn".into())
            ),
        ]
    );
    assert_eq!(c.delivery, Delivery::Redirect);
    assert_eq!(
        c.fallback,
        Answer::Redirect {
            location: format!("{UP}/app/blobs/{SHA}"),
            target: Target::Upstream
        }
    );
    // The second mirror holds it.
    let found = c
        .clone()
        .decide(Some((1, "https://x.test/signed?sig=1".into())));
    assert_eq!(
        found.answer,
        Answer::Redirect {
            location: "https://x.test/signed?sig=1".into(),
            target: Target::Mirror("eu-west-1".into())
        }
    );
    assert_eq!(c.decide(None).answer.status(), Some(307));
}

/// Issue 24, defect 3: mirrors hold blobs by digest alone, so with hidden repositories the
/// upstream must say the named repository holds the blob first.
#[test]
fn a_policy_that_hides_repositories_confirms_each_blob_with_the_upstream() {
    let blob = format!("/v2/app/blobs/{SHA}");
    let upstream_path = format!("/v2/k8s-artifacts-prod/images/app/blobs/{SHA}");
    // CHAIN has a deny rule.
    let (d, _) = decide_for(&routes(CHAIN), &blob, "198.51.100.7", &[]);
    assert_eq!(chain(d).confirm.as_deref(), Some(upstream_path.as_str()));
    let known = "
  policy:
    known_repositories: ['app']
    rules:
      - {match: {kind: blob}, action: mirrors, mirrors: [default]}
";
    let (d, _) = decide_for(&routes(known), &blob, "198.51.100.7", &[]);
    assert_eq!(chain(d).confirm.as_deref(), Some(upstream_path.as_str()));
    // Nothing hidden: the digest alone decides, as in archeio.
    let open = "
  policy:
    rules:
      - {match: {kind: blob}, action: mirrors, mirrors: [default]}
";
    let (d, _) = decide_for(&routes(open), &blob, "198.51.100.7", &[]);
    assert_eq!(chain(d).confirm, None);
}

#[test]
fn rules_that_do_not_match_fall_through_to_the_upstream() {
    let r = routes(CHAIN);
    // GCP client: no rule names it; a blob no rule matches goes upstream.
    let (d, rule) = decide_for(&r, &format!("/v2/app/blobs/{SHA}"), "203.0.113.5", &[]);
    assert_eq!(rule, None);
    let reply = reply(d);
    assert_eq!(reply.route, Route::Blob);
    assert_eq!(
        reply.answer,
        Answer::Redirect {
            location: format!("{UP}/app/blobs/{SHA}"),
            target: Target::Upstream
        }
    );
}

#[test]
fn deny_answers_404_name_unknown() {
    let r = routes(CHAIN);
    for target in [
        "/v2/internal/tools/manifests/v1".to_string(),
        format!("/v2/internal/x/blobs/{SHA}"),
        "/v2/internal/x/tags/list".to_string(),
    ] {
        let (d, rule) = decide_for(&r, &target, "198.51.100.7", &[]);
        assert_eq!(rule, Some(0), "{target}");
        let reply = reply(d);
        assert_eq!(reply.route, Route::Denied);
        assert!(
            matches!(
                reply.answer,
                Answer::Error {
                    status: 404,
                    code: "NAME_UNKNOWN",
                    oci: true,
                    ..
                }
            ),
            "{:?}",
            reply.answer
        );
    }
    // `**` needs a segment below `internal`.
    let (d, _) = decide_for(&r, "/v2/internal/manifests/v1", "198.51.100.7", &[]);
    assert_eq!(reply(d).route, Route::Upstream);
}

#[test]
fn proxy_delivery_proxies_the_mirror_and_the_upstream_fallback_in_redirect_mode() {
    let r = routes(CHAIN);
    assert!(!r.passthrough);
    let (d, rule) = decide_for(&r, &format!("/v2/app/blobs/{SHA}"), "10.1.2.3", &[]);
    assert_eq!(rule, Some(2));
    let c = chain(d);
    assert_eq!(c.delivery, Delivery::Proxy);
    assert_eq!(
        c.fallback,
        Answer::Proxy {
            path: format!("/v2/k8s-artifacts-prod/images/app/blobs/{SHA}"),
            manifest: None
        }
    );
    let url = format!("https://cdn.test/containers/images/{SHA}");
    let found = c.decide(Some((0, url.clone())));
    assert_eq!(
        found.answer,
        Answer::ProxyMirror {
            mirror: r
                .policy
                .mirrors
                .iter()
                .position(|m| &*m.name == "cdn")
                .unwrap(),
            url,
            target: Target::Mirror("cdn".into())
        }
    );
    // The office's manifests are proxied from the upstream, cacheable as usual.
    let (d, rule) = decide_for(&r, "/v2/app/manifests/v1", "10.1.2.3", &[]);
    assert_eq!(rule, Some(3));
    assert_eq!(
        reply(d).answer,
        Answer::Proxy {
            path: "/v2/k8s-artifacts-prod/images/app/manifests/v1".into(),
            manifest: Some(ManifestRef::Tag)
        }
    );
    // Elsewhere, manifests are redirected as the mode says.
    let (d, rule) = decide_for(&r, "/v2/app/manifests/v1", "198.51.100.7", &[]);
    assert_eq!(rule, None);
    assert_eq!(reply(d).answer.status(), Some(307));
}

#[test]
fn a_rule_on_the_client_needs_its_address_for_manifests_too() {
    let r = routes(CHAIN);
    // Peer 10.x, but the trusted hop names a garbage client: rule 4 cannot be decided.
    let (d, _) = decide_for(
        &r,
        "/v2/app/manifests/v1",
        "10.1.2.3",
        &["garbage, 10.9.9.9"],
    );
    let reply = reply(d);
    assert_eq!(reply.route, Route::ClientAddress);
    assert_eq!(reply.answer.status(), Some(400));
    // The default policy never looks at a manifest's client (unchanged behaviour).
    let plain = routes("  mode: redirect\n");
    let (d, _) = decide_for(&plain, "/v2/app/manifests/v1", "10.1.2.3", &["garbage"]);
    assert_eq!(self::reply(d).route, Route::Upstream);
}

#[test]
fn known_repositories_answer_others_with_an_early_404() {
    let r = routes(
        "  upstream: {endpoints: ['https://up.test'], path: k8s/images}
  policy:
    known_repositories: [pause, 'kube-*', 'team/**']
",
    );
    for (target, known) in [
        ("/v2/pause/manifests/3.10", true),
        ("/v2/kube-proxy/tags/list", true),
        ("/v2/team/a/b/manifests/1", true),
        ("/v2/kube/x/manifests/1", false),
        ("/v2/nginx/manifests/latest", false),
        // A paged tag list in the upstream's path space is the same repository.
        ("/v2/k8s/images/pause/tags/list?last=3.9", true),
        ("/v2/k8s/images/nginx/tags/list?last=1", false),
    ] {
        let (d, _) = decide_for(&r, target, "192.0.2.1", &[]);
        let route = reply(d).route;
        if known {
            assert_eq!(route, Route::Upstream, "{target}");
        } else {
            assert_eq!(route, Route::UnknownRepository, "{target}");
        }
    }
    let (d, _) = decide_for(&r, &format!("/v2/nginx/blobs/{SHA}"), "192.0.2.1", &[]);
    assert!(matches!(
        reply(d).answer,
        Answer::Error {
            status: 404,
            code: "NAME_UNKNOWN",
            ..
        }
    ));
}

#[test]
fn signature_tags_are_a_kind_of_their_own() {
    let r = routes(
        "  signature_upstream: https://sig.test
  policy:
    rules:
      - {match: {kind: signature, repository: unsigned}, action: deny}
",
    );
    let tag = format!("sha256-{}.sig", "a".repeat(64));
    let (d, rule) = decide_for(
        &r,
        &format!("/v2/unsigned/manifests/{tag}"),
        "192.0.2.1",
        &[],
    );
    assert_eq!((reply(d).route, rule), (Route::Denied, Some(0)));
    let (d, _) = decide_for(&r, &format!("/v2/pause/manifests/{tag}"), "192.0.2.1", &[]);
    assert_eq!(reply(d).route, Route::Signature);
    let (d, _) = decide_for(&r, "/v2/unsigned/manifests/v1", "192.0.2.1", &[]);
    assert_eq!(reply(d).route, Route::Upstream);
}

#[test]
fn policy_errors_name_the_key() {
    for (yaml, key) in [
        (
            "  policy: {rules: [{action: mirrors, mirrors: [nowhere]}]}\n",
            "archeio.policy.rules[0].mirrors[0]: no mirror named \"nowhere\"",
        ),
        (
            "  policy: {rules: [{action: upstream}, {match: {kind: manifest}, action: mirrors, mirrors: [default]}]}\n",
            "archeio.policy.rules[1].match.kind: mirrors hold blobs only",
        ),
        (
            "  policy: {rules: [{action: mirrors}]}\n",
            "archeio.policy.rules[0].mirrors: needs at least one mirror",
        ),
        (
            "  policy: {rules: [{action: deny, mirrors: [default]}]}\n",
            "archeio.policy.rules[0].mirrors: only a mirrors rule has a chain",
        ),
        (
            "  policy: {rules: [{match: {region: 'eu-[', kind: blob}, action: upstream}]}\n",
            "archeio.policy.rules[0].match.region: \"eu-[\" is not a glob",
        ),
        (
            "  policy: {known_repositories: ['a{']}\n",
            "archeio.policy.known_repositories: \"a{\" is not a glob",
        ),
        (
            "  mirrors: {named: {regions: {url: 'https://x.test'}}}\n",
            "archeio.mirrors.named.regions: \"regions\" is reserved",
        ),
        (
            "  mirrors: {named: {cdn: {url: 'ftp://x.test'}}}\n",
            "archeio.mirrors.named.cdn.url: expected an http(s) URL",
        ),
        (
            "  mirrors: {named: {cdn: {url: 'https://x.test', blob_path: '/no-digest'}}}\n",
            "archeio.mirrors.named.cdn.blob_path: must contain {digest}",
        ),
    ] {
        let e = config_error(yaml);
        assert!(e.contains(key), "{yaml}: {e}");
    }
    // An unknown key or action is refused by the parser, naming it.
    let text = "archeio:\n  policy: {rules: [{action: teleport}]}\n";
    let e = ArcheioConfig::from_yaml(text, "test")
        .unwrap_err()
        .to_string();
    assert!(e.contains("teleport"), "{e}");
}

#[test]
fn one_value_or_a_list() {
    let r = routes(
        "  policy:
    rules:
      - {match: {provider: aws, region: [eu-west-1, 'us-*'], kind: blob}, action: upstream}
",
    );
    let rule = &r.policy.rules[0];
    assert_eq!(&*rule.providers, [Box::<str>::from("aws")]);
    let (d, matched) = decide_for(&r, &format!("/v2/a/blobs/{SHA}"), "198.51.100.1", &[]);
    assert_eq!(matched, Some(0));
    assert_eq!(reply(d).answer.status(), Some(307));
}

#[test]
fn the_archeio_policy_example_decides_exactly_as_the_default() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/examples/archeio-policy.yaml");
    let spelled = ArcheioConfig::from_file(&path)
        .unwrap()
        .check("example", |_| None)
        .unwrap()
        .routes;
    let default = ArcheioConfig::default()
        .check("t", |_| None)
        .unwrap()
        .routes;
    assert_eq!(spelled.policy.rules.len(), 2);
    let ranges = RangeTable::build(&RangeSources::default(), &[]).unwrap();
    let sig = format!("sha256-{}.sig", "b".repeat(64));
    let targets = [
        format!("/v2/pause/blobs/{SHA}"),
        format!("/v2/a/b/blobs/{SHA}?ns=x"),
        "/v2/pause/manifests/3.10".into(),
        format!("/v2/pause/manifests/{SHA}"),
        format!("/v2/pause/manifests/{sig}"),
        "/v2/pause/tags/list?n=10".into(),
        format!("/v2/pause/referrers/{SHA}"),
        "/v2/".into(),
        "/v2/_catalog".into(),
        "/".into(),
    ];
    // AWS eu-west-1, AWS GLOBAL, GCP africa-south1, nowhere, IPv6 AWS, garbage header.
    let clients: [(&str, &[&str]); 6] = [
        ("10.0.0.1", &["3.4.12.4, 130.211.0.1"]),
        ("10.0.0.1", &["15.193.31.1, 130.211.0.1"]),
        ("34.1.208.5", &[]),
        ("192.0.2.1", &[]),
        ("2406:daba:f000::9", &[]),
        ("10.0.0.1", &["garbage"]),
    ];
    for target in &targets {
        for (peer, xff) in clients {
            assert_eq!(
                decide_over(&spelled, &ranges, target, peer, xff),
                decide_over(&default, &ranges, target, peer, xff),
                "{target} from {peer} {xff:?}"
            );
        }
    }
}
