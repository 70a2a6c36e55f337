//! AWS credentials from the pod's or task's identity, for object stores built without
//! static keys: a web identity (IRSA: `AWS_WEB_IDENTITY_TOKEN_FILE` with `AWS_ROLE_ARN`) or
//! container credentials (EKS Pod Identity and ECS: `AWS_CONTAINER_CREDENTIALS_FULL_URI`
//! with `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`, or `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`).
//! object_store refreshes them before they expire.
//!
//! object_store's `AmazonS3Builder::new` reads the web identity variables itself, but not
//! those of container credentials; its `from_env` does, with every other `AWS_*` variable
//! (`AWS_ENDPOINT` too, which would override the configuration), so they are passed on one
//! by one. The instance metadata service is never asked from here: callers that allow it
//! say so themselves.

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};

/// What [`with_identity`] looks for, for errors.
pub const LOOKED_FOR: &str = "a web identity (AWS_WEB_IDENTITY_TOKEN_FILE with AWS_ROLE_ARN) \
     and container credentials (AWS_CONTAINER_CREDENTIALS_RELATIVE_URI, or \
     AWS_CONTAINER_CREDENTIALS_FULL_URI with AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE)";

/// A variable's value; unset or empty: none.
fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// `b` set up to take its credentials from the environment's identity, and whether the
/// environment offers one (`b` unchanged when not).
pub fn with_identity(b: AmazonS3Builder) -> (AmazonS3Builder, bool) {
    if var("AWS_WEB_IDENTITY_TOKEN_FILE").is_some() && var("AWS_ROLE_ARN").is_some() {
        return (b, true);
    }
    if let Some(uri) = var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") {
        let b = b.with_config(AmazonS3ConfigKey::ContainerCredentialsRelativeUri, uri);
        return (b, true);
    }
    if let (Some(uri), Some(file)) = (
        var("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
        var("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"),
    ) {
        let b = b
            .with_config(AmazonS3ConfigKey::ContainerCredentialsFullUri, uri)
            .with_config(AmazonS3ConfigKey::ContainerAuthorizationTokenFile, file);
        return (b, true);
    }
    (b, false)
}
