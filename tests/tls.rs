//! The TLS listener (issue 25): certificates chosen by SNI, HTTP/2 and HTTP/1.1 answering
//! alike, a certificate replaced on disk served to new connections while established ones
//! go on, and a real client pulling through it. A CA made here; everything on 127.0.0.1.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::registry::{images, sha256, Auth, Registry};
use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};

/// A CA: its PEM, and what signs with it.
fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

/// A server certificate for `names` (and 127.0.0.1) with common name `cn`, signed by
/// `issuer`, written to `dir/<file>.pem` and `dir/<file>.key`.
fn leaf(issuer: &Issuer<'static, KeyPair>, names: &[&str], cn: &str, dir: &Path, file: &str) {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    params.distinguished_name.push(DnType::CommonName, cn);
    let cert = params.signed_by(&key, issuer).unwrap();
    std::fs::write(dir.join(format!("{file}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{file}.key")), key.serialize_pem()).unwrap();
}

/// `curl` over TLS with `args`, trusting `ca`: (status line code, HTTP version, headers,
/// body).
fn curl(ca: &Path, args: &[&str]) -> (String, String, String) {
    let out = Command::new("curl")
        .args(["-s", "-D", "-", "--cacert"])
        .arg(ca)
        .args(["-w", "\n%{http_version}"])
        .args(args)
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (rest, version) = text.rsplit_once('\n').unwrap_or((&text, ""));
    let (head, body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
    (version.to_string(), head.to_lowercase(), body.to_string())
}

/// The subject common name of the certificate served for `sni`.
fn served_cn(port: u16, sni: &str) -> String {
    let s_client = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", sni])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-nameopt", "multiline"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    x509.stdin
        .take()
        .unwrap()
        .write_all(&s_client.stdout)
        .unwrap();
    let out = x509.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("commonName")
                .map(|v| v.trim_start_matches([' ', '=']).trim().to_string())
        })
        .unwrap_or_default()
}

