//! Cloud IP ranges: which cloud and region a client address belongs to.
//!
//! Sources are the AWS and GCP range files (the snapshots built into the binary, and extra
//! files in the same formats) and operator rules from the config. Unlike the original, which
//! stops at the shortest matching prefix, the most specific prefix wins.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prefix_trie::PrefixMap;
use serde::{Deserialize, Serialize};

/// AWS `ip-ranges.json` snapshot built into the binary.
pub const EMBEDDED_AWS: &[u8] = include_bytes!("../../data/aws-ip-ranges.json");
/// GCP `cloud.json` snapshot built into the binary.
pub const EMBEDDED_GCP: &[u8] = include_bytes!("../../data/gcp-cloud.json");

/// The clouds whose published ranges archeio understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cloud {
    /// Amazon Web Services: blobs come from the region's mirror.
    Aws,
    /// Google Cloud: blobs come from the upstream registry, which runs there.
    Gcp,
}

impl Cloud {
    /// The provider name placements carry.
    pub fn name(self) -> &'static str {
        match self {
            Cloud::Aws => "aws",
            Cloud::Gcp => "gcp",
        }
    }
}

/// An operator rule: clients in `cidr` are treated as `cloud` clients in `region`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomRange {
    /// The network.
    pub cidr: IpNet,
    /// The cloud its clients count as.
    pub cloud: Cloud,
    /// The region, as the mirror table names it.
    pub region: String,
}

/// Everything a table is built from, besides the documents' bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct RangeSources {
    /// Add the AWS and GCP snapshots built into the binary.
    pub embedded: bool,
    /// Range files and URLs, in the order of [`RangeTable::build`]'s precedence within
    /// a format.
    pub documents: Vec<Source>,
    /// Operator rules; they win over every document for the same prefix.
    pub custom: Vec<CustomRange>,
}

impl Default for RangeSources {
    /// The embedded snapshots alone.
    fn default() -> Self {
        RangeSources {
            embedded: true,
            documents: Vec::new(),
            custom: Vec::new(),
        }
    }
}

/// Where an address lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Placement {
    /// The provider whose range holds the address (`aws`, `gcp`, or a source's name).
    pub provider: Box<str>,
    /// The region (AWS `region`, GCP `scope`, or the operator's name).
    pub region: Box<str>,
}

/// Longest-prefix table from address to [`Placement`].
#[derive(Debug, Default)]
pub struct RangeTable {
    v4: PrefixMap<Ipv4Net, u32>,
    v6: PrefixMap<Ipv6Net, u32>,
    placements: Vec<Placement>,
    index: HashMap<Placement, u32>,
}

impl RangeTable {
    /// Where `ip` lives, by its most specific prefix. IPv4-mapped IPv6 addresses are
    /// looked up as IPv4.
    pub fn lookup(&self, ip: IpAddr) -> Option<&Placement> {
        let slot = match ip.to_canonical() {
            IpAddr::V4(v4) => self.v4.get_lpm(&Ipv4Net::from(v4)).map(|(_, s)| *s),
            IpAddr::V6(v6) => self.v6.get_lpm(&Ipv6Net::from(v6)).map(|(_, s)| *s),
        }?;
        self.placements.get(slot as usize)
    }

    /// Number of IPv4 and IPv6 prefixes held.
    pub fn prefix_counts(&self) -> (usize, usize) {
        (self.v4.len(), self.v6.len())
    }

    /// Adds `net`; a prefix already present keeps its placement, so sources are added in
    /// order of precedence.
    fn insert(&mut self, net: IpNet, cloud: Cloud, region: &str) {
        let placement = Placement {
            provider: cloud.name().into(),
            region: region.into(),
        };
        let next = self.placements.len() as u32;
        let slot = *self.index.entry(placement.clone()).or_insert_with(|| {
            self.placements.push(placement);
            next
        });
        match net.trunc() {
            IpNet::V4(n) => {
                self.v4.entry(n).or_insert(slot);
            }
            IpNet::V6(n) => {
                self.v6.entry(n).or_insert(slot);
            }
        }
    }

