//! Country, continent and network (autonomous system) of an address, from MaxMind DB files:
//! the facts rules use for clients that no cloud range places, and extra facts about those
//! it does. Pure: the databases arrive as bytes (`geo_refresh` reads the files).
//!
//! Records are read by field name, so the common layouts all work: GeoIP2/GeoLite2 and
//! DB-IP (`country.iso_code`, else `registered_country.iso_code`; `continent.code`;
//! `autonomous_system_number`), ip-location-db and IPinfo (`country_code`,
//! `continent_code`, `asn` as a number or `"AS123"`). A database without continents gets
//! them from the country ([`continent_of`]).

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;

use maxminddb::{Reader, WithinOptions};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A two-letter code: an ISO 3166-1 alpha-2 country or a continent, in capitals.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Code([u8; 2]);

impl Code {
    /// `text` as a code: two ASCII letters, either case.
    pub fn parse(text: &str) -> Option<Code> {
        match text.as_bytes() {
            [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                Some(Code([a.to_ascii_uppercase(), b.to_ascii_uppercase()]))
            }
            _ => None,
        }
    }

    /// The code's text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("two ASCII letters")
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The continents as MaxMind and GeoNames code them.
pub const CONTINENTS: [(&str, &str); 7] = [
    ("AF", "Africa"),
    ("AN", "Antarctica"),
    ("AS", "Asia"),
    ("EU", "Europe"),
    ("NA", "North America"),
    ("OC", "Oceania"),
    ("SA", "South America"),
];

/// What the databases say about one address; each fact may be missing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GeoFacts {
    /// ISO 3166-1 alpha-2 country.
    pub country: Option<Code>,
    /// Continent (`EU`, `NA`, ...).
    pub continent: Option<Code>,
    /// Autonomous system number of the network.
    pub asn: Option<u32>,
}

/// One database, opened and checked.
pub struct GeoDatabase {
    reader: Reader<Vec<u8>>,
}

impl fmt::Debug for GeoDatabase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.reader.metadata();
        f.debug_struct("GeoDatabase")
            .field("type", &m.database_type)
            .field("build_epoch", &m.build_epoch)
            .finish()
    }
}

impl GeoDatabase {
    /// Opens the database in `bytes`, walking its whole search tree and decoding each
    /// record it points at as lookups will: a truncated or corrupt file is refused here
    /// rather than answering wrongly later. (The crate's own `verify` also demands metadata
    /// that published databases such as ip-location-db's leave empty.)
    pub fn open(bytes: Vec<u8>) -> Result<GeoDatabase, String> {
        let reader =
            Reader::from_source(bytes).map_err(|e| format!("not a MaxMind DB file: {e}"))?;
        let corrupt = |e: maxminddb::MaxMindDbError| format!("corrupt MaxMind DB file: {e}");
        let mut decoded = HashSet::new();
        for network in reader.networks(WithinOptions::default()).map_err(corrupt)? {
            let found = network.map_err(corrupt)?;
            if let Some(offset) = found.offset() {
                if decoded.insert(offset) {
                    found.decode::<Record>().map_err(corrupt)?;
                }
            }
        }
        if decoded.is_empty() {
            return Err("the MaxMind DB file holds no records".into());
        }
        Ok(GeoDatabase { reader })
    }

    /// The `database_type` its metadata gives (`GeoLite2-Country`, ...).
    pub fn kind(&self) -> &str {
        &self.reader.metadata().database_type
    }

    /// When it was built, in seconds since the Unix epoch.
    pub fn built(&self) -> u64 {
        self.reader.metadata().build_epoch
    }

    /// Its record for `ip`, if it has one that decodes.
    fn record(&self, ip: IpAddr) -> Option<Record<'_>> {
        let found = self.reader.lookup(ip).ok()?;
        found.decode::<Record>().ok().flatten()
    }
}

/// The databases, asked in order: the first that has a fact gives it.
#[derive(Debug, Default)]
pub struct GeoTable {
    databases: Vec<std::sync::Arc<GeoDatabase>>,
}

