//! The routing policy: ordered rules, first match wins, that send a registry request to the
//! upstream, along a chain of blob mirrors, or nowhere (`404`). A rule matches on the
//! client's placement (provider, region; country, continent, network), its address, the
//! repository and the kind of request; what the rule says is turned into an answer by `decide_api`. With no rules
//! configured, [`Policy::archeio`] is archeio's own behaviour as two rules.

use std::collections::HashMap;
use std::net::IpAddr;

use globset::{Candidate, GlobSet, GlobSetBuilder};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::geo::{Code, GeoFacts};
use super::ranges::Placement;

/// What a registry request asks for; rules match on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `/v2/<name>/blobs/<digest>`.
    Blob,
    /// `/v2/<name>/manifests/<reference>`, other than a signature tag.
    Manifest,
    /// `/v2/<name>/tags/list`.
    TagList,
    /// `/v2/<name>/referrers/<digest>`.
    Referrers,
    /// A cosign signature or attestation tag (`sha256-<hex>.sig|.att`).
    Signature,
}

impl Kind {
    /// Every kind, with the name a rule gives it.
    pub const NAMES: [(&'static str, Kind); 5] = [
        ("blob", Kind::Blob),
        ("manifest", Kind::Manifest),
        ("tag_list", Kind::TagList),
        ("referrers", Kind::Referrers),
        ("signature", Kind::Signature),
    ];

    /// The kind a rule names `name`.
    pub fn named(name: &str) -> Option<Kind> {
        Kind::NAMES
            .iter()
            .find_map(|(n, k)| (*n == name).then_some(*k))
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A set of [`Kind`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kinds(u8);

impl Kinds {
    /// Every kind.
    pub const ALL: Kinds = Kinds(0b1_1111);

    /// Exactly `kinds`.
    pub fn of(kinds: &[Kind]) -> Kinds {
        Kinds(kinds.iter().fold(0, |set, k| set | k.bit()))
    }

    /// Whether `kind` is in the set.
    pub fn contains(self, kind: Kind) -> bool {
        self.0 & kind.bit() != 0
    }

    /// Whether the set holds only blobs.
    pub fn only_blobs(self) -> bool {
        self.0 == Kind::Blob.bit()
    }

    /// Whether every kind of `other` is one of these.
    pub fn covers(self, other: Kinds) -> bool {
        other.0 & !self.0 == 0
    }
}

/// How a rule's answer reaches the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    /// A `307` to where the content is.
    Redirect,
    /// The gateway fetches it and streams it to the client.
    Proxy,
}

/// A link of a mirror chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// A mirror by its index in [`Policy::mirrors`].
    Mirror(usize),
    /// The mirror of the client's region from the region table, else the default mirror.
    Regional,
}

/// What a matching rule does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// To the upstream (redirected or proxied as the rule's delivery or the mode says).
    Upstream,
    /// `404` with an OCI error: a repository this gateway does not serve.
    Deny,
    /// Blobs: the first mirror of the chain that holds the blob, else the upstream.
    Mirrors(Box<[Link]>),
}

/// One policy rule. Each condition that is set must hold; a list condition holds when any
/// of its entries does.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Name in `archeio -t` explanations.
    pub name: Box<str>,
    /// Request kinds matched.
    pub kinds: Kinds,
    /// Providers of the client's placement; empty: any (also no placement).
    pub providers: Box<[Box<str>]>,
    /// Region globs of the client's placement; `None`: any.
    pub regions: Option<GlobSet>,
    /// Networks of the client's address; empty: any.
    pub cidrs: Box<[IpNet]>,
    /// Countries of the client (ISO 3166-1 alpha-2), by the geo databases; empty: any.
    pub countries: Box<[Code]>,
    /// Continents of the client, by the geo databases; empty: any.
    pub continents: Box<[Code]>,
    /// Autonomous systems of the client's network, by the geo databases; empty: any.
    pub asns: Box<[u32]>,
    /// Repository globs (`*` stays within a path segment, `**` crosses them); `None`: any.
    pub repositories: Option<GlobSet>,
    /// What it does.
    pub action: Action,
    /// How the answer is delivered; `None`: mirrors are redirected to, the upstream is
    /// redirected to or proxied as the mode says.
    pub delivery: Option<Delivery>,
}

