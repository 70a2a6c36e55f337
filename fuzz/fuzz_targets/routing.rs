//! The routing decision on arbitrary methods, targets and `X-Forwarded-For` lines, in both
//! modes: it must not panic, every redirect must go to a configured host, and every path sent
//! to the upstream or a mirror must be a pull endpoint of the distribution grammar (checked
//! here with the spec's regular expressions, independently of the gateway's parser).
#![no_main]

use std::sync::OnceLock;

use archeio::config::file::{ArcheioConfig, Mode};
use archeio::routing::client_addr::{find_client, ClientAddressRules, Connection};
use archeio::routing::ranges::{CustomRange, RangeSources, RangeTable};
use archeio::routing::{decide, Answer, Decision, Places, Request, Routes};
use libfuzzer_sys::fuzz_target;
use regex::Regex;

struct Fixture {
    redirect: Routes,
    passthrough: Routes,
    ranges: RangeTable,
    /// A pull endpoint after `/v2`: `/<name>/manifests/<tag|digest>`, `/<name>/blobs/<digest>`,
    /// `/<name>/tags/list`, `/<name>/referrers/<digest>`.
    endpoint: Regex,
    /// A digest alone (what follows a mirror's blob path).
    digest: Regex,
}

const NAME: &str =
    r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*";
const TAG: &str = r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}";
const DIGEST: &str = r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+";

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let routes = |mode| {
            let mut cfg = ArcheioConfig::default();
            cfg.mode = mode;
            cfg.upstream.endpoints = vec!["https://a.example".into(), "https://b.example".into()];
            cfg.signature_upstream = Some("https://sig.example".into());
            cfg.check("fuzz", |_| None).unwrap().routes
        };
        let sources = RangeSources {
            custom: vec![
                CustomRange {
                    cidr: "10.0.0.0/8".parse().unwrap(),
                    provider: "aws".into(),
                    region: "us-east-1".into(),
                },
                CustomRange {
                    cidr: "192.0.2.0/24".parse().unwrap(),
                    provider: "gcp".into(),
                    region: "g".into(),
                },
                CustomRange {
                    cidr: "2001:db8::/32".parse().unwrap(),
                    provider: "aws".into(),
                    region: "nowhere".into(),
                },
            ],
            documents: Vec::new(),
        };
        let ranges = RangeTable::build(&sources, &[]).unwrap();
        Fixture {
            redirect: routes(Mode::Redirect),
            passthrough: routes(Mode::Passthrough),
            ranges,
            endpoint: Regex::new(&format!(
                "^/{NAME}/(?:manifests/(?:{TAG}|{DIGEST})|blobs/{DIGEST}|tags/list|referrers/{DIGEST})$"
            ))
            .unwrap(),
            digest: Regex::new(&format!("^{DIGEST}$")).unwrap(),
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
    // Behind Google's load balancer (`client, lb`): the header's entries are read.
    let rules = ClientAddressRules {
        trusted_hops: 1,
        ..ClientAddressRules::default()
    };
    let client = find_client(&rules, Connection { peer, proxied: None }, &lines);
    for routes in [&f.redirect, &f.passthrough] {
        let req = Request {
            method,
            target,
            client,
            upstream: (control / 3) as usize % 3,
            has_body: control & 2 != 0,
            grants: archeio::routing::Grants::Unchecked,
        };
        let reply = match decide(&req, routes, Places::ranges_only(&f.ranges)) {
            Decision::Reply(r) => r,
            Decision::CheckMirrors(chain) => {
                assert!(!chain.candidates.is_empty());
                for c in &chain.candidates {
                    assert!(c.location.starts_with("https://"), "{c:?}");
                }
                let found = (control & 1 == 0).then(|| (0, chain.candidates[0].location.clone()));
                chain.decide(found)
            }
        };
        match reply.answer {
            Answer::Redirect { location, .. } => {
                let allowed = routes
                    .upstreams
                    .iter()
                    .chain(routes.signature_upstream.iter())
                    .map(String::as_str)
                    .chain([routes.info_url.as_str(), routes.privacy_url.as_str()])
                    .chain(routes.policy.mirrors.iter().map(|m| &*m.base))
                    .any(|base| location.starts_with(base));
                assert!(allowed, "redirect outside the configured hosts: {location}");
                assert!(!location.contains(['\r', '\n', ' ']), "{location:?}");
                let upstream = routes
                    .upstreams
                    .iter()
                    .chain(routes.signature_upstream.iter())
                    .find(|base| location.starts_with(base.as_str()));
                if let Some(base) = upstream {
                    let rest = &location[base.len()..];
                    let rest = &rest[..rest.find('?').unwrap_or(rest.len())];
                    assert!(f.endpoint.is_match(rest), "not a pull endpoint: {location}");
                }
                let mirror = routes
                    .policy
                    .mirrors
                    .iter()
                    .find(|m| location.starts_with(&format!("{}{}", m.base, m.blob_prefix)));
                if let Some(m) = mirror {
                    let digest = &location[m.base.len() + m.blob_prefix.len()..];
                    let digest = &digest[..digest.len() - m.blob_suffix.len()];
                    assert!(f.digest.is_match(digest), "not a digest: {location}");
                }
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
                let rest = &path[routes.upstream_prefix.len()..];
                assert!(f.endpoint.is_match(rest), "not a pull endpoint: {path}");
            }
            Answer::ProxyMirror { .. } => panic!("archeio's policy never proxies a mirror"),
            Answer::TooManyRequests { .. } => panic!("the decision never rate-limits"),
            Answer::Token { .. } | Answer::Unauthorized { .. } => {
                panic!("anonymous clients are never asked for credentials")
            }
            Answer::ApiVersion | Answer::Error { .. } => {}
        }
    }
});
