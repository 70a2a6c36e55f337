//! Live IP ranges: the configured files and URLs, in every format, are read again on an
//! interval and on `SIGHUP`, off the request path, and the rebuilt table is swapped in
//! atomically. A source that fails, does not parse, or shrinks below `min_prefix_ratio` of its
//! last good version keeps its last good version; the reason is logged and counted. The
//! embedded snapshots never change and are not refreshed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use log::{info, warn};
use tokio::sync::watch;

use crate::config::RangeSettings;
use crate::hangup::on_interval_and_hangup;
use crate::metrics;
use crate::routing::ranges::{Origin, RangeTable, Source};

/// The table requests read, swapped whole by the refresher.
pub type LiveRanges = Arc<ArcSwap<RangeTable>>;

/// One file or URL source and its last good document.
struct Known {
    source: Source,
    good: Option<(Vec<u8>, usize)>,
}

/// Reads the sources again and swaps the table in.
pub struct RangeRefresher {
    cfg: RangeSettings,
    live: LiveRanges,
    client: reqwest::Client,
    known: Mutex<Vec<Known>>,
}

impl RangeRefresher {
    /// Builds the first table from the operator rules, the embedded snapshots and the files
    /// (read here: a missing or bad file is a start-up error). URLs are fetched by the first
    /// refresh, right after start-up.
    pub fn start_up(cfg: &RangeSettings) -> Result<RangeRefresher, String> {
        RangeRefresher::start_up_after(cfg, None)
    }