    /// Adds every prefix of an AWS `ip-ranges.json` document; returns how many it held.
    pub fn add_aws_json(&mut self, json: &[u8]) -> Result<usize, String> {
        #[derive(Deserialize)]
        struct Doc {
            prefixes: Vec<V4>,
            #[serde(default)]
            ipv6_prefixes: Vec<V6>,
        }
        #[derive(Deserialize)]
        struct V4 {
            ip_prefix: Ipv4Net,
            region: String,
        }
        #[derive(Deserialize)]
        struct V6 {
            ipv6_prefix: Ipv6Net,
            region: String,
        }
        let doc: Doc = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        for p in &doc.prefixes {
            self.insert(p.ip_prefix.into(), Cloud::Aws, &p.region);
        }
        for p in &doc.ipv6_prefixes {
            self.insert(p.ipv6_prefix.into(), Cloud::Aws, &p.region);
        }
        Ok(doc.prefixes.len() + doc.ipv6_prefixes.len())
    }

    /// Adds every prefix of a GCP `cloud.json` document; returns how many it held.
    pub fn add_gcp_json(&mut self, json: &[u8]) -> Result<usize, String> {
        #[derive(Deserialize)]
        struct Doc {
            prefixes: Vec<Entry>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Entry {
            ipv4_prefix: Option<Ipv4Net>,
            ipv6_prefix: Option<Ipv6Net>,
            scope: String,
        }
        let doc: Doc = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        for (i, p) in doc.prefixes.iter().enumerate() {
            let net: IpNet = match (p.ipv4_prefix, p.ipv6_prefix) {
                (Some(v4), None) => v4.into(),
                (None, Some(v6)) => v6.into(),
                _ => {
                    return Err(format!(
                        "prefixes[{i}] must have exactly one of ipv4Prefix and ipv6Prefix"
                    ))
                }
            };
            self.insert(net, Cloud::Gcp, &p.scope);
        }
        Ok(doc.prefixes.len())
    }

    /// Builds the table from the operator rules, `docs` (range documents and where they
    /// came from) and the embedded snapshots. Precedence for an identical prefix: operator
    /// rules, then GCP (its clients are served by the upstream), then AWS; files and URLs
    /// before the embedded snapshots.
    pub fn build(sources: &RangeSources, docs: &[(&Source, &[u8])]) -> Result<RangeTable, String> {
        let mut table = RangeTable::default();
        for rule in &sources.custom {
            table.insert(rule.cidr, rule.cloud, &rule.region);
        }
        for format in [Format::Gcp, Format::Aws] {
            for (source, bytes) in docs.iter().filter(|(s, _)| s.format == format) {
                table
                    .add(format, bytes)
                    .map_err(|e| format!("{}: {e}", source.location))?;
            }
            if sources.embedded {
                let embedded = match format {
                    Format::Gcp => EMBEDDED_GCP,
                    Format::Aws => EMBEDDED_AWS,
                };
                table.add(format, embedded)?;
            }
        }
        Ok(table)
    }

    /// Adds a document in `format`; returns how many prefixes it held.
    pub fn add(&mut self, format: Format, json: &[u8]) -> Result<usize, String> {
        match format {
            Format::Aws => self
                .add_aws_json(json)
                .map_err(|e| format!("not an AWS ip-ranges.json document: {e}")),
            Format::Gcp => self
                .add_gcp_json(json)
                .map_err(|e| format!("not a GCP cloud.json document: {e}")),
        }
    }
}

/// The layout of a range document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// AWS `ip-ranges.json`.
    Aws,
    /// GCP `cloud.json`.
    Gcp,
}

