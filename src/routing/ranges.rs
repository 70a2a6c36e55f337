//! IP ranges: which provider and region a client address belongs to.
//!
//! Sources are range documents in the providers' published formats (the AWS and GCP snapshots
//! built into the binary, and files or URLs in any [`Format`]) and operator rules from the
//! config. Unlike the original, which stops at the shortest matching prefix, the most specific
//! prefix wins.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prefix_trie::PrefixMap;
use serde::{Deserialize, Serialize};

/// AWS `ip-ranges.json` snapshot built into the binary.
pub const EMBEDDED_AWS: &[u8] = include_bytes!("../../data/aws-ip-ranges.json");
/// GCP `cloud.json` snapshot built into the binary.
pub const EMBEDDED_GCP: &[u8] = include_bytes!("../../data/gcp-cloud.json");

/// An operator rule: clients in `cidr` are treated as `provider` clients in `region`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomRange {
    /// The network.
    pub cidr: IpNet,
    /// The provider its clients count as (`aws`, `gcp`, `onprem`, ...).
    pub provider: String,
    /// The region, as the mirror table names it.
    pub region: String,
}

/// Everything a table is built from, besides the fetched documents' bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct RangeSources {
    /// Range documents in order of precedence for an identical prefix (see
    /// [`RangeTable::build`]), the embedded snapshots among them.
    pub documents: Vec<Source>,
    /// Operator rules; they win over every document for the same prefix.
    pub custom: Vec<CustomRange>,
}

impl RangeSources {
    /// The providers a client can be placed under: those of the built-in formats (`aws`,
    /// `gcp`, `azure`, `oracle`), and each document's and operator rule's.
    pub fn providers(&self) -> BTreeSet<String> {
        let formats = [Format::Aws, Format::Gcp, Format::Azure, Format::Oracle];
        formats
            .iter()
            .filter_map(|f| f.default_provider())
            .map(str::to_string)
            .chain(self.documents.iter().map(|d| d.provider.to_string()))
            .chain(self.custom.iter().map(|c| c.provider.clone()))
            .collect()
    }
}

impl Default for RangeSources {
    /// The embedded snapshots alone, GCP first as in the config's order.
    fn default() -> Self {
        RangeSources {
            documents: vec![Source::embedded(Format::Gcp), Source::embedded(Format::Aws)],
            custom: Vec::new(),
        }
    }
}

