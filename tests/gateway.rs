//! The real gateway over real HTTP on loopback: every rule, the mirror check, metrics, and
//! the ways of configuring it.

mod common;

use std::time::Duration;

use common::*;

const UP: &str = "http://upstream.test/v2/prefix/images";
const SIG: &str = "http://sig.test/v2/prefix/images";
const HEX: &str = "4a1c4b21597c1b4415bdbecb28a3296c6b5e23ca4f9feeb599860a1dac6a0108";

fn digest(n: u8) -> String {
    format!("sha256:{:064x}", n)
}

/// The test setup: loopback clients are AWS `local-1` with a mirror; 192.0.2.0/24 is GCP;
/// `us-east-1` (from the embedded ranges) has a second mirror; the default mirror is a third.
async fn setup(embedded: bool, blob_check: &str) -> (Gateway, Mirror, Mirror, Mirror) {
    let (local, east, default) = (
        Mirror::start().await,
        Mirror::start().await,
        Mirror::start().await,
    );
    let keys = format!(
        "  upstream: {{endpoints: ['http://upstream.test'], path: prefix/images}}
  signature_upstream: http://sig.test
  mirrors:
    default: {default}
    replace_regions: true
    regions: {{local-1: '{local}', us-east-1: '{east}'}}
  ranges:
    embedded: {embedded}
    custom:
      - {{cidr: 127.0.0.0/8, cloud: aws, region: local-1}}
      - {{cidr: 192.0.2.0/24, cloud: gcp, region: test-gcp}}
  # As behind Google's load balancer, which appends `<client>,<lb>`.
  client_address: {{trusted_proxy_hops: 1}}
  blob_check: {blob_check}",
        default = default.base(),
        local = local.base(),
        east = east.base(),
    );
    (Gateway::start(&keys).await, local, east, default)
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_version_check_catalog_and_methods() {
    let (gw, ..) = setup(false, "{}").await;

    let r = gw.get("/").await;
    assert_eq!(
        (r.status, r.location()),
        (307, "https://github.com/kubernetes/registry.k8s.io")
    );
    assert_eq!(r.header("content-length"), Some("0"));
    for p in ["/privacy", "/privacy/x"] {
        let r = gw.get(p).await;
        assert_eq!(
            (r.status, r.location()),
            (307, "https://www.linuxfoundation.org/privacy-policy/")
        );
    }
    let r = gw.get("/index.html").await;
    assert_eq!(r.status, 404);

    for p in ["/v2", "/v2/"] {
        for m in ["GET", "HEAD"] {
            let r = gw.send(m, p, &[]).await;
            assert_eq!(r.status, 200, "{m} {p}");
            assert_eq!(
                r.header("docker-distribution-api-version"),
                Some("registry/2.0")
            );
            assert!(r.body.is_empty());
        }
    }
    let r = gw.get("/v2/_catalog").await;
    assert_eq!((r.status, r.oci_code().as_str()), (404, "UNSUPPORTED"));
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));

    for m in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        let r = gw
            .send(m, "/v2/pause/manifests/latest", &[("Content-Length", "0")])
            .await;
        assert_eq!(
            (r.status, r.oci_code().as_str()),
            (405, "UNSUPPORTED"),
            "{m}"
        );
        assert_eq!(r.header("allow"), Some("GET, HEAD"));
        let r = gw.send(m, "/", &[("Content-Length", "0")]).await;
        assert_eq!(r.status, 405);
        assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    }
}