    /// As [`RangeRefresher::start_up`], for a reload that changed the range settings: a URL
    /// source that `previous` also had keeps its last good document until the first refresh
    /// reads it again, so the new table does not lose its prefixes meanwhile.
    pub fn start_up_after(
        cfg: &RangeSettings,
        previous: Option<&RangeRefresher>,
    ) -> Result<RangeRefresher, String> {
        let kept: Vec<Known> = previous.map_or_else(Vec::new, |p| {
            let known = p.known.lock().expect("lock is never poisoned");
            known
                .iter()
                .map(|k| Known {
                    source: k.source.clone(),
                    good: k.good.clone(),
                })
                .collect()
        });
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("archeio/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the range download client: {e}"))?;
        let mut known = Vec::new();
        for source in cfg.sources.documents.iter().cloned() {
            let good = match source.origin {
                Origin::Embedded => continue,
                Origin::Url => kept
                    .iter()
                    .find(|k| k.source == source)
                    .and_then(|k| k.good.clone()),
                Origin::File => {
                    let bytes = std::fs::read(&source.location)
                        .map_err(|e| format!("{}: cannot read: {e}", source.location))?;
                    let count = RangeTable::default()
                        .add(&source, &bytes)
                        .map_err(|e| format!("{}: {e}", source.location))?;
                    Some((bytes, count))
                }
            };
            known.push(Known { source, good });
        }
        let docs: Vec<(&Source, &[u8])> = known
            .iter()
            .filter_map(|k| Some((&k.source, k.good.as_ref()?.0.as_slice())))
            .collect();
        let table = RangeTable::build(&cfg.sources, &docs)?;
        for k in &known {
            let label = k.source.location.as_str();
            for result in ["ok", "failed"] {
                metrics::RANGE_REFRESHES.with_label_values(&[label, result]);
            }
            if k.good.is_some() {
                metrics::RANGE_LAST_SUCCESS
                    .with_label_values(&[label])
                    .set(unix_now());
            }
        }
        Ok(RangeRefresher {
            cfg: cfg.clone(),
            live: Arc::new(ArcSwap::from_pointee(table)),
            client,
            known: Mutex::new(known),
        })
    }

    /// The settings it reads by.
    pub fn settings(&self) -> &RangeSettings {
        &self.cfg
    }

    /// The table requests read.
    pub fn live(&self) -> LiveRanges {
        self.live.clone()
    }

    /// Whether a table is in place to route by: it has prefixes, or nothing was configured
    /// to fill it. With only URL sources that is after the first good download.
    pub fn loaded(&self) -> bool {
        let (v4, v6) = self.live.load().prefix_counts();
        v4 + v6 > 0 || (self.cfg.sources.documents.is_empty() && self.cfg.sources.custom.is_empty())
    }

    /// Reads every source, keeps those that pass, and swaps in a table built from the last
    /// good version of each. Returns whether a new table was swapped in.
    pub async fn refresh(&self) -> bool {
        let list: Vec<(usize, Source)> = {
            let known = self.known.lock().expect("lock is never poisoned");
            known.iter().map(|k| k.source.clone()).enumerate().collect()
        };
        let mut changed = false;
        for (i, source) in list {
            let result = match self.fetch(&source).await {
                Ok(bytes) => self.validate(i, &source, bytes).await,
                Err(why) => Err(why),
            };
            let label = source.location.as_str();
            match result {
                Ok((bytes, count)) => {
                    let mut known = self.known.lock().expect("lock is never poisoned");
                    if known[i].good.as_ref().map(|(b, _)| b) != Some(&bytes) {
                        changed = true;
                    }
                    known[i].good = Some((bytes, count));
                    metrics::RANGE_REFRESHES
                        .with_label_values(&[label, "ok"])
                        .inc();
                    metrics::RANGE_LAST_SUCCESS
                        .with_label_values(&[label])
                        .set(unix_now());
                }
                Err(why) => {
                    warn!("cloud ranges from {label}: {why}; keeping the last good version");
                    metrics::RANGE_REFRESHES
                        .with_label_values(&[label, "failed"])
                        .inc();
                }
            }
        }
        if !changed {
            return false;
        }
        let docs: Vec<(Source, Vec<u8>)> = self
            .known
            .lock()
            .expect("lock is never poisoned")
            .iter()
            .filter_map(|k| Some((k.source.clone(), k.good.as_ref()?.0.clone())))
            .collect();
        let sources = self.cfg.sources.clone();
        let built = tokio::task::spawn_blocking(move || {
            let refs: Vec<(&Source, &[u8])> = docs.iter().map(|(s, b)| (s, b.as_slice())).collect();
            RangeTable::build(&sources, &refs)
        })
        .await;
        match built {
            Ok(Ok(table)) => {
                let (v4, v6) = table.prefix_counts();
                metrics::set_prefix_counts(v4, v6);
                self.live.store(Arc::new(table));
                info!("cloud ranges reloaded: {v4} IPv4 and {v6} IPv6 prefixes");
                true
            }
            Ok(Err(why)) => {
                warn!("cloud ranges not rebuilt: {why}; keeping the current table");
                false
            }
            Err(join) => {
                warn!("cloud ranges not rebuilt: {join}; keeping the current table");
                false
            }
        }
    }

    async fn fetch(&self, source: &Source) -> Result<Vec<u8>, String> {
        if source.origin != Origin::Url {
            let path = source.location.clone();
            return tokio::task::spawn_blocking(move || std::fs::read(path))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("cannot read: {e}"));
        }
        let resp = self
            .client
            .get(&source.location)
            .send()
            .await
            .map_err(|e| format!("download failed: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("download answered {}", resp.status()));
        }
        resp.bytes()
            .await
            .map(|b| b.to_vec())
            .map_err(|e| format!("download failed: {e}"))
    }

    /// Parses `bytes` off the request path and checks its size against the last good one.
    async fn validate(
        &self,
        i: usize,
        source: &Source,
        bytes: Vec<u8>,
    ) -> Result<(Vec<u8>, usize), String> {
        let parsed_as = source.clone();
        let (bytes, parsed) = tokio::task::spawn_blocking(move || {
            let parsed = RangeTable::default().add(&parsed_as, &bytes);
            (bytes, parsed)
        })
        .await
        .map_err(|e| e.to_string())?;
        let count = parsed?;
        let last = self.known.lock().expect("lock is never poisoned")[i]
            .good
            .as_ref()
            .map_or(0, |(_, n)| *n);
        let floor = (last as f64 * self.cfg.min_prefix_ratio).ceil() as usize;
        if count == 0 || count < floor {
            return Err(format!(
                "refused: {count} prefixes where the last good version had {last} (minimum {floor})"
            ));
        }
        Ok((bytes, count))
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl RangeRefresher {
    /// Refreshes on the interval (at once first) and on `SIGHUP` until `shutdown` changes.
    /// The first refresh reads the URLs now and the files again (read at start-up, so an
    /// unchanged file swaps nothing).
    pub async fn run(&self, shutdown: watch::Receiver<bool>) {
        let interval = self
            .cfg
            .refresh_interval
            .unwrap_or(Duration::from_secs(u32::MAX.into()));
        let refresh = |_| async {
            self.refresh().await;
        };
        on_interval_and_hangup(interval, shutdown, "cloud ranges", refresh).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::ranges::{Format, Placement, RangeSources};

    /// One file, nothing embedded.
    fn files(format: Format, path: &std::path::Path) -> RangeSettings {
        RangeSettings {
            sources: RangeSources {
                documents: vec![Source {
                    location: path.display().to_string(),
                    origin: Origin::File,
                    format,
                    provider: format.default_provider().unwrap_or("test").into(),
                    region: None,
                }],
                custom: Vec::new(),
            },
            refresh_interval: None,
            min_prefix_ratio: 0.5,
        }
    }

    #[test]
    fn extra_files_load_and_bad_files_are_named() {
        let dir = std::env::temp_dir().join(format!("archeio-ranges-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let aws = dir.join("aws.json");
        std::fs::write(
            &aws,
            r#"{"prefixes":[{"ip_prefix":"198.51.100.0/24","region":"xx-test-1","service":"EC2"}],
                "ipv6_prefixes":[]}"#,
        )
        .unwrap();
        let bad = dir.join("gcp.json");
        std::fs::write(&bad, r#"{"prefixes":[{"scope":"x"}]}"#).unwrap();
        let t = RangeRefresher::start_up(&files(Format::Aws, &aws))
            .unwrap()
            .live()
            .load_full();
        assert_eq!(t.prefix_counts(), (1, 0));
        assert_eq!(
            t.lookup("198.51.100.9".parse().unwrap()).cloned(),
            Some(Placement {
                provider: "aws".into(),
                region: "xx-test-1".into()
            })
        );
        let err = RangeRefresher::start_up(&files(Format::Gcp, &bad))
            .err()
            .unwrap();
        assert!(err.contains(&bad.display().to_string()), "{err}");
        assert!(
            err.contains("exactly one of ipv4Prefix and ipv6Prefix"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn malformed_azure_and_geofeed_refreshes_keep_the_last_good_versions() {
        let dir = tempfile::tempdir().unwrap();
        let azure = dir.path().join("azure.json");
        let geo = dir.path().join("geo.csv");
        let azure_doc = |prefix: &str| {
            format!(
                r#"{{"values": [{{"name": "AzureCloud.eastus2", "id": "AzureCloud.eastus2",
                    "properties": {{"region": "eastus2", "addressPrefixes": ["{prefix}"]}}}}]}}"#
            )
        };
        std::fs::write(&azure, azure_doc("198.51.100.0/24")).unwrap();
        std::fs::write(&geo, "# corp\n203.0.113.0/24,US,US-CA,,\n").unwrap();
        let mut cfg = files(Format::Azure, &azure);
        cfg.sources.documents.push(Source {
            location: geo.display().to_string(),
            origin: Origin::File,
            format: Format::Geofeed,
            provider: "corp".into(),
            region: None,
        });
        let refresher = RangeRefresher::start_up(&cfg).unwrap();
        let live = refresher.live();
        let at = |ip: &str| {
            live.load()
                .lookup(ip.parse().unwrap())
                .map(|p| format!("{}/{}", p.provider, p.region))
        };
        assert_eq!(at("198.51.100.1").as_deref(), Some("azure/eastus2"));
        assert_eq!(at("203.0.113.1").as_deref(), Some("corp/US-CA"));
        assert!(!refresher.refresh().await, "nothing changed");

        std::fs::write(&azure, azure_doc("198.51.100.0/40")).unwrap();
        std::fs::write(&geo, "203.0.113.0/24,US,US-NY,,\nnot-a-prefix,US,,,\n").unwrap();
        assert!(!refresher.refresh().await);
        assert_eq!(at("198.51.100.1").as_deref(), Some("azure/eastus2"));
        assert_eq!(at("203.0.113.1").as_deref(), Some("corp/US-CA"));

        // A good geofeed is taken while the Azure file stays at its last good version.
        std::fs::write(&geo, "203.0.113.0/24,US,US-NY,,\n").unwrap();
        assert!(refresher.refresh().await);
        assert_eq!(at("198.51.100.1").as_deref(), Some("azure/eastus2"));
        assert_eq!(at("203.0.113.1").as_deref(), Some("corp/US-NY"));
    }
}