/// Where an address lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Placement {
    /// Who owns the range holding the address: a lowercase name such as `aws`, `gcp`,
    /// `azure`, `oracle` or the operator's own.
    pub provider: Box<str>,
    /// The region (AWS `region`, GCP `scope`, Azure `properties.region`, Oracle `region`, a
    /// geofeed's region or country, or the name the config gives); may be empty.
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

    /// The slot of a placement, added when new.
    fn slot(&mut self, provider: &str, region: &str) -> u32 {
        let placement = Placement {
            provider: provider.into(),
            region: region.into(),
        };
        let next = self.placements.len() as u32;
        *self.index.entry(placement.clone()).or_insert_with(|| {
            self.placements.push(placement);
            next
        })
    }

    /// Adds `net`; a prefix already present keeps its placement, so sources are added in
    /// order of precedence.
    fn insert(&mut self, net: IpNet, slot: u32) {
        match net.trunc() {
            IpNet::V4(n) => {
                self.v4.entry(n).or_insert(slot);
            }
            IpNet::V6(n) => {
                self.v6.entry(n).or_insert(slot);
            }
        }
    }

    /// Builds the table. Precedence for an identical prefix: the operator rules, then
    /// `sources.documents` in their order. The config lists them as: `ranges.sources` in the
    /// order written, then GCP files, GCP URLs, the embedded GCP snapshot (GCP clients are
    /// served by the upstream), AWS files, AWS URLs, the embedded AWS snapshot. Across all
    /// sources the most specific prefix wins.
    ///
    /// `docs` holds the bytes read for file and URL sources; a source without bytes there
    /// (a URL not fetched yet) is skipped. Embedded sources take their bytes from the binary.
    pub fn build(sources: &RangeSources, docs: &[(&Source, &[u8])]) -> Result<RangeTable, String> {
        let mut table = RangeTable::default();
        for rule in &sources.custom {
            let slot = table.slot(&rule.provider, &rule.region);
            table.insert(rule.cidr, slot);
        }
        for source in &sources.documents {
            let bytes = match source.origin {
                Origin::Embedded => source.format.embedded().ok_or_else(|| {
                    format!(
                        "{}: no {:?} snapshot is built in",
                        source.location, source.format
                    )
                })?,
                Origin::File | Origin::Url => match docs.iter().find(|(s, _)| *s == source) {
                    Some((_, bytes)) => bytes,
                    None => continue,
                },
            };
            table
                .add(source, bytes)
                .map_err(|e| format!("{}: {e}", source.location))?;
        }
        Ok(table)
    }

    /// Adds `bytes`, a document in `source.format`, under `source.provider` and (when set)
    /// `source.region`; returns how many prefixes it placed. A malformed document adds
    /// nothing; the error names the line or the JSON path.
    pub fn add(&mut self, source: &Source, bytes: &[u8]) -> Result<usize, String> {
        // Slots resolved per region name here, so a document of thousands of prefixes
        // allocates once per region, not per prefix.
        let mut slots: HashMap<Box<str>, u32> = HashMap::new();
        let mut pending: Vec<(IpNet, u32)> = Vec::new();
        let known = self.placements.len();
        let fixed = source
            .region
            .as_deref()
            .map(|region| self.slot(&source.provider, region));
        let mut emit = |net: IpNet, region: &str| {
            let slot = match fixed {
                Some(slot) => slot,
                None => match slots.get(region) {
                    Some(slot) => *slot,
                    None => {
                        let slot = self.slot(&source.provider, region);
                        slots.insert(region.into(), slot);
                        slot
                    }
                },
            };
            pending.push((net, slot));
        };
        let parsed = match source.format {
            Format::Aws => parse_aws(bytes, &mut emit),
            Format::Gcp => parse_gcp(bytes, &mut emit),
            Format::Azure => parse_azure(bytes, &mut emit),
            Format::Oracle => parse_oracle(bytes, &mut emit),
            Format::Geofeed => parse_geofeed(bytes, &mut emit),
            Format::Cidrs => parse_cidrs(bytes, &mut emit),
        };
        if let Err(e) = parsed {
            // Placements named before the error are unused: drop them too.
            self.placements.truncate(known);
            self.index.retain(|_, slot| (*slot as usize) < known);
            return Err(format!("not {}: {e}", source.format.describe()));
        }
        for (net, slot) in &pending {
            self.insert(*net, *slot);
        }
        Ok(pending.len())
    }
}

/// The layout of a range document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// AWS `ip-ranges.json`: `prefixes[].ip_prefix`, `ipv6_prefixes[].ipv6_prefix`, `region`.
    Aws,
    /// GCP `cloud.json`: `prefixes[].ipv4Prefix` or `ipv6Prefix`, `scope`.
    Gcp,
    /// Azure Service Tags JSON: the `AzureCloud.<region>` tags' `properties.addressPrefixes`
    /// under `properties.region` (the other tags repeat subsets of these).
    Azure,
    /// Oracle Cloud `public_ip_ranges.json`: `regions[].region`, `regions[].cidrs[].cidr`.
    Oracle,
    /// RFC 8805 geofeed CSV `prefix,country,region,city,postal`: placed under the region
    /// (`US-CA`), else the country, else an empty region.
    Geofeed,
    /// Plain text, one CIDR a line (Cloudflare's `ips-v4`); the region comes from the config.
    Cidrs,
}

