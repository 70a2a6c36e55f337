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

pub mod config;
pub mod source;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use log::{error, info};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{ClientOptions, ObjectStore, WriteMultipart};
use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use config::{DestinationConfig, SyncConfig};
use source::{BlobRef, Source};

/// Command-line options of `archeio sync`.
#[derive(Debug, Default)]
pub struct Options {
    /// The configuration file (`-c`).
    pub config: Option<PathBuf>,
    /// List what would be copied; copy nothing.
    pub dry_run: bool,
    /// Check what the destinations hold instead of copying.
    pub verify: bool,
    /// With `verify`: copy corrupt objects again from the source.
    pub repair: bool,
    /// Write the sync metrics as Prometheus text here at the end.
    pub metrics_file: Option<PathBuf>,
    /// Push the sync metrics to this Prometheus Pushgateway at the end.
    pub push_gateway: Option<String>,
}

const USAGE: &str = "usage: archeio sync -c FILE [--dry-run | --verify [--repair]] \
[--metrics-file FILE] [--push-gateway URL]";

impl Options {
    /// Parses the arguments after `sync`.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Options, String> {
        let mut opts = Options::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let mut value = |name: &str| {
                args.next()
                    .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
            };
            match arg.as_str() {
                "-c" | "--conf" => opts.config = Some(value("-c")?.into()),
                "--dry-run" => opts.dry_run = true,
                "--verify" => opts.verify = true,
                "--repair" => opts.repair = true,
                "--metrics-file" => opts.metrics_file = Some(value("--metrics-file")?.into()),
                "--push-gateway" => opts.push_gateway = Some(value("--push-gateway")?),
                "-h" | "--help" => return Err(USAGE.into()),
                other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
            }
        }
        if opts.config.is_none() {
            return Err(format!("-c FILE is required\n{USAGE}"));
        }
        if opts.repair && !opts.verify {
            return Err(format!("--repair needs --verify\n{USAGE}"));
        }
        if opts.dry_run && opts.verify {
            return Err(format!(
                "--dry-run and --verify exclude each other\n{USAGE}"
            ));
        }
        Ok(opts)
    }
}

/// A destination ready to write to.
struct Store {
    name: String,
    store: Arc<dyn ObjectStore>,
}

fn open_store(d: &DestinationConfig) -> Result<Store, String> {
    let name = d.url.clone();
    if let Some(dir) = d.url.strip_prefix("file://") {
        std::fs::create_dir_all(dir).map_err(|e| format!("{name}: cannot create {dir}: {e}"))?;
        let store = LocalFileSystem::new_with_prefix(dir).map_err(|e| format!("{name}: {e}"))?;
        return Ok(Store {
            name,
            store: Arc::new(store),
        });
    }
    let location = d.url.trim_start_matches("s3://");
    let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
    let env =
        |var: &Option<String>, default: &str| std::env::var(var.as_deref().unwrap_or(default)).ok();
    let mut b = AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_region(&d.region);
    if let Some(id) = env(&d.access_key_id_env, "AWS_ACCESS_KEY_ID") {
        b = b.with_access_key_id(id);
    }
    let secret = match &d.secret_access_key_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("{name}: cannot read {}: {e}", path.display()))?
                .trim_end()
                .to_string(),
        ),
        None => env(&d.secret_access_key_env, "AWS_SECRET_ACCESS_KEY"),
    };
    if let Some(secret) = secret {
        b = b.with_secret_access_key(secret);
    }
    let mut options = ClientOptions::new();
    if let Some(endpoint) = &d.endpoint {
        b = b
            .with_endpoint(endpoint)
            .with_virtual_hosted_style_request(false);
        options = options.with_allow_http(endpoint.starts_with("http://"));
    }
    if let Some(acl) = &d.acl {
        let mut headers = reqwest::header::HeaderMap::new();
        let value = acl
            .parse()
            .map_err(|_| format!("{name}: acl {acl:?} is not a header value"))?;
        headers.insert("x-amz-acl", value);
        options = options.with_default_headers(headers);
    }
    let store = b
        .with_client_options(options)
        .build()
        .map_err(|e| format!("{name}: {e}"))?;
    // Keys go under the prefix: the gateway's mirror URL for this bucket includes it.
    let prefix = prefix.trim_matches('/');
    let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
        Arc::new(store)
    } else {
        Arc::new(PrefixStore::new(store, prefix))
    };
    Ok(Store { name, store })
}

