//! Range documents in every format, with and without a configured region: never a panic, and
//! a document that loads gives a table whose lookups do not panic either.
#![no_main]

use archeio::routing::ranges::{Format, Origin, RangeTable, Source};
use libfuzzer_sys::fuzz_target;

const FORMATS: [Format; 6] = [
    Format::Aws,
    Format::Gcp,
    Format::Azure,
    Format::Oracle,
    Format::Geofeed,
    Format::Cidrs,
];

fuzz_target!(|data: &[u8]| {
    for format in FORMATS {
        for region in [None, Some("r".into())] {
            let source = Source {
                location: "fuzz".into(),
                origin: Origin::File,
                format,
                provider: "p".into(),
                region,
            };
            let mut table = RangeTable::default();
            if table.add(&source, data).is_ok() {
                for ip in ["10.0.0.1", "::1", "255.255.255.255", "::ffff:1.2.3.4"] {
                    let _ = table.lookup(ip.parse().unwrap());
                }
            }
        }
    }
});
