//! A circuit breaker per mirror host. A host whose checks fail (timeout, connection error,
//! 5xx) `failures` times in a row is *open* for `cool_down`: checks for it are skipped and
//! the blob counts as absent, so clients go to the upstream at once instead of waiting for a
//! timeout. After the cool-down one check is let through as a probe; its success closes the
//! breaker, its failure opens it for another cool-down.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use log::{info, warn};

/// What a check for a host may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Check as usual.
    Check,
    /// Check: this is the one probe after a cool-down.
    Probe,
    /// Do not check; the host is considered down.
    Skip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    Probing,
}

/// Breakers for every mirror host seen.
pub struct Breakers {
    failures: u32,
    cool_down: Duration,
    hosts: Mutex<HashMap<String, State>>,
    on_change: OnChange,
}

/// Told `(host, open)` each time a host's breaker opens or closes.
pub type OnChange = Box<dyn Fn(&str, bool) + Send + Sync>;

impl Breakers {
    /// Breakers that open after `failures` failures in a row, for `cool_down`.
    pub fn new(failures: u32, cool_down: Duration, on_change: OnChange) -> Breakers {
        Breakers {
            failures,
            cool_down,
            hosts: Mutex::new(HashMap::new()),
            on_change,
        }
    }

    /// Whether a check of `host` may go out at `now`.
    pub fn permit(&self, host: &str, now: Instant) -> Permit {
        let mut hosts = self.hosts.lock().expect("lock is never poisoned");
        match hosts.get(host).copied() {
            None | Some(State::Closed { .. }) => Permit::Check,
            Some(State::Probing) => Permit::Skip,
            Some(State::Open { until }) if now < until => Permit::Skip,
            Some(State::Open { .. }) => {
                hosts.insert(host.to_string(), State::Probing);
                Permit::Probe
            }
        }
    }

    /// Whether `host`'s breaker is open (or probing) at `now`, without changing it.
    pub fn is_open(&self, host: &str, now: Instant) -> bool {
        let hosts = self.hosts.lock().expect("lock is never poisoned");
        match hosts.get(host) {
            Some(State::Open { until }) => now < *until,
            Some(State::Probing) => true,
            _ => false,
        }
    }

    /// A probe was granted but sent no check (another request's answer arrived first):
    /// let the next request probe.
    pub fn abandon_probe(&self, host: &str, now: Instant) {
        let mut hosts = self.hosts.lock().expect("lock is never poisoned");
        if let Some(state @ State::Probing) = hosts.get_mut(host) {
            *state = State::Open { until: now };
        }
    }

    /// Records how a check of `host` went.
    pub fn record(&self, host: &str, healthy: bool, now: Instant) {
        let mut hosts = self.hosts.lock().expect("lock is never poisoned");
        let state = hosts
            .entry(host.to_string())
            .or_insert(State::Closed { failures: 0 });
        match (*state, healthy) {
            (State::Closed { .. }, true) => *state = State::Closed { failures: 0 },
            (State::Probing | State::Open { .. }, true) => {
                *state = State::Closed { failures: 0 };
                info!("mirror {host} answers again: checking it again");
                (self.on_change)(host, false);
            }
            (State::Closed { failures }, false) if failures + 1 < self.failures => {
                *state = State::Closed {
                    failures: failures + 1,
                };
            }
            (State::Closed { .. } | State::Probing, false) => {
                *state = State::Open {
                    until: now + self.cool_down,
                };
                warn!(
                    "mirror {host} is failing: skipped for {:?} (its clients go to the next mirror of their rule's chain, else the upstream)",
                    self.cool_down
                );
                (self.on_change)(host, true);
            }
            // A check that started before the breaker opened: already counted.
            (State::Open { .. }, false) => {}
        }
    }
}

impl Breakers {
    /// Opens `host`'s breaker at once, whatever its count, for a cool-down from `now`: a
    /// failure that every check would repeat (credentials refused), or failed health
    /// checks (each one extends it). Whether it was closed before.
    pub fn trip(&self, host: &str, now: Instant) -> bool {
        let mut hosts = self.hosts.lock().expect("lock is never poisoned");
        let was_open = matches!(hosts.get(host), Some(State::Open { .. } | State::Probing));
        hosts.insert(
            host.to_string(),
            State::Open {
                until: now + self.cool_down,
            },
        );
        if !was_open {
            (self.on_change)(host, true);
        }
        !was_open
    }

