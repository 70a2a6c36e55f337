//! The `policy:` section and the named mirrors of `mirrors:`: ordered rules, first match
//! wins, and the mirrors they send blobs to. Checked together into the routing core's
//! [`Policy`], since rules name mirrors.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::super::signing::SigningConfig;
use super::super::values::{base_url, blob_path, Invalid};
use super::super::SignedMirror;
use super::MirrorsConfig;
use crate::routing::client_addr::canonical_net;
use crate::routing::geo::{is_country, parse_asn, Code, CONTINENTS};
use crate::routing::policy::{glob_set, Action, Delivery, Kind, Kinds, Link, Mirror, Policy, Rule};

/// How requests are routed: rules over the client's placement, its address, the repository
/// and the kind of request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// Ordered rules; the first that matches a request decides, and a request no rule
    /// matches goes to the upstream. Empty: archeio's own policy, the same as the two rules
    /// `{match: {provider: gcp, kind: blob}, action: upstream}` and
    /// `{match: {kind: blob}, action: mirrors, mirrors: [regions]}`.
    pub rules: Vec<RuleConfig>,
    /// Globs of the repositories this gateway serves (as clients name them, without the
    /// upstream path prefix), e.g. `[pause, "kube-*", "team/**"]`. Requests for any other
    /// repository get an early `404` `NAME_UNKNOWN`. Empty: every repository.
    pub known_repositories: Vec<String>,
}

/// One rule: when every condition under `match` holds, `action` decides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Name shown by `archeio -t --explain`; default `rule <n>` (from 1).
    #[serde(default)]
    pub name: Option<String>,
    /// Conditions; each one set must hold, a list holds when any entry does. None: every
    /// request.
    #[serde(default, rename = "match")]
    pub matches: MatchConfig,
    /// `upstream`, `deny` (`404` `NAME_UNKNOWN`) or `mirrors` (blobs only: the first mirror
    /// of `mirrors` that holds the blob, else the upstream).
    pub action: ActionName,
    /// For `action: mirrors`, the chain in order: names from `mirrors.named`, `default`
    /// (`mirrors.default`) or `regions` (the client's region's mirror from
    /// `mirrors.regions`, else `mirrors.default`).
    #[serde(default)]
    pub mirrors: Vec<String>,
    /// `redirect` (a `307`) or `proxy` (the gateway streams the content itself, `Range`
    /// honoured). Default: mirrors are redirected to, and the upstream is redirected to or
    /// proxied as `mode` says.
    #[serde(default)]
    pub delivery: Option<Delivery>,
}

/// What a rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionName {
    /// To the upstream (cosign tags to the signature upstream when one is set).
    Upstream,
    /// `404` with an OCI error.
    Deny,
    /// Along the rule's mirror chain.
    Mirrors,
}

/// A rule's conditions. Each takes one value or a list.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MatchConfig {
    /// Providers of the client's placement, as the range sources name them (`aws`, `gcp`,
    /// `azure`, `oracle`, or a source's `provider`).
    pub provider: OneOrMany,
    /// Regions of the client's placement: names or globs (`eu-*`).
    pub region: OneOrMany,
    /// Networks the client's address is in (`10.20.0.0/16`; host bits must be zero).
    pub cidr: OneOrMany,
    /// Countries of the client by the geo databases: ISO 3166-1 alpha-2 codes (`DE`, `JP`).
    /// Needs `geo.databases`.
    pub country: OneOrMany,
    /// Continents of the client by the geo databases: `AF`, `AN`, `AS`, `EU`, `NA`, `OC`,
    /// `SA`. Needs `geo.databases`.
    pub continent: OneOrMany,
    /// Autonomous systems of the client's network by the geo databases: numbers (`64512`
    /// or `AS64512`). Needs `geo.databases`.
    pub asn: OneOrMany,
    /// Repository globs: `*` within a path segment, `**` across segments.
    pub repository: OneOrMany,
    /// Request kinds: `blob`, `manifest`, `tag_list`, `referrers`, `signature` (cosign
    /// tags).
    pub kind: OneOrMany,
}