/// Counters for the summary and the metrics.
#[derive(Default)]
struct Tally {
    copied: AtomicU64,
    present: AtomicU64,
    failed: AtomicU64,
    bytes: AtomicU64,
    /// Listings and manifests of the source that could not be read or were refused.
    source_errors: AtomicU64,
    /// `--verify`: objects read back, found corrupt, copied again.
    checked: AtomicU64,
    corrupt: AtomicU64,
    repaired: AtomicU64,
}

/// Runs the sync; the process exit code.
pub async fn run(opts: Options) -> i32 {
    let path = opts.config.as_deref().unwrap_or(Path::new("-"));
    let cfg = match SyncConfig::from_file(path) {
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
    } else {
        (
            format!(
                "sync {}: {} blobs copied, {} already present, {failed} failed, {source_errors} source errors, {} bytes copied in {seconds:.1} s",
                if opts.dry_run { "(dry run)" } else { "done" },
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

/// Every destination, ready to write to.
fn open_stores(cfg: &SyncConfig) -> Result<Vec<Store>, String> {
    cfg.destinations.iter().map(open_store).collect()
}

async fn sync(cfg: &SyncConfig, opts: &Options) -> Result<Arc<Tally>, String> {
    let source = Arc::new(Source::new(&cfg.source)?);
    let stores = open_stores(cfg)?;
    let tally = Arc::new(Tally::default());
    let blobs = walk(cfg, &source, &tally).await?;
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

/// Every blob the source's manifests refer to. A repository whose tags cannot be listed, or
/// a manifest that cannot be read or is refused, is logged and counted, and the walk goes on.
async fn walk(
    cfg: &SyncConfig,
    source: &Source,
    tally: &Tally,
) -> Result<BTreeMap<String, BlobRef>, String> {
    let mut repositories = cfg.source.repositories.clone();
    if let Some(prefix) = &cfg.source.prefix {
        repositories.extend(source.repositories_under(prefix).await?);
    }
    repositories.sort();
    repositories.dedup();
    let mut blobs: BTreeMap<String, BlobRef> = BTreeMap::new();
    for repo in &repositories {
        let tags = match source.tags(repo).await {
            Ok(tags) => tags,
            Err(e) => {
                tally.source_errors.fetch_add(1, Ordering::Relaxed);
                error!("{repo}: {e}");
                continue;
            }
        };
        for tag in tags {
            for problem in source.collect(repo, &tag, &mut blobs).await {
                tally.source_errors.fetch_add(1, Ordering::Relaxed);
                error!("{repo}:{tag}: {problem}");
            }
        }
    }
    info!("{} repositories walked", repositories.len());
    Ok(blobs)
}

enum Copy {
    Present,
    /// Copied (or, in a dry run, would be), with its size.
    Copied(u64),
}

async fn copy(
    source: &Source,
    store: &dyn ObjectStore,
    key: &ObjectPath,
    digest: &str,
    blob: &BlobRef,
    dry_run: bool,
) -> Result<Copy, String> {
    match store.head(key).await {
        Ok(_) => return Ok(Copy::Present),
        Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(format!("HEAD {key}: {e}")),
    }
    if dry_run {
        return Ok(Copy::Copied(blob.size));
    }
    upload(source, store, key, digest, blob)
        .await
        .map(Copy::Copied)
}

/// Streams the blob from the registry to `key`, completing the upload only when the bytes
/// have the digest; the size.
async fn upload(
    source: &Source,
    store: &dyn ObjectStore,
    key: &ObjectPath,
    digest: &str,
    blob: &BlobRef,
) -> Result<u64, String> {
    let expected = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| "only sha256 digests can be verified".to_string())?;
    let mut body = source.blob(&blob.repository, digest).await?.bytes_stream();
    let upload = store
        .put_multipart(key)
        .await
        .map_err(|e| format!("starting the upload: {e}"))?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, 8 * 1024 * 1024);
    let mut hasher = Sha256::new();
    let mut n = 0u64;
    let streamed: Result<(), String> = async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| format!("reading the blob: {e}"))?;
            n += chunk.len() as u64;
            // The registry could send without end: stop at what the manifest promised.
            if n > blob.size {
                return Err(format!(
                    "the registry sent more than the {} bytes the manifest declares: refused, nothing written",
                    blob.size
                ));
            }
            hasher.update(&chunk);
            writer
                .wait_for_capacity(2)
                .await
                .map_err(|e| format!("uploading: {e}"))?;
            writer.write(&chunk);
        }
        Ok(())
    }
    .await;
    let actual = format!("{:x}", hasher.finalize());
    let problem = match streamed {
        Err(e) => Some(e),
        Ok(()) if actual != expected => Some(format!(
            "the registry sent bytes with digest sha256:{actual}: refused, nothing written"
        )),
        Ok(()) => None,
    };
    if let Some(problem) = problem {
        // Abort failures leave only invisible parts behind; the problem is what matters.
        let _ = writer.abort().await;
        return Err(problem);
    }
    writer
        .finish()
        .await
        .map_err(|e| format!("completing the upload: {e}"))?;
    Ok(n)
}

