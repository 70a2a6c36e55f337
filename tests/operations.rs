//! What an operator meets around the routing: start-up failures, readiness, shutdown and
//! draining, the configuration check, the command line and the log records.

mod common;

use std::net::TcpListener as StdListener;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{command, free_port, repo_file, request, Gateway, Mirror, BINARY};

/// Runs the binary to completion with `args` and `env` (no inherited archeio variables).
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BINARY);
    for var in archeio::config::ENV_VARS {
        cmd.env_remove(var);
    }
    cmd.env_remove("ARCHEIO_CONFIG");
    cmd.args(args)
        .envs(env.iter().copied())
        .current_dir(repo_file(""))
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// What `-t --print` prints for `conf`, which must pass.
fn print_config(conf: &str, env: &[(&str, &str)]) -> String {
    let out = run(&["-t", "-c", conf, "--print"], env);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    text(&out.stdout)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A configuration file in `dir` with Pingora keys `top` and archeio keys `archeio`
/// (indented under `archeio:`).
fn write_conf(dir: &std::path::Path, top: &str, archeio: &str) -> String {
    let path = dir.join("archeio.yaml");
    let conf = format!(
        "version: 1\npid_file: {d}/archeio.pid\nupgrade_sock: {d}/upgrade.sock\n{top}\narcheio:\n{archeio}\n",
        d = dir.display()
    );
    std::fs::write(&path, conf).unwrap();
    path.to_str().unwrap().to_string()
}

/// Starts the binary on `conf` without waiting for it.
fn spawn(conf: &str, dir: &std::path::Path) -> std::process::Child {
    command(&["-c", conf], &[], dir).spawn().unwrap()
}

/// Waits up to `limit` for `child` to exit; its exit code, or None when it is still running.
fn exit_within(child: &mut std::process::Child, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status.code().unwrap_or(-1));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn stderr_log(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
}

/// Kills the process on drop, for tests that start one by hand.
struct Killer(std::process::Child);

impl Drop for Killer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn unbindable(listen: &str, admin: u16) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let conf = write_conf(
        dir.path(),
        "threads: 1",
        &format!("  listen: [{listen}]\n  admin_listen: ['127.0.0.1:{admin}']"),
    );
    let mut child = Killer(spawn(&conf, dir.path()));
    let code = exit_within(&mut child.0, Duration::from_secs(10));
    (code, stderr_log(dir.path()))
}

