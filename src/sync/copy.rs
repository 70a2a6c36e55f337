//! The copy: the walk of the source for the blobs its manifests refer to, and each blob
//! streamed into a store, the upload completed only when its bytes have its digest.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use futures::StreamExt;
use log::{error, info};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, WriteMultipart};
use sha2::{Digest, Sha256};

use super::config::SyncConfig;
use super::progress::Tally;
use super::shard::Shard;
use super::source::{BlobRef, Source};
use super::with_causes;

/// Every blob the manifests of the source's repositories (of `shard`'s, if given) refer to. A
/// source that cannot be reached stops the walk; a repository whose tags cannot be listed, or a
/// manifest that cannot be read or is refused, is logged and counted, and the walk goes on.
pub(super) async fn walk(
    cfg: &SyncConfig,
    source: &Source,
    shard: Option<Shard>,
    tally: &Tally,
) -> Result<BTreeMap<String, BlobRef>, String> {
    source.reach().await?;
    let mut repositories = cfg.source.repositories.clone();
    if let Some(prefix) = &cfg.source.prefix {
        repositories.extend(source.repositories_under(prefix).await?);
    }
    repositories.sort();
    repositories.dedup();
    if let Some(shard) = shard {
        let all = repositories.len();
        repositories.retain(|r| shard.contains(r));
        info!(
            "shard {shard}: {} of {all} repositories",
            repositories.len()
        );
    }
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

/// What became of one blob in one store.
pub(super) enum Copy {
    Present,
    /// Copied (or, in a dry run, would be), with its size.
    Copied(u64),
}

/// Copies the blob to `key` unless the store holds it already.
pub(super) async fn copy(
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
        Err(e) => return Err(format!("HEAD {key}: {}", with_causes(&e))),
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
pub(super) async fn upload(
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
        .map_err(|e| format!("starting the upload: {}", with_causes(&e)))?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, 8 * 1024 * 1024);
    let mut hasher = Sha256::new();
    let mut n = 0u64;
    let streamed: Result<(), String> = async {
        while let Some(chunk) = body.next().await {
            // Without the URL: the registry may have redirected to a signed one.
            let chunk =
                chunk.map_err(|e| format!("reading the blob: {}", with_causes(&e.without_url())))?;
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
                .map_err(|e| format!("uploading: {}", with_causes(&e)))?;
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
        .map_err(|e| format!("completing the upload: {}", with_causes(&e)))?;
    Ok(n)
}