impl Rule {
    /// A rule matching every request of `kinds`.
    pub fn new(name: &str, kinds: Kinds, action: Action) -> Rule {
        Rule {
            name: name.into(),
            kinds,
            providers: Box::new([]),
            regions: None,
            cidrs: Box::new([]),
            countries: Box::new([]),
            continents: Box::new([]),
            asns: Box::new([]),
            repositories: None,
            action,
            delivery: None,
        }
    }

    /// Whether the rule looks at the client: then the client's address must be known.
    pub fn needs_client(&self) -> bool {
        !self.providers.is_empty()
            || self.regions.is_some()
            || !self.cidrs.is_empty()
            || self.needs_geo()
    }

    /// Whether the rule looks at the geo databases' facts.
    pub fn needs_geo(&self) -> bool {
        !self.countries.is_empty() || !self.continents.is_empty() || !self.asns.is_empty()
    }

    /// Whether the request's own facts (kind and repository) match. `repository` is made a
    /// glob candidate once, by the first rule with repository globs, for all later ones.
    fn matches_request<'r>(
        &self,
        kind: Kind,
        repository: &'r str,
        candidate: &mut Option<Candidate<'r>>,
    ) -> bool {
        self.kinds.contains(kind)
            && self.repositories.as_ref().is_none_or(|g| {
                g.is_match_candidate(candidate.get_or_insert_with(|| Candidate::new(repository)))
            })
    }

    /// Whether the client matches; `client` is its address and placement. Its region is
    /// made a glob candidate once, as the repository is, and its geo facts are looked up
    /// (`geo_of`) once, by the first rule that asks.
    fn matches_client<'p>(
        &self,
        ip: IpAddr,
        placement: Option<&'p Placement>,
        region: &mut Option<Candidate<'p>>,
        geo: &mut Option<GeoFacts>,
        geo_of: &impl Fn(IpAddr) -> GeoFacts,
    ) -> bool {
        if !self.providers.is_empty()
            && !placement.is_some_and(|p| self.providers.iter().any(|n| **n == *p.provider))
        {
            return false;
        }
        if let Some(regions) = &self.regions {
            let matched = placement.is_some_and(|p| {
                regions.is_match_candidate(region.get_or_insert_with(|| Candidate::new(&*p.region)))
            });
            if !matched {
                return false;
            }
        }
        if !(self.cidrs.is_empty() || self.cidrs.iter().any(|net| net.contains(&ip))) {
            return false;
        }
        if !self.needs_geo() {
            return true;
        }
        let facts = *geo.get_or_insert_with(|| geo_of(ip));
        let one_of = |list: &[Code], fact: Option<Code>| {
            list.is_empty() || fact.is_some_and(|f| list.contains(&f))
        };
        one_of(&self.countries, facts.country)
            && one_of(&self.continents, facts.continent)
            && (self.asns.is_empty() || facts.asn.is_some_and(|a| self.asns.contains(&a)))
    }
}

/// A blob mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// Its name: a region of the region table, `default`, or a name from `mirrors.named`.
    pub name: Box<str>,
    /// Base URL of a public mirror; empty for a signed one (its URLs come from the signer).
    pub base: Box<str>,
    /// Blob location under the base URL (or the object key), before the digest.
    pub blob_prefix: Box<str>,
    /// The same, after the digest (usually empty).
    pub blob_suffix: Box<str>,
    /// URLs are presigned by the gateway: the decision gives the object key.
    pub signed: bool,
}

impl Mirror {
    /// Where the mirror keeps the blob `digest`: the URL of a public mirror, the object key
    /// of a signed one.
    pub fn location(&self, digest: &str) -> String {
        let mut at = String::with_capacity(
            self.base.len() + self.blob_prefix.len() + digest.len() + self.blob_suffix.len(),
        );
        at.push_str(&self.base);
        at.push_str(&self.blob_prefix);
        at.push_str(digest);
        at.push_str(&self.blob_suffix);
        at
    }
}

