//! Criterion benchmarks of the request path's pure parts: prefix lookup over the full
//! embedded table, the routing decision per route (URL building included), the cached mirror
//! answer and the cached relay authorization, `X-Forwarded-For` parsing, and loading the
//! range files.

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};

use archeio::config::file::ArcheioConfig;
use archeio::config::{BlobCheck, Settings};
use archeio::mirror::verify::Verifier;
use archeio::mirror::{MirrorCheck, Mirrors};
use archeio::routing::client_addr::{find_client, ClientAddrError, ClientAddressRules, Connection};
use archeio::routing::geo::{GeoDatabase, GeoTable};
use archeio::routing::ranges::{RangeSources, RangeTable};
use archeio::routing::{decide, Decision, Places, Request};
use archeio::upstream::auth::UpstreamAuth;
use archeio::upstream::blob_access::{Asker, BlobAccess};
use archeio::upstream::Upstreams;

const SHA: &str = "sha256:4a1c4b21597c1b4415bdbecb28a3296c6b5e23ca4f9feeb599860a1dac6a0108";

/// Deterministic pseudo-random addresses (xorshift), so runs compare.
fn addresses(n: usize, v6: bool) -> Vec<IpAddr> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if v6 {
                // Inside 2000::/3, where the cloud prefixes are.
                let hi = (0x2000u128 << 112) | ((x as u128) << 48);
                IpAddr::from((hi | (x as u128 >> 16)).to_be_bytes())
            } else {
                IpAddr::from((x as u32).to_be_bytes())
            }
        })
        .collect()
}

fn lookup(c: &mut Criterion) {
    let table = RangeTable::build(&RangeSources::default(), &[]).unwrap();
    let mut g = c.benchmark_group("prefix_lookup");
    let hit4: IpAddr = "15.193.6.10".parse().unwrap();
    let miss4: IpAddr = "192.0.2.1".parse().unwrap();
    let hit6: IpAddr = "2406:daba:f000::9".parse().unwrap();
    let miss6: IpAddr = "2001:db8::1".parse().unwrap();
    for (name, ip) in [
        ("v4_hit", hit4),
        ("v4_miss", miss4),
        ("v6_hit", hit6),
        ("v6_miss", miss6),
    ] {
        assert_eq!(table.lookup(ip).is_some(), name.ends_with("hit"));
        g.bench_function(name, |b| b.iter(|| table.lookup(black_box(ip))));
    }
    for (name, ips) in [
        ("v4_random_1024", addresses(1024, false)),
        ("v6_random_1024", addresses(1024, true)),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| ips.iter().filter(|ip| table.lookup(**ip).is_some()).count())
        });
    }
    g.finish();
}

/// The default routes, with the us-east-1 mirror on a closed loopback port: warming the
/// cache then costs one refused connection and no traffic leaves the machine.
fn settings() -> Settings {
    let mut cfg = ArcheioConfig {
        signature_upstream: Some("https://sig.example".into()),
        ..ArcheioConfig::default()
    };
    cfg.mirrors
        .regions
        .insert("us-east-1".into(), "http://127.0.0.1:9".into());
    cfg.check("bench", |_| None).unwrap()
}

