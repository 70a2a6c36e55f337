//! `archeio -t --explain`: what the gateway would answer a sample request, and why, so that
//! an operator can try a policy before deploying it. The mirror checks are not made: a
//! chain is shown with every mirror it would ask and the answer when none holds the blob.

use std::fmt::Write;
use std::net::IpAddr;

use super::client_addr::canonical;
use super::geo::{GeoFacts, CONTINENTS};
use super::{decide_by_rule, Answer, Decision, Places, Request, Routes, Target};

/// One sample: a client address and a request target (`/v2/...`), fetched with `GET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The client, as the gateway would find it (after `X-Forwarded-For`).
    pub client: IpAddr,
    /// The request target.
    pub target: String,
}

impl Sample {
    /// Parses `ADDRESS TARGET`; blank lines and `#` comments are `Ok(None)`.
    pub fn parse(line: &str) -> Result<Option<Sample>, String> {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return Ok(None);
        }
        let mut words = line.split_whitespace();
        let (Some(client), Some(target), None) = (words.next(), words.next(), words.next()) else {
            return Err(format!("expected `ADDRESS TARGET`, got {line:?}"));
        };
        let client = client
            .parse()
            .map_err(|_| format!("{client:?} is not an IP address"))?;
        Ok(Some(Sample {
            client,
            target: target.to_string(),
        }))
    }
}

/// The explanation of `sample`: the client's placement (cloud range; country, continent
/// and network when geo databases are loaded), the rule that matched, the answer.
pub fn explain(sample: &Sample, routes: &Routes, places: Places<'_>) -> String {
    // The sample names the client itself, in the form the gateway would see it in.
    let client = canonical(sample.client);
    let req = Request {
        method: "GET",
        target: sample.target.as_bytes(),
        client: Ok(client),
        upstream: 0,
        has_body: false,
        grants: crate::routing::Grants::Unchecked,
    };
    let (decision, rule) = decide_by_rule(&req, routes, places);
    let mut out = format!("{client} GET {}\n", sample.target);
    let placement = match places.ranges.lookup(client) {
        Some(p) => format!("{} {}", p.provider, p.region),
        None => "none (in no range)".into(),
    };
    let _ = writeln!(out, "  placement: {placement}");
    if !places.geo.is_empty() {
        let _ = writeln!(out, "  {}", geo_facts(&places.geo.lookup(client)));
    }
    let rule = match rule {
        Some(i) => format!("#{} {:?}", i + 1, &*routes.policy.rules[i].name),
        None => "none".into(),
    };
    let _ = writeln!(out, "  rule: {rule}");
    match decision {
        Decision::Reply(reply) => {
            let (said, route) = (answer(&reply.answer), reply.route.as_str());
            // A redirect names its target already, often the route's own name.
            match said.ends_with(&format!("({route})")) {
                true => _ = writeln!(out, "  answer: {said}"),
                false => _ = writeln!(out, "  answer: {said} (route {route})"),
            }
        }
        Decision::CheckMirrors(chain) => {
            let how = match chain.delivery {
                super::policy::Delivery::Redirect => "307 to",
                super::policy::Delivery::Proxy => "proxied from",
            };
            if let Some(path) = &chain.confirm {
                let _ = writeln!(
                    out,
                    "  only if the upstream's HEAD {path} says this repository holds the blob \
                     (the policy restricts repositories):"
                );
            }
            for (n, c) in chain.candidates.iter().enumerate() {
                let mirror = &routes.policy.mirrors[c.mirror];
                let at = if mirror.signed {
                    format!("a presigned URL for object {}", c.location)
                } else {
                    c.location.clone()
                };
                let _ = writeln!(
                    out,
                    "  {} {}: {how} {at}",
                    if n == 0 {
                        "if the blob is at"
                    } else {
                        "else if at"
                    },
                    target(&c.target),
                );
            }
            let _ = writeln!(out, "  else: {}", answer(&chain.fallback));
        }
    }
    out
}

/// `country: DE, continent: EU (Europe), network: AS3320`, with `unknown` for what the
/// databases do not say.
fn geo_facts(f: &GeoFacts) -> String {
    let country = f.country.map_or("unknown".into(), |c| c.to_string());
    let continent = f.continent.map_or("unknown".into(), |c| {
        match CONTINENTS.iter().find(|(code, _)| *code == c.as_str()) {
            Some((_, name)) => format!("{c} ({name})"),
            None => c.to_string(),
        }
    });
    let network = f.asn.map_or("unknown".into(), |a| format!("AS{a}"));
    format!("country: {country}, continent: {continent}, network: {network}")
}

