//! Pingora's own keys, the top level of the same file as `archeio:`: read and checked here
//! so that a misspelled key, a thread count Pingora would panic on, or a missing shutdown
//! timing is an error or a sensible default before anything starts.

use std::time::Duration;

use pingora_core::server::configuration::ServerConf;
use serde_yaml::{Mapping, Value};

/// What `grace_period_seconds` means when the file does not say: seconds of serving with
/// `/readyz` at 503 after `SIGTERM`, long enough for a load balancer's next probe.
pub const DEFAULT_DRAIN_SECONDS: u64 = 5;
/// What `graceful_shutdown_timeout_seconds` means when the file does not say: how long
/// requests in flight get to finish once the listeners closed.
pub const DEFAULT_IN_FLIGHT_SECONDS: u64 = 10;

/// Pingora's configuration as the server gets it, and the shutdown timing it stands for.
#[derive(Debug)]
pub struct ServerSettings {
    /// The keys as the operator wrote them, with the shutdown defaults filled in (what
    /// `-t --print` shows).
    pub conf: ServerConf,
    /// After `SIGTERM`: serve this long with readiness off, then stop accepting.
    pub drain: Duration,
    /// Then let requests in flight finish for at most this long.
    pub in_flight: Duration,
}

impl ServerSettings {
    /// Reads the top-level keys of `text` (from `source`); `None`: the built-in defaults.
    pub fn load(text: Option<&str>, source: &str) -> Result<ServerSettings, String> {
        let mut conf = match text {
            Some(text) => {
                check_keys(text).map_err(|e| format!("{source}: {e}"))?;
                serde_yaml::from_str::<ServerConf>(text).map_err(|e| format!("{source}: {e}"))?
            }
            None => ServerConf::new()
                .ok_or_else(|| "cannot build Pingora's default configuration".to_string())?,
        };
        if conf.threads == 0 {
            return Err(format!(
                "{source}: threads: must be at least 1 (worker threads per service)"
            ));
        }
        let drain = *conf
            .grace_period_seconds
            .get_or_insert(DEFAULT_DRAIN_SECONDS);
        let in_flight = *conf
            .graceful_shutdown_timeout_seconds
            .get_or_insert(DEFAULT_IN_FLIGHT_SECONDS);
        let conf = conf.validate().map_err(|e| format!("{source}: {e}"))?;
        Ok(ServerSettings {
            conf,
            drain: Duration::from_secs(drain),
            in_flight: Duration::from_secs(in_flight),
        })
    }

    /// The first of Pingora's keys whose value `next` changes: the server reads them once,
    /// at start.
    pub fn changed_key(&self, next: &ServerSettings) -> Option<String> {
        let (now, then) = (
            as_mapping(&self.conf).unwrap_or_default(),
            as_mapping(&next.conf).unwrap_or_default(),
        );
        now.iter()
            .chain(then.iter())
            .find(|(k, _)| now.get(*k) != then.get(*k))
            .and_then(|(k, _)| k.as_str().map(str::to_string))
    }

    /// Pingora's keys for `-t --print`: those `conf/archeio.yaml` documents, then the
    /// others the file sets to something other than Pingora's default (the rest are
    /// Pingora's defaults, described in its own docs, and left out).
    pub fn printable(&self) -> Result<(Mapping, Mapping), String> {
        let unprintable = || "cannot print Pingora's configuration".to_string();
        let ours = as_mapping(&self.conf).ok_or_else(unprintable)?;
        let defaults = match ServerConf::new() {
            Some(c) => Some(as_mapping(&c).ok_or_else(unprintable)?),
            None => None,
        };
        let documented: Vec<String> =
            match serde_yaml::from_str::<Value>(include_str!("../../conf/archeio.yaml")) {
                Ok(Value::Mapping(m)) => keys(&m),
                _ => Vec::new(),
            };
        let (mut shown, mut others) = (Mapping::new(), Mapping::new());
        for (k, v) in ours {
            let name = k.as_str().unwrap_or_default().to_string();
            if documented.contains(&name) {
                shown.insert(k, v);
            } else if defaults.as_ref().and_then(|d| d.get(&k)) != Some(&v) {
                others.insert(k, v);
            }
        }
        Ok((shown, others))
    }