impl Format {
    /// The provider a document in this format belongs to, when the format says so.
    pub fn default_provider(self) -> Option<&'static str> {
        match self {
            Format::Aws => Some("aws"),
            Format::Gcp => Some("gcp"),
            Format::Azure => Some("azure"),
            Format::Oracle => Some("oracle"),
            Format::Geofeed | Format::Cidrs => None,
        }
    }

    /// The snapshot built into the binary, for the formats that have one.
    pub fn embedded(self) -> Option<&'static [u8]> {
        match self {
            Format::Aws => Some(EMBEDDED_AWS),
            Format::Gcp => Some(EMBEDDED_GCP),
            _ => None,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Format::Aws => "an AWS ip-ranges.json document",
            Format::Gcp => "a GCP cloud.json document",
            Format::Azure => "an Azure Service Tags document",
            Format::Oracle => "an Oracle public_ip_ranges.json document",
            Format::Geofeed => "an RFC 8805 geofeed",
            Format::Cidrs => "a list of CIDRs",
        }
    }
}

/// Where a source's bytes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A file, read at start-up and on every refresh.
    File,
    /// An HTTP(S) URL, fetched after start-up and on every refresh.
    Url,
    /// The snapshot of its format built into the binary; never refreshed.
    Embedded,
}

/// A range document and how its prefixes are placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The path or URL (`embedded:<format>` for a snapshot), also its name in logs and
    /// metrics.
    pub location: String,
    /// Where its bytes come from.
    pub origin: Origin,
    /// Its layout.
    pub format: Format,
    /// The provider its prefixes are placed under.
    pub provider: Box<str>,
    /// The region every prefix is placed in, instead of the document's own.
    pub region: Option<Box<str>>,
}

impl Source {
    /// The snapshot of `format` built into the binary (AWS and GCP have one), under the
    /// format's provider.
    pub fn embedded(format: Format) -> Source {
        let provider = format.default_provider().unwrap_or_default();
        Source {
            location: format!("embedded:{provider}"),
            origin: Origin::Embedded,
            format,
            provider: provider.into(),
            region: None,
        }
    }
}

/// Receives each prefix of a document with its region.
type Emit<'e> = &'e mut dyn FnMut(IpNet, &str);

/// A JSON string that may be borrowed from the document (no escapes) or not.
type Text<'a> = Cow<'a, str>;

fn json<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

fn any_net(text: &str) -> Result<IpNet, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not a CIDR prefix"))
}

fn v4_net(text: &str) -> Result<IpNet, String> {
    text.parse::<Ipv4Net>()
        .map(IpNet::V4)
        .map_err(|_| format!("{text:?} is not an IPv4 CIDR prefix"))
}

fn v6_net(text: &str) -> Result<IpNet, String> {
    text.parse::<Ipv6Net>()
        .map(IpNet::V6)
        .map_err(|_| format!("{text:?} is not an IPv6 CIDR prefix"))
}

fn parse_aws(bytes: &[u8], emit: Emit) -> Result<(), String> {
    #[derive(Deserialize)]
    struct Doc<'a> {
        #[serde(borrow)]
        prefixes: Vec<V4<'a>>,
        #[serde(default, borrow)]
        ipv6_prefixes: Vec<V6<'a>>,
    }
    #[derive(Deserialize)]
    struct V4<'a> {
        #[serde(borrow)]
        ip_prefix: Text<'a>,
        #[serde(borrow)]
        region: Text<'a>,
    }
    #[derive(Deserialize)]
    struct V6<'a> {
        #[serde(borrow)]
        ipv6_prefix: Text<'a>,
        #[serde(borrow)]
        region: Text<'a>,
    }
    let doc: Doc = json(bytes)?;
    for (i, p) in doc.prefixes.iter().enumerate() {
        let net = v4_net(&p.ip_prefix).map_err(|e| format!("prefixes[{i}].ip_prefix: {e}"))?;
        emit(net, &p.region);
    }
    for (i, p) in doc.ipv6_prefixes.iter().enumerate() {
        let net =
            v6_net(&p.ipv6_prefix).map_err(|e| format!("ipv6_prefixes[{i}].ipv6_prefix: {e}"))?;
        emit(net, &p.region);
    }
    Ok(())
}

