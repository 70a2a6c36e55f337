//! What a run counts, for its summary line and its metrics, and the status line drawn from
//! those counts while a sync runs on a terminal.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counters for the summary and the metrics.
#[derive(Default)]
pub(super) struct Tally {
    pub(super) copied: AtomicU64,
    pub(super) present: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) bytes: AtomicU64,
    /// Listings and manifests of the source that could not be read or were refused.
    pub(super) source_errors: AtomicU64,
    /// `--verify`: objects read back, found corrupt, copied again.
    pub(super) checked: AtomicU64,
    pub(super) corrupt: AtomicU64,
    pub(super) repaired: AtomicU64,
}

/// One status line on the terminal, redrawn four times a second.
pub(super) async fn show_progress(tally: Arc<Tally>, total: u64, total_bytes: u64) {
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let done = tally.copied.load(Ordering::Relaxed)
            + tally.present.load(Ordering::Relaxed)
            + tally.failed.load(Ordering::Relaxed);
        let bytes = tally.bytes.load(Ordering::Relaxed);
        let rate = bytes as f64 / started.elapsed().as_secs_f64().max(0.001);
        let eta = if rate > 0.0 {
            format!("{:.0} s", total_bytes.saturating_sub(bytes) as f64 / rate)
        } else {
            "-".into()
        };
        eprint!(
            "\r{done}/{total} blobs, {:.1} MiB copied, {:.1} MiB/s, ETA {eta}   ",
            bytes as f64 / 1048576.0,
            rate / 1048576.0
        );
    }
}
