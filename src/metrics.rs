//! Prometheus metrics, registered in the default registry that the admin listener serves.
//!
//! A leaf: it imports nothing from the crate. Callers name their label values through
//! [`Label`], and health changes reach the gauges here through callbacks wired in `main`.

use std::sync::{LazyLock, OnceLock};

use prometheus::{
    register_histogram, register_histogram_vec, register_int_counter, register_int_counter_vec,
    register_int_gauge, register_int_gauge_vec, Histogram, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec,
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
        "Redirects, by target kind (upstream, signature_upstream, mirror, default_mirror, page) and mirror (its name: the region's for the region table, else mirrors.named's).",
        &["target", "mirror"]
    )
    .expect("metric registers once")
});

/// Registry requests decided by each policy rule.
pub static POLICY_RULES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "archeio_policy_rule_matches_total",
        "Registry requests decided by each policy rule, by the rule's name.",
        &["rule"]
    )
    .expect("metric registers once")
});

/// One counter per policy rule, in the rules' order, so that the request path indexes
/// instead of hashing names.
pub fn policy_rule_counters<'a>(names: impl Iterator<Item = &'a str>) -> Vec<IntCounter> {
    names
        .map(|name| POLICY_RULES.with_label_values(&[name]))
        .collect()
}

/// Blobs streamed from a mirror (`delivery: proxy`), by mirror and the mirror's status.
pub static MIRROR_PROXIED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "archeio_mirror_proxied_total",
        "Blob answers streamed from a mirror (delivery: proxy), by mirror (region or name) and the mirror's status.",
        &["mirror", "status"]
    )
    .expect("metric registers once")
});

/// Mirror checks, by mirror and outcome.
pub static BLOB_CHECKS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "archeio_blob_checks_total",
        "Mirror blob checks, by mirror (its name in the policy) and outcome (cache_hit, present, \
         absent, error, refused: a private mirror refused the gateway's signed request, \
         skipped: breaker open).",
        &["mirror", "outcome"]
    )
    .expect("metric registers once")
});

/// Configuration reloads (`SIGHUP`).
pub static CONFIG_RELOADS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "archeio_config_reloads_total",
        "Configuration reloads on SIGHUP, by result (ok; error: the configuration before stays).",
        &["result"]
    )
    .expect("metric registers once")
});

/// When the configuration in effect was loaded.
pub static CONFIG_LOADED: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "archeio_config_last_load_timestamp_seconds",
        "When the configuration in effect was loaded (at start or by the last good reload)."
    )
    .expect("metric registers once")
});

/// The configuration in effect, by a hash of it.
pub static CONFIG_INFO: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "archeio_config_info",
        "1 for the hash of the configuration in effect (the archeio section, environment \
         applied): replicas with different hashes run different configurations.",
        &["hash"]
    )
    .expect("metric registers once")
});

/// TLS certificate files read again after they changed.
pub static TLS_CERTIFICATE_RELOADS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "archeio_tls_certificate_reloads_total",
        "TLS certificate pairs read again because their files changed (or on SIGHUP), by \
         result (ok; error: the pair served before stays).",
        &["result"]
    )
    .expect("metric registers once")
});

/// When each TLS certificate served expires.
pub static TLS_CERTIFICATE_EXPIRY: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "archeio_tls_certificate_expiry_timestamp_seconds",
        "When the certificate served from each cert_file expires (Unix time).",
        &["cert_file"]
    )
    .expect("metric registers once")
});

/// TLS handshakes completed on the registry listeners, by the protocol agreed.
pub static TLS_HANDSHAKES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "archeio_tls_handshakes_total",
        "TLS connections of registry clients, by the ALPN protocol agreed (h2, http/1.1, none).",
        &["alpn"]
    )
    .expect("metric registers once")
});

/// Private mirrors' secret files read again after they changed.
pub static MIRROR_SECRET_RELOADS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "archeio_mirror_secret_reloads_total",
        "Private mirrors' credentials read again because their files changed (or on SIGHUP), \
         by mirror and result (ok; error: the old credentials stay).",
        &["mirror", "result"]
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

/// Upstream responses in pass-through mode, by endpoint and status.
pub static UPSTREAM_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "archeio_upstream_requests_total",
        "Pass-through requests to the upstream, by endpoint (host:port) and status code (\"error\" when no response came).",
        &["endpoint", "status"]
    )
    .expect("metric registers once")
});

/// Time to the upstream's response header, by endpoint.
pub static UPSTREAM_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "archeio_upstream_response_seconds",
        "Pass-through: time from choosing the endpoint to its response header, by endpoint.",
        &["endpoint"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect("metric registers once")
});

