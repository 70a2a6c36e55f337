//! `--verify`: every object under the blob layout read back and checked against the digest
//! in its name; with `--repair`, the bad ones copied again from the source.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::StreamExt;
use log::{error, info};
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use super::config::SyncConfig;
use super::copy::{upload, walk};
use super::progress::Tally;
use super::source::Source;
use super::store::open_stores;
use super::{with_causes, Options};
use crate::routing::grammar::is_lower_hex;

/// `--verify`: reads back every object under the blob layout in each destination, reports
/// those whose bytes do not have the digest in their name, and with `--repair` deletes each
/// and copies it again from the source.
pub(super) async fn verify(cfg: &SyncConfig, opts: &Options) -> Result<Arc<Tally>, String> {
    let stores = open_stores(cfg, opts.repair).await?;
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
                .map_err(|e| format!("{}: listing the objects: {}", store.name, with_causes(&e)))?
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
    let blobs = walk(cfg, &source, None, &tally).await?;
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
                Err(e) => Err(format!("deleting it: {}", with_causes(&e))),
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
    digest
        .strip_prefix("sha256:")
        .is_some_and(|hex| is_lower_hex(hex, 64))
}

/// The SHA-256 digest of the object's bytes, and their count.
async fn read_digest(store: &dyn ObjectStore, key: &ObjectPath) -> Result<(String, u64), String> {
    let mut body = store
        .get(key)
        .await
        .map_err(|e| with_causes(&e))?
        .into_stream();
    let mut hasher = Sha256::new();
    let mut n = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| with_causes(&e))?;
        n += chunk.len() as u64;
        hasher.update(&chunk);
    }
    Ok((format!("sha256:{:x}", hasher.finalize()), n))
}

#[cfg(test)]
mod tests {
    use super::*;

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
