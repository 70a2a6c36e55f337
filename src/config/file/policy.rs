//! The `policy:` section and the named mirrors of `mirrors:`: ordered rules, first match
//! wins, and the mirrors they send blobs to. Checked together into the routing core's
//! [`Policy`], since rules name mirrors.

use std::collections::{BTreeMap, HashMap};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::super::signing::SigningConfig;
use super::super::values::{base_url, blob_path, Invalid};
use super::super::SignedMirror;
use super::MirrorsConfig;
use crate::routing::client_addr::canonical_net;
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
    pub provider: OneOrMany<String>,
    /// Regions of the client's placement: names or globs (`eu-*`).
    pub region: OneOrMany<String>,
    /// Networks the client's address is in.
    pub cidr: OneOrMany<IpNet>,
    /// Repository globs: `*` within a path segment, `**` across segments.
    pub repository: OneOrMany<String>,
    /// Request kinds: `blob`, `manifest`, `tag_list`, `referrers`, `signature` (cosign
    /// tags).
    pub kind: OneOrMany<Kind>,
}

/// One value or a list of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    /// A single value.
    One(T),
    /// A list.
    Many(Vec<T>),
}

impl<T> Default for OneOrMany<T> {
    fn default() -> Self {
        OneOrMany::Many(Vec::new())
    }
}

impl<T> OneOrMany<T> {
    fn as_slice(&self) -> &[T] {
        match self {
            OneOrMany::One(v) => std::slice::from_ref(v),
            OneOrMany::Many(v) => v,
        }
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
                    r.check(i, &named)
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

impl RuleConfig {
    fn check(&self, i: usize, named: &BTreeMap<&str, usize>) -> Result<Rule, Invalid> {
        let m = &self.matches;
        let kinds = match m.kind.as_slice() {
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
            if p.is_empty() {
                return Err(Invalid::new("match.provider", "must not be empty"));
            }
        }
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
            cidrs: m
                .cidr
                .as_slice()
                .iter()
                .map(|n| canonical_net(n.trunc()))
                .collect(),
            repositories: globs("repository", m.repository.as_slice())?,
            action,
            delivery: self.delivery,
        })
    }
}
