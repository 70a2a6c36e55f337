//! Signed URLs for a private mirror: the YAML for one mirror's `signing` key
//! ([`SigningConfig`]) and the checked form with its secrets resolved ([`Signing`]), which
//! [`crate::mirror::signing::MirrorSigner`] signs with.
//!
//! ```yaml
//! signing:
//!   s3:
//!     bucket: registry-mirror
//!     region: eu-west-1
//!     access_key_id_env: MIRROR_AWS_ACCESS_KEY_ID
//!     secret_access_key_file: /run/secrets/mirror-aws-secret
//!     lifetime: 15m
//! ```
//!
//! As with the upstream credentials, a secret is never written in the YAML file itself: each
//! one is read from exactly one of an environment variable (`*_env`) or a file (`*_file`, a
//! trailing newline ignored), so the file can be shared and logged. [`Signing`]'s `Debug`
//! prints none of them, and errors name the key and the variable or file, never the value.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::values::{base_url, positive_duration, Invalid};

/// The longest lifetime of a signed URL: 7 days, the most S3 SigV4 and GCS V4 accept.
pub const MAX_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// How one mirror's blob URLs are signed. In YAML a map with one key, the store:
/// `{s3: {...}}`, `{gcs: {...}}` or `{azure: {...}}`, wherever the value sits (serde_yaml
/// would otherwise expect a `!s3` tag).
#[derive(Debug, Clone, PartialEq)]
pub enum SigningConfig {
    /// Amazon S3 or an S3-compatible server: SigV4 query-signed URLs.
    S3(S3SigningConfig),
    /// Google Cloud Storage: V4 signed URLs with a service account key.
    Gcs(GcsSigningConfig),
    /// Azure Blob Storage: service SAS signed with the account key.
    Azure(AzureSigningConfig),
}

/// [`SigningConfig`] as serde derives it, read and written through serde_yaml's
/// `singleton_map`, which maps each variant to a one-key map.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Tagged {
    S3(S3SigningConfig),
    Gcs(GcsSigningConfig),
    Azure(AzureSigningConfig),
}

impl<'de> Deserialize<'de> for SigningConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(
            match serde_yaml::with::singleton_map::deserialize(deserializer)? {
                Tagged::S3(c) => SigningConfig::S3(c),
                Tagged::Gcs(c) => SigningConfig::Gcs(c),
                Tagged::Azure(c) => SigningConfig::Azure(c),
            },
        )
    }
}

impl Serialize for SigningConfig {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let tagged = match self.clone() {
            SigningConfig::S3(c) => Tagged::S3(c),
            SigningConfig::Gcs(c) => Tagged::Gcs(c),
            SigningConfig::Azure(c) => Tagged::Azure(c),
        };
        serde_yaml::with::singleton_map::serialize(&tagged, serializer)
    }
}

/// S3 (or S3-compatible) signing: SigV4 with an access key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3SigningConfig {
    /// The bucket that holds the blobs.
    pub bucket: String,
    /// The bucket's region, part of the signature's scope.
    pub region: String,
    /// An S3-compatible server's base URL (e.g. `http://127.0.0.1:9000`); URLs are then
    /// path-style (`{endpoint}/{bucket}/{key}`). Unset: AWS itself,
    /// `https://s3.{region}.amazonaws.com/{bucket}/{key}`.
    pub endpoint: Option<String>,
    /// Environment variable holding the access key ID.
    pub access_key_id_env: Option<String>,
    /// File holding the access key ID.
    pub access_key_id_file: Option<PathBuf>,
    /// Environment variable holding the secret access key.
    pub secret_access_key_env: Option<String>,
    /// File holding the secret access key.
    pub secret_access_key_file: Option<PathBuf>,
    /// Environment variable holding a session token (temporary credentials). Unset, as is
    /// `session_token_file`: none.
    pub session_token_env: Option<String>,
    /// File holding a session token.
    pub session_token_file: Option<PathBuf>,
    /// `workload_identity`: no keys here; sign with the credentials of the pod's identity:
    /// a web identity (IRSA) or container credentials (EKS Pod Identity, ECS).
    pub credentials: Option<WorkloadCredentials>,
    /// How long a signed URL stays valid; more than 0s, at most 7 days.
    #[serde(with = "humantime_serde")]
    pub lifetime: Duration,
}