/// One value or a list of them, kept as written: the rule's check turns them into
/// providers, networks or kinds, so that a wrong one is reported with its key and the
/// values the key takes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OneOrMany(pub Vec<String>);

impl OneOrMany {
    fn as_slice(&self) -> &[String] {
        &self.0
    }
}

impl Serialize for OneOrMany {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => serializer.serialize_str(one),
            many => many.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValuesVisitor { list: true })
    }
}

/// Takes a scalar (text, number, boolean) as its text; with `list`, also a list of them.
struct ValuesVisitor {
    list: bool,
}

impl<'de> serde::de::Visitor<'de> for ValuesVisitor {
    type Value = OneOrMany;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self.list {
            true => f.write_str("a value or a list of values"),
            false => f.write_str("a value (a list holds values, not lists or mappings)"),
        }
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<OneOrMany, E> {
        Ok(OneOrMany(vec![v.to_string()]))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<OneOrMany, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<OneOrMany, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<OneOrMany, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<OneOrMany, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
        if !self.list {
            return Err(serde::de::Error::invalid_type(
                serde::de::Unexpected::Seq,
                &self,
            ));
        }
        let mut values = Vec::new();
        while let Some(OneOrMany(one)) = seq.next_element_seed(ValuesVisitor { list: false })? {
            values.extend(one);
        }
        Ok(OneOrMany(values))
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for ValuesVisitor {
    type Value = OneOrMany;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<OneOrMany, D::Error> {
        d.deserialize_any(self)
    }
}

/// A mirror named for rules: public (`url`) or a private bucket (`signing`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedMirrorConfig {
    /// Base URL of a public mirror, e.g. `https://cdn.example.com`. Unset for a private one:
    /// its URLs come from `signing`.
    #[serde(default)]
    pub url: Option<String>,
    /// Where a blob lives under `url`, or its object key in a private bucket (the leading `/`
    /// dropped); default: `mirrors.blob_path`.
    #[serde(default)]
    pub blob_path: Option<String>,
    /// A private bucket: the gateway presigns each `HEAD` it checks with and each URL it
    /// sends a client to, for `lifetime`. `{s3: {...}}`, `{gcs: {...}}` or `{azure: {...}}`;
    /// credentials from environment variables or files only (see
    /// `conf/examples/private-buckets.yaml`).
    #[serde(default)]
    pub signing: Option<SigningConfig>,
}

/// The chain entry that stands for the region table.
const REGIONS: &str = "regions";
/// The chain entry (and mirror name) of `mirrors.default`.
const DEFAULT: &str = "default";

impl PolicyConfig {
    /// The policy over the mirrors of `mirrors`, and the signing of its private mirrors
    /// (secrets read through `env`). Errors are keyed from the `archeio` section:
    /// `policy.rules[1].mirrors[0]`, `mirrors.named.eu`.
    pub(in crate::config) fn check(
        &self,
        mirrors: &MirrorsConfig,
        providers: &BTreeSet<String>,
        geo: bool,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(Policy, Vec<SignedMirror>), Invalid> {
        let (prefix, suffix) =
            blob_path(&mirrors.blob_path).map_err(|m| Invalid::new("mirrors.blob_path", m))?;
        let mut table = Vec::new();
        let mut regions = HashMap::new();
        let mut signed = Vec::new();
        let mut add = |name: &str, base: String, prefix: &str, suffix: &str, is_signed| {
            table.push(Mirror {
                name: name.into(),
                base: base.into(),
                blob_prefix: prefix.into(),
                blob_suffix: suffix.into(),
                signed: is_signed,
            });
            table.len() - 1
        };
        let default = base_url(&mirrors.default).map_err(|m| Invalid::new("mirrors.default", m))?;
        let default_mirror = add(DEFAULT, default, &prefix, &suffix, false);
        for (region, url) in &mirrors.effective_regions() {
            let base =
                base_url(url).map_err(|m| Invalid::new(format!("mirrors.regions.{region}"), m))?;
            // Regions sharing a bucket share its breaker and cached answers anyway (both
            // go by URL); one entry each keeps the region in logs and labels.
            let i = add(region, base, &prefix, &suffix, false);
            regions.insert(region.as_str().into(), i);
        }
        let mut named = BTreeMap::from([(DEFAULT, default_mirror)]);
        for (name, m) in &mirrors.named {
            let key = format!("mirrors.named.{name}");
            if name == DEFAULT || name == REGIONS {
                return Err(Invalid::new(key, format!("{name:?} is reserved")));
            }
            let (p, s) = match &m.blob_path {
                Some(path) => {
                    blob_path(path).map_err(|e| Invalid::new(format!("{key}.blob_path"), e))?
                }
                None => (prefix.clone(), suffix.clone()),
            };
            let i = match (&m.url, &m.signing) {
                (Some(url), None) => {
                    let base = base_url(url).map_err(|e| Invalid::new(format!("{key}.url"), e))?;
                    add(name, base, &p, &s, false)
                }
                (None, Some(signing)) => {
                    let source = signing.clone();
                    let signing = signing
                        .check(&env)
                        .map_err(|e| e.under(&format!("{key}.signing")))?;
                    // An object key: the path without its leading `/`.
                    let i = add(name, String::new(), &p[1..], &s, true);
                    signed.push(SignedMirror {
                        mirror: i,
                        signing,
                        source,
                    });
                    i
                }
                _ => {
                    return Err(Invalid::new(
                        key,
                        "needs exactly one of `url` (a public mirror) and `signing` (a private \
                         bucket)",
                    ))
                }
            };
            named.insert(name.as_str(), i);
        }
        let rules = if self.rules.is_empty() {
            Policy::archeio_rules()
        } else {
            self.rules
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    r.check(i, &named, providers, geo)
                        .map_err(|e| e.under(&format!("policy.rules[{i}]")))
                })
                .collect::<Result<_, _>>()?
        };
        let known_repositories = match self.known_repositories.as_slice() {
            [] => None,
            globs => {
                Some(glob_set(globs).map_err(|m| Invalid::new("policy.known_repositories", m))?)
            }
        };
        let policy = Policy {
            rules,
            mirrors: table,
            regions,
            default_mirror,
            known_repositories,
        };
        Ok((policy, signed))
    }
}

