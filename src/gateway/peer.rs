//! The Pingora peer for an upstream endpoint: its address from [`Upstreams`], the TLS trust
//! and the time limits from the settings.

use std::sync::Arc;
use std::time::Duration;

use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::utils::tls::{parse_x509, WrappedX509};
use pingora_core::{Error, ErrorType, Result};

use crate::config::{UpstreamSettings, UpstreamTimeouts};
use crate::upstream::Upstreams;

/// Builds peers; the CA is converted once, here.
pub struct Peers {
    ca: Option<Arc<[WrappedX509]>>,
    timeouts: UpstreamTimeouts,
}

impl Peers {
    /// Peers trusting `settings.ca_certs` (or the system's), with its time limits.
    pub fn new(settings: &UpstreamSettings) -> Peers {
        let ca = settings.ca_certs.as_ref().map(|certs| {
            let wrapped: Vec<WrappedX509> = certs
                .iter()
                .map(|der| WrappedX509::new(der.to_vec(), parse_x509))
                .collect();
            Arc::from(wrapped)
        });
        Peers {
            ca,
            timeouts: settings.timeouts,
        }
    }

    /// The peer for a mirror at `addr`, named `host` for TLS; the system's CAs and the
    /// upstream's time limits.
    pub fn mirror(&self, addr: std::net::SocketAddr, tls: bool, host: &str) -> Box<HttpPeer> {
        let mut peer = HttpPeer::new(addr, tls, host.to_string());
        self.limit(&mut peer);
        Box::new(peer)
    }

    fn limit(&self, peer: &mut HttpPeer) {
        let o = &mut peer.options;
        o.total_connection_timeout = Some(self.timeouts.connect);
        o.connection_timeout = Some(self.timeouts.connect);
        o.read_timeout = Some(self.timeouts.read);
        o.write_timeout = Some(self.timeouts.read);
        o.idle_timeout = Some(Duration::from_secs(60));
    }

    /// The peer for endpoint `i` of `upstreams`.
    pub async fn peer(&self, upstreams: &Upstreams, i: usize) -> Result<Box<HttpPeer>> {
        let e = upstreams.endpoint(i);
        let Some(addr) = upstreams.address(i).await else {
            // The upstream's side: a 502, as for a refused connection.
            let e = Error::explain(
                ErrorType::ConnectNoRoute,
                format!("upstream {} does not resolve", e.url),
            );
            return Err(e.into_up());
        };
        let mut peer = HttpPeer::new(addr, e.tls, e.host.clone());
        self.limit(&mut peer);
        peer.options.ca = self.ca.clone();
        Ok(Box::new(peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::file::ArcheioConfig;

    #[tokio::test]
    async fn peers_carry_address_tls_and_timeouts() {
        let mut cfg = ArcheioConfig::default();
        cfg.upstream.endpoints = vec!["http://127.0.0.1:1".into()];
        let s = cfg.check("test", |_| None).unwrap();
        let u = Upstreams::new(&s.upstream, false, Box::new(|_, _| {})).unwrap();
        let peer = Peers::new(&s.upstream).peer(&u, 0).await.unwrap();
        assert_eq!(peer.options.read_timeout, Some(Duration::from_secs(30)));
        assert_eq!(peer.sni, "127.0.0.1");
        assert!(format!("{peer}").contains("127.0.0.1:1"), "{peer}");
    }
}