fn decision(c: &mut Criterion) {
    let settings = settings();
    let routes = settings.routes;
    let table = RangeTable::build(&RangeSources::default(), &[]).unwrap();
    let manifest = "/v2/pause/manifests/3.10";
    let blob = format!("/v2/pause/blobs/{SHA}");
    let xff_aws: [&[u8]; 1] = [b"15.193.6.10, 130.211.0.1"];
    let xff_gcp: [&[u8]; 1] = [b"34.1.208.5, 130.211.0.1"];
    let cases: [(&str, &str, &[&[u8]]); 7] = [
        ("api_version", "/v2/", &[]),
        ("info", "/", &[]),
        ("manifest", manifest, &[]),
        ("tags_list_query", "/v2/pause/tags/list?n=50&last=3.9", &[]),
        ("blob_aws_client", &blob, &xff_aws),
        ("blob_gcp_client", &blob, &xff_gcp),
        ("invalid_dotdot", "/v2/a/../b/manifests/x", &[]),
    ];
    // Each case finds its client as the request phase does, behind a trusted proxy.
    let proxy = trusted_lb();
    let mut g = c.benchmark_group("decide");
    for (name, target, xff) in cases {
        g.bench_function(name, |b| {
            b.iter(|| {
                let req = request(target, client(&proxy, black_box(xff)));
                decide(&req, &routes, Places::ranges_only(&table))
            })
        });
    }
    g.finish();

    // The whole blob path for a client whose mirror answer is cached: decision, cache, answer.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mirrors = Mirrors::new(
        MirrorCheck::new(&BlobCheck {
            miss_ttl: std::time::Duration::from_secs(3600),
            ..settings.blob_check
        })
        .unwrap(),
        &routes.policy,
        &settings.signed_mirrors,
    )
    .unwrap();
    let req = request(&blob, client(&proxy, &xff_aws));
    let get = http::Method::GET;
    let Decision::CheckMirrors(warm) = decide(&req, &routes, Places::ranges_only(&table)) else {
        panic!("an AWS client's blob needs a mirror check");
    };
    rt.block_on(mirrors.first_holding(&warm.candidates, &get, None));
    c.bench_function("blob_decision_with_cached_mirror_answer", |b| {
        b.to_async(&rt).iter(|| async {
            let req = request(&blob, client(&proxy, black_box(&xff_aws)));
            match decide(&req, &routes, Places::ranges_only(&table)) {
                Decision::CheckMirrors(chain) => {
                    let found = mirrors.first_holding(&chain.candidates, &get, None).await;
                    chain.decide(found.map(|f| (f.index, f.url)))
                }
                Decision::Reply(r) => r,
            }
        })
    });

    // The same blob for a relayed client whose authorization is cached too: the upstream's
    // "this client may read this blob" (a keyed digest of credential and path, then a cache
    // hit), then the mirror answer as above. The upstream is a loopback listener answering
    // 200, asked once to warm the cache.
    let upstream = rt.block_on(ok_server());
    let mut relay_cfg = ArcheioConfig {
        client_auth: Some(
            serde_yaml::from_str("{mode: relay, public_url: 'https://gw.example'}").unwrap(),
        ),
        ..ArcheioConfig::default()
    };
    relay_cfg.upstream.endpoints = vec![upstream.clone()];
    relay_cfg
        .mirrors
        .regions
        .insert("us-east-1".into(), "http://127.0.0.1:9".into());
    let relay = relay_cfg.check("bench", |_| None).unwrap();
    let endpoints = Upstreams::new(&relay.upstream, false, Box::new(|_, _| {})).unwrap();
    let auth = UpstreamAuth::for_upstream(&relay.upstream, reqwest::Client::new());
    let access = BlobAccess::new(
        &relay.blob_check,
        std::time::Duration::from_secs(3600),
        endpoints
            .no_redirect_client(std::time::Duration::from_secs(5))
            .unwrap(),
    );
    let credential: &[u8] = b"Basic YWxpY2U6YWxpY2UtcGFzc3dvcmQ=";
    let Decision::CheckMirrors(warm) = decide(&req, &relay.routes, Places::ranges_only(&table))
    else {
        panic!("a relayed blob needs a mirror check");
    };
    let path = warm.confirm.clone().expect("relayed blobs are confirmed");
    let asker = Asker::Client(Some(credential));
    assert!(rt.block_on(access.held(&endpoints, &auth, &path, asker, None)));
    let mut g = c.benchmark_group("cached_answer");
    g.bench_function("mirror", |b| {
        b.to_async(&rt)
            .iter(|| mirrors.first_holding(black_box(&warm.candidates), &get, None))
    });
    g.bench_function("relay_authorization", |b| {
        b.to_async(&rt)
            .iter(|| access.held(&endpoints, &auth, black_box(&path), asker, None))
    });
    g.finish();

    // A policy of 50 rules where a blob matches only the last: repository globs, regions
    // and networks that do not hold.
    let long = ArcheioConfig {
        policy: serde_yaml::from_str(LONG_POLICY).unwrap(),
        ..ArcheioConfig::default()
    };
    let long = long.check("bench", |_| None).unwrap().routes;
    assert!(matches!(
        decide(&req, &long, Places::ranges_only(&table)),
        Decision::CheckMirrors(_)
    ));
    c.bench_function("decide/blob_50_rules", |b| {
        b.iter(|| {
            let req = request(&blob, client(&proxy, black_box(&xff_aws)));
            decide(&req, &long, Places::ranges_only(&table))
        })
    });
}

/// A loopback HTTP server answering every request `200`, keep-alive; its base URL.
async fn ok_server() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {
                    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
                    if conn.write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    base
}