impl PolicyConfig {
    /// What a checked policy does that its author likely did not mean: named mirrors no
    /// rule sends a blob to, and rules an earlier rule shadows (it matches every request
    /// they would, so they never decide). Conservative: only certain shadowing is reported.
    pub(in crate::config) fn warnings(&self, mirrors: &MirrorsConfig) -> Vec<String> {
        let mut warnings = Vec::new();
        for name in mirrors.named.keys() {
            if !self.rules.iter().any(|r| r.mirrors.contains(name)) {
                warnings.push(format!(
                    "mirrors.named.{name} is in no rule's mirrors: no blob goes to it"
                ));
            }
        }
        for (j, later) in self.rules.iter().enumerate() {
            if let Some(i) = self.rules[..j].iter().position(|r| r.covers(later)) {
                warnings.push(format!(
                    "policy.rules[{j}] ({}) never decides: policy.rules[{i}] ({}) before it \
                     matches every request it would",
                    later.label(j),
                    self.rules[i].label(i)
                ));
            }
        }
        warnings
    }
}

impl RuleConfig {
    /// How a warning names rule `i`.
    fn label(&self, i: usize) -> String {
        match &self.name {
            Some(name) => format!("{name:?}"),
            None => format!("\"rule {}\"", i + 1),
        }
    }

    /// The kinds the rule matches, as checked.
    fn kinds(&self) -> Kinds {
        let kinds: Vec<Kind> = self
            .matches
            .kind
            .as_slice()
            .iter()
            .filter_map(|k| Kind::named(k))
            .collect();
        match kinds.as_slice() {
            [] if self.action == ActionName::Mirrors => Kinds::of(&[Kind::Blob]),
            [] => Kinds::ALL,
            kinds => Kinds::of(kinds),
        }
    }