    /// The configuration Pingora runs with. Pingora stops accepting at `SIGTERM` and then
    /// sleeps `grace_period_seconds` before ending its runtimes; the drain before it is
    /// ours (see `lifecycle`), so Pingora's sleep is the in-flight window, and its runtime
    /// timeout only a short last wait.
    pub fn into_pingora(self) -> ServerConf {
        let mut conf = self.conf;
        conf.grace_period_seconds = Some(self.in_flight.as_secs());
        conf.graceful_shutdown_timeout_seconds = Some(1);
        conf
    }
}

/// Every top-level key must be one of Pingora's or `archeio`: an unknown one is a typo that
/// would otherwise leave its value at the default without a word.
fn check_keys(text: &str) -> Result<(), String> {
    let top: Value = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    let top = match top {
        Value::Mapping(m) => m,
        Value::Null => return Ok(()),
        _ => return Err("expected a mapping of keys at the top level".into()),
    };
    let known = known_keys();
    for key in top.keys() {
        let Some(key) = key.as_str() else {
            return Err(format!("{key:?}: expected a key name"));
        };
        if key == "archeio" || known.contains(&key.to_string()) {
            continue;
        }
        let hint = known
            .iter()
            .map(String::as_str)
            .chain(["archeio"])
            .find(|k| strsim::levenshtein(k, key) <= 2)
            .map(|k| format!(" (did you mean {k}?)"))
            .unwrap_or_default();
        return Err(format!(
            "{key}: unknown key{hint}; the top level takes Pingora's server keys and archeio"
        ));
    }
    Ok(())
}

/// Pingora's keys, from its own configuration type so that a new Pingora key is known.
fn known_keys() -> Vec<String> {
    ServerConf::new()
        .and_then(|c| as_mapping(&c))
        .map_or_else(Vec::new, |m| keys(&m))
}

/// Pingora's keys and values as YAML.
fn as_mapping(conf: &ServerConf) -> Option<Mapping> {
    match serde_yaml::to_value(conf) {
        Ok(Value::Mapping(m)) => Some(m),
        _ => None,
    }
}

fn keys(m: &Mapping) -> Vec<String> {
    m.keys()
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_refused_with_a_hint() {
        let e = ServerSettings::load(Some("threds: 2\n"), "f.yaml").unwrap_err();
        assert_eq!(
            e,
            "f.yaml: threds: unknown key (did you mean threads?); the top level takes Pingora's server keys and archeio"
        );
        let e = ServerSettings::load(Some("archio: {}\n"), "f.yaml").unwrap_err();
        assert!(
            e.contains("archio: unknown key (did you mean archeio?)"),
            "{e}"
        );
        assert!(
            ServerSettings::load(Some("upstream_keepalive_pool_size: 8\narcheio: {}\n"), "f")
                .is_ok()
        );
    }

    #[test]
    fn a_changed_key_is_named() {
        let a = ServerSettings::load(Some("threads: 2\narcheio: {}\n"), "f").unwrap();
        let b = ServerSettings::load(Some("threads: 2\narcheio: {mode: passthrough}\n"), "f");
        assert_eq!(a.changed_key(&b.unwrap()), None);
        let c = ServerSettings::load(Some("threads: 3\n"), "f").unwrap();
        assert_eq!(a.changed_key(&c).as_deref(), Some("threads"));
        let d = ServerSettings::load(Some("threads: 2\ngrace_period_seconds: 9\n"), "f");
        assert_eq!(
            a.changed_key(&d.unwrap()).as_deref(),
            Some("grace_period_seconds")
        );
    }

    #[test]
    fn shutdown_timing_has_defaults_and_pingora_gets_its_share() {
        let s = ServerSettings::load(Some("threads: 1\n"), "f").unwrap();
        assert_eq!(s.drain, Duration::from_secs(DEFAULT_DRAIN_SECONDS));
        assert_eq!(s.in_flight, Duration::from_secs(DEFAULT_IN_FLIGHT_SECONDS));
        let s = ServerSettings::load(
            Some("grace_period_seconds: 3\ngraceful_shutdown_timeout_seconds: 7\n"),
            "f",
        )
        .unwrap();
        assert_eq!((s.drain.as_secs(), s.in_flight.as_secs()), (3, 7));
        let p = s.into_pingora();
        assert_eq!(p.grace_period_seconds, Some(7));
        assert_eq!(p.graceful_shutdown_timeout_seconds, Some(1));
        let e = ServerSettings::load(Some("threads: 0\n"), "f").unwrap_err();
        assert!(e.starts_with("f: threads: must be at least 1"), "{e}");
    }
}
