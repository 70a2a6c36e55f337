//! Geo placement and offload accounting over real HTTP on loopback (issue 27): clients that
//! no cloud range places, routed by their continent, country and network from MaxMind DB
//! files (small ones written here for exact cases, and a published country database
//! installed by the test command); the databases re-read on change and on `SIGHUP` with the
//! last good kept; the bytes each mirror saved, and the upstream's.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

const SHA: &str = "sha256:4c6a5e1b3cf1ab5e4e36d6e7a8a4b8c8d1f3e2a4b6c8d0e2f4a6b8c0d2e4f6a8";

/// A database in the GeoLite2 layout: for each network its country, continent and, when not
/// 0, AS number.
fn write_db(path: &Path, entries: &[(&str, &str, &str, u32)]) {
    let mut w = mmdb_writer::Writer::new("GeoLite2-Country");
    for (net, country, continent, asn) in entries {
        let names = BTreeMap::from([("en", "Somewhere")]);
        let mut record = serde_json::json!({
            "continent": {"code": continent, "names": names},
            "country": {"iso_code": country, "names": names},
        });
        if *asn != 0 {
            record["autonomous_system_number"] = serde_json::json!(asn);
        }
        w.insert(net.parse::<ipnet::IpNet>().unwrap(), &record)
            .unwrap();
    }
    std::fs::write(path, w.to_bytes().unwrap()).unwrap();
}

/// Four regional mirrors and a rule per placement: a partner's network first, then
/// continents, then countries; the rest to the default mirror.
struct Setup {
    gw: Gateway,
    mirrors: [Mirror; 5],
    db: PathBuf,
    _dir: tempfile::TempDir,
}

const PARTNER: u32 = 64512;

async fn setup(extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("geo.mmdb");
    write_db(
        &db,
        &[
            ("203.0.113.0/24", "JP", "AS", 0),
            ("198.51.100.0/25", "DE", "EU", 3320),
            ("198.51.100.128/25", "DE", "EU", PARTNER),
            ("192.0.2.0/24", "BR", "SA", 0),
            ("2001:db8::/32", "CA", "NA", 0),
        ],
    );
    let mirrors = [
        Mirror::start().await,
        Mirror::start().await,
        Mirror::start().await,
        Mirror::start().await,
        Mirror::start().await,
    ];
    for (i, m) in mirrors.iter().enumerate() {
        m.put_sized(&format!("/containers/images/{SHA}"), 1000 * (i as u64 + 1));
    }
    let keys = format!(
        "  upstream: {{endpoints: ['http://upstream.test'], path: images}}
  client_address: {{trusted_proxies: ['127.0.0.1/32']}}
  ranges:
    embedded: false
    custom: [{{cidr: 198.51.100.0/24, provider: aws, region: eu-central-1}}]
  geo: {{databases: ['{db}'], check_interval: 100ms}}
  mirrors:
    default: '{default}'
    named:
      asia: {{url: '{asia}'}}
      europe: {{url: '{europe}'}}
      americas: {{url: '{americas}'}}
      partner: {{url: '{partner}'}}
  policy:
    rules:
      - {{name: partner, match: {{asn: AS{PARTNER}}}, action: mirrors, mirrors: [partner]}}
      - {{name: asia, match: {{continent: AS}}, action: mirrors, mirrors: [asia]}}
      - {{name: europe, match: {{continent: EU}}, action: mirrors, mirrors: [europe]}}
      - {{name: americas, match: {{country: [BR, CA, us]}}, action: mirrors, mirrors: [americas]}}
      - {{name: rest, match: {{kind: blob}}, action: mirrors, mirrors: [default]}}
{extra}",
        db = db.display(),
        default = mirrors[0].base(),
        asia = mirrors[1].base(),
        europe = mirrors[2].base(),
        americas = mirrors[3].base(),
        partner = mirrors[4].base(),
    );
    Setup {
        gw: Gateway::start(&keys).await,
        mirrors,
        db,
        _dir: dir,
    }
}