    /// Whether every request `other` matches is matched by `self` too.
    fn covers(&self, other: &RuleConfig) -> bool {
        let (m, o) = (&self.matches, &other.matches);
        // Any value (none listed, or a glob of everything) covers; else each of `other`'s
        // values must be one of ours.
        let values = |ours: &OneOrMany, theirs: &OneOrMany, all: &[&str]| {
            let ours = ours.as_slice();
            ours.is_empty()
                || ours.iter().any(|v| all.contains(&v.as_str()))
                || (!theirs.as_slice().is_empty()
                    && theirs.as_slice().iter().all(|v| ours.contains(v)))
        };
        let nets = |list: &OneOrMany| -> Vec<IpNet> {
            list.as_slice()
                .iter()
                .filter_map(|c| network(c).ok())
                .collect()
        };
        let (our_nets, their_nets) = (nets(&m.cidr), nets(&o.cidr));
        let cidrs = our_nets.is_empty()
            || (!their_nets.is_empty()
                && their_nets
                    .iter()
                    .all(|t| our_nets.iter().any(|n| n.contains(t))));
        self.kinds().covers(other.kinds())
            && values(&m.provider, &o.provider, &[])
            && values(&m.region, &o.region, &["*", "**"])
            && values(&m.repository, &o.repository, &["**"])
            && values(&m.country, &o.country, &[])
            && values(&m.continent, &o.continent, &[])
            && values(&m.asn, &o.asn, &[])
            && cidrs
    }

