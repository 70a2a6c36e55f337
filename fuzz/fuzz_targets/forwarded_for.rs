//! `X-Forwarded-For` parsing: never a panic; an address found is one of the entries.
#![no_main]

use archeio::routing::client_addr::client_addr;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&hops, rest)) = data.split_first() else {
        return;
    };
    let lines: Vec<&[u8]> = rest.split(|b| *b == b'\n').collect();
    let peer = Some("127.0.0.1".parse().unwrap());
    if let Ok(ip) = client_addr(peer, &lines, usize::from(hops % 4)) {
        let _ = ip.to_canonical();
    }
});