impl Default for S3SigningConfig {
    fn default() -> Self {
        S3SigningConfig {
            bucket: String::new(),
            region: "us-east-1".into(),
            endpoint: None,
            access_key_id_env: None,
            access_key_id_file: None,
            secret_access_key_env: None,
            secret_access_key_file: None,
            session_token_env: None,
            session_token_file: None,
            credentials: None,
            lifetime: default_lifetime(),
        }
    }
}

/// Google Cloud Storage signing: V4 signatures (RSA-SHA256) with a service account's key.
///
/// There is no `endpoint`: the V4 signature covers the `host` `storage.googleapis.com`,
/// which object_store always signs, so a URL for another host would not verify.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GcsSigningConfig {
    /// The bucket that holds the blobs.
    pub bucket: String,
    /// Environment variable holding the service account's JSON key.
    pub service_account_key_env: Option<String>,
    /// File holding the service account's JSON key (as downloaded from the console).
    pub service_account_key_file: Option<PathBuf>,
    /// `workload_identity`: no key here; sign with the credentials of the environment (GKE
    /// Workload Identity's metadata server, or `GOOGLE_APPLICATION_CREDENTIALS`), through
    /// the IAM `signBlob` API (the service account needs `iam.serviceAccountTokenCreator`
    /// on itself).
    pub credentials: Option<WorkloadCredentials>,
    /// How long a signed URL stays valid; more than 0s, at most 7 days.
    #[serde(with = "humantime_serde")]
    pub lifetime: Duration,
}

impl Default for GcsSigningConfig {
    fn default() -> Self {
        GcsSigningConfig {
            bucket: String::new(),
            service_account_key_env: None,
            service_account_key_file: None,
            credentials: None,
            lifetime: default_lifetime(),
        }
    }
}

/// Azure Blob Storage signing: a service SAS signed with the storage account key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AzureSigningConfig {
    /// The storage account name.
    pub account: String,
    /// The container that holds the blobs.
    pub container: String,
    /// Environment variable holding the account key (base64, as the portal shows it).
    pub access_key_env: Option<String>,
    /// File holding the account key.
    pub access_key_file: Option<PathBuf>,
    /// `workload_identity`: no key here; sign user delegation SAS with Azure AD credentials
    /// from AKS Workload Identity (`AZURE_FEDERATED_TOKEN_FILE`, `AZURE_CLIENT_ID`,
    /// `AZURE_TENANT_ID`).
    pub credentials: Option<WorkloadCredentials>,
    /// The account's blob endpoint, e.g. Azurite's `http://127.0.0.1:10000/devstoreaccount1`;
    /// URLs are `{endpoint}/{container}/{key}`. Unset:
    /// `https://{account}.blob.core.windows.net`.
    pub endpoint: Option<String>,
    /// How long a signed URL stays valid; more than 0s, at most 7 days.
    #[serde(with = "humantime_serde")]
    pub lifetime: Duration,
}

impl Default for AzureSigningConfig {
    fn default() -> Self {
        AzureSigningConfig {
            account: String::new(),
            container: String::new(),
            access_key_env: None,
            access_key_file: None,
            credentials: None,
            endpoint: None,
            lifetime: default_lifetime(),
        }
    }
}

/// Credentials that are not written anywhere but come with the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkloadCredentials {
    /// The cloud's identity for the pod (its provider's own mechanism).
    WorkloadIdentity,
}

fn default_lifetime() -> Duration {
    Duration::from_secs(15 * 60)
}

/// One mirror's signing, checked, with its secrets read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signing {
    /// How long a signed URL stays valid; more than zero, at most [`MAX_LIFETIME`].
    pub lifetime: Duration,
    /// The store and its credentials.
    pub store: SignedStore,
}

