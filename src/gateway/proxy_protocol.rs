//! PROXY protocol (v1 text and v2 binary, as HAProxy specifies them) on the listeners that
//! expect it: an L4 load balancer (AWS NLB, HAProxy `send-proxy-v2`) sends one header before
//! the client's bytes, naming the client it received the connection from. The header is
//! read here, before Pingora sees the connection, and only from a peer that
//! `client_address.trusted_proxies` lists; the source address it names is handed on to the
//! request phase (the connection's [`DeadlineStream`](super::slow_clients::DeadlineStream)
//! keeps it), the bytes after it go to the HTTP parser. Pingora 0.9 has no support of its own.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use log::warn;
use pingora_core::protocols::Stream;
use ppp::v1::Addresses as V1Addresses;
use ppp::v2::{Addresses as V2Addresses, Command};
use ppp::{HeaderResult, PartialResult};
use tokio::io::AsyncReadExt;

use crate::metrics;
use crate::routing::client_addr::{canonical, ClientAddressRules};

/// The v2 header's fixed start.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 header's start.
const V1_PREFIX: &[u8] = b"PROXY ";
/// Longest header read: a v1 line is at most 107 bytes; v2 TLVs (an NLB's endpoint id, a
/// TLS summary) stay well under this.
const MAX_HEADER: usize = 4096;

/// Why a connection to a PROXY protocol listener was closed; a metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The peer is not a trusted proxy: whatever it sends, it cannot name a client.
    Untrusted,
    /// The connection does not start with a PROXY header.
    Missing,
    /// It starts like one but is not a valid one (or is too long, or stops short).
    Invalid,
}

impl Refusal {
    /// Every reason, for the metric's series at 0.
    pub const ALL: [Refusal; 3] = [Refusal::Untrusted, Refusal::Missing, Refusal::Invalid];

    /// The metrics label.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Untrusted => "proxy_protocol_untrusted",
            Refusal::Missing => "proxy_protocol_missing",
            Refusal::Invalid => "proxy_protocol_invalid",
        }
    }
}

/// The listeners that expect PROXY headers and whom to take them from.
#[derive(Debug, Clone, Default)]
pub struct ProxyProtocol {
    listeners: Vec<SocketAddr>,
    rules: ClientAddressRules,
}

/// What a header said: the client's address (`None` for a load balancer's own connection:
/// v2 `LOCAL`, v1 `UNKNOWN`), and the bytes read past the header.
#[derive(Debug)]
pub struct Proxied {
    pub source: Option<IpAddr>,
    pub rest: Bytes,
}

impl ProxyProtocol {
    /// PROXY headers on `listeners`, believed from `rules.trusted_proxies`.
    pub fn new(listeners: Vec<SocketAddr>, rules: ClientAddressRules) -> ProxyProtocol {
        ProxyProtocol { listeners, rules }
    }

    /// Whether a connection accepted on `local` came through a PROXY protocol listener.
    /// Listener addresses are distinct (checked with the configuration), so the port and
    /// the address (or a wildcard of its family) tell which one. An IPv6 socket reports the
    /// local address of its IPv4 clients as IPv4-mapped IPv6, so the family of `local` is
    /// the family of the socket that accepted.
    pub fn expects(&self, local: Option<SocketAddr>) -> bool {
        let Some(local) = local else {
            return false;
        };
        self.listeners.iter().any(|l| {
            l.port() == local.port()
                && (l.ip() == local.ip()
                    || (l.ip().is_unspecified() && l.is_ipv6() == local.is_ipv6()))
        })
    }

    /// Reads the header of a connection from `peer` within `limit`.
    pub async fn read(
        &self,
        stream: &mut Stream,
        peer: Option<IpAddr>,
        limit: Duration,
    ) -> Result<Proxied, Refusal> {
        let peer = peer.map(canonical);
        if !peer.is_some_and(|p| self.rules.trusts(p)) {
            return Err(refuse(Refusal::Untrusted, peer, "not a trusted proxy"));
        }
        match tokio::time::timeout(limit, read_header(stream)).await {
            Ok(Ok(proxied)) => Ok(proxied),
            Ok(Err((refusal, why))) => Err(refuse(refusal, peer, &why)),
            Err(_) => Err(refuse(
                Refusal::Invalid,
                peer,
                &format!("no complete header within {limit:?} (client_timeouts.header)"),
            )),
        }
    }
}