impl GeoTable {
    /// No databases: no facts.
    pub const EMPTY: GeoTable = GeoTable {
        databases: Vec::new(),
    };

    /// A table over `databases`, in order.
    pub fn new(databases: Vec<std::sync::Arc<GeoDatabase>>) -> GeoTable {
        GeoTable { databases }
    }

    /// Whether any database is loaded.
    pub fn is_empty(&self) -> bool {
        self.databases.is_empty()
    }

    /// How many databases are loaded.
    pub fn len(&self) -> usize {
        self.databases.len()
    }

    /// What the databases know of `ip`. IPv4-mapped IPv6 addresses are looked up as IPv4.
    pub fn lookup(&self, ip: IpAddr) -> GeoFacts {
        let ip = ip.to_canonical();
        let mut facts = GeoFacts::default();
        for db in &self.databases {
            let Some(r) = db.record(ip) else { continue };
            let country = r
                .country
                .and_then(|c| c.iso_code)
                .or(r.country_code)
                .or(r.registered_country.and_then(|c| c.iso_code));
            facts.country = facts.country.or_else(|| country.and_then(Code::parse));
            let continent = r.continent.and_then(|c| c.code).or(r.continent_code);
            facts.continent = facts.continent.or_else(|| continent.and_then(Code::parse));
            facts.asn = facts
                .asn
                .or(r.autonomous_system_number.map(|a| a.0))
                .or(r.asn.map(|a| a.0));
            if facts.country.is_some() && facts.continent.is_some() && facts.asn.is_some() {
                break;
            }
        }
        if facts.continent.is_none() {
            facts.continent = facts.country.and_then(continent_of);
        }
        facts
    }
}

/// The fields read from a record; anything else in it is skipped.
#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow, default)]
    country: Option<IsoCode<'a>>,
    #[serde(borrow, default)]
    registered_country: Option<IsoCode<'a>>,
    #[serde(borrow, default)]
    country_code: Option<&'a str>,
    #[serde(borrow, default)]
    continent: Option<ContinentCode<'a>>,
    #[serde(borrow, default)]
    continent_code: Option<&'a str>,
    #[serde(default)]
    autonomous_system_number: Option<Asn>,
    #[serde(default)]
    asn: Option<Asn>,
}

#[derive(Deserialize)]
struct IsoCode<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct ContinentCode<'a> {
    #[serde(borrow, default)]
    code: Option<&'a str>,
}

/// An AS number written as a number (of any width) or as `AS<number>`.
struct Asn(u32);

impl<'de> Deserialize<'de> for Asn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Asn, D::Error> {
        struct AsnVisitor;
        impl Visitor<'_> for AsnVisitor {
            type Value = Asn;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an AS number")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Asn, E> {
                u32::try_from(v).map(Asn).map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Asn, E> {
                parse_asn(v)
                    .map(Asn)
                    .ok_or_else(|| E::custom("not an AS number"))
            }
        }
        d.deserialize_any(AsnVisitor)
    }
}

