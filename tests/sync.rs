//! `archeio sync` against a real `docker-registry` (filled by skopeo) and a real
//! S3-compatible server (`moto_server`) on loopback; then the gateway sends clients to the
//! bucket for the synced blobs.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use common::moto::Moto;
use common::registry::{images, sha256, Auth, Registry};
use common::token::TokenServer;
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
    assert_eq!(count(&summary(&out), "blobs ("), expected.len() as u64);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("would copy sha256:"))
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
    /// An empty answer with this status (the route's headers say the rest: `Location`,
    /// `WWW-Authenticate`).
    Status(u16),
}

/// Who must authenticate to a [`FakeRegistry`], and who did.
#[derive(Default)]
struct Credentials {
    /// The `Authorization` value every request must carry, else `401` with a Basic
    /// challenge; `None`: nobody is asked.
    required: Option<String>,
    /// Requests that carried an `Authorization`, per target.
    carried: HashMap<String, usize>,
}

type Routes = HashMap<String, (Vec<(String, String)>, Body)>;

/// A source registry that misbehaves on purpose: canned `200` answers by request target (path
/// and query), `404` for anything else, on 127.0.0.1 and an ephemeral port. Counts requests
/// per target and the bytes of unframed bodies written. Stops accepting on drop.
struct FakeRegistry {
    addr: SocketAddr,
    routes: Arc<Mutex<Routes>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    credentials: Arc<Mutex<Credentials>>,
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
        let credentials = Arc::new(Mutex::new(Credentials::default()));
        let state = (
            routes.clone(),
            hits.clone(),
            credentials.clone(),
            unframed_sent.clone(),
        );
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(FakeRegistry::serve(stream, state.clone()));
            }
        });
        FakeRegistry {
            addr,
            routes,
            hits,
            credentials,
            unframed_sent,
            server,
        }
    }

    /// One request per connection (`Connection: close`).
    #[allow(clippy::type_complexity)]
    async fn serve(
        mut stream: TcpStream,
        (routes, hits, credentials, unframed_sent): (
            Arc<Mutex<Routes>>,
            Arc<Mutex<HashMap<String, usize>>>,
            Arc<Mutex<Credentials>>,
            Arc<AtomicUsize>,
        ),
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
        let text = String::from_utf8_lossy(&head);
        let authorization = text.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("authorization")
                .then(|| value.trim().to_string())
        });
        let refused = {
            let mut c = credentials.lock().unwrap();
            if authorization.is_some() {
                *c.carried.entry(target.clone()).or_default() += 1;
            }
            c.required.is_some() && c.required != authorization
        };
        if refused {
            let _ = stream
                .write_all(
                    b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"fake\"\r\n\
                      Content-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
            return;
        }
        let route = routes.lock().unwrap().get(&target).cloned();
        let Some((headers, body)) = route else {
            let _ = stream
                .write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
            return;
        };
        let status = match body {
            Body::Status(status) => status,
            _ => 200,
        };
        let mut answer = format!("HTTP/1.1 {status} Canned\r\nConnection: close\r\n");
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
            Body::Status(_) => {
                answer.push_str("Content-Length: 0\r\n\r\n");
                let _ = stream.write_all(answer.as_bytes()).await;
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

    /// Every request must carry `Authorization: <value>`.
    fn require(&self, value: &str) {
        self.credentials.lock().unwrap().required = Some(value.to_string());
    }

    /// Requests to `target` that carried an `Authorization`.
    fn carried_credentials(&self, target: &str) -> usize {
        let c = self.credentials.lock().unwrap();
        c.carried.get(target).copied().unwrap_or(0)
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

/// The variables object_store takes AWS credentials (or the metadata service) from: removed
/// from every bounded run, so that it sees only what its test sets.
const AWS_VARIABLES: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_METADATA_ENDPOINT",
];

/// `archeio sync -c config extra...` with `env` (and no other AWS variable), without blocking
/// the runtime that serves a [`FakeRegistry`]; a run still going after 30 s (a loop, a stall)
/// fails the test and is killed.
async fn sync_bounded(config: &str, extra: &[&str], env: &[(&str, &str)]) -> (Output, String) {
    let mut command = tokio::process::Command::new(BINARY);
    command.args(["sync", "-c", config]).args(extra);
    for var in AWS_VARIABLES {
        command.env_remove(var);
    }
    let child = command
        .envs(env.iter().copied())
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
    let (out, stderr) = sync_bounded(&config, &[], &[]).await;
    assert_eq!(elsewhere.all_hits(), 0, "followed a Link to another origin");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("away: GET {}/v2/away/tags/list?n=1000: the next-page Link points to another origin ({away}): refused", src.url())),
        "{stderr}"
    );
    assert_eq!(local_blobs(&dest), want, "{stderr}");
}

