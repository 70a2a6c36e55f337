//! `archeio sync -c FILE`: copies every blob that the source registry's manifests refer to
//! into each destination object store that lacks it, under the gateway's blob layout. See
//! `docs/sync.md`.
//!
//! A blob is streamed from the registry into a multipart upload while its SHA-256 is
//! computed; the upload is completed only when the digest matches, otherwise aborted, so a
//! store never holds bytes under the wrong name. A blob already in a store costs one `HEAD`,
//! which makes a re-run after an interruption copy only what is missing.
//!
//! `--verify` reads back every object under the blob layout and checks its bytes against the
//! digest in its name; `--repair` copies the bad ones again.
//!
//! `--shard I/N` walks only the repositories of shard I, so that N runs share the work.

mod cli;
pub mod config;
mod copy;
mod progress;
mod pushgateway;
mod shard;
pub mod source;
mod store;
mod verify;

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use log::{error, info};
use object_store::path::Path as ObjectPath;
use tokio::sync::Semaphore;

pub use cli::{Options, ParseError};
use config::SyncConfig;
use copy::{copy, walk, Copy};
use progress::{show_progress, Tally};
use pushgateway::report_metrics;
pub use shard::Shard;
use source::Source;
use store::open_stores;
use verify::verify;

/// Runs the sync; the process exit code.
pub async fn run(opts: Options) -> i32 {
    let cfg = match SyncConfig::from_file(&opts.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("archeio sync: configuration error: {e}");
            return 2;
        }
    };
    let started = Instant::now();
    let result = if opts.verify {
        verify(&cfg, &opts).await
    } else {
        sync(&cfg, &opts).await
    };
    let tally = match result {
        Ok(tally) => tally,
        Err(e) => {
            error!("sync failed: {e}");
            return 1;
        }
    };
    let n = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let (failed, source_errors) = (n(&tally.failed), n(&tally.source_errors));
    let seconds = started.elapsed().as_secs_f64();
    let (summary, success) = if opts.verify {
        let (corrupt, repaired) = (n(&tally.corrupt), n(&tally.repaired));
        (
            format!(
                "sync verify: {} objects checked, {corrupt} corrupt, {repaired} repaired, {failed} failed, {source_errors} source errors in {seconds:.1} s",
                n(&tally.checked)
            ),
            corrupt == repaired && failed == 0 && source_errors == 0,
        )
    } else if opts.dry_run {
        (
            format!(
                "sync (dry run): would copy {} blobs ({} bytes), {} already present, {failed} failed, {source_errors} source errors in {seconds:.1} s",
                n(&tally.copied),
                n(&tally.bytes),
                n(&tally.present),
            ),
            failed == 0 && source_errors == 0,
        )
    } else {
        (
            format!(
                "sync done: {} blobs copied, {} already present, {failed} failed, {source_errors} source errors, {} bytes copied in {seconds:.1} s",
                n(&tally.copied),
                n(&tally.present),
                n(&tally.bytes),
            ),
            failed == 0 && source_errors == 0,
        )
    };
    println!("{summary}");
    if let Err(e) = report_metrics(&opts, &tally, started.elapsed(), success).await {
        error!("sync metrics: {e}");
        return 1;
    }
    i32::from(!success)
}

/// Copies every referenced blob into each destination that lacks it.
async fn sync(cfg: &SyncConfig, opts: &Options) -> Result<Arc<Tally>, String> {
    let source = Arc::new(Source::new(&cfg.source)?);
    let stores = open_stores(cfg, !opts.dry_run).await?;
    let tally = Arc::new(Tally::default());
    let blobs = walk(cfg, &source, opts.shard, &tally).await?;
    let total_bytes: u64 = blobs.values().map(|b| b.size).sum::<u64>() * stores.len() as u64;
    info!(
        "{} blobs ({total_bytes} bytes over {} destinations)",
        blobs.len(),
        stores.len()
    );

    let progress = std::io::stderr().is_terminal().then(|| {
        let tally = tally.clone();
        let total = (blobs.len() * stores.len()) as u64;
        tokio::spawn(show_progress(tally, total, total_bytes))
    });
    let limit = Arc::new(Semaphore::new(cfg.concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for (digest, blob) in blobs {
        for store in &stores {
            let key = ObjectPath::from(cfg.blob_path.replace("{digest}", &digest));
            let (source, tally, limit) = (source.clone(), tally.clone(), limit.clone());
            let (store, name) = (store.store.clone(), store.name.clone());
            let (digest, blob, dry_run) = (digest.clone(), blob.clone(), opts.dry_run);
            tasks.spawn(async move {
                let _permit = limit.acquire().await;
                match copy(&source, &*store, &key, &digest, &blob, dry_run).await {
                    Ok(Copy::Present) => {
                        tally.present.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Copy::Copied(n)) => {
                        tally.copied.fetch_add(1, Ordering::Relaxed);
                        tally.bytes.fetch_add(n, Ordering::Relaxed);
                        if dry_run {
                            println!("would copy {digest} ({n} bytes) to {name}");
                        } else {
                            info!("copied {digest} ({n} bytes) to {name}");
                        }
                    }
                    Err(e) => {
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                        error!("blob {digest} to {name}: {e}");
                    }
                }
            });
        }
    }
    while tasks.join_next().await.is_some() {}
    if let Some(p) = progress {
        p.abort();
        eprintln!();
    }
    Ok(tally)
}

/// `error` and its causes (`Error::source`), `: `-separated, so that a connection error says
/// whether it was refused, timed out or failed in TLS. A cause whose text is already in the
/// message is left out: some errors print their source themselves.
pub(crate) fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let more = e.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_kept_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let wrapped = std::io::Error::other(io);
        // `io::Error::other` prints its source as its own message: not repeated.
        assert_eq!(with_causes(&wrapped), "connection refused");
        let config =
            SyncConfig::from_file(std::path::Path::new("/nonexistent/sync.yaml")).unwrap_err();
        assert!(with_causes(&config).contains("cannot read the file"));
    }
}
