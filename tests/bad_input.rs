//! Hostile and malformed requests over raw TCP (nothing normalises them): request smuggling
//! shapes, control bytes, encoded dots and slashes, oversize parts, invalid UTF-8, odd
//! forwarding headers and methods. Every answer must be a 4xx (501 allowed for methods), a
//! 200 for the version check, or a 307 to a configured host; never another 5xx, a hang, or a
//! dead process.

mod common;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::*;

const UP: &str = "http://upstream.test/v2/prefix/images";

#[derive(Debug)]
enum Outcome {
    /// Status and Location of the first answer.
    Answer(u16, Option<String>),
    /// The server closed the connection without answering.
    Closed,
}

/// Sends `bytes` and reads the first answer's header, at most 5 s.
async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> Outcome {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // A server may answer and close before reading everything (an oversize header).
    let _ = s.write_all(bytes).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.windows(4).any(|w| w == b"\r\n\r\n") {
                        return;
                    }
                }
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "no answer and no close within 5 s for {:?}",
        String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
    );
    if got.is_empty() {
        return Outcome::Closed;
    }
    let head = String::from_utf8_lossy(&got);
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {head:?}"));
    let location = head
        .split("\r\n")
        .find_map(|l| {
            l.strip_prefix("Location: ")
                .or_else(|| l.strip_prefix("location: "))
        })
        .map(str::to_string);
    Outcome::Answer(status, location)
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_requests_get_4xx_or_correct_redirects_and_never_5xx() {
    let mirror = Mirror::start().await;
    let keys = format!(
        "  upstream: {{endpoints: ['http://upstream.test'], path: prefix/images}}
  mirrors: {{default: '{m}', replace_regions: true, regions: {{local-1: '{m}'}}}}
  ranges: {{embedded: false, custom: [{{cidr: 127.0.0.0/8, cloud: aws, region: local-1}}]}}",
        m = mirror.base()
    );
    let mut gw = Gateway::start(&keys).await;
    let allowed = [
        UP.to_string(),
        mirror.base(),
        "https://github.com/kubernetes/registry.k8s.io".to_string(),
        "https://www.linuxfoundation.org/privacy-policy/".to_string(),
    ];
    let sha = format!("sha256:{}", "ab".repeat(32));
    let long_path = format!("/v2/{}/manifests/x", "a/".repeat(3000));
    let huge_header = format!("X-Filler: {}\r\n", "x".repeat(100_000));
    let many_headers: String = (0..2000).map(|i| format!("X-H{i}: v\r\n")).collect();
    let xff_list: String = (0..5000)
        .map(|i| format!("10.0.{}.{}, ", i / 250, i % 250))
        .collect();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // Smuggling shapes.
        ("CL and TE", b"GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /v2/_catalog HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("two CLs", b"GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 44\r\n\r\nGET /v2/_catalog HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("TE not chunked", b"GET /v2/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, identity\r\n\r\n".to_vec()),
        ("TE with space", b"GET /v2/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n".to_vec()),
        ("bad chunk size", b"GET /v2/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n".to_vec()),
        ("POST with body", b"POST /v2/a/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nabcd".to_vec()),
        // Control bytes.
        ("CR in path", b"GET /v2/a\rb/manifests/x HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("LF in path", b"GET /v2/a\nb/manifests/x HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("NUL in path", b"GET /v2/a\0b/manifests/x HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("NUL in header", b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.2.3.4\0\r\n\r\n".to_vec()),
        ("CR in header", b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n".to_vec()),
        ("bare LF lines", b"GET /v2/p/manifests/v1 HTTP/1.1\nHost: x\n\n".to_vec()),
        ("folded header", b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n".to_vec()),
        ("space before colon", b"GET /v2/ HTTP/1.1\r\nHost : x\r\n\r\n".to_vec()),
        // Encoded slashes and dots, traversal.
        ("%2F", b"GET /v2/a%2Fb/manifests/x HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("%2e%2e", b"GET /v2/%2e%2e/%2e%2e/manifests/x HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("dot segments", b"GET /v2/../../etc/manifests/x HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("%5C", b"GET /v2/a%5C..%5Cb/manifests/x HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("%00", b"GET /v2/a%00/manifests/x HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("backslash", b"GET /v2/a\\b/manifests/x HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("absolute form", b"GET http://evil.example/v2/p/manifests/x HTTP/1.1\r\nHost: evil.example\r\n\r\n".to_vec()),
        ("scheme-relative", b"GET //evil.example/v2/ HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("asterisk", b"GET * HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("Host header ignored", b"GET /v2/p/manifests/x HTTP/1.1\r\nHost: evil.example\r\nX-Forwarded-Host: evil.example\r\n\r\n".to_vec()),
        // Oversize parts.
        ("5 KiB path", format!("GET {long_path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()),
        ("100 KiB path", format!("GET /v2/{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(100_000)).into_bytes()),
        ("100 KiB header", format!("GET /v2/ HTTP/1.1\r\nHost: x\r\n{huge_header}\r\n").into_bytes()),
        ("2000 headers", format!("GET /v2/ HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n").into_bytes()),
        // Invalid UTF-8.
        ("UTF-8 path", b"GET /v2/\xff\xfe/manifests/x HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("UTF-8 XFF", format!("GET /v2/p/blobs/{sha} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: \u{0}").into_bytes().into_iter().chain(b"\xff\xfe\r\n\r\n".iter().copied()).collect()),
        // Forwarding headers.
        ("5000 XFF entries", format!("GET /v2/p/blobs/{sha} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {xff_list}127.0.0.1\r\n\r\n").into_bytes()),
        ("XFF zone id", format!("GET /v2/p/blobs/{sha} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: fe80::1%eth0, 127.0.0.1\r\n\r\n").into_bytes()),
        ("XFF with port", format!("GET /v2/p/blobs/{sha} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.2.3.4:80, 127.0.0.1\r\n\r\n").into_bytes()),
        ("XFF garbage", format!("GET /v2/p/blobs/{sha} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: <script>, 127.0.0.1\r\n\r\n").into_bytes()),
        ("XFF empty", format!("GET /v2/p/blobs/{sha} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: \r\n\r\n").into_bytes()),
        // Methods.
        ("lower-case get", b"get /v2/ HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("mixed-case GeT", b"GeT /v2/p/manifests/x HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("unknown method", b"BREW /v2/ HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("CONNECT", b"CONNECT upstream.test:443 HTTP/1.1\r\nHost: upstream.test:443\r\n\r\n".to_vec()),
        ("TRACE", b"TRACE /v2/ HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("garbage line", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec()),
        ("no version", b"GET /v2/\r\n\r\n".to_vec()),
        ("HTTP/2.0 line", b"GET /v2/ HTTP/2.0\r\nHost: x\r\n\r\n".to_vec()),
        ("upgrade h2c", b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n".to_vec()),
    ];
    let mut report = Vec::new();
    for (name, bytes) in &cases {
        let outcome = raw(gw.addr, bytes).await;
        report.push(format!("{name}: {outcome:?}"));
        match &outcome {
            Outcome::Answer(200, _) => assert!(
                bytes.windows(8).any(|w| w == b"/v2/ HTT"),
                "{name}: 200 for something other than the version check"
            ),
            Outcome::Answer(307, Some(location)) => assert!(
                allowed.iter().any(|a| location.starts_with(a.as_str())),
                "{name}: Location outside the configured hosts: {location}"
            ),
            Outcome::Answer(status, _) => assert!(
                (400..500).contains(status) || *status == 501,
                "{name}: answered {status}"
            ),
            // Pingora drops some malformed connections without an answer; not a 5xx.
            Outcome::Closed => {}
        }
        assert!(
            !gw.exited_within(Duration::ZERO).await,
            "{name}: the gateway died"
        );
    }
    eprintln!("{}", report.join("\n"));
    assert_eq!(gw.get("/v2/").await.status, 200);
    assert!(!gw.log().contains("panicked"), "{}", gw.log());
}

/// Sends `bytes` and reads until the server closes (at most 5 s): status, headers, body.
async fn raw_whole(addr: std::net::SocketAddr, bytes: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    let end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no answer: {:?}", String::from_utf8_lossy(&got)));
    let head = String::from_utf8_lossy(&got[..end]).to_string();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head, got[end + 4..].to_vec())
}

fn oci_code(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(body)));
    v["errors"][0]["code"].as_str().unwrap().to_string()
}

/// Issue 12, item 1: only the distribution spec's pull endpoints, with names, tags and
/// digests of its grammar, are redirected or proxied; anything else is a 404 with an OCI
/// error, and in pass-through the upstream (which gets our credentials) never sees it.
#[tokio::test(flavor = "multi_thread")]
async fn paths_outside_the_distribution_grammar_are_404_and_never_reach_the_upstream() {
    let upstream = common::fake::FakeServer::start(|_| common::fake::Canned::new(200)).await;
    let sha = format!("sha256:{}", "ab".repeat(32));
    let refused = [
        "/v2/..;/..;/other/private/manifests/latest",
        "/v2/.;x/manifests/latest",
        "/v2/..;a=b/manifests/latest",
        "/v2/a/..;/manifests/latest",
        "/v2/%252e%252e/manifests/latest",
        "/v2/%c0%ae%c0%ae/x/manifests/latest",
        "/v2/a%20b/manifests/latest",
        "/v2/Upper/manifests/latest",
        "/v2/a--/manifests/latest",
        "/v2/a___b/manifests/latest",
        "/v2/a/manifests/-tag",
        "/v2/a/manifests/..;",
        "/v2/a/manifests/sha256:abc",
        "/v2/a/blobs/sha256:abc",
        "/v2/a/blobs/uploads",
        "/v2/a/referrers/latest",
        "/v2/a/tags/other",
        "/v2/a/other/thing",
        "/v2/manifests/latest",
        "/v2/a;b=c/manifests/latest",
    ];
    for mode in ["redirect", "passthrough"] {
        let keys = format!(
            "  mode: {mode}
  upstream: {{endpoints: ['{}'], path: a/b}}
  ranges: {{embedded: false}}",
            upstream.url()
        );
        let gw = Gateway::start(&keys).await;
        for target in refused {
            for method in ["GET", "HEAD"] {
                let r = gw.send(method, target, &[]).await;
                assert_eq!(r.status, 404, "{mode} {method} {target}: {r:?}");
                if method == "GET" {
                    let code = r.oci_code();
                    assert!(
                        [
                            "NAME_INVALID",
                            "NAME_UNKNOWN",
                            "TAG_INVALID",
                            "DIGEST_INVALID"
                        ]
                        .contains(&code.as_str()),
                        "{mode} {target}: {code}"
                    );
                }
            }
        }
        // Names, tags and digests of the grammar still go through.
        for target in [
            "/v2/pause/manifests/3.10".to_string(),
            "/v2/a.b/c_d/e__f/g--h/manifests/V1_x.y-z".to_string(),
            format!("/v2/pause/manifests/{sha}"),
            "/v2/pause/tags/list?n=10&last=3.9".to_string(),
            format!("/v2/pause/referrers/{sha}?artifactType=x"),
        ] {
            let r = gw.get(&target).await;
            assert!(r.status == 307 || r.status == 200, "{mode} {target}: {r:?}");
        }
    }
    let leaked: Vec<_> = upstream
        .seen_except_health()
        .into_iter()
        .filter(|s| !refused.iter().all(|r| !s.target.contains(&r[3..])))
        .collect();
    assert!(leaked.is_empty(), "the upstream saw {leaked:?}");
}

/// Issue 12, item 3: empty lines before a request line do not end the header deadline.
#[tokio::test(flavor = "multi_thread")]
async fn a_header_after_leading_empty_lines_still_has_its_deadline() {
    let gw = Gateway::start("  client_timeouts: {header: 1s, idle: 2s, body: 1s}").await;
    let started = std::time::Instant::now();
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"\r\n\r\n").await.unwrap();
    let header = b"GET /v2/ HTTP/1.1\r\nHost: registry\r\nUser-Agent: slow-client/1.0\r\n";
    let mut buf = [0u8; 256];
    let mut closed = None;
    'send: for byte in header {
        if s.write_all(std::slice::from_ref(byte)).await.is_err() {
            closed = Some(started.elapsed());
            break;
        }
        match tokio::time::timeout(Duration::from_millis(150), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = Some(started.elapsed());
                break 'send;
            }
            Ok(Ok(_)) => panic!("answered a request that was never complete"),
            Err(_) => {}
        }
    }
    let closed = closed.expect("a header trickled after empty lines was never cut off");
    assert!(closed < Duration::from_secs(4), "{closed:?}");
}

/// Issue 12, item 11: request lines that Pingora would rewrite (a space escaped, a fragment
/// dropped) or refuse itself (absolute form with another Host) get the gateway's own answer:
/// 400 with an OCI error on /v2 paths, and one access-log line each.
#[tokio::test(flavor = "multi_thread")]
async fn refused_request_lines_get_our_answer_and_an_access_log_line() {
    let gw = Gateway::start(
        "  upstream: {endpoints: ['http://upstream.test'], path: prefix}\n  ranges: {embedded: false}",
    )
    .await;
    let cases: [(&str, &[u8], bool); 6] = [
        (
            "space",
            b"GET /v2/pause/manifests/a b HTTP/1.1\r\nHost: x\r\n\r\n",
            true,
        ),
        (
            "fragment",
            b"GET /v2/pause/manifests/1#frag HTTP/1.1\r\nHost: x\r\n\r\n",
            true,
        ),
        (
            "absolute form",
            b"GET http://evil/v2/pause/manifests/1 HTTP/1.1\r\nHost: x\r\n\r\n",
            false,
        ),
        (
            "absolute form, same host",
            b"GET http://x/v2/pause/manifests/1 HTTP/1.1\r\nHost: x\r\n\r\n",
            false,
        ),
        (
            "quote",
            b"GET /v2/pause/manifests/\"x\" HTTP/1.1\r\nHost: x\r\n\r\n",
            true,
        ),
        (
            "raw UTF-8",
            b"GET /v2/p\xc3\xa9/manifests/1 HTTP/1.1\r\nHost: x\r\n\r\n",
            true,
        ),
    ];
    for (name, bytes, api) in cases {
        let before = gw.log().matches("archeio::access").count();
        let (status, head, body) = raw_whole(gw.addr, bytes).await;
        assert_eq!(status, 400, "{name}: {head}");
        if api {
            assert_eq!(oci_code(&body), "NAME_INVALID", "{name}");
        } else {
            assert!(!body.is_empty(), "{name}: empty body");
        }
        let mut logged = 0;
        for _ in 0..40 {
            logged = gw.log().matches("archeio::access").count() - before;
            if logged > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(logged, 1, "{name}: access-log lines\n{}", gw.log());
    }
    // The log says what was asked, fragment included, and how it was answered.
    let log = gw.log();
    assert!(
        log.contains(
            "GET /v2/pause/manifests/1#frag client=127.0.0.1 decision=invalid/- status=400"
        ),
        "{log}"
    );
}
