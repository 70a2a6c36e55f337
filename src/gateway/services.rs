//! The background work that runs beside the listeners, as Pingora services: upstream health
//! checks, mirror health checks, range refreshes, secret files, TLS certificates and the
//! configuration reload.
//! The work itself lives in its own module; this only hands it Pingora's shutdown signal
//! (and the mirror checks the current generation's mirrors).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use super::generation::ConfigReload;
use super::tls::Certificates;
use super::LiveGateway;
use crate::geo_refresh::GeoRefresher;
use crate::hangup::on_interval_and_hangup;
use crate::live::Live;
use crate::range_refresh::RangeRefresher;
use crate::upstream::Upstreams;

/// Active health checks of the current upstream endpoints.
pub struct HealthChecks(pub Arc<Live<Upstreams>>);

#[async_trait]
impl BackgroundService for HealthChecks {
    async fn start(&self, shutdown: ShutdownWatch) {
        let checks = |upstreams: Arc<Upstreams>, shutdown| async move {
            upstreams.run_checks(shutdown).await
        };
        self.0.follow(shutdown, checks).await;
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

/// How often secret files are looked at for changes: a few small files.
const SECRET_POLL: Duration = Duration::from_secs(2);

/// The secret files of the gateway in effect (private mirrors' credentials, the htpasswd
/// file) read again every 2 s and on `SIGHUP`: a rotated Kubernetes Secret is in use within
/// seconds.
pub struct SecretFiles(pub LiveGateway);

#[async_trait]
impl BackgroundService for SecretFiles {
    async fn start(&self, shutdown: ShutdownWatch) {
        let reload = |_| async { self.0.reload_secret_files() };
        on_interval_and_hangup(SECRET_POLL, shutdown, "secret files", reload).await;
    }
}

/// The current generation's health checks of the mirror hosts in use, each on its
/// interval; none while they are off (a reload may turn them on).
pub struct MirrorProbes(pub LiveGateway);

#[async_trait]
impl BackgroundService for MirrorProbes {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let gw = self.0.current.load_full();
            let wait = match gw.mirrors.probe_interval() {
                Some(interval) => {
                    let started = tokio::time::Instant::now();
                    gw.mirrors.probe().await;
                    interval.saturating_sub(started.elapsed())
                }
                None => Duration::from_secs(1),
            };
            drop(gw);
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// The configuration file read again on `SIGHUP`.
pub struct Reload(pub Arc<ConfigReload>);

#[async_trait]
impl BackgroundService for Reload {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.0.run(shutdown).await;
    }
}

/// The current range refresher's files and URLs read again on its interval and on
/// `SIGHUP`.
pub struct RangeRefresh(pub Arc<Live<RangeRefresher>>);

#[async_trait]
impl BackgroundService for RangeRefresh {
    async fn start(&self, shutdown: ShutdownWatch) {
        let refreshes =
            |refresher: Arc<RangeRefresher>, shutdown| async move { refresher.run(shutdown).await };
        self.0.follow(shutdown, refreshes).await;
    }
}

/// The current geo databases looked at on their interval and read again on `SIGHUP`.
pub struct GeoRefresh(pub Arc<Live<GeoRefresher>>);

#[async_trait]
impl BackgroundService for GeoRefresh {
    async fn start(&self, shutdown: ShutdownWatch) {
        let refreshes =
            |refresher: Arc<GeoRefresher>, shutdown| async move { refresher.run(shutdown).await };
        self.0.follow(shutdown, refreshes).await;
    }
}
