//! Live cloud ranges: files re-read on SIGHUP, URLs fetched after start-up and on the
//! interval, bad or shrunken versions refused while the last good table keeps serving.

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Response;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use common::*;

/// An AWS range document placing 127.0.0.0/8 (and `fillers` more networks) in `region`.
fn aws_doc(region: &str, fillers: usize) -> String {
    let mut prefixes = vec![
        serde_json::json!({"ip_prefix": "127.0.0.0/8", "region": region, "service": "AMAZON"}),
    ];
    for i in 0..fillers {
        prefixes.push(serde_json::json!({"ip_prefix": format!("10.{i}.0.0/16"), "region": region, "service": "AMAZON"}));
    }
    serde_json::json!({"syncToken": "1", "prefixes": prefixes, "ipv6_prefixes": []}).to_string()
}

struct Setup {
    gw: Gateway,
    r1: Mirror,
    r2: Mirror,
    n: u8,
}

impl Setup {
    async fn start(ranges: &str) -> Setup {
        let (r1, r2, default) = (
            Mirror::start().await,
            Mirror::start().await,
            Mirror::start().await,
        );
        let keys = format!(
            "  upstream: {{endpoints: ['http://upstream.test']}}
  mirrors: {{default: '{}', replace_regions: true, regions: {{r1: '{}', r2: '{}'}}}}
  client_address: {{trusted_proxy_hops: 0}}
  ranges: {ranges}",
            default.base(),
            r1.base(),
            r2.base()
        );
        Setup {
            gw: Gateway::start(&keys).await,
            r1,
            r2,
            n: 0,
        }
    }