fn parse_gcp(bytes: &[u8], emit: Emit) -> Result<(), String> {
    #[derive(Deserialize)]
    struct Doc<'a> {
        #[serde(borrow)]
        prefixes: Vec<Entry<'a>>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Entry<'a> {
        #[serde(borrow)]
        ipv4_prefix: Option<Text<'a>>,
        #[serde(borrow)]
        ipv6_prefix: Option<Text<'a>>,
        #[serde(borrow)]
        scope: Text<'a>,
    }
    let doc: Doc = json(bytes)?;
    for (i, p) in doc.prefixes.iter().enumerate() {
        let net = match (&p.ipv4_prefix, &p.ipv6_prefix) {
            (Some(v4), None) => v4_net(v4).map_err(|e| format!("prefixes[{i}].ipv4Prefix: {e}"))?,
            (None, Some(v6)) => v6_net(v6).map_err(|e| format!("prefixes[{i}].ipv6Prefix: {e}"))?,
            _ => {
                return Err(format!(
                    "prefixes[{i}] must have exactly one of ipv4Prefix and ipv6Prefix"
                ))
            }
        };
        emit(net, &p.scope);
    }
    Ok(())
}

fn parse_azure(bytes: &[u8], emit: Emit) -> Result<(), String> {
    #[derive(Deserialize)]
    struct Doc<'a> {
        #[serde(borrow)]
        values: Vec<Tag<'a>>,
    }
    #[derive(Deserialize)]
    struct Tag<'a> {
        #[serde(borrow)]
        name: Text<'a>,
        #[serde(borrow)]
        properties: Properties<'a>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Properties<'a> {
        #[serde(default, borrow)]
        region: Text<'a>,
        #[serde(default, borrow)]
        address_prefixes: Vec<Text<'a>>,
    }
    let doc: Doc = json(bytes)?;
    // Only the regional `AzureCloud.<region>` tags: the others are subsets of them, and the
    // global `AzureCloud` tag (no region) repeats them all.
    let regional = doc
        .values
        .iter()
        .enumerate()
        .filter(|(_, t)| t.name.starts_with("AzureCloud.") && !t.properties.region.is_empty());
    for (i, tag) in regional {
        for (j, p) in tag.properties.address_prefixes.iter().enumerate() {
            let net = any_net(p)
                .map_err(|e| format!("values[{i}].properties.addressPrefixes[{j}]: {e}"))?;
            emit(net, &tag.properties.region);
        }
    }
    Ok(())
}

fn parse_oracle(bytes: &[u8], emit: Emit) -> Result<(), String> {
    #[derive(Deserialize)]
    struct Doc<'a> {
        #[serde(borrow)]
        regions: Vec<Region<'a>>,
    }
    #[derive(Deserialize)]
    struct Region<'a> {
        #[serde(borrow)]
        region: Text<'a>,
        #[serde(borrow)]
        cidrs: Vec<Cidr<'a>>,
    }
    #[derive(Deserialize)]
    struct Cidr<'a> {
        #[serde(borrow)]
        cidr: Text<'a>,
    }
    let doc: Doc = json(bytes)?;
    for (i, r) in doc.regions.iter().enumerate() {
        for (j, c) in r.cidrs.iter().enumerate() {
            let net = any_net(&c.cidr).map_err(|e| format!("regions[{i}].cidrs[{j}].cidr: {e}"))?;
            emit(net, &r.region);
        }
    }
    Ok(())
}

/// Calls `each` with every line that is neither blank nor a `#` comment, trimmed; an error
/// names the line (from 1).
fn lines(bytes: &[u8], mut each: impl FnMut(&str) -> Result<(), String>) -> Result<(), String> {
    for (n, line) in bytes.split(|b| *b == b'\n').enumerate() {
        let line = std::str::from_utf8(line).map_err(|_| format!("line {}: not UTF-8", n + 1))?;
        // Spreadsheet exports start with a byte-order mark.
        let line = line.trim_start_matches('\u{feff}').trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        each(line).map_err(|e| format!("line {}: {e}", n + 1))?;
    }
    Ok(())
}

