//! Real load balancers in front of the gateway, on loopback: nginx (HTTP, appending
//! `X-Forwarded-For` as its documentation and ingress-nginx do) and HAProxy (HTTP with
//! `option forwardfor`, or TCP with `send-proxy-v2`). Each connects to the gateway from its
//! own source address, so a test can trust the proxy without trusting its own client
//! connections. Killed by process id on drop.

use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// A running proxy.
pub struct Front {
    child: Child,
    /// Where clients connect.
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

/// How HAProxy tells the gateway who the client is.
#[derive(Clone, Copy)]
pub enum HaproxyMode {
    /// HTTP mode, `option forwardfor`: appends `X-Forwarded-For: <client>`.
    ForwardFor,
    /// TCP mode, `send-proxy-v2`: a PROXY protocol v2 header before the client's bytes.
    ProxyV2,
    /// TCP mode, `send-proxy`: a PROXY protocol v1 line.
    ProxyV1,
}

/// Says why a test cannot run without `program`; under `scripts/test.sh`
/// (`ARCHEIO_TEST_REQUIRE_SERVERS=1`) its absence is a failure.
pub fn have(program: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !found {
        assert!(
            std::env::var_os("ARCHEIO_TEST_REQUIRE_SERVERS").is_none(),
            "{program} is not installed (scripts/test.sh installs it)"
        );
        eprintln!("skipped: {program} is not installed");
    }
    found
}

impl Front {
    /// nginx proxying everything to `gateway` from `source`, with the configuration its
    /// documentation gives for a reverse proxy: `X-Forwarded-For $proxy_add_x_forwarded_for`.
    pub fn nginx(gateway: SocketAddr, source: IpAddr) -> Front {
        let body = |d: &str, port: u16| {
            format!(
                "worker_processes 1;\ndaemon off;\nmaster_process off;\npid {d}/nginx.pid;\n\
                 error_log {d}/error.log warn;\nevents {{ worker_connections 256; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {d}/tmp;\n  proxy_temp_path {d}/tmp;\n\
                 fastcgi_temp_path {d}/tmp;\n  uwsgi_temp_path {d}/tmp;\n  scgi_temp_path {d}/tmp;\n\
                 server {{\n    listen 127.0.0.1:{port};\n    location / {{\n\
                 proxy_pass http://{gateway};\n      proxy_bind {source};\n\
                 proxy_http_version 1.1;\n      proxy_set_header Host $http_host;\n\
                 proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
                 proxy_set_header X-Forwarded-Proto $scheme;\n      proxy_redirect off;\n    }}\n  }}\n}}\n"
            )
        };
        Front::spawn("nginx", |d, port| {
            std::fs::create_dir_all(format!("{d}/tmp")).unwrap();
            let conf = format!("{d}/nginx.conf");
            std::fs::write(&conf, body(d, port)).unwrap();
            let mut cmd = Command::new("nginx");
            cmd.args(["-p", d, "-c", &conf]);
            cmd
        })
    }

    /// HAProxy balancing to `gateway` from `source`, telling it the client by `mode`.
    pub fn haproxy(gateway: SocketAddr, source: IpAddr, mode: HaproxyMode) -> Front {
        let (proxy_mode, option, send) = match mode {
            HaproxyMode::ForwardFor => ("http", "    option forwardfor\n", ""),
            HaproxyMode::ProxyV2 => ("tcp", "", " send-proxy-v2"),
            HaproxyMode::ProxyV1 => ("tcp", "", " send-proxy"),
        };
        Front::spawn("haproxy", |d, port| {
            let conf = format!("{d}/haproxy.cfg");
            std::fs::write(
                &conf,
                format!(
                    "global\n    maxconn 256\n\ndefaults\n    mode {proxy_mode}\n    timeout connect 2s\n\
                     timeout client 30s\n    timeout server 30s\n\n\
                     frontend registry\n    bind 127.0.0.1:{port}\n{option}    default_backend gateways\n\n\
                     backend gateways\n    server gw {gateway} source {source}{send}\n"
                ),
            )
            .unwrap();
            let mut cmd = Command::new("haproxy");
            cmd.args(["-db", "-f", &conf]);
            cmd
        })
    }

    fn spawn(name: &str, command: impl Fn(&str, u16) -> Command) -> Front {
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            let d = dir.path().to_str().unwrap().to_string();
            let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
            let child = command(&d, port)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("{name} runs: {e}"));
            let mut front = Front {
                child,
                addr: ([127, 0, 0, 1], port).into(),
                dir,
            };
            if front.wait_listening() {
                return front;
            }
            eprintln!("{name} did not start:\n{}", front.log());
        }
        panic!("{name} did not start three times in a row");
    }

    fn wait_listening(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            if std::net::TcpStream::connect(self.addr).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// What the proxy wrote to stderr (and nginx to its error log).
    pub fn log(&self) -> String {
        let mut log =
            std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default();
        log.push_str(
            &std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default(),
        );
        log
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
