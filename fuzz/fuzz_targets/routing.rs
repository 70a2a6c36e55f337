//! The routing decision on arbitrary methods, targets and `X-Forwarded-For` lines, in both
//! modes: it must not panic, and every redirect must go to a configured host.
#![no_main]

use std::sync::OnceLock;

use archeio::config::{ArcheioConfig, Cloud, CustomRange, Mode, RangesConfig};
use archeio::ranges::RangeTable;
use archeio::routing::{decide, Answer, Decision, Request, Routes};
use archeio::settings::Settings;
use libfuzzer_sys::fuzz_target;

struct Fixture {
    redirect: Routes,
    passthrough: Routes,
    ranges: RangeTable,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let routes = |mode| {
            let mut cfg = ArcheioConfig::default();
            cfg.mode = mode;
            cfg.upstream.endpoints = vec!["https://a.example".into(), "https://b.example".into()];
            cfg.signature_upstream = Some("https://sig.example".into());
            Settings::from_config(&cfg, "fuzz", |_| None)
                .unwrap()
                .routes
        };
        let ranges = RangeTable::load(&RangesConfig {
            embedded: false,
            custom: vec![
                CustomRange {
                    cidr: "10.0.0.0/8".parse().unwrap(),
                    cloud: Cloud::Aws,
                    region: "us-east-1".into(),
                },
                CustomRange {
                    cidr: "192.0.2.0/24".parse().unwrap(),
                    cloud: Cloud::Gcp,
                    region: "g".into(),
                },
                CustomRange {
                    cidr: "2001:db8::/32".parse().unwrap(),
                    cloud: Cloud::Aws,
                    region: "nowhere".into(),
                },
            ],
            ..RangesConfig::default()
        })
        .unwrap();
        Fixture {
            redirect: routes(Mode::Redirect),
            passthrough: routes(Mode::Passthrough),
            ranges,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    // Layout: method \n target \n xff-line \n xff-line ...; first byte picks peer and choice.
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.split(|b| *b == b'\n');
    let method = std::str::from_utf8(parts.next().unwrap_or_default()).unwrap_or("GET");
    let target = parts.next().unwrap_or_default();
    let lines: Vec<&[u8]> = parts.collect();
    let peer = match control % 3 {
        0 => Some("10.1.2.3".parse().unwrap()),
        1 => Some("2001:db8::1".parse().unwrap()),
        _ => None,
    };
    for routes in [&f.redirect, &f.passthrough] {
        let req = Request {
            method,
            target,
            peer,
            forwarded_for: &lines,
            upstream: (control / 3) as usize % 3,
        };
        let reply = match decide(&req, routes, &f.ranges) {
            Decision::Reply(r) => r,
            Decision::CheckMirror(c) => {
                assert!(c.mirror_url.starts_with("https://"));
                c.decide(control & 1 == 0)
            }
        };
        match reply.answer {
            Answer::Redirect { location, .. } => {
                let allowed = routes
                    .upstreams
                    .iter()
                    .chain(routes.signature_upstream.iter())
                    .chain([
                        &routes.info_url,
                        &routes.privacy_url,
                        &routes.default_mirror,
                    ])
                    .chain(routes.mirrors.values())
                    .any(|base| location.starts_with(base.as_str()));
                assert!(allowed, "redirect outside the configured hosts: {location}");
                assert!(!location.contains(['\r', '\n', ' ']), "{location:?}");
            }
            Answer::Proxy { path, .. } => {
                assert!(path.starts_with(&routes.upstream_prefix));
                assert!(!path.contains(['\r', '\n', ' ']), "{path:?}");
                // The query is the upstream's to read; the path must not climb.
                let path = &path[..path.find('?').unwrap_or(path.len())];
                assert!(
                    !path.contains("/../") && !path.contains("/./") && !path.contains("//"),
                    "{path:?}"
                );
            }
            Answer::ApiVersion | Answer::Error { .. } => {}
        }
    }
});
