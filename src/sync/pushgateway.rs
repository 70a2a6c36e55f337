//! The run's metrics as Prometheus text, for cron jobs: written to `--metrics-file` and/or
//! pushed to the Pushgateway at `--push-gateway`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

use super::progress::Tally;
use super::{with_causes, Options};

/// Writes and pushes the metrics where the options ask; nothing when they ask neither.
pub(super) async fn report_metrics(
    opts: &Options,
    tally: &Tally,
    elapsed: Duration,
    success: bool,
) -> Result<(), String> {
    if opts.metrics_file.is_none() && opts.push_gateway.is_none() {
        return Ok(());
    }
    let registry = Registry::new();
    let n = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let gauge = |name: &str, help: &str, value: u64| {
        let g = IntGauge::new(name, help).map_err(|e| e.to_string())?;
        g.set(value as i64);
        registry.register(Box::new(g)).map_err(|e| e.to_string())
    };
    let counter = |name: &str, help: &str, value: u64| {
        let c = IntCounter::new(name, help).map_err(|e| e.to_string())?;
        c.inc_by(value);
        registry.register(Box::new(c)).map_err(|e| e.to_string())
    };
    if opts.verify {
        for (name, help, value) in [
            (
                "archeio_sync_checked_objects_total",
                "Objects read back by the last verify run.",
                &tally.checked,
            ),
            (
                "archeio_sync_corrupt_objects_total",
                "Objects whose bytes do not have the digest in their name, found by the last verify run.",
                &tally.corrupt,
            ),
            (
                "archeio_sync_repaired_objects_total",
                "Corrupt objects copied again by the last verify run.",
                &tally.repaired,
            ),
            (
                "archeio_sync_failed_objects_total",
                "Objects the last verify run could not read or repair.",
                &tally.failed,
            ),
        ] {
            counter(name, help, n(value))?;
        }
    } else {
        let blobs = IntCounterVec::new(
            Opts::new(
                "archeio_sync_blobs_total",
                "Blobs by result of the last sync run.",
            ),
            &["result"],
        )
        .map_err(|e| e.to_string())?;
        for (result, count) in [
            ("copied", &tally.copied),
            ("present", &tally.present),
            ("failed", &tally.failed),
        ] {
            blobs.with_label_values(&[result]).inc_by(n(count));
        }
        registry
            .register(Box::new(blobs))
            .map_err(|e| e.to_string())?;
        gauge(
            "archeio_sync_copied_bytes",
            "Bytes copied by the last sync run.",
            n(&tally.bytes),
        )?;
    }
    gauge(
        "archeio_sync_duration_seconds",
        "Duration of the last sync run.",
        elapsed.as_secs(),
    )?;
    gauge(
        "archeio_sync_success",
        "1 when the last sync run had no failure.",
        u64::from(success),
    )?;
    gauge(
        "archeio_sync_source_errors",
        "Source listings and manifests the last sync run could not read or refused.",
        n(&tally.source_errors),
    )?;
    let mut text = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut text)
        .map_err(|e| e.to_string())?;
    if let Some(path) = &opts.metrics_file {
        std::fs::write(path, &text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(url) = &opts.push_gateway {
        let target = push_target(url, opts);
        let resp = reqwest::Client::new()
            .put(&target)
            .header("Content-Type", "text/plain; version=0.0.4")
            .body(text)
            .send()
            .await
            .map_err(|e| format!("push to {target}: {}", with_causes(&e)))?;
        if !resp.status().is_success() {
            return Err(format!("push to {target}: answered {}", resp.status()));
        }
    }
    Ok(())
}

/// The group a run's metrics are pushed to. A push replaces the whole group it goes to: verify
/// runs have their own job, and each shard its own `shard` label, so that the runs of an
/// Indexed Job do not replace each other's metrics.
fn push_target(url: &str, opts: &Options) -> String {
    let job = if opts.verify {
        "archeio_sync_verify"
    } else {
        "archeio_sync"
    };
    let mut target = format!("{}/metrics/job/{job}", url.trim_end_matches('/'));
    if let Some(shard) = opts.shard {
        target.push_str(&format!("/shard/{}", shard.index()));
    }
    target
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_shard_pushes_to_its_own_group() {
        let target = |args: &[&str]| {
            let args = ["-c", "f"].iter().chain(args).map(|a| a.to_string());
            push_target("http://pg:9091/", &Options::parse(args).unwrap())
        };
        assert_eq!(target(&[]), "http://pg:9091/metrics/job/archeio_sync");
        assert_eq!(
            target(&["--shard", "2/4"]),
            "http://pg:9091/metrics/job/archeio_sync/shard/2"
        );
        assert_eq!(
            target(&["--verify"]),
            "http://pg:9091/metrics/job/archeio_sync_verify"
        );
    }
}
