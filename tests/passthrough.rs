//! Pass-through mode against a real upstream registry (Debian's `docker-registry`, filled by
//! `skopeo`) on loopback: proxied manifests, tags and blobs, the manifest cache, TLS with a
//! test CA, Basic and token auth, failover, and the error answers.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use common::registry::{images, sha256, Auth, Registry};
use common::token::TokenServer;
use common::*;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// A pass-through gateway in front of `endpoints` with the repository prefix `test`, whose
/// only mirror (for loopback clients) holds nothing unless told.
async fn gateway(endpoints: &[String], upstream_extra: &str) -> (Gateway, Mirror) {
    gateway_in_mode("passthrough", endpoints, upstream_extra).await
}

async fn gateway_in_mode(
    mode: &str,
    endpoints: &[String],
    upstream_extra: &str,
) -> (Gateway, Mirror) {
    let mirror = Mirror::start().await;
    let list: Vec<String> = endpoints.iter().map(|e| format!("'{e}'")).collect();
    let keys = format!(
        "  mode: {mode}
  upstream:
    endpoints: [{}]
    path: test
    timeouts: {{connect: 2s, read: 3s, total: 60s}}
    health_check: {{interval: 200ms, timeout: 1s, unhealthy_after: 1, healthy_after: 1}}
{upstream_extra}
  mirrors: {{default: '{m}', replace_regions: true, regions: {{local-1: '{m}'}}}}
  ranges: {{embedded: false, custom: [{{cidr: 127.0.0.0/8, cloud: aws, region: local-1}}]}}
  client_address: {{trusted_proxy_hops: 0}}",
        list.join(", "),
        m = mirror.base(),
    );
    (Gateway::start(&keys).await, mirror)
}

/// [`gateway`] for endpoints none of which will be healthy: the gateway is not ready.
async fn unready_gateway(endpoints: &[String]) -> Gateway {
    let list: Vec<String> = endpoints.iter().map(|e| format!("'{e}'")).collect();
    Gateway::start_unready(&format!(
        "  mode: passthrough
  upstream:
    endpoints: [{}]
    path: test
    timeouts: {{connect: 2s, read: 3s, total: 60s}}
    health_check: {{interval: 200ms, timeout: 1s, unhealthy_after: 1, healthy_after: 1}}
  ranges: {{embedded: false, custom: [{{cidr: 127.0.0.0/8, cloud: aws, region: local-1}}]}}
  client_address: {{trusted_proxy_hops: 0}}",
        list.join(", ")
    ))
    .await
}

