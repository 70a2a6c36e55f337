//! The background work that runs beside the listeners, as Pingora services: upstream health
//! checks, range refreshes and private mirrors' secrets. The work itself lives in its own module; this only hands it
//! Pingora's shutdown signal.

use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use super::tls::Certificates;
use crate::auth::local::LocalAuth;
use crate::mirror::Mirrors;
use crate::range_refresh::RangeRefresher;
use crate::upstream::Upstreams;

/// Active health checks of the upstream endpoints.
pub struct HealthChecks(pub Arc<Upstreams>);

#[async_trait]
impl BackgroundService for HealthChecks {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.0.run_checks(shutdown).await;
    }
}

/// The TLS listeners' certificate files read again when they change and on `SIGHUP`.
pub struct TlsCertificates(pub Arc<Certificates>);

#[async_trait]
impl BackgroundService for TlsCertificates {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.0.watch(shutdown).await;
    }
}

/// The htpasswd file of `client_auth: local` read again when it changes and on `SIGHUP`.
pub struct HtpasswdWatch(pub Arc<LocalAuth>);

#[async_trait]
impl BackgroundService for HtpasswdWatch {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.0.watch(shutdown).await;
    }
}

/// Private mirrors' secret files read again on the interval and on `SIGHUP`.
pub struct MirrorSecrets(pub Arc<Mirrors>);

#[async_trait]
impl BackgroundService for MirrorSecrets {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.0.watch_secrets(shutdown).await;
    }
}

/// Range files and URLs read again on the interval and on `SIGHUP`.
pub struct RangeRefresh(pub Arc<RangeRefresher>);

#[async_trait]
impl BackgroundService for RangeRefresh {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.0.run(shutdown).await;
    }
}
