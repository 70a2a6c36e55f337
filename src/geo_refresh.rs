//! Live geo databases: the configured MaxMind DB files, opened at start-up (a missing or
//! corrupt file stops the start), looked at every `check_interval` and read again when one
//! changed (its size or modification time), and on `SIGHUP` whatever their stamps. A file
//! that no longer opens keeps its last good version: the reason is logged once per change
//! and counted. The gateway never downloads a database.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use log::{info, warn};
use tokio::sync::watch;

use crate::config::GeoSettings;
use crate::hangup::{on_interval_and_hangup, Wake};
use crate::metrics;
use crate::routing::geo::{GeoDatabase, GeoTable};

/// The table requests read, swapped whole when a file changes.
pub type LiveGeo = Arc<ArcSwap<GeoTable>>;

/// What tells a changed file from the one loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
}

/// One configured file: its last good version and the stamp of the last one tried.
struct Known {
    path: PathBuf,
    good: Arc<GeoDatabase>,
    tried: Option<Stamp>,
}

/// Looks at the files and swaps the table in.
pub struct GeoRefresher {
    cfg: GeoSettings,
    live: LiveGeo,
    known: Mutex<Vec<Known>>,
}

impl GeoRefresher {
    /// Opens every file; an error names the file and what is wrong with it.
    pub fn start_up(cfg: &GeoSettings) -> Result<GeoRefresher, String> {
        let mut known = Vec::with_capacity(cfg.databases.len());
        for path in &cfg.databases {
            let (db, stamp) = open(path).map_err(|e| format!("{}: {e}", path.display()))?;
            record_load(path, Some(&db));
            known.push(Known {
                path: path.clone(),
                good: Arc::new(db),
                tried: Some(stamp),
            });
        }
        let table = GeoTable::new(known.iter().map(|k| k.good.clone()).collect());
        Ok(GeoRefresher {
            cfg: cfg.clone(),
            live: Arc::new(ArcSwap::from_pointee(table)),
            known: Mutex::new(known),
        })
    }

    /// The settings it reads by.
    pub fn settings(&self) -> &GeoSettings {
        &self.cfg
    }

    /// The table requests read.
    pub fn live(&self) -> LiveGeo {
        self.live.clone()
    }

    /// Reads again each file whose stamp changed (every file when `all`), keeps those that
    /// open, and swaps in a new table when one did. Returns whether it did.
    pub async fn refresh(&self, all: bool) -> bool {
        let paths: Vec<(usize, PathBuf, Option<Stamp>)> = {
            let known = self.known.lock().expect("lock is never poisoned");
            known
                .iter()
                .enumerate()
                .map(|(i, k)| (i, k.path.clone(), k.tried))
                .collect()
        };
        let mut changed = false;
        for (i, path, tried) in paths {
            let stamp = std::fs::metadata(&path).ok().map(|m| stamp_of(&m));
            if !all && stamp.is_some() && stamp == tried {
                continue;
            }
            let reading = path.clone();
            let opened = tokio::task::spawn_blocking(move || open(&reading))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r);
            let mut known = self.known.lock().expect("lock is never poisoned");
            match opened {
                Ok((db, stamp)) => {
                    info!(
                        "geo database {} loaded: {} built {}",
                        path.display(),
                        db.kind(),
                        db.built()
                    );
                    record_load(&path, Some(&db));
                    known[i].good = Arc::new(db);
                    known[i].tried = Some(stamp);
                    changed = true;
                }
                Err(why) => {
                    // Once per version of the file: an interval that finds it unchanged says
                    // nothing more.
                    if all || known[i].tried != stamp {
                        warn!(
                            "geo database {}: {why}; keeping the last good version",
                            path.display()
                        );
                        record_load(&path, None);
                    }
                    known[i].tried = stamp;
                }
            }
        }
        if changed {
            let known = self.known.lock().expect("lock is never poisoned");
            let table = GeoTable::new(known.iter().map(|k| k.good.clone()).collect());
            self.live.store(Arc::new(table));
        }
        changed
    }

    /// Looks at the files every `check_interval`, and reads them all on `SIGHUP`, until
    /// `shutdown` changes. Nothing to do without files.
    pub async fn run(&self, shutdown: watch::Receiver<bool>) {
        if self.cfg.databases.is_empty() {
            return;
        }
        let refresh = |wake| async move {
            self.refresh(wake == Wake::Hangup).await;
        };
        on_interval_and_hangup(self.cfg.check_interval, shutdown, "geo databases", refresh).await;
    }
}

/// The database in `path` and the stamp of what was read.
fn open(path: &Path) -> Result<(GeoDatabase, Stamp), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let stamp = file
        .metadata()
        .map(|m| stamp_of(&m))
        .map_err(|e| format!("cannot read: {e}"))?;
    let mut bytes = Vec::with_capacity(usize::try_from(stamp.len).unwrap_or(0));
    std::io::Read::read_to_end(&mut &file, &mut bytes).map_err(|e| format!("cannot read: {e}"))?;
    Ok((GeoDatabase::open(bytes)?, stamp))
}

fn stamp_of(m: &std::fs::Metadata) -> Stamp {
    Stamp {
        len: m.len(),
        modified: m.modified().ok(),
    }
}

/// Counts a load (`None`: refused) and sets the build time of the one in use.
fn record_load(path: &Path, db: Option<&GeoDatabase>) {
    let label = path.display().to_string();
    let result = if db.is_some() { "ok" } else { "failed" };
    metrics::GEO_LOADS
        .with_label_values(&[&label, result])
        .inc();
    metrics::GEO_LOADS.with_label_values(&[&label, "failed"]);
    if let Some(db) = db {
        metrics::GEO_BUILT
            .with_label_values(&[&label])
            .set(db.built() as f64);
    }
}