/// `--verify`: reads back every object under the blob layout in each destination, reports
/// those whose bytes do not have the digest in their name, and with `--repair` deletes each
/// and copies it again from the source.
async fn verify(cfg: &SyncConfig, opts: &Options) -> Result<Arc<Tally>, String> {
    let stores = open_stores(cfg)?;
    let tally = Arc::new(Tally::default());
    let limit = Arc::new(Semaphore::new(cfg.concurrency));
    let (before, after) = cfg
        .blob_path
        .split_once("{digest}")
        .expect("SyncConfig::check requires one {digest}");
    // Listing the directory the digests sit in; other keys there are not blobs of the layout.
    let dir = before
        .rsplit_once('/')
        .map(|(dir, _)| ObjectPath::from(dir));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, store) in stores.iter().enumerate() {
        let mut listing = store.store.list(dir.as_ref());
        while let Some(meta) = listing.next().await {
            let key = meta
                .map_err(|e| format!("{}: listing the objects: {e}", store.name))?
                .location;
            let Some(digest) = key
                .as_ref()
                .strip_prefix(before)
                .and_then(|rest| rest.strip_suffix(after))
                .filter(|digest| is_sha256(digest))
                .map(str::to_string)
            else {
                continue;
            };
            let (object_store, name) = (store.store.clone(), store.name.clone());
            let (tally, limit) = (tally.clone(), limit.clone());
            tasks.spawn(async move {
                let _permit = limit.acquire().await;
                tally.checked.fetch_add(1, Ordering::Relaxed);
                match read_digest(&*object_store, &key).await {
                    Ok((actual, _)) if actual == digest => None,
                    Ok((actual, n)) => {
                        tally.corrupt.fetch_add(1, Ordering::Relaxed);
                        println!("corrupt {key} in {name}: {n} bytes with digest {actual}");
                        Some((i, key, digest))
                    }
                    Err(e) => {
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                        error!("reading {key} in {name}: {e}");
                        None
                    }
                }
            });
        }
    }
    let mut corrupt = Vec::new();
    while let Some(found) = tasks.join_next().await {
        corrupt.extend(found.ok().flatten());
    }
    if !opts.repair || corrupt.is_empty() {
        return Ok(tally);
    }

    let source = Arc::new(Source::new(&cfg.source)?);
    let blobs = walk(cfg, &source, &tally).await?;
    let mut repairs = tokio::task::JoinSet::new();
    for (i, key, digest) in corrupt {
        let (store, name) = (stores[i].store.clone(), stores[i].name.clone());
        let Some(blob) = blobs.get(&digest).cloned() else {
            error!("{key} in {name}: no manifest of the source refers to {digest}: not repaired");
            continue;
        };
        let (source, tally, limit) = (source.clone(), tally.clone(), limit.clone());
        repairs.spawn(async move {
            let _permit = limit.acquire().await;
            // Deleted first: should the copy fail, the gateway finds no object and sends
            // clients to the upstream rather than to bad bytes.
            let repaired = match store.delete(&key).await {
                Ok(()) => upload(&source, &*store, &key, &digest, &blob).await,
                Err(e) => Err(format!("deleting it: {e}")),
            };
            match repaired {
                Ok(_) => {
                    tally.repaired.fetch_add(1, Ordering::Relaxed);
                    info!("repaired {key} in {name}");
                }
                Err(e) => {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                    error!("repairing {key} in {name}: {e}");
                }
            }
        });
    }
    while repairs.join_next().await.is_some() {}
    Ok(tally)
}