/// The object store a mirror's URLs are signed for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignedStore {
    /// S3 or an S3-compatible server.
    S3(S3Signing),
    /// Google Cloud Storage.
    Gcs(GcsSigning),
    /// Azure Blob Storage.
    Azure(AzureSigning),
}

/// S3 signing, checked; `Debug` prints no secret.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Signing {
    /// Bucket name.
    pub bucket: String,
    /// Region of the signature's scope.
    pub region: String,
    /// Base URL of an S3-compatible server, without a trailing slash (path-style URLs).
    pub endpoint: Option<String>,
    /// The keys; `None`: the pod's identity.
    pub keys: Option<S3Keys>,
}

/// Static S3 keys; `Debug` prints no secret.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Keys {
    /// Access key ID.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token of temporary credentials.
    pub session_token: Option<String>,
}

/// GCS signing, checked; `Debug` prints no secret.
#[derive(Clone, PartialEq, Eq)]
pub struct GcsSigning {
    /// Bucket name.
    pub bucket: String,
    /// The service account's JSON key (with `client_email` and `private_key`); `None`: the
    /// environment's credentials.
    pub service_account_key: Option<String>,
}

/// Azure signing, checked; `Debug` prints no secret.
#[derive(Clone, PartialEq, Eq)]
pub struct AzureSigning {
    /// Storage account name.
    pub account: String,
    /// Container name.
    pub container: String,
    /// Account key, base64; `None`: Azure AD credentials of the workload.
    pub access_key: Option<String>,
    /// Blob endpoint of the account, without a trailing slash.
    pub endpoint: Option<String>,
}

const REDACTED: &str = "<redacted>";

impl std::fmt::Debug for S3Signing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Signing")
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("keys", &self.keys)
            .finish()
    }
}

impl std::fmt::Debug for S3Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Keys")
            .field("access_key_id", &REDACTED)
            .field("secret_access_key", &REDACTED)
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| REDACTED),
            )
            .finish()
    }
}

impl std::fmt::Debug for GcsSigning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcsSigning")
            .field("bucket", &self.bucket)
            .field(
                "service_account_key",
                &self.service_account_key.as_ref().map(|_| REDACTED),
            )
            .finish()
    }
}

impl std::fmt::Debug for AzureSigning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureSigning")
            .field("account", &self.account)
            .field("container", &self.container)
            .field("access_key", &self.access_key.as_ref().map(|_| REDACTED))
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl SigningConfig {
    /// Checks the values and reads the secrets; an error's key is below the variant
    /// (`s3.bucket`, `gcs.service_account_key_env`), for the caller to put under its own.
    pub(crate) fn check(&self, env: impl Fn(&str) -> Option<String>) -> Result<Signing, Invalid> {
        let (variant, lifetime, store) = match self {
            SigningConfig::S3(c) => ("s3", c.lifetime, c.check(&env).map(SignedStore::S3)),
            SigningConfig::Gcs(c) => ("gcs", c.lifetime, c.check(&env).map(SignedStore::Gcs)),
            SigningConfig::Azure(c) => ("azure", c.lifetime, c.check(&env).map(SignedStore::Azure)),
        };
        let checked = check_lifetime(lifetime).and(store);
        let store = checked.map_err(|e| e.under(variant))?;
        Ok(Signing { lifetime, store })
    }
}

