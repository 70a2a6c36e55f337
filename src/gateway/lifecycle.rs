//! The process around the requests: readiness, the signals, and the drain on shutdown.
//!
//! Kubernetes (and any load balancer with health checks) takes a pod out of rotation only
//! after its readiness probe fails, and keeps sending new connections until then. So on
//! `SIGTERM` the gateway turns `/readyz` to `503` at once and keeps both listeners serving
//! for the drain time (`grace_period_seconds`); only then does Pingora stop accepting, and
//! the requests still in flight get up to `graceful_shutdown_timeout_seconds` to finish.
//! The process exits as soon as none is left. A second `SIGTERM` or `SIGINT` ends it at once.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use log::{error, info, warn};
use pingora_core::server::{ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora_core::services::background::BackgroundService;
use tokio::signal::unix::{signal, SignalKind};

use crate::live::Live;
use crate::metrics;
use crate::range_refresh::RangeRefresher;

/// How long the listeners may take to accept their first connection after start-up.
const LISTEN_DEADLINE: Duration = Duration::from_secs(10);

/// What readiness is made of, shared by the admin listener, the signals and the requests.
pub struct Lifecycle {
    listening: AtomicBool,
    draining: AtomicBool,
    in_flight: Arc<AtomicUsize>,
    ranges: Arc<Live<RangeRefresher>>,
}

impl Lifecycle {
    /// The current `ranges` must have loaded a table. The upstream's health is no part of
    /// readiness: an outage of the upstream is every pod's, so taking them out of the load
    /// balancer would only stop what they can still serve (redirects, mirrors, cached and
    /// stale manifests); it is a metric and an alert instead.
    pub fn new(ranges: Arc<Live<RangeRefresher>>) -> Lifecycle {
        Lifecycle {
            listening: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            in_flight: Arc::new(AtomicUsize::new(0)),
            ranges,
        }
    }

    /// Why the gateway should not get traffic now, or `Ok` when it should. Also sets
    /// `archeio_ready`.
    pub fn readiness(&self) -> Result<(), &'static str> {
        let state = if self.draining.load(Ordering::Acquire) {
            Err("shutting down")
        } else if !self.listening.load(Ordering::Acquire) {
            Err("listeners not bound yet")
        } else if !self.ranges.load().loaded() {
            Err("cloud IP ranges not loaded")
        } else {
            Ok(())
        };
        metrics::set_ready(state.is_ok());
        state
    }

    /// Counts a request as in flight until the guard is dropped.
    pub fn request(&self) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.in_flight.clone())
    }
}

/// A request in flight; dropped when it ends, however it ends.
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Replaces Pingora's signal handling: `SIGTERM` drains first, `SIGQUIT` hands over only
/// to a new process that is waiting, `SIGINT` stops at once.
pub struct Signals {
    /// The shared state.
    pub lifecycle: Arc<Lifecycle>,
    /// Serving with readiness off after `SIGTERM`.
    pub drain: Duration,
    /// The socket a new process started with `-u` waits on.
    pub upgrade_sock: String,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut term), Ok(mut quit), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::quit()),
            signal(SignalKind::interrupt()),
        ) else {
            error!("cannot install the signal handlers: shutting down");
            return ShutdownSignal::FastShutdown;
        };
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => {
                    info!("SIGINT: exiting now");
                    return ShutdownSignal::FastShutdown;
                }
                _ = quit.recv() => {
                    if successor_waiting(&self.upgrade_sock) {
                        info!("SIGQUIT: handing the listening sockets to the new process on {}", self.upgrade_sock);
                        return ShutdownSignal::GracefulUpgrade;
                    }
                    warn!(
                        "SIGQUIT, but no new process is waiting on {} (start it with -u first): still serving",
                        self.upgrade_sock
                    );
                }
            }
        }
        self.lifecycle.draining.store(true, Ordering::Release);
        metrics::set_ready(false);
        info!(
            "SIGTERM: /readyz answers 503; serving for {}s more, then stopping",
            self.drain.as_secs()
        );
        let in_flight = self.lifecycle.in_flight.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            let left = in_flight.load(Ordering::Relaxed);
            warn!("second signal: exiting now, {left} requests in flight");
            std::process::exit(if left == 0 { 0 } else { 1 });
        });
        tokio::time::sleep(self.drain).await;
        let in_flight = self.lifecycle.in_flight.clone();
        tokio::spawn(exit_when_idle(in_flight));
        info!("drain over: no new connections; waiting for the requests in flight");
        ShutdownSignal::GracefulTerminate
    }
}