/// A configured range file or URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The path or URL, also its name in logs and metrics.
    pub location: String,
    /// Fetched over HTTP(S) rather than read from disk.
    pub is_url: bool,
    /// Its layout.
    pub format: Format,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn embedded() -> RangeTable {
        RangeTable::build(&RangeSources::default(), &[]).unwrap()
    }

    fn region(t: &RangeTable, ip: &str) -> Option<(Cloud, String)> {
        t.lookup(ip.parse().unwrap()).map(|p| {
            let cloud = if &*p.provider == "gcp" {
                Cloud::Gcp
            } else {
                Cloud::Aws
            };
            (cloud, p.region.to_string())
        })
    }

    #[test]
    fn embedded_snapshots_load_every_prefix() {
        let (v4, v6) = embedded().prefix_counts();
        // The AWS file repeats prefixes per service; distinct prefixes are fewer than rows.
        assert!(v4 > 5_000 && v4 <= 10_544 + 999, "{v4}");
        assert!(v6 > 2_000 && v6 <= 5_880 + 48, "{v6}");
    }

    #[test]
    fn aws_and_gcp_addresses_are_placed() {
        let t = embedded();
        // 3.4.12.4/32 is eu-west-1 in the AWS snapshot; 34.1.208.0/20 africa-south1 in GCP.
        assert_eq!(
            region(&t, "3.4.12.4"),
            Some((Cloud::Aws, "eu-west-1".into()))
        );
        assert_eq!(
            region(&t, "34.1.208.77"),
            Some((Cloud::Gcp, "africa-south1".into()))
        );
        assert_eq!(
            region(&t, "2406:daba:f000::1"),
            Some((Cloud::Aws, "ap-southeast-4".into()))
        );
        assert_eq!(region(&t, "192.0.2.1"), None);
        assert_eq!(region(&t, "2001:db8::1"), None);
    }

    #[test]
    fn longest_prefix_wins_where_the_original_stopped_early() {
        // 15.193.6.0/24 us-east-1 sits inside 15.193.0.0/19 GLOBAL.
        let t = embedded();
        assert_eq!(
            region(&t, "15.193.6.10"),
            Some((Cloud::Aws, "us-east-1".into()))
        );
        assert_eq!(
            region(&t, "15.193.31.1"),
            Some((Cloud::Aws, "GLOBAL".into()))
        );
    }

    #[test]
    fn ipv4_mapped_ipv6_is_matched_as_ipv4() {
        let t = embedded();
        assert_eq!(
            region(&t, "::ffff:3.4.12.4"),
            Some((Cloud::Aws, "eu-west-1".into()))
        );
    }

    #[test]
    fn custom_rules_win_over_files_for_the_same_prefix_and_nest() {
        let sources = RangeSources {
            custom: vec![
                CustomRange {
                    cidr: "3.4.12.4/32".parse().unwrap(),
                    cloud: Cloud::Aws,
                    region: "mine".into(),
                },
                CustomRange {
                    cidr: "10.0.0.0/8".parse().unwrap(),
                    cloud: Cloud::Gcp,
                    region: "corp".into(),
                },
                CustomRange {
                    cidr: "10.1.0.0/16".parse().unwrap(),
                    cloud: Cloud::Aws,
                    region: "lab".into(),
                },
                CustomRange {
                    cidr: "::1/128".parse().unwrap(),
                    cloud: Cloud::Aws,
                    region: "local6".into(),
                },
            ],
            ..RangeSources::default()
        };
        let t = RangeTable::build(&sources, &[]).unwrap();
        assert_eq!(region(&t, "3.4.12.4"), Some((Cloud::Aws, "mine".into())));
        assert_eq!(region(&t, "10.9.9.9"), Some((Cloud::Gcp, "corp".into())));
        assert_eq!(region(&t, "10.1.2.3"), Some((Cloud::Aws, "lab".into())));
        assert_eq!(region(&t, "::1"), Some((Cloud::Aws, "local6".into())));
    }
}