/// Where a client's blob request is sent.
async fn location_for(gw: &Gateway, client: &str) -> String {
    let xff = format!("{client}, 127.0.0.1");
    let r = gw
        .send(
            "GET",
            &format!("/v2/app/blobs/{SHA}"),
            &[("X-Forwarded-For", &xff)],
        )
        .await;
    assert_eq!(r.status, 307, "{client}: {r:?}");
    r.location().to_string()
}

fn at(m: &Mirror) -> String {
    format!("{}/containers/images/{SHA}", m.base())
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_no_cloud_range_places_go_by_network_continent_and_country() {
    let s = setup("").await;
    let [default, asia, europe, americas, partner] = &s.mirrors;
    assert_eq!(location_for(&s.gw, "203.0.113.9").await, at(asia));
    // In a cloud range (aws eu-central-1) and in Germany: the continent rule still applies,
    // the cloud placement is kept beside it.
    assert_eq!(location_for(&s.gw, "198.51.100.9").await, at(europe));
    assert_eq!(location_for(&s.gw, "198.51.100.200").await, at(partner));
    assert_eq!(location_for(&s.gw, "192.0.2.1").await, at(americas));
    assert_eq!(location_for(&s.gw, "2001:db8::7").await, at(americas));
    // No record: no fact, the default mirror.
    assert_eq!(location_for(&s.gw, "100.64.0.1").await, at(default));

    let m = s.gw.metrics().await;
    let bytes = |mirror: &str| {
        sample(
            &m,
            &format!(
                "archeio_blob_bytes_total{{delivery=\"redirect\",mirror=\"{mirror}\",source=\"mirror\"}}"
            ),
        )
    };
    // Each mirror's HEAD gave its own size (1000 × its position).
    assert_eq!(bytes("asia"), 2000.0);
    assert_eq!(bytes("europe"), 3000.0);
    assert_eq!(bytes("americas"), 2.0 * 4000.0);
    assert_eq!(bytes("partner"), 5000.0);
    assert_eq!(bytes("default"), 1000.0);

    let log = s.gw.log();
    let line = log
        .lines()
        .find(|l| l.contains("archeio::access") && l.contains("client=198.51.100.200"))
        .unwrap();
    assert!(
        line.contains("provider=aws")
            && line.contains("country=DE")
            && line.contains("continent=EU")
            && line.contains(&format!("asn={PARTNER}")),
        "the access record carries the placement: {line}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_database_is_read_again_and_a_corrupt_one_keeps_the_last_good() {
    let s = setup("").await;
    let [_, asia, europe, ..] = &s.mirrors;
    assert_eq!(location_for(&s.gw, "203.0.113.9").await, at(asia));

    // The network moves to Europe: seen within the check interval.
    let next = s.db.with_extension("next");
    write_db(&next, &[("203.0.113.0/24", "FR", "EU", 0)]);
    std::fs::rename(&next, &s.db).unwrap();
    let mut moved = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if location_for(&s.gw, "203.0.113.9").await == at(europe) {
            moved = true;
            break;
        }
    }
    assert!(moved, "the new database was not read:\n{}", s.gw.log());

    // A truncated file: refused, named in the log, the last good version kept, also
    // through a SIGHUP.
    let good = std::fs::read(&s.db).unwrap();
    std::fs::write(&s.db, &good[..good.len() / 3]).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let status = Command::new("kill")
        .args(["-HUP", &s.gw.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(location_for(&s.gw, "203.0.113.9").await, at(europe));
    let log = s.gw.log();
    let named = format!("geo database {}", s.db.display());
    assert!(
        log.lines()
            .any(|l| l.contains(" WARN ") && l.contains(&named) && l.contains("last good")),
        "{log}"
    );
    let m = s.gw.metrics().await;
    let failed = format!(
        "archeio_geo_database_loads_total{{database=\"{}\",result=\"failed\"}}",
        s.db.display()
    );
    // Once for the change, once for the SIGHUP.
    assert_eq!(sample(&m, &failed), 2.0, "{m}");
}

/// `-t`: a corrupt database and geo rules without databases are refused with the key or the
/// file named; `--explain` shows the placement.
#[test]
fn the_configuration_check_names_the_database_and_explain_shows_the_facts() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("geo.mmdb");
    write_db(&db, &[("198.51.100.0/24", "DE", "EU", 3320)]);
    let conf = dir.path().join("archeio.yaml");
    let write_conf = |geo: &str| {
        std::fs::write(
            &conf,
            format!(
                "archeio:
  ranges: {{embedded: false}}
  {geo}
  mirrors: {{named: {{europe: {{url: 'http://127.0.0.1:1'}}}}}}
  policy:
    rules:
      - {{match: {{continent: EU}}, action: mirrors, mirrors: [europe]}}
"
            ),
        )
        .unwrap();
    };
    let check = |extra: &[&str]| {
        let out = Command::new(BINARY)
            .args(["-t", "-c", conf.to_str().unwrap()])
            .args(extra)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };

    write_conf("geo: {databases: [geo.mmdb]}");
    let (ok, text) = check(&["--explain", "198.51.100.7", &format!("/v2/app/blobs/{SHA}")]);
    assert!(ok, "{text}");
    assert!(
        text.contains("country: DE, continent: EU (Europe), network: AS3320"),
        "{text}"
    );
    assert!(text.contains("mirror \"europe\""), "{text}");

    std::fs::write(&db, b"\xab\xcd\xefMaxMind.com but not a database").unwrap();
    let (ok, text) = check(&[]);
    assert!(!ok);
    assert!(
        text.contains("archeio.geo") && text.contains(&db.display().to_string()),
        "{text}"
    );

    write_conf("");
    let (ok, text) = check(&[]);
    assert!(!ok);
    assert!(
        text.contains("archeio.policy.rules[0].match.continent: needs geo.databases"),
        "{text}"
    );

    write_conf("geo: {databases: [geo.mmdb]}\n  offload: {cost_per_gb: {nowhere: 1}}");
    write_db(&db, &[("198.51.100.0/24", "DE", "EU", 3320)]);
    let (ok, text) = check(&[]);
    assert!(!ok);
    assert!(
        text.contains("archeio.offload.cost_per_gb.nowhere: \"nowhere\" is no mirror"),
        "{text}"
    );
}

/// The published country database (ip-location-db's geo-whois-asn-country, CC0), installed
/// by the test command: well-known addresses land where everyone knows they are.
#[test]
fn a_published_country_database_places_well_known_addresses() {
    let Some(db) = published_database() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("archeio.yaml");
    std::fs::write(
        &conf,
        format!(
            "archeio:\n  ranges: {{embedded: false}}\n  geo: {{databases: ['{}']}}\n",
            db.display()
        ),
    )
    .unwrap();
    let mut args = vec!["-t".to_string(), "-c".into(), conf.display().to_string()];
    for ip in ["8.8.8.8", "193.0.6.139", "1.1.1.1", "2001:4860:4860::8888"] {
        args.extend(["--explain".into(), ip.into(), "/v2/".into()]);
    }
    let out = Command::new(BINARY).args(&args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let facts: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("country: "))
        .collect();
    assert_eq!(facts.len(), 4, "{text}");
    assert!(facts[0].starts_with("US, continent: NA"), "{text}");
    assert!(facts[1].starts_with("NL, continent: EU"), "{text}");
    assert!(facts[2].starts_with("AU, continent: OC"), "{text}");
    assert!(facts[3].starts_with("US, continent: NA"), "{text}");
}

/// Where the test command installs the published database; `None` (the test skipped) when
/// it is not there and the test command did not ask for every server.
fn published_database() -> Option<PathBuf> {
    let cache = std::env::var("ARCHEIO_TEST_CACHE").map_or_else(
        |_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/archeio-test"),
        PathBuf::from,
    );
    let db = cache.join(
        "ip-location-db/node_modules/@ip-location-db/geo-whois-asn-country-mmdb/geo-whois-asn-country.mmdb",
    );
    if db.exists() {
        return Some(db);
    }
    assert!(
        std::env::var_os("ARCHEIO_TEST_REQUIRE_SERVERS").is_none(),
        "{} is missing: scripts/test.sh installs it",
        db.display()
    );
    eprintln!(
        "skipped: {} is missing (scripts/test.sh installs it)",
        db.display()
    );
    None
}

/// Blobs redirected to the upstream are sized with a cached `HEAD` there when the operator
/// asks; the prices are exported for the dashboard's estimate.
#[tokio::test(flavor = "multi_thread")]
async fn the_upstream_s_bytes_are_counted_when_sized_and_prices_are_exported() {
    let upstream = common::fake::FakeServer::start(|req| {
        let canned = common::fake::Canned::new(200);
        match req.method.as_str() {
            "HEAD" => canned.header("Content-Length", "123456"),
            _ => canned,
        }
    })
    .await;
    let keys = |head: bool| {
        format!(
            "  upstream: {{endpoints: ['{}'], path: images}}
  ranges: {{embedded: false}}
  policy: {{rules: [{{match: {{kind: blob}}, action: upstream}}]}}
  offload: {{upstream_head: {head}, cost_per_gb: {{upstream: 0.09, default: 0.01}}}}",
            upstream.url()
        )
    };
    let target = format!("/v2/app/blobs/{SHA}");
    let gw = Gateway::start(&keys(true)).await;
    for _ in 0..3 {
        assert_eq!(gw.get(&target).await.status, 307);
    }
    let m = gw.metrics().await;
    assert_eq!(
        sample(
            &m,
            "archeio_blob_bytes_total{delivery=\"redirect\",mirror=\"\",source=\"upstream\"}"
        ),
        3.0 * 123456.0
    );
    let blob_heads = || {
        upstream
            .seen()
            .iter()
            .filter(|s| s.method == "HEAD" && s.target.contains("/blobs/"))
            .count()
    };
    assert_eq!(blob_heads(), 1, "one HEAD, then the cached answer");
    assert_eq!(
        sample(
            &m,
            "archeio_egress_cost_per_gigabyte{mirror=\"\",source=\"upstream\"}"
        ),
        0.09
    );
    assert_eq!(
        sample(
            &m,
            "archeio_egress_cost_per_gigabyte{mirror=\"default\",source=\"mirror\"}"
        ),
        0.01
    );
    drop(gw);

    // Off: no HEAD, the answers counted as of unknown size.
    let gw = Gateway::start(&keys(false)).await;
    assert_eq!(gw.get(&target).await.status, 307);
    assert_eq!(blob_heads(), 1, "no HEAD of its own");
    let m = gw.metrics().await;
    assert_eq!(
        sample(
            &m,
            "archeio_blob_size_unknown_total{delivery=\"redirect\",source=\"upstream\"}"
        ),
        1.0
    );
}

/// From the attacker's side: a client that is not behind a trusted proxy names a Japanese
/// address in `X-Forwarded-For` to be sent to the Asian mirror (or to count as the partner's
/// network). The header is not believed: its own address, which no database places, decides.
#[tokio::test(flavor = "multi_thread")]
async fn a_forged_forwarding_header_does_not_choose_the_continent() {
    let s = setup("").await;
    let [default, ..] = &s.mirrors;
    let untrusted: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    for forged in ["203.0.113.9", "198.51.100.200"] {
        let r = request_from(
            Some(untrusted),
            s.gw.addr,
            "GET",
            format!("/v2/app/blobs/{SHA}"),
            &[("X-Forwarded-For", forged)],
        )
        .await
        .unwrap();
        assert_eq!(
            (r.status, r.location()),
            (307, at(default).as_str()),
            "{forged}"
        );
    }
}