/// Pingora waits its whole grace period; there is no reason to once nothing is in flight.
async fn exit_when_idle(in_flight: Arc<AtomicUsize>) {
    // Let Pingora close the listeners and the requests already accepted take their guards.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut idle_polls = 0;
    loop {
        if in_flight.load(Ordering::Relaxed) == 0 {
            idle_polls += 1;
        } else {
            idle_polls = 0;
        }
        if idle_polls >= 3 {
            info!("no requests in flight: exiting");
            std::process::exit(0);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether a new process is listening on the upgrade socket, from the kernel's table of Unix
/// sockets (connecting to find out would take the place of the real hand-over).
fn successor_waiting(sock: &str) -> bool {
    const ACCEPTING: u32 = 0x0001_0000;
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return Path::new(sock).exists();
    };
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let flags = fields
            .get(3)
            .and_then(|f| u32::from_str_radix(f, 16).ok())
            .unwrap_or(0);
        fields.get(7) == Some(&sock) && flags & ACCEPTING != 0
    })
}

/// Confirms after start-up that every listener accepts connections, which makes the
/// gateway ready; a listener that never does ends the process (Pingora would leave the
/// others serving).
pub struct ListenCheck {
    /// The shared state.
    pub lifecycle: Arc<Lifecycle>,
    /// Each address with the key that lists it (`archeio.listen[0]`).
    pub addresses: Vec<(String, SocketAddr)>,
}

#[async_trait]
impl BackgroundService for ListenCheck {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let started = Instant::now();
        for (key, addr) in &self.addresses {
            let target = reachable(*addr);
            loop {
                let a = target;
                let ok = tokio::task::spawn_blocking(move || {
                    TcpStream::connect_timeout(&a, Duration::from_millis(500)).is_ok()
                })
                .await
                .unwrap_or(false);
                if ok {
                    break;
                }
                if started.elapsed() > LISTEN_DEADLINE {
                    error!(
                        "{key}: {addr} does not accept connections {}s after start-up: exiting",
                        LISTEN_DEADLINE.as_secs()
                    );
                    std::process::exit(1);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        self.lifecycle.listening.store(true, Ordering::Release);
        info!("all listeners accept connections");
    }
}

/// The address to connect to for a listener: a wildcard's own family's loopback.
pub fn reachable(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// Binds each address once before Pingora does, so that an address not on this host or a
/// port another process holds is one clear error naming the key, before anything starts.
/// `dual_stack` says how a `[::]` address will be bound.
/// With `in_use_ok` (`-t`, which may check a new file beside the running gateway), a port
/// already taken passes: only an address the host cannot listen on fails.
pub fn probe_binds(
    addresses: &[(String, SocketAddr)],
    dual_stack: impl Fn(&SocketAddr) -> bool,
    in_use_ok: bool,
) -> Result<(), String> {
    use socket2::{Domain, Socket, Type};
    for (key, addr) in addresses {
        let bind = || -> std::io::Result<()> {
            let socket = Socket::new(Domain::for_address(*addr), Type::STREAM, None)?;
            // As Pingora binds: a port in TIME_WAIT is free to take.
            socket.set_reuse_address(true)?;
            if addr.is_ipv6() {
                socket.set_only_v6(!dual_stack(addr))?;
            }
            socket.bind(&(*addr).into())?;
            socket.listen(1)
        };
        match bind() {
            Err(e) if in_use_ok && e.kind() == std::io::ErrorKind::AddrInUse => {}
            result => result.map_err(|e| format!("{key}: cannot listen on {addr}: {e}"))?,
        }
    }
    Ok(())
}