impl S3SigningConfig {
    fn check(&self, env: &impl Fn(&str) -> Option<String>) -> Result<S3Signing, Invalid> {
        let bucket = name("bucket", &self.bucket, |b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-')
        })?;
        if self.region.is_empty() {
            return Err(Invalid::new("region", "must not be empty"));
        }
        let endpoint = match &self.endpoint {
            Some(e) => Some(base_url(e).map_err(|m| Invalid::new("endpoint", m))?),
            None => None,
        };
        let keys = match self.credentials {
            Some(WorkloadCredentials::WorkloadIdentity) => {
                let written = [
                    (
                        "access_key_id",
                        &self.access_key_id_env,
                        &self.access_key_id_file,
                    ),
                    (
                        "secret_access_key",
                        &self.secret_access_key_env,
                        &self.secret_access_key_file,
                    ),
                    (
                        "session_token",
                        &self.session_token_env,
                        &self.session_token_file,
                    ),
                ];
                no_keys_with_identity(&written)?;
                None
            }
            None => {
                let access_key_id = secret(
                    env,
                    "access_key_id",
                    &self.access_key_id_env,
                    &self.access_key_id_file,
                )?;
                let secret_access_key = secret(
                    env,
                    "secret_access_key",
                    &self.secret_access_key_env,
                    &self.secret_access_key_file,
                )?;
                let session_token = match (&self.session_token_env, &self.session_token_file) {
                    (None, None) => None,
                    (var, file) => Some(secret(env, "session_token", var, file)?),
                };
                Some(S3Keys {
                    access_key_id: access_key_id.value,
                    secret_access_key: secret_access_key.value,
                    session_token: session_token.map(|s| s.value),
                })
            }
        };
        Ok(S3Signing {
            bucket,
            region: self.region.clone(),
            endpoint,
            keys,
        })
    }
}

/// With `credentials: workload_identity`, no key may be configured too: which would win is
/// not something to guess.
fn no_keys_with_identity(
    written: &[(&str, &Option<String>, &Option<PathBuf>)],
) -> Result<(), Invalid> {
    for (base, var, file) in written {
        if var.is_some() || file.is_some() {
            let key = if var.is_some() {
                format!("{base}_env")
            } else {
                format!("{base}_file")
            };
            return Err(Invalid::new(
                key,
                "cannot be combined with credentials: workload_identity",
            ));
        }
    }
    Ok(())
}

impl GcsSigningConfig {
    fn check(&self, env: &impl Fn(&str) -> Option<String>) -> Result<GcsSigning, Invalid> {
        let bucket = name("bucket", &self.bucket, |b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        })?;
        if self.credentials.is_some() {
            no_keys_with_identity(&[(
                "service_account_key",
                &self.service_account_key_env,
                &self.service_account_key_file,
            )])?;
            return Ok(GcsSigning {
                bucket,
                service_account_key: None,
            });
        }
        let key = secret(
            env,
            "service_account_key",
            &self.service_account_key_env,
            &self.service_account_key_file,
        )?;
        /// The fields object_store signs with; the rest of the key is not read here.
        #[derive(Deserialize)]
        struct ServiceAccountKey {
            client_email: String,
            private_key: String,
        }
        match serde_json::from_str::<ServiceAccountKey>(&key.value) {
            // The parser's message may quote the key, so only its position is shown.
            Err(e) => {
                return Err(key.invalid(format!(
                    "expected a service account JSON key with client_email and private_key \
                     (problem at line {} column {})",
                    e.line(),
                    e.column()
                )))
            }
            Ok(k) if k.client_email.is_empty() || !k.private_key.contains("PRIVATE KEY") => {
                return Err(key.invalid(
                    "expected a service account JSON key with client_email and a PEM private_key",
                ))
            }
            Ok(_) => {}
        }
        Ok(GcsSigning {
            bucket,
            service_account_key: Some(key.value),
        })
    }
}

impl AzureSigningConfig {
    fn check(&self, env: &impl Fn(&str) -> Option<String>) -> Result<AzureSigning, Invalid> {
        let account = name("account", &self.account, |b| {
            b.is_ascii_lowercase() || b.is_ascii_digit()
        })?;
        let container = name("container", &self.container, |b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'
        })?;
        let endpoint = match &self.endpoint {
            Some(e) => Some(base_url(e).map_err(|m| Invalid::new("endpoint", m))?),
            None => None,
        };
        let access_key = match self.credentials {
            Some(WorkloadCredentials::WorkloadIdentity) => {
                no_keys_with_identity(&[(
                    "access_key",
                    &self.access_key_env,
                    &self.access_key_file,
                )])?;
                None
            }
            None => {
                let key = secret(
                    env,
                    "access_key",
                    &self.access_key_env,
                    &self.access_key_file,
                )?;
                if base64::engine::general_purpose::STANDARD
                    .decode(key.value.trim())
                    .is_err()
                {
                    return Err(key.invalid("expected the account key in base64"));
                }
                Some(key.value.trim().to_string())
            }
        };
        Ok(AzureSigning {
            account,
            container,
            access_key,
            endpoint,
        })
    }
}