/// The proxies in front: the one the connections come from (10.0.0.0/8) and Google's load
/// balancer before it (130.211.0.0/22), which wrote `client, lb`.
fn trusted_lb() -> ClientAddressRules {
    ClientAddressRules {
        trusted_proxies: vec![
            "10.0.0.0/8".parse().unwrap(),
            "130.211.0.0/22".parse().unwrap(),
        ],
        ..ClientAddressRules::default()
    }
}

/// The client of a request from the proxy at 10.1.2.3 carrying `xff`.
fn client(rules: &ClientAddressRules, xff: &[&[u8]]) -> Result<IpAddr, ClientAddrError> {
    let conn = Connection {
        peer: Some("10.1.2.3".parse().unwrap()),
        proxied: None,
    };
    find_client(rules, conn, xff)
}

fn request(target: &str, client: Result<IpAddr, ClientAddrError>) -> Request<'_> {
    Request {
        method: "GET",
        target: target.as_bytes(),
        client,
        upstream: 0,
        has_body: false,
        grants: archeio::routing::Grants::Unchecked,
    }
}

/// 49 rules that miss an AWS us-east-1 client's `pause` blob, then archeio's own.
const LONG_POLICY: &str = include_str!("policy_50_rules.yaml");

fn forwarded_for(c: &mut Criterion) {
    let mut g = c.benchmark_group("x_forwarded_for");
    let conn = Connection {
        peer: Some("10.0.0.1".parse().unwrap()),
        proxied: None,
    };
    let lb: [&[u8]; 1] = [b"203.0.113.7, 130.211.0.1"];
    let long: [&[u8]; 1] =
        [b"1.1.1.1, 2.2.2.2, 3.3.3.3, 4.4.4.4, 5.5.5.5, 2001:db8::7, 130.211.0.1"];
    // Google's load balancer: one counted hop (the measurements before issue 23 are of this).
    let hops = ClientAddressRules {
        trusted_hops: 1,
        ..ClientAddressRules::default()
    };
    g.bench_function("lb_pair", |b| {
        b.iter(|| find_client(&hops, conn, black_box(&lb)))
    });
    g.bench_function("long_chain_v6", |b| {
        b.iter(|| find_client(&hops, conn, black_box(&long)))
    });
    // Trusted proxies by address: nginx's one entry, and a chain through two of ours.
    let listed = ClientAddressRules {
        trusted_proxies: vec![
            "10.0.0.0/8".parse().unwrap(),
            "130.211.0.0/22".parse().unwrap(),
        ],
        ..ClientAddressRules::default()
    };
    let nginx: [&[u8]; 1] = [b"203.0.113.7"];
    let chain: [&[u8]; 1] = [b"1.1.1.1, 2001:db8::7, 10.0.0.9, 130.211.0.1"];
    g.bench_function("trusted_proxies_nginx", |b| {
        b.iter(|| find_client(&listed, conn, black_box(&nginx)))
    });
    g.bench_function("trusted_proxies_chain_v6", |b| {
        b.iter(|| find_client(&listed, conn, black_box(&chain)))
    });
    // A client connecting directly: the header is not read.
    g.bench_function("direct_client_ignored_header", |b| {
        b.iter(|| find_client(&ClientAddressRules::default(), conn, black_box(&long)))
    });
    g.finish();
}