fn target(t: &Target) -> String {
    match t {
        Target::Mirror(name) => format!("mirror {name:?}"),
        Target::DefaultMirror => "the default mirror".into(),
        other => other.kind().into(),
    }
}

fn answer(a: &Answer) -> String {
    match a {
        Answer::Redirect {
            location,
            target: t,
        } => format!("307 to {location} ({})", target(t)),
        Answer::ApiVersion => "200 (API version check)".into(),
        Answer::Error {
            status,
            code,
            message,
            ..
        } => format!("{status} {code}: {message}"),
        Answer::TooManyRequests { retry_after, .. } => {
            format!("429 TOOMANYREQUESTS: retry after {retry_after}s")
        }
        Answer::Proxy { path, .. } => format!("proxied from the upstream: {path}"),
        Answer::ProxyMirror { url, target: t, .. } => {
            format!("proxied from {}: {url}", target(t))
        }
        Answer::Token { .. } => "the token endpoint".into(),
        Answer::Unauthorized { challenge } => format!("401 UNAUTHORIZED ({challenge})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::file::ArcheioConfig;
    use crate::routing::ranges::{RangeSources, RangeTable};

    #[test]
    fn samples_parse_and_comments_are_skipped() {
        assert_eq!(Sample::parse("  # a comment").unwrap(), None);
        assert_eq!(Sample::parse("").unwrap(), None);
        let s = Sample::parse("3.4.12.4 /v2/pause/manifests/3.10").unwrap();
        assert_eq!(
            s,
            Some(Sample {
                client: "3.4.12.4".parse().unwrap(),
                target: "/v2/pause/manifests/3.10".into()
            })
        );
        assert!(Sample::parse("3.4.12.4")
            .unwrap_err()
            .contains("ADDRESS TARGET"));
        assert!(Sample::parse("host /v2/")
            .unwrap_err()
            .contains("not an IP address"));
    }

    #[test]
    fn the_default_policy_is_explained_rule_by_rule() {
        let routes = ArcheioConfig::default()
            .check("t", |_| None)
            .unwrap()
            .routes;
        let ranges = RangeTable::build(&RangeSources::default(), &[]).unwrap();
        let sha = format!("sha256:{}", "a".repeat(64));
        let blob = format!("/v2/pause/blobs/{sha}");
        // eu-west-1 in the embedded AWS snapshot.
        let aws = explain(
            &Sample::parse(&format!("3.4.12.4 {blob}")).unwrap().unwrap(),
            &routes,
            Places::ranges_only(&ranges),
        );
        assert!(aws.contains("placement: aws eu-west-1"), "{aws}");
        assert!(aws.contains("rule: #2 \"regional-mirror\""), "{aws}");
        assert!(
            aws.contains(&format!(
                "if the blob is at mirror \"eu-west-1\": 307 to https://prod-registry-k8s-io-eu-west-1.s3.dualstack.eu-west-1.amazonaws.com/containers/images/{sha}"
            )),
            "{aws}"
        );
        assert!(
            aws.contains(&format!(
                "else: 307 to https://us-central1-docker.pkg.dev/v2/k8s-artifacts-prod/images/pause/blobs/{sha} (upstream)"
            )),
            "{aws}"
        );
        // africa-south1 in the embedded GCP snapshot.
        let gcp = explain(
            &Sample::parse(&format!("34.1.208.5 {blob}"))
                .unwrap()
                .unwrap(),
            &routes,
            Places::ranges_only(&ranges),
        );
        assert!(gcp.contains("placement: gcp africa-south1"), "{gcp}");
        assert!(
            gcp.contains("rule: #1 \"gcp-clients-to-upstream\""),
            "{gcp}"
        );
        assert!(
            gcp.contains("answer: 307 to https://us-central1-docker.pkg.dev/"),
            "{gcp}"
        );
        let manifest = explain(
            &Sample::parse("192.0.2.1 /v2/pause/manifests/3.10")
                .unwrap()
                .unwrap(),
            &routes,
            Places::ranges_only(&ranges),
        );
        assert!(manifest.contains("placement: none"), "{manifest}");
        assert!(manifest.contains("rule: none"), "{manifest}");
        assert!(manifest.contains("(upstream)"), "{manifest}");
        assert!(!manifest.contains("(upstream) (upstream)"), "{manifest}");
    }
}
