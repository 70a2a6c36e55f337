//! The TLS listeners' certificates: chosen by SNI for each handshake, and read again when a
//! file changes (cert-manager rewrites a mounted Secret through a symlink swap) or on
//! `SIGHUP`. A new pair serves the next handshake; established connections keep theirs. A
//! pair that cannot be read, parsed, or whose key does not match its certificate keeps the
//! one before it, logged and counted.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use log::{error, info};
use pingora_rustls::sign::CertifiedKey;
use pingora_rustls::{ClientHello, CryptoProvider, ResolvesServerCert};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;

use crate::hangup::on_interval_and_hangup;
use crate::metrics;

/// How often the certificate files are looked at for changes.
const POLL: Duration = Duration::from_secs(2);

/// One pair as served.
struct Served {
    /// DNS names it is for, lowercase; `*.example.com` covers one label.
    names: Vec<String>,
    /// When the certificate expires, seconds since the Unix epoch.
    not_after: i64,
    key: Arc<CertifiedKey>,
}

/// One configured pair: its files, what they held when last read, and what is served.
struct Pair {
    cert_file: PathBuf,
    key_file: PathBuf,
    read: Mutex<(Vec<u8>, Vec<u8>)>,
    served: ArcSwap<Served>,
}

/// The certificates of the TLS listeners, in the configured order; the list is replaced
/// whole when a configuration reload changes it.
pub struct Certificates {
    pairs: ArcSwap<Vec<Pair>>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pairs = self.pairs.load();
        let files: Vec<_> = pairs.iter().map(|p| &p.cert_file).collect();
        f.debug_struct("Certificates")
            .field("cert_files", &files)
            .finish()
    }
}

impl Certificates {
    /// The pairs of `tls.certificates`, read (see [`load_pairs`]).
    pub fn load(pairs: &[(PathBuf, PathBuf)]) -> Result<Certificates, String> {
        pingora_rustls::install_default_crypto_provider();
        Ok(Certificates {
            pairs: ArcSwap::from_pointee(load_pairs(pairs)?),
        })
    }

    /// Serves `pairs` from the next handshake on, when the configured list changed; an
    /// error (as [`Certificates::load`]'s) keeps the list served.
    pub fn replace(&self, pairs: &[(PathBuf, PathBuf)]) -> Result<(), String> {
        let same = {
            let served = self.pairs.load();
            served.len() == pairs.len()
                && served
                    .iter()
                    .zip(pairs)
                    .all(|(s, (cert, key))| s.cert_file == *cert && s.key_file == *key)
        };
        if !same {
            let old = self.pairs.swap(Arc::new(load_pairs(pairs)?));
            for gone in old
                .iter()
                .filter(|o| !pairs.iter().any(|(c, _)| *c == o.cert_file))
            {
                metrics::forget_certificate(&gone.cert_file.display().to_string());
            }
        }
        Ok(())
    }

    /// The pair for a handshake naming `sni`: the first whose names match, else the first.
    fn choose(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let sni = sni.map(str::to_ascii_lowercase);
        let pairs = self.pairs.load();
        let matching = sni.as_deref().and_then(|name| {
            pairs.iter().find_map(|p| {
                let served = p.served.load();
                served
                    .names
                    .iter()
                    .any(|n| name_matches(n, name))
                    .then(|| served.key.clone())
            })
        });
        matching.unwrap_or_else(|| pairs[0].served.load().key.clone())
    }

    /// Reads the files again; a pair whose bytes changed and that loads is served from now
    /// on. Counted in `archeio_tls_certificate_reloads_total{result}`.
    pub fn reload(&self) {
        for (i, pair) in self.pairs.load().iter().enumerate() {
            let bytes = match read_pair(&pair.cert_file, &pair.key_file) {
                Ok(bytes) => bytes,
                Err(e) => {
                    // Mid-rotation a file can be missing for a moment: the next look retries.
                    let mut read = pair.read.lock().expect("lock is never poisoned");
                    if !read.0.is_empty() {
                        error!("tls.certificates[{i}]: {e}; keeping the certificate served");
                        metrics::record_certificate_reload(false);
                        *read = (Vec::new(), Vec::new());
                    }
                    continue;
                }
            };
            let mut read = pair.read.lock().expect("lock is never poisoned");
            if *read == bytes {
                continue;
            }
            match parse_pair(&bytes, &pair.cert_file, &pair.key_file) {
                Ok(served) => {
                    info!(
                        "tls.certificates[{i}]: {} read again, serving it to new connections",
                        pair.cert_file.display()
                    );
                    metrics::set_certificate_expiry(
                        &pair.cert_file.display().to_string(),
                        served.not_after,
                    );
                    pair.served.store(Arc::new(served));
                    metrics::record_certificate_reload(true);
                }
                Err(e) => {
                    error!("tls.certificates[{i}]: {e}; keeping the certificate served");
                    metrics::record_certificate_reload(false);
                }
            }
            *read = bytes;
        }
    }