fn range_loading(c: &mut Criterion) {
    let mut g = c.benchmark_group("range_loading");
    g.sample_size(10);
    g.bench_function("embedded_aws_and_gcp", |b| {
        b.iter_batched(
            RangeSources::default,
            |sources| RangeTable::build(&sources, &[]).unwrap(),
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

/// A country-and-network database the size of a real one's IPv4 part: 200,000 networks
/// (/24 and /20 alternately, at pseudo-random places), each with a country, its continent and
/// an AS number, in the GeoLite2 layout (names in two languages, as the real records carry).
fn geo_database() -> Vec<u8> {
    let countries = [
        ("DE", "EU"),
        ("JP", "AS"),
        ("BR", "SA"),
        ("US", "NA"),
        ("ZA", "AF"),
    ];
    let mut w = mmdb_writer::Writer::new("GeoLite2-Country");
    for (i, ip) in addresses(200_000, false).into_iter().enumerate() {
        let len = if i % 2 == 0 { 24 } else { 20 };
        let net = ipnet::IpNet::new(ip, len).unwrap().trunc();
        let (country, continent) = countries[i % countries.len()];
        let names = serde_json::json!({"en": "Somewhere", "de": "Irgendwo"});
        let record = serde_json::json!({
            "continent": {"code": continent, "geoname_id": 6255148, "names": names},
            "country": {"iso_code": country, "geoname_id": 2921044, "names": names},
            "autonomous_system_number": 64512 + (i % 1000) as u32,
        });
        w.insert(net, &record).unwrap();
    }
    w.to_bytes().unwrap()
}

/// Geo placement: the lookup alone, and the blob decision of a client no cloud range places
/// routed by its continent (third rule, after a network and a cloud rule), beside
/// `decide/blob_50_rules`.
fn geo(c: &mut Criterion) {
    let db = GeoDatabase::open(geo_database()).unwrap();
    let geo = GeoTable::new(vec![std::sync::Arc::new(db)]);
    let placed = addresses(200_000, false)[0];
    let unknown: IpAddr = "192.0.2.1".parse().unwrap();
    assert!(geo.lookup(placed).country.is_some());
    assert!(geo.lookup(unknown).country.is_none());
    let mut g = c.benchmark_group("geo_lookup");
    g.bench_function("v4_hit", |b| b.iter(|| geo.lookup(black_box(placed))));
    g.bench_function("v4_miss", |b| b.iter(|| geo.lookup(black_box(unknown))));
    let ips = addresses(1024, false);
    g.bench_function("v4_random_1024", |b| {
        b.iter(|| {
            ips.iter()
                .filter(|ip| geo.lookup(**ip).country.is_some())
                .count()
        })
    });
    g.finish();

    let mut cfg: ArcheioConfig = serde_yaml::from_str(GEO_POLICY).unwrap();
    cfg.ranges = ArcheioConfig::default().ranges;
    let routes = cfg.check("bench", |_| None).unwrap().routes;
    let table = RangeTable::build(&RangeSources::default(), &[]).unwrap();
    let places = Places {
        ranges: &table,
        geo: &geo,
    };
    let blob = format!("/v2/pause/blobs/{SHA}");
    let proxy = trusted_lb();
    let xff = format!("{placed}, 130.211.0.1");
    let xff: [&[u8]; 1] = [xff.as_bytes()];
    let req = request(&blob, client(&proxy, &xff));
    let Decision::CheckMirrors(chain) = decide(&req, &routes, places) else {
        panic!("a placed client's blob goes to a mirror chain");
    };
    assert!(chain.candidates[0].location.starts_with("https://blobs-"));
    c.bench_function("decide/blob_unknown_client_geo", |b| {
        b.iter(|| {
            let req = request(&blob, client(&proxy, black_box(&xff)));
            decide(&req, &routes, places)
        })
    });
}

/// A network rule, a cloud rule, then continents: the geo example's shape.
const GEO_POLICY: &str = "
geo: {databases: [unused-by-the-benchmark.mmdb]}
mirrors:
  named:
    partner: {url: 'https://partner.example'}
    eu: {url: 'https://blobs-eu.example'}
    ap: {url: 'https://blobs-ap.example'}
    us: {url: 'https://blobs-us.example'}
policy:
  rules:
    - {match: {asn: 1}, action: mirrors, mirrors: [partner]}
    - {match: {provider: aws, region: 'eu-*'}, action: mirrors, mirrors: [eu]}
    - {match: {continent: [EU, AF, AS, SA, NA, OC]}, action: mirrors, mirrors: [eu, us]}
    - {match: {kind: blob}, action: mirrors, mirrors: [us]}
";

/// The digest check of a proxied blob: 100 MiB in 64 KiB chunks, as a mirror's body arrives.
fn verify(c: &mut Criterion) {
    use sha2::Digest;
    let blob: Vec<u8> = (0..100u32 << 20)
        .map(|i| (i * 2_654_435_761) as u8)
        .collect();
    let digest = format!("sha256:{:x}", sha2::Sha256::digest(&blob));
    let chunks: Vec<bytes::Bytes> = blob
        .chunks(64 << 10)
        .map(bytes::Bytes::copy_from_slice)
        .collect();
    let mut g = c.benchmark_group("verify");
    g.throughput(criterion::Throughput::Bytes(blob.len() as u64));
    g.sample_size(10);
    g.bench_function("sha256_100mib_64k_chunks", |b| {
        b.iter(|| {
            let mut v = Verifier::new(&digest).unwrap();
            let last = chunks.len() - 1;
            for (i, chunk) in chunks.iter().enumerate() {
                let mut body = Some(chunk.clone());
                v.pass(&mut body, i == last).unwrap();
                black_box(body);
            }
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    lookup,
    decision,
    geo,
    verify,
    forwarded_for,
    range_loading
);
criterion_main!(benches);
