//! The upstream endpoints: which are healthy (active checks on an interval, plus connection
//! failures seen by the proxy), where they resolve to, and the Pingora peer for each.
//!
//! Endpoints are kept in configured order; requests go to the first healthy one. An endpoint
//! that fails is not skipped forever: when none is healthy, they are all tried in order.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use log::{info, warn};
use tokio::sync::watch;

use crate::config::{Endpoint, HealthCheck, UpstreamSettings};

/// One endpoint and what is known about it.
struct EndpointState {
    endpoint: Endpoint,
    /// `host:port`, the metrics label.
    label: String,
    /// Last resolved address; `None` until the host name resolved once.
    addr: RwLock<Option<SocketAddr>>,
    healthy: AtomicBool,
    /// Consecutive failed checks (or connection failures) and consecutive good checks.
    failures: AtomicU32,
    successes: AtomicU32,
}

/// Told `(label, healthy)` for each endpoint at start and whenever its health flips.
pub type OnHealth = Box<dyn Fn(&str, bool) + Send + Sync>;

/// The upstream endpoints.
pub struct Upstreams {
    endpoints: Vec<EndpointState>,
    health: HealthCheck,
    /// For the health checks; trusts the same CA as the proxy path.
    client: reqwest::Client,
    /// For token services; trusts the same CA.
    token_client: reqwest::Client,
    /// The configured CA, for clients made later.
    roots: Option<Vec<reqwest::Certificate>>,
    connect_timeout: Duration,
    on_health: OnHealth,
    /// Pass-through: requests are proxied to the endpoints, which are then checked.
    passthrough: bool,
}

