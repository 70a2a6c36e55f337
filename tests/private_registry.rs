//! A private registry behind the gateway (issue 24): blobs belong to repositories, so a
//! mirror serves a blob only to a request for a repository the upstream says holds it.
//! Real `docker-registry` upstreams on loopback, mirrors that hold every blob (as `archeio
//! sync` fills them), requests from the attacker's side.

mod common;

use common::fake::{Canned, FakeServer};
use common::registry::{images, sha256, Auth, Registry};
use common::token::TokenServer;
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
            assert_eq!(
                (r.status, r.location()),
                (307, at_mirror(&img.app_layer).as_str())
            );
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
            sample(
                &m,
                r#"archeio_repository_checks_total{outcome="cache_hit"}"#
            ),
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

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    let raw = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// `skopeo copy` of `image` through the gateway into a fresh OCI layout, with `creds`
/// (`user:password`) or none: whether it succeeded, and its error output.
fn skopeo_pull(gw: &Gateway, image: &str, creds: Option<&str>) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec![
        "copy".to_string(),
        "--quiet".into(),
        "--retry-times=0".into(),
        "--src-tls-verify=false".into(),
    ];
    if let Some(c) = creds {
        args.push(format!("--src-creds={c}"));
    } else {
        args.push("--src-no-creds".into());
    }
    args.push(format!("docker://{}/{image}", gw.addr));
    args.push(format!("oci:{}:x", dir.path().display()));
    let out = std::process::Command::new("skopeo")
        .args(&args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A mirror holding the blobs `digests` with their real bytes (from the test registry's
/// storage), as `archeio sync` would have filled it; `404` for any other.
async fn filled_mirror(digests: &[&String]) -> FakeServer {
    let storage = images().storage.join("docker/registry/v2/blobs/sha256");
    let held: Vec<String> = digests.iter().map(|d| d.to_string()).collect();
    FakeServer::start(move |seen| {
        let digest = seen
            .target
            .strip_prefix("/containers/images/")
            .unwrap_or("");
        let hex = digest.strip_prefix("sha256:").unwrap_or("");
        if !held.iter().any(|d| d == digest) || hex.len() < 2 {
            return Canned::new(404);
        }
        let bytes = std::fs::read(storage.join(&hex[..2]).join(hex).join("data")).unwrap();
        Canned::new(200).body(bytes)
    })
    .await
}

/// A redirect-mode gateway with `client_auth: relay` in front of `upstream` (path prefix
/// `test`), blobs to the mirror at `mirror`.
async fn relay_gateway(upstream: &str, mirror: &str) -> Gateway {
    Gateway::start(&format!(
        "  upstream: {{endpoints: ['{upstream}'], path: test}}
  client_auth: {{mode: relay, public_url: 'http://{{gateway}}'}}
  mirrors: {{default: '{mirror}', replace_regions: true, regions: {{local-1: '{mirror}'}}}}
  ranges: {{embedded: false}}
  policy:
    rules:
      - {{name: blobs, match: {{kind: blob}}, action: mirrors, mirrors: [default]}}",
    ))
    .await
}

/// The test images behind htpasswd: user robot, password s3cret.
fn robot_registry() -> Registry {
    let auth = Auth::Basic {
        user: "robot".into(),
        password: "s3cret".into(),
    };
    Registry::start(&images().storage, None, auth)
}

/// Issue 24, defect 2: a registry behind htpasswd. Each client authenticates with its own
/// credentials, relayed to the upstream; a blob goes to the mirror only after the upstream
/// let that client read it.
#[tokio::test(flavor = "multi_thread")]
async fn relay_sends_each_client_s_own_credentials_to_a_basic_auth_upstream() {
    let img = images();
    let reg = robot_registry();
    let mirror = filled_mirror(&[&img.app_layer, &img.app_config]).await;
    let gw = relay_gateway(&reg.url(false), &mirror.url()).await;
    let good = basic("robot", "s3cret");
    let wrong = basic("robot", "guess");

    // No credentials: the upstream's challenge, so clients authenticate.
    let r = gw.get("/v2/").await;
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.header("www-authenticate").unwrap().starts_with("Basic"));
    let manifest = "/v2/app/manifests/v1";
    let blob = format!("/v2/app/blobs/{}", img.app_layer);
    for target in [manifest, blob.as_str()] {
        for auth in [None, Some(wrong.as_str())] {
            let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", *a)).collect();
            let r = gw.send("GET", target, &headers).await;
            assert_eq!(r.status, 401, "{target} with {auth:?}: {r:?}");
            assert!(r.header("location").is_none());
        }
    }

    // The right credentials: the manifest from the upstream, the blob from the mirror.
    let r = gw.send("GET", "/v2/", &[("Authorization", &good)]).await;
    assert_eq!(r.status, 200);
    let r = gw
        .send(
            "GET",
            manifest,
            &[("Authorization", &good), ("Accept", OCI_MANIFEST)],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(sha256(&r.body), img.app_manifest);
    let r = gw.send("GET", &blob, &[("Authorization", &good)]).await;
    let at_mirror = format!("{}/containers/images/{}", mirror.url(), img.app_layer);
    assert_eq!((r.status, r.location()), (307, at_mirror.as_str()));
    // The attacker's side: robot's authorization is cached now, but only for robot. Another
    // credential, or none, for the same blob is still asked of the upstream and refused.
    let other = basic("robot", "s3cret-but-not-quite");
    for headers in [vec![("Authorization", other.as_str())], vec![]] {
        let r = gw.send("GET", &blob, &headers).await;
        assert_eq!(r.status, 401, "{headers:?}: {r:?}");
        assert!(r.header("location").is_none());
    }

    // Real clients: with credentials they pull, without or with wrong ones they do not.
    let (ok, err) = skopeo_pull(&gw, "app:v1", Some("robot:s3cret"));
    assert!(ok, "{err}\n{}", gw.log());
    let layer_get = |m: &FakeServer| {
        let path = format!("/containers/images/{}", img.app_layer);
        m.seen()
            .iter()
            .filter(|s| s.method == "GET" && s.target == path)
            .count()
    };
    assert_eq!(
        layer_get(&mirror),
        1,
        "skopeo got the layer from the mirror"
    );
    for creds in [None, Some("robot:guess")] {
        let (ok, err) = skopeo_pull(&gw, "app:v1", creds);
        assert!(!ok, "{creds:?} pulled");
        assert!(err.contains("401") || err.contains("unauthorized"), "{err}");
    }
    // The client's password never reaches the log.
    assert!(!gw.log().contains("s3cret"));
}

/// Issue 24, defects 1 and 2 with a token-auth upstream whose token service grants per
/// repository: alice may read `test/app` only. The gateway's `/token` relays her token
/// requests (scopes in the upstream's path space); her token reads `app`, never `multi`,
/// not even `multi`'s blob asked for under `app`.
#[tokio::test(flavor = "multi_thread")]
async fn relay_lets_each_user_read_only_the_repositories_the_token_service_grants() {
    let img = images();
    let tokens = TokenServer::with_grants(&[
        ("alice", "alice-pw", &["test/app"]),
        ("bob", "bob-pw", &[""]),
    ])
    .await;
    let reg = Registry::start(
        &img.storage,
        None,
        Auth::Token {
            realm: format!("http://{}/token", tokens.addr),
            service: "test-registry".into(),
            issuer: "test-issuer".into(),
            cert_pem: tokens.cert_pem.clone(),
        },
    );
    let secret = &img.multi_layers[0];
    let mirror = filled_mirror(&[&img.app_layer, &img.app_config, secret]).await;
    let gw = relay_gateway(&reg.url(false), &mirror.url()).await;

    // The challenge names the gateway's token endpoint, not the unreachable realm.
    let r = gw.get("/v2/").await;
    assert_eq!(r.status, 401);
    let challenge = r.header("www-authenticate").unwrap();
    assert!(
        challenge.starts_with(&format!("Bearer realm=\"http://{}/token\"", gw.addr)),
        "{challenge}"
    );
    assert!(
        challenge.contains("service=\"test-registry\""),
        "{challenge}"
    );

    // A token for `app`, asked in the client's name space, fetched in the upstream's.
    let token = |user: &str, pw: &str, repo: &str| {
        let gw_addr = gw.addr;
        let auth = basic(user, pw);
        let repo = repo.to_string();
        async move {
            let r = request(
                gw_addr,
                "GET",
                &format!("/token?service=test-registry&scope=repository:{repo}:pull"),
                &[("Authorization", &auth)],
            )
            .await
            .unwrap();
            (r.status, r.body)
        }
    };
    let (status, body) = token("alice", "wrong", "app").await;
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));
    let (status, body) = token("alice", "alice-pw", "app").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    // Both requests went to the token service in its own names.
    assert_eq!(tokens.count("repository:test/app:pull"), 2);
    assert_eq!(tokens.count("repository:app:pull"), 0);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let bearer = format!("Bearer {}", json["token"].as_str().unwrap());

    let at_mirror = |d: &str| format!("{}/containers/images/{d}", mirror.url());
    let r = gw
        .send(
            "GET",
            "/v2/app/manifests/v1",
            &[("Authorization", &bearer), ("Accept", OCI_MANIFEST)],
        )
        .await;
    assert_eq!(sha256(&r.body), img.app_manifest, "{r:?}");
    let r = gw
        .send(
            "GET",
            &format!("/v2/app/blobs/{}", img.app_layer),
            &[("Authorization", &bearer)],
        )
        .await;
    assert_eq!(
        (r.status, r.location()),
        (307, at_mirror(&img.app_layer).as_str())
    );

    // The attacker's side: her token on the other repository, and the other repository's
    // layer under the name she may read. Neither reaches the mirror's copy.
    for target in [
        format!("/v2/multi/blobs/{secret}"),
        format!("/v2/app/blobs/{secret}"),
        "/v2/multi/manifests/v1".to_string(),
    ] {
        let r = gw.send("GET", &target, &[("Authorization", &bearer)]).await;
        assert!(matches!(r.status, 401 | 403 | 404), "{target}: {r:?}");
        assert!(r.header("location").is_none(), "{target}: {r:?}");
        assert!(r.body.is_empty() || r.body.len() < 1000, "{target}");
    }
    // A 401 for a repository names the client's scope, not the upstream's.
    let r = gw.get("/v2/multi/manifests/v1").await;
    let challenge = r.header("www-authenticate").unwrap();
    assert!(
        challenge.contains("scope=\"repository:multi:pull\""),
        "{challenge}"
    );

    // Real clients through the token endpoint: alice pulls app, not multi; bob pulls multi.
    let (ok, err) = skopeo_pull(&gw, "app:v1", Some("alice:alice-pw"));
    assert!(ok, "{err}\n{}", gw.log());
    let path = format!("/containers/images/{}", img.app_layer);
    assert!(mirror
        .seen()
        .iter()
        .any(|s| s.method == "GET" && s.target == path));
    let (ok, _) = skopeo_pull(&gw, "multi:v1", Some("alice:alice-pw"));
    assert!(!ok, "alice pulled multi");
    let (ok, err) = skopeo_pull(&gw, "app:v1", None);
    assert!(
        !ok && (err.contains("401") || err.contains("unauthorized")),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--all",
            "--src-tls-verify=false",
            "--src-creds=bob:bob-pw",
            &format!("docker://{}/multi:v1", gw.addr),
            &format!("oci:{}:x", dir.path().display()),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let m = gw.metrics().await;
    assert!(sample(&m, r#"archeio_repository_checks_total{outcome="not_held"}"#) >= 2.0);
    let log = gw.log();
    assert!(!log.contains("alice-pw") && !log.contains(&bearer[7..]));
}

/// A gateway with `client_auth: local` in front of the Basic-auth `upstream` (read with the
/// gateway's own account, robot), users from `htpasswd`, blobs to the mirror at `mirror`.
async fn local_gateway(upstream: &str, mirror: &str, dir: &std::path::Path) -> Gateway {
    let password = dir.join("robot-password");
    std::fs::write(&password, "s3cret\n").unwrap();
    let htpasswd = dir.join("htpasswd");
    let mut users = String::new();
    for (user, pw) in [("alice", "alice-pw"), ("bob", "bob-pw")] {
        users.push_str(&format!("{user}:{}\n", bcrypt::hash(pw, 4).unwrap()));
    }
    std::fs::write(&htpasswd, users).unwrap();
    Gateway::start(&format!(
        "  upstream:
    endpoints: ['{upstream}']
    path: test
    credentials: {{username: robot, password_file: '{password}'}}
  client_auth:
    mode: local
    public_url: 'http://{{gateway}}'
    htpasswd_file: '{htpasswd}'
    users: {{alice: [app], bob: ['**']}}
  mirrors: {{default: '{mirror}', replace_regions: true, regions: {{local-1: '{mirror}'}}}}
  ranges: {{embedded: false}}
  policy:
    rules:
      - {{name: blobs, match: {{kind: blob}}, action: mirrors, mirrors: [default]}}",
        password = password.display(),
        htpasswd = htpasswd.display(),
    ))
    .await
}

/// Issue 24, defects 1 and 2 with `client_auth: local`: the gateway checks its clients
/// itself (htpasswd, Basic or its own tokens, per-user repositories) and reads the upstream
/// with its own account; nobody reads anonymously, alice reads `app` and nothing else.
#[tokio::test(flavor = "multi_thread")]
async fn local_mode_lets_each_user_read_only_its_repositories() {
    let img = images();
    let reg = robot_registry();
    let secret = &img.multi_layers[0];
    let mirror = filled_mirror(&[&img.app_layer, &img.app_config, secret]).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = local_gateway(&reg.url(false), &mirror.url(), dir.path()).await;
    let alice = basic("alice", "alice-pw");

    // Nobody reads anonymously or with a wrong password; the challenge names the gateway.
    let r = gw.get("/v2/").await;
    assert_eq!(r.status, 401);
    // Spelled as registered, though the gateway builds its answers without a case map.
    assert!(
        r.headers.iter().any(|(k, _)| k == "WWW-Authenticate"),
        "{r:?}"
    );
    let challenge = r.header("www-authenticate").unwrap().to_string();
    assert!(
        challenge.starts_with(&format!("Bearer realm=\"http://{}/token\"", gw.addr)),
        "{challenge}"
    );
    for auth in [
        None,
        Some(basic("alice", "guess")),
        Some(basic("mallory", "x")),
    ] {
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        for target in ["/v2/", "/v2/app/manifests/v1"] {
            let r = gw.send("GET", target, &headers).await;
            assert_eq!(
                (r.status, r.oci_code().as_str()),
                (401, "UNAUTHORIZED"),
                "{target} {auth:?}"
            );
        }
    }

    // Alice with Basic: app's manifest (read upstream with robot's account), not multi's.
    let r = gw.send("GET", "/v2/", &[("Authorization", &alice)]).await;
    assert_eq!(r.status, 200);
    let r = gw
        .send(
            "GET",
            "/v2/app/manifests/v1",
            &[("Authorization", &alice), ("Accept", OCI_MANIFEST)],
        )
        .await;
    assert_eq!((r.status, sha256(&r.body)), (200, img.app_manifest.clone()));
    let r = gw
        .send(
            "GET",
            "/v2/multi/manifests/v1",
            &[("Authorization", &alice)],
        )
        .await;
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("scope=\"repository:multi:pull\""));

    // Her token: scoped to what she asked for and may read.
    let token = |auth: String, scope: &'static str| {
        let addr = gw.addr;
        async move {
            let r = request(
                addr,
                "GET",
                &format!("/token?service=archeio&scope={scope}"),
                &[("Authorization", &auth)],
            )
            .await
            .unwrap();
            let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
            (
                r.status,
                json["token"].as_str().map(|t| format!("Bearer {t}")),
            )
        }
    };
    assert_eq!(
        token(basic("alice", "guess"), "repository:app:pull")
            .await
            .0,
        401
    );
    let (status, bearer) = token(alice.clone(), "repository:app:pull").await;
    assert_eq!(status, 200);
    let bearer = bearer.unwrap();
    let at_mirror = format!("{}/containers/images/{}", mirror.url(), img.app_layer);
    let r = gw
        .send(
            "GET",
            &format!("/v2/app/blobs/{}", img.app_layer),
            &[("Authorization", &bearer)],
        )
        .await;
    assert_eq!((r.status, r.location()), (307, at_mirror.as_str()));

    // The attacker's side: her token on multi, a token asked for multi, multi's layer under
    // app, and a token whose claims were edited.
    let (_, for_multi) = token(alice.clone(), "repository:multi:pull").await;
    let for_multi = for_multi.unwrap();
    let (payload, signature) = bearer[7..].split_once('.').unwrap();
    let forged = format!("Bearer {}x.{signature}", payload);
    for (target, auth) in [
        (format!("/v2/multi/blobs/{secret}"), &bearer),
        ("/v2/multi/manifests/v1".to_string(), &bearer),
        (format!("/v2/multi/blobs/{secret}"), &for_multi),
        (format!("/v2/app/blobs/{}", img.app_layer), &forged),
    ] {
        let r = gw.send("GET", &target, &[("Authorization", auth)]).await;
        assert_eq!(r.status, 401, "{target} with {auth}");
        assert!(r.header("location").is_none());
    }
    let r = gw
        .send(
            "GET",
            &format!("/v2/app/blobs/{secret}"),
            &[("Authorization", &bearer)],
        )
        .await;
    assert_eq!(r.status, 404, "multi's layer is not app's: {r:?}");

    // Real clients.
    let (ok, err) = skopeo_pull(&gw, "app:v1", Some("alice:alice-pw"));
    assert!(ok, "{err}\n{}", gw.log());
    let (ok, _) = skopeo_pull(&gw, "multi:v1", Some("alice:alice-pw"));
    assert!(!ok, "alice pulled multi");
    let (ok, _) = skopeo_pull(&gw, "app:v1", None);
    assert!(!ok, "anonymous pulled app");
    let (ok, err) = skopeo_pull(&gw, "docker:v1", Some("bob:bob-pw"));
    assert!(ok, "{err}");
    let log = gw.log();
    assert!(!log.contains("alice-pw") && !log.contains("s3cret") && !log.contains(&bearer[7..]));
}

/// The attacker's side of `/token`: an upstream whose challenge names a token realm on a
/// host nobody allowed gets no client credentials relayed there.
#[tokio::test(flavor = "multi_thread")]
async fn relay_sends_no_credentials_to_a_realm_nobody_allowed() {
    let realm =
        FakeServer::start_on("127.0.0.2", |_| Canned::new(200).body("{\"token\":\"t\"}")).await;
    let challenge = format!("Bearer realm=\"{}/token\",service=\"s\"", realm.url());
    let upstream =
        FakeServer::start(move |_| Canned::new(401).header("WWW-Authenticate", challenge.clone()))
            .await;
    let mirror = filled_mirror(&[]).await;
    let gw = relay_gateway(&upstream.url(), &mirror.url()).await;
    let r = request(
        gw.addr,
        "GET",
        "/token?service=s&scope=repository:app:pull",
        &[("Authorization", &basic("alice", "alice-pw"))],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 502, "{r:?}");
    assert!(
        realm.seen().is_empty(),
        "the realm was asked: {:?}",
        realm.seen().len()
    );
    assert!(gw.log().contains("auth_realm_hosts"), "{}", gw.log());
}
