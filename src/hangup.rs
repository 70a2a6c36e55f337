//! Work that runs again on an interval and on `SIGHUP` (range files, secret files, TLS
//! certificates, the configuration file), in one loop shape.

use std::future::Future;
use std::time::Duration;

use log::{info, warn};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// What woke the work up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The interval (the first run, at once, included).
    Interval,
    /// A `SIGHUP`.
    Hangup,
}

/// Runs `work` at once, then every `interval` and on each `SIGHUP`, until `shutdown`
/// changes, telling it which. `what` names the work in the log line of a `SIGHUP`
/// ("reloading {what}").
pub async fn on_interval_and_hangup<F, Fut>(
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
    what: &str,
    mut work: F,
) where
    F: FnMut(Wake) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!("cannot listen for SIGHUP: {what} is read again on its interval only: {e}");
            None
        }
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let wake = tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => Wake::Interval,
            Some(()) = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                info!("SIGHUP: reloading {what}");
                Wake::Hangup
            }
        };
        work(wake).await;
    }
}