/// `sha256:` and 64 lower-case hex digits: a digest this tool can check.
fn is_sha256(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// The SHA-256 digest of the object's bytes, and their count.
async fn read_digest(store: &dyn ObjectStore, key: &ObjectPath) -> Result<(String, u64), String> {
    let mut body = store
        .get(key)
        .await
        .map_err(|e| e.to_string())?
        .into_stream();
    let mut hasher = Sha256::new();
    let mut n = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        n += chunk.len() as u64;
        hasher.update(&chunk);
    }
    Ok((format!("sha256:{:x}", hasher.finalize()), n))
}

/// One status line on the terminal, redrawn four times a second.
async fn show_progress(tally: Arc<Tally>, total: u64, total_bytes: u64) {
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

/// The run as Prometheus text, for cron jobs: to a file and/or a Pushgateway.
async fn report_metrics(
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
        counter(
            "archeio_sync_checked_objects_total",
            "Objects read back by the last verify run.",
            n(&tally.checked),
        )?;
        counter(
            "archeio_sync_corrupt_objects_total",
            "Objects whose bytes do not have the digest in their name, found by the last verify run.",
            n(&tally.corrupt),
        )?;
        counter(
            "archeio_sync_repaired_objects_total",
            "Corrupt objects copied again by the last verify run.",
            n(&tally.repaired),
        )?;
        counter(
            "archeio_sync_failed_objects_total",
            "Objects the last verify run could not read or repair.",
            n(&tally.failed),
        )?;
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
        // Its own job for verify runs: a push replaces the whole group it goes to.
        let job = if opts.verify {
            "archeio_sync_verify"
        } else {
            "archeio_sync"
        };
        let target = format!("{}/metrics/job/{job}", url.trim_end_matches('/'));
        let resp = reqwest::Client::new()
            .put(&target)
            .header("Content-Type", "text/plain; version=0.0.4")
            .body(text)
            .send()
            .await
            .map_err(|e| format!("push to {target}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("push to {target}: answered {}", resp.status()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, String> {
        Options::parse(args.iter().map(|a| a.to_string()))
    }

    #[test]
    fn verify_and_repair_flags() {
        let opts = parse(&["-c", "f", "--verify", "--repair"]).unwrap();
        assert!(opts.verify && opts.repair && !opts.dry_run);
        let err = parse(&["-c", "f", "--repair"]).unwrap_err();
        assert!(err.starts_with("--repair needs --verify\nusage:"), "{err}");
        let err = parse(&["-c", "f", "--verify", "--dry-run"]).unwrap_err();
        assert!(
            err.starts_with("--dry-run and --verify exclude each other"),
            "{err}"
        );
        assert!(parse(&["--help"])
            .unwrap_err()
            .contains("--verify [--repair]"));
    }

    #[test]
    fn only_sha256_digests_are_checked() {
        let hex = "0123456789abcdef".repeat(4);
        assert!(is_sha256(&format!("sha256:{hex}")));
        assert!(!is_sha256(&format!("sha256:{}", hex.to_uppercase())));
        assert!(!is_sha256(&format!("sha512:{hex}")));
        assert!(!is_sha256(&format!("sha256:{hex}0")));
        assert!(!is_sha256("sha256:../x"));
    }
}