/// The gateway's own answers are built without a case map for their header names (issue 28:
/// it cost every answer); on the wire the names keep their conventional spelling.
#[tokio::test(flavor = "multi_thread")]
async fn answers_spell_their_header_names_conventionally() {
    let (gw, ..) = setup(false, "{}").await;
    let names = |r: &common::Resp| r.headers.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    let r = gw.get("/v2/").await;
    assert_eq!(
        names(&r),
        [
            "Docker-Distribution-Api-Version",
            "Content-Length",
            "Date",
            "Connection"
        ]
    );
    let r = gw.get("/v2/pause/manifests/latest").await;
    assert_eq!(r.status, 307);
    assert_eq!(
        names(&r),
        ["Location", "Content-Length", "Date", "Connection"]
    );
    let r = gw.get("/v2/_catalog").await;
    assert_eq!(
        names(&r),
        [
            "Content-Type",
            "Docker-Distribution-Api-Version",
            "Content-Length",
            "Date",
            "Connection"
        ]
    );
    let r = gw
        .send(
            "DELETE",
            "/v2/pause/manifests/latest",
            &[("Content-Length", "0")],
        )
        .await;
    assert_eq!(r.status, 405);
    assert!(names(&r).contains(&"Allow".to_string()), "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn manifests_tags_referrers_and_signatures_redirect_upstream() {
    let (gw, local, ..) = setup(false, "{}").await;
    let cases = [
        (
            "/v2/pause/manifests/latest",
            format!("{UP}/pause/manifests/latest"),
        ),
        (
            &format!("/v2/a/b/c/manifests/sha256:{HEX}"),
            format!("{UP}/a/b/c/manifests/sha256:{HEX}"),
        ),
        (
            "/v2/pause/tags/list?n=2&last=3.8",
            format!("{UP}/pause/tags/list?n=2&last=3.8"),
        ),
        (
            &format!("/v2/pause/referrers/sha256:{HEX}?artifactType=application%2Fvnd.example"),
            format!("{UP}/pause/referrers/sha256:{HEX}?artifactType=application%2Fvnd.example"),
        ),
        (
            &format!("/v2/pause/manifests/sha256-{HEX}.sig"),
            format!("{SIG}/pause/manifests/sha256-{HEX}.sig"),
        ),
        (
            &format!("/v2/pause/manifests/sha256-{HEX}.att"),
            format!("{SIG}/pause/manifests/sha256-{HEX}.att"),
        ),
    ];
    for (target, want) in &cases {
        for m in ["GET", "HEAD"] {
            let r = gw.send(m, target, &[]).await;
            assert_eq!(
                (r.status, r.location()),
                (307, want.as_str()),
                "{m} {target}"
            );
            assert_eq!(r.header("content-length"), Some("0"));
            assert!(r.body.is_empty());
        }
    }
    assert_eq!(
        local.all_heads(),
        0,
        "no mirror check for non-blob requests"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn blobs_go_to_the_closest_mirror_that_has_them() {
    let (gw, local, east, default) = setup(true, "{}").await;
    let (held, missing, sha512) = (digest(1), digest(2), format!("sha512:{}", "cd".repeat(64)));
    local.put(&format!("/containers/images/{held}"));
    local.put(&format!("/containers/images/{sha512}"));
    east.put(&format!("/containers/images/{held}"));
    default.put(&format!("/containers/images/{held}"));

    // Loopback is AWS local-1 by the custom rule.
    let r = gw.get(&format!("/v2/pause/blobs/{held}")).await;
    assert_eq!(
        (r.status, r.location()),
        (
            307,
            format!("{}/containers/images/{held}", local.base()).as_str()
        )
    );
    let r = gw
        .send("HEAD", &format!("/v2/x/y/blobs/{sha512}"), &[])
        .await;
    assert_eq!(
        r.location(),
        format!("{}/containers/images/{sha512}", local.base())
    );
    let r = gw.get(&format!("/v2/pause/blobs/{missing}?q=1")).await;
    assert_eq!(r.location(), format!("{UP}/pause/blobs/{missing}?q=1"));

    // Clients named by the load balancer's X-Forwarded-For: `<client>,<lb>`.
    let xff = |client: &str| vec![("X-Forwarded-For", format!("6.6.6.6, {client}, 130.211.0.9"))];
    let send = |client: &'static str, d: String| {
        let headers = xff(client);
        let gw = &gw;
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            gw.send("GET", &format!("/v2/pause/blobs/{d}"), &h).await
        }
    };
    // GCP (custom rule) and GCP (embedded 34.1.208.0/20): upstream, no check.
    let before = local.all_heads() + east.all_heads() + default.all_heads();
    for gcp in ["192.0.2.10", "34.1.208.5"] {
        let r = send(gcp, held.clone()).await;
        assert_eq!(r.location(), format!("{UP}/pause/blobs/{held}"), "{gcp}");
    }
    assert_eq!(
        local.all_heads() + east.all_heads() + default.all_heads(),
        before
    );
    // AWS us-east-1 from the embedded ranges, in a prefix nested inside a GLOBAL one.
    let r = send("15.193.6.10", held.clone()).await;
    assert_eq!(
        r.location(),
        format!("{}/containers/images/{held}", east.base())
    );
    // An AWS region without a mirror, and a client in no cloud: the default mirror.
    for client in ["3.4.12.4", "198.51.100.7"] {
        let r = send(client, held.clone()).await;
        assert_eq!(
            r.location(),
            format!("{}/containers/images/{held}", default.base()),
            "{client}"
        );
    }
    let r = send("198.51.100.7", missing.clone()).await;
    assert_eq!(r.location(), format!("{UP}/pause/blobs/{missing}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_400_and_never_a_foreign_location() {
    let (gw, ..) = setup(false, "{}").await;
    let long = format!("/v2/{}/manifests/latest", "a".repeat(5000));
    let bad = [
        "/v2/../etc/manifests/x",
        "/v2/pause/../../x/manifests/latest",
        "/v2/./pause/manifests/latest",
        "/v2//pause/manifests/latest",
        "/v2/pause/manifests/latest/",
        "/v2/pause%2F..%2F..%2Fx/manifests/latest",
        "/v2/pause/%2e%2e/manifests/latest",
        "/v2/pause\\x/manifests/latest",
        long.as_str(),
    ];
    for target in bad {
        let r = gw.get(target).await;
        assert_eq!(r.status, 400, "{target}");
        assert_eq!(r.oci_code(), "NAME_INVALID", "{target}");
    }
    let r = gw.get("/privacy/../x").await;
    assert_eq!(r.status, 400);

    let blob = format!("/v2/pause/blobs/{}", digest(3));
    for xff in [
        "203.0.113.1",
        "not-an-ip, 10.0.0.1",
        "fe80::1%eth0, 10.0.0.1",
    ] {
        let r = gw.send("GET", &blob, &[("X-Forwarded-For", xff)]).await;
        assert_eq!(r.status, 400, "{xff}");
        let body = String::from_utf8(r.body.clone()).unwrap();
        assert!(body.contains("X-Forwarded-For"), "{body}");
    }

    // Not a repository name of the distribution grammar.
    let r = gw.get("/v2/@evil.example/manifests/latest").await;
    assert_eq!((r.status, r.oci_code().as_str()), (404, "NAME_INVALID"));
    for target in [
        "/v2/pause/manifests/latest?@evil.example/",
        "/v2/pause/manifests/latest?//evil.example",
    ] {
        let r = gw.get(target).await;
        assert_eq!(r.status, 307, "{target}");
        assert!(
            r.location().starts_with("http://upstream.test/"),
            "{target} -> {}",
            r.location()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mirror_answers_are_cached_per_url() {
    let (gw, local, ..) = setup(false, "{hit_ttl: 1h, miss_ttl: 1h}").await;
    let (held, missing) = (digest(4), digest(5));
    let held_path = format!("/containers/images/{held}");
    let missing_path = format!("/containers/images/{missing}");
    local.put(&held_path);
    for _ in 0..3 {
        assert_eq!(
            gw.get(&format!("/v2/a/blobs/{held}")).await.location(),
            format!("{}{held_path}", local.base())
        );
        assert_eq!(
            gw.get(&format!("/v2/b/blobs/{held}")).await.location(),
            format!("{}{held_path}", local.base())
        );
        assert!(gw
            .get(&format!("/v2/a/blobs/{missing}"))
            .await
            .location()
            .starts_with(UP));
    }
    assert_eq!(
        local.heads(&held_path),
        1,
        "one HEAD per URL, whatever the repository"
    );
    assert_eq!(local.heads(&missing_path), 1, "misses are cached too");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_concurrent_requests_for_a_cold_blob_share_one_head() {
    let (gw, local, ..) = setup(false, "{}").await;
    let d = digest(6);
    let path = format!("/containers/images/{d}");
    local.put(&path);
    local.set_delay(Duration::from_millis(300));
    let target = format!("/v2/pause/blobs/{d}");
    let tasks: Vec<_> = (0..1000)
        .map(|_| tokio::spawn(request(gw.addr, "GET", target.clone(), &[])))
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap().unwrap());
    }
    let want = format!("{}{path}", local.base());
    for r in &answers {
        assert_eq!((r.status, r.location()), (307, want.as_str()));
    }
    assert_eq!(local.heads(&path), 1);
    let m = gw.metrics().await;
    assert_eq!(blob_checks(&m, "present"), 1.0);
    assert_eq!(blob_checks(&m, "cache_hit"), 999.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn misses_expire_after_their_ttl_and_403_or_errors_are_misses() {
    let (gw, local, ..) = setup(false, "{miss_ttl: 1s, hit_ttl: 1h, timeout: 2s}").await;
    let d = digest(7);
    let path = format!("/containers/images/{d}");
    let target = format!("/v2/pause/blobs/{d}");
    assert!(gw.get(&target).await.location().starts_with(UP));
    local.put(&path);
    assert!(
        gw.get(&target).await.location().starts_with(UP),
        "the miss is still cached"
    );
    assert_eq!(local.heads(&path), 1);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        gw.get(&target).await.location(),
        format!("{}{path}", local.base())
    );
    assert_eq!(local.heads(&path), 2);

    // S3 answers 403 for a missing key without list permission: a miss, never a target.
    let d = digest(8);
    local.set_status(&format!("/containers/images/{d}"), 403);
    assert!(gw
        .get(&format!("/v2/pause/blobs/{d}"))
        .await
        .location()
        .starts_with(UP));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_mirror_counts_as_absent() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let keys = format!(
        "  upstream: {{endpoints: ['http://upstream.test'], path: prefix/images}}
  mirrors: {{default: '{dead}', replace_regions: true, regions: {{}}}}
  ranges: {{embedded: false}}
  blob_check: {{timeout: 1s}}"
    );
    let gw = Gateway::start(&keys).await;
    let d = digest(9);
    let r = gw.get(&format!("/v2/pause/blobs/{d}")).await;
    assert_eq!(
        (r.status, r.location()),
        (307, format!("{UP}/pause/blobs/{d}").as_str())
    );
    let m = gw.metrics().await;
    assert_eq!(blob_checks(&m, "error"), 1.0);
    assert!(
        gw.log().contains("mirror check HEAD"),
        "the failure is logged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_mirror_is_skipped_until_one_probe_finds_it_back() {
    let (gw, local, ..) = setup(
        false,
        "{timeout: 2s, miss_ttl: 1h, breaker: {failures: 3, cool_down: 1s}}",
    )
    .await;
    let host = local.addr.to_string();
    local.set_default_status(503);
    let blob = |n: u8| format!("/v2/pause/blobs/{}", digest(n));
    for n in 1..=3 {
        let r = gw.get(&blob(n)).await;
        assert_eq!(
            (r.status, r.location()),
            (307, format!("{UP}/pause/blobs/{}", digest(n)).as_str())
        );
    }
    assert_eq!(local.all_heads(), 3);
    let m = gw.metrics().await;
    assert_eq!(
        sample(
            &m,
            &format!("archeio_mirror_breaker_open{{host=\"{host}\"}}")
        ),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            &format!("archeio_mirror_breaker_opens_total{{host=\"{host}\"}}")
        ),
        1.0
    );

    // Open: no more checks, every client still gets a redirect upstream.
    for n in 4..=23 {
        let r = gw.get(&blob(n)).await;
        assert!(r.location().starts_with(UP), "{r:?}");
    }
    assert_eq!(local.all_heads(), 3);
    let m = gw.metrics().await;
    assert_eq!(blob_checks(&m, "skipped"), 20.0);
    assert!(
        gw.log().contains(&format!("mirror {host} is failing")),
        "{}",
        gw.log()
    );

    // After the cool-down one request probes; the mirror is back, so checks resume.
    local.set_default_status(404);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    local.put(&format!("/containers/images/{}", digest(24)));
    let r = gw.get(&blob(24)).await;
    assert_eq!(
        r.location(),
        format!("{}/containers/images/{}", local.base(), digest(24))
    );
    assert_eq!(local.all_heads(), 4);
    gw.get(&blob(25)).await;
    assert_eq!(local.all_heads(), 5);
    let m = gw.metrics().await;
    assert_eq!(
        sample(
            &m,
            &format!("archeio_mirror_breaker_open{{host=\"{host}\"}}")
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_black_holed_mirror_stops_costing_a_timeout_per_blob() {
    let hole = BlackHole::start().await;
    let keys = format!(
        "  upstream: {{endpoints: ['http://upstream.test'], path: prefix/images}}
  mirrors: {{default: 'http://{}', replace_regions: true, regions: {{}}}}
  ranges: {{embedded: false}}
  blob_check: {{timeout: 300ms, breaker: {{failures: 2, cool_down: 1h}}}}",
        hole.addr
    );
    let gw = Gateway::start(&keys).await;
    for n in 1..=40 {
        let d = digest(n);
        let r = gw.get(&format!("/v2/pause/blobs/{d}")).await;
        assert_eq!(
            (r.status, r.location()),
            (307, format!("{UP}/pause/blobs/{d}").as_str())
        );
    }
    // Two timed-out checks opened the breaker; the other 38 blobs were not checked.
    let m = gw.metrics().await;
    assert_eq!(blob_checks(&m, "error"), 2.0);
    assert_eq!(blob_checks(&m, "skipped"), 38.0);
    assert!(hole.accepted() <= 2, "{} connections", hole.accepted());
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_health_and_readiness() {
    let (gw, local, ..) = setup(true, "{}").await;
    let before = gw.metrics().await;
    assert!(sample(&before, r#"archeio_ip_prefixes{family="ipv4"}"#) > 5000.0);
    assert!(sample(&before, r#"archeio_ip_prefixes{family="ipv6"}"#) > 2000.0);
    assert_eq!(
        sample(
            &before,
            r#"archeio_build_info{revision="unknown",version="0.1.0"}"#
        ),
        1.0
    );

    let d = digest(10);
    local.put(&format!("/containers/images/{d}"));
    gw.get("/v2/pause/manifests/latest").await;
    gw.get(&format!("/v2/pause/blobs/{d}")).await;
    gw.get(&format!("/v2/pause/blobs/{d}")).await;
    gw.get("/v2/../x").await;

    let after = gw.metrics().await;
    let delta = |series: &str| sample(&after, series) - sample(&before, series);
    assert_eq!(
        delta(r#"archeio_requests_total{route="upstream",status="307"}"#),
        1.0
    );
    assert_eq!(
        delta(r#"archeio_requests_total{route="blob",status="307"}"#),
        2.0
    );
    assert_eq!(
        delta(r#"archeio_requests_total{route="invalid",status="400"}"#),
        1.0
    );
    assert_eq!(
        delta(r#"archeio_redirects_total{mirror="",target="upstream"}"#),
        1.0
    );
    assert_eq!(
        delta(r#"archeio_redirects_total{mirror="local-1",target="mirror"}"#),
        2.0
    );
    assert_eq!(
        delta(r#"archeio_blob_checks_total{mirror="local-1",outcome="present"}"#),
        1.0
    );
    assert_eq!(
        delta(r#"archeio_blob_checks_total{mirror="local-1",outcome="cache_hit"}"#),
        1.0
    );
    assert_eq!(delta("archeio_mirror_head_duration_seconds_count"), 1.0);
    assert!(delta(r#"archeio_request_duration_seconds_count{route="blob"}"#) >= 2.0);

    for (path, status) in [("/healthz", 200), ("/readyz", 200), ("/nope", 404)] {
        assert_eq!(
            request(gw.admin, "GET", path, &[]).await.unwrap().status,
            status,
            "{path}"
        );
    }
    // One access-log line per request, with its decision.
    let log = gw.log();
    assert!(
        log.contains(
            "GET /v2/pause/manifests/latest client=127.0.0.1 decision=upstream/upstream status=307"
        ),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn shipped_config_with_port_variables() {
    let gw = Gateway::start_with_env(&["-c", "conf/archeio.yaml"], &[]).await;
    let r = gw.get("/v2/pause/manifests/latest").await;
    assert_eq!(
        r.location(),
        "https://us-central1-docker.pkg.dev/v2/k8s-artifacts-prod/images/pause/manifests/latest"
    );
    let r = gw.get("/").await;
    assert_eq!(
        r.location(),
        "https://github.com/kubernetes/registry.k8s.io"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn environment_variables_alone() {
    let mirror = Mirror::start().await;
    let d = digest(11);
    mirror.put(&format!("/containers/images/{d}"));
    let m = mirror.base();
    let gw = Gateway::start_with_env(
        &[],
        &[
            ("UPSTREAM_REGISTRY_ENDPOINT", "http://reg.test:5000"),
            ("UPSTREAM_REGISTRY_PATH", "mirror/k8s"),
            ("SIGNATURE_UPSTREAM_ENDPOINT", "http://sig.test"),
            ("DEFAULT_AWS_BASE_URL", &m),
        ],
    )
    .await;
    let r = gw.get("/v2/pause/tags/list").await;
    assert_eq!(
        r.location(),
        "http://reg.test:5000/v2/mirror/k8s/pause/tags/list"
    );
    let r = gw
        .get(&format!("/v2/pause/manifests/sha256-{HEX}.sig"))
        .await;
    assert_eq!(
        r.location(),
        format!("http://sig.test/v2/mirror/k8s/pause/manifests/sha256-{HEX}.sig")
    );
    // Loopback is in no cloud: the default mirror, which holds the blob.
    let r = gw.get(&format!("/v2/pause/blobs/{d}")).await;
    assert_eq!(r.location(), format!("{m}/containers/images/{d}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn ipv6_listener_and_ipv6_clients() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: no IPv6 loopback on this machine");
        return;
    }
    let mirror = Mirror::start().await;
    let d = digest(12);
    mirror.put(&format!("/containers/images/{d}"));
    let port6 = std::net::TcpListener::bind("[::1]:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let keys = format!(
        "  mirrors: {{default: 'http://127.0.0.1:{}', replace_regions: true, regions: {{v6-1: '{}'}}}}
  ranges: {{embedded: false, custom: [{{cidr: '::1/128', cloud: aws, region: v6-1}}]}}
  client_address: {{trusted_proxies: ['127.0.0.1/32']}}",
        free_port(),
        mirror.base()
    );
    let gw = Gateway::start_with_listen(&[&format!("[::1]:{port6}")], &keys).await;
    let v6: std::net::SocketAddr = format!("[::1]:{port6}").parse().unwrap();
    let r = request(v6, "GET", &format!("/v2/pause/blobs/{d}"), &[])
        .await
        .unwrap();
    assert_eq!(
        r.location(),
        format!("{}/containers/images/{d}", mirror.base())
    );
    // The same request over IPv4 is from no cloud: the default mirror, which is down, so
    // the upstream.
    let r = gw.get(&format!("/v2/pause/blobs/{d}")).await;
    assert!(
        r.location()
            .starts_with("https://us-central1-docker.pkg.dev/"),
        "{}",
        r.location()
    );
    // An IPv6 client named in X-Forwarded-For.
    let r = gw
        .send(
            "GET",
            &format!("/v2/pause/blobs/{d}"),
            &[("X-Forwarded-For", "::1")],
        )
        .await;
    assert_eq!(
        r.location(),
        format!("{}/containers/images/{d}", mirror.base())
    );
}

#[test]
fn config_test_flag_checks_our_section_too() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let mut cmd = std::process::Command::new(BINARY);
        for var in archeio::config::ENV_VARS {
            cmd.env_remove(var);
        }
        let out = cmd.args(args).current_dir(repo_file("")).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, _) = run(&["-t", "-c", "conf/archeio.yaml"]);
    assert_eq!(code, Some(0));

    let cases = [
        (
            "archeio:\n  blob_check:\n    hit_ttl: forever\n",
            "archeio.blob_check.hit_ttl",
        ),
        (
            "archeio:\n  upstream:\n    endpoints: [not a url]\n",
            "archeio.upstream.endpoints[0]",
        ),
        ("archeio:\n  listn: []\n", "unknown field `listn`"),
        (
            "archeio:\n  ranges: {aws_files: [/nonexistent/ip-ranges.json]}\n",
            "/nonexistent/ip-ranges.json",
        ),
        ("threads: many\n", "threads"),
        (
            "archeio:\n  mode: passthrough\n  upstream:\n    credentials: {username: u, password_env: ARCHEIO_TEST_UNSET}\n",
            "archeio.upstream.credentials.password_env: environment variable ARCHEIO_TEST_UNSET is not set",
        ),
        (
            "archeio:\n  blob_check: {breaker: {failures: 0}}\n",
            "archeio.blob_check.breaker.failures: must be at least 1",
        ),
        (
            "archeio:\n  client_timeouts: {idle: 500ms}\n",
            "archeio.client_timeouts.idle: must be at least 1s",
        ),
        (
            "archeio:\n  ranges: {min_prefix_ratio: 1.5}\n",
            "archeio.ranges.min_prefix_ratio: expected a fraction between 0 and 1",
        ),
        (
            "archeio:\n  upstream: {ca_file: /proc/version}\n",
            "archeio.upstream.ca_file: expected PEM certificates",
        ),
    ];
    for (i, (yaml, key)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        let (code, stderr) = run(&["-t", "-c", path.to_str().unwrap()]);
        assert_eq!(code, Some(2), "{yaml}: {stderr}");
        assert!(stderr.contains(path.to_str().unwrap()), "{yaml}: {stderr}");
        assert!(stderr.contains(key), "{yaml}: {stderr}");
    }
    let (code, stderr) = run(&["-t", "-c", "/nonexistent/archeio.yaml"]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("/nonexistent/archeio.yaml: cannot read"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_upgrade_loses_no_request() {
    let mut old = Gateway::start("  ranges: {embedded: false}").await;
    let conf = old.dir.path().join("archeio.yaml");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (addr, stop) = (old.addr, stop.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match request(addr, "GET", "/v2/pause/manifests/latest", &[]).await {
                    Ok(r) if r.status == 307 => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
            }
            (ok, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The new process waits on upgrade_sock for the old one's listening sockets.
    let new_dir = tempfile::tempdir().unwrap();
    let mut new = command(&["-u", "-c", conf.to_str().unwrap()], &[], new_dir.path())
        .spawn()
        .unwrap();
    // Only signal the old process once the new one listens on the upgrade socket.
    let sock = old.dir.path().join("upgrade.sock");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !sock.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no upgrade socket from the new process"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = old.pid();
    assert!(std::process::Command::new("kill")
        .args(["-QUIT", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    // Pingora keeps the old process 5 s after handing the sockets over, then drains it
    // (grace period 1 s, shutdown timeout 1 s in the test configuration).
    assert!(
        old.exited_within(Duration::from_secs(15)).await,
        "the old process exits"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.await.unwrap();
    let served_by_new = request(old.addr, "GET", "/v2/", &[]).await;
    let _ = new.kill();
    let _ = new.wait();
    assert!(
        failed.is_empty(),
        "{} failed of {}: {:?}",
        failed.len(),
        ok,
        &failed[..failed.len().min(3)]
    );
    assert!(ok > 100, "only {ok} requests during the upgrade");
    // Issue 26: a normal upgrade is not an error, and the in-flight window is not called
    // a grace period that starts seconds after the signal.
    let new_log = std::fs::read_to_string(new_dir.path().join("stderr.log")).unwrap();
    assert!(!new_log.contains(" ERROR "), "{new_log}");
    assert!(!old.log().contains("grace period"), "{}", old.log());
    assert_eq!(
        served_by_new
            .expect("the port answers after the old process exited")
            .status,
        200
    );
}

/// Issue 12, item 7: a cached "present" answer does not send clients to a mirror host whose
/// breaker is open.
#[tokio::test(flavor = "multi_thread")]
async fn an_open_breaker_overrides_cached_present_answers() {
    let (gw, local, ..) = setup(
        false,
        "{timeout: 2s, hit_ttl: 1h, miss_ttl: 1h, breaker: {failures: 3, cool_down: 1h}}",
    )
    .await;
    let held = digest(40);
    let path = format!("/containers/images/{held}");
    local.put(&path);
    let target = format!("/v2/pause/blobs/{held}");
    assert_eq!(
        gw.get(&target).await.location(),
        format!("{}{path}", local.base())
    );
    // The host starts failing; three failed checks open its breaker.
    local.set_default_status(503);
    for n in 41..=43 {
        gw.get(&format!("/v2/pause/blobs/{}", digest(n))).await;
    }
    let m = gw.metrics().await;
    let host = local.addr.to_string();
    assert_eq!(
        sample(
            &m,
            &format!("archeio_mirror_breaker_open{{host=\"{host}\"}}")
        ),
        1.0
    );
    let r = gw.get(&target).await;
    assert_eq!(
        (r.status, r.location()),
        (307, format!("{UP}/pause/blobs/{held}").as_str()),
        "a failing mirror got a client from the cache"
    );
}

/// Issue 12, item 8: the mirror check does not follow redirects; a 3xx is "absent", logged
/// once while the miss is cached.
#[tokio::test(flavor = "multi_thread")]
async fn a_redirect_to_the_mirror_check_counts_as_absent() {
    let other = Mirror::start().await;
    let d = digest(50);
    let path = format!("/containers/images/{d}");
    other.put(&path);
    let elsewhere = format!("{}{path}", other.base());
    let mirror = common::fake::FakeServer::start(move |_| {
        common::fake::Canned::new(302).header("location", elsewhere.clone())
    })
    .await;
    let keys = format!(
        "  upstream: {{endpoints: ['http://upstream.test'], path: prefix/images}}
  mirrors: {{default: '{}', replace_regions: true, regions: {{}}}}
  ranges: {{embedded: false}}
  blob_check: {{timeout: 2s, miss_ttl: 1h}}",
        mirror.url()
    );
    let gw = Gateway::start(&keys).await;
    for _ in 0..2 {
        let r = gw.get(&format!("/v2/pause/blobs/{d}")).await;
        assert_eq!(
            (r.status, r.location()),
            (307, format!("{UP}/pause/blobs/{d}").as_str())
        );
    }
    assert_eq!(other.heads(&path), 0, "the check followed the redirect");
    let m = gw.metrics().await;
    assert_eq!(blob_checks(&m, "absent"), 1.0);
    let log = gw.log();
    assert_eq!(log.matches("redirect").count(), 1, "{log}");
}

/// Issue 12, item 11: a mirror answering 5xx to the check is an error (as the breaker
/// counts it), not an "absent" blob.
#[tokio::test(flavor = "multi_thread")]
async fn a_mirror_5xx_counts_as_an_error() {
    let (gw, local, ..) = setup(false, "{timeout: 2s, miss_ttl: 1h}").await;
    local.set_default_status(500);
    let r = gw.get(&format!("/v2/pause/blobs/{}", digest(60))).await;
    assert!(r.location().starts_with(UP), "{r:?}");
    let m = gw.metrics().await;
    assert_eq!(blob_checks(&m, "error"), 1.0);
    assert_eq!(blob_checks(&m, "absent"), 0.0);
}

/// Issue 26: a client that goes away while its blob is streamed to it left an error-level
/// `Fail to proxy: Downstream ConnectionClosed` line; its access record says what happened.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_goes_away_mid_answer_is_not_an_error() {
    use tokio::io::AsyncWriteExt;
    let mirror = Mirror::start().await;
    // The test mirror's bodies are empty: the empty blob's digest, so that the gateway's
    // digest check passes them.
    let blob = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    mirror.put(&format!("/containers/images/{blob}"));
    let gw = Gateway::start(&format!(
        "  upstream: {{endpoints: ['http://upstream.test'], path: images}}
  ranges: {{embedded: false}}
  mirrors: {{named: {{m: {{url: '{}'}}}}}}
  policy: {{rules: [{{match: {{kind: blob}}, action: mirrors, mirrors: [m], delivery: proxy}}]}}",
        mirror.base()
    ))
    .await;
    let target = format!("/v2/app/blobs/{blob}");
    // The mirror's HEAD answer cached; the proxied GET then waits on the slow mirror.
    assert_eq!(gw.get(&target).await.status, 200);
    mirror.set_delay(Duration::from_millis(1500));
    let mut c = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    c.write_all(format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let log = gw.log();
    let aborted = log
        .lines()
        .filter(|l| l.contains("archeio::access") && l.contains(&target))
        .count();
    assert_eq!(aborted, 2, "both requests recorded:\n{log}");
    assert!(!log.contains(" ERROR "), "{log}");
}