    fn check(
        &self,
        i: usize,
        named: &BTreeMap<&str, usize>,
        providers: &BTreeSet<String>,
        geo: bool,
    ) -> Result<Rule, Invalid> {
        let m = &self.matches;
        let geo = geo_conditions(m, geo)?;
        let kinds = m
            .kind
            .as_slice()
            .iter()
            .map(|k| {
                Kind::named(k).ok_or_else(|| {
                    let names: Vec<&str> = Kind::NAMES.iter().map(|(n, _)| *n).collect();
                    Invalid::new(
                        "match.kind",
                        format!("{k:?} is not a kind; one of {}", names.join(", ")),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let kinds = match kinds.as_slice() {
            [] if self.action == ActionName::Mirrors => Kinds::of(&[Kind::Blob]),
            [] => Kinds::ALL,
            kinds => Kinds::of(kinds),
        };
        let action = match self.action {
            ActionName::Upstream => Action::Upstream,
            ActionName::Deny => Action::Deny,
            ActionName::Mirrors => {
                if !kinds.only_blobs() {
                    return Err(Invalid::new(
                        "match.kind",
                        "mirrors hold blobs only: a mirrors rule matches kind blob",
                    ));
                }
                if self.mirrors.is_empty() {
                    return Err(Invalid::new("mirrors", "needs at least one mirror"));
                }
                let chain = self
                    .mirrors
                    .iter()
                    .enumerate()
                    .map(|(j, name)| match name.as_str() {
                        REGIONS => Ok(Link::Regional),
                        other => named.get(other).map(|&m| Link::Mirror(m)).ok_or_else(|| {
                            Invalid::new(
                                format!("mirrors[{j}]"),
                                format!(
                                    "no mirror named {other:?} in mirrors.named (nor \
                                     `default` or `regions`)"
                                ),
                            )
                        }),
                    })
                    .collect::<Result<_, _>>()?;
                Action::Mirrors(chain)
            }
        };
        if self.action != ActionName::Mirrors && !self.mirrors.is_empty() {
            return Err(Invalid::new("mirrors", "only a mirrors rule has a chain"));
        }
        let globs = |key: &str, globs: &[String]| match globs {
            [] => Ok(None),
            g => glob_set(g)
                .map(Some)
                .map_err(|e| Invalid::new(format!("match.{key}"), e)),
        };
        for p in m.provider.as_slice() {
            if !providers.contains(p) {
                let known: Vec<&str> = providers.iter().map(String::as_str).collect();
                return Err(Invalid::new(
                    "match.provider",
                    format!(
                        "{p:?} is not a provider the range sources place clients under; one of \
                         {} (the built-in formats' names and each source's provider)",
                        known.join(", ")
                    ),
                ));
            }
        }
        let cidrs = m
            .cidr
            .as_slice()
            .iter()
            .map(|c| network(c).map_err(|e| Invalid::new("match.cidr", e)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Rule {
            name: match &self.name {
                Some(n) => n.as_str().into(),
                None => format!("rule {}", i + 1).into(),
            },
            kinds,
            providers: m
                .provider
                .as_slice()
                .iter()
                .map(|p| p.as_str().into())
                .collect(),
            regions: globs("region", m.region.as_slice())?,
            cidrs: cidrs.into(),
            countries: geo.countries,
            continents: geo.continents,
            asns: geo.asns,
            repositories: globs("repository", m.repository.as_slice())?,
            action,
            delivery: self.delivery,
        })
    }
}

/// A rule's geo conditions, checked.
struct GeoConditions {
    countries: Box<[Code]>,
    continents: Box<[Code]>,
    asns: Box<[u32]>,
}

/// A rule's countries, continents and AS numbers, checked against the lists of each;
/// `geo`: whether databases are configured to tell them.
fn geo_conditions(m: &MatchConfig, geo: bool) -> Result<GeoConditions, Invalid> {
    let countries = m
        .country
        .as_slice()
        .iter()
        .map(|c| {
            Code::parse(c)
                .filter(|&code| is_country(code))
                .ok_or_else(|| {
                    Invalid::new(
                        "match.country",
                        format!(
                            "{c:?} is not an ISO 3166-1 alpha-2 country code (e.g. DE, JP, US)"
                        ),
                    )
                })
        })
        .collect::<Result<Box<[_]>, _>>()?;
    let continents = m
        .continent
        .as_slice()
        .iter()
        .map(|c| {
            Code::parse(c)
                .filter(|code| CONTINENTS.iter().any(|(k, _)| *k == code.as_str()))
                .ok_or_else(|| {
                    let known: Vec<String> = CONTINENTS
                        .iter()
                        .map(|(k, name)| format!("{k} ({name})"))
                        .collect();
                    Invalid::new(
                        "match.continent",
                        format!("{c:?} is not a continent code; one of {}", known.join(", ")),
                    )
                })
        })
        .collect::<Result<Box<[_]>, _>>()?;
    let asns = m
        .asn
        .as_slice()
        .iter()
        .map(|a| {
            parse_asn(a).ok_or_else(|| {
                Invalid::new(
                    "match.asn",
                    format!("{a:?} is not an AS number; write 64512 or AS64512"),
                )
            })
        })
        .collect::<Result<Box<[_]>, _>>()?;
    if !geo {
        for (key, set) in [
            ("country", countries.is_empty()),
            ("continent", continents.is_empty()),
            ("asn", asns.is_empty()),
        ] {
            if !set {
                return Err(Invalid::new(
                    format!("match.{key}"),
                    "needs geo.databases (MaxMind DB files) to tell a client's country,                      continent and network",
                ));
            }
        }
    }
    Ok(GeoConditions {
        countries,
        continents,
        asns,
    })
}

/// A network as a rule writes it: an address and a prefix length, no host bits.
fn network(text: &str) -> Result<IpNet, String> {
    let net: IpNet = text.parse().map_err(|_| {
        format!(
            "{text:?} is not a network; write an address and a prefix length, e.g. 10.20.0.0/16"
        )
    })?;
    if net.trunc() != net {
        return Err(format!(
            "{text} has host bits set; the network is {}",
            net.trunc()
        ));
    }
    Ok(canonical_net(net))
}