fn assert_digest(r: &Resp, digest: &str) {
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(sha256(&r.body), digest);
    assert_eq!(r.header("docker-content-digest"), Some(digest));
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn manifests_tags_and_blobs_are_proxied_and_errors_pass_through() {
    let img = images();
    let reg = Registry::start(&img.storage, None, Auth::None);
    let (gw, mirror) = gateway(&[reg.url(false)], "").await;
    let accept = [("Accept", OCI_MANIFEST)];

    let r = gw.send("GET", "/v2/app/manifests/v1", &accept).await;
    assert_digest(&r, &img.app_manifest);
    assert_eq!(r.header("content-type"), Some(OCI_MANIFEST));
    let head = gw.send("HEAD", "/v2/app/manifests/v1", &accept).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(
        head.header("docker-content-digest"),
        Some(img.app_manifest.as_str())
    );
    let by_digest = format!("/v2/app/manifests/{}", img.app_manifest);
    assert_digest(
        &gw.send("GET", &by_digest, &accept).await,
        &img.app_manifest,
    );
    assert_eq!(gw.send("HEAD", &by_digest, &accept).await.status, 200);

    let r = gw
        .send("GET", "/v2/multi/manifests/v1", &[("Accept", OCI_INDEX)])
        .await;
    assert_digest(&r, &img.multi_index);
    assert_eq!(r.header("content-type"), Some(OCI_INDEX));
    for platform in &img.multi_platforms {
        let r = gw
            .send("GET", &format!("/v2/multi/manifests/{platform}"), &accept)
            .await;
        assert_digest(&r, platform);
    }

    let r = gw.get("/v2/app/tags/list").await;
    assert_eq!(r.status, 200);
    let tags: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        tags,
        serde_json::json!({"name": "test/app", "tags": ["v1"]})
    );

    // A blob the mirror lacks is streamed from the upstream; the mirror was still asked.
    let blob = format!("/v2/app/blobs/{}", img.app_layer);
    let r = gw.get(&blob).await;
    assert_digest(&r, &img.app_layer);
    assert!(r.body.len() > 600 * 1024);
    let mirror_path = format!("/containers/images/{}", img.app_layer);
    assert_eq!(mirror.heads(&mirror_path), 1);
    assert_eq!(
        reg.served("GET", &format!("/v2/test/app/blobs/{}", img.app_layer)),
        1
    );
    // A blob the mirror holds is still redirected there.
    let config_path = format!("/containers/images/{}", img.app_config);
    mirror.put(&config_path);
    let r = gw.get(&format!("/v2/app/blobs/{}", img.app_config)).await;
    assert_eq!(
        (r.status, r.location()),
        (307, format!("{}{config_path}", mirror.base()).as_str())
    );

    // Upstream 4xx answers come back as the upstream sent them.
    let r = gw.send("GET", "/v2/app/manifests/nope", &accept).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.oci_code(), "MANIFEST_UNKNOWN");
    let r = gw.get("/v2/nothing/tags/list").await;
    assert_eq!((r.status, r.oci_code().as_str()), (404, "NAME_UNKNOWN"));

    // The gateway still answers the API check itself, and the upstream saw prefixed paths.
    assert_eq!(gw.get("/v2/").await.status, 200);
    assert!(
        reg.served("GET", "/v2/test/app/manifests/v1") >= 1,
        "{}",
        reg.log()
    );
    let m = gw.metrics().await;
    let ep = format!("127.0.0.1:{}", reg.port);
    // Two HEADs were answered from the cache.
    assert_eq!(
        sample(
            &m,
            &format!("archeio_upstream_requests_total{{endpoint=\"{ep}\",status=\"200\"}}")
        ),
        7.0,
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            &format!("archeio_upstream_requests_total{{endpoint=\"{ep}\",status=\"404\"}}")
        ),
        2.0
    );
    assert_eq!(
        sample(
            &m,
            &format!("archeio_upstream_healthy{{endpoint=\"{ep}\"}}")
        ),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            &format!("archeio_upstream_response_seconds_count{{endpoint=\"{ep}\"}}")
        ),
        9.0
    );
    assert_eq!(
        sample(&m, "archeio_manifest_cache_lookups_total{result=\"hit\"}"),
        2.0
    );
    assert!(gw.log().contains("decision=upstream/proxy"), "{}", gw.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_manifest_cache_spares_the_upstream_and_keys_on_accept() {
    let img = images();
    let reg = Registry::start(&img.storage, None, Auth::None);
    let (gw, _mirror) = gateway(&[reg.url(false)], "").await;

    let path = format!("/v2/app/manifests/{}", img.app_manifest);
    let upstream_path = format!("/v2/test/app/manifests/{}", img.app_manifest);
    let accept = [("Accept", OCI_MANIFEST)];
    for _ in 0..3 {
        assert_digest(&gw.send("GET", &path, &accept).await, &img.app_manifest);
    }
    let head = gw.send("HEAD", &path, &accept).await;
    assert_eq!(
        head.header("docker-content-digest"),
        Some(img.app_manifest.as_str())
    );
    assert_eq!(reg.served("GET", &upstream_path), 1, "{}", reg.log());
    assert_eq!(reg.served("HEAD", &upstream_path), 0);

    // A client that only reads Docker manifests must not get the OCI index another client
    // caused to be cached.
    let tag = "/v2/multi/manifests/v1";
    let upstream_tag = "/v2/test/multi/manifests/v1";
    let docker_only = [("Accept", DOCKER_MANIFEST)];
    let first = gw.send("GET", tag, &docker_only).await;
    assert_ne!(first.header("content-type"), Some(OCI_INDEX));
    let index = gw.send("GET", tag, &[("Accept", OCI_INDEX)]).await;
    assert_digest(&index, &img.multi_index);
    let again = gw.send("GET", tag, &docker_only).await;
    assert_eq!(again.status, first.status);
    assert_ne!(again.header("content-type"), Some(OCI_INDEX));
    assert_eq!(reg.served("GET", upstream_tag), 3);
    // The same Accept set in another order, case and line split is the same entry.
    let index = gw
        .send(
            "GET",
            tag,
            &[(
                "Accept",
                "*/*, application/vnd.oci.image.index.v1+json;q=0.9",
            )],
        )
        .await;
    assert_digest(&index, &img.multi_index);
    assert_eq!(reg.served("GET", upstream_tag), 4);
    let index = gw
        .send(
            "GET",
            tag,
            &[
                ("Accept", "Application/Vnd.OCI.Image.Index.v1+json"),
                ("Accept", "*/*"),
            ],
        )
        .await;
    assert_digest(&index, &img.multi_index);
    assert_eq!(reg.served("GET", upstream_tag), 4);

    let m = gw.metrics().await;
    assert_eq!(
        sample(&m, "archeio_manifest_cache_lookups_total{result=\"hit\"}"),
        4.0,
        "{m}"
    );
    assert!(sample(&m, "archeio_manifest_cache_bytes") > 0.0);
    assert!(gw.log().contains("decision=upstream/cache"));
}

/// A CA and a certificate for 127.0.0.1 signed by it: (CA PEM, leaf PEM, leaf key PEM).
fn test_ca() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "archeio test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf_params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf_params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    (ca_cert.pem(), leaf.pem(), leaf_key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_upstream_is_verified_with_the_configured_ca() {
    let img = images();
    let (ca, cert, key) = test_ca();
    let reg = Registry::start(&img.storage, Some((&cert, &key)), Auth::None);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();

    let (gw, _m) = gateway(
        &[reg.url(true)],
        &format!("    ca_file: {}", ca_file.display()),
    )
    .await;
    let r = gw
        .send("GET", "/v2/multi/manifests/v1", &[("Accept", OCI_INDEX)])
        .await;
    assert_digest(&r, &img.multi_index);
    let r = gw.get(&format!("/v2/app/blobs/{}", img.app_config)).await;
    assert_digest(&r, &img.app_config);

    // Without the CA the certificate is not trusted: no answer from that upstream.
    let untrusting = unready_gateway(&[reg.url(true)]).await;
    let r = untrusting
        .send("GET", "/v2/multi/manifests/v1", &[("Accept", OCI_INDEX)])
        .await;
    assert_eq!(
        (r.status, r.oci_code().as_str()),
        (502, "UNAVAILABLE"),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_auth_upstream_gets_the_configured_credentials() {
    let img = images();
    let reg = Registry::start(
        &img.storage,
        None,
        Auth::Basic {
            user: "puller".into(),
            password: "pa55word".into(),
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("password");
    std::fs::write(&pw, "pa55word\n").unwrap();
    let creds = format!(
        "    credentials: {{username: puller, password_file: {}}}\n  client_auth: {{mode: anonymous}}",
        pw.display()
    );
    let (gw, _m) = gateway(&[reg.url(false)], &creds).await;
    let accept = [("Accept", OCI_MANIFEST)];
    assert_digest(
        &gw.send("GET", "/v2/app/manifests/v1", &accept).await,
        &img.app_manifest,
    );
    assert_digest(
        &gw.get(&format!("/v2/app/blobs/{}", img.app_layer)).await,
        &img.app_layer,
    );
    assert!(!gw.log().contains("pa55word"));
    assert!(!gw.metrics().await.contains("pa55word"));

    // Without credentials the upstream's 401 reaches the client unchanged.
    let (anonymous, _m) = gateway(&[reg.url(false)], "").await;
    let r = anonymous.send("GET", "/v2/app/manifests/v1", &accept).await;
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").unwrap().starts_with("Basic"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_pulls_a_multi_arch_image_from_a_token_auth_upstream_it_cannot_reach() {
    let img = images();
    let tokens = TokenServer::start("puller", "t0ken-pass").await;
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
    // The registry itself refuses anonymous clients.
    let direct = request(
        ([127, 0, 0, 1], reg.port).into(),
        "GET",
        "/v2/test/multi/manifests/v1",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(direct.status, 401);

    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("password");
    std::fs::write(&pw, "t0ken-pass").unwrap();
    let creds = format!(
        "    credentials: {{username: puller, password_file: {}}}\n  client_auth: {{mode: anonymous}}",
        pw.display()
    );
    let (gw, _m) = gateway(&[reg.url(false)], &creds).await;

    // skopeo only knows the gateway, sends no credentials, and must get every platform.
    let out_dir = tempfile::tempdir().unwrap();
    let dest = format!("oci:{}:v1", out_dir.path().display());
    let src = format!("docker://{}/multi:v1", gw.addr);
    let out = std::process::Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--all",
            "--src-tls-verify=false",
            &src,
            &dest,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        gw.log()
    );
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.path().join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], img.multi_index.as_str());
    for platform in &img.multi_platforms {
        let hex = platform.trim_start_matches("sha256:");
        let bytes = std::fs::read(out_dir.path().join("blobs/sha256").join(hex)).unwrap();
        assert_eq!(&sha256(&bytes), platform);
    }

    // One token for the repository served every request (cached until it expires), and
    // the upstream challenged the gateway once, never the client.
    assert_eq!(tokens.count("repository:test/multi:pull"), 1);
    let m = gw.metrics().await;
    let ep = format!("127.0.0.1:{}", reg.port);
    assert_eq!(
        sample(
            &m,
            &format!("archeio_upstream_requests_total{{endpoint=\"{ep}\",status=\"401\"}}")
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "archeio_requests_total{route=\"upstream\",status=\"401\"}"
        ),
        0.0
    );
    assert!(!gw.log().contains("t0ken-pass"));

    // Another repository gets its own scope, learnt without a new challenge.
    let r = gw
        .send("GET", "/v2/app/manifests/v1", &[("Accept", OCI_MANIFEST)])
        .await;
    assert_digest(&r, &img.app_manifest);
    assert_eq!(tokens.count("repository:test/app:pull"), 1);
    let m = gw.metrics().await;
    assert_eq!(
        sample(
            &m,
            &format!("archeio_upstream_requests_total{{endpoint=\"{ep}\",status=\"401\"}}")
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn failover_to_the_next_endpoint_and_502_when_none_answers() {
    let img = images();
    let reg = Registry::start(&img.storage, None, Auth::None);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let (gw, _m) = gateway(&[dead.clone(), reg.url(false)], "").await;
    let accept = [("Accept", OCI_MANIFEST)];
    // The very first request may find the dead endpoint still marked healthy: it is retried
    // on the next one.
    assert_digest(
        &gw.send("GET", "/v2/app/manifests/v1", &accept).await,
        &img.app_manifest,
    );
    let head = gw.send("HEAD", "/v2/app/manifests/v1", &accept).await;
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("docker-content-digest"),
        Some(img.app_manifest.as_str())
    );
    let dead_label = dead.trim_start_matches("http://");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = gw.metrics().await;
        if sample(
            &m,
            &format!("archeio_upstream_healthy{{endpoint=\"{dead_label}\"}}"),
        ) == 0.0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dead endpoint never marked unhealthy:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let gw = unready_gateway(&[dead, format!("http://127.0.0.1:{}", free_port())]).await;
    let r = gw.send("GET", "/v2/app/manifests/v1", &accept).await;
    assert_eq!(
        (r.status, r.oci_code().as_str()),
        (502, "UNAVAILABLE"),
        "{r:?}"
    );
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    let r = gw.send("HEAD", "/v2/app/manifests/v1", &accept).await;
    assert_eq!(r.status, 502);
    assert!(r.body.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_that_never_answers_gives_504() {
    // Accepts connections and reads requests, never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let (gw, _m) = gateway(&[format!("http://{addr}")], "").await;
    let started = Instant::now();
    let r = gw.get("/v2/app/manifests/v1").await;
    assert_eq!(
        (r.status, r.oci_code().as_str()),
        (504, "UNAVAILABLE"),
        "{r:?}"
    );
    // Read timeout 3 s, GET retried at most on a reused connection: well under 10 s.
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_redirects_pass_untouched_and_hop_by_hop_headers_do_not() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // What the upstream saw of each manifest request: Host, path, Authorization present.
    let seen: Arc<Mutex<Vec<(String, String, bool)>>> = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let record = record.clone();
                    async move {
                        let resp = if req.uri().path().contains("/blobs/") {
                            Response::builder()
                                .status(307)
                                .header("Location", "https://storage.example/b?X-Sig=abc")
                                .body(Full::new(Bytes::new()))
                        } else {
                            Response::builder()
                            .header("Content-Type", OCI_MANIFEST)
                            .header("Docker-Content-Digest", "sha256:abc")
                            .header("ETag", "\"sha256:abc\"")
                            // One link in the upstream's path space under the prefix,
                            // one outside it that the gateway cannot serve.
                            .header(
                                "Link",
                                "</v2/test/x/tags/list?last=b>; rel=\"next\", </v2/other/y/tags/list>; rel=\"other\"",
                            )
                            .header("Connection", "X-Private")
                            .header("X-Private", "1")
                            .header("Keep-Alive", "timeout=5")
                            .header("Set-Cookie", "upstream=1")
                            .body(Full::new(Bytes::from_static(b"{}")))
                        };
                        if !req.uri().path().contains("/blobs/") && req.uri().path() != "/v2/" {
                            record.lock().unwrap().push((
                                req.headers()["host"].to_str().unwrap().to_string(),
                                req.uri().to_string(),
                                req.headers().contains_key("authorization"),
                            ));
                        }
                        Ok::<_, Infallible>(resp.unwrap())
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let (gw, _m) = gateway(&[format!("http://{addr}")], "").await;
    let r = gw
        .send(
            "GET",
            "/v2/x/manifests/v1?a=b",
            &[("Authorization", "Bearer client-secret")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"{}");
    for (name, value) in [
        ("content-type", OCI_MANIFEST),
        ("docker-content-digest", "sha256:abc"),
        ("etag", "\"sha256:abc\""),
        ("link", "</v2/x/tags/list?last=b>; rel=\"next\""),
    ] {
        assert_eq!(r.header(name), Some(value), "{name} in {r:?}");
    }
    // The client's credentials are not the upstream's business.
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        &[(
            addr.to_string(),
            "/v2/test/x/manifests/v1?a=b".to_string(),
            false
        )]
    );
    assert_eq!(r.header("x-private"), None, "{r:?}");
    assert_eq!(r.header("keep-alive"), None, "{r:?}");
    assert_eq!(r.header("set-cookie"), None, "{r:?}");

    let sha = format!("sha256:{:064x}", 7);
    let r = gw.get(&format!("/v2/x/blobs/{sha}")).await;
    assert_eq!(
        (r.status, r.location()),
        (307, "https://storage.example/b?X-Sig=abc")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn redirect_mode_sends_clients_to_the_first_healthy_endpoint() {
    let img = images();
    let reg = Registry::start(&img.storage, None, Auth::None);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let (gw, _m) = gateway_in_mode("redirect", &[dead, reg.url(false)], "").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let want = format!("{}/v2/test/app/manifests/v1", reg.url(false));
    loop {
        let r = gw.get("/v2/app/manifests/v1").await;
        assert_eq!(r.status, 307);
        if r.location() == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still redirected to {}",
            r.location()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A gateway in `mode` in front of one endpoint with the path prefix `test`: `upstream` and
/// `top` are YAML lines under `upstream:` and under `archeio:`.
async fn gateway_with(mode: &str, endpoint: &str, upstream: &str, top: &str) -> Gateway {
    let keys = format!(
        "  mode: {mode}
  upstream:
    endpoints: ['{endpoint}']
    path: test
    health_check: {{interval: 200ms, timeout: 1s, unhealthy_after: 1, healthy_after: 1}}
{upstream}
  ranges: {{embedded: false}}
  client_address: {{trusted_proxy_hops: 0}}
{top}"
    );
    Gateway::start(&keys).await
}

/// Tags `t00`..`t09` of `test/lib/app`, served a page at a time (`n`, default 3, after
/// `last`) with a `Link` to the next page in the upstream's own path space.
fn paging_upstream(seen: &common::fake::Seen) -> common::fake::Canned {
    use common::fake::Canned;
    let (path, query) = seen
        .target
        .split_once('?')
        .unwrap_or((seen.target.as_str(), ""));
    if path == "/v2/" {
        return Canned::new(200).header("docker-distribution-api-version", "registry/2.0");
    }
    if path != "/v2/test/lib/app/tags/list" {
        return Canned::new(404).body(r#"{"errors":[{"code":"NAME_UNKNOWN","message":"x"}]}"#);
    }
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_string)
    };
    let n: usize = param("n").and_then(|n| n.parse().ok()).unwrap_or(3);
    let all: Vec<String> = (0..10).map(|i| format!("t{i:02}")).collect();
    let start = param("last").map_or(0, |last| all.iter().position(|t| *t > last).unwrap_or(10));
    let page: Vec<String> = all[start..].iter().take(n).cloned().collect();
    let body = serde_json::json!({ "name": "test/lib/app", "tags": page }).to_string();
    let mut canned = Canned::new(200)
        .header("content-type", "application/json")
        .body(body);
    if start + page.len() < all.len() {
        canned = canned.header(
            "link",
            format!(
                "</v2/test/lib/app/tags/list?last={}&n={n}>; rel=\"next\"",
                page.last().unwrap()
            ),
        );
    }
    canned
}

/// Issue 12, item 2: a paging upstream behind a path prefix lists every tag through the
/// gateway, with `skopeo list-tags`, in both modes.
#[tokio::test(flavor = "multi_thread")]
async fn tag_paging_through_the_gateway_with_an_upstream_prefix() {
    let upstream = common::fake::FakeServer::start(paging_upstream).await;
    let want: Vec<String> = (0..10).map(|i| format!("t{i:02}")).collect();
    for mode in ["redirect", "passthrough"] {
        let gw = gateway_with(mode, &upstream.url(), "", "").await;
        if mode == "passthrough" {
            let r = gw.get("/v2/lib/app/tags/list?n=4").await;
            assert_eq!(r.status, 200, "{r:?}");
            assert_eq!(
                r.header("link"),
                Some("</v2/lib/app/tags/list?last=t03&n=4>; rel=\"next\""),
                "the Link must be in the gateway's path space"
            );
        }
        let out = std::process::Command::new("skopeo")
            .args([
                "list-tags",
                "--tls-verify=false",
                &format!("docker://{}/lib/app", gw.addr),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{mode}: skopeo: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            gw.log()
        );
        let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let tags: Vec<String> = listed["Tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect();
        assert_eq!(tags, want, "{mode}");
    }
}

/// A request head read from `s` (up to and with its blank line; what follows it in the same
/// read, too), or None when the peer went first.
async fn read_head(s: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    Some(head)
}

/// Serves `/v2/` with 200 and any other request with a `len`-byte body written as fast as the
/// reader takes it, `stall_after` bytes at most; records when a write failed (the peer closed).
async fn raw_upstream(len: usize, stall_after: usize) -> (SocketAddr, Arc<Mutex<Option<Instant>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let broken = Arc::new(Mutex::new(None));
    let flag = broken.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let flag = flag.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let Some(head) = read_head(&mut s).await else {
                    return;
                };
                if head.starts_with(b"GET /v2/ ") {
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        )
                        .await;
                    return;
                }
                let header = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n"
                );
                if s.write_all(header.as_bytes()).await.is_err() {
                    *flag.lock().unwrap() = Some(Instant::now());
                    return;
                }
                let chunk = vec![b'x'; 64 * 1024];
                let mut sent = 0;
                while sent < len.min(stall_after) {
                    let n = chunk.len().min(len.min(stall_after) - sent);
                    if s.write_all(&chunk[..n]).await.is_err() {
                        *flag.lock().unwrap() = Some(Instant::now());
                        return;
                    }
                    sent += n;
                }
                // Stalled (or done): hold the connection until the peer goes.
                let _ = s.read(&mut buf).await;
                *flag.lock().unwrap() = Some(Instant::now());
            });
        }
    });
    (addr, broken)
}

/// Issue 12, item 4: a client that stops reading a proxied blob is disconnected after the
/// write timeout, and the upstream connection with it.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_is_disconnected() {
    use tokio::io::AsyncWriteExt;
    let (up, broken) = raw_upstream(256 << 20, usize::MAX).await;
    let gw = gateway_with(
        "passthrough",
        &format!("http://{up}"),
        "",
        "  client_timeouts: {write: 1s}",
    )
    .await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut client = socket.connect(gw.addr).await.unwrap();
    let started = Instant::now();
    let blob = format!("sha256:{}", "cd".repeat(32));
    client
        .write_all(format!("GET /v2/app/blobs/{blob} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // Never read. The gateway must give up on the client and on the upstream.
    while broken.lock().unwrap().is_none() && started.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gone = broken
        .lock()
        .unwrap()
        .map(|t| t - started)
        .expect("the upstream connection was still held after 20 s");
    assert!(gone < Duration::from_secs(10), "{gone:?}");
    drop(client);
}

/// Issue 12, item 4: a GET or HEAD with a body is refused, in both modes, and never
/// forwarded.
#[tokio::test(flavor = "multi_thread")]
async fn get_and_head_with_a_body_are_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = common::fake::FakeServer::start(|_| common::fake::Canned::new(200)).await;
    for mode in ["redirect", "passthrough"] {
        let gw = gateway_with(mode, &upstream.url(), "", "").await;
        for request in [
            "GET /v2/app/manifests/v1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
            "HEAD /v2/app/manifests/v1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
            "GET /v2/app/manifests/v1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ] {
            let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
            s.write_all(request.as_bytes()).await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .expect("no answer")
                .unwrap();
            let head = String::from_utf8_lossy(&buf[..n]);
            assert!(head.starts_with("HTTP/1.1 400"), "{mode}: {request:?}: {head}");
        }
    }
    assert!(
        upstream.seen_except_health().is_empty(),
        "{:?}",
        upstream.seen_except_health()
    );
}

/// Issue 12, item 4: `upstream.timeouts.total` ends a response whose body stalls, without
/// waiting for another chunk.
#[tokio::test(flavor = "multi_thread")]
async fn the_total_timeout_cuts_a_stalled_upstream_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (up, _) = raw_upstream(100_000, 1000).await;
    let gw = gateway_with(
        "passthrough",
        &format!("http://{up}"),
        "    timeouts: {connect: 2s, read: 30s, total: 2s}",
        "",
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let started = Instant::now();
    s.write_all(b"GET /v2/app/manifests/v1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut got)).await;
    assert!(ended.is_ok(), "the stalled response was never cut");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(6), "{took:?}");
    assert!(got.len() < 100_000, "the whole body arrived");
}

/// Issue 12, item 5: the gateway's credentials go only to a token realm on the endpoint's
/// host or one listed in `upstream.auth_realm_hosts`; otherwise 502 and nothing sent.
#[tokio::test(flavor = "multi_thread")]
async fn credentials_go_only_to_allowed_token_realms() {
    use common::fake::{Canned, FakeServer};
    let realm = FakeServer::start_on("127.0.0.2", |_| {
        Canned::new(200)
            .header("content-type", "application/json")
            .body(r#"{"token":"tok","expires_in":300}"#)
    })
    .await;
    let realm_url = format!("http://{}/token", realm.addr);
    let upstream = FakeServer::start(move |seen| {
        if seen.target == "/v2/" {
            return Canned::new(200);
        }
        if seen.header("authorization") == Some("Bearer tok") {
            return Canned::new(200)
                .header("content-type", "application/vnd.oci.image.manifest.v1+json")
                .body("{}");
        }
        Canned::new(401).header(
            "www-authenticate",
            format!(
                "Bearer realm=\"{realm_url}\",service=\"reg\",scope=\"repository:test/app:pull\""
            ),
        )
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("password");
    std::fs::write(&pw, "s3cret-pw\n").unwrap();
    let creds = format!(
        "    credentials: {{username: puller, password_file: {}}}",
        pw.display()
    );
    let anonymous =
        |upstream_keys: &str| format!("{upstream_keys}\n  client_auth: {{mode: anonymous}}");

    let gw = gateway_with("passthrough", &upstream.url(), &anonymous(&creds), "").await;
    let r = gw.get("/v2/app/manifests/v1").await;
    assert_eq!(
        (r.status, r.oci_code().as_str()),
        (502, "UNAVAILABLE"),
        "{r:?}"
    );
    assert!(
        realm.seen().is_empty(),
        "credentials went to {:?}",
        realm.seen()
    );
    let log = gw.log();
    assert_eq!(log.matches("auth_realm_hosts").count(), 1, "{log}");
    assert!(!log.contains("s3cret-pw"));

    let allowed = format!("{creds}\n    auth_realm_hosts: ['127.0.0.2']");
    let gw = gateway_with("passthrough", &upstream.url(), &anonymous(&allowed), "").await;
    let r = gw.get("/v2/app/manifests/v1").await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
    let asked = realm.seen();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert!(asked[0]
        .header("authorization")
        .is_some_and(|a| a.starts_with("Basic ")));
}

/// Issue 12, item 6: only the headers a pull needs reach the upstream, and the client
/// address as the gateway sees it.
#[tokio::test(flavor = "multi_thread")]
async fn only_allowed_client_headers_reach_the_upstream() {
    use common::fake::{Canned, FakeServer};
    let upstream = FakeServer::start(|_| Canned::new(200).body("{}")).await;
    let gw = gateway_with("passthrough", &upstream.url(), "", "").await;
    let sent = [
        ("Accept", "application/vnd.oci.image.manifest.v1+json"),
        ("User-Agent", "containerd/2.0"),
        ("If-None-Match", "\"abc\""),
        ("Cookie", "session=secret"),
        ("Forwarded", "for=6.6.6.6;host=evil"),
        ("X-Forwarded-Host", "evil.example"),
        ("X-Forwarded-Proto", "http"),
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Real-IP", "6.6.6.6"),
        ("X-Custom", "anything"),
        ("Authorization", "Bearer client-token"),
        ("Proxy-Authorization", "Basic eDp5"),
    ];
    let r = gw.send("GET", "/v2/app/manifests/v1", &sent).await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = upstream.seen_except_health();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let got = &seen[0];
    for name in [
        "cookie",
        "forwarded",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-real-ip",
        "x-custom",
        "authorization",
        "proxy-authorization",
    ] {
        assert!(
            got.header(name).is_none(),
            "{name} reached the upstream: {got:?}"
        );
    }
    assert_eq!(
        got.header("accept"),
        Some("application/vnd.oci.image.manifest.v1+json")
    );
    assert_eq!(got.header("user-agent"), Some("containerd/2.0"));
    assert_eq!(got.header("if-none-match"), Some("\"abc\""));
    assert_eq!(got.header("x-forwarded-for"), Some("127.0.0.1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_well_formed_traceparent_is_sent_on_and_a_malformed_one_is_not() {
    use common::fake::{Canned, FakeServer};
    let upstream = FakeServer::start(|_| Canned::new(200).body("{}")).await;
    let gw = gateway_with("passthrough", &upstream.url(), "", "").await;
    let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let zero_trace = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
    for (tag, sent, wanted) in [
        ("v1", good, Some(good)),
        ("v2", "00-not-a-trace-01", None),
        ("v3", zero_trace, None),
    ] {
        // A tag of its own each time: the manifest cache would answer a repeated one.
        let target = format!("/v2/app/manifests/{tag}");
        let r = gw.send("GET", &target, &[("traceparent", sent)]).await;
        assert_eq!(r.status, 200, "{r:?}");
        let seen = upstream.seen_except_health();
        let got = seen.last().unwrap();
        assert!(got.target.ends_with(&target[3..]), "{got:?}");
        assert_eq!(got.header("traceparent"), wanted, "{sent}: {got:?}");
    }
}

/// Issue 12, item 10: with `stale_if_error`, an expired tag answer is served, marked and
/// counted, when no upstream endpoint can be reached; without it, 502.
#[tokio::test(flavor = "multi_thread")]
async fn stale_tag_manifests_are_served_when_every_upstream_is_down() {
    use common::fake::{Canned, FakeServer};
    let manifest =
        r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
    let digest = sha256(manifest.as_bytes());
    for stale in [true, false] {
        let d = digest.clone();
        let upstream = FakeServer::start(move |_| {
            Canned::new(200)
                .header("content-type", "application/vnd.oci.image.manifest.v1+json")
                .header("docker-content-digest", d.clone())
                .body(manifest)
        })
        .await;
        let cache = if stale {
            "  manifest_cache: {tag_ttl: 1s, stale_if_error: 1h}"
        } else {
            "  manifest_cache: {tag_ttl: 1s}"
        };
        let gw = gateway_with(
            "passthrough",
            &upstream.url(),
            "    timeouts: {connect: 1s, read: 2s, total: 5s}",
            cache,
        )
        .await;
        let r = gw.get("/v2/app/manifests/v1").await;
        assert_eq!(r.status, 200, "{r:?}");
        upstream.stop();
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let r = gw.get("/v2/app/manifests/v1").await;
        if stale {
            assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
            assert_eq!(r.body, manifest.as_bytes());
            assert_eq!(r.header("docker-content-digest"), Some(digest.as_str()));
            assert!(
                r.header("warning").is_some_and(|w| w.starts_with("110")),
                "{r:?}"
            );
            let m = gw.metrics().await;
            assert_eq!(sample(&m, "archeio_manifest_cache_stale_served_total"), 1.0);
        } else {
            assert_eq!(r.status, 502, "{r:?}");
        }
    }
}

/// Serves `/v2/` with 200 and every other request with a small manifest; keeps each request
/// head byte for byte (names in the case they arrived in).
async fn recording_upstream() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    use tokio::io::AsyncWriteExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let log = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let Some(head) = read_head(&mut s).await else {
                    return;
                };
                let answer: &[u8] = if head.starts_with(b"GET /v2/ ") {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                } else {
                    log.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&head).into_owned());
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
                };
                let _ = s.write_all(answer).await;
            });
        }
    });
    (addr, heads)
}

/// Requests are read without their header names' case (most are answered by the gateway and
/// never need it); one that is forwarded gets it back, so the upstream sees the client's
/// spelling of each header it is allowed to see, whatever that spelling is.
#[tokio::test(flavor = "multi_thread")]
async fn a_forwarded_request_keeps_the_client_s_header_case() {
    let (addr, heads) = recording_upstream().await;
    let gw = gateway_with("passthrough", &format!("http://{addr}"), "", "").await;
    let sent = [
        ("accept", "application/vnd.oci.image.manifest.v1+json"),
        ("USER-AGENT", "containerd/2.0"),
        ("If-None-Match", "\"abc\""),
        ("x-CUSTOM", "dropped"),
    ];
    let r = gw.send("GET", "/v2/app/manifests/v1", &sent).await;
    assert_eq!(r.status, 200, "{r:?}");
    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 1, "{heads:?}");
    let head = &heads[0];
    for line in [
        "\r\naccept: application/vnd.oci.image.manifest.v1+json\r\n",
        "\r\nUSER-AGENT: containerd/2.0\r\n",
        "\r\nIf-None-Match: \"abc\"\r\n",
    ] {
        assert!(
            head.contains(line),
            "{line:?} not in the upstream's request:\n{head}"
        );
    }
    assert!(!head.to_ascii_lowercase().contains("x-custom"), "{head}");
}

/// From the attacker's side: the client's spelling now travels with a forwarded request, so a
/// header the upstream must not see cannot get through by its spelling, and a forged forwarding
/// header in odd case is replaced by the gateway's, not sent beside it.
#[tokio::test(flavor = "multi_thread")]
async fn an_odd_spelling_does_not_carry_a_refused_header_upstream() {
    let (addr, heads) = recording_upstream().await;
    let gw = gateway_with("passthrough", &format!("http://{addr}"), "", "").await;
    let sent = [
        ("COOKIE", "session=secret"),
        ("authorization", "Bearer client-token"),
        ("x-Forwarded-HOST", "evil.example"),
        ("x-forwarded-for", "6.6.6.6"),
        ("X-FORWARDED-FOR", "7.7.7.7"),
    ];
    let r = gw.send("GET", "/v2/app/manifests/v1", &sent).await;
    assert_eq!(r.status, 200, "{r:?}");
    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 1, "{heads:?}");
    let head = heads[0].to_ascii_lowercase();
    for refused in [
        "cookie",
        "authorization",
        "x-forwarded-host",
        "6.6.6.6",
        "7.7.7.7",
    ] {
        assert!(
            !head.contains(refused),
            "{refused} reached the upstream:\n{}",
            heads[0]
        );
    }
    assert_eq!(
        head.matches("\r\nx-forwarded-for:").count(),
        1,
        "{}",
        heads[0]
    );
    assert!(
        head.contains("\r\nx-forwarded-for: 127.0.0.1\r\n"),
        "{}",
        heads[0]
    );
}
