//! Prometheus metrics, registered in the default registry that the admin listener serves.

use std::sync::LazyLock;

use prometheus::{
    register_histogram, register_histogram_vec, register_int_counter_vec, register_int_gauge_vec,
    Histogram, HistogramVec, IntCounterVec, IntGaugeVec,
};

/// Latency buckets for answers given without I/O and for mirror `HEAD`s (seconds).
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Requests answered, by route and status code.
pub static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "archeio_requests_total",
        "Requests answered, by route and status code.",
        &["route", "status"]
    )
    .expect("metric registers once")
});

/// Time from the request header to the answer, by route.
pub static REQUEST_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "archeio_request_duration_seconds",
        "Time from reading the request header to the end of the answer, by route.",
        &["route"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect("metric registers once")
});

/// Redirects, by kind of target and mirror region.
pub static REDIRECTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "archeio_redirects_total",
        "Redirects, by target kind (upstream, signature_upstream, mirror, default_mirror, page) and mirror region.",
        &["target", "region"]
    )
    .expect("metric registers once")
});

/// Mirror checks, by outcome.
pub static BLOB_CHECKS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "archeio_blob_checks_total",
        "Mirror blob checks, by outcome (cache_hit, present, absent, error).",
        &["outcome"]
    )
    .expect("metric registers once")
});

/// Mirror `HEAD` latency.
pub static MIRROR_HEAD_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "archeio_mirror_head_duration_seconds",
        "Latency of mirror HEAD requests, failures included.",
        LATENCY_BUCKETS.to_vec()
    )
    .expect("metric registers once")
});

/// Prefixes in the range table, by address family.
pub static IP_PREFIXES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "archeio_ip_prefixes",
        "Cloud IP prefixes loaded, by address family.",
        &["family"]
    )
    .expect("metric registers once")
});

/// Build information, value 1.
pub static BUILD_INFO: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "archeio_build_info",
        "Build information; the value is 1.",
        &["version"]
    )
    .expect("metric registers once")
});

/// Registers every metric so that a scrape lists them before the first request.
pub fn init() {
    LazyLock::force(&REQUESTS);
    LazyLock::force(&REQUEST_SECONDS);
    LazyLock::force(&REDIRECTS);
    LazyLock::force(&BLOB_CHECKS);
    LazyLock::force(&MIRROR_HEAD_SECONDS);
    LazyLock::force(&IP_PREFIXES);
    BUILD_INFO
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
}