/// The rules and the mirrors they name.
#[derive(Debug, Clone)]
pub struct Policy {
    /// In order; the first that matches decides. Requests no rule matches go upstream.
    pub rules: Vec<Rule>,
    /// Every mirror: the region table's, the default (at [`Policy::default_mirror`]) and the
    /// named ones.
    pub mirrors: Vec<Mirror>,
    /// Region to its mirror's index.
    pub regions: HashMap<Box<str>, usize>,
    /// Index of the default mirror.
    pub default_mirror: usize,
    /// Globs of the repositories served; `None`: every repository.
    pub known_repositories: Option<GlobSet>,
}

impl Policy {
    /// archeio's policy: GCP clients' blobs go to the upstream, every other client's to its
    /// region's mirror or else the default one; the rest to the upstream.
    pub fn archeio_rules() -> Vec<Rule> {
        let blobs = Kinds::of(&[Kind::Blob]);
        let mut gcp = Rule::new("gcp-clients-to-upstream", blobs, Action::Upstream);
        gcp.providers = Box::new(["gcp".into()]);
        vec![
            gcp,
            Rule::new(
                "regional-mirror",
                blobs,
                Action::Mirrors(Box::new([Link::Regional])),
            ),
        ]
    }

    /// Whether `repository` is served.
    pub fn knows(&self, repository: &str) -> bool {
        self.known_repositories
            .as_ref()
            .is_none_or(|g| g.is_match(repository))
    }

    /// Some repositories are not served (a `deny` rule or a list of known ones): a blob,
    /// which mirrors hold by digest alone, then needs the upstream's word that the named
    /// repository holds it.
    pub fn restricts_repositories(&self) -> bool {
        self.known_repositories.is_some() || self.rules.iter().any(|r| r.action == Action::Deny)
    }

    /// The mirror a regional link stands for, for a client placed in `region`.
    pub fn regional(&self, region: Option<&str>) -> usize {
        region
            .and_then(|r| self.regions.get(r))
            .copied()
            .unwrap_or(self.default_mirror)
    }
}

/// The client as far as the rules look at it, found once and only when a rule asks.
pub(super) struct Client<'t> {
    /// The address, or why it could not be found.
    pub address: Result<IpAddr, String>,
    /// The cloud range it is in.
    pub placement: Option<&'t Placement>,
    /// Its country, continent and network, once a rule asked.
    pub geo: Option<GeoFacts>,
}

/// The index of the first rule that matches, or why the client could not be placed.
/// `client` is called at most once, for the first rule that looks at the client, and
/// `geo_of` at most once, for the first that looks at its geo facts.
pub(super) fn first_match<'t>(
    rules: &[Rule],
    kind: Kind,
    repository: &str,
    client: &mut Option<Client<'t>>,
    find_client: impl Fn() -> Client<'t>,
    geo_of: impl Fn(IpAddr) -> GeoFacts,
) -> Result<Option<usize>, String> {
    let (mut candidate, mut region) = (None, None);
    for (i, rule) in rules.iter().enumerate() {
        if !rule.matches_request(kind, repository, &mut candidate) {
            continue;
        }
        if rule.needs_client() {
            let c = client.get_or_insert_with(&find_client);
            let ip = c.address.clone()?;
            if !rule.matches_client(ip, c.placement, &mut region, &mut c.geo, &geo_of) {
                continue;
            }
        }
        return Ok(Some(i));
    }
    Ok(None)
}