    /// Closes `host`'s breaker: what made it fail changed. Whether it was open.
    pub fn reset(&self, host: &str) -> bool {
        let mut hosts = self.hosts.lock().expect("lock is never poisoned");
        match hosts.insert(host.to_string(), State::Closed { failures: 0 }) {
            Some(State::Closed { .. }) | None => false,
            Some(_) => {
                (self.on_change)(host, false);
                true
            }
        }
    }
}

/// The `host[:port]` of an absolute URL, without parsing the rest.
pub fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())]
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn opens_after_failures_in_a_row_and_probes_once_after_the_cool_down() {
        let changes = Arc::new(Mutex::new(Vec::new()));
        let seen = changes.clone();
        let b = Breakers::new(
            3,
            Duration::from_secs(10),
            Box::new(move |host, open| seen.lock().unwrap().push((host.to_string(), open))),
        );
        let t0 = Instant::now();
        let h = "m.example:9000";
        b.record(h, false, t0);
        b.record(h, false, t0);
        b.record(h, true, t0); // a success resets the count
        b.record(h, false, t0);
        b.record(h, false, t0);
        assert_eq!(b.permit(h, t0), Permit::Check);
        b.record(h, false, t0);
        assert_eq!(b.permit(h, t0), Permit::Skip);
        assert_eq!(b.permit(h, t0 + Duration::from_secs(9)), Permit::Skip);
        assert_eq!(b.permit("other.example", t0), Permit::Check);

        let later = t0 + Duration::from_secs(10);
        assert_eq!(b.permit(h, later), Permit::Probe);
        assert_eq!(b.permit(h, later), Permit::Skip, "one probe at a time");
        b.record(h, false, later);
        assert_eq!(b.permit(h, later + Duration::from_secs(5)), Permit::Skip);
        let again = later + Duration::from_secs(10);
        assert_eq!(b.permit(h, again), Permit::Probe);
        b.record(h, true, again);
        assert_eq!(b.permit(h, again), Permit::Check);
        let h = h.to_string();
        assert_eq!(
            *changes.lock().unwrap(),
            [(h.clone(), true), (h.clone(), true), (h, false)],
            "each opening and the closing are reported once"
        );
    }

    #[test]
    fn an_abandoned_probe_passes_to_the_next_request() {
        let b = Breakers::new(1, Duration::from_secs(10), Box::new(|_, _| {}));
        let t0 = Instant::now();
        b.record("h", false, t0);
        let later = t0 + Duration::from_secs(10);
        assert_eq!(b.permit("h", later), Permit::Probe);
        b.abandon_probe("h", later);
        assert_eq!(b.permit("h", later), Permit::Probe);
    }

    #[test]
    fn a_trip_opens_at_once_and_a_reset_closes() {
        let changes = Arc::new(Mutex::new(Vec::new()));
        let seen = changes.clone();
        let b = Breakers::new(
            5,
            Duration::from_secs(10),
            Box::new(move |host, open| seen.lock().unwrap().push((host.to_string(), open))),
        );
        let t0 = Instant::now();
        b.trip("h", t0);
        b.trip("h", t0);
        assert_eq!(b.permit("h", t0), Permit::Skip);
        b.reset("h");
        assert_eq!(b.permit("h", t0), Permit::Check);
        b.reset("other");
        assert_eq!(
            *changes.lock().unwrap(),
            [("h".to_string(), true), ("h".to_string(), false)]
        );
    }

    #[test]
    fn host_is_the_authority() {
        assert_eq!(
            host_of("https://b.s3.amazonaws.com/containers/images/sha256:1"),
            "b.s3.amazonaws.com"
        );
        assert_eq!(
            host_of("http://127.0.0.1:9000/bucket/x?y"),
            "127.0.0.1:9000"
        );
        assert_eq!(host_of("http://[::1]:9000"), "[::1]:9000");
    }
}