/// Health of each endpoint.
pub static UPSTREAM_HEALTHY: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "archeio_upstream_healthy",
        "1 when the upstream endpoint is considered healthy, else 0.",
        &["endpoint"]
    )
    .expect("metric registers once")
});

/// Bearer token requests to upstream token services.
pub static REPOSITORY_CHECKS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "archeio_repository_checks_total",
        "Upstream answers to whether a repository holds a blob, asked before a mirror serves it \
         when the policy restricts repositories, by outcome (cache_hit, held, not_held, error).",
        &["outcome"]
    )
    .expect("metric registers once")
});

pub static TOKEN_FETCHES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "archeio_upstream_token_fetches_total",
        "Token requests to the upstream's token service, by result (ok, error).",
        &["result"]
    )
    .expect("metric registers once")
});

/// Manifest cache lookups.
pub static MANIFEST_CACHE_LOOKUPS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "archeio_manifest_cache_lookups_total",
        "Pass-through manifest cache lookups, by result (hit, miss).",
        &["result"]
    )
    .expect("metric registers once")
});

/// Manifest bytes held by the cache.
pub static MANIFEST_CACHE_BYTES: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "archeio_manifest_cache_bytes",
        "Manifest bytes held in the pass-through cache."
    )
    .expect("metric registers once")
});

/// Expired tag manifests served because no upstream answered.
pub static MANIFEST_CACHE_STALE_SERVED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "archeio_manifest_cache_stale_served_total",
        "Manifests by tag served past their tag_ttl because the gateway got no answer from the upstream (manifest_cache.stale_if_error)."
    )
    .expect("metric registers once")
});

/// Range source refreshes.
pub static RANGE_REFRESHES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "archeio_range_refreshes_total",
        "Reads of a range file or URL, by source and result (ok, failed: unreadable, unparsable or refused as too small).",
        &["source", "result"]
    )
    .expect("metric registers once")
});

/// Last good read of each range source.
pub static RANGE_LAST_SUCCESS: LazyLock<prometheus::GaugeVec> = LazyLock::new(|| {
    prometheus::register_gauge_vec!(
        "archeio_range_last_success_timestamp_seconds",
        "Unix time of the last good read of a range file or URL.",
        &["source"]
    )
    .expect("metric registers once")
});

/// Open circuit breakers per mirror host.
pub static MIRROR_BREAKER_OPEN: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "archeio_mirror_breaker_open",
        "1 while the mirror host's checks are skipped after repeated failures, else 0.",
        &["host"]
    )
    .expect("metric registers once")
});

/// Times each mirror host's breaker opened.
pub static MIRROR_PROBES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "archeio_mirror_probes_total",
        "The gateway's health checks of mirror hosts in use, by result (healthy, unhealthy).",
        &["host", "result"]
    )
    .expect("metric registers once")
});

/// Counts a health check of a mirror host.
pub fn record_mirror_probe(host: &str, healthy: bool) {
    let result = if healthy { "healthy" } else { "unhealthy" };
    MIRROR_PROBES.with_label_values(&[host, result]).inc();
}

pub static MIRROR_BREAKER_OPENS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "archeio_mirror_breaker_opens_total",
        "Times a mirror host's breaker opened.",
        &["host"]
    )
    .expect("metric registers once")
});

/// 1 while `/readyz` answers 200.
pub static READY: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "archeio_ready",
        "1 while the gateway is ready for traffic (/readyz answers 200), else 0."
    )
    .expect("metric registers once")
});

/// Requests refused by the per-client rate limit.
pub static RATE_LIMITED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "archeio_rate_limited_total",
        "Registry requests refused with 429 by the per-client rate limit."
    )
    .expect("metric registers once")
});

/// Clients the gateway refused because it could not tell who they are, by reason.
pub static CLIENT_ADDRESS_REFUSALS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "archeio_client_address_refusals_total",
        "Requests (400) and connections (closed) refused because the client could not be told: an unusable forwarding header entry, or a PROXY protocol header missing, invalid or from an untrusted peer.",
        &["reason"]
    )
    .expect("metric registers once")
});

/// The commit the binary was built from: `ARCHEIO_REVISION` at compile time (the image
/// build sets it), else "unknown".
fn revision() -> &'static str {
    option_env!("ARCHEIO_REVISION")
        .filter(|r| !r.is_empty())
        .unwrap_or("unknown")
}

