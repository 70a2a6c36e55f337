//! Finding the client from forwarding headers: never a panic, every address comes out in its
//! canonical form (no IPv4-mapped IPv6), and the headers count only when the peer is
//! trusted (or, with `trusted_proxy_hops`, from anyone).
#![no_main]

use std::net::IpAddr;

use archeio::routing::client_addr::{
    find_client, ClientAddressRules, Connection, ForwardingHeader,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let lines: Vec<&[u8]> = rest.split(|b| *b == b'\n').collect();
    let header = if control & 1 == 0 {
        ForwardingHeader::XForwardedFor
    } else {
        ForwardingHeader::Forwarded
    };
    let trusted_hops = usize::from((control >> 1) % 3);
    let rules = ClientAddressRules {
        trusted_proxies: if trusted_hops == 0 && control & 8 != 0 {
            vec!["10.0.0.0/8".parse().unwrap(), "2001:db8::/32".parse().unwrap()]
        } else {
            Vec::new()
        },
        header,
        trusted_hops,
    };
    let peer: IpAddr = match (control >> 4) % 3 {
        0 => "10.1.2.3".parse().unwrap(),
        1 => "::ffff:10.1.2.3".parse().unwrap(),
        _ => "192.0.2.1".parse().unwrap(),
    };
    let proxied = (control & 0x80 != 0).then(|| "::ffff:203.0.113.7".parse().unwrap());
    let conn = Connection {
        peer: Some(peer),
        proxied,
    };
    if let Ok(ip) = find_client(&rules, conn, &lines) {
        assert_eq!(ip, ip.to_canonical(), "not canonical: {ip}");
        if !rules.reads_header() || !rules.trusts(peer.to_canonical()) && trusted_hops == 0 {
            assert_eq!(ip, peer.to_canonical(), "an untrusted peer named {ip}");
        }
    }
});