/// Issue 24, defect 7: the catalog, tag lists and manifests come from the source's own origin
/// only; a redirect elsewhere (a metadata service, say) is refused, not followed. Blobs may be
/// redirected to storage on another host (their bytes are checked against the digest).
#[tokio::test(flavor = "multi_thread")]
async fn lists_and_manifests_are_not_read_through_a_redirect_to_another_origin() {
    let src = FakeRegistry::start().await;
    let elsewhere = FakeRegistry::start().await;
    let metadata = format!("http://{}/latest/meta-data/", elsewhere.addr);
    src.answer(
        "/v2/tags/tags/list?n=1000",
        &[("Location", &metadata)],
        Body::Status(302),
    );
    elsewhere.tags_page("tags", "/latest/meta-data/", &["v1"], None);
    let (m, _) = src.image("manifest", "x");
    src.tags_page("manifest", "/v2/manifest/tags/list?n=1000", &["v1"], None);
    src.answer(
        "/v2/manifest/manifests/v1",
        &[("Location", &format!("http://{}/m", elsewhere.addr))],
        Body::Status(302),
    );
    elsewhere.answer(
        "/m",
        &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
        Body::Bytes(m),
    );
    // A blob in storage elsewhere: followed.
    let (m, blobs) = src.image("storage", "y");
    src.only_tag("storage", &m);
    // The layer `image` made, now at the other server.
    let bytes = "layer y ".repeat(100).into_bytes();
    let layer_digest = sha256(&bytes);
    assert!(blobs.contains(&layer_digest));
    elsewhere.answer(&format!("/bucket/{layer_digest}"), &[], Body::Bytes(bytes));
    src.answer(
        &format!("/v2/storage/blobs/{layer_digest}"),
        &[(
            "Location",
            &format!("http://{}/bucket/{layer_digest}", elsewhere.addr),
        )],
        Body::Status(302),
    );

    let dir = tempfile::tempdir().unwrap();
    let (config, dest) = local_config(dir.path(), &src.url(), &["tags", "manifest", "storage"]);
    let (out, stderr) = sync_bounded(&config, &[], &[]).await;
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(elsewhere.hits("/latest/meta-data/"), 0, "{stderr}");
    assert_eq!(elsewhere.hits("/m"), 0, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "GET {}/v2/tags/tags/list?n=1000: redirected to another origin",
            src.url()
        )),
        "{stderr}"
    );
    assert_eq!(
        elsewhere.hits(&format!("/bucket/{layer_digest}")),
        1,
        "{stderr}"
    );
    assert_eq!(local_blobs(&dest), blobs, "{stderr}");
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
    let (out, stderr) = sync_bounded(&config, &[], &[]).await;
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
    let (_, stderr) = sync_bounded(&config, &[], &[]).await;
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
    let (out, stderr) = sync_bounded(&config, &[], &[]).await;
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
    let (out, stderr) = sync_bounded(&config, &[], &[]).await;
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
    let (out, stderr) = sync_bounded(&config, &[], &[]).await;
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

