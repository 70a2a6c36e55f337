//! Configuration text: parsing and validation never panic; every error names the source.
#![no_main]

use archeio::config::file::ArcheioConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ArcheioConfig::from_yaml(text, "fuzz.yaml") {
        Ok(cfg) => {
            if let Err(e) = cfg.check("fuzz.yaml", |_| None) {
                assert!(e.to_string().starts_with("fuzz.yaml: archeio."), "{e}");
            }
        }
        Err(e) => assert!(e.to_string().starts_with("fuzz.yaml: "), "{e}"),
    }
});
