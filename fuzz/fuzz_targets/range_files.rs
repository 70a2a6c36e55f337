//! Range documents in both formats: never a panic, and a document that loads gives a table
//! whose lookups do not panic either.
#![no_main]

use archeio::routing::ranges::{Format, RangeTable};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for format in [Format::Aws, Format::Gcp] {
        let mut table = RangeTable::default();
        if table.add(format, data).is_ok() {
            for ip in ["10.0.0.1", "::1", "255.255.255.255", "::ffff:1.2.3.4"] {
                let _ = table.lookup(ip.parse().unwrap());
            }
        }
    }
});