    /// Looks at the files every [`POLL`] and on `SIGHUP` until `shutdown` changes.
    pub async fn watch(&self, shutdown: watch::Receiver<bool>) {
        let reload = |_| async { self.reload() };
        on_interval_and_hangup(POLL, shutdown, "TLS certificates", reload).await;
    }
}

/// What a TLS listener asks for a certificate.
#[derive(Debug)]
pub struct Resolver(pub Arc<Certificates>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.choose(hello.server_name()))
    }
}

/// Reads every pair; an error names the pair's key (`tls.certificates[i]`) and file.
fn load_pairs(pairs: &[(PathBuf, PathBuf)]) -> Result<Vec<Pair>, String> {
    pairs
        .iter()
        .enumerate()
        .map(|(i, (cert_file, key_file))| {
            let bytes = read_pair(cert_file, key_file)
                .map_err(|e| format!("tls.certificates[{i}]: {e}"))?;
            let served = parse_pair(&bytes, cert_file, key_file)
                .map_err(|e| format!("tls.certificates[{i}]: {e}"))?;
            metrics::set_certificate_expiry(&cert_file.display().to_string(), served.not_after);
            Ok(Pair {
                cert_file: cert_file.clone(),
                key_file: key_file.clone(),
                read: Mutex::new(bytes),
                served: ArcSwap::from_pointee(served),
            })
        })
        .collect::<Result<Vec<_>, String>>()
}

fn read_pair(cert_file: &Path, key_file: &Path) -> Result<(Vec<u8>, Vec<u8>), String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    Ok((read(cert_file)?, read(key_file)?))
}

/// The served form of a pair: the chain, a key that matches its first certificate, and the
/// names the first certificate is for. Errors name the file, never the key's bytes.
fn parse_pair(
    bytes: &(Vec<u8>, Vec<u8>),
    cert_file: &Path,
    key_file: &Path,
) -> Result<Served, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes.0)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not PEM certificates: {e}", cert_file.display()))?;
    let Some(first) = chain.first() else {
        return Err(format!("{}: holds no certificate", cert_file.display()));
    };
    let (names, not_after) =
        names_of(first).map_err(|e| format!("{}: {e}", cert_file.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&bytes.1)
        .map_err(|_| format!("{}: not a PEM private key", key_file.display()))?;
    let provider = CryptoProvider::get_default().ok_or("no TLS crypto provider installed")?;
    let key = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        format!(
            "{} does not go with {}: {e}",
            key_file.display(),
            cert_file.display()
        )
    })?;
    Ok(Served {
        names,
        not_after,
        key: Arc::new(key),
    })
}

/// The DNS names a certificate is for (its subject alternative names, else its common
/// name) and when it expires.
fn names_of(cert: &CertificateDer<'_>) -> Result<(Vec<String>, i64), String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| format!("cannot parse the certificate: {e}"))?;
    let mut names: Vec<String> = match parsed.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names.extend(
            parsed
                .subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    Ok((names, parsed.validity().not_after.timestamp()))
}

/// Whether certificate name `pattern` covers `host` (both lowercase): equal, or a wildcard
/// `*.rest` for exactly one label before `rest`.
fn name_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(rest) => host
            .split_once('.')
            .is_some_and(|(label, tail)| !label.is_empty() && tail == rest),
        None => pattern == host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_exactly_or_by_one_wildcard_label() {
        assert!(name_matches("registry.example.com", "registry.example.com"));
        assert!(name_matches("*.example.com", "eu.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("registry.example.com", "other.example.com"));
    }
}