/// Proxied mirror blobs cut off because their bytes did not hash to the digest.
pub static MIRROR_DIGEST_MISMATCHES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "archeio_mirror_digest_mismatches_total",
        "Blobs proxied from a mirror (delivery: proxy) whose bytes did not hash to their digest: the answer was cut off and the mirror counts as not holding the blob.",
        &["mirror"]
    )
    .expect("metric registers once")
});

/// Bytes of blobs the gateway answered with, by where they came from.
pub static BLOB_BYTES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "archeio_blob_bytes_total",
        "Bytes of blobs answered with (GET), by source (mirror, upstream), mirror (its name; empty for the upstream) and delivery (redirect: the size the mirror's HEAD gave, counted when the client is sent there; proxy: the bytes streamed). Bytes from a mirror are bytes the upstream did not serve.",
        &["source", "mirror", "delivery"]
    )
    .expect("metric registers once")
});

/// Blob answers whose size the gateway did not learn.
pub static BLOB_SIZE_UNKNOWN: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "archeio_blob_size_unknown_total",
        "Blob answers (GET) not in archeio_blob_bytes_total because their size was not known: a redirect to the upstream without offload.upstream_head, or a mirror HEAD without Content-Length.",
        &["source", "delivery"]
    )
    .expect("metric registers once")
});

/// The operator's egress price per gigabyte, for the dashboard's cost estimate.
pub static EGRESS_COST: LazyLock<prometheus::GaugeVec> = LazyLock::new(|| {
    prometheus::register_gauge_vec!(
        "archeio_egress_cost_per_gigabyte",
        "Egress price per gigabyte (10^9 bytes) from offload.cost_per_gb, by source (mirror, upstream) and mirror: times archeio_blob_bytes_total, an egress estimate.",
        &["source", "mirror"]
    )
    .expect("metric registers once")
});

/// Loads of a geo database file, by file and result.
pub static GEO_LOADS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "archeio_geo_database_loads_total",
        "Reads of a geo database (MaxMind DB) file, by file and result (ok; failed: unreadable or corrupt, the last good version kept).",
        &["database", "result"]
    )
    .expect("metric registers once")
});

/// When the geo database in use was built.
pub static GEO_BUILT: LazyLock<prometheus::GaugeVec> = LazyLock::new(|| {
    prometheus::register_gauge_vec!(
        "archeio_geo_database_build_timestamp_seconds",
        "Unix time the geo database in use was built (its metadata's build_epoch): how old its facts are.",
        &["database"]
    )
    .expect("metric registers once")
});

/// Build information, value 1.
pub static BUILD_INFO: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "archeio_build_info",
        "Build information; the value is 1.",
        &["version", "revision"]
    )
    .expect("metric registers once")
});

/// Status codes the gateway answers with, as label values; the last two stand for "no
/// response" and anything else.
const STATUSES: [(u16, &str); 12] = [
    (200, "200"),
    (307, "307"),
    (400, "400"),
    (404, "404"),
    (405, "405"),
    (429, "429"),
    (500, "500"),
    (502, "502"),
    (503, "503"),
    (504, "504"),
    (0, "none"),
    (u16::MAX, "other"),
];

/// A label value from a closed set known when the code is written (routes, redirect
/// kinds, check outcomes): its slot indexes series handles resolved once, so that the
/// request path hashes no label values.
pub trait Label: Copy {
    /// Position in the set; slots at or past the table's size fall back to a lookup.
    fn slot(self) -> usize;
    /// The label value.
    fn as_str(self) -> &'static str;
}

/// Most route values with pre-resolved series.
const ROUTE_SLOTS: usize = 16;
/// Most values of the other closed label sets with pre-resolved series.
const SMALL_SLOTS: usize = 8;

static REQUEST_SERIES: [OnceLock<IntCounter>; ROUTE_SLOTS * STATUSES.len()] =
    [const { OnceLock::new() }; ROUTE_SLOTS * STATUSES.len()];
static DURATION_SERIES: [OnceLock<Histogram>; ROUTE_SLOTS] =
    [const { OnceLock::new() }; ROUTE_SLOTS];
static FIXED_REDIRECT_SERIES: [OnceLock<IntCounter>; SMALL_SLOTS] =
    [const { OnceLock::new() }; SMALL_SLOTS];

/// Applies `update` to the pre-resolved series of `slot`, or to a fresh lookup past the table.
fn with_series<T>(
    table: &[OnceLock<T>],
    slot: usize,
    resolve: impl FnOnce() -> T,
    update: impl FnOnce(&T),
) {
    match table.get(slot) {
        Some(cell) => update(cell.get_or_init(resolve)),
        None => update(&resolve()),
    }
}