/// Issue 25: the gateway terminates TLS itself, picks the certificate by SNI (the first when
/// no name matches), speaks HTTP/2 and HTTP/1.1 with the same answers, and takes a renewed
/// certificate from disk without cutting established connections.
#[tokio::test(flavor = "multi_thread")]
async fn the_tls_listener_serves_http2_and_http1_alike_and_renews_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_a, issuer_a) = ca("archeio test CA a");
    let (ca_b, issuer_b) = ca("archeio test CA b");
    leaf(&issuer_a, &["localhost"], "first", dir.path(), "first");
    leaf(
        &issuer_b,
        &["registry.test", "*.mirror.test"],
        "second",
        dir.path(),
        "second",
    );
    let (ca_a_file, ca_b_file) = (dir.path().join("ca-a.pem"), dir.path().join("ca-b.pem"));
    std::fs::write(&ca_a_file, &ca_a).unwrap();
    std::fs::write(&ca_b_file, &ca_b).unwrap();
    let tls_port = free_port();
    let gw = Gateway::start(&format!(
        "  upstream: {{endpoints: ['https://upstream.test'], path: images}}
  ranges: {{embedded: false}}
  policy: {{rules: [{{match: {{kind: blob}}, action: upstream}}]}}
  tls:
    listen: ['127.0.0.1:{tls_port}']
    certificates:
      - {{cert_file: '{d}/first.pem', key_file: '{d}/first.key'}}
      - {{cert_file: '{d}/second.pem', key_file: '{d}/second.key'}}",
        d = dir.path().display()
    ))
    .await;
    let base = format!("https://localhost:{tls_port}");
    let resolve = format!("localhost:{tls_port}:127.0.0.1");

    // The same answers over HTTP/2 and HTTP/1.1, and over plain HTTP.
    for target in [
        "/v2/",
        "/v2/app/manifests/v1",
        "/v2/Bad/manifests/v1",
        "/v2/app/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000",
        "/nowhere",
    ] {
        let url = format!("{base}{target}");
        let (v2, head2, body2) = curl(&ca_a_file, &["--http2", "--resolve", &resolve, &url]);
        let (v1, head1, body1) = curl(&ca_a_file, &["--http1.1", "--resolve", &resolve, &url]);
        assert_eq!((v2.as_str(), v1.as_str()), ("2", "1.1"), "{target}");
        let status = |head: &str| {
            head.lines()
                .next()
                .unwrap_or("")
                .split(' ')
                .nth(1)
                .map(str::to_string)
        };
        let header = |head: &str, name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_string))
        };
        assert_eq!(status(&head2), status(&head1), "{target}");
        assert!(status(&head2).is_some(), "{target}: {head2}");
        for name in [
            "location",
            "content-type",
            "docker-distribution-api-version",
        ] {
            assert_eq!(
                header(&head2, name),
                header(&head1, name),
                "{target} {name}"
            );
        }
        assert_eq!(body2, body1, "{target}");
        let plain = gw.get(target).await;
        assert_eq!(
            status(&head1).unwrap(),
            plain.status.to_string(),
            "{target}"
        );
    }

    let m = gw.metrics().await;
    assert_eq!(
        sample(&m, r#"archeio_tls_handshakes_total{alpn="h2"}"#),
        5.0,
        "{m}"
    );
    assert_eq!(
        sample(&m, r#"archeio_tls_handshakes_total{alpn="http/1.1"}"#),
        5.0
    );

    // SNI: each name its certificate; an unknown name the first.
    assert_eq!(served_cn(tls_port, "localhost"), "first");
    assert_eq!(served_cn(tls_port, "registry.test"), "second");
    assert_eq!(served_cn(tls_port, "a.mirror.test"), "second");
    assert_eq!(served_cn(tls_port, "other.test"), "first");
    let (version, head, _) = curl(
        &ca_b_file,
        &[
            "--resolve",
            &format!("registry.test:{tls_port}:127.0.0.1"),
            &format!("https://registry.test:{tls_port}/v2/"),
        ],
    );
    assert_eq!(version, "2");
    assert!(head.starts_with("http/2 200"), "{head}");

    // A connection opened before the renewal keeps working; new ones get the new
    // certificate.
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_a.as_bytes()).unwrap())
        .resolve(
            "localhost",
            format!("127.0.0.1:{tls_port}").parse().unwrap(),
        )
        .pool_idle_timeout(Duration::from_secs(60))
        .tls_info(true)
        .build()
        .unwrap();
    let peer_cert = |r: &reqwest::Response| {
        r.extensions()
            .get::<reqwest::tls::TlsInfo>()
            .and_then(|i| i.peer_certificate().map(<[u8]>::to_vec))
            .unwrap()
    };
    let before = client.get(format!("{base}/v2/")).send().await.unwrap();
    let old_cert = peer_cert(&before);
    leaf(&issuer_a, &["localhost"], "renewed", dir.path(), "first");
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_cn(tls_port, "localhost") != "renewed" {
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was not served:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = client.get(format!("{base}/v2/")).send().await.unwrap();
    assert_eq!(after.status(), 200);
    assert_eq!(
        peer_cert(&after),
        old_cert,
        "the established connection was kept"
    );

    // A key that does not match its certificate keeps the renewed pair, logged and counted.
    std::fs::copy(dir.path().join("second.key"), dir.path().join("first.key")).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(served_cn(tls_port, "localhost"), "renewed");
    let m = gw.metrics().await;
    assert_eq!(
        sample(&m, r#"archeio_tls_certificate_reloads_total{result="ok"}"#),
        1.0,
        "{m}"
    );
    assert!(
        sample(
            &m,
            r#"archeio_tls_certificate_reloads_total{result="error"}"#
        ) >= 1.0
    );
    assert!(gw.log().contains("first.key"), "{}", gw.log());
}

/// Issue 25: a real client trusting the test CA pulls through the TLS listener. (skopeo's
/// transport here offers no ALPN, so it speaks HTTP/1.1; curl covers HTTP/2 above.)
#[tokio::test(flavor = "multi_thread")]
async fn skopeo_pulls_through_the_tls_listener() {
    let img = images();
    let reg = Registry::start(&img.storage, None, Auth::None);
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, issuer) = ca("archeio test CA");
    leaf(&issuer, &["localhost"], "gateway", dir.path(), "gw");
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    std::fs::write(certs.join("ca.crt"), &ca_pem).unwrap();
    let tls_port = free_port();
    let gw = Gateway::start(&format!(
        "  mode: passthrough
  upstream: {{endpoints: ['{up}'], path: test}}
  ranges: {{embedded: false}}
  policy: {{rules: [{{match: {{kind: blob}}, action: upstream}}]}}
  tls:
    listen: ['127.0.0.1:{tls_port}']
    certificates: [{{cert_file: '{d}/gw.pem', key_file: '{d}/gw.key'}}]",
        up = reg.url(false),
        d = dir.path().display()
    ))
    .await;
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new("skopeo")
        .args(["copy", "--quiet", "--src-cert-dir"])
        .arg(&certs)
        .arg(format!("docker://localhost:{tls_port}/app:v1"))
        .arg(format!("oci:{}:v1", out_dir.path().display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        gw.log()
    );
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.path().join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], img.app_manifest.as_str());
    let layer = img.app_layer.trim_start_matches("sha256:");
    let bytes = std::fs::read(out_dir.path().join("blobs/sha256").join(layer)).unwrap();
    assert_eq!(sha256(&bytes), img.app_layer);
    // Proxied bodies and ranges over HTTP/2 are HTTP/1.1's, byte for byte.
    let ca_file = certs.join("ca.crt");
    let resolve = format!("localhost:{tls_port}:127.0.0.1");
    let blob = format!(
        "https://localhost:{tls_port}/v2/app/blobs/{}",
        img.app_layer
    );
    for (range, status, expected) in [
        (None, "200", &bytes[..]),
        (Some("Range: bytes=1000-4999"), "206", &bytes[1000..5000]),
    ] {
        for version in ["--http2", "--http1.1"] {
            let body = out_dir.path().join("body");
            let mut cmd = Command::new("curl");
            cmd.args(["-s", "--cacert"])
                .arg(&ca_file)
                .args(["-o"])
                .arg(&body)
                .args(["-w", "%{http_code} %{http_version}", version])
                .args(["--resolve", &resolve, &blob]);
            if let Some(r) = range {
                cmd.args(["-H", r]);
            }
            let out = cmd.output().unwrap();
            let said = String::from_utf8_lossy(&out.stdout).to_string();
            let spoken = if version == "--http2" { "2" } else { "1.1" };
            assert_eq!(said, format!("{status} {spoken}"), "{version} {range:?}");
            assert!(
                std::fs::read(&body).unwrap() == expected,
                "{version} {range:?}"
            );
        }
    }

    let m = gw.metrics().await;
    let handshakes: f64 = ["h2", "http/1.1", "none"]
        .iter()
        .map(|a| sample(&m, &format!("archeio_tls_handshakes_total{{alpn=\"{a}\"}}")))
        .sum();
    assert!(handshakes >= 1.0, "skopeo came over TLS: {m}");
}

