//! Signed URLs for private mirrors: S3 SigV4 query signatures, GCS V4 signed URLs and Azure
//! service SAS, all made by object_store's [`Signer`]; archeio has no signature code of its
//! own.
//!
//! The object_store client is built once per mirror ([`MirrorSigner::new`]) from the
//! checked [`Signing`], without reading any environment variable or instance metadata: its
//! credentials are the ones the configuration resolved. Signing a URL then needs no network
//! (an HMAC for S3 and Azure, an RSA signature for GCS). Nothing here logs, and
//! [`MirrorSigner`]'s `Debug` shows the store and bucket only.

use std::fmt;
use std::time::Duration;

use http::Method;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::path::Path;
use object_store::signer::Signer;

use crate::aws_ambient::{with_identity, LOOKED_FOR};
use crate::config::signing::{SignedStore, Signing};

/// Signs URLs for the objects of one private mirror.
pub struct MirrorSigner {
    store: Box<dyn Signer>,
    lifetime: Duration,
    /// `s3://bucket`, `gs://bucket`, `azure://account/container`, or with an endpoint
    /// `{endpoint}/{bucket}` (`{endpoint}/{container}`): for `Debug`, errors, cache keys and
    /// the breaker. Endpoints carry no credentials (the configuration refuses them).
    name: String,
    /// Sign `HEAD` as `GET`: Azure, where a SAS grants permissions rather than signing the
    /// method, and object_store grants a `HEAD` none (only `GET` gets read, `r`).
    head_as_get: bool,
}

impl fmt::Debug for MirrorSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MirrorSigner")
            .field("store", &self.name)
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

impl MirrorSigner {
    /// Builds the object_store client for `signing`. Fails when object_store refuses the
    /// credentials (a GCS key whose private key is not PEM, an Azure key that is not
    /// base64) or the endpoint; the message never holds a secret.
    pub fn new(signing: &Signing) -> Result<MirrorSigner, String> {
        let head_as_get = matches!(signing.store, SignedStore::Azure(_));
        let (store, name): (Box<dyn Signer>, String) = match &signing.store {
            SignedStore::S3(s3) => {
                let mut builder = AmazonS3Builder::new()
                    .with_bucket_name(&s3.bucket)
                    .with_region(&s3.region);
                // A bucket's name is unique on AWS only: elsewhere the server is part of it.
                let name = match &s3.endpoint {
                    Some(endpoint) => format!("{endpoint}/{}", s3.bucket),
                    None => format!("s3://{}", s3.bucket),
                };
                match &s3.keys {
                    Some(keys) => {
                        builder = builder
                            .with_access_key_id(&keys.access_key_id)
                            .with_secret_access_key(&keys.secret_access_key);
                        if let Some(token) = &keys.session_token {
                            builder = builder.with_token(token);
                        }
                    }
                    None => {
                        let (with, found) = with_identity(builder);
                        if !found {
                            return Err(format!(
                                "{name}: credentials: workload_identity, but the environment \
                                 offers none; looked for {LOOKED_FOR}"
                            ));
                        }
                        builder = with;
                    }
                }
                if let Some(endpoint) = &s3.endpoint {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_virtual_hosted_style_request(false)
                        .with_allow_http(endpoint.starts_with("http://"));
                }
                let store = builder.build().map_err(|e| failed(&name, e))?;
                (Box::new(store), name)
            }
            SignedStore::Gcs(gcs) => {
                let name = format!("gs://{}", gcs.bucket);
                let builder = match &gcs.service_account_key {
                    Some(key) => GoogleCloudStorageBuilder::new().with_service_account_key(key),
                    // Application default credentials: GKE Workload Identity's metadata
                    // server, or GOOGLE_APPLICATION_CREDENTIALS; URLs signed by signBlob.
                    None => GoogleCloudStorageBuilder::from_env(),
                };
                let store = builder
                    .with_bucket_name(&gcs.bucket)
                    .build()
                    .map_err(|e| failed(&name, e))?;
                (Box::new(store), name)
            }
            SignedStore::Azure(az) => {
                let mut builder = match &az.access_key {
                    Some(key) => MicrosoftAzureBuilder::new().with_access_key(key),
                    // AKS Workload Identity (AZURE_FEDERATED_TOKEN_FILE, AZURE_CLIENT_ID,
                    // AZURE_TENANT_ID): user delegation SAS.
                    None => MicrosoftAzureBuilder::from_env(),
                }
                .with_account(&az.account)
                .with_container_name(&az.container);
                if let Some(endpoint) = &az.endpoint {
                    builder = builder
                        .with_endpoint(endpoint.clone())
                        .with_allow_http(endpoint.starts_with("http://"));
                }
                let name = match &az.endpoint {
                    Some(endpoint) => format!("{endpoint}/{}", az.container),
                    None => format!("azure://{}/{}", az.account, az.container),
                };
                let store = builder.build().map_err(|e| failed(&name, e))?;
                (Box::new(store), name)
            }
        };
        Ok(MirrorSigner {
            store,
            lifetime: signing.lifetime,
            name,
            head_as_get,
        })
    }

    /// The full signed URL for `method` (`GET`, `HEAD`, ...) on the object `key` (e.g.
    /// `containers/images/sha256:abc...`, no leading slash), valid for [`Self::lifetime`]
    /// from now. On S3 and GCS the method is part of the signature: a `GET` URL does not
    /// serve a `HEAD`. On Azure a SAS signs permissions instead, and both methods get a
    /// read-only one (`sp=r`), which serves `GET` and `HEAD`.
    pub async fn url(&self, method: Method, key: &str) -> Result<String, String> {
        let path = Path::parse(key).map_err(|e| format!("object key {key:?}: {e}"))?;
        let method = if self.head_as_get && method == Method::HEAD {
            Method::GET
        } else {
            method
        };
        self.store
            .signed_url(method, &path, self.lifetime)
            .await
            .map(String::from)
            .map_err(|e| format!("{}: cannot sign a URL for {key:?}: {e}", self.name))
    }

    /// The store, `s3://bucket`, `gs://bucket`, `azure://account/container`, or for an
    /// S3-compatible server or an Azure endpoint its path-style base
    /// (`http://minio.internal:9000/bucket`): its name in logs, cache keys and the breaker's
    /// `host` label, so two sites' buckets of one name are two stores.
    pub fn store(&self) -> &str {
        &self.name
    }

    /// How long each signed URL stays valid.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }
}

fn failed(name: &str, e: object_store::Error) -> String {
    format!("{name}: {e}")
}