/// Counts an answered request and its duration.
pub fn record_request(route: impl Label, status: u16, seconds: f64) {
    let s = STATUSES
        .iter()
        .position(|(code, _)| *code == status)
        .unwrap_or(STATUSES.len() - 1);
    let r = route.slot();
    let counter = if r < ROUTE_SLOTS {
        r * STATUSES.len() + s
    } else {
        usize::MAX
    };
    with_series(
        &REQUEST_SERIES,
        counter,
        || REQUESTS.with_label_values(&[route.as_str(), STATUSES[s].1]),
        IntCounter::inc,
    );
    with_series(
        &DURATION_SERIES,
        r,
        || REQUEST_SECONDS.with_label_values(&[route.as_str()]),
        |h| h.observe(seconds),
    );
}

/// Counts a redirect of `kind`; `mirror` names the mirror, for a mirror target.
pub fn record_redirect(kind: impl Label, mirror: Option<&str>) {
    match mirror {
        Some(mirror) => REDIRECTS.with_label_values(&[kind.as_str(), mirror]).inc(),
        None => with_series(
            &FIXED_REDIRECT_SERIES,
            kind.slot(),
            || REDIRECTS.with_label_values(&[kind.as_str(), ""]),
            IntCounter::inc,
        ),
    }
}

/// The check counters of `mirror`, one per outcome in the order given, resolved once (and
/// listed from the first scrape at 0) so that the request path hashes no label values.
pub fn blob_check_counters(mirror: &str, outcomes: &[&str]) -> Vec<IntCounter> {
    outcomes
        .iter()
        .map(|outcome| BLOB_CHECKS.with_label_values(&[mirror, outcome]))
        .collect()
}

/// The configuration with hash `hash` is in effect from now.
pub fn set_config_loaded(hash: &str) {
    CONFIG_INFO.reset();
    CONFIG_INFO.with_label_values(&[hash]).set(1);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CONFIG_LOADED.set(i64::try_from(now).unwrap_or(i64::MAX));
}

/// Counts a configuration reload; a good one names the hash now in effect.
pub fn record_config_reload(ok: bool, hash: Option<&str>) {
    let result = if ok { "ok" } else { "error" };
    CONFIG_RELOADS.with_label_values(&[result]).inc();
    if let Some(hash) = hash {
        set_config_loaded(hash);
    }
}

/// Counts a reload of a TLS certificate pair.
pub fn record_certificate_reload(ok: bool) {
    let result = if ok { "ok" } else { "error" };
    TLS_CERTIFICATE_RELOADS.with_label_values(&[result]).inc();
}

/// Records when the certificate read from `cert_file` expires.
pub fn set_certificate_expiry(cert_file: &str, not_after: i64) {
    TLS_CERTIFICATE_EXPIRY
        .with_label_values(&[cert_file])
        .set(not_after);
}

/// Drops the expiry series of a certificate file a reload removed.
pub fn forget_certificate(cert_file: &str) {
    let _ = TLS_CERTIFICATE_EXPIRY.remove_label_values(&[cert_file]);
}

/// Counts a TLS connection by the protocol agreed.
pub fn record_tls_handshake(alpn: &str) {
    TLS_HANDSHAKES.with_label_values(&[alpn]).inc();
}

/// Counts a reload of `mirror`'s secret files.
pub fn record_secret_reload(mirror: &str, ok: bool) {
    let result = if ok { "ok" } else { "error" };
    MIRROR_SECRET_RELOADS
        .with_label_values(&[mirror, result])
        .inc();
}

/// Records whether a mirror host's breaker is open; counts each opening.
pub fn set_mirror_breaker(host: &str, open: bool) {
    MIRROR_BREAKER_OPEN
        .with_label_values(&[host])
        .set(i64::from(open));
    if open {
        MIRROR_BREAKER_OPENS.with_label_values(&[host]).inc();
    }
}

/// Records whether an upstream endpoint (`host:port`) is healthy.
pub fn set_upstream_healthy(endpoint: &str, healthy: bool) {
    UPSTREAM_HEALTHY
        .with_label_values(&[endpoint])
        .set(i64::from(healthy));
}

/// Drops the health series of an endpoint a reload removed.
pub fn forget_upstream(endpoint: &str) {
    let _ = UPSTREAM_HEALTHY.remove_label_values(&[endpoint]);
}