/// A prefix in a text format: a CIDR, or a single address (RFC 8805 allows both).
fn text_net(text: &str) -> Result<IpNet, String> {
    any_net(text).or_else(|e| text.parse::<IpAddr>().map(IpNet::from).map_err(|_| e))
}

fn parse_geofeed(bytes: &[u8], emit: Emit) -> Result<(), String> {
    lines(bytes, |line| {
        let mut fields = line.split(',').map(str::trim);
        let net = text_net(fields.next().unwrap_or_default())?;
        let country = fields.next().unwrap_or_default();
        let region = fields.next().unwrap_or_default();
        emit(net, if region.is_empty() { country } else { region });
        Ok(())
    })
}

fn parse_cidrs(bytes: &[u8], emit: Emit) -> Result<(), String> {
    lines(bytes, |line| {
        emit(text_net(line)?, "");
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn embedded() -> RangeTable {
        RangeTable::build(&RangeSources::default(), &[]).unwrap()
    }

    fn region(t: &RangeTable, ip: &str) -> Option<(String, String)> {
        t.lookup(ip.parse().unwrap())
            .map(|p| (p.provider.to_string(), p.region.to_string()))
    }

    fn placed(provider: &str, region: &str) -> Option<(String, String)> {
        Some((provider.into(), region.into()))
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
        assert_eq!(region(&t, "3.4.12.4"), placed("aws", "eu-west-1"));
        assert_eq!(region(&t, "34.1.208.77"), placed("gcp", "africa-south1"));
        assert_eq!(
            region(&t, "2406:daba:f000::1"),
            placed("aws", "ap-southeast-4")
        );
        assert_eq!(region(&t, "192.0.2.1"), None);
        assert_eq!(region(&t, "2001:db8::1"), None);
    }

    #[test]
    fn longest_prefix_wins_where_the_original_stopped_early() {
        // 15.193.6.0/24 us-east-1 sits inside 15.193.0.0/19 GLOBAL.
        let t = embedded();
        assert_eq!(region(&t, "15.193.6.10"), placed("aws", "us-east-1"));
        assert_eq!(region(&t, "15.193.31.1"), placed("aws", "GLOBAL"));
    }

    #[test]
    fn ipv4_mapped_ipv6_is_matched_as_ipv4() {
        let t = embedded();
        assert_eq!(region(&t, "::ffff:3.4.12.4"), placed("aws", "eu-west-1"));
    }

    #[test]
    fn custom_rules_win_over_files_for_the_same_prefix_and_nest() {
        let rule = |cidr: &str, provider: &str, region: &str| CustomRange {
            cidr: cidr.parse().unwrap(),
            provider: provider.into(),
            region: region.into(),
        };
        let sources = RangeSources {
            custom: vec![
                rule("3.4.12.4/32", "aws", "mine"),
                rule("10.0.0.0/8", "gcp", "corp"),
                rule("10.1.0.0/16", "aws", "lab"),
                rule("::1/128", "aws", "local6"),
            ],
            ..RangeSources::default()
        };
        let t = RangeTable::build(&sources, &[]).unwrap();
        assert_eq!(region(&t, "3.4.12.4"), placed("aws", "mine"));
        assert_eq!(region(&t, "10.9.9.9"), placed("gcp", "corp"));
        assert_eq!(region(&t, "10.1.2.3"), placed("aws", "lab"));
        assert_eq!(region(&t, "::1"), placed("aws", "local6"));
    }

    fn source(format: Format, location: &str, provider: &str, region: Option<&str>) -> Source {
        Source {
            location: location.into(),
            origin: Origin::File,
            format,
            provider: provider.into(),
            region: region.map(Into::into),
        }
    }

    /// A table of one document; its error otherwise.
    fn one(
        format: Format,
        provider: &str,
        region: Option<&str>,
        doc: &str,
    ) -> Result<RangeTable, String> {
        let s = source(format, "doc", provider, region);
        let sources = RangeSources {
            documents: vec![s.clone()],
            custom: Vec::new(),
        };
        RangeTable::build(&sources, &[(&s, doc.as_bytes())])
    }

    const AZURE: &str = r#"{"changeNumber": 1, "cloud": "Public", "values": [
        {"name": "AzureCloud", "id": "AzureCloud", "properties": {"region": "",
            "addressPrefixes": ["20.0.0.0/8", "2603::/16"]}},
        {"name": "AzureCloud.eastus2", "id": "AzureCloud.eastus2", "properties": {
            "changeNumber": 3, "region": "eastus2", "regionId": 2, "platform": "Azure",
            "systemService": "", "addressPrefixes": ["20.1.0.0/16", "2603:1030::/32"],
            "networkFeatures": ["API"]}},
        {"name": "Storage.westus", "id": "Storage.westus", "properties": {"region": "westus",
            "addressPrefixes": ["20.2.0.0/16"]}},
        {"name": "AzureCloud.westus", "id": "AzureCloud.westus", "properties": {
            "region": "westus", "addressPrefixes": ["20.3.0.0/16"]}}
    ]}"#;

    #[test]
    fn azure_uses_only_the_regional_azure_cloud_tags() {
        let t = one(Format::Azure, "azure", None, AZURE).unwrap();
        assert_eq!(t.prefix_counts(), (2, 1));
        assert_eq!(region(&t, "20.1.2.3"), placed("azure", "eastus2"));
        assert_eq!(region(&t, "2603:1030::5"), placed("azure", "eastus2"));
        assert_eq!(region(&t, "20.3.0.1"), placed("azure", "westus"));
        // Only in the global tag, or only in a service tag.
        assert_eq!(region(&t, "20.9.0.1"), None);
        assert_eq!(region(&t, "20.2.0.1"), None);
    }

    #[test]
    fn oracle_regions_and_cidrs_are_placed() {
        let doc = r#"{"last_updated_timestamp": "2024-01-01T00:00:00.000000",
            "regions": [
                {"region": "us-ashburn-1", "cidrs": [
                    {"cidr": "129.213.0.0/16", "tags": ["OCI"]},
                    {"cidr": "2603:c020::/32", "tags": ["OCI"]}]},
                {"region": "eu-frankfurt-1", "cidrs": [{"cidr": "130.61.0.0/16", "tags": ["OSN"]}]}
            ]}"#;
        let t = one(Format::Oracle, "oracle", None, doc).unwrap();
        assert_eq!(t.prefix_counts(), (2, 1));
        assert_eq!(region(&t, "129.213.9.9"), placed("oracle", "us-ashburn-1"));
        assert_eq!(region(&t, "2603:c020::1"), placed("oracle", "us-ashburn-1"));
        assert_eq!(region(&t, "130.61.1.1"), placed("oracle", "eu-frankfurt-1"));
    }

    #[test]
    fn geofeed_places_by_region_else_country() {
        let doc = "# RFC 8805 geofeed\r\n\
            \r\n\
            192.0.2.0/24,US,US-CA,San Jose,95141\r\n\
            198.51.100.0/24,DE,,,\n\
            203.0.113.7,,,,\n\
            2001:db8::/32,NL,NL-NH,Amsterdam,\n";
        let t = one(Format::Geofeed, "corp", None, doc).unwrap();
        assert_eq!(t.prefix_counts(), (3, 1));
        assert_eq!(region(&t, "192.0.2.9"), placed("corp", "US-CA"));
        assert_eq!(region(&t, "198.51.100.9"), placed("corp", "DE"));
        assert_eq!(region(&t, "203.0.113.7"), placed("corp", ""));
        assert_eq!(region(&t, "203.0.113.8"), None);
        assert_eq!(region(&t, "2001:db8::1"), placed("corp", "NL-NH"));
    }

    #[test]
    fn cidr_lists_take_the_configured_region() {
        let doc = "# Cloudflare\n173.245.48.0/20\n\n2400:cb00::/32\n";
        let t = one(Format::Cidrs, "cloudflare", Some("edge"), doc).unwrap();
        assert_eq!(t.prefix_counts(), (1, 1));
        assert_eq!(region(&t, "173.245.50.1"), placed("cloudflare", "edge"));
        assert_eq!(region(&t, "2400:cb00::1"), placed("cloudflare", "edge"));
    }

    #[test]
    fn aws_and_gcp_documents_parse_both_families() {
        let aws = r#"{"prefixes": [{"ip_prefix": "198.51.100.0/24", "region": "r4"}],
            "ipv6_prefixes": [{"ipv6_prefix": "2001:db8::/32", "region": "r6"}]}"#;
        let t = one(Format::Aws, "aws", None, aws).unwrap();
        assert_eq!(region(&t, "198.51.100.1"), placed("aws", "r4"));
        assert_eq!(region(&t, "2001:db8::1"), placed("aws", "r6"));
        let gcp = r#"{"prefixes": [{"ipv4Prefix": "198.51.100.0/24", "scope": "g4"},
            {"ipv6Prefix": "2001:db8::/32", "scope": "g6"}]}"#;
        let t = one(Format::Gcp, "gcp", None, gcp).unwrap();
        assert_eq!(region(&t, "198.51.100.1"), placed("gcp", "g4"));
        assert_eq!(region(&t, "2001:db8::1"), placed("gcp", "g6"));
    }

    #[test]
    fn malformed_documents_are_refused_whole_with_the_place_named() {
        let cases = [
            (
                Format::Aws,
                "{\"prefixes\": [",
                "not an AWS ip-ranges.json document: EOF",
            ),
            (
                Format::Aws,
                r#"{"prefixes": [{"ip_prefix": "10.0.0.0/8", "region": "a"},
                    {"ip_prefix": "2001:db8::/32", "region": "b"}]}"#,
                "prefixes[1].ip_prefix: \"2001:db8::/32\" is not an IPv4 CIDR prefix",
            ),
            (
                Format::Gcp,
                r#"{"prefixes": [{"ipv6Prefix": "10.0.0.0/8", "scope": "a"}]}"#,
                "not a GCP cloud.json document: prefixes[0].ipv6Prefix: \"10.0.0.0/8\"",
            ),
            (
                Format::Azure,
                r#"{"values": [{"name": "AzureCloud.x", "properties": {"region": "x",
                    "addressPrefixes": ["20.0.0.0/8", "20.0.0.0/99"]}}]}"#,
                "not an Azure Service Tags document: \
                 values[0].properties.addressPrefixes[1]: \"20.0.0.0/99\" is not a CIDR prefix",
            ),
            (
                Format::Azure,
                r#"{"values": 3}"#,
                "not an Azure Service Tags document: invalid type: integer `3`",
            ),
            (
                Format::Oracle,
                r#"{"regions": [{"region": "a", "cidrs": [{"cidr": "1.2.3.0/24"}]},
                    {"region": "b", "cidrs": [{"cidr": "oops"}]}]}"#,
                "regions[1].cidrs[0].cidr: \"oops\" is not a CIDR prefix",
            ),
            (
                Format::Oracle,
                r#"{"regions": [{"region": "a"}]}"#,
                "missing field `cidrs`",
            ),
            (
                Format::Geofeed,
                "# feed\n10.0.0.0/8,US,US-CA,,\n10.0.0.0/33,US,,,\n",
                "not an RFC 8805 geofeed: line 3: \"10.0.0.0/33\" is not a CIDR prefix",
            ),
            (Format::Geofeed, "10.0.0.0/8\n\u{0}\u{ff}\n", "line 2: "),
            (
                Format::Cidrs,
                "10.0.0.0/8\n\n# x\n10.0.0.0/8 extra\n",
                "not a list of CIDRs: line 4: \"10.0.0.0/8 extra\"",
            ),
        ];
        for (format, doc, expected) in cases {
            let mut t = RangeTable::default();
            let err = t
                .add(&source(format, "doc", "p", Some("r")), doc.as_bytes())
                .unwrap_err();
            assert!(err.contains(expected), "{format:?}: {err}");
            // Nothing of a refused document is placed, not even its good lines.
            assert_eq!(t.prefix_counts(), (0, 0), "{format:?}");
            assert!(t.placements.is_empty() && t.index.is_empty(), "{format:?}");
            let err = one(format, "p", Some("r"), doc).unwrap_err();
            assert!(err.starts_with("doc: "), "{err}");
        }
    }

    #[test]
    fn identical_prefixes_follow_the_source_order_and_nested_ones_the_most_specific() {
        let geo = source(Format::Geofeed, "geo", "onprem", None);
        let azure = source(Format::Azure, "azure", "azure", None);
        let cidrs = source(Format::Cidrs, "cidrs", "edge", Some("pop"));
        let gcp = Source::embedded(Format::Gcp);
        // 34.1.208.0/20 is GCP africa-south1 in the embedded snapshot.
        let geo_doc = "20.1.0.0/16,US,US-VA,,\n34.1.208.0/20,ZA,ZA-WC,,\n20.1.2.0/24,US,US-NY,,\n";
        let cidrs_doc = "20.1.0.0/16\n20.1.2.128/25\n";
        let docs: [(&Source, &[u8]); 3] = [
            (&geo, geo_doc.as_bytes()),
            (&azure, AZURE.as_bytes()),
            (&cidrs, cidrs_doc.as_bytes()),
        ];
        let build = |order: Vec<Source>| {
            let sources = RangeSources {
                documents: order,
                custom: Vec::new(),
            };
            RangeTable::build(&sources, &docs).unwrap()
        };
        let t = build(vec![geo.clone(), azure.clone(), cidrs.clone(), gcp.clone()]);
        // 20.1.0.0/16 is in all three documents: the first listed wins.
        assert_eq!(region(&t, "20.1.9.9"), placed("onprem", "US-VA"));
        assert_eq!(region(&t, "34.1.208.1"), placed("onprem", "ZA-WC"));
        // Nested: the most specific prefix wins whatever its source's rank.
        assert_eq!(region(&t, "20.1.2.1"), placed("onprem", "US-NY"));
        assert_eq!(region(&t, "20.1.2.200"), placed("edge", "pop"));
        // Azure's IPv6 range is in no other source.
        assert_eq!(region(&t, "2603:1030::1"), placed("azure", "eastus2"));

        let t = build(vec![cidrs.clone(), azure.clone(), geo.clone(), gcp.clone()]);
        assert_eq!(region(&t, "20.1.9.9"), placed("edge", "pop"));
        assert_eq!(region(&t, "20.1.2.1"), placed("onprem", "US-NY"));
        assert_eq!(region(&t, "34.1.208.1"), placed("onprem", "ZA-WC"));

        // A URL not fetched yet is left out; the others still build.
        let missing = Source {
            origin: Origin::Url,
            ..source(Format::Oracle, "http://x/", "oracle", None)
        };
        let t = build(vec![missing, gcp]);
        assert_eq!(region(&t, "34.1.208.1"), placed("gcp", "africa-south1"));
        assert_eq!(region(&t, "20.1.9.9"), None);
    }

    #[test]
    fn a_configured_region_overrides_the_documents() {
        let t = one(Format::Azure, "azure", Some("near"), AZURE).unwrap();
        assert_eq!(region(&t, "20.1.2.3"), placed("azure", "near"));
        assert_eq!(region(&t, "20.3.2.3"), placed("azure", "near"));
        assert_eq!(region(&t, "2603:1030::1"), placed("azure", "near"));
        let geo = "192.0.2.0/24,US,US-CA,,\n";
        let t = one(Format::Geofeed, "lab", Some("us-east-1"), geo).unwrap();
        assert_eq!(region(&t, "192.0.2.1"), placed("lab", "us-east-1"));
    }

    #[test]
    fn an_embedded_source_without_a_snapshot_is_an_error() {
        let sources = RangeSources {
            documents: vec![Source::embedded(Format::Oracle)],
            custom: Vec::new(),
        };
        let err = RangeTable::build(&sources, &[]).unwrap_err();
        assert!(err.contains("no Oracle snapshot is built in"), "{err}");
    }
}
