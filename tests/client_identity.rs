//! Who the client is, tested from the attacker's side and behind real load balancers on
//! loopback: a direct client forging forwarding headers, nginx and HAProxy appending
//! `X-Forwarded-For`, HAProxy sending PROXY protocol v1 and v2, forged and missing PROXY
//! headers, IPv4 clients of a dual-stack listener, and the rate limit with a full table.
//!
//! Each proxy connects to the gateway from its own 127.x source address (only that one is
//! trusted) and clients connect from others, so a test tells the proxy and its clients apart.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::front::{have, Front, HaproxyMode};
use common::registry::{Auth, Registry};
use common::{connect_from, free_port, parse_response, request_from, Gateway, Mirror, Resp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn blob(n: u8) -> (String, String) {
    let digest = format!("sha256:{}", format!("{n:02x}").repeat(32));
    (
        format!("/v2/pause/blobs/{digest}"),
        format!("/containers/images/{digest}"),
    )
}

/// The proxy's own address, the only one the gateways below trust.
const PROXY: &str = "127.0.0.2";
/// A client the ranges place in us-east-1.
const PLACED: &str = "127.0.0.5";
/// A client in no range.
const UNPLACED: &str = "127.0.0.6";

/// A us-east-1 mirror and a default one, both holding blob 1; a gateway that places
/// [`PLACED`] in us-east-1 and trusts [`PROXY`], with `extra` keys.
async fn placing_gateway(extra_listen: &[&str], extra: &str) -> (Gateway, Mirror, Mirror) {
    let regional = Mirror::start().await;
    let fallback = Mirror::start().await;
    regional.put(&blob(1).1);
    fallback.put(&blob(1).1);
    let gw = Gateway::start_with_listen(
        extra_listen,
        &format!(
            "  client_address: {{trusted_proxies: ['{PROXY}/32']}}\n\
             \x20 ranges: {{embedded: false, custom: [{{cidr: {PLACED}/32, provider: aws, region: us-east-1}}]}}\n\
             \x20 mirrors: {{default: '{}', replace_regions: true, regions: {{us-east-1: '{}'}}}}\n{extra}",
            fallback.base(),
            regional.base()
        ),
    )
    .await;
    (gw, regional, fallback)
}

async fn get_from(from: &str, addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Resp {
    request_from(Some(ip(from)), addr, "GET", target, headers)
        .await
        .unwrap_or_else(|e| panic!("GET {target} from {from} via {addr}: {e}"))
}

/// Through `front`, [`PLACED`] gets the us-east-1 mirror whatever it claims, [`UNPLACED`]
/// the default one; the access record names the client and the proxy as the peer.
async fn assert_placed_through(
    front: SocketAddr,
    gw: &Gateway,
    regional: &Mirror,
    fallback: &Mirror,
) {
    let target = blob(1).0;
    let forged = [("X-Forwarded-For", "3.3.3.3"), ("Forwarded", "for=3.3.3.3")];
    let r = get_from(PLACED, front, &target, &forged).await;
    assert_eq!(r.status, 307, "{r:?}\n{}", gw.log());
    assert!(r.location().starts_with(&regional.base()), "{r:?}");
    let r = get_from(UNPLACED, front, &target, &[]).await;
    assert_eq!(r.status, 307, "{r:?}\n{}", gw.log());
    assert!(r.location().starts_with(&fallback.base()), "{r:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = gw.log();
    let line = log
        .lines()
        .find(|l| l.contains("archeio::access") && l.contains(&format!("client={PLACED}")))
        .unwrap_or_else(|| panic!("no access record for {PLACED}:\n{log}"));
    assert!(line.contains(&format!("peer={PROXY}")), "{line}");
    assert!(
        line.contains(r#"provider=aws region="us-east-1""#),
        "{line}"
    );
}

/// Issue 23, defect 1: with the shipped defaults a client connecting directly named its own
/// address in `X-Forwarded-For`, escaping the rate limit and an address-based `deny`.
#[tokio::test]
async fn a_client_that_connects_directly_cannot_choose_its_address() {
    let gw = Gateway::start(
        "  rate_limit: {requests_per_second: 1, burst: 5}\n\
         \x20 ranges: {custom: [{cidr: 10.0.0.0/8, provider: corp, region: HQ}]}\n\
         \x20 policy:\n    rules:\n\
         \x20     - {match: {provider: corp, repository: 'internal/**'}, action: upstream}\n\
         \x20     - {match: {repository: 'internal/**'}, action: deny}",
    )
    .await;
    let forged = [("X-Forwarded-For", "10.1.2.3, 192.0.2.1")];
    let r = gw
        .send("GET", "/v2/internal/app/manifests/1.0", &forged)
        .await;
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(r.oci_code(), "NAME_UNKNOWN");
    let mut limited = 0;
    for _ in 0..30 {
        let r = gw.send("GET", "/v2/pause/manifests/3.10", &forged).await;
        assert!(matches!(r.status, 307 | 429), "{r:?}");
        limited += usize::from(r.status == 429);
    }
    assert!(limited >= 20, "only {limited} of 30 requests limited");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = gw.log();
    let line = log
        .lines()
        .find(|l| l.contains("archeio::access") && l.contains("/v2/internal/app"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("client=127.0.0.1"), "{line}");
}

/// Issue 23, defect 2: nginx appends the address it received from; the gateway trusting
/// nginx's address takes that entry, and refuses none of the blobs.
#[tokio::test]
async fn behind_nginx_the_client_is_the_address_nginx_received_from() {
    if !have("nginx") {
        return;
    }
    let (gw, regional, fallback) = placing_gateway(&[], "").await;
    let nginx = Front::nginx(gw.addr, ip(PROXY));
    assert_placed_through(nginx.addr, &gw, &regional, &fallback).await;
    // Straight to the gateway, nobody's forwarding header counts.
    let target = blob(1).0;
    for from in [UNPLACED, "127.0.0.1"] {
        let r = get_from(from, gw.addr, &target, &[("X-Forwarded-For", PLACED)]).await;
        assert_eq!(r.status, 307);
        assert!(r.location().starts_with(&fallback.base()), "{from}: {r:?}");
    }
    let m = gw.metrics().await;
    assert_eq!(
        common::sample(
            &m,
            "archeio_requests_total{route=\"invalid\",status=\"400\"}"
        ),
        0.0,
        "{m}"
    );
}

#[tokio::test]
async fn behind_haproxy_with_forwardfor_the_client_is_placed() {
    if !have("haproxy") {
        return;
    }
    let (gw, regional, fallback) = placing_gateway(&[], "").await;
    let haproxy = Front::haproxy(gw.addr, ip(PROXY), HaproxyMode::ForwardFor);
    assert_placed_through(haproxy.addr, &gw, &regional, &fallback).await;
}

/// A gateway with a second listener that expects PROXY protocol; its address.
async fn proxy_protocol_gateway() -> (Gateway, SocketAddr, Mirror, Mirror) {
    let port = free_port();
    let listen = format!("{{address: '127.0.0.1:{port}', proxy_protocol: true}}");
    let (gw, regional, fallback) = placing_gateway(&[&listen], "").await;
    (gw, ([127, 0, 0, 1], port).into(), regional, fallback)
}

#[tokio::test]
async fn behind_haproxy_with_proxy_protocol_v2_and_v1_the_client_is_placed() {
    if !have("haproxy") {
        return;
    }
    let (gw, pp, regional, fallback) = proxy_protocol_gateway().await;
    for mode in [HaproxyMode::ProxyV2, HaproxyMode::ProxyV1] {
        let haproxy = Front::haproxy(pp, ip(PROXY), mode);
        assert_placed_through(haproxy.addr, &gw, &regional, &fallback).await;
    }
}

/// Sends `bytes` from `from` to `addr` and reads until the gateway closes: the answer, or
/// `None` when it closed without one.
async fn raw_exchange(from: &str, addr: SocketAddr, bytes: &[u8]) -> Option<Resp> {
    let mut stream = connect_from(Some(ip(from)), addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw)).await;
    assert!(read.is_ok(), "the gateway neither answered nor closed");
    parse_response(&raw)
}

/// PROXY headers are believed only from the trusted proxies, and a listener that expects
/// them takes no connection without one.
#[tokio::test]
async fn proxy_protocol_headers_count_only_from_trusted_proxies() {
    let (gw, pp, regional, fallback) = proxy_protocol_gateway().await;
    let target = blob(1).0;
    let request = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let v1 = |src: &str| format!("PROXY TCP4 {src} 127.0.0.1 40000 8080\r\n{request}");

    // The trusted proxy, by hand: v1, then v2.
    let r = raw_exchange(PROXY, pp, v1(PLACED).as_bytes())
        .await
        .expect("an answer");
    assert_eq!(r.status, 307, "{r:?}");
    assert!(r.location().starts_with(&regional.base()), "{r:?}");
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend_from_slice(&[
        0x21, 0x11, 0, 12, 127, 0, 0, 5, 127, 0, 0, 1, 0x9c, 0x40, 0x1f, 0x90,
    ]);
    v2.extend_from_slice(request.as_bytes());
    let r = raw_exchange(PROXY, pp, &v2).await.expect("an answer");
    assert!(r.location().starts_with(&regional.base()), "{r:?}");
    // v2 LOCAL (a load balancer's own health check): the proxy itself is the client.
    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    local.extend_from_slice(request.as_bytes());
    let r = raw_exchange(PROXY, pp, &local).await.expect("an answer");
    assert!(r.location().starts_with(&fallback.base()), "{r:?}");

    // A client connecting directly with a forged header: closed, nothing answered.
    assert!(raw_exchange("127.0.0.1", pp, v1(PLACED).as_bytes())
        .await
        .is_none());
    assert!(raw_exchange(UNPLACED, pp, &v2).await.is_none());
    // The trusted proxy without a header, or with a broken one: closed.
    assert!(raw_exchange(PROXY, pp, request.as_bytes()).await.is_none());
    let broken = format!("PROXY TCP4 not-an-address 127.0.0.1 1 2\r\n{request}");
    assert!(raw_exchange(PROXY, pp, broken.as_bytes()).await.is_none());
    // The plain listener never reads PROXY headers: one is a bad request line there.
    let r = raw_exchange(PROXY, gw.addr, v1(PLACED).as_bytes()).await;
    assert!(r.as_ref().is_none_or(|r| r.status == 400), "{r:?}");

    let m = gw.metrics().await;
    let refused = |reason: &str| {
        common::sample(
            &m,
            &format!("archeio_client_address_refusals_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(refused("proxy_protocol_untrusted"), 2.0, "{m}");
    assert_eq!(refused("proxy_protocol_missing"), 1.0, "{m}");
    assert_eq!(refused("proxy_protocol_invalid"), 1.0, "{m}");
    let log = gw.log();
    assert!(
        log.contains(
            "connection from 127.0.0.1, which client_address.trusted_proxies does not list"
        ),
        "{log}"
    );
}

/// Issue 23, defect 3: on a dual-stack listener IPv4 clients arrive as `::ffff:a.b.c.d`, and
/// proxies on such sockets write that form; `cidr` rules and `--explain` must see IPv4.
#[tokio::test]
async fn ipv4_clients_in_ipv6_form_meet_cidr_rules() {
    let port = free_port();
    let dual = format!("[::]:{port}");
    let gw = Gateway::start_with_listen(
        &[&dual],
        &format!(
            "  client_address: {{trusted_proxies: ['{PROXY}/32']}}\n\
             \x20 policy:\n    rules:\n      - {{match: {{cidr: 127.0.0.0/8, repository: 'secret/**'}}, action: deny}}"
        ),
    )
    .await;
    let v4_on_dual: SocketAddr = ([127, 0, 0, 1], port).into();
    let target = "/v2/secret/app/manifests/1.0";
    let r = get_from("127.0.0.1", v4_on_dual, target, &[]).await;
    assert_eq!(r.status, 404, "peer ::ffff:127.0.0.1: {r:?}");
    for entry in ["::ffff:127.0.0.9", "[::ffff:127.0.0.9]", "::ffff:7f00:9"] {
        // The proxy (listed as IPv4) reaches the dual-stack listener as ::ffff:127.0.0.2.
        let r = get_from(PROXY, v4_on_dual, target, &[("X-Forwarded-For", entry)]).await;
        assert_eq!(r.status, 404, "{entry}: {r:?}");
    }
    let r = get_from(
        PROXY,
        v4_on_dual,
        target,
        &[("X-Forwarded-For", "::ffff:192.0.2.1")],
    )
    .await;
    assert_eq!(r.status, 307, "a client outside 127.0.0.0/8: {r:?}");

    let conf = gw.dir.path().join("archeio.yaml");
    let out = std::process::Command::new(common::BINARY)
        .args([
            "-t",
            "-c",
            conf.to_str().unwrap(),
            "--explain",
            "::ffff:127.0.0.1",
            target,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("127.0.0.1 GET"), "{text}");
    assert!(text.contains("404"), "{text}");
}

/// Issue 23, defect 4: with its table full, the rate limit forgot an abusive client at every
/// request (moka's admission policy) and never limited it.
#[tokio::test]
async fn the_rate_limit_holds_an_active_client_when_its_table_is_full() {
    let gw =
        Gateway::start("  rate_limit: {requests_per_second: 1, burst: 5, max_clients: 20}").await;
    let target = "/v2/pause/manifests/3.10";
    // A table full of clients seen often (an admission policy by frequency keeps them).
    for _ in 0..16 {
        for i in 1..=20u8 {
            let r = get_from(&format!("127.0.1.{i}"), gw.addr, target, &[]).await;
            assert!(matches!(r.status, 307 | 429), "{r:?}");
        }
    }
    // 40 requests in 4 s: a bucket of 5 refilled at 1/s lets about 9 through.
    let mut limited = 0;
    for i in 1..=40u8 {
        let r = get_from("127.0.0.9", gw.addr, target, &[]).await;
        limited += usize::from(r.status == 429);
        // Every abusive request is followed by a client never seen before.
        let r = get_from(&format!("127.0.2.{i}"), gw.addr, target, &[]).await;
        assert_eq!(r.status, 307);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        limited >= 25,
        "only {limited} of 40 over-limit requests refused"
    );
}

/// `-t` says when forwarding headers will be ignored although rules look at the client.
#[test]
fn the_config_test_warns_when_rules_look_at_clients_and_no_proxy_is_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("a.yaml");
    let run = |client_address: &str| {
        std::fs::write(
            &conf,
            format!(
                "archeio:\n  ranges: {{embedded: false}}\n{client_address}  policy:\n    rules:\n\
                 \x20     - {{match: {{cidr: 10.0.0.0/8}}, action: deny}}\n"
            ),
        )
        .unwrap();
        let out = std::process::Command::new(common::BINARY)
            .args(["-t", "-c", conf.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let warned = run("");
    assert!(
        warned.contains("warning") && warned.contains("client_address.trusted_proxies"),
        "{warned}"
    );
    let quiet = run("  client_address: {trusted_proxies: [10.9.0.0/16]}\n");
    assert!(!quiet.contains("warning"), "{quiet}");
}

/// A real client through nginx: skopeo pulls an image, and every blob goes to the mirror of
/// the region its address (as nginx received it) is placed in, not to the one of nginx's.
#[tokio::test(flavor = "multi_thread")]
async fn skopeo_through_nginx_gets_blobs_from_the_mirror_of_its_address() {
    if !have("nginx") || !have("skopeo") || !have("docker-registry") {
        return;
    }
    let img = common::registry::images();
    let reg = Registry::start(&img.storage, None, Auth::None);
    let up = reg.url(false);
    // The default mirror holds nothing; the regional one is the registry's own blob store.
    let empty = Mirror::start().await;
    let gw = Gateway::start(&format!(
        "  upstream: {{endpoints: ['{up}'], path: test}}
  mirrors:
    default: '{empty}'
    replace_regions: true
    regions: {{}}
    named:
      regional: {{url: '{up}', blob_path: '/v2/test/app/blobs/{{digest}}'}}
  ranges: {{embedded: false, custom: [{{cidr: 127.0.0.1/32, provider: aws, region: us-east-1}}]}}
  client_address: {{trusted_proxies: ['{PROXY}/32']}}
  policy:
    rules:
      - {{match: {{provider: aws, region: us-east-1, kind: blob}}, action: mirrors, mirrors: [regional]}}
      - {{match: {{kind: blob}}, action: mirrors, mirrors: [default]}}",
        empty = empty.base()
    ))
    .await;
    let nginx = Front::nginx(gw.addr, ip(PROXY));
    let out_dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            &format!("docker://{}/app:v1", nginx.addr),
            &format!("oci:{}:v1", out_dir.path().display()),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo: {}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        gw.log(),
        nginx.log()
    );
    for digest in [&img.app_layer, &img.app_config] {
        let hex = digest.trim_start_matches("sha256:");
        assert!(
            out_dir.path().join("blobs/sha256").join(hex).exists(),
            "{digest}"
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = gw.log();
    let blobs: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("archeio::access") && l.contains("/blobs/"))
        .collect();
    assert!(blobs.len() >= 2, "{log}");
    for line in blobs {
        assert!(line.contains("client=127.0.0.1 "), "{line}");
        assert!(line.contains(&format!("peer={PROXY}")), "{line}");
        assert!(line.contains("decision=blob/mirror"), "{line}");
        assert!(line.contains(r#"region="us-east-1""#), "{line}");
        assert!(
            line.contains(&format!(r#"location="{up}/v2/test/app/blobs/"#)),
            "{line}"
        );
    }
    assert_eq!(empty.all_heads(), 0, "the default mirror was asked");
}