    /// The region a fresh blob request is checked in.
    async fn region(&mut self) -> &'static str {
        self.n += 1;
        let digest = format!("sha256:{:064x}", self.n);
        let r = self.gw.get(&format!("/v2/p/blobs/{digest}")).await;
        assert_eq!(r.status, 307);
        let path = format!("/containers/images/{digest}");
        match (self.r1.heads(&path), self.r2.heads(&path)) {
            (1, 0) => "r1",
            (0, 1) => "r2",
            // Not placed yet (before the first fetch of a URL): the default mirror.
            (0, 0) => "none",
            other => panic!("blob checked at {other:?}"),
        }
    }

    /// Waits until blob requests are checked in `region`.
    async fn wait_for(&mut self, region: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.region().await != region {
            assert!(
                Instant::now() < deadline,
                "never moved to {region}:\n{}",
                self.gw.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn hangup(&self) {
        let ok = std::process::Command::new("kill")
            .args(["-HUP", &self.gw.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    async fn refreshes(&self, source: &str, result: &str) -> f64 {
        let m = self.gw.metrics().await;
        sample(
            &m,
            &format!("archeio_range_refreshes_total{{result=\"{result}\",source=\"{source}\"}}"),
        )
    }

    async fn wait_refreshes(&self, source: &str, result: &str, at_least: f64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.refreshes(source, result).await < at_least {
            assert!(
                Instant::now() < deadline,
                "no {result} refresh of {source}:\n{}",
                self.gw.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_rereads_files_and_refuses_bad_or_shrunken_versions() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ranges.json");
    std::fs::write(&file, aws_doc("r1", 9)).unwrap();
    let f = file.display().to_string();
    let mut s = Setup::start(&format!(
        "{{embedded: false, aws_files: ['{f}'], refresh_interval: 0s}}"
    ))
    .await;
    assert_eq!(s.region().await, "r1");

    std::fs::write(&file, aws_doc("r2", 9)).unwrap();
    s.hangup();
    s.wait_for("r2").await;
    let ok = s.refreshes(&f, "ok").await;
    assert!(ok >= 1.0);
    let m = s.gw.metrics().await;
    assert!(
        sample(
            &m,
            &format!("archeio_range_last_success_timestamp_seconds{{source=\"{f}\"}}")
        ) > 1.7e9
    );

    // Far fewer prefixes than the last good version (a truncated file): refused.
    std::fs::write(&file, aws_doc("r1", 2)).unwrap();
    s.hangup();
    s.wait_refreshes(&f, "failed", 1.0).await;
    assert_eq!(s.region().await, "r2");
    assert!(
        s.gw.log()
            .contains("refused: 3 prefixes where the last good version had 10"),
        "{}",
        s.gw.log()
    );

    // Not a range document at all: refused too.
    std::fs::write(&file, "{\"prefixes\": [{\"ip_prefix\": \"nope\"}]}").unwrap();
    s.hangup();
    s.wait_refreshes(&f, "failed", 2.0).await;
    assert_eq!(s.region().await, "r2");
    std::fs::remove_file(&file).unwrap();
    s.hangup();
    s.wait_refreshes(&f, "failed", 3.0).await;
    assert_eq!(s.region().await, "r2");
    assert_eq!(s.refreshes(&f, "ok").await, ok);

    // A good version is taken again.
    std::fs::write(&file, aws_doc("r1", 9)).unwrap();
    s.hangup();
    s.wait_for("r1").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn urls_are_fetched_after_start_up_and_on_the_interval() {
    let doc = Arc::new(Mutex::new(aws_doc("r1", 4)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = doc.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let served = served.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req| {
                    let body = served.lock().unwrap().clone();
                    async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let url = format!("http://{addr}/ip-ranges.json");
    let mut s = Setup::start(&format!(
        "{{embedded: false, aws_urls: ['{url}'], refresh_interval: 300ms}}"
    ))
    .await;
    s.wait_for("r1").await;
    *doc.lock().unwrap() = aws_doc("r2", 4);
    s.wait_for("r2").await;
    assert!(s.refreshes(&url, "ok").await >= 2.0);
}

/// Serves `docs[path]` for every path, as it is at the time of the request.
async fn serve(docs: Arc<Mutex<std::collections::HashMap<String, String>>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let docs = docs.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let body = docs.lock().unwrap()[req.uri().path()].clone();
                    async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

/// An Azure Service Tags document placing `prefix` in `region`.
fn azure_doc(prefix: &str, region: &str) -> String {
    serde_json::json!({"changeNumber": 1, "cloud": "Public", "values": [
        {"name": format!("AzureCloud.{region}"), "id": format!("AzureCloud.{region}"),
         "properties": {"region": region, "addressPrefixes": [prefix, "2603:1030::/32"]}}
    ]})
    .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_azure_and_geofeed_downloads_are_refused_and_the_last_good_table_stays() {
    let docs = Arc::new(Mutex::new(std::collections::HashMap::from([
        ("/azure.json".to_string(), azure_doc("127.0.0.0/8", "r1")),
        (
            "/geo.csv".to_string(),
            "# corp\n10.0.0.0/8,US,r2,,\n".to_string(),
        ),
    ])));
    let base = serve(docs.clone()).await;
    let (azure, geo) = (format!("{base}/azure.json"), format!("{base}/geo.csv"));
    let mut s = Setup::start(&format!(
        "{{embedded: false, refresh_interval: 200ms, sources: [\
         {{format: geofeed, url: '{geo}', provider: corp}}, {{format: azure, url: '{azure}'}}]}}"
    ))
    .await;
    s.wait_for("r1").await;

    // Azure: a bad prefix refuses the whole document; 127.0.0.1 stays in r1.
    docs.lock()
        .unwrap()
        .insert("/azure.json".into(), azure_doc("127.0.0.0/33", "r2"));
    s.wait_refreshes(&azure, "failed", 2.0).await;
    assert_eq!(s.region().await, "r1");
    assert!(
        s.gw.log()
            .contains("values[0].properties.addressPrefixes[0]"),
        "{}",
        s.gw.log()
    );

    // The geofeed, listed first, takes 127.0.0.0/8 over Azure's identical prefix.
    docs.lock()
        .unwrap()
        .insert("/geo.csv".into(), "127.0.0.0/8,US,r2,,\n".into());
    s.wait_for("r2").await;
    // A line with a bad prefix refuses the whole geofeed: still r2, not back to Azure's r1.
    docs.lock().unwrap().insert(
        "/geo.csv".into(),
        "127.0.0.0/8,US,r1,,\n127.0.0.300/8,US,r1,,\n".into(),
    );
    s.wait_refreshes(&geo, "failed", 2.0).await;
    assert_eq!(s.region().await, "r2");
    assert!(
        s.gw.log().contains("line 2: \"127.0.0.300/8\""),
        "{}",
        s.gw.log()
    );
}
