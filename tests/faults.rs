//! Faults survived (issue 30): a mirror that goes dead, resets connections or turns slow
//! leaves its rule's chain within seconds, whatever the check cache holds, and is back in
//! use within seconds of recovering. The mirror sits behind a fault-injecting proxy on
//! loopback (`common::fault`); the gateway runs with the shipped `blob_check` defaults.

mod common;

use std::time::{Duration, Instant};

use common::fault::{Fault, FaultProxy};
use common::*;

fn digest(n: u8) -> String {
    format!("sha256:{:064x}", n)
}

/// Polls until `done`, at most `limit`; how long it took.
async fn within(
    limit: Duration,
    what: &str,
    gw: &Gateway,
    mut done: impl AsyncFnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    while !done().await {
        assert!(
            start.elapsed() < limit,
            "{what} not within {limit:?}:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_mirror_leaves_the_chain_within_seconds_and_comes_back() {
    let (a, b) = (Mirror::start().await, Mirror::start().await);
    let proxy = FaultProxy::start(a.addr).await;
    let warm: Vec<String> = (1..=3).map(digest).collect();
    for d in (1..=6).map(digest) {
        a.put(&format!("/containers/images/{d}"));
        b.put(&format!("/containers/images/{d}"));
    }
    let gw = Gateway::start(&format!(
        "  upstream: {{endpoints: ['http://upstream.test'], path: images}}
  ranges: {{embedded: false}}
  mirrors: {{named: {{a: {{url: '{}'}}, b: {{url: '{}'}}}}}}
  policy: {{rules: [{{match: {{kind: blob}}, action: mirrors, mirrors: [a, b]}}]}}",
        proxy.base(),
        b.base()
    ))
    .await;
    let at = |base: String| move |r: &Resp| r.status == 307 && r.location().starts_with(&base);
    let (at_a, at_b) = (at(proxy.base()), at(b.base()));
    // Every warm blob's "present at A" is cached: no check of A would run for them.
    for d in &warm {
        let r = gw.get(&format!("/v2/app/blobs/{d}")).await;
        assert!(at_a(&r), "{r:?}");
    }
    // Those requests came within a second of the start: A is in use and health-checked
    // from then on, with no further request (a mark skipped in the first second left it
    // unchecked).
    let probes_before = a.probes();
    within(
        Duration::from_secs(3),
        "health checks of A",
        &gw,
        async || a.probes() > probes_before,
    )
    .await;
    let mut cold = (4..=6).map(digest);
    for (fault, name, leaves_within) in [
        (Fault::Blackhole, "blackholed", Duration::from_secs(3)),
        (
            Fault::Reset,
            "resetting connections",
            Duration::from_secs(3),
        ),
        (
            Fault::Delay(Duration::from_secs(1)),
            "+2 s a round trip",
            Duration::from_secs(10),
        ),
    ] {
        proxy.set(fault);
        let left = within(leaves_within, name, &gw, async || {
            at_b(&gw.get(&format!("/v2/app/blobs/{}", warm[0])).await)
        })
        .await;
        eprintln!("{name}: A left the chain after {left:?}");
        // From then on every blob, warm or not, goes to B, and at once.
        let fresh = cold.next().unwrap();
        for d in warm.iter().chain([&fresh]) {
            for _ in 0..5 {
                let started = Instant::now();
                let r = gw.get(&format!("/v2/app/blobs/{d}")).await;
                assert!(at_b(&r), "{name}, {d}: {r:?}\n{}", gw.log());
                assert!(
                    started.elapsed() < Duration::from_secs(2),
                    "{name}: an answer took {:?}",
                    started.elapsed()
                );
            }
        }
        let m = gw.metrics().await;
        let host = proxy.addr.to_string();
        assert_eq!(
            sample(
                &m,
                &format!("archeio_mirror_breaker_open{{host=\"{host}\"}}")
            ),
            1.0,
            "{name}"
        );
        proxy.set(Fault::None);
        let back = within(Duration::from_secs(5), "A back in use", &gw, async || {
            at_a(&gw.get(&format!("/v2/app/blobs/{}", warm[0])).await)
        })
        .await;
        eprintln!("{name}: A back in use {back:?} after it recovered");
        assert!(at_a(&gw.get(&format!("/v2/app/blobs/{fresh}")).await));
    }
    assert!(a.probes() > 0, "the gateway's health checks reached A");
}

/// Issue 30, defect 6: with every upstream endpoint down and `stale_if_error` on, each stale
/// answer still waited on the endpoints' timeouts although they were known to be down, and
/// `/readyz` turned `503`, so a readiness probe took every pod out of service during an
/// outage the pods could partly ride out.
#[tokio::test(flavor = "multi_thread")]
async fn with_every_endpoint_down_stale_answers_come_at_once_and_the_pod_stays_ready() {
    use common::fake::{Canned, FakeServer};
    let manifest =
        r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
    let upstream = FakeServer::start(move |_| {
        Canned::new(200)
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(manifest)
    })
    .await;
    let proxy = FaultProxy::start(upstream.addr).await;
    let gw = Gateway::start(&format!(
        "  mode: passthrough
  upstream:
    endpoints: ['{}']
    path: test
    timeouts: {{connect: 5s, read: 10s, total: 30s}}
    health_check: {{interval: 200ms, timeout: 200ms, unhealthy_after: 1, healthy_after: 1}}
  manifest_cache: {{tag_ttl: 1s, stale_if_error: 1h}}
  ranges: {{embedded: false}}",
        proxy.base()
    ))
    .await;
    let tag = "/v2/app/manifests/v1";
    assert_eq!(gw.get(tag).await.status, 200);
    proxy.set(Fault::Blackhole);
    let host = proxy.addr.to_string();
    within(
        Duration::from_secs(5),
        "the endpoint marked down",
        &gw,
        async || {
            sample(
                &gw.metrics().await,
                &format!("archeio_upstream_healthy{{endpoint=\"{host}\"}}"),
            ) == 0.0
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let started = Instant::now();
    let r = gw.get(tag).await;
    let took = started.elapsed();
    eprintln!("stale answer with every endpoint down: {took:?}");
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
    assert_eq!(r.body, manifest.as_bytes());
    assert!(
        r.header("warning").is_some_and(|w| w.starts_with("110")),
        "{r:?}"
    );
    // Not the 10 s read timeout of a black-holed endpoint.
    assert!(took < Duration::from_secs(1), "{took:?}");
    let ready = request(gw.admin, "GET", "/readyz", &[]).await.unwrap();
    assert_eq!(
        ready.status,
        200,
        "the pod can serve: {}",
        String::from_utf8_lossy(&ready.body)
    );
}

/// Issue 30, defect 5: in pass-through, with endpoint 1 black-holed and endpoint 2 healthy,
/// requests on endpoint 1's pooled connections waited the read timeout and got `504`
/// (`tries: 1, retry: false`). A `GET` that fails before any byte of the answer was sent is
/// tried once more on the next endpoint, and the silent one stops getting requests.
#[tokio::test(flavor = "multi_thread")]
async fn passthrough_moves_to_the_next_endpoint_when_one_goes_silent() {
    use common::fake::{Canned, FakeServer};
    let answer = |who: &'static str| {
        move |_: &common::fake::Seen| {
            Canned::new(200)
                .header("content-type", "application/json")
                .body(format!(r#"{{"name":"app","tags":["{who}"]}}"#))
        }
    };
    let (one, two) = (
        FakeServer::start(answer("one")).await,
        FakeServer::start(answer("two")).await,
    );
    let proxy = FaultProxy::start(one.addr).await;
    let gw = Gateway::start(&format!(
        "  mode: passthrough
  upstream:
    endpoints: ['{}', '{}']
    path: test
    timeouts: {{connect: 2s, read: 2s, total: 30s}}
  ranges: {{embedded: false}}",
        proxy.base(),
        two.url()
    ))
    .await;
    let tags = "/v2/app/tags/list";
    let r = gw.get(tags).await;
    assert!(String::from_utf8_lossy(&r.body).contains("one"), "{r:?}");
    proxy.set(Fault::Blackhole);
    let mut took = Vec::new();
    for _ in 0..6 {
        let started = Instant::now();
        let r = gw.get(tags).await;
        took.push(started.elapsed());
        assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
        assert!(String::from_utf8_lossy(&r.body).contains("two"), "{r:?}");
    }
    eprintln!("answers after endpoint 1 went silent: {took:?}");
    // Once it failed, endpoint 1 gets no more requests: no more waits on its timeout.
    assert!(
        took[3..].iter().all(|t| *t < Duration::from_secs(1)),
        "{took:?}"
    );
}

/// Issue 30: a mirror whose health check answers, but slower than `slow_after`, is
/// degraded: skipped while a later mirror of the chain is healthy, still used where it is
/// the best there is.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_mirror_gives_way_to_a_faster_one_and_serves_when_alone() {
    let (a, b) = (Mirror::start().await, Mirror::start().await);
    let proxy = FaultProxy::start(a.addr).await;
    let blob = digest(9);
    for m in [&a, &b] {
        m.put(&format!("/containers/images/{blob}"));
    }
    let gw = Gateway::start(&format!(
        "  upstream: {{endpoints: ['http://upstream.test'], path: images}}
  ranges: {{embedded: false}}
  mirrors: {{named: {{a: {{url: '{}'}}, b: {{url: '{}'}}}}}}
  policy:
    rules:
      - {{match: {{repository: 'solo/**', kind: blob}}, action: mirrors, mirrors: [a]}}
      - {{match: {{kind: blob}}, action: mirrors, mirrors: [a, b]}}",
        proxy.base(),
        b.base()
    ))
    .await;
    let (chained, solo) = (
        format!("/v2/app/blobs/{blob}"),
        format!("/v2/solo/app/blobs/{blob}"),
    );
    let at = |r: &Resp, base: &str| r.status == 307 && r.location().starts_with(base);
    assert!(at(&gw.get(&chained).await, &proxy.base()));
    assert!(at(&gw.get(&solo).await, &proxy.base()));
    // About 0.6 s a round trip: over slow_after (500 ms), under the timeout (1 s).
    proxy.set(Fault::Delay(Duration::from_millis(300)));
    within(
        Duration::from_secs(5),
        "the slow mirror giving way",
        &gw,
        async || at(&gw.get(&chained).await, &b.base()),
    )
    .await;
    for _ in 0..3 {
        assert!(at(&gw.get(&solo).await, &proxy.base()), "{}", gw.log());
    }
    let m = gw.metrics().await;
    assert_eq!(
        sample(
            &m,
            &format!("archeio_mirror_breaker_open{{host=\"{}\"}}", proxy.addr)
        ),
        0.0,
        "slow is not down"
    );
    proxy.set(Fault::None);
    within(Duration::from_secs(5), "A back in use", &gw, async || {
        at(&gw.get(&chained).await, &proxy.base())
    })
    .await;
}