/// Reads until a whole header is in; the bytes past it are kept for the HTTP parser.
async fn read_header(stream: &mut Stream) -> Result<Proxied, (Refusal, String)> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| (Refusal::Invalid, format!("read failed: {e}")))?;
        if n == 0 {
            let refusal = if buf.is_empty() {
                Refusal::Missing
            } else {
                Refusal::Invalid
            };
            return Err((refusal, "the connection ended before a whole header".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(parsed) = parse(&buf)? {
            return Ok(parsed);
        }
        if buf.len() > MAX_HEADER {
            return Err((
                Refusal::Invalid,
                format!("no header within {MAX_HEADER} bytes"),
            ));
        }
    }
}

/// A header at the start of `buf`: `None` while more bytes are needed.
fn parse(buf: &[u8]) -> Result<Option<Proxied>, (Refusal, String)> {
    let starts = |prefix: &[u8]| {
        let n = buf.len().min(prefix.len());
        buf[..n] == prefix[..n]
    };
    if !starts(V2_SIGNATURE) && !starts(V1_PREFIX) {
        return Err((
            Refusal::Missing,
            "the connection does not start with a PROXY header".into(),
        ));
    }
    let header = HeaderResult::parse(buf);
    if header.is_incomplete() {
        return Ok(None);
    }
    let (len, source) = match header {
        HeaderResult::V1(Ok(h)) => {
            let source = match h.addresses {
                V1Addresses::Tcp4(a) => Some(IpAddr::V4(a.source_address)),
                V1Addresses::Tcp6(a) => Some(IpAddr::V6(a.source_address)),
                V1Addresses::Unknown => None,
            };
            (h.header.len(), source)
        }
        HeaderResult::V2(Ok(h)) => {
            let source = match (h.command, h.addresses) {
                (Command::Proxy, V2Addresses::IPv4(a)) => Some(IpAddr::V4(a.source_address)),
                (Command::Proxy, V2Addresses::IPv6(a)) => Some(IpAddr::V6(a.source_address)),
                // LOCAL (the balancer's own health check), or no IP source: the peer.
                _ => None,
            };
            (h.len(), source)
        }
        HeaderResult::V1(Err(e)) => {
            return Err((Refusal::Invalid, format!("invalid v1 header: {e}")))
        }
        HeaderResult::V2(Err(e)) => {
            return Err((Refusal::Invalid, format!("invalid v2 header: {e}")))
        }
    };
    Ok(Some(Proxied {
        source: source.map(canonical),
        rest: Bytes::copy_from_slice(&buf[len..]),
    }))
}

/// Counts and logs a refused connection: at warn, but at most one line per reason every ten
/// seconds, so that a scan cannot flood the log (the metric counts every one).
fn refuse(refusal: Refusal, peer: Option<IpAddr>, why: &str) -> Refusal {
    metrics::CLIENT_ADDRESS_REFUSALS
        .with_label_values(&[refusal.reason()])
        .inc();
    static LAST: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];
    static SUPPRESSED: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];
    let slot = refusal as usize;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST[slot].load(Ordering::Relaxed);
    let turn = now >= last + LOG_EVERY_SECONDS
        && LAST[slot]
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
    if !turn {
        SUPPRESSED[slot].fetch_add(1, Ordering::Relaxed);
        return refusal;
    }
    let peer = peer.map_or_else(|| "a peer without an IP address".into(), |p| p.to_string());
    let also = match SUPPRESSED[slot].swap(0, Ordering::Relaxed) {
        0 => String::new(),
        n => format!(" ({n} more since the last such line)"),
    };
    match refusal {
        Refusal::Untrusted => warn!(
            "PROXY protocol listener: connection from {peer}, which client_address.trusted_proxies does not list, closed{also}"
        ),
        _ => warn!("PROXY protocol listener: connection from {peer} closed: {why}{also}"),
    }
    refusal
}

/// Seconds between two log lines of one refusal reason.
const LOG_EVERY_SECONDS: u64 = 10;

#[cfg(test)]
mod tests {
    use super::*;

    fn source(buf: &[u8]) -> (Option<IpAddr>, Vec<u8>) {
        let p = parse(buf).unwrap().unwrap();
        (p.source, p.rest.to_vec())
    }

    #[test]
    fn v1_and_v2_headers_name_the_source_and_leave_the_rest() {
        let (ip, rest) = source(b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 80\r\nGET /");
        assert_eq!(ip, Some("203.0.113.7".parse().unwrap()));
        assert_eq!(rest, b"GET /");
        let (ip, _) = source(b"PROXY TCP6 ::ffff:203.0.113.7 ::1 40000 80\r\n");
        assert_eq!(ip, Some("203.0.113.7".parse().unwrap()));
        assert_eq!(source(b"PROXY UNKNOWN\r\nGET").0, None);

        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[
            0x21, 0x11, 0, 12, 203, 0, 113, 7, 10, 0, 0, 1, 0x9c, 0x40, 0, 80,
        ]);
        v2.extend_from_slice(b"GET /");
        let (ip, rest) = source(&v2);
        assert_eq!(ip, Some("203.0.113.7".parse().unwrap()));
        assert_eq!(rest, b"GET /");
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(source(&local), (None, vec![]));
    }

    #[test]
    fn partial_missing_and_broken_headers_are_told_apart() {
        assert!(parse(b"PROX").unwrap().is_none());
        assert!(parse(b"PROXY TCP4 203.0.113.7").unwrap().is_none());
        assert!(parse(&V2_SIGNATURE[..7]).unwrap().is_none());
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\n").unwrap_err().0,
            Refusal::Missing
        );
        assert_eq!(
            parse(b"PROXY TCP4 not-an-address 10.0.0.1 1 2\r\n")
                .unwrap_err()
                .0,
            Refusal::Invalid
        );
        let mut bad = V2_SIGNATURE.to_vec();
        bad.extend_from_slice(&[0x31, 0x11, 0, 0]);
        assert_eq!(parse(&bad).unwrap_err().0, Refusal::Invalid);
    }

    #[test]
    fn listeners_are_matched_by_port_and_address() {
        let pp = ProxyProtocol::new(
            vec![
                "127.0.0.1:8081".parse().unwrap(),
                "[::]:8082".parse().unwrap(),
                "0.0.0.0:8083".parse().unwrap(),
            ],
            ClientAddressRules::default(),
        );
        let yes = [
            "127.0.0.1:8081",
            "[::ffff:127.0.0.1]:8082",
            "[::1]:8082",
            "10.1.1.1:8083",
        ];
        // Beside `[::]:8082`, a plain `0.0.0.0:8082` would take the IPv4 clients itself.
        let no = [
            "127.0.0.2:8081",
            "127.0.0.1:8080",
            "[::1]:8083",
            "10.1.1.1:8082",
        ];
        for a in yes {
            assert!(pp.expects(Some(a.parse().unwrap())), "{a}");
        }
        for a in no {
            assert!(!pp.expects(Some(a.parse().unwrap())), "{a}");
        }
        assert!(!pp.expects(None));
    }
}
