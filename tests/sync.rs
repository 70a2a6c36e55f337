//! `archeio sync` against a real `docker-registry` (filled by skopeo) and a real
//! S3-compatible server (`moto_server`) on loopback; then the gateway sends clients to the
//! bucket for the synced blobs.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::moto::Moto;
use common::registry::{images, sha256, Auth, Registry};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Every blob the pushed images refer to, read from the registry (not from the sync).
async fn referenced_blobs(registry: &Registry) -> BTreeSet<String> {
    let addr = ([127, 0, 0, 1], registry.port).into();
    let accept = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
    let mut blobs = BTreeSet::new();
    for (repo, tag) in [
        ("test/app", "v1"),
        ("test/multi", "v1"),
        ("test/docker", "v1"),
    ] {
        let mut refs = vec![tag.to_string()];
        while let Some(r) = refs.pop() {
            let resp = request(
                addr,
                "GET",
                format!("/v2/{repo}/manifests/{r}"),
                &[("Accept", accept)],
            )
            .await
            .unwrap();
            let m: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
            for child in m["manifests"].as_array().into_iter().flatten() {
                refs.push(child["digest"].as_str().unwrap().to_string());
            }
            for d in m["layers"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(m.get("config"))
            {
                blobs.insert(d["digest"].as_str().unwrap().to_string());
            }
        }
    }
    blobs
}

fn write_config(
    dir: &Path,
    registry: &str,
    moto: &Moto,
    bucket: &str,
    extra_source: &str,
) -> String {
    let path = dir.join("sync.yaml");
    std::fs::write(
        &path,
        format!(
            "sync:
  source:
    registry: {registry}
    repositories: [test/app, test/docker]
    prefix: test/mul
{extra_source}
  destinations:
    - url: s3://{bucket}
      endpoint: http://127.0.0.1:{port}
      region: us-east-1
      acl: public-read
",
            port = moto.port
        ),
    )
    .unwrap();
    path.display().to_string()
}

fn sync(config: &str, extra: &[&str]) -> Output {
    Command::new(BINARY)
        .args(["sync", "-c", config])
        .args(extra)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("RUST_LOG", "info")
        .output()
        .unwrap()
}

fn summary(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find(|l| l.starts_with("sync "))
        .unwrap_or_else(|| {
            panic!(
                "no summary in {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .to_string()
}

fn count(summary: &str, what: &str) -> u64 {
    let before = summary.split(what).next().unwrap();
    before
        .rsplit(' ')
        .nth(1)
        .unwrap()
        .trim_start_matches(':')
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_copies_exactly_the_referenced_blobs_once_and_the_gateway_serves_them() {
    let img = images();
    let reg = Registry::start(&img.storage, None, Auth::None);
    let moto = Moto::start().await;
    moto.bucket("mirror").await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &reg.url(false), &moto, "mirror", "");
    let expected = referenced_blobs(&reg).await;

    // A dry run lists them and writes nothing.
    let out = sync(&config, &["--dry-run"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(count(&summary(&out), "blobs copied"), expected.len() as u64);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .matches("would copy")
            .count(),
        expected.len()
    );
    assert!(moto.keys("mirror").await.is_empty());

    let metrics = dir.path().join("sync.prom");
    let out = sync(&config, &["--metrics-file", metrics.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = summary(&out);
    assert_eq!(count(&s, "blobs copied"), expected.len() as u64, "{s}");
    let keys = moto.keys("mirror").await;
    let want: BTreeSet<String> = expected
        .iter()
        .map(|d| format!("containers/images/{d}"))
        .collect();
    assert_eq!(keys, want);
    let prom = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        prom.contains(&format!(
            "archeio_sync_blobs_total{{result=\"copied\"}} {}",
            expected.len()
        )),
        "{prom}"
    );
    assert!(prom.contains("archeio_sync_success 1"));

    // Again: nothing to copy, one HEAD each.
    let out = sync(&config, &[]);
    let s = summary(&out);
    assert_eq!(count(&s, "blobs copied"), 0, "{s}");
    assert_eq!(count(&s, "already present"), expected.len() as u64, "{s}");

    // The gateway now sends a loopback (us-east-1) client to the bucket for a synced blob.
    gateway_sends_blob_to_mirror(&reg, &format!("http://127.0.0.1:{}/mirror", moto.port)).await;
    // And the bucket serves it anonymously, with the right bytes.
    let blob = request(
        moto.addr(),
        "GET",
        format!("/mirror/containers/images/{}", img.app_layer),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(blob.status, 200);
    assert_eq!(common::registry::sha256(&blob.body), img.app_layer);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_sync_completes_on_the_next_run_without_copying_twice() {
    let img = images();
    let reg = Registry::start(&img.storage, None, Auth::None);
    let moto = Moto::start().await;
    moto.bucket("slow").await;
    let dir = tempfile::tempdir().unwrap();
    // Four requests a second, one copy at a time: the run takes seconds.
    let config = write_config(
        dir.path(),
        &reg.url(false),
        &moto,
        "slow",
        "    rate_limit: 4",
    );
    std::fs::write(
        &config,
        std::fs::read_to_string(&config).unwrap() + "  concurrency: 1\n",
    )
    .unwrap();
    let expected = referenced_blobs(&reg).await.len();

    let mut child = Command::new(BINARY)
        .args(["sync", "-c", &config])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while moto.keys("slow").await.len() < 2 {
        assert!(Instant::now() < deadline, "the first run copied nothing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let done = moto.keys("slow").await.len();
    assert!(
        done < expected,
        "the run was not interrupted ({done} of {expected})"
    );

    let out = sync(&config, &[]);
    assert!(out.status.success());
    let s = summary(&out);
    assert_eq!(count(&s, "blobs copied"), (expected - done) as u64, "{s}");
    assert_eq!(count(&s, "already present"), done as u64, "{s}");
    assert_eq!(moto.keys("slow").await.len(), expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blob_corrupted_at_the_source_is_refused_and_reported() {
    let img = images();
    // A private copy of the storage with the app layer's bytes changed.
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("storage");
    let status = Command::new("cp")
        .args([
            "-a",
            img.storage.to_str().unwrap(),
            storage.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let hex = img.app_layer.trim_start_matches("sha256:");
    let data = storage.join(format!(
        "docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ));
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();

    let reg = Registry::start(&storage, None, Auth::None);
    let moto = Moto::start().await;
    moto.bucket("strict").await;
    let config = write_config(dir.path(), &reg.url(false), &moto, "strict", "");
    let out = sync(&config, &[]);
    assert_eq!(out.status.code(), Some(1));
    let s = summary(&out);
    assert_eq!(count(&s, "failed"), 1, "{s}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("blob {} to s3://strict", img.app_layer)),
        "{stderr}"
    );
    assert!(stderr.contains("refused, nothing written"), "{stderr}");
    let keys = moto.keys("strict").await;
    assert!(!keys.contains(&format!("containers/images/{}", img.app_layer)));
    assert!(keys.contains(&format!("containers/images/{}", img.app_config)));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_s3_prefix_is_kept_and_the_gateway_finds_the_blobs_under_it() {
    let img = images();
    let reg = Registry::start(&img.storage, None, Auth::None);
    let moto = Moto::start().await;
    moto.bucket("prefixed").await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &reg.url(false), &moto, "prefixed/eu/v1", "");
    let out = sync(&config, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want: BTreeSet<String> = referenced_blobs(&reg)
        .await
        .iter()
        .map(|d| format!("eu/v1/containers/images/{d}"))
        .collect();
    assert_eq!(moto.keys("prefixed").await, want);

    // The gateway's mirror URL for that destination is the bucket and prefix.
    gateway_sends_blob_to_mirror(
        &reg,
        &format!("http://127.0.0.1:{}/prefixed/eu/v1", moto.port),
    )
    .await;
}

/// A gateway in front of `reg` whose loopback clients (us-east-1) have the mirror `base`
/// redirects the test image's layer there (the mirror holds it).
async fn gateway_sends_blob_to_mirror(reg: &Registry, base: &str) {
    let img = images();
    let keys = format!(
        "  upstream: {{endpoints: ['{}'], path: ''}}
  mirrors: {{default: 'http://127.0.0.1:1', replace_regions: true, regions: {{us-east-1: '{base}'}}}}
  ranges: {{embedded: false, custom: [{{cidr: 127.0.0.0/8, cloud: aws, region: us-east-1}}]}}
  client_address: {{trusted_proxy_hops: 0}}",
        reg.url(false),
    );
    let gw = Gateway::start(&keys).await;
    let r = gw
        .get(&format!("/v2/test/app/blobs/{}", img.app_layer))
        .await;
    assert_eq!(
        (r.status, r.location()),
        (
            307,
            format!("{base}/containers/images/{}", img.app_layer).as_str()
        )
    );
}

/// A body a [`FakeRegistry`] sends.
#[derive(Clone)]
enum Body {
    Bytes(Vec<u8>),
    /// This many zero bytes with no `Content-Length`: the body ends when the connection does.
    Unframed(usize),
}

type Routes = HashMap<String, (Vec<(String, String)>, Body)>;

/// A source registry that misbehaves on purpose: canned `200` answers by request target (path
/// and query), `404` for anything else, on 127.0.0.1 and an ephemeral port. Counts requests
/// per target and the bytes of unframed bodies written. Stops accepting on drop.
struct FakeRegistry {
    addr: SocketAddr,
    routes: Arc<Mutex<Routes>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    unframed_sent: Arc<AtomicUsize>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeRegistry {
    async fn start() -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let routes = Arc::new(Mutex::new(Routes::new()));
        let hits = Arc::new(Mutex::new(HashMap::new()));
        let unframed_sent = Arc::new(AtomicUsize::new(0));
        let (r, h, u) = (routes.clone(), hits.clone(), unframed_sent.clone());
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(FakeRegistry::serve(stream, r.clone(), h.clone(), u.clone()));
            }
        });
        FakeRegistry {
            addr,
            routes,
            hits,
            unframed_sent,
            server,
        }
    }

    /// One request per connection (`Connection: close`).
    async fn serve(
        mut stream: TcpStream,
        routes: Arc<Mutex<Routes>>,
        hits: Arc<Mutex<HashMap<String, usize>>>,
        unframed_sent: Arc<AtomicUsize>,
    ) {
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(n) if n > 0 && head.len() < 65536 => head.extend_from_slice(&buf[..n]),
                _ => return,
            }
        }
        let target = String::from_utf8_lossy(&head)
            .split(' ')
            .nth(1)
            .unwrap_or_default()
            .to_string();
        *hits.lock().unwrap().entry(target.clone()).or_default() += 1;
        let route = routes.lock().unwrap().get(&target).cloned();
        let Some((headers, body)) = route else {
            let _ = stream
                .write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
            return;
        };
        let mut answer = String::from("HTTP/1.1 200 OK\r\nConnection: close\r\n");
        for (k, v) in &headers {
            answer.push_str(&format!("{k}: {v}\r\n"));
        }
        match body {
            Body::Bytes(bytes) => {
                answer.push_str(&format!("Content-Length: {}\r\n\r\n", bytes.len()));
                let mut all = answer.into_bytes();
                all.extend_from_slice(&bytes);
                let _ = stream.write_all(&all).await;
            }
            Body::Unframed(len) => {
                answer.push_str("\r\n");
                if stream.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![0u8; 64 * 1024];
                let mut left = len;
                while left > 0 {
                    let n = left.min(chunk.len());
                    if stream.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                    unframed_sent.fetch_add(n, Ordering::Relaxed);
                    left -= n;
                }
            }
        }
        let _ = stream.shutdown().await;
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn answer(&self, target: &str, headers: &[(&str, &str)], body: Body) {
        let headers = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.routes
            .lock()
            .unwrap()
            .insert(target.to_string(), (headers, body));
    }

    fn hits(&self, target: &str) -> usize {
        self.hits.lock().unwrap().get(target).copied().unwrap_or(0)
    }

    fn all_hits(&self) -> usize {
        self.hits.lock().unwrap().values().sum()
    }

    /// One page of `repo`'s tag list at `target`, with a next-page `link` if given.
    fn tags_page(&self, repo: &str, target: &str, tags: &[&str], link: Option<&str>) {
        let body = serde_json::json!({"name": repo, "tags": tags}).to_string();
        let link = link.map(|l| ("Link", l));
        self.answer(target, link.as_slice(), Body::Bytes(body.into_bytes()));
    }

    /// An image manifest whose config and layer `repo` serves; (manifest, blob digests).
    fn image(&self, repo: &str, seed: &str) -> (Vec<u8>, BTreeSet<String>) {
        let config = serde_json::json!({"architecture": "amd64", "os": "linux", "seed": seed})
            .to_string()
            .into_bytes();
        let layer = format!("layer {seed} ").repeat(100).into_bytes();
        let (c, l) = (sha256(&config), sha256(&layer));
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": c, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": l, "size": layer.len()}]
        })
        .to_string()
        .into_bytes();
        self.answer(&format!("/v2/{repo}/blobs/{c}"), &[], Body::Bytes(config));
        self.answer(&format!("/v2/{repo}/blobs/{l}"), &[], Body::Bytes(layer));
        (manifest, [c, l].into())
    }

    /// Serves `manifest` as `repo:reference`.
    fn manifest(&self, repo: &str, reference: &str, manifest: &[u8]) {
        self.answer(
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Content-Type", "application/vnd.oci.image.index.v1+json")],
            Body::Bytes(manifest.to_vec()),
        );
    }

    /// Serves `manifest` under its digest; the digest.
    fn by_digest(&self, repo: &str, manifest: &[u8]) -> String {
        let digest = sha256(manifest);
        self.manifest(repo, &digest, manifest);
        digest
    }

    /// Serves `manifest` as `repo`'s only tag, `v1`.
    fn only_tag(&self, repo: &str, manifest: &[u8]) {
        self.manifest(repo, "v1", manifest);
        self.tags_page(repo, &format!("/v2/{repo}/tags/list?n=1000"), &["v1"], None);
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// An OCI index of `(digest, size)` entries.
fn index(entries: &[(&str, usize)]) -> Vec<u8> {
    let manifests: Vec<_> = entries
        .iter()
        .map(|(digest, size)| {
            serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                               "digest": digest, "size": size})
        })
        .collect();
    serde_json::json!({"schemaVersion": 2,
                       "mediaType": "application/vnd.oci.image.index.v1+json",
                       "manifests": manifests})
    .to_string()
    .into_bytes()
}

/// A configuration syncing `repositories` of `registry` into a directory; (file, directory).
fn local_config(dir: &Path, registry: &str, repositories: &[&str]) -> (String, PathBuf) {
    let dest = dir.join("dest");
    let path = dir.join("sync.yaml");
    std::fs::write(
        &path,
        format!(
            "sync:
  source: {{registry: '{registry}', repositories: {repositories:?}, attempts: 1, timeout: 5s}}
  destinations: [{{url: 'file://{}'}}]
",
            dest.display()
        ),
    )
    .unwrap();
    (path.display().to_string(), dest)
}

/// Digests of the blobs in a local destination.
fn local_blobs(dest: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dest.join("containers/images"))
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// `archeio sync` without blocking the runtime that serves a [`FakeRegistry`]; a run still
/// going after 30 s (a loop) fails the test and is killed.
async fn sync_bounded(config: &str) -> (Output, String) {
    let child = tokio::process::Command::new(BINARY)
        .args(["sync", "-c", config])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("archeio sync still running after 30 s")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stderr)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_next_page_link_to_another_origin_is_refused() {
    let src = FakeRegistry::start().await;
    let elsewhere = FakeRegistry::start().await;
    // `paged`: the second page through a relative Link, the third through an absolute one
    // on the source's own origin; every tag is walked.
    let mut want = BTreeSet::new();
    for tag in ["a", "b", "c"] {
        let (m, blobs) = src.image("paged", tag);
        src.manifest("paged", tag, &m);
        want.extend(blobs);
    }
    let third = format!("{}/v2/paged/tags/list?last=b&n=1000", src.url());
    src.tags_page(
        "paged",
        "/v2/paged/tags/list?n=1000",
        &["a"],
        Some("</v2/paged/tags/list?last=a&n=1000>; rel=\"next\""),
    );
    src.tags_page(
        "paged",
        "/v2/paged/tags/list?last=a&n=1000",
        &["b"],
        Some(&format!("<{third}>; rel=\"next\"")),
    );
    src.tags_page("paged", "/v2/paged/tags/list?last=b&n=1000", &["c"], None);
    // `away`: its next page is on another server (which would answer).
    let (m, _) = src.image("away", "x");
    src.manifest("away", "v1", &m);
    let away = format!("http://{}/v2/away/tags/list?last=v1&n=1000", elsewhere.addr);
    src.tags_page(
        "away",
        "/v2/away/tags/list?n=1000",
        &["v1"],
        Some(&format!("<{away}>; rel=\"next\"")),
    );
    elsewhere.tags_page("away", "/v2/away/tags/list?last=v1&n=1000", &[], None);

    let dir = tempfile::tempdir().unwrap();
    let (config, dest) = local_config(dir.path(), &src.url(), &["paged", "away"]);
    let (out, stderr) = sync_bounded(&config).await;
    assert_eq!(elsewhere.all_hits(), 0, "followed a Link to another origin");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("away: GET {}/v2/away/tags/list?n=1000: the next-page Link points to another origin ({away}): refused", src.url())),
        "{stderr}"
    );
    assert_eq!(local_blobs(&dest), want, "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_next_page_link_that_repeats_stops_the_walk() {
    let src = FakeRegistry::start().await;
    let (m, want) = src.image("fine", "f");
    src.only_tag("fine", &m);
    let (m, _) = src.image("loop", "l");
    src.manifest("loop", "a", &m);
    let second = "/v2/loop/tags/list?last=a&n=1000";
    let link = format!("<{second}>; rel=\"next\"");
    src.tags_page("loop", "/v2/loop/tags/list?n=1000", &["a"], Some(&link));
    src.tags_page("loop", second, &["a"], Some(&link));

    let dir = tempfile::tempdir().unwrap();
    let (config, dest) = local_config(dir.path(), &src.url(), &["loop", "fine"]);
    let (out, stderr) = sync_bounded(&config).await;
    assert_eq!(src.hits(second), 1);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "loop: GET {}{second}: the next-page Link repeats an earlier page: the listing loops; stopped",
            src.url()
        )),
        "{stderr}"
    );
    assert_eq!(local_blobs(&dest), want, "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_index_that_refers_to_itself_is_walked_once() {
    let src = FakeRegistry::start().await;
    let (m, want) = src.image("cycle", "c");
    let platform = src.by_digest("cycle", &m);
    // The index lists a digest under which the registry serves the index itself, and its
    // platform twice.
    let claimed = sha256(b"the index, supposedly");
    let idx = index(&[(&claimed, 300), (&platform, m.len()), (&platform, m.len())]);
    src.only_tag("cycle", &idx);
    src.manifest("cycle", &claimed, &idx);

    let dir = tempfile::tempdir().unwrap();
    let (config, dest) = local_config(dir.path(), &src.url(), &["cycle"]);
    let (_, stderr) = sync_bounded(&config).await;
    assert_eq!(src.hits(&format!("/v2/cycle/manifests/{claimed}")), 1);
    assert_eq!(src.hits(&format!("/v2/cycle/manifests/{platform}")), 1);
    assert_eq!(local_blobs(&dest), want, "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn indexes_nested_deeper_than_eight_levels_are_refused() {
    let src = FakeRegistry::start().await;
    let mut want = BTreeSet::new();
    // `shallow`: seven indexes around an image, eight levels; `deep`: nine levels.
    for (repo, indexes) in [("shallow", 7), ("deep", 8)] {
        let (mut m, blobs) = src.image(repo, repo);
        for _ in 0..indexes {
            let digest = src.by_digest(repo, &m);
            m = index(&[(&digest, m.len())]);
        }
        src.only_tag(repo, &m);
        if repo == "shallow" {
            want = blobs;
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let (config, dest) = local_config(dir.path(), &src.url(), &["shallow", "deep"]);
    let (out, stderr) = sync_bounded(&config).await;
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("deep:v1: indexes nested more than 8 levels deep"),
        "{stderr}"
    );
    assert_eq!(local_blobs(&dest), want, "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_whose_bytes_do_not_match_its_digest_is_refused() {
    let src = FakeRegistry::start().await;
    let (good, want) = src.image("forged", "good");
    let good_digest = src.by_digest("forged", &good);
    let (bad, _) = src.image("forged", "bad");
    let claimed = sha256(b"what the index promised");
    src.manifest("forged", &claimed, &bad);
    src.only_tag(
        "forged",
        &index(&[(&claimed, bad.len()), (&good_digest, good.len())]),
    );

    let dir = tempfile::tempdir().unwrap();
    let (config, dest) = local_config(dir.path(), &src.url(), &["forged"]);
    let (out, stderr) = sync_bounded(&config).await;
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "forged:v1: manifest {claimed}: the registry sent bytes with digest {}: refused",
            sha256(&bad)
        )),
        "{stderr}"
    );
    assert_eq!(local_blobs(&dest), want, "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blob_longer_than_its_declared_size_is_cut_off() {
    let src = FakeRegistry::start().await;
    let (m, blobs) = src.image("long", "l");
    let manifest: serde_json::Value = serde_json::from_slice(&m).unwrap();
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let size = manifest["layers"][0]["size"].as_u64().unwrap();
    // 64 MiB where the manifest declares a few hundred bytes, with no length announced.
    const SENT: usize = 64 << 20;
    src.answer(
        &format!("/v2/long/blobs/{layer}"),
        &[],
        Body::Unframed(SENT),
    );
    src.only_tag("long", &m);

    let dir = tempfile::tempdir().unwrap();
    let (config, dest) = local_config(dir.path(), &src.url(), &["long"]);
    let (out, stderr) = sync_bounded(&config).await;
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "blob {layer} to file://{}: the registry sent more than the {size} bytes the manifest declares: refused, nothing written",
            dest.display()
        )),
        "{stderr}"
    );
    // The stream was dropped early (what was sent is at most the socket buffers' worth).
    assert!(src.unframed_sent.load(Ordering::Relaxed) < SENT);
    let mut want = blobs;
    want.remove(&layer);
    assert_eq!(local_blobs(&dest), want, "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_reports_corrupt_objects_and_repair_copies_them_again() {
    let img = images();
    let reg = Registry::start(&img.storage, None, Auth::None);
    let moto = Moto::start().await;
    moto.bucket("checked").await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &reg.url(false), &moto, "checked", "");
    let out = sync(&config, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let objects = moto.keys("checked").await.len() as u64;

    // One object overwritten with other bytes, one cut short.
    let layer = format!("containers/images/{}", img.app_layer);
    let config_key = format!("containers/images/{}", img.app_config);
    moto.put("checked", &layer, b"not the layer").await;
    let whole = moto.get("checked", &config_key).await;
    moto.put("checked", &config_key, &whole[..whole.len() / 2])
        .await;

    let metrics = dir.path().join("verify.prom");
    let out = sync(
        &config,
        &["--verify", "--metrics-file", metrics.to_str().unwrap()],
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    for key in [&layer, &config_key] {
        assert!(
            stdout.contains(&format!("corrupt {key} in s3://checked: ")),
            "{stdout}\n{stderr}"
        );
    }
    let s = summary(&out);
    assert_eq!(count(&s, "objects checked"), objects, "{s}");
    assert_eq!(count(&s, "corrupt"), 2, "{s}");
    let prom = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        prom.contains("archeio_sync_corrupt_objects_total 2"),
        "{prom}"
    );
    // Verifying alone changes nothing.
    assert_eq!(moto.get("checked", &layer).await, b"not the layer");

    let out = sync(&config, &["--verify", "--repair"]);
    let s = summary(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(count(&s, "corrupt"), 2, "{s}");
    assert_eq!(count(&s, "repaired"), 2, "{s}");
    for (key, digest) in [(&layer, &img.app_layer), (&config_key, &img.app_config)] {
        assert_eq!(&sha256(&moto.get("checked", key).await), digest);
    }
    let out = sync(&config, &["--verify"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(count(&summary(&out), "corrupt"), 0);
}