/// Compiles globs (`*` within a path segment, `**` across, `?`, `[...]`, `{a,b}`).
pub fn glob_set(globs: &[String]) -> Result<GlobSet, String> {
    let mut set = GlobSetBuilder::new();
    for g in globs {
        let glob = globset::GlobBuilder::new(g)
            .literal_separator(true)
            .build()
            .map_err(|e| format!("{g:?} is not a glob: {}", e.kind()))?;
        set.add(glob);
    }
    set.build().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(provider: &str, region: &str) -> Placement {
        Placement {
            provider: provider.into(),
            region: region.into(),
        }
    }

    fn no_geo(_: IpAddr) -> GeoFacts {
        GeoFacts::default()
    }

    fn rule(kinds: &[Kind]) -> Rule {
        Rule::new(
            "r",
            if kinds.is_empty() {
                Kinds::ALL
            } else {
                Kinds::of(kinds)
            },
            Action::Upstream,
        )
    }

    fn matches(r: &Rule, kind: Kind, repo: &str, ip: &str, p: Option<&Placement>) -> bool {
        let mut client = None;
        let find = || Client {
            address: Ok(ip.parse().unwrap()),
            placement: p,
            geo: None,
        };
        first_match(
            std::slice::from_ref(r),
            kind,
            repo,
            &mut client,
            find,
            no_geo,
        )
        .unwrap()
            == Some(0)
    }

    #[test]
    fn kinds_are_a_set() {
        let k = Kinds::of(&[Kind::Blob, Kind::Signature]);
        assert!(k.contains(Kind::Blob) && k.contains(Kind::Signature));
        assert!(!k.contains(Kind::Manifest) && !k.only_blobs());
        assert!(Kinds::of(&[Kind::Blob]).only_blobs());
        for kind in [
            Kind::Blob,
            Kind::Manifest,
            Kind::TagList,
            Kind::Referrers,
            Kind::Signature,
        ] {
            assert!(Kinds::ALL.contains(kind));
        }
    }

    #[test]
    fn every_set_condition_must_hold() {
        let aws_eu = place("aws", "eu-west-1");
        let mut r = rule(&[Kind::Blob]);
        r.providers = Box::new(["aws".into(), "azure".into()]);
        r.regions = Some(glob_set(&["eu-*".into()]).unwrap());
        r.cidrs = Box::new(["3.0.0.0/8".parse().unwrap()]);
        r.repositories = Some(glob_set(&["team/*".into()]).unwrap());
        assert!(matches(
            &r,
            Kind::Blob,
            "team/app",
            "3.4.5.6",
            Some(&aws_eu)
        ));
        // Each condition alone failing.
        assert!(!matches(
            &r,
            Kind::Manifest,
            "team/app",
            "3.4.5.6",
            Some(&aws_eu)
        ));
        assert!(!matches(
            &r,
            Kind::Blob,
            "team/a/b",
            "3.4.5.6",
            Some(&aws_eu)
        ));
        assert!(!matches(
            &r,
            Kind::Blob,
            "team/app",
            "4.4.5.6",
            Some(&aws_eu)
        ));
        let gcp = place("gcp", "eu-west-1");
        assert!(!matches(&r, Kind::Blob, "team/app", "3.4.5.6", Some(&gcp)));
        let us = place("azure", "us-east-1");
        assert!(!matches(&r, Kind::Blob, "team/app", "3.4.5.6", Some(&us)));
        assert!(!matches(&r, Kind::Blob, "team/app", "3.4.5.6", None));
    }

    #[test]
    fn globs_stay_within_a_segment_unless_doubled() {
        let mut r = rule(&[]);
        r.repositories = Some(glob_set(&["a/*".into(), "deep/**".into(), "x?".into()]).unwrap());
        for (repo, want) in [
            ("a/b", true),
            ("a/b/c", false),
            ("deep/b/c", true),
            ("xy", true),
            ("xyz", false),
            ("b/a", false),
        ] {
            assert_eq!(
                matches(&r, Kind::Manifest, repo, "1.1.1.1", None),
                want,
                "{repo}"
            );
        }
        assert!(glob_set(&["a[".into()]).unwrap_err().contains("a["));
    }

    #[test]
    fn a_rule_without_client_conditions_never_asks_for_the_client() {
        let rules = [rule(&[Kind::Manifest]), rule(&[])];
        let mut client = None;
        let got = first_match(
            &rules,
            Kind::Blob,
            "x",
            &mut client,
            || panic!("the client was not needed"),
            no_geo,
        );
        assert_eq!(got, Ok(Some(1)));
    }

    #[test]
    fn an_unusable_client_address_fails_only_a_rule_that_looks_at_it() {
        let mut by_cidr = rule(&[]);
        by_cidr.cidrs = Box::new(["10.0.0.0/8".parse().unwrap()]);
        let rules = [rule(&[Kind::Blob]), by_cidr];
        let bad = || Client {
            address: Err("bad X-Forwarded-For".into()),
            placement: None,
            geo: None,
        };
        let mut client = None;
        assert_eq!(
            first_match(&rules, Kind::Blob, "x", &mut client, bad, no_geo),
            Ok(Some(0))
        );
        let mut client = None;
        assert_eq!(
            first_match(&rules, Kind::Manifest, "x", &mut client, bad, no_geo),
            Err("bad X-Forwarded-For".into())
        );
    }

    #[test]
    fn the_first_matching_rule_wins_and_the_client_is_found_once() {
        let mut aws = rule(&[]);
        aws.providers = Box::new(["aws".into()]);
        let mut eu = rule(&[]);
        eu.regions = Some(glob_set(&["eu-*".into()]).unwrap());
        let rules = [aws, eu, rule(&[])];
        let calls = std::cell::Cell::new(0);
        let p = place("gcp", "eu-west4");
        let find = || {
            calls.set(calls.get() + 1);
            Client {
                address: Ok("1.2.3.4".parse().unwrap()),
                placement: Some(&p),
                geo: None,
            }
        };
        let mut client = None;
        assert_eq!(
            first_match(&rules, Kind::Blob, "x", &mut client, find, no_geo),
            Ok(Some(1))
        );
        assert_eq!(calls.get(), 1);
    }

    #[test]
    fn geo_conditions_match_the_databases_facts_looked_up_once() {
        let code = |c: &str| Code::parse(c).unwrap();
        let mut partner = rule(&[Kind::Blob]);
        partner.asns = Box::new([64512]);
        let mut aws_in_de = rule(&[Kind::Blob]);
        aws_in_de.providers = Box::new(["aws".into()]);
        aws_in_de.countries = Box::new([code("DE")]);
        let mut europe = rule(&[Kind::Blob]);
        europe.continents = Box::new([code("EU")]);
        let rules = [partner, aws_in_de, europe, rule(&[])];
        let lookups = std::cell::Cell::new(0);
        let first = |facts: GeoFacts, p: Option<&Placement>| {
            lookups.set(0);
            let mut client = None;
            let find = || Client {
                address: Ok("192.0.2.1".parse().unwrap()),
                placement: p,
                geo: None,
            };
            let geo_of = |_| {
                lookups.set(lookups.get() + 1);
                facts
            };
            let got = first_match(&rules, Kind::Blob, "x", &mut client, find, geo_of).unwrap();
            assert_eq!(lookups.get(), 1, "looked up once");
            got
        };
        let de = GeoFacts {
            country: Some(code("DE")),
            continent: Some(code("EU")),
            asn: Some(3320),
        };
        let aws = place("aws", "eu-central-1");
        assert_eq!(first(de, Some(&aws)), Some(1), "cloud and country together");
        assert_eq!(first(de, None), Some(2), "no cloud range: the continent");
        let partner_de = GeoFacts {
            asn: Some(64512),
            ..de
        };
        assert_eq!(first(partner_de, Some(&aws)), Some(0), "the network first");
        assert_eq!(
            first(GeoFacts::default(), None),
            Some(3),
            "no facts match no geo rule"
        );
        // Rules that never look at the geo facts never look them up.
        let mut client = None;
        let find = || Client {
            address: Ok("192.0.2.1".parse().unwrap()),
            placement: None,
            geo: None,
        };
        let never = |_| -> GeoFacts { panic!("not looked up") };
        assert_eq!(
            first_match(&rules[3..], Kind::Blob, "x", &mut client, find, never),
            Ok(Some(0))
        );
    }

    #[test]
    fn the_archeio_rules_send_gcp_blobs_upstream_and_others_to_their_region() {
        let rules = Policy::archeio_rules();
        let gcp = place("gcp", "us-central1");
        let aws = place("aws", "us-east-1");
        let first = |kind, p: Option<&Placement>| {
            let mut client = None;
            let find = || Client {
                address: Ok("1.2.3.4".parse().unwrap()),
                placement: p,
                geo: None,
            };
            first_match(&rules, kind, "pause", &mut client, find, no_geo).unwrap()
        };
        assert_eq!(first(Kind::Blob, Some(&gcp)), Some(0));
        assert_eq!(first(Kind::Blob, Some(&aws)), Some(1));
        assert_eq!(first(Kind::Blob, None), Some(1));
        assert_eq!(first(Kind::Manifest, Some(&aws)), None);
    }
}
