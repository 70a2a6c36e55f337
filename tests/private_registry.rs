//! A private registry behind the gateway (issue 24): blobs belong to repositories, so a
//! mirror serves a blob only to a request for a repository the upstream says holds it.
//! Real `docker-registry` upstreams on loopback, mirrors that hold every blob (as `archeio
//! sync` fills them), requests from the attacker's side.

mod common;

use common::registry::{images, Auth, Registry};
use common::*;

/// A gateway in redirect mode in front of `upstream` (path prefix `test`), whose default
/// mirror is `mirror`, with `policy` (YAML lines under `policy:`).
async fn gateway(upstream: &str, mirror: &Mirror, policy: &str) -> Gateway {
    Gateway::start(&format!(
        "  upstream: {{endpoints: ['{upstream}'], path: test}}
  mirrors: {{default: '{m}', replace_regions: true, regions: {{local-1: '{m}'}}}}
  ranges: {{embedded: false}}
  policy:
{policy}",
        m = mirror.base(),
    ))
    .await
}

/// Issue 24, defect 3: with `deny` and `known_repositories`, a blob of a hidden repository
/// asked for under a served name went to the mirror's copy; the upstream refuses it.
#[tokio::test(flavor = "multi_thread")]
async fn a_blob_goes_to_a_mirror_only_under_a_repository_that_holds_it() {
    let img = images();
    let reg = Registry::start(&img.storage, None, Auth::None);
    let mirror = Mirror::start().await;
    let secret = &img.multi_layers[0];
    for digest in [&img.app_layer, secret] {
        mirror.put(&format!("/containers/images/{digest}"));
    }
    let upstream = reg.url(false);
    let at_mirror = |d: &str| format!("{}/containers/images/{d}", mirror.base());
    let at_upstream = |repo: &str, d: &str| format!("{upstream}/v2/test/{repo}/blobs/{d}");

    for policy in [
        "    rules:
      - {name: hidden, match: {repository: multi}, action: deny}
      - {name: blobs, match: {kind: blob}, action: mirrors, mirrors: [default]}",
        "    known_repositories: [app, docker]
    rules:
      - {name: blobs, match: {kind: blob}, action: mirrors, mirrors: [default]}",
    ] {
        let gw = gateway(&upstream, &mirror, policy).await;
        let asked = || reg.served("HEAD", &format!("/v2/test/app/blobs/{}", img.app_layer));
        let before = asked();
        // The served repository's own layer: the upstream confirms, the mirror serves it.
        let own = format!("/v2/app/blobs/{}", img.app_layer);
        for _ in 0..2 {
            let r = gw.get(&own).await;
            assert_eq!((r.status, r.location()), (307, at_mirror(&img.app_layer).as_str()));
        }
        assert_eq!(asked() - before, 1, "the upstream's answer is cached");

        // The hidden repository's layer under the served name: not the mirror's copy.
        let r = gw.get(&format!("/v2/app/blobs/{secret}")).await;
        assert_eq!(
            (r.status, r.location()),
            (307, at_upstream("app", secret).as_str()),
            "policy {policy}"
        );
        let followed = reqwest::get(r.location()).await.unwrap();
        assert_eq!(followed.status(), 404, "the upstream refuses it");

        // Under its own name it is not served at all.
        let r = gw.get(&format!("/v2/multi/blobs/{secret}")).await;
        assert_eq!((r.status, r.oci_code().as_str()), (404, "NAME_UNKNOWN"));

        let m = gw.metrics().await;
        assert_eq!(
            sample(&m, r#"archeio_repository_checks_total{outcome="held"}"#),
            1.0
        );
        assert_eq!(
            sample(&m, r#"archeio_repository_checks_total{outcome="not_held"}"#),
            1.0
        );
        assert_eq!(
            sample(&m, r#"archeio_repository_checks_total{outcome="cache_hit"}"#),
            1.0
        );
    }
    // No restriction: archeio's digest-only behaviour, with no upstream request.
    let before = reg.served("HEAD", &format!("/v2/test/app/blobs/{secret}"));
    let gw = gateway(
        &upstream,
        &mirror,
        "    rules:
      - {name: blobs, match: {kind: blob}, action: mirrors, mirrors: [default]}",
    )
    .await;
    let r = gw.get(&format!("/v2/app/blobs/{secret}")).await;
    assert_eq!((r.status, r.location()), (307, at_mirror(secret).as_str()));
    assert_eq!(
        reg.served("HEAD", &format!("/v2/test/app/blobs/{secret}")),
        before
    );
}
