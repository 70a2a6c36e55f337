//! One generation of the gateway: everything built from a checked configuration that a
//! request reads ([`build`]), and `SIGHUP` or a change of the file replacing it whole
//! ([`ConfigReload`]): the file is read and checked as `-t` checks it, built, and swapped in
//! atomically; requests in flight
//! finish on the generation they started with. The range refresher and the upstream
//! endpoints outlive generations and are replaced only when their settings change. What a
//! running process cannot take (listener addresses, Pingora's own keys) is refused with the
//! key named.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use log::{error, info, warn};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::lifecycle::Lifecycle;
use super::peer::Peers;
use super::proxy_protocol::ProxyProtocol;
use super::server_conf::ServerSettings;
use super::slow_clients::ConnectionRules;
use super::tls::Certificates;
use super::{Clients, Gateway, LiveGateway, LivePlaces, Operations, UpstreamAccess};
use crate::auth::local::LocalAuth;
use crate::auth::relay::TokenRelay;
use crate::auth::ClientAuthority;
use crate::config::file::ArcheioConfig;
use crate::config::{ClientAuth, Settings};
use crate::geo_refresh::GeoRefresher;
use crate::hangup::{on_interval_and_hangup, Wake};
use crate::live::Live;
use crate::logging;
use crate::metrics;
use crate::mirror::{MirrorCheck, Mirrors};
use crate::range_refresh::RangeRefresher;
use crate::rate_limit::RateLimiter;
use crate::upstream::auth::UpstreamAuth;
use crate::upstream::blob_access::BlobAccess;
use crate::upstream::manifest_cache::ManifestCache;
use crate::upstream::Upstreams;

/// What outlives a generation: the range refresher and the upstream endpoints (each
/// replaced only when a reload changes its settings, so that its state, the last good
/// documents, endpoint health and connections, carries over), readiness and the requests
/// in flight, and the TLS listeners' certificates.
#[derive(Clone)]
pub struct Shared {
    pub ranges: Arc<Live<RangeRefresher>>,
    pub geo: Arc<Live<GeoRefresher>>,
    pub upstreams: Arc<Live<Upstreams>>,
    pub lifecycle: Arc<Lifecycle>,
    /// With TLS listeners only.
    pub certificates: Option<Arc<Certificates>>,
}

/// A gateway for `settings`, over `ranges` and `upstreams` (current, or about to be); an
/// error starts with the key (`archeio.<key>: ...`).
pub fn build(
    settings: &Settings,
    ranges: &RangeRefresher,
    geo: &GeoRefresher,
    upstreams: &Arc<Upstreams>,
    lifecycle: &Arc<Lifecycle>,
) -> Result<Gateway, String> {
    let prices = settings.offload.prices.iter();
    metrics::set_egress_prices(prices.map(|p| (p.source, p.mirror.as_str(), p.per_gb)));
    let check = MirrorCheck::new(&settings.blob_check)
        .map_err(|e| format!("cannot build the mirror check HTTP client: {e}"))?;
    let mirrors = Mirrors::new(check, &settings.routes.policy, &settings.signed_mirrors)
        .map_err(|e| format!("archeio.{e}"))?;
    let auth = UpstreamAuth::for_upstream(&settings.upstream, upstreams.token_client());
    let (client_auth, held_ttl) = match &settings.client_auth {
        ClientAuth::Anonymous => (
            ClientAuthority::Anonymous,
            settings.blob_check.repository_ttl,
        ),
        ClientAuth::Relay {
            public_url,
            authorization_ttl,
        } => {
            let client = upstreams.no_redirect_client(settings.upstream.timeouts.read)?;
            let tokens = TokenRelay::new(client, &settings.routes.upstream_name_prefix);
            let token_url = format!("{public_url}/token");
            (
                ClientAuthority::Relay { tokens, token_url },
                *authorization_ttl,
            )
        }
        ClientAuth::Local {
            htpasswd_file,
            users,
            token_lifetime,
            token_key_file,
            ..
        } => {
            let auth = LocalAuth::new(
                htpasswd_file.clone(),
                users,
                *token_lifetime,
                token_key_file.as_deref(),
            )
            .map_err(|e| format!("archeio.{e}"))?;
            (
                ClientAuthority::Local(Arc::new(auth)),
                settings.blob_check.repository_ttl,
            )
        }
    };
    let blobs = BlobAccess::new(
        &settings.blob_check,
        held_ttl,
        upstreams.no_redirect_client(settings.blob_check.timeout)?,
    );
    let t = &settings.client_timeouts;
    let connections = ConnectionRules {
        // A new connection's first request waits as long as a kept-alive one's next.
        first_byte: t.idle,
        header: t.header,
        write: t.write,
        proxy_protocol: ProxyProtocol::new(
            settings.proxy_protocol.clone(),
            settings.client_address.clone(),
        ),
    };
    Ok(Gateway::new(
        Clients {
            address: settings.client_address.clone(),
            timeouts: settings.client_timeouts,
            auth: client_auth,
            connections: Arc::new(connections),
        },
        settings.routes.clone(),
        LivePlaces {
            ranges: ranges.live(),
            geo: geo.live(),
        },
        Arc::new(mirrors),
        UpstreamAccess {
            endpoints: upstreams.clone(),
            peers: Peers::new(&settings.upstream),
            auth,
            blobs,
            manifests: ManifestCache::new(&settings.manifest_cache),
            total_timeout: settings.upstream.timeouts.total,
            size_blobs: settings.offload.upstream_head,
        },
        Operations {
            lifecycle: lifecycle.clone(),
            rate_limiter: settings.rate_limit.as_ref().map(RateLimiter::new),
        },
    ))
}