impl Upstreams {
    /// The endpoints of `settings`, each assumed healthy until checked, for `passthrough`
    /// or redirects. Host names are resolved on first use and again before each health
    /// check.
    pub fn new(
        settings: &UpstreamSettings,
        passthrough: bool,
        on_health: OnHealth,
    ) -> Result<Upstreams, String> {
        // Parsed once for every client.
        let roots = match &settings.ca_certs {
            Some(certs) => Some(
                certs
                    .iter()
                    .map(|der| reqwest::Certificate::from_der(der))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("upstream.ca_file: {e}"))?,
            ),
            None => None,
        };
        let client_with = |timeout: Duration| -> Result<reqwest::Client, String> {
            let mut builder = reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(settings.timeouts.connect)
                .user_agent(concat!("archeio/", env!("CARGO_PKG_VERSION")));
            if let Some(roots) = &roots {
                builder = builder.tls_built_in_root_certs(false);
                for cert in roots {
                    builder = builder.add_root_certificate(cert.clone());
                }
            }
            builder
                .build()
                .map_err(|e| format!("cannot build an HTTP client for the upstream: {e}"))
        };
        let client = client_with(settings.health_check.timeout)?;
        let token_client = client_with(settings.timeouts.read)?;
        let endpoints = settings
            .endpoints
            .iter()
            .map(|e| {
                let literal = e.host.parse().ok().map(|ip| SocketAddr::new(ip, e.port));
                EndpointState {
                    label: e.authority(),
                    endpoint: e.clone(),
                    addr: RwLock::new(literal),
                    healthy: AtomicBool::new(true),
                    failures: AtomicU32::new(0),
                    successes: AtomicU32::new(0),
                }
            })
            .collect::<Vec<_>>();
        for e in &endpoints {
            on_health(&e.label, true);
        }
        Ok(Upstreams {
            endpoints,
            health: settings.health_check,
            client,
            token_client,
            roots,
            connect_timeout: settings.timeouts.connect,
            on_health,
            passthrough,
        })
    }

    /// An HTTP client for blob `HEAD`s and relayed token requests: `timeout` for
    /// each, redirects not followed, trusting the configured CA.
    pub fn no_redirect_client(&self, timeout: Duration) -> Result<reqwest::Client, String> {
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(self.connect_timeout.min(timeout))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("archeio/", env!("CARGO_PKG_VERSION")));
        if let Some(roots) = &self.roots {
            builder = builder.tls_built_in_root_certs(false);
            for cert in roots {
                builder = builder.add_root_certificate(cert.clone());
            }
        }
        builder
            .build()
            .map_err(|e| format!("cannot build an HTTP client for the upstream: {e}"))
    }

    /// An HTTP client for the upstream's token service, trusting the configured CA.
    pub fn token_client(&self) -> reqwest::Client {
        self.token_client.clone()
    }

    /// Number of endpoints.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Always false: settings require one endpoint.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// The endpoint at `i`.
    pub fn endpoint(&self, i: usize) -> &Endpoint {
        &self.endpoints[i].endpoint
    }

    /// `host:port` of the endpoint at `i`, the metrics label.
    pub fn label(&self, i: usize) -> &str {
        &self.endpoints[i].label
    }

    /// Whether the endpoint at `i` is currently considered healthy.
    pub fn is_healthy(&self, i: usize) -> bool {
        self.endpoints[i].healthy.load(Ordering::Relaxed)
    }

    /// Whether any endpoint is healthy.
    pub fn any_healthy(&self) -> bool {
        (0..self.endpoints.len()).any(|i| self.is_healthy(i))
    }

    /// The first healthy endpoint, or the first one when none is.
    pub fn preferred(&self) -> usize {
        (0..self.endpoints.len())
            .find(|&i| self.is_healthy(i))
            .unwrap_or(0)
    }

    /// The endpoint to try next, given the bit set of endpoints already tried: the first
    /// healthy untried one, else the first untried one.
    pub fn next(&self, tried: u64) -> Option<usize> {
        let untried = |i: &usize| *i >= 64 || tried & (1 << i) == 0;
        (0..self.endpoints.len())
            .filter(untried)
            .find(|&i| self.is_healthy(i))
            .or_else(|| (0..self.endpoints.len()).find(untried))
    }

    /// The address of endpoint `i`: its literal, the last resolved one, or a lookup now;
    /// `None` when the host does not resolve.
    pub async fn address(&self, i: usize) -> Option<SocketAddr> {
        let known = *self.endpoints[i]
            .addr
            .read()
            .expect("lock is never poisoned");
        match known {
            Some(addr) => Some(addr),
            None => self.resolve(i).await,
        }
    }

    /// The proxy could not connect to endpoint `i`: count it like a failed check, so a dead
    /// endpoint stops being tried first before the next check round.
    pub fn connect_failed(&self, i: usize) {
        self.record(i, false, "connection failed");
    }

    /// Each endpoint's metrics label.
    pub fn labels(&self) -> impl Iterator<Item = &str> {
        self.endpoints.iter().map(|e| e.label.as_str())
    }

    /// Runs [`Upstreams::check_all`] every `health_check.interval` until `shutdown` changes.
    /// In redirect mode with one endpoint there is nothing to choose: no checks are sent.
    pub async fn run_checks(&self, mut shutdown: watch::Receiver<bool>) {
        if !self.passthrough && self.endpoints.len() < 2 {
            let _ = shutdown.changed().await;
            return;
        }
        let mut tick = tokio::time::interval(self.health.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => self.check_all().await,
            }
        }
    }

    /// One round of checks: resolve each host again, then `GET /v2/` on each endpoint.
    pub async fn check_all(&self) {
        for i in 0..self.endpoints.len() {
            let e = &self.endpoints[i].endpoint;
            self.resolve(i).await;
            let (good, why) = match self.client.get(format!("{}/v2/", e.url)).send().await {
                Ok(resp) if resp.status().as_u16() < 500 => (true, String::new()),
                Ok(resp) => (false, format!("GET /v2/ answered {}", resp.status())),
                Err(err) => (false, format!("GET /v2/ failed: {err}")),
            };
            self.record(i, good, &why);
        }
    }

    /// Looks the host of endpoint `i` up again and keeps the first address.
    async fn resolve(&self, i: usize) -> Option<SocketAddr> {
        let state = &self.endpoints[i];
        let e = &state.endpoint;
        if e.host.parse::<std::net::IpAddr>().is_ok() {
            return *state.addr.read().expect("lock is never poisoned");
        }
        match tokio::net::lookup_host((e.host.as_str(), e.port)).await {
            Ok(mut addrs) => {
                let addr = addrs.next();
                if addr.is_some() {
                    *state.addr.write().expect("lock is never poisoned") = addr;
                }
                addr
            }
            Err(err) => {
                warn!("upstream {}: cannot resolve the host: {err}", e.url);
                None
            }
        }
    }

    /// Counts a check result and flips the state after enough in a row.
    fn record(&self, i: usize, good: bool, why: &str) {
        let state = &self.endpoints[i];
        let was = state.healthy.load(Ordering::Relaxed);
        if good {
            state.failures.store(0, Ordering::Relaxed);
            let n = state.successes.fetch_add(1, Ordering::Relaxed) + 1;
            if !was && n >= self.health.healthy_after {
                state.healthy.store(true, Ordering::Relaxed);
                info!("upstream {} is healthy again", state.endpoint.url);
                (self.on_health)(&state.label, true);
            }
        } else {
            state.successes.store(0, Ordering::Relaxed);
            let n = state.failures.fetch_add(1, Ordering::Relaxed) + 1;
            if was && n >= self.health.unhealthy_after {
                state.healthy.store(false, Ordering::Relaxed);
                warn!(
                    "upstream {} marked unhealthy after {n} failures: {why}",
                    state.endpoint.url
                );
                (self.on_health)(&state.label, false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::config::file::ArcheioConfig;

    fn upstreams(n: usize) -> Upstreams {
        upstreams_reporting(n, Box::new(|_, _| {}))
    }

    fn upstreams_reporting(n: usize, on_health: OnHealth) -> Upstreams {
        let mut cfg = ArcheioConfig::default();
        cfg.upstream.endpoints = (0..n)
            .map(|i| format!("http://127.0.0.{}:1", i + 1))
            .collect();
        cfg.upstream.health_check.unhealthy_after = 1;
        let s = cfg.check("test", |_| None).unwrap();
        Upstreams::new(&s.upstream, true, on_health).unwrap()
    }

    #[test]
    fn order_is_first_healthy_then_first_untried() {
        let u = upstreams(3);
        assert_eq!(u.preferred(), 0);
        assert_eq!(u.next(0), Some(0));
        assert_eq!(u.next(0b001), Some(1));
        assert_eq!(u.next(0b011), Some(2));
        assert_eq!(u.next(0b111), None);
        u.connect_failed(0);
        assert!(!u.is_healthy(0));
        assert_eq!(u.preferred(), 1);
        assert_eq!(u.next(0), Some(1));
        u.connect_failed(1);
        u.connect_failed(2);
        // None healthy: still tried, in order.
        assert_eq!(u.preferred(), 0);
        assert_eq!(u.next(0), Some(0));
        assert_eq!(u.next(0b001), Some(1));
        u.record(2, true, "");
        assert_eq!(u.preferred(), 2);
    }

    #[test]
    fn health_changes_are_reported_once_each() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let u = upstreams_reporting(
            2,
            Box::new(move |label, healthy| log.lock().unwrap().push((label.to_string(), healthy))),
        );
        u.connect_failed(1);
        u.connect_failed(1);
        u.record(1, true, "");
        assert_eq!(
            *seen.lock().unwrap(),
            [
                ("127.0.0.1:1".to_string(), true),
                ("127.0.0.2:1".to_string(), true),
                ("127.0.0.2:1".to_string(), false),
                ("127.0.0.2:1".to_string(), true),
            ]
        );
    }
}