/// Records the size of the range table in use.
pub fn set_prefix_counts(v4: usize, v6: usize) {
    IP_PREFIXES.with_label_values(&["ipv4"]).set(v4 as i64);
    IP_PREFIXES.with_label_values(&["ipv6"]).set(v6 as i64);
}

/// Sets the egress prices (source, mirror, per GB), forgetting any a reload removed.
pub fn set_egress_prices<'a>(prices: impl IntoIterator<Item = (&'a str, &'a str, f64)>) {
    EGRESS_COST.reset();
    for (source, mirror, per_gb) in prices {
        EGRESS_COST.with_label_values(&[source, mirror]).set(per_gb);
    }
}

/// Records readiness.
pub fn set_ready(ready: bool) {
    READY.set(i64::from(ready));
}

/// The closed label sets that exist at 0 from the first scrape, as the Prometheus
/// instrumentation guidelines ask: a rate or ratio over a series that appears only with its
/// first event is empty until then.
pub struct KnownLabels<'a> {
    /// Every `route`.
    pub routes: &'a [&'a str],
    /// Redirect targets without a region.
    pub redirect_targets: &'a [&'a str],
    /// Every reason a client is refused for its address.
    pub client_address_refusals: &'a [&'a str],
}

/// Registers every metric so that a scrape lists them before the first request, the
/// `process_*` series included, with the series of `known` at 0.
pub fn init(known: &KnownLabels<'_>) {
    for route in known.routes {
        // Not "none" and "other": no status is known by those.
        for (_, status) in &STATUSES[..STATUSES.len() - 2] {
            REQUESTS.with_label_values(&[route, status]);
        }
        REQUEST_SECONDS.with_label_values(&[route]);
    }
    for target in known.redirect_targets {
        REDIRECTS.with_label_values(&[target, ""]);
    }
    for reason in known.client_address_refusals {
        CLIENT_ADDRESS_REFUSALS.with_label_values(&[reason]);
    }
    for result in ["ok", "error"] {
        TOKEN_FETCHES.with_label_values(&[result]);
    }
    for result in ["ok", "error"] {
        TLS_CERTIFICATE_RELOADS.with_label_values(&[result]);
        CONFIG_RELOADS.with_label_values(&[result]);
    }
    for alpn in ["h2", "http/1.1", "none"] {
        TLS_HANDSHAKES.with_label_values(&[alpn]);
    }
    for outcome in ["cache_hit", "held", "not_held", "error"] {
        REPOSITORY_CHECKS.with_label_values(&[outcome]);
    }
    for result in ["hit", "miss"] {
        MANIFEST_CACHE_LOOKUPS.with_label_values(&[result]);
    }
    LazyLock::force(&RATE_LIMITED);
    set_ready(false);
    // Registered once per process; a second registration is refused and changes nothing.
    let _ = prometheus::register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ));
    LazyLock::force(&REQUESTS);
    LazyLock::force(&REQUEST_SECONDS);
    LazyLock::force(&REDIRECTS);
    LazyLock::force(&BLOB_CHECKS);
    LazyLock::force(&MIRROR_SECRET_RELOADS);
    LazyLock::force(&MIRROR_PROXIED);
    LazyLock::force(&POLICY_RULES);
    LazyLock::force(&MIRROR_HEAD_SECONDS);
    LazyLock::force(&IP_PREFIXES);
    LazyLock::force(&UPSTREAM_REQUESTS);
    LazyLock::force(&UPSTREAM_SECONDS);
    LazyLock::force(&UPSTREAM_HEALTHY);
    LazyLock::force(&TOKEN_FETCHES);
    LazyLock::force(&REPOSITORY_CHECKS);
    LazyLock::force(&MANIFEST_CACHE_LOOKUPS);
    LazyLock::force(&MANIFEST_CACHE_BYTES);
    LazyLock::force(&MANIFEST_CACHE_STALE_SERVED);
    LazyLock::force(&RANGE_REFRESHES);
    LazyLock::force(&MIRROR_BREAKER_OPEN);
    LazyLock::force(&MIRROR_BREAKER_OPENS);
    LazyLock::force(&RANGE_LAST_SUCCESS);
    LazyLock::force(&GEO_LOADS);
    LazyLock::force(&MIRROR_DIGEST_MISMATCHES);
    LazyLock::force(&BLOB_BYTES);
    LazyLock::force(&BLOB_SIZE_UNKNOWN);
    LazyLock::force(&GEO_BUILT);
    BUILD_INFO
        .with_label_values(&[env!("CARGO_PKG_VERSION"), revision()])
        .set(1);
}
