//! The client's address: the socket peer, or an entry of `X-Forwarded-For` written by a
//! proxy we trust.

use std::net::IpAddr;

/// Why no client address could be found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAddrError {
    /// `X-Forwarded-For` has fewer entries than the trusted proxies must have written.
    TooFewEntries { needed: usize, found: usize },
    /// The trusted entry is not an IP address.
    NotAnAddress,
    /// No header to use and no socket peer address (a Unix socket).
    NoPeer,
}

impl std::fmt::Display for ClientAddrError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientAddrError::TooFewEntries { needed, found } => write!(
                f,
                "X-Forwarded-For has {found} {}, the trusted proxies write at least {needed}",
                if *found == 1 { "entry" } else { "entries" }
            ),
            ClientAddrError::NotAnAddress => {
                write!(
                    f,
                    "the client entry of X-Forwarded-For is not an IP address"
                )
            }
            ClientAddrError::NoPeer => write!(f, "the connection has no peer IP address"),
        }
    }
}

/// Finds the client address.
///
/// `forwarded_for` holds the values of every `X-Forwarded-For` header line in order. With
/// `trusted_hops` = N > 0 and the header present, the entries are split on commas and spaces
/// and the client is the entry just before the last N (those were added by our proxies; what
/// stands further left was sent by the client and is not trusted). With N = 0, or without the
/// header, the client is the socket peer.
pub fn client_addr(
    peer: Option<IpAddr>,
    forwarded_for: &[&[u8]],
    trusted_hops: usize,
) -> Result<IpAddr, ClientAddrError> {
    if trusted_hops == 0 || forwarded_for.is_empty() {
        return peer.ok_or(ClientAddrError::NoPeer);
    }
    let needed = trusted_hops + 1;
    // Walk from the right: only the last `needed` entries matter.
    let mut entries = forwarded_for
        .iter()
        .rev()
        .flat_map(|line| line.split(|b| *b == b',' || *b == b' ').rev())
        .filter(|e| !e.is_empty());
    let found = entries.by_ref().take(trusted_hops).count();
    let client = entries
        .next()
        .ok_or(ClientAddrError::TooFewEntries { needed, found })?;
    parse_entry(client).ok_or(ClientAddrError::NotAnAddress)
}

/// An address as proxies write it: `192.0.2.1`, `2001:db8::1` or `[2001:db8::1]`.
fn parse_entry(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?;
    let text = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_of_entries_reads_as_english() {
        let one = ClientAddrError::TooFewEntries {
            needed: 2,
            found: 1,
        };
        assert_eq!(
            one.to_string(),
            "X-Forwarded-For has 1 entry, the trusted proxies write at least 2"
        );
        let none = ClientAddrError::TooFewEntries {
            needed: 1,
            found: 0,
        };
        assert!(none
            .to_string()
            .starts_with("X-Forwarded-For has 0 entries,"));
    }

    const PEER: &str = "127.0.0.1";

    fn addr(xff: &[&str], hops: usize) -> Result<IpAddr, ClientAddrError> {
        let lines: Vec<&[u8]> = xff.iter().map(|s| s.as_bytes()).collect();
        client_addr(Some(PEER.parse().unwrap()), &lines, hops)
    }

    fn ip(s: &str) -> Result<IpAddr, ClientAddrError> {
        Ok(s.parse().unwrap())
    }

    #[test]
    fn without_the_header_the_peer_is_the_client() {
        assert_eq!(addr(&[], 1), ip(PEER));
        assert_eq!(client_addr(None, &[], 1), Err(ClientAddrError::NoPeer));
    }

    #[test]
    fn one_trusted_hop_takes_the_second_to_last_entry() {
        assert_eq!(addr(&["203.0.113.7,130.211.0.1"], 1), ip("203.0.113.7"));
        assert_eq!(
            addr(&["1.1.1.1, 203.0.113.7, 130.211.0.1"], 1),
            ip("203.0.113.7")
        );
        assert_eq!(
            addr(&["spoofed, 203.0.113.7 130.211.0.1"], 1),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn header_lines_are_joined_in_order() {
        assert_eq!(
            addr(&["9.9.9.9, 203.0.113.7", "130.211.0.1"], 1),
            ip("203.0.113.7")
        );
        assert_eq!(
            addr(&["203.0.113.7", "10.0.0.1", "10.0.0.2"], 2),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn zero_hops_ignores_the_header() {
        assert_eq!(addr(&["203.0.113.7, 130.211.0.1"], 0), ip(PEER));
    }

    #[test]
    fn ipv6_entries_with_and_without_brackets() {
        assert_eq!(addr(&["2001:db8::5, 10.0.0.1"], 1), ip("2001:db8::5"));
        assert_eq!(addr(&["[2001:db8::5], 10.0.0.1"], 1), ip("2001:db8::5"));
    }

    #[test]
    fn malformed_headers_are_errors() {
        assert_eq!(
            addr(&["203.0.113.7"], 1),
            Err(ClientAddrError::TooFewEntries {
                needed: 2,
                found: 1
            })
        );
        assert_eq!(
            addr(&[" , ,"], 1),
            Err(ClientAddrError::TooFewEntries {
                needed: 2,
                found: 0
            })
        );
        assert_eq!(
            addr(&["unknown, 10.0.0.1"], 1),
            Err(ClientAddrError::NotAnAddress)
        );
        assert_eq!(
            addr(&["fe80::1%eth0, 10.0.0.1"], 1),
            Err(ClientAddrError::NotAnAddress)
        );
        assert_eq!(
            addr(&["1.2.3.4:80, 10.0.0.1"], 1),
            Err(ClientAddrError::NotAnAddress)
        );
        let invalid_utf8: &[u8] = b"\xff\xfe, 10.0.0.1";
        assert_eq!(
            client_addr(None, &[invalid_utf8], 1),
            Err(ClientAddrError::NotAnAddress)
        );
    }
}