/// Issue 25: a gateway may serve TLS only (no plain listener), and a reload that names
/// another certificate pair serves it to the next connection.
#[tokio::test(flavor = "multi_thread")]
async fn a_tls_only_gateway_takes_a_new_certificate_list_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, issuer) = ca("archeio test CA");
    leaf(&issuer, &["localhost"], "first", dir.path(), "first");
    leaf(&issuer, &["localhost"], "second", dir.path(), "second");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca_pem).unwrap();
    let (tls_port, admin) = (free_port(), free_port());
    let conf = |pair: &str| {
        format!(
            "version: 1\nthreads: 1\npid_file: {d}/archeio.pid\nupgrade_sock: {d}/upgrade.sock
archeio:
  listen: []
  admin_listen: ['127.0.0.1:{admin}']
  upstream: {{endpoints: ['https://upstream.test'], path: images}}
  ranges: {{embedded: false}}
  policy: {{rules: [{{match: {{kind: blob}}, action: upstream}}]}}
  tls:
    listen: ['127.0.0.1:{tls_port}']
    certificates: [{{cert_file: '{d}/{pair}.pem', key_file: '{d}/{pair}.key'}}]
",
            d = dir.path().display()
        )
    };
    let run = tempfile::tempdir().unwrap();
    let path = run.path().join("archeio.yaml");
    std::fs::write(&path, conf("first")).unwrap();
    let cmd = command(&["-c", path.to_str().unwrap()], &[], run.path());
    let gw = Gateway::spawn_tls_only(cmd, tls_port, admin, run).await;
    let resolve = format!("localhost:{tls_port}:127.0.0.1");
    let url = format!("https://localhost:{tls_port}/v2/app/manifests/v1");
    let (version, head, _) = curl(&ca_file, &["--http2", "--resolve", &resolve, &url]);
    assert_eq!(version, "2");
    assert!(head.starts_with("http/2 307"), "{head}");
    assert_eq!(served_cn(tls_port, "localhost"), "first");

    std::fs::write(path.with_extension("new"), conf("second")).unwrap();
    std::fs::rename(path.with_extension("new"), &path).unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &gw.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_cn(tls_port, "localhost") != "second" {
        assert!(Instant::now() < deadline, "{}", gw.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether the gateway closes a TLS connection (ALPN `alpn`) on which the client sends
/// `bytes` and then nothing, within `wait`.
fn tls_connection_closed_within(port: u16, alpn: &str, bytes: &[u8], wait: Duration) -> bool {
    use std::io::Write;
    let mut s_client = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-alpn",
            alpn,
            "-servername",
            "localhost",
        ])
        .args(["-connect", &format!("127.0.0.1:{port}")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kept open: the client is silent, not gone.
    let mut stdin = s_client.stdin.take().unwrap();
    stdin.write_all(bytes).unwrap();
    stdin.flush().unwrap();
    let deadline = Instant::now() + wait;
    let closed = loop {
        if s_client.try_wait().unwrap().is_some() {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = s_client.kill();
    let _ = s_client.wait();
    drop(stdin);
    closed
}

/// Issue 25: TLS and HTTP/2 connections get the slow-client guards plain HTTP/1.1 has. A
/// client that completed the TLS handshake and then sent nothing (either protocol), or only
/// the HTTP/2 connection preface, held its connection until the process stopped.
#[tokio::test(flavor = "multi_thread")]
async fn silent_tls_connections_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (_, issuer) = ca("archeio test CA");
    leaf(&issuer, &["localhost"], "gw", dir.path(), "gw");
    let tls_port = free_port();
    let gw = Gateway::start(&format!(
        "  upstream: {{endpoints: ['https://upstream.test'], path: images}}
  ranges: {{embedded: false}}
  policy: {{rules: [{{match: {{kind: blob}}, action: upstream}}]}}
  client_timeouts: {{idle: 1s}}
  tls:
    listen: ['127.0.0.1:{tls_port}']
    certificates: [{{cert_file: '{d}/gw.pem', key_file: '{d}/gw.key'}}]",
        d = dir.path().display()
    ))
    .await;
    let wait = Duration::from_secs(6);
    for alpn in ["h2", "http/1.1"] {
        assert!(
            tls_connection_closed_within(tls_port, alpn, b"", wait),
            "{alpn}, silent after the handshake:\n{}",
            gw.log()
        );
    }
    // The connection preface and an empty SETTINGS frame: an HTTP/2 connection, no stream.
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    assert!(
        tls_connection_closed_within(tls_port, "h2", &preface, wait),
        "idle after the preface:\n{}",
        gw.log()
    );
}
