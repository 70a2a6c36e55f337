//! `archeio sync` against a real `docker-registry` (filled by skopeo) and a real
//! S3-compatible server (`moto_server`) on loopback; then the gateway sends clients to the
//! bucket for the synced blobs.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::registry::{images, Auth, Registry};
use common::*;

/// A `moto_server` process, killed on drop.
struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    async fn start() -> Moto {
        let port = free_port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs (moto_server: python3 -m pip install 'moto[server]')");
        let moto = Moto { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while request(moto.addr(), "GET", "/", &[]).await.is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        moto
    }

    fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    async fn bucket(&self, name: &str) {
        let r = request(
            self.addr(),
            "PUT",
            format!("/{name}"),
            &[("Content-Length", "0")],
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
    }

    /// Object keys in the bucket.
    async fn keys(&self, bucket: &str) -> BTreeSet<String> {
        let r = request(
            self.addr(),
            "GET",
            format!("/{bucket}?list-type=2&max-keys=1000"),
            &[],
        )
        .await
        .unwrap();
        let xml = String::from_utf8(r.body).unwrap();
        xml.split("<Key>")
            .skip(1)
            .map(|s| s.split("</Key>").next().unwrap().to_string())
            .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
    let keys = format!(
        "  upstream: {{endpoints: ['{}'], path: ''}}
  mirrors: {{default: 'http://127.0.0.1:1', regions: {{us-east-1: 'http://127.0.0.1:{}/mirror'}}}}
  ranges: {{embedded: false, custom: [{{cidr: 127.0.0.0/8, cloud: aws, region: us-east-1}}]}}
  client_address: {{trusted_proxy_hops: 0}}",
        reg.url(false),
        moto.port
    );
    let gw = Gateway::start(&keys).await;
    let r = gw
        .get(&format!("/v2/test/app/blobs/{}", img.app_layer))
        .await;
    assert_eq!(
        (r.status, r.location()),
        (
            307,
            format!(
                "http://127.0.0.1:{}/mirror/containers/images/{}",
                moto.port, img.app_layer
            )
            .as_str()
        )
    );
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
    let keys = format!(
        "  upstream: {{endpoints: ['{}'], path: ''}}
  mirrors: {{default: 'http://127.0.0.1:1', regions: {{us-east-1: 'http://127.0.0.1:{}/prefixed/eu/v1'}}}}
  ranges: {{embedded: false, custom: [{{cidr: 127.0.0.0/8, cloud: aws, region: us-east-1}}]}}
  client_address: {{trusted_proxy_hops: 0}}",
        reg.url(false),
        moto.port
    );
    let gw = Gateway::start(&keys).await;
    let r = gw
        .get(&format!("/v2/test/app/blobs/{}", img.app_layer))
        .await;
    assert_eq!(
        (r.status, r.location()),
        (
            307,
            format!(
                "http://127.0.0.1:{}/prefixed/eu/v1/containers/images/{}",
                moto.port, img.app_layer
            )
            .as_str()
        )
    );
}