/// `value` when it is non-empty and every byte passes `allowed`.
fn name(key: &str, value: &str, allowed: impl Fn(u8) -> bool) -> Result<String, Invalid> {
    if value.is_empty() {
        return Err(Invalid::new(key, "must be set"));
    }
    if !value.bytes().all(allowed) {
        return Err(Invalid::new(
            key,
            format!("{value:?} is not a valid name for this store"),
        ));
    }
    Ok(value.to_string())
}

/// A secret and the key it was read through, to name in later errors.
struct Secret {
    key: String,
    origin: String,
    value: String,
}

impl Secret {
    /// An error about the value, naming its key and where it came from, not the value.
    fn invalid(&self, message: impl std::fmt::Display) -> Invalid {
        Invalid::new(&self.key, format!("{} ({})", message, self.origin))
    }
}

/// Reads `{base}` from exactly one of the environment variable `{base}_env` names or the
/// file `{base}_file` names (a trailing newline ignored); errors name the key and the
/// variable or file, never the value.
fn secret(
    env: &impl Fn(&str) -> Option<String>,
    base: &str,
    var: &Option<String>,
    file: &Option<PathBuf>,
) -> Result<Secret, Invalid> {
    let (key, origin, value) = match (var, file) {
        (Some(var), None) => {
            let key = format!("{base}_env");
            let value = env(var).ok_or_else(|| {
                Invalid::new(&key, format!("environment variable {var} is not set"))
            })?;
            (key, format!("environment variable {var}"), value)
        }
        (None, Some(path)) => {
            let key = format!("{base}_file");
            let value = std::fs::read_to_string(path)
                .map_err(|e| Invalid::new(&key, format!("cannot read {}: {e}", path.display())))?
                .trim_end_matches(['\n', '\r'])
                .to_string();
            (key, format!("file {}", path.display()), value)
        }
        _ => {
            return Err(Invalid::new(
                format!("{base}_env"),
                format!("expected exactly one of {base}_env and {base}_file"),
            ))
        }
    };
    let secret = Secret { key, origin, value };
    if secret.value.trim().is_empty() {
        return Err(secret.invalid("is empty"));
    }
    Ok(secret)
}