/// A configuration syncing `repo` of `registry` into the bucket `bucket` of the S3 endpoint
/// `endpoint`, with `extra` keys for the destination.
fn s3_config(dir: &Path, registry: &str, endpoint: &str, bucket: &str, extra: &str) -> String {
    let path = dir.join("sync.yaml");
    std::fs::write(
        &path,
        format!(
            "sync:
  source: {{registry: '{registry}', repositories: [app], attempts: 1, timeout: 5s}}
  destinations:
    - url: s3://{bucket}
      endpoint: {endpoint}
{extra}"
        ),
    )
    .unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_s3_destination_without_credentials_fails_before_copying_naming_what_was_looked_for() {
    let src = FakeRegistry::start().await;
    let (m, _) = src.image("app", "a");
    src.only_tag("app", &m);
    // Neither the store nor an instance metadata service may be asked.
    let (s3, imds) = (BlackHole::start().await, BlackHole::start().await);
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://{}", s3.addr);
    let config = s3_config(dir.path(), &src.url(), &endpoint, "nocreds", "");
    let metadata = format!("http://{}", imds.addr);
    let started = Instant::now();
    let (out, stderr) = sync_bounded(&config, &[], &[("AWS_METADATA_ENDPOINT", &metadata)]).await;
    assert!(started.elapsed() < Duration::from_secs(10), "{stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.matches("no credentials").count(), 1, "{stderr}");
    assert!(
        stderr.contains(
            "s3://nocreds: no credentials found; looked for an access key (AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY), a web identity (AWS_WEB_IDENTITY_TOKEN_FILE with AWS_ROLE_ARN) \
             and container credentials (AWS_CONTAINER_CREDENTIALS_RELATIVE_URI, or \
             AWS_CONTAINER_CREDENTIALS_FULL_URI with AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE); set \
             one, or `credentials: instance_metadata` to use the EC2 instance metadata service"
        ),
        "{stderr}"
    );
    assert_eq!(
        (src.all_hits(), s3.accepted(), imds.accepted()),
        (0, 0, 0),
        "{stderr}"
    );

    // Half a key pair, in variables the configuration names: the missing half is named, the
    // value of the other is not shown.
    let config = s3_config(
        dir.path(),
        &src.url(),
        &endpoint,
        "nocreds",
        "      access_key_id_env: MIRROR_KEY_ID\n      secret_access_key_env: MIRROR_SECRET\n",
    );
    let (out, stderr) = sync_bounded(&config, &[], &[("MIRROR_SECRET", "do-not-print-me")]).await;
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("s3://nocreds: MIRROR_SECRET is set but MIRROR_KEY_ID is not"),
        "{stderr}"
    );
    assert!(!stderr.contains("do-not-print-me"), "{stderr}");
    assert_eq!((src.all_hits(), s3.accepted()), (0, 0), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn instance_metadata_is_asked_once_when_chosen_and_a_dead_service_stops_the_run_once() {
    let src = FakeRegistry::start().await;
    let (m, want) = src.image("app", "a");
    src.only_tag("app", &m);
    let moto = Moto::start().await;
    moto.bucket("imds").await;
    // An instance metadata service (IMDSv2) handing out a role's temporary credentials.
    let imds = FakeRegistry::start().await;
    imds.answer("/latest/api/token", &[], Body::Bytes(b"session".to_vec()));
    let role = "/latest/meta-data/iam/security-credentials/";
    imds.answer(role, &[], Body::Bytes(b"sync-role".to_vec()));
    let credentials = serde_json::json!({"AccessKeyId": "imds-key", "SecretAccessKey": "imds-secret",
        "Token": "imds-token", "Expiration": "2100-01-01T00:00:00Z"});
    imds.answer(
        &format!("{role}sync-role"),
        &[],
        Body::Bytes(credentials.to_string().into_bytes()),
    );
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://127.0.0.1:{}", moto.port);
    let config = s3_config(
        dir.path(),
        &src.url(),
        &endpoint,
        "imds",
        "      credentials: instance_metadata\n",
    );
    let (out, stderr) = sync_bounded(&config, &[], &[("AWS_METADATA_ENDPOINT", &imds.url())]).await;
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let keys: BTreeSet<String> = want
        .iter()
        .map(|d| format!("containers/images/{d}"))
        .collect();
    assert_eq!(moto.keys("imds").await, keys, "{stderr}");
    // Two blobs, two HEADs, two uploads: one credential fetch.
    assert_eq!(imds.hits("/latest/api/token"), 1, "{stderr}");

    // A metadata service that never answers: a few attempts in all, not per blob, and the
    // run stops before the source is walked.
    let dead = BlackHole::start().await;
    let (walked, started) = (src.all_hits(), Instant::now());
    let metadata = format!("http://{}", dead.addr);
    let (out, stderr) = sync_bounded(&config, &[], &[("AWS_METADATA_ENDPOINT", &metadata)]).await;
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(20), "{stderr}");
    let line =
        format!("s3://imds: no credentials from the instance metadata service at {metadata}: ");
    assert_eq!(stderr.matches(&line).count(), 1, "{stderr}");
    assert!(stderr.contains("timed out"), "{stderr}");
    assert!(dead.accepted() <= 3, "{} attempts", dead.accepted());
    assert_eq!(src.all_hits(), walked, "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_creates_nothing_and_says_what_it_would_copy() {
    let src = FakeRegistry::start().await;
    let (m, want) = src.image("app", "a");
    src.only_tag("app", &m);
    let manifest: serde_json::Value = serde_json::from_slice(&m).unwrap();
    let size = manifest["config"]["size"].as_u64().unwrap()
        + manifest["layers"][0]["size"].as_u64().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (config, dest) = local_config(dir.path(), &src.url(), &["app"]);

    let (out, stderr) = sync_bounded(&config, &["--dry-run"], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        summary(&out).starts_with(&format!(
            "sync (dry run): would copy 2 blobs ({size} bytes), 0 already present, 0 failed, 0 source errors in "
        )),
        "{}\n{stderr}",
        summary(&out)
    );
    assert!(!dest.exists(), "the dry run created {}", dest.display());
    for digest in &want {
        assert_eq!(src.hits(&format!("/v2/app/blobs/{digest}")), 0);
    }

    // Once copied, a dry run would copy nothing.
    let (out, stderr) = sync_bounded(&config, &[], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let (out, stderr) = sync_bounded(&config, &["--dry-run"], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        summary(&out).starts_with(
            "sync (dry run): would copy 0 blobs (0 bytes), 2 already present, 0 failed,"
        ),
        "{}",
        summary(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_source_is_reported_once_with_its_cause() {
    let hole = BlackHole::start().await;
    // Plain HTTP: a TLS handshake with it fails.
    let plain = Mirror::start().await;
    for (registry, cause) in [
        (
            format!("http://127.0.0.1:{}", free_port()),
            "Connection refused",
        ),
        (format!("http://{}", hole.addr), "timed out"),
        (format!("https://{}", plain.addr), "corrupt message"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("sync.yaml");
        std::fs::write(
            &config,
            format!(
                "sync:
  source: {{registry: '{registry}', repositories: [a, b], attempts: 1, timeout: 1s}}
  destinations: [{{url: 'file://{}'}}]
",
                dir.path().join("dest").display()
            ),
        )
        .unwrap();
        let (out, stderr) = sync_bounded(config.to_str().unwrap(), &[], &[]).await;
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let line = format!("cannot reach the source {registry}/v2/: ");
        let lines: Vec<&str> = stderr.lines().filter(|l| l.contains(&line)).collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(lines[0].contains(cause), "{stderr}");
        // Not walked: no error per repository.
        assert!(!stderr.contains(" a: "), "{stderr}");
    }
}

/// Pushes `repo:v1`, an image of a config naming the repository and `layers`, through the
/// registry's API; the digests of its blobs.
async fn push(registry: &Registry, repo: &str, layers: &[&[u8]]) -> BTreeSet<String> {
    let client = reqwest::Client::new();
    let base = url::Url::parse(&registry.url(false)).unwrap();
    let config = serde_json::json!({"architecture": "amd64", "os": "linux", "repository": repo})
        .to_string()
        .into_bytes();
    let mut descriptors = Vec::new();
    for blob in std::iter::once(&config[..]).chain(layers.iter().copied()) {
        let digest = sha256(blob);
        let resp = client
            .post(base.join(&format!("/v2/{repo}/blobs/uploads/")).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        let mut upload = base
            .join(resp.headers()["location"].to_str().unwrap())
            .unwrap();
        upload.query_pairs_mut().append_pair("digest", &digest);
        let resp = client.put(upload).body(blob.to_vec()).send().await.unwrap();
        assert_eq!(resp.status(), 201, "{:?}", resp.text().await);
        descriptors.push(serde_json::json!({"digest": digest, "size": blob.len(),
            "mediaType": "application/vnd.oci.image.layer.v1.tar"}));
    }
    descriptors[0]["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
    let manifest = serde_json::json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptors[0], "layers": descriptors[1..]});
    let resp = client
        .put(base.join(&format!("/v2/{repo}/manifests/v1")).unwrap())
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{:?}", resp.text().await);
    descriptors
        .iter()
        .map(|d| d["digest"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn shards_split_the_repositories_and_together_copy_what_a_full_run_does() {
    let storage = tempfile::tempdir().unwrap();
    let reg = Registry::start(storage.path(), None, Auth::None);
    // Six repositories, each with a layer of its own and one base layer they all share.
    let base = b"a base layer every repository has ".repeat(50);
    let mut blobs_of = BTreeMap::new();
    for i in 0..6 {
        let repo = format!("team/r{i}");
        let own = format!("the layer of {repo} only ").repeat(50);
        let blobs = push(&reg, &repo, &[&base, own.as_bytes()]).await;
        blobs_of.insert(repo, blobs);
    }
    let base = sha256(&base);
    // Each run into its own directory, the repositories found through the catalog.
    let dir = tempfile::tempdir().unwrap();
    let config = |name: &str| {
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &path,
            format!(
                "sync:
  source: {{registry: '{}', prefix: team/, attempts: 1, timeout: 5s}}
  destinations: [{{url: 'file://{}'}}]
",
                reg.url(false),
                dir.path().join(name).display()
            ),
        )
        .unwrap();
        path.display().to_string()
    };
    let mut copied = BTreeMap::new();
    for (name, extra) in [
        ("full", &[][..]),
        ("shard0", &["--shard", "0/2"][..]),
        ("shard1", &["--shard", "1/2"][..]),
    ] {
        let (out, stderr) = sync_bounded(&config(name), extra, &[]).await;
        assert_eq!(out.status.code(), Some(0), "{name}: {stderr}");
        copied.insert(name, local_blobs(&dir.path().join(name)));
    }
    let every: BTreeSet<String> = blobs_of.values().flatten().cloned().collect();
    assert_eq!(copied["full"], every);
    let union: BTreeSet<String> = copied["shard0"].union(&copied["shard1"]).cloned().collect();
    assert_eq!(union, copied["full"]);
    // Each repository is in exactly one shard, which copied all of its blobs, and a shard
    // copied nothing of the other's repositories but the shared base layer.
    let mut owned = [BTreeSet::new(), BTreeSet::new()];
    for (repo, blobs) in &blobs_of {
        let own: BTreeSet<&String> = blobs.iter().filter(|d| **d != base).collect();
        let shards: Vec<usize> = ["shard0", "shard1"]
            .iter()
            .enumerate()
            .filter(|(_, s)| own.iter().all(|d| copied[**s].contains(*d)))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(shards.len(), 1, "{repo} in shards {shards:?}");
        owned[shards[0]].extend(blobs.iter().cloned());
    }
    assert!(
        owned.iter().all(|o| !o.is_empty()),
        "one shard got every repository: the names test nothing"
    );
    assert_eq!(copied["shard0"], owned[0]);
    assert_eq!(copied["shard1"], owned[1]);
    let both: BTreeSet<String> = copied["shard0"]
        .intersection(&copied["shard1"])
        .cloned()
        .collect();
    assert_eq!(both, BTreeSet::from([base]));

    // Into one destination, one shard after the other: the second finds the shared layer
    // there and copies only its own.
    let out = Command::new(BINARY)
        .args(["sync", "-c", &config("shard0"), "--shard", "1/2"])
        .output()
        .unwrap();
    let s = summary(&out);
    assert_eq!(count(&s, "blobs copied"), owned[1].len() as u64 - 1, "{s}");
    assert_eq!(count(&s, "already present"), 1, "{s}");
    assert_eq!(local_blobs(&dir.path().join("shard0")), copied["full"]);
}

#[test]
fn a_bad_shard_is_a_usage_error() {
    for bad in ["2/2", "0/0", "1", "a/2", "-1/2", "0/2/3", ""] {
        let out = Command::new(BINARY)
            .args(["sync", "-c", "sync.yaml", "--shard", bad])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(
            stderr.contains(&format!("invalid value '{bad}' for '--shard <I/N>'")),
            "{bad}: {stderr}"
        );
        assert!(stderr.contains("try '--help'"), "{bad}: {stderr}");
    }
}

/// Issue 24, defect 4: a source behind Basic auth (Distribution with htpasswd) is read with
/// `source.credentials`, the catalog included; wrong or missing credentials fail the run.
#[tokio::test(flavor = "multi_thread")]
async fn an_authenticated_source_is_read_with_its_credentials() {
    let img = images();
    let reg = Registry::start(
        &img.storage,
        None,
        Auth::Basic {
            user: "puller".into(),
            password: "s3cret-pass".into(),
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let run = |password: Option<&str>, name: &str| {
        let dest = dir.path().join(name);
        let credentials = match password {
            Some(p) => {
                let file = dir.path().join(format!("{name}.password"));
                std::fs::write(&file, format!("{p}\n")).unwrap();
                format!(
                    ", credentials: {{username: puller, password_file: '{}'}}",
                    file.display()
                )
            }
            None => String::new(),
        };
        let config = dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &config,
            format!(
                "sync:
  source: {{registry: '{}', prefix: test/app, attempts: 1, timeout: 5s{credentials}}}
  destinations: [{{url: 'file://{}'}}]
",
                reg.url(false),
                dest.display()
            ),
        )
        .unwrap();
        (config.display().to_string(), dest)
    };
    let (config, dest) = run(Some("s3cret-pass"), "right");
    let out = sync(&config, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let copied = local_blobs(&dest);
    assert!(copied.contains(&img.app_layer), "{copied:?}\n{stderr}");
    assert!(copied.contains(&img.app_config), "{copied:?}");
    assert!(!stderr.contains("s3cret-pass"), "{stderr}");

    for (password, name) in [(Some("wrong"), "wrong"), (None, "none")] {
        let (config, dest) = run(password, name);
        let out = sync(&config, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: {stderr}");
        assert!(stderr.contains("401"), "{name}: {stderr}");
        assert!(local_blobs(&dest).is_empty(), "{name}");
    }
}

/// The same behind token auth: the credentials go to the registry's token service, and each
/// repository's requests carry a token for its scope.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_auth_source_is_read_with_tokens_from_its_realm() {
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
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, "t0ken-pass").unwrap();
    let dest = dir.path().join("dest");
    let config = dir.path().join("sync.yaml");
    std::fs::write(
        &config,
        format!(
            "sync:
  source: {{registry: '{}', repositories: [test/app], attempts: 1, timeout: 5s,
           credentials: {{username: puller, password_file: '{}'}}}}
  destinations: [{{url: 'file://{}'}}]
",
            reg.url(false),
            password.display(),
            dest.display()
        ),
    )
    .unwrap();
    let out = sync(config.to_str().unwrap(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let copied = local_blobs(&dest);
    assert!(copied.contains(&img.app_layer), "{copied:?}\n{stderr}");
    assert!(tokens.count("repository:test/app:pull") >= 1, "{stderr}");
}

/// The source's credentials go to the source only: not with a blob redirected to storage on
/// another host, and not to a token realm on a host nobody allowed (the source named it, and
/// the source is not trusted).
#[tokio::test(flavor = "multi_thread")]
async fn source_credentials_reach_no_other_host() {
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("puller:s3cret-pass")
    );
    let src = FakeRegistry::start().await;
    let storage = FakeRegistry::start().await;
    src.require(&basic);
    let (m, blobs) = src.image("app", "z");
    src.only_tag("app", &m);
    let bytes = "layer z ".repeat(100).into_bytes();
    let layer = sha256(&bytes);
    assert!(blobs.contains(&layer));
    let stored = format!("/bucket/{layer}");
    storage.answer(&stored, &[], Body::Bytes(bytes));
    src.answer(
        &format!("/v2/app/blobs/{layer}"),
        &[("Location", &format!("http://{}{stored}", storage.addr))],
        Body::Status(302),
    );

    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, "s3cret-pass").unwrap();
    let config = |registry: &str, dest: &str| {
        let path = dir.path().join(format!("{dest}.yaml"));
        std::fs::write(
            &path,
            format!(
                "sync:
  source: {{registry: '{registry}', repositories: [app], attempts: 1, timeout: 5s,
           credentials: {{username: puller, password_file: '{}'}}}}
  destinations: [{{url: 'file://{}'}}]
",
                password.display(),
                dir.path().join(dest).display()
            ),
        )
        .unwrap();
        path.display().to_string()
    };
    let (out, stderr) = sync_bounded(&config(&src.url(), "copied"), &[], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(local_blobs(&dir.path().join("copied")), blobs, "{stderr}");
    assert!(src.carried_credentials(&format!("/v2/app/blobs/{layer}")) >= 1);
    assert_eq!(storage.hits(&stored), 1, "{stderr}");
    assert_eq!(
        storage.carried_credentials(&stored),
        0,
        "credentials went to storage"
    );

    // A source whose Bearer challenge names a realm on another host.
    let lure = FakeRegistry::start().await;
    let realm = FakeRegistry::start().await;
    let challenge = format!(
        "Bearer realm=\"http://localhost:{}/token\",service=\"lure\"",
        realm.addr.port()
    );
    lure.answer(
        "/v2/app/tags/list?n=1000",
        &[("WWW-Authenticate", &challenge)],
        Body::Status(401),
    );
    let (out, stderr) = sync_bounded(&config(&lure.url(), "lured"), &[], &[]).await;
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        realm.all_hits(),
        0,
        "the credentials went to the named realm"
    );
    assert!(stderr.contains("token realm host localhost"), "{stderr}");
    assert!(!stderr.contains("s3cret-pass"), "{stderr}");
}
