//! The destinations: each configured URL opened as an object store, `file://` as a local
//! directory, `s3://bucket/prefix` as S3 with its keys under the prefix.

use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use object_store::{ClientOptions, ObjectStore};

use super::config::{DestinationConfig, SyncConfig};

/// A destination ready to write to.
pub(super) struct Store {
    pub(super) name: String,
    pub(super) store: Arc<dyn ObjectStore>,
}

/// Every destination, ready to write to.
pub(super) fn open_stores(cfg: &SyncConfig) -> Result<Vec<Store>, String> {
    cfg.destinations.iter().map(open_store).collect()
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
