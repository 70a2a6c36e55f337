//! `SIGHUP`, or a change of the file, reloads the configuration (issue 25): a changed policy
//! takes effect without a restart, under load no request is lost or answered by a mix of two configurations, a
//! broken file or a listener change leaves the running configuration serving.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const DIGEST: &str = "sha256:4a1c4b21597c1b4415bdbecb28a3296c6b5e23ca4f9feeb599860a1dac6a0108";

/// The `archeio:` keys of configuration `which` (A or B): the same listeners, and blobs
/// sent to mirror `a.test` or `b.test`; B also hides repository `internal`.
fn keys(which: char) -> String {
    let mirror = if which == 'A' { "a.test" } else { "b.test" };
    let deny = if which == 'B' {
        "\n      - {match: {repository: internal}, action: deny}"
    } else {
        ""
    };
    format!(
        "  upstream: {{endpoints: ['http://upstream.test'], path: images}}
  ranges: {{embedded: false}}
  blob_check: {{miss_ttl: 0s}}
  mirrors: {{named: {{m: {{url: 'http://{mirror}'}}}}}}
  policy:
    rules:{deny}
      - {{match: {{kind: blob}}, action: upstream}}"
    )
}

/// Replaces the `archeio:` keys after the listener lines of the gateway's file.
fn rewrite(gw: &Gateway, archeio_keys: &str) {
    let path = gw.dir.path().join("archeio.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let head: Vec<&str> = text
        .lines()
        .take_while(|l| !l.starts_with("  upstream:"))
        .collect();
    write_file(gw, &format!("{}\n{archeio_keys}\n", head.join("\n")));
}

/// Replaces the gateway's file whole: written beside and renamed, so that neither a signal
/// nor the file watch ever reads it half-written.
fn write_file(gw: &Gateway, text: &str) {
    let tmp = gw.dir.path().join("archeio.yaml.new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, gw.dir.path().join("archeio.yaml")).unwrap();
}

fn hangup(gw: &Gateway) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &gw.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

async fn until(gw: &Gateway, what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done().await {
        assert!(Instant::now() < deadline, "{what}:\n{}", gw.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Issue 25: a changed rule plus `kill -HUP` left the old routing in place.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_swaps_the_configuration_and_refuses_a_broken_one() {
    let gw = Gateway::start(&keys('A')).await;
    let internal = "/v2/internal/manifests/v1";
    assert_eq!(gw.get(internal).await.status, 307);
    let m = gw.metrics().await;
    let first_hash = m
        .lines()
        .find_map(|l| l.strip_prefix("archeio_config_info{hash=\""))
        .map(|l| l[..l.find('"').unwrap()].to_string());

    rewrite(&gw, &keys('B'));
    hangup(&gw);
    until(&gw, "B's deny rule in effect", async || {
        gw.get(internal).await.status == 404
    })
    .await;
    // Counted just after the swap (and perhaps twice: the file watch may have seen the
    // change before the signal).
    until(&gw, "the reload counted", async || {
        sample(
            &gw.metrics().await,
            r#"archeio_config_reloads_total{result="ok"}"#,
        ) >= 1.0
    })
    .await;
    let m = gw.metrics().await;
    let first_hash = first_hash.expect("the configuration's hash is exported");
    assert!(!m.contains(&format!("archeio_config_info{{hash=\"{first_hash}\"}}")));
    assert!(m.contains("archeio_config_info{hash="));

    // A file that fails its check changes nothing, and says why as -t would.
    let path = gw.dir.path().join("archeio.yaml");
    let good = std::fs::read_to_string(&path).unwrap();
    write_file(&gw, &good.replace("action: deny", "action: refuse"));
    hangup(&gw);
    until(&gw, "the refusal logged", async || {
        gw.log().contains("configuration not reloaded")
    })
    .await;
    assert!(
        gw.log().contains("unknown variant `refuse`"),
        "{}",
        gw.log()
    );
    assert_eq!(gw.get(internal).await.status, 404, "B still serves");

    // A listener change needs a restart.
    write_file(
        &gw,
        &good.replace("admin_listen: ['127.0.0.1:", "admin_listen: ['127.0.0.2:"),
    );
    hangup(&gw);
    until(&gw, "the listener change refused", async || {
        gw.log()
            .contains("archeio.admin_listen changed, which needs a restart")
    })
    .await;
    let m = gw.metrics().await;
    // Each refused file once by its signal (and perhaps once more by the file watch, when it
    // looked between the write and the signal).
    assert!(sample(&m, r#"archeio_config_reloads_total{result="error"}"#) >= 2.0);
    assert_eq!(gw.get(internal).await.status, 404);
}

/// Issue 25: a ConfigMap update reaches the mounted file without a signal; the gateway
/// notices the change and reloads.
#[tokio::test(flavor = "multi_thread")]
async fn a_changed_file_is_reloaded_without_a_signal() {
    let gw = Gateway::start(&keys('A')).await;
    let internal = "/v2/internal/manifests/v1";
    assert_eq!(gw.get(internal).await.status, 307);
    rewrite(&gw, &keys('B'));
    until(&gw, "the changed file in effect", async || {
        gw.get(internal).await.status == 404
    })
    .await;
    assert!(gw.log().contains("changed: reloading it"), "{}", gw.log());
}

/// Issue 25: under steady load, 100 reloads alternating two configurations lose no request
/// and every answer is one configuration's or the other's.
#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_reloads_under_load_lose_no_request() {
    let gw = Arc::new(Gateway::start(&keys('A')).await);
    let stop = Arc::new(AtomicBool::new(false));
    let (answered, odd) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (gw, stop, answered, odd) = (gw.clone(), stop.clone(), answered.clone(), odd.clone());
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                // A's answer: 307 for both; B's: 404 for internal. Never a failure.
                let r = gw.get("/v2/internal/manifests/v1").await;
                let blob = gw.get(&format!("/v2/app/blobs/{DIGEST}")).await;
                let known = matches!(r.status, 307 | 404) && blob.status == 307;
                if !known {
                    odd.fetch_add(1, Ordering::Relaxed);
                    eprintln!("unexpected: {r:?} {blob:?}");
                }
                answered.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Signals sent faster than they are handled merge into one: each reload is waited for.
    for i in 0..100 {
        rewrite(&gw, &keys(if i % 2 == 0 { 'B' } else { 'A' }));
        hangup(&gw);
        let done = f64::from(i + 1);
        until(&gw, "the reload counted", async || {
            sample(
                &gw.metrics().await,
                r#"archeio_config_reloads_total{result="ok"}"#,
            ) >= done
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(odd.load(Ordering::Relaxed), 0, "{}", gw.log());
    assert!(answered.load(Ordering::Relaxed) > 100);
    let m = gw.metrics().await;
    assert_eq!(
        sample(&m, r#"archeio_config_reloads_total{result="error"}"#),
        0.0
    );
}

/// The `archeio:` keys of a gateway before (`false`) and after (`true`) a reload that
/// changes every reloadable key a request shows: the upstream's address, the range table's
/// custom rules, the trusted proxies, the client timeouts and the log format.
fn everything(after: bool) -> String {
    if !after {
        return "  upstream: {endpoints: ['http://upstream.test'], path: images}
  ranges: {embedded: false, custom: [{cidr: 198.18.0.0/15, provider: office, region: hq}]}
  policy:
    rules:
      - {match: {provider: office}, action: deny}
      - {match: {kind: blob}, action: upstream}"
            .into();
    }
    "  upstream: {endpoints: ['http://other.test'], path: images}
  ranges: {embedded: false, custom: [{cidr: 203.0.113.0/24, provider: office, region: hq}]}
  client_address: {trusted_proxies: [127.0.0.0/8]}
  client_timeouts: {header: 1s}
  log_format: json
  policy:
    rules:
      - {match: {provider: office}, action: deny}
      - {match: {kind: blob}, action: upstream}"
        .into()
}

/// Whether the gateway ends a connection whose request header never completes within `wait`.
async fn ends_an_unfinished_header_within(gw: &Gateway, wait: Duration) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    c.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(wait, c.read_to_end(&mut rest))
        .await
        .is_ok()
}

/// Issue 25: everything that is not a listener address reloads: the upstream endpoints,
/// range sources, trusted proxies, client timeouts and logging took a restart.
#[tokio::test(flavor = "multi_thread")]
async fn everything_but_the_listeners_reloads() {
    let gw = Gateway::start(&everything(false)).await;
    let manifest = "/v2/app/manifests/v1";
    let office = [("X-Forwarded-For", "203.0.113.7")];
    let r = gw.send("GET", manifest, &office).await;
    assert_eq!(r.status, 307);
    assert!(r.location().starts_with("http://upstream.test/"), "{r:?}");

    rewrite(&gw, &everything(true));
    hangup(&gw);
    until(&gw, "the new upstream in effect", async || {
        gw.get(manifest)
            .await
            .location()
            .starts_with("http://other.test/")
    })
    .await;
    // The office range, read through the now trusted proxy, meets the deny rule.
    assert_eq!(
        gw.send("GET", manifest, &office).await.status,
        404,
        "{}",
        gw.log()
    );
    assert!(
        ends_an_unfinished_header_within(&gw, Duration::from_secs(5)).await,
        "client_timeouts.header: 1s not in effect"
    );
    assert!(
        gw.log().lines().any(
            |l| l.starts_with("{\"level\":") && l.contains("\"path\":\"/v2/app/manifests/v1\"")
        ),
        "the access records are not JSON after the reload:\n{}",
        gw.log()
    );
    let m = gw.metrics().await;
    assert_eq!(
        sample(&m, r#"archeio_config_reloads_total{result="error"}"#),
        0.0,
        "{}",
        gw.log()
    );

    // From the attacker's side: a reload that withdraws the trust makes the same forged
    // header worthless again (the office range stays, the proxy is no longer believed).
    let withdrawn =
        everything(true).replace("  client_address: {trusted_proxies: [127.0.0.0/8]}\n", "");
    rewrite(&gw, &withdrawn);
    hangup(&gw);
    until(&gw, "the forged address ignored again", async || {
        gw.send("GET", manifest, &office).await.status == 307
    })
    .await;

    // Pingora's own keys are read at start only: a change is refused, not ignored.
    let path = gw.dir.path().join("archeio.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    write_file(&gw, &text.replace("threads: 2", "threads: 3"));
    hangup(&gw);
    until(&gw, "the change of threads refused", async || {
        gw.log()
            .contains("threads changed, which needs a restart (or an upgrade with -u)")
    })
    .await;
}

/// Issue 25: the mode is no listener either: pass-through starts and stops with a reload,
/// proxying from the same upstream the redirects named.
#[tokio::test(flavor = "multi_thread")]
async fn the_mode_switches_without_a_restart() {
    use common::fake::{Canned, FakeServer};
    let upstream = FakeServer::start(|seen| match seen.target.as_str() {
        "/v2/" => Canned::new(200),
        "/v2/images/app/manifests/v1" => Canned::new(200)
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body("the manifest"),
        _ => Canned::new(404),
    })
    .await;
    let keys = |mode: &str| {
        format!(
            "  upstream: {{endpoints: ['{}'], path: images}}
  ranges: {{embedded: false}}
  mode: {mode}
  policy:
    rules:
      - {{match: {{kind: blob}}, action: upstream}}",
            upstream.url()
        )
    };
    let gw = Gateway::start(&keys("redirect")).await;
    let manifest = "/v2/app/manifests/v1";
    assert_eq!(gw.get(manifest).await.status, 307);
    rewrite(&gw, &keys("passthrough"));
    hangup(&gw);
    until(&gw, "pass-through in effect", async || {
        gw.get(manifest).await.status == 200
    })
    .await;
    assert_eq!(gw.get(manifest).await.body, b"the manifest");
    let ready = request(gw.admin, "GET", "/readyz", &[]).await.unwrap();
    assert_eq!(ready.status, 200, "{}", gw.log());
    rewrite(&gw, &keys("redirect"));
    hangup(&gw);
    until(&gw, "redirects again", async || {
        gw.get(manifest).await.status == 307
    })
    .await;
}