fn check_lifetime(lifetime: Duration) -> Result<(), Invalid> {
    positive_duration("lifetime", lifetime)?;
    if lifetime > MAX_LIFETIME {
        return Err(Invalid::new(
            "lifetime",
            format!(
                "must be at most 7 days (the longest S3 and GCS accept), got {} s",
                lifetime.as_secs()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const AZURE_KEY: &str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

    fn env(var: &str) -> Option<String> {
        match var {
            "AWS_ID" => Some("AKIDEXAMPLE".into()),
            "AWS_SECRET" => Some("wJalrXUtnFEMI-top-secret".into()),
            "AWS_TOKEN" => Some("session-token-secret".into()),
            "AZ_KEY" => Some(AZURE_KEY.into()),
            "EMPTY" => Some("\n".into()),
            "GCS_KEY" => Some(
                r#"{"client_email": "a@b.iam.gserviceaccount.com",
                    "private_key": "-----BEGIN PRIVATE KEY-----\ngcs-secret\n-----END PRIVATE KEY-----\n"}"#
                    .into(),
            ),
            "NOT_JSON" => Some("gcs-secret-not-json".into()),
            _ => None,
        }
    }

    fn parse(yaml: &str) -> Result<SigningConfig, String> {
        serde_yaml::from_str(yaml).map_err(|e| e.to_string())
    }

    fn checked(yaml: &str) -> Result<Signing, Invalid> {
        parse(yaml).unwrap().check(env)
    }

    fn error(yaml: &str) -> String {
        let e = checked(yaml).unwrap_err();
        format!("{}: {}", e.key, e.message)
    }

    #[test]
    fn s3_from_yaml_with_defaults() {
        let s = checked(
            "s3: {bucket: mirror, access_key_id_env: AWS_ID, secret_access_key_env: AWS_SECRET}",
        )
        .unwrap();
        assert_eq!(s.lifetime, Duration::from_secs(900));
        assert_eq!(
            s.store,
            SignedStore::S3(S3Signing {
                bucket: "mirror".into(),
                region: "us-east-1".into(),
                endpoint: None,
                keys: Some(S3Keys {
                    access_key_id: "AKIDEXAMPLE".into(),
                    secret_access_key: "wJalrXUtnFEMI-top-secret".into(),
                    session_token: None,
                }),
            })
        );
    }

    #[test]
    fn s3_with_endpoint_token_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "from-a-file\n").unwrap();
        let yaml = format!(
            "s3:\n  bucket: mirror\n  region: eu-west-1\n  endpoint: 'http://127.0.0.1:9000/'\n  \
             access_key_id_env: AWS_ID\n  secret_access_key_file: {}\n  session_token_env: AWS_TOKEN\n  \
             lifetime: 1h\n",
            secret.display()
        );
        let s = checked(&yaml).unwrap();
        assert_eq!(s.lifetime, Duration::from_secs(3600));
        let SignedStore::S3(s3) = s.store else {
            panic!("{s:?}")
        };
        assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        let keys = s3.keys.unwrap();
        assert_eq!(keys.secret_access_key, "from-a-file");
        assert_eq!(keys.session_token.as_deref(), Some("session-token-secret"));
        assert_eq!(s3.region, "eu-west-1");
    }

    #[test]
    fn gcs_and_azure_from_yaml() {
        let s = checked("gcs: {bucket: mirror_1, service_account_key_env: GCS_KEY, lifetime: 7d}")
            .unwrap();
        assert_eq!(s.lifetime, MAX_LIFETIME);
        assert!(matches!(&s.store, SignedStore::Gcs(g) if g.bucket == "mirror_1"));

        let s = checked(
            "azure: {account: devstoreaccount1, container: blobs, access_key_env: AZ_KEY, \
             endpoint: 'http://127.0.0.1:10000/devstoreaccount1'}",
        )
        .unwrap();
        assert_eq!(
            s.store,
            SignedStore::Azure(AzureSigning {
                account: "devstoreaccount1".into(),
                container: "blobs".into(),
                access_key: Some(AZURE_KEY.into()),
                endpoint: Some("http://127.0.0.1:10000/devstoreaccount1".into()),
            })
        );
    }

    #[test]
    fn the_map_form_is_read_inside_another_struct_and_written_back() {
        #[derive(Debug, Deserialize, Serialize)]
        #[serde(deny_unknown_fields)]
        struct Mirror {
            url: String,
            #[serde(default)]
            signing: Option<SigningConfig>,
        }
        let yaml = "url: https://m\nsigning:\n  gcs:\n    bucket: b\n    service_account_key_env: GCS_KEY\n";
        let mirror: Mirror = serde_yaml::from_str(yaml).unwrap();
        let signing = mirror.signing.as_ref().unwrap();
        assert!(matches!(signing, SigningConfig::Gcs(g) if g.bucket == "b"));
        let written = serde_yaml::to_string(&mirror).unwrap();
        assert!(written.contains("signing:\n  gcs:\n"), "{written}");
        let again: Mirror = serde_yaml::from_str(&written).unwrap();
        assert_eq!(again.signing.as_ref(), Some(signing));
        let none: Mirror = serde_yaml::from_str("url: https://m").unwrap();
        assert!(none.signing.is_none());
    }

    #[test]
    fn secrets_in_the_yaml_itself_are_refused() {
        for yaml in [
            "s3: {bucket: b, access_key_id: AKID, secret_access_key: s}",
            "gcs: {bucket: b, service_account_key: '{}'}",
            "azure: {account: a, container: c, access_key: k}",
            "s3: {bucket: b, lifetime: 1m, extra: 1}",
            "minio: {bucket: b}",
        ] {
            let msg = parse(yaml).unwrap_err();
            assert!(msg.contains("unknown "), "{yaml} -> {msg}");
        }
    }

    #[test]
    fn a_missing_environment_variable_is_named() {
        let msg =
            error("s3: {bucket: b, access_key_id_env: AWS_ID, secret_access_key_env: NOPE_SECRET}");
        assert_eq!(
            msg,
            "s3.secret_access_key_env: environment variable NOPE_SECRET is not set"
        );
        let msg = error("azure: {account: a, container: c, access_key_env: NOPE_AZ}");
        assert_eq!(
            msg,
            "azure.access_key_env: environment variable NOPE_AZ is not set"
        );
        let msg = error("gcs: {bucket: b, service_account_key_env: EMPTY}");
        assert_eq!(
            msg,
            "gcs.service_account_key_env: is empty (environment variable EMPTY)"
        );
    }

    /// Issue 24, defect 9: no keys, the workload's identity instead; never both.
    #[test]
    fn workload_identity_takes_no_keys() {
        for yaml in [
            "s3: {bucket: b, credentials: workload_identity}",
            "gcs: {bucket: b, credentials: workload_identity}",
            "azure: {account: a, container: c, credentials: workload_identity}",
        ] {
            let signing = checked(yaml).unwrap();
            let keyless = match &signing.store {
                SignedStore::S3(s) => s.keys.is_none(),
                SignedStore::Gcs(g) => g.service_account_key.is_none(),
                SignedStore::Azure(a) => a.access_key.is_none(),
            };
            assert!(keyless, "{yaml}");
        }
        for (yaml, message) in [
            (
                "s3: {bucket: b, credentials: workload_identity, secret_access_key_file: /s}",
                "s3.secret_access_key_file: cannot be combined with credentials: workload_identity",
            ),
            (
                "gcs: {bucket: b, credentials: workload_identity, service_account_key_env: K}",
                "gcs.service_account_key_env: cannot be combined",
            ),
            (
                "azure: {account: a, container: c, credentials: workload_identity, access_key_env: K}",
                "azure.access_key_env: cannot be combined",
            ),
        ] {
            let e = match checked(yaml) {
                Err(e) => format!("{}: {}", e.key, e.message),
                Ok(s) => panic!("{yaml}: {s:?}"),
            };
            assert!(e.contains(message), "{yaml}: {e}");
        }
    }

    #[test]
    fn a_missing_file_is_named() {
        let msg =
            error("gcs: {bucket: b, service_account_key_file: /nonexistent/archeio/key.json}");
        assert!(
            msg.starts_with(
                "gcs.service_account_key_file: cannot read /nonexistent/archeio/key.json: "
            ),
            "{msg}"
        );
        let msg = error("s3: {bucket: b, access_key_id_file: /nonexistent/id, secret_access_key_env: AWS_SECRET}");
        assert!(
            msg.starts_with("s3.access_key_id_file: cannot read /nonexistent/id"),
            "{msg}"
        );
    }

    #[test]
    fn each_secret_needs_exactly_one_source() {
        assert_eq!(
            error("s3: {bucket: b, secret_access_key_env: AWS_SECRET}"),
            "s3.access_key_id_env: expected exactly one of access_key_id_env and access_key_id_file"
        );
        assert_eq!(
            error("azure: {account: a, container: c, access_key_env: AZ_KEY, access_key_file: /k}"),
            "azure.access_key_env: expected exactly one of access_key_env and access_key_file"
        );
    }

    #[test]
    fn bad_values_name_the_key_and_never_the_secret() {
        let cases = [
            ("s3: {access_key_id_env: AWS_ID, secret_access_key_env: AWS_SECRET}", "s3.bucket"),
            ("s3: {bucket: My_Bucket, access_key_id_env: AWS_ID, secret_access_key_env: AWS_SECRET}", "s3.bucket"),
            ("s3: {bucket: b, region: '', access_key_id_env: AWS_ID, secret_access_key_env: AWS_SECRET}", "s3.region"),
            ("s3: {bucket: b, endpoint: 'ftp://x', access_key_id_env: AWS_ID, secret_access_key_env: AWS_SECRET}", "s3.endpoint"),
            ("s3: {bucket: b, endpoint: 'http://u:p@x', access_key_id_env: AWS_ID, secret_access_key_env: AWS_SECRET}", "s3.endpoint"),
            ("gcs: {bucket: b, service_account_key_env: NOT_JSON}", "gcs.service_account_key_env"),
            ("gcs: {bucket: b, service_account_key_env: AWS_SECRET}", "gcs.service_account_key_env"),
            ("azure: {account: a, container: c, access_key_env: AWS_SECRET}", "azure.access_key_env"),
            ("azure: {container: c, access_key_env: AZ_KEY}", "azure.account"),
            ("azure: {account: a, access_key_env: AZ_KEY}", "azure.container"),
            ("azure: {account: a, container: c, access_key_env: AZ_KEY, endpoint: nope}", "azure.endpoint"),
        ];
        for (yaml, key) in cases {
            let msg = error(yaml);
            assert!(msg.starts_with(&format!("{key}: ")), "{yaml} -> {msg}");
            for secret in [
                "top-secret",
                "gcs-secret",
                "session-token-secret",
                AZURE_KEY,
            ] {
                assert!(!msg.contains(secret), "{yaml} -> {msg}");
            }
        }
        let msg = error("gcs: {bucket: b, service_account_key_env: NOT_JSON}");
        assert!(msg.contains("environment variable NOT_JSON"), "{msg}");
    }

    #[test]
    fn lifetime_is_more_than_zero_and_at_most_seven_days() {
        let s3 = "s3: {bucket: b, access_key_id_env: AWS_ID, secret_access_key_env: AWS_SECRET, lifetime: ";
        assert_eq!(
            error(&format!("{s3}0s}}")),
            "s3.lifetime: must be longer than 0s"
        );
        assert!(
            error(&format!("{s3}7days 1s}}")).starts_with("s3.lifetime: must be at most 7 days")
        );
        assert_eq!(
            checked(&format!("{s3}1s}}")).unwrap().lifetime,
            Duration::from_secs(1)
        );
        assert_eq!(
            checked(&format!("{s3}168h}}")).unwrap().lifetime,
            MAX_LIFETIME
        );
        assert!(
            error("azure: {account: a, container: c, access_key_env: AZ_KEY, lifetime: 8d}")
                .starts_with("azure.lifetime: ")
        );
        assert!(parse("gcs: {bucket: b, lifetime: soon}").is_err());
    }

    #[test]
    fn debug_never_prints_a_secret() {
        let all = [
            "s3: {bucket: b, access_key_id_env: AWS_ID, secret_access_key_env: AWS_SECRET, session_token_env: AWS_TOKEN}",
            "gcs: {bucket: b, service_account_key_env: GCS_KEY}",
            "azure: {account: a, container: c, access_key_env: AZ_KEY}",
        ];
        for yaml in all {
            let signing = checked(yaml).unwrap();
            let printed = format!("{signing:?} {signing:#?}");
            for secret in [
                "AKIDEXAMPLE",
                "top-secret",
                "session-token-secret",
                "gcs-secret",
                AZURE_KEY,
            ] {
                assert!(!printed.contains(secret), "{printed}");
            }
            assert!(printed.contains("<redacted>"), "{printed}");
        }
    }
}