/// `64512` or `AS64512` (either case) as a number.
pub fn parse_asn(text: &str) -> Option<u32> {
    let digits = match text.get(..2) {
        Some(p) if p.eq_ignore_ascii_case("as") => &text[2..],
        _ => text,
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The continent of `country`, for databases that give only countries. From the
/// countries-list project (MIT), with Russia in Europe as MaxMind and GeoNames place it.
pub fn continent_of(country: Code) -> Option<Code> {
    COUNTRY_CONTINENTS
        .binary_search_by(|(c, _)| c.cmp(&country.0))
        .ok()
        .map(|i| Code(COUNTRY_CONTINENTS[i].1))
}

/// Whether `code` is a country [`continent_of`] knows.
pub fn is_country(code: Code) -> bool {
    continent_of(code).is_some()
}

/// Sorted by country.
const COUNTRY_CONTINENTS: [([u8; 2], [u8; 2]); 252] = [
    (*b"AC", *b"AF"),
    (*b"AD", *b"EU"),
    (*b"AE", *b"AS"),
    (*b"AF", *b"AS"),
    (*b"AG", *b"NA"),
    (*b"AI", *b"NA"),
    (*b"AL", *b"EU"),
    (*b"AM", *b"AS"),
    (*b"AO", *b"AF"),
    (*b"AQ", *b"AN"),
    (*b"AR", *b"SA"),
    (*b"AS", *b"OC"),
    (*b"AT", *b"EU"),
    (*b"AU", *b"OC"),
    (*b"AW", *b"NA"),
    (*b"AX", *b"EU"),
    (*b"AZ", *b"AS"),
    (*b"BA", *b"EU"),
    (*b"BB", *b"NA"),
    (*b"BD", *b"AS"),
    (*b"BE", *b"EU"),
    (*b"BF", *b"AF"),
    (*b"BG", *b"EU"),
    (*b"BH", *b"AS"),
    (*b"BI", *b"AF"),
    (*b"BJ", *b"AF"),
    (*b"BL", *b"NA"),
    (*b"BM", *b"NA"),
    (*b"BN", *b"AS"),
    (*b"BO", *b"SA"),
    (*b"BQ", *b"NA"),
    (*b"BR", *b"SA"),
    (*b"BS", *b"NA"),
    (*b"BT", *b"AS"),
    (*b"BV", *b"AN"),
    (*b"BW", *b"AF"),
    (*b"BY", *b"EU"),
    (*b"BZ", *b"NA"),
    (*b"CA", *b"NA"),
    (*b"CC", *b"AS"),
    (*b"CD", *b"AF"),
    (*b"CF", *b"AF"),
    (*b"CG", *b"AF"),
    (*b"CH", *b"EU"),
    (*b"CI", *b"AF"),
    (*b"CK", *b"OC"),
    (*b"CL", *b"SA"),
    (*b"CM", *b"AF"),
    (*b"CN", *b"AS"),
    (*b"CO", *b"SA"),
    (*b"CR", *b"NA"),
    (*b"CU", *b"NA"),
    (*b"CV", *b"AF"),
    (*b"CW", *b"NA"),
    (*b"CX", *b"AS"),
    (*b"CY", *b"EU"),
    (*b"CZ", *b"EU"),
    (*b"DE", *b"EU"),
    (*b"DJ", *b"AF"),
    (*b"DK", *b"EU"),
    (*b"DM", *b"NA"),
    (*b"DO", *b"NA"),
    (*b"DZ", *b"AF"),
    (*b"EC", *b"SA"),
    (*b"EE", *b"EU"),
    (*b"EG", *b"AF"),
    (*b"EH", *b"AF"),
    (*b"ER", *b"AF"),
    (*b"ES", *b"EU"),
    (*b"ET", *b"AF"),
    (*b"FI", *b"EU"),
    (*b"FJ", *b"OC"),
    (*b"FK", *b"SA"),
    (*b"FM", *b"OC"),
    (*b"FO", *b"EU"),
    (*b"FR", *b"EU"),
    (*b"GA", *b"AF"),
    (*b"GB", *b"EU"),
    (*b"GD", *b"NA"),
    (*b"GE", *b"AS"),
    (*b"GF", *b"SA"),
    (*b"GG", *b"EU"),
    (*b"GH", *b"AF"),
    (*b"GI", *b"EU"),
    (*b"GL", *b"NA"),
    (*b"GM", *b"AF"),
    (*b"GN", *b"AF"),
    (*b"GP", *b"NA"),
    (*b"GQ", *b"AF"),
    (*b"GR", *b"EU"),
    (*b"GS", *b"AN"),
    (*b"GT", *b"NA"),
    (*b"GU", *b"OC"),
    (*b"GW", *b"AF"),
    (*b"GY", *b"SA"),
    (*b"HK", *b"AS"),
    (*b"HM", *b"AN"),
    (*b"HN", *b"NA"),
    (*b"HR", *b"EU"),
    (*b"HT", *b"NA"),
    (*b"HU", *b"EU"),
    (*b"ID", *b"AS"),
    (*b"IE", *b"EU"),
    (*b"IL", *b"AS"),
    (*b"IM", *b"EU"),
    (*b"IN", *b"AS"),
    (*b"IO", *b"AS"),
    (*b"IQ", *b"AS"),
    (*b"IR", *b"AS"),
    (*b"IS", *b"EU"),
    (*b"IT", *b"EU"),
    (*b"JE", *b"EU"),
    (*b"JM", *b"NA"),
    (*b"JO", *b"AS"),
    (*b"JP", *b"AS"),
    (*b"KE", *b"AF"),
    (*b"KG", *b"AS"),
    (*b"KH", *b"AS"),
    (*b"KI", *b"OC"),
    (*b"KM", *b"AF"),
    (*b"KN", *b"NA"),
    (*b"KP", *b"AS"),
    (*b"KR", *b"AS"),
    (*b"KW", *b"AS"),
    (*b"KY", *b"NA"),
    (*b"KZ", *b"AS"),
    (*b"LA", *b"AS"),
    (*b"LB", *b"AS"),
    (*b"LC", *b"NA"),
    (*b"LI", *b"EU"),
    (*b"LK", *b"AS"),
    (*b"LR", *b"AF"),
    (*b"LS", *b"AF"),
    (*b"LT", *b"EU"),
    (*b"LU", *b"EU"),
    (*b"LV", *b"EU"),
    (*b"LY", *b"AF"),
    (*b"MA", *b"AF"),
    (*b"MC", *b"EU"),
    (*b"MD", *b"EU"),
    (*b"ME", *b"EU"),
    (*b"MF", *b"NA"),
    (*b"MG", *b"AF"),
    (*b"MH", *b"OC"),
    (*b"MK", *b"EU"),
    (*b"ML", *b"AF"),
    (*b"MM", *b"AS"),
    (*b"MN", *b"AS"),
    (*b"MO", *b"AS"),
    (*b"MP", *b"OC"),
    (*b"MQ", *b"NA"),
    (*b"MR", *b"AF"),
    (*b"MS", *b"NA"),
    (*b"MT", *b"EU"),
    (*b"MU", *b"AF"),
    (*b"MV", *b"AS"),
    (*b"MW", *b"AF"),
    (*b"MX", *b"NA"),
    (*b"MY", *b"AS"),
    (*b"MZ", *b"AF"),
    (*b"NA", *b"AF"),
    (*b"NC", *b"OC"),
    (*b"NE", *b"AF"),
    (*b"NF", *b"OC"),
    (*b"NG", *b"AF"),
    (*b"NI", *b"NA"),
    (*b"NL", *b"EU"),
    (*b"NO", *b"EU"),
    (*b"NP", *b"AS"),
    (*b"NR", *b"OC"),
    (*b"NU", *b"OC"),
    (*b"NZ", *b"OC"),
    (*b"OM", *b"AS"),
    (*b"PA", *b"NA"),
    (*b"PE", *b"SA"),
    (*b"PF", *b"OC"),
    (*b"PG", *b"OC"),
    (*b"PH", *b"AS"),
    (*b"PK", *b"AS"),
    (*b"PL", *b"EU"),
    (*b"PM", *b"NA"),
    (*b"PN", *b"OC"),
    (*b"PR", *b"NA"),
    (*b"PS", *b"AS"),
    (*b"PT", *b"EU"),
    (*b"PW", *b"OC"),
    (*b"PY", *b"SA"),
    (*b"QA", *b"AS"),
    (*b"RE", *b"AF"),
    (*b"RO", *b"EU"),
    (*b"RS", *b"EU"),
    (*b"RU", *b"EU"),
    (*b"RW", *b"AF"),
    (*b"SA", *b"AS"),
    (*b"SB", *b"OC"),
    (*b"SC", *b"AF"),
    (*b"SD", *b"AF"),
    (*b"SE", *b"EU"),
    (*b"SG", *b"AS"),
    (*b"SH", *b"AF"),
    (*b"SI", *b"EU"),
    (*b"SJ", *b"EU"),
    (*b"SK", *b"EU"),
    (*b"SL", *b"AF"),
    (*b"SM", *b"EU"),
    (*b"SN", *b"AF"),
    (*b"SO", *b"AF"),
    (*b"SR", *b"SA"),
    (*b"SS", *b"AF"),
    (*b"ST", *b"AF"),
    (*b"SV", *b"NA"),
    (*b"SX", *b"NA"),
    (*b"SY", *b"AS"),
    (*b"SZ", *b"AF"),
    (*b"TA", *b"AF"),
    (*b"TC", *b"NA"),
    (*b"TD", *b"AF"),
    (*b"TF", *b"AN"),
    (*b"TG", *b"AF"),
    (*b"TH", *b"AS"),
    (*b"TJ", *b"AS"),
    (*b"TK", *b"OC"),
    (*b"TL", *b"OC"),
    (*b"TM", *b"AS"),
    (*b"TN", *b"AF"),
    (*b"TO", *b"OC"),
    (*b"TR", *b"AS"),
    (*b"TT", *b"NA"),
    (*b"TV", *b"OC"),
    (*b"TW", *b"AS"),
    (*b"TZ", *b"AF"),
    (*b"UA", *b"EU"),
    (*b"UG", *b"AF"),
    (*b"UM", *b"OC"),
    (*b"US", *b"NA"),
    (*b"UY", *b"SA"),
    (*b"UZ", *b"AS"),
    (*b"VA", *b"EU"),
    (*b"VC", *b"NA"),
    (*b"VE", *b"SA"),
    (*b"VG", *b"NA"),
    (*b"VI", *b"NA"),
    (*b"VN", *b"AS"),
    (*b"VU", *b"OC"),
    (*b"WF", *b"OC"),
    (*b"WS", *b"OC"),
    (*b"XK", *b"EU"),
    (*b"YE", *b"AS"),
    (*b"YT", *b"AF"),
    (*b"ZA", *b"AF"),
    (*b"ZM", *b"AF"),
    (*b"ZW", *b"AF"),
];

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;

    /// A database in the GeoLite2 layout (names in many languages, as the real ones have).
    fn geolite2(entries: &[(&str, &str, &str)]) -> Vec<u8> {
        let mut w = mmdb_writer::Writer::new("GeoLite2-Country");
        for (net, country, continent) in entries {
            let names = BTreeMap::from([("en", "Somewhere"), ("de", "Irgendwo")]);
            let record = serde_json::json!({
                "continent": {"code": continent, "geoname_id": 1, "names": names},
                "country": {"iso_code": country, "geoname_id": 2, "names": names},
            });
            w.insert(net.parse::<ipnet::IpNet>().unwrap(), &record)
                .unwrap();
        }
        w.to_bytes().unwrap()
    }

    /// A database in ip-location-db's country layout, or an ASN one.
    fn flat(kind: &str, entries: &[(&str, serde_json::Value)]) -> Vec<u8> {
        let mut w = mmdb_writer::Writer::new(kind);
        for (net, record) in entries {
            w.insert(net.parse::<ipnet::IpNet>().unwrap(), record)
                .unwrap();
        }
        w.to_bytes().unwrap()
    }

    fn table(dbs: Vec<Vec<u8>>) -> GeoTable {
        GeoTable::new(
            dbs.into_iter()
                .map(|b| Arc::new(GeoDatabase::open(b).unwrap()))
                .collect(),
        )
    }

    fn facts(t: &GeoTable, ip: &str) -> String {
        let f = t.lookup(ip.parse().unwrap());
        let show = |c: Option<Code>| c.map_or("-".into(), |c| c.to_string());
        let asn = f.asn.map_or("-".into(), |a| a.to_string());
        format!("{} {} {asn}", show(f.country), show(f.continent))
    }

    #[test]
    fn a_country_per_prefix_in_either_layout_and_ipv6() {
        let t = table(vec![geolite2(&[
            ("81.2.69.0/24", "GB", "EU"),
            ("2001:db8::/32", "JP", "AS"),
        ])]);
        assert_eq!(facts(&t, "81.2.69.160"), "GB EU -");
        assert_eq!(facts(&t, "2001:db8::1"), "JP AS -");
        // An IPv4-mapped IPv6 address is the IPv4 one.
        assert_eq!(facts(&t, "::ffff:81.2.69.1"), "GB EU -");
        assert_eq!(facts(&t, "192.0.2.1"), "- - -", "a missing record");

        // ip-location-db: a country code only; the continent comes from the country.
        let t = table(vec![flat(
            "geo-whois-asn-country",
            &[("203.0.113.0/24", serde_json::json!({"country_code": "BR"}))],
        )]);
        assert_eq!(facts(&t, "203.0.113.7"), "BR SA -");
    }

    #[test]
    fn a_country_file_and_an_asn_file_combine_the_first_winning() {
        let country = geolite2(&[("198.51.100.0/24", "DE", "EU")]);
        let asn = flat(
            "GeoLite2-ASN",
            &[
                (
                    "198.51.100.0/25",
                    serde_json::json!({"autonomous_system_number": 64512}),
                ),
                (
                    "198.51.100.128/25",
                    serde_json::json!({"asn": "AS64513", "country_code": "FR"}),
                ),
            ],
        );
        let t = table(vec![country, asn]);
        assert_eq!(facts(&t, "198.51.100.1"), "DE EU 64512");
        // The country file came first: its DE wins over the ASN file's FR.
        assert_eq!(facts(&t, "198.51.100.200"), "DE EU 64513");
    }

    #[test]
    fn a_corrupt_or_foreign_file_is_refused() {
        let mut good = geolite2(&[("81.2.69.0/24", "GB", "EU")]);
        assert!(GeoDatabase::open(b"not a database".to_vec())
            .unwrap_err()
            .contains("not a MaxMind DB file"));
        // The search tree's first bytes overwritten: the metadata still reads.
        for b in good.iter_mut().take(64) {
            *b = 0xff;
        }
        let err = GeoDatabase::open(good).unwrap_err();
        assert!(err.contains("corrupt MaxMind DB file"), "{err}");
    }

    #[test]
    fn the_country_table_is_sorted_and_every_continent_is_known() {
        assert!(COUNTRY_CONTINENTS.windows(2).all(|w| w[0].0 < w[1].0));
        for (_, continent) in COUNTRY_CONTINENTS {
            assert!(CONTINENTS.iter().any(|(c, _)| c.as_bytes() == continent));
        }
        let of = |c: &str| continent_of(Code::parse(c).unwrap()).map(|c| c.to_string());
        assert_eq!(of("de").as_deref(), Some("EU"));
        assert_eq!(of("RU").as_deref(), Some("EU"));
        assert_eq!(of("JP").as_deref(), Some("AS"));
        assert_eq!(of("BR").as_deref(), Some("SA"));
        assert_eq!(of("ZZ"), None);
    }

    #[test]
    fn codes_and_as_numbers_parse_strictly() {
        assert_eq!(
            Code::parse("eu").map(|c| c.to_string()).as_deref(),
            Some("EU")
        );
        for bad in ["", "E", "EUR", "E1", "ü"] {
            assert_eq!(Code::parse(bad), None, "{bad}");
        }
        assert_eq!(parse_asn("64512"), Some(64512));
        assert_eq!(parse_asn("AS15169"), Some(15169));
        assert_eq!(parse_asn("as1"), Some(1));
        for bad in ["", "AS", "AS-1", "4294967296", "1.5", "ASN1"] {
            assert_eq!(parse_asn(bad), None, "{bad}");
        }
    }
}