#[test]
fn a_registry_address_that_cannot_be_bound_ends_the_process_naming_it() {
    // An address not on this host.
    let port = free_port();
    let (code, log) = unbindable(&format!("'192.0.2.10:{port}'"), free_port());
    assert!(matches!(code, Some(c) if c != 0), "exit {code:?}:\n{log}");
    assert!(
        log.contains(&format!("192.0.2.10:{port}")) && log.contains("archeio.listen[0]"),
        "{log}"
    );

    // A port another process holds.
    let taken = StdListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let (code, log) = unbindable(
        &format!("'127.0.0.1:{}', '127.0.0.1:{port}'", free_port()),
        free_port(),
    );
    assert!(matches!(code, Some(c) if c != 0), "exit {code:?}:\n{log}");
    assert!(
        log.contains(&format!("127.0.0.1:{port}")) && log.contains("archeio.listen[1]"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn an_admin_address_that_cannot_be_bound_ends_the_process_naming_it() {
    let taken = StdListener::bind("127.0.0.1:0").unwrap();
    let admin = taken.local_addr().unwrap().port();
    let (code, log) = unbindable(&format!("'127.0.0.1:{}'", free_port()), admin);
    assert!(matches!(code, Some(c) if c != 0), "exit {code:?}:\n{log}");
    assert!(
        log.contains(&format!("127.0.0.1:{admin}")) && log.contains("archeio.admin_listen[0]"),
        "{log}"
    );
}

#[test]
fn the_configuration_check_catches_what_would_fail_or_misroute_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &str)] = &[
        (
            "threads: 1",
            "  listen: ['127.0.0.1:18085']\n  admin_listen: ['127.0.0.1:18085']",
            "archeio.admin_listen[0]: 127.0.0.1:18085 is also in archeio.listen",
        ),
        (
            "threads: 1",
            "  listen: ['0.0.0.0:18085']\n  admin_listen: ['127.0.0.1:18085']",
            "archeio.admin_listen[0]",
        ),
        (
            "threads: 1",
            "  listen: ['127.0.0.1:18085', '127.0.0.1:18085']",
            "archeio.listen[1]: 127.0.0.1:18085 is listed twice",
        ),
        (
            "threads: 0",
            "  listen: ['127.0.0.1:18085']",
            "threads: must be at least 1",
        ),
        (
            "threds: 2",
            "  listen: ['127.0.0.1:18085']",
            "threds: unknown key",
        ),
        (
            "archio: {}",
            "  listen: ['127.0.0.1:18085']",
            "archio: unknown key",
        ),
        (
            "threads: 1",
            "  client_timeouts: {idle: 1500ms}",
            "archeio.client_timeouts.idle: must be at least 1s and whole seconds",
        ),
    ];
    for (top, archeio, wanted) in cases {
        let conf = write_conf(dir.path(), top, archeio);
        let out = run(&["-t", "-c", &conf], &[]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{top} {archeio}: {err}");
        assert!(
            err.contains(wanted),
            "{top} {archeio}: wanted {wanted:?} in {err}"
        );
        assert!(err.contains(&conf), "{err} names the file");
    }
    // The threads check also holds without a file (Pingora's default is 1).
    let out = run(&["-t"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

/// Issue 26: `-t` passed an address that is not on the host; only the real start failed.
/// Like `nginx -t` it binds now, naming the key and the address; a port already taken
/// (the running gateway's, while a new file is checked beside it) still passes.
#[test]
fn the_configuration_check_binds_the_listeners() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = write_conf(
        dir.path(),
        "threads: 1",
        &format!(
            "  listen: ['192.0.2.10:{port}']\n  admin_listen: ['127.0.0.1:{}']",
            free_port()
        ),
    );
    let out = run(&["-t", "-c", &conf], &[]);
    let err = text(&out.stderr);
    assert!(matches!(out.status.code(), Some(c) if c != 0), "{err}");
    assert!(
        err.contains(&format!(
            "archeio.listen[0]: cannot listen on 192.0.2.10:{port}"
        )),
        "{err}"
    );
    assert!(err.contains(&conf), "{err} names the file");

    let taken = StdListener::bind("127.0.0.1:0").unwrap();
    let in_use = taken.local_addr().unwrap().port();
    let conf = write_conf(
        dir.path(),
        "threads: 1",
        &format!(
            "  listen: ['127.0.0.1:{in_use}']\n  admin_listen: ['127.0.0.1:{}']",
            free_port()
        ),
    );
    let out = run(&["-t", "-c", &conf], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn a_bad_environment_variable_is_named_instead_of_the_file() {
    let out = run(
        &["-t", "-c", "conf/archeio.yaml"],
        &[("UPSTREAM_REGISTRY_ENDPOINT", "not-a-url")],
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("environment variable UPSTREAM_REGISTRY_ENDPOINT"),
        "{err}"
    );
    assert!(!err.contains("conf/archeio.yaml"), "{err}");
}

#[test]
fn own_regions_are_added_to_the_built_in_table_unless_replace_is_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let conf = write_conf(
        dir.path(),
        "threads: 1",
        "  mirrors:\n    regions: {lab: 'http://mirror.lab.example'}\n  ranges:\n    custom: [{cidr: 10.0.0.0/8, provider: onprem, region: lab}]",
    );
    let printed = print_config(&conf, &[]);
    assert!(
        printed.contains("lab: http://mirror.lab.example"),
        "{printed}"
    );
    assert!(
        printed.contains(
            "us-east-1: https://prod-registry-k8s-io-us-east-1.s3.dualstack.us-east-1.amazonaws.com"
        ),
        "{printed}"
    );
    let out = run(
        &["-t", "-c", &conf, "--explain", "3.4.12.4", "/v2/pause/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000"],
        &[],
    );
    let explained = text(&out.stdout);
    assert!(explained.contains("prod-registry-k8s-io-"), "{explained}");

    let conf = write_conf(
        dir.path(),
        "threads: 1",
        "  mirrors:\n    replace_regions: true\n    regions: {lab: 'http://mirror.lab.example'}",
    );
    let printed = print_config(&conf, &[]);
    assert!(
        printed.contains("lab: http://mirror.lab.example"),
        "{printed}"
    );
    assert!(!printed.contains("us-east-1:"), "{printed}");
}

#[test]
fn the_printed_configuration_is_the_effective_one_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let conf = write_conf(
        dir.path(),
        "threads: 3",
        "  mode: passthrough\n  upstream:\n    endpoints: ['http://127.0.0.1:5000']\n    credentials: {username: robot, password_env: REG_PASSWORD}\n  client_auth: {mode: anonymous}",
    );
    let printed = print_config(
        &conf,
        &[
            ("REG_PASSWORD", "hunter2-secret"),
            ("UPSTREAM_REGISTRY_PATH", "from/env"),
        ],
    );
    assert!(!printed.contains("hunter2-secret"), "{printed}");
    assert!(printed.contains("password_env: REG_PASSWORD"), "{printed}");
    assert!(printed.contains("path: from/env"), "{printed}");
    assert!(printed.contains("threads: 3"), "{printed}");
    assert!(printed.contains("grace_period_seconds: 5"), "{printed}");
    // Issue 26: comments start their lines, and Pingora keys nobody documents or set stay
    // out (a top-level `ca_file` beside `upstream.ca_file` confused).
    assert!(
        printed
            .lines()
            .all(|l| !l.trim_start().starts_with('#') || l.starts_with('#')),
        "{printed}"
    );
    assert!(!printed.contains("\nca_file:"), "{printed}");
    assert!(!printed.contains("upstream_debug_ssl_keylog"), "{printed}");
    // The printed file is itself a valid configuration.
    let again = dir.path().join("printed.yaml");
    std::fs::write(&again, &printed).unwrap();
    let out = run(
        &["-t", "-c", again.to_str().unwrap()],
        &[("REG_PASSWORD", "x")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn the_command_line_is_archeios() {
    let out = run(&["--help"], &[]);
    let help = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        !help.contains("base set of command line arguments"),
        "{help}"
    );
    for wanted in [
        "sync",
        "health",
        "--explain",
        "--print",
        "UPSTREAM_REGISTRY_ENDPOINT",
        "ARCHEIO_CONFIG",
        "-u, --upgrade",
        "-t, --test",
    ] {
        assert!(help.contains(wanted), "{wanted} missing from:\n{help}");
    }
    let out = run(&["--version"], &[]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout).trim(),
        format!("archeio {}", env!("CARGO_PKG_VERSION"))
    );
    for sub in [&["sync", "--help"][..], &["health", "--help"]] {
        let out = run(sub, &[]);
        assert_eq!(out.status.code(), Some(0), "{sub:?}: {}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("Usage"),
            "{sub:?}: {}",
            text(&out.stdout)
        );
    }
}

#[test]
fn the_configuration_file_may_come_from_archeio_config() {
    let dir = tempfile::tempdir().unwrap();
    let conf = write_conf(dir.path(), "threads: 1", "  mode: bogus");
    let out = run(&["-t"], &[("ARCHEIO_CONFIG", &conf)]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&conf) && err.contains("archeio.mode"), "{err}");
}

#[tokio::test]
async fn health_subcommand_probes_the_admin_listener() {
    let gw = Gateway::start("").await;
    let conf = gw.dir.path().join("archeio.yaml");
    let conf = conf.to_str().unwrap();
    for args in [
        &["health", "-c", conf][..],
        &["health", "-c", conf, "--ready"],
    ] {
        let out = run(args, &[]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    // Issue 26: the probe reads the admin address only, not the mirror secrets a full
    // check needs (a sidecar or a shell without them probes all the same).
    let dir = tempfile::tempdir().unwrap();
    let secretive = write_conf(
        dir.path(),
        "threads: 1",
        &format!(
            "  admin_listen: ['{}']
  mirrors:
    named:
      private: {{signing: {{s3: {{bucket: b, access_key_id_env: ABSENT_KEY_ID, secret_access_key_file: /nonexistent/secret}}}}}}
  policy: {{rules: [{{match: {{kind: blob}}, action: mirrors, mirrors: [private]}}]}}",
            gw.admin
        ),
    );
    let out = run(&["health", "-c", &secretive], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    drop(gw);
    let conf = write_conf(
        dir.path(),
        "threads: 1",
        &format!("  admin_listen: ['127.0.0.1:{}']", free_port()),
    );
    let out = run(&["health", "-c", &conf], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("/healthz"),
        "{}",
        text(&out.stderr)
    );
}

async fn readyz(gw: &Gateway) -> u16 {
    request(gw.admin, "GET", "/readyz", &[])
        .await
        .map_or(0, |r| r.status)
}

/// Starts a gateway that may never turn ready: waits for its admin listener only.
async fn start_unready(
    archeio: &str,
) -> (
    Killer,
    std::net::SocketAddr,
    std::net::SocketAddr,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let conf = write_conf(
        dir.path(),
        "threads: 1",
        &format!(
            "  listen: ['127.0.0.1:{port}']\n  admin_listen: ['127.0.0.1:{admin}']\n{archeio}"
        ),
    );
    let child = Killer(spawn(&conf, dir.path()));
    let admin_addr = ([127, 0, 0, 1], admin).into();
    let deadline = Instant::now() + Duration::from_secs(10);
    while request(admin_addr, "GET", "/healthz", &[]).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "no admin listener:\n{}",
            stderr_log(dir.path())
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    (child, ([127, 0, 0, 1], port).into(), admin_addr, dir)
}

#[tokio::test]
async fn not_ready_without_a_range_table() {
    let closed = free_port();
    let (_child, _, admin, dir) = start_unready(&format!(
        "  ranges:\n    embedded: false\n    refresh_interval: 1s\n    sources: [{{format: aws, url: 'http://127.0.0.1:{closed}/ip-ranges.json'}}]"
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = request(admin, "GET", "/readyz", &[]).await.unwrap();
    assert_eq!(r.status, 503, "{}", stderr_log(dir.path()));
    assert!(text(&r.body).contains("range"), "{}", text(&r.body));
    let metrics = text(&request(admin, "GET", "/metrics", &[]).await.unwrap().body);
    assert_eq!(common::sample(&metrics, "archeio_ready"), 0.0);
}

/// Issue 30: an upstream outage is no reason to take the pod out of the load balancer
/// (every pod would go, and with them what they still serve); it is a metric.
#[tokio::test]
async fn ready_in_passthrough_while_no_endpoint_is_healthy() {
    let closed = free_port();
    let (_child, _, admin, dir) = start_unready(&format!(
        "  mode: passthrough\n  upstream:\n    endpoints: ['http://127.0.0.1:{closed}']\n    health_check: {{interval: 200ms, timeout: 200ms, unhealthy_after: 1}}"
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let m = request(admin, "GET", "/metrics", &[]).await.unwrap();
    assert!(
        text(&m.body).contains(&format!(
            "archeio_upstream_healthy{{endpoint=\"127.0.0.1:{closed}\"}} 0"
        )),
        "{}",
        stderr_log(dir.path())
    );
    let r = request(admin, "GET", "/readyz", &[]).await.unwrap();
    assert_eq!(r.status, 200, "{}", stderr_log(dir.path()));
}

#[tokio::test]
async fn sigterm_turns_readiness_off_and_keeps_serving_through_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let conf = write_conf(
        dir.path(),
        "threads: 1\ngrace_period_seconds: 2\ngraceful_shutdown_timeout_seconds: 2",
        &format!("  listen: ['127.0.0.1:{port}']\n  admin_listen: ['127.0.0.1:{admin}']"),
    );
    let cmd = command(&["-c", &conf], &[], dir.path());
    let mut gw = Gateway::spawn(cmd, port, admin, dir).await.unwrap();
    assert_eq!(readyz(&gw).await, 200);
    let signalled = Instant::now();
    send_signal(gw.pid(), "TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(readyz(&gw).await, 503, "{}", gw.log());
    // New connections on both listeners are still served well into the grace period.
    while signalled.elapsed() < Duration::from_millis(1600) {
        let r = request(gw.addr, "GET", "/v2/pause/manifests/3.10", &[]).await;
        assert_eq!(r.map(|r| r.status).ok(), Some(307), "{}", gw.log());
        assert!(request(gw.admin, "GET", "/metrics", &[]).await.is_ok());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Then it stops accepting and, with nothing in flight, exits soon after the grace.
    assert!(
        gw.exited_within(Duration::from_secs(3)).await,
        "{}",
        gw.log()
    );
    assert!(signalled.elapsed() >= Duration::from_secs(2));
    assert!(request(gw.addr, "GET", "/v2/", &[]).await.is_err());
}

#[tokio::test]
async fn without_grace_keys_shutdown_takes_seconds_and_a_second_signal_ends_it() {
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let conf = write_conf(
        dir.path(),
        "threads: 1",
        &format!("  listen: ['127.0.0.1:{port}']\n  admin_listen: ['127.0.0.1:{admin}']"),
    );
    let cmd = command(&["-c", &conf], &[], dir.path());
    let mut gw = Gateway::spawn(cmd, port, admin, dir).await.unwrap();
    let signalled = Instant::now();
    send_signal(gw.pid(), "TERM");
    assert!(
        gw.exited_within(Duration::from_secs(12)).await,
        "{}",
        gw.log()
    );
    assert!(
        signalled.elapsed() >= Duration::from_secs(4),
        "the default grace is 5 s"
    );

    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let conf = write_conf(
        dir.path(),
        "threads: 1",
        &format!("  listen: ['127.0.0.1:{port}']\n  admin_listen: ['127.0.0.1:{admin}']"),
    );
    let cmd = command(&["-c", &conf], &[], dir.path());
    let mut gw = Gateway::spawn(cmd, port, admin, dir).await.unwrap();
    send_signal(gw.pid(), "TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = Instant::now();
    send_signal(gw.pid(), "TERM");
    assert!(
        gw.exited_within(Duration::from_secs(2)).await,
        "{}",
        gw.log()
    );
    assert!(second.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn sigquit_without_a_successor_keeps_serving() {
    let gw = Gateway::start("").await;
    send_signal(gw.pid(), "QUIT");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(gw.get("/v2/").await.status, 200, "{}", gw.log());
    assert_eq!(readyz(&gw).await, 200);
    assert!(gw.log().contains("no new process"), "{}", gw.log());
}

#[tokio::test]
async fn an_ipv6_wildcard_alone_also_takes_ipv4_clients() {
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let conf = write_conf(
        dir.path(),
        "threads: 1",
        &format!("  listen: ['[::]:{port}']\n  admin_listen: ['127.0.0.1:{admin}']"),
    );
    let cmd = command(&["-c", &conf], &[], dir.path());
    let gw = Gateway::spawn(cmd, port, admin, dir).await.unwrap();
    let v6 = request(
        ([0u16, 0, 0, 0, 0, 0, 0, 1], port).into(),
        "GET",
        "/v2/",
        &[],
    )
    .await;
    assert_eq!(v6.unwrap().status, 200);
    assert_eq!(gw.get("/v2/").await.status, 200);
}

#[tokio::test]
async fn counters_exist_from_the_first_scrape_with_process_metrics() {
    let gw = Gateway::start("").await;
    let m = gw.metrics().await;
    for series in [
        "archeio_ready 1",
        "archeio_blob_checks_total{mirror=\"default\",outcome=\"cache_hit\"} 0",
        "archeio_blob_checks_total{mirror=\"eu-west-1\",outcome=\"refused\"} 0",
        "archeio_redirects_total{mirror=\"\",target=\"upstream\"} 0",
        "archeio_upstream_token_fetches_total{result=\"error\"} 0",
        "archeio_manifest_cache_lookups_total{result=\"hit\"} 0",
        "archeio_requests_total{route=\"blob\",status=\"307\"} 0",
        "archeio_rate_limited_total 0",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
    ] {
        assert!(m.contains(series), "{series} missing:\n{m}");
    }
}

#[tokio::test]
async fn json_access_records_carry_what_a_pipeline_needs() {
    // The region's mirror is a closed loopback port: the check fails, the blob goes upstream.
    let gw = Gateway::start(
        "  log_format: json\n  mirrors: {default: 'http://127.0.0.1:9', replace_regions: true, regions: {us-east-1: 'http://127.0.0.1:9'}}\n  client_address: {trusted_proxies: ['127.0.0.1/32', '10.0.0.0/8']}",
    )
    .await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = gw
        .send(
            "GET",
            "/v2/pause/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000",
            &[
                ("X-Forwarded-For", "3.4.12.4, 10.0.0.1"),
                ("User-Agent", "containerd/1.7 \"quoted\" it's"),
                ("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01")),
            ],
        )
        .await;
    assert_eq!(r.status, 307);
    let location = r.location().to_string();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = gw.log();
    let record = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["target"] == "archeio::access" && v["route"] == "blob")
        .unwrap_or_else(|| panic!("no JSON access record in:\n{log}"));
    assert_eq!(record["status"], 307, "{record}");
    assert_eq!(record["client"], "3.4.12.4", "{record}");
    assert_eq!(record["peer"], "127.0.0.1", "{record}");
    assert_eq!(record["provider"], "aws", "{record}");
    assert_eq!(record["region"], "eu-west-1", "{record}");
    assert_eq!(record["route"], "blob", "{record}");
    assert_eq!(record["rule"], "regional-mirror", "{record}");
    assert_eq!(record["destination"], "upstream", "{record}");
    assert_eq!(record["location"], location, "{record}");
    assert_eq!(
        record["user_agent"], "containerd/1.7 \"quoted\" it's",
        "{record}"
    );
    assert_eq!(record["trace_id"], trace, "{record}");
    assert_eq!(
        record["request_id"].as_str().map(str::len),
        Some(16),
        "{record}"
    );
    // Every line is JSON, not only the access records.
    for line in log.lines().filter(|l| !l.is_empty()) {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not JSON: {line}"
        );
    }
}

#[tokio::test]
async fn client_addresses_can_be_left_out_of_the_records() {
    let gw = Gateway::start("  log_format: json\n  log_client_address: false").await;
    let r = gw
        .send(
            "GET",
            "/v2/pause/manifests/3.10",
            &[("X-Forwarded-For", "3.4.12.4, 10.0.0.1")],
        )
        .await;
    assert_eq!(r.status, 307);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = gw.log();
    assert!(log.contains("archeio::access"), "{log}");
    assert!(
        !log.contains("3.4.12.4") && !log.contains("127.0.0.1\""),
        "{log}"
    );
}

#[tokio::test]
async fn text_access_lines_escape_quotes_as_a_log_parser_expects() {
    let gw = Gateway::start("").await;
    let r = gw
        .send("GET", "/v2/", &[("User-Agent", "it's \"x\"")])
        .await;
    assert_eq!(r.status, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = gw.log();
    let line = log
        .lines()
        .find(|l| l.contains("archeio::access") && l.contains("GET /v2/ "))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains(r#"user_agent="it's \"x\"""#), "{line}");
    assert!(!line.contains(r"\'"), "{line}");
}

#[tokio::test]
async fn a_flood_from_one_client_is_limited_and_others_are_served() {
    let gw = Gateway::start(
        "  rate_limit: {requests_per_second: 5, burst: 5}\n  client_address: {trusted_proxy_hops: 1}",
    )
    .await;
    let flood = [("X-Forwarded-For", "203.0.113.7, 10.0.0.1")];
    let mut limited = None;
    for _ in 0..20 {
        let r = gw.send("GET", "/v2/pause/manifests/3.10", &flood).await;
        if r.status == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status, 307);
    }
    let r = limited.expect("the 20th request in a burst of 5 is refused");
    assert!(r.header("retry-after").is_some(), "{r:?}");
    assert_eq!(r.oci_code(), "TOOMANYREQUESTS");
    let other = gw
        .send(
            "GET",
            "/v2/pause/manifests/3.10",
            &[("X-Forwarded-For", "203.0.113.8, 10.0.0.1")],
        )
        .await;
    assert_eq!(other.status, 307);
    let m = gw.metrics().await;
    assert!(
        common::sample(&m, "archeio_rate_limited_total") >= 1.0,
        "{m}"
    );
}

/// Sends `signal` (a name for kill(1)) to `pid`.
fn send_signal(pid: u32, signal: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{signal} {pid}");
}

#[tokio::test]
async fn the_mirror_check_carries_the_clients_traceparent() {
    let mirror = Mirror::start().await;
    let gw = Gateway::start(&format!(
        "  mirrors: {{default: '{}', replace_regions: true, regions: {{}}}}\n  ranges: {{embedded: false}}",
        mirror.base()
    ))
    .await;
    let blob = |n: u8| format!("/v2/pause/blobs/sha256:{}", format!("{n:02x}").repeat(32));
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = gw.send("GET", &blob(1), &[("traceparent", trace)]).await;
    assert_eq!(r.status, 307);
    let r = gw
        .send("GET", &blob(2), &[("traceparent", "00-bogus-01")])
        .await;
    assert_eq!(r.status, 307);
    assert_eq!(
        mirror.head_traceparents(),
        [Some(trace.to_string()), None],
        "a malformed traceparent is not sent on"
    );
}

#[tokio::test]
async fn requests_in_flight_when_the_listeners_close_are_finished_before_the_exit() {
    let mirror = Mirror::start().await;
    // The mirror's HEAD takes 2.5 s: a blob request sent just before the grace ends is still
    // in flight when the listeners close.
    mirror.set_delay(Duration::from_millis(2500));
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let conf = write_conf(
        dir.path(),
        "threads: 1\ngrace_period_seconds: 1\ngraceful_shutdown_timeout_seconds: 6",
        &format!(
            "  listen: ['127.0.0.1:{port}']\n  admin_listen: ['127.0.0.1:{admin}']\n  mirrors: {{default: '{}', replace_regions: true, regions: {{}}}}\n  ranges: {{embedded: false}}",
            mirror.base()
        ),
    );
    let cmd = command(&["-c", &conf], &[], dir.path());
    let mut gw = Gateway::spawn(cmd, port, admin, dir).await.unwrap();
    let signalled = Instant::now();
    send_signal(gw.pid(), "TERM");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let addr = gw.addr;
    let slow = tokio::spawn(async move {
        let blob = format!("/v2/pause/blobs/sha256:{}", "ab".repeat(32));
        let r = request(addr, "GET", &blob, &[]).await;
        (r.map(|r| r.status).ok(), signalled.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        request(gw.addr, "GET", "/v2/", &[]).await.is_err(),
        "new connections are refused once the grace is over"
    );
    let (status, answered) = slow.await.unwrap();
    assert_eq!(status, Some(307), "{}", gw.log());
    assert!(answered > Duration::from_secs(2), "{answered:?}");
    assert!(
        gw.exited_within(Duration::from_secs(3)).await,
        "{}",
        gw.log()
    );
    // It exited once the request was done, well before the 6 s allowed.
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "{:?}",
        signalled.elapsed()
    );
}

/// Issue 24, defect 1: with upstream credentials, pass-through served the private registry
/// to anyone who reached the gateway, with the gateway's robot account, and nothing said so.
/// The gateway now refuses to start (and `-t` fails) until `client_auth` says how clients
/// are to be treated; `mode: anonymous` is that choice made on purpose.
#[test]
fn upstream_credentials_need_a_client_auth_decision() {
    let dir = tempfile::tempdir().unwrap();
    let keys = "  mode: passthrough\n  upstream:\n    endpoints: ['http://127.0.0.1:5000']\n    credentials: {username: robot, password_env: REG_PASSWORD}";
    let env = [("REG_PASSWORD", "hunter2-secret")];
    let conf = write_conf(dir.path(), "", keys);
    let out = run(&["-t", "-c", &conf], &env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("archeio.client_auth: "), "{stderr}");
    assert!(!stderr.contains("hunter2-secret"), "{stderr}");
    // Started for real, it does not serve either (on loopback ports, killed if it runs).
    let (port, admin) = (free_port(), free_port());
    let loopback = format!(
        "{keys}
  listen: ['127.0.0.1:{port}']
  admin_listen: ['127.0.0.1:{admin}']"
    );
    let started = write_conf(dir.path(), "", &loopback);
    let mut child = command(&["-c", &started], &env, dir.path())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(2),
        "the gateway started"
    );

    let conf = write_conf(
        dir.path(),
        "",
        &format!("{keys}\n  client_auth: {{mode: anonymous}}"),
    );
    let out = run(&["-t", "-c", &conf], &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
