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