/// A short hash of the configuration in effect, so that a fleet's drift shows.
pub fn config_hash(cfg: &ArcheioConfig) -> String {
    let yaml = serde_yaml::to_string(cfg).unwrap_or_default();
    Sha256::digest(yaml.as_bytes())
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// How often the configuration file is looked at for changes.
const FILE_POLL: Duration = Duration::from_secs(5);

/// `SIGHUP` or a changed file: read the configuration again and replace the gateway's
/// generation.
pub struct ConfigReload {
    pub live: LiveGateway,
    pub shared: Shared,
    /// The file, as `-c` or `ARCHEIO_CONFIG` named it; `None`: the built-in defaults.
    pub path: Option<PathBuf>,
    /// How errors name the file.
    pub source: String,
    /// The configuration in effect.
    pub running: Mutex<Running>,
    /// The file's bytes when last read, to notice a change.
    pub seen: Mutex<Vec<u8>>,
}

/// The configuration in effect: Pingora's keys (read at start only) and the `archeio:`
/// section.
pub struct Running {
    pub server: ServerSettings,
    pub archeio: ArcheioConfig,
}

impl ConfigReload {
    /// Reloads on every `SIGHUP`, and when the file's bytes change (a Kubernetes ConfigMap
    /// update reaches the mounted file without a signal), looked at every
    /// [`FILE_POLL`], until `shutdown` changes.
    pub async fn run(&self, shutdown: watch::Receiver<bool>) {
        let reload = |wake| async move {
            match wake {
                Wake::Hangup => self.reload(),
                Wake::Interval if self.file_changed() => {
                    info!("{} changed: reloading it", self.source);
                    self.reload();
                }
                Wake::Interval => {}
            }
        };
        on_interval_and_hangup(FILE_POLL, shutdown, "the configuration", reload).await;
    }

    /// Whether the file's bytes differ from those last read (a file that cannot be read is
    /// left to the next reload to report).
    fn file_changed(&self) -> bool {
        let Some(path) = &self.path else {
            return false;
        };
        let Ok(bytes) = std::fs::read(path) else {
            return false;
        };
        *self.seen.lock().expect("lock is never poisoned") != bytes
    }

    /// One reload: checked, built and swapped in, or nothing changed and the reason logged
    /// (with the message `-t` prints for a file that fails its check).
    pub fn reload(&self) {
        match self.next() {
            Ok(hash) => {
                metrics::record_config_reload(true, Some(&hash));
                info!(
                    "SIGHUP: {} reloaded, configuration {hash} in effect",
                    self.source
                );
            }
            Err(why) => {
                metrics::record_config_reload(false, None);
                error!("SIGHUP: configuration not reloaded, the one before stays: {why}");
            }
        }
    }

    fn next(&self) -> Result<String, String> {
        let text = match &self.path {
            Some(path) => {
                let bytes = std::fs::read(path)
                    .map_err(|e| format!("{}: cannot read the file: {e}", self.source))?;
                // Tried once per version of the file: a broken one is reported once.
                *self.seen.lock().expect("lock is never poisoned") = bytes.clone();
                Some(String::from_utf8_lossy(&bytes).into_owned())
            }
            None => None,
        };
        let server = ServerSettings::load(text.as_deref(), &self.source)
            .map_err(|e| format!("configuration error: {e}"))?;
        let (cfg, settings) =
            Settings::load_effective(self.path.as_deref(), |k| std::env::var(k).ok())
                .map_err(|e| format!("configuration error: {e}"))?;
        let mut running = self.running.lock().expect("lock is never poisoned");
        let needs_restart = |key: &str| {
            format!(
                "{}: {key} changed, which needs a restart (or an upgrade with -u)",
                self.source
            )
        };
        if let Some(key) = running.server.changed_key(&server) {
            return Err(needs_restart(&key));
        }
        if let Some(key) = running.archeio.needs_restart_for(&cfg) {
            return Err(needs_restart(&format!("archeio.{key}")));
        }
        // Everything that can fail comes before the first swap.
        let current_ranges = self.shared.ranges.load();
        let ranges = if *current_ranges.settings() == settings.ranges {
            None
        } else {
            let refresher = RangeRefresher::start_up_after(&settings.ranges, Some(&current_ranges))
                .map_err(|e| format!("{}: archeio.ranges: {e}", self.source))?;
            Some(Arc::new(refresher))
        };
        let current_geo = self.shared.geo.load();
        let geo = if *current_geo.settings() == settings.geo {
            None
        } else {
            let refresher = GeoRefresher::start_up(&settings.geo)
                .map_err(|e| format!("{}: archeio.geo: {e}", self.source))?;
            Some(Arc::new(refresher))
        };
        let upstreams = if running.archeio.same_upstream_reach(&cfg) {
            None
        } else {
            let on_health = Box::new(metrics::set_upstream_healthy);
            let upstreams = Upstreams::new(&settings.upstream, settings.passthrough(), on_health)
                .map_err(|e| format!("{}: {e}", self.source))?;
            Some(Arc::new(upstreams))
        };
        let gateway = build(
            &settings,
            ranges.as_deref().unwrap_or(&current_ranges),
            geo.as_deref().unwrap_or(&current_geo),
            upstreams.as_ref().unwrap_or(&self.shared.upstreams.load()),
            &self.shared.lifecycle,
        )
        .map_err(|e| format!("{}: {e}", self.source))?;
        if let Some(certificates) = &self.shared.certificates {
            certificates
                .replace(&settings.tls.certificates)
                .map_err(|e| format!("{}: archeio.{e}", self.source))?;
        }
        if let Some(ranges) = ranges {
            let (v4, v6) = ranges.live().load().prefix_counts();
            metrics::set_prefix_counts(v4, v6);
            self.shared.ranges.replace(ranges);
        }
        if let Some(geo) = geo {
            self.shared.geo.replace(geo);
        }
        if let Some(upstreams) = upstreams {
            let old = self.shared.upstreams.load();
            for gone in old
                .labels()
                .filter(|l| !upstreams.labels().any(|n| n == *l))
            {
                metrics::forget_upstream(gone);
            }
            self.shared.upstreams.replace(upstreams);
        }
        logging::apply(settings.log);
        self.live.replace(gateway);
        for warning in &settings.warnings {
            warn!("{}: {warning}", self.source);
        }
        let hash = config_hash(&cfg);
        *running = Running {
            server,
            archeio: cfg,
        };
        Ok(hash)
    }
}
