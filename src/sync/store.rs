//! The destinations: each configured URL opened as an object store, `file://` as a local
//! directory, `s3://bucket/prefix` as S3 with its keys under the prefix.
//!
//! An S3 destination's credentials are found before anything is copied. object_store falls
//! back to the EC2 instance metadata service when it finds none, and asks it again, with ten
//! retries, for every request while it fails: a run without credentials stalled on each blob.
//! Here that service is used only when the configuration asks for it (`credentials:
//! instance_metadata`), with few quick attempts, once for the run.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, AwsCredentialProvider};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

use super::config::{Credentials, DestinationConfig, SyncConfig};
use super::with_causes;
use crate::aws_ambient::{with_identity, LOOKED_FOR};

/// A destination ready to write to.
pub(super) struct Store {
    pub(super) name: String,
    pub(super) store: Arc<dyn ObjectStore>,
}

/// Every destination, ready to write to; with `create` false (a dry run, a verify that does
/// not repair) nothing is created: a local directory not there yet is an empty store.
pub(super) async fn open_stores(cfg: &SyncConfig, create: bool) -> Result<Vec<Store>, String> {
    let mut stores = Vec::with_capacity(cfg.destinations.len());
    for d in &cfg.destinations {
        stores.push(open_store(d, create).await?);
    }
    Ok(stores)
}

/// Where the instance metadata service is unless `AWS_METADATA_ENDPOINT` says otherwise (as
/// object_store's `from_env` reads it).
const METADATA_ENDPOINT: &str = "http://169.254.169.254";

/// A variable's value; unset or empty: none.
fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

async fn open_store(d: &DestinationConfig, create: bool) -> Result<Store, String> {
    let name = d.url.clone();
    if let Some(dir) = d.url.strip_prefix("file://") {
        let store: Arc<dyn ObjectStore> = if create {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("{name}: cannot create {dir}: {e}"))?;
            Arc::new(LocalFileSystem::new_with_prefix(dir).map_err(|e| format!("{name}: {e}"))?)
        } else if Path::new(dir).exists() {
            Arc::new(LocalFileSystem::new_with_prefix(dir).map_err(|e| format!("{name}: {e}"))?)
        } else {
            // Holds no blob, as the directory would if it were created, without creating it.
            Arc::new(InMemory::new())
        };
        return Ok(Store { name, store });
    }
    let location = d.url.trim_start_matches("s3://");
    let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
    let mut b = AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_region(&d.region);
    b = with_credentials(b, d, &name, bucket).await?;
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
        .map_err(|e| format!("{name}: {}", with_causes(&e)))?;
    // Keys go under the prefix: the gateway's mirror URL for this bucket includes it.
    let prefix = prefix.trim_matches('/');
    let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
        Arc::new(store)
    } else {
        Arc::new(PrefixStore::new(store, prefix))
    };
    Ok(Store { name, store })
}

/// The destination's credentials on `b`: an access key (from the variables the configuration
/// names, or the secret from a file), else a web identity, else container credentials, else,
/// when the configuration allows it, the instance metadata service's; none is an error that
/// says what was looked for.
async fn with_credentials(
    b: AmazonS3Builder,
    d: &DestinationConfig,
    name: &str,
    bucket: &str,
) -> Result<AmazonS3Builder, String> {
    let key_var = d
        .access_key_id_env
        .as_deref()
        .unwrap_or("AWS_ACCESS_KEY_ID");
    let secret_var = d
        .secret_access_key_env
        .as_deref()
        .unwrap_or("AWS_SECRET_ACCESS_KEY");
    let (secret, secret_from) = match &d.secret_access_key_file {
        Some(path) => (
            Some(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("{name}: cannot read {}: {e}", path.display()))?
                    .trim_end()
                    .to_string(),
            ),
            "secret_access_key_file",
        ),
        None => (var(secret_var), secret_var),
    };
    match (var(key_var), secret) {
        (Some(id), Some(secret)) => {
            return Ok(b.with_access_key_id(id).with_secret_access_key(secret));
        }
        (Some(_), None) => {
            return Err(format!("{name}: {key_var} is set but {secret_from} is not"))
        }
        (None, Some(_)) => {
            return Err(format!("{name}: {secret_from} is set but {key_var} is not"))
        }
        (None, None) => {}
    }
    let (b, found) = with_identity(b);
    if found {
        return Ok(b);
    }
    if d.credentials == Some(Credentials::InstanceMetadata) {
        return Ok(b.with_credentials(instance_metadata(name, bucket, &d.region).await?));
    }
    Err(format!(
        "{name}: no credentials found; looked for an access key ({key_var} and {secret_from}), \
         {LOOKED_FOR}; set one, or `credentials: instance_metadata` to use the EC2 instance \
         metadata service"
    ))
}

/// The instance metadata service's credentials for the store, fetched now: a failure stops
/// the run before anything is copied. The provider is built apart from the store so that its
/// retries are those of the AWS SDKs for this service (3 attempts, 1 s each) while the
/// store's requests keep object_store's; it keeps the credentials until shortly before they
/// expire.
async fn instance_metadata(
    name: &str,
    bucket: &str,
    region: &str,
) -> Result<AwsCredentialProvider, String> {
    let endpoint = var("AWS_METADATA_ENDPOINT").unwrap_or_else(|| METADATA_ENDPOINT.into());
    let provider = AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_region(region)
        .with_config(AmazonS3ConfigKey::MetadataEndpoint, &endpoint)
        .with_retry(RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: 2,
            retry_timeout: Duration::from_secs(10),
        })
        .with_client_options(ClientOptions::new().with_timeout(Duration::from_secs(1)))
        .build()
        .map_err(|e| format!("{name}: {}", with_causes(&e)))?
        .credentials()
        .clone();
    provider.get_credential().await.map_err(|e| {
        format!(
            "{name}: no credentials from the instance metadata service at {endpoint}: {}",
            with_causes(&e)
        )
    })?;
    Ok(provider)
}
