//! Test harness: the real gateway binary on loopback, a real HTTP mirror, a raw HTTP client.
#![allow(dead_code)] // Each test binary uses its own part of the harness.

pub mod fake;
pub mod fault;
pub mod front;
pub mod moto;
pub mod registry;
pub mod token;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const BINARY: &str = env!("CARGO_BIN_EXE_archeio");

/// A port that was free a moment ago (the gateway binds it itself).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running gateway process, killed on drop.
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts the gateway with `archeio_keys` (YAML lines at the indentation of keys under
    /// `archeio:`) plus loopback listeners on fresh ports.
    pub async fn start(archeio_keys: &str) -> Gateway {
        Gateway::start_with_listen(&[], archeio_keys).await
    }

    /// As [`Gateway::start`], for a gateway that is expected not to be ready (no healthy
    /// upstream endpoint in pass-through): waits for its listeners only.
    pub async fn start_unready(archeio_keys: &str) -> Gateway {
        Gateway::start_checked(&[], archeio_keys, false).await
    }

    /// As [`Gateway::start`], with more registry listener addresses.
    pub async fn start_with_listen(extra: &[&str], archeio_keys: &str) -> Gateway {
        Gateway::start_checked(extra, archeio_keys, true).await
    }

    async fn start_checked(extra: &[&str], archeio_keys: &str, need_ready: bool) -> Gateway {
        // A listener given as a mapping (`{address: ..., proxy_protocol: true}`) goes as it is.
        let extra: String = extra
            .iter()
            .map(|a| match a.starts_with('{') {
                true => format!(", {a}"),
                false => format!(", '{a}'"),
            })
            .collect();
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let (port, admin) = (free_port(), free_port());
            // `{gateway}` in the keys: the registry listener's address (for URLs of itself).
            let archeio_keys = archeio_keys.replace("{gateway}", &format!("127.0.0.1:{port}"));
            let conf = format!(
                "version: 1\nthreads: 2\npid_file: {d}/archeio.pid\nupgrade_sock: {d}/upgrade.sock\n\
                 grace_period_seconds: 1\ngraceful_shutdown_timeout_seconds: 1\n\
                 archeio:\n  listen: ['127.0.0.1:{port}'{extra}]\n  admin_listen: ['127.0.0.1:{admin}']\n{archeio_keys}\n",
                d = dir.path().display()
            );
            let path = dir.path().join("archeio.yaml");
            std::fs::write(&path, conf).unwrap();
            let cmd = command(&["-c", path.to_str().unwrap()], &[], dir.path());
            if let Some(gw) = Gateway::spawn_checked(cmd, port, admin, dir, need_ready).await {
                return gw;
            }
        }
        panic!("the gateway did not start three times in a row");
    }

    /// Starts the gateway with `args` and `env`, its ports given by `PORT` and
    /// `ARCHEIO_ADMIN_PORT`.
    pub async fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Gateway {
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let (port, admin) = (free_port(), free_port());
            let (p, a) = (port.to_string(), admin.to_string());
            let mut all = vec![("PORT", p.as_str()), ("ARCHEIO_ADMIN_PORT", a.as_str())];
            all.extend_from_slice(env);
            let cmd = command(args, &all, dir.path());
            if let Some(gw) = Gateway::spawn(cmd, port, admin, dir).await {
                return gw;
            }
        }
        panic!("the gateway did not start three times in a row");
    }

    /// Spawns `cmd` and waits for `/readyz`; None when the process exits first (a port
    /// taken in the meantime).
    pub async fn spawn(
        cmd: Command,
        port: u16,
        admin: u16,
        dir: tempfile::TempDir,
    ) -> Option<Gateway> {
        Gateway::spawn_checked(cmd, port, admin, dir, true).await
    }

    /// [`Gateway::spawn`]; without `need_ready`, `/healthz` stands in for `/readyz`.
    async fn spawn_checked(
        mut cmd: Command,
        port: u16,
        admin: u16,
        dir: tempfile::TempDir,
        need_ready: bool,
    ) -> Option<Gateway> {
        let probe = if need_ready { "/readyz" } else { "/healthz" };
        let answer: &[u8] = if need_ready { b"ready\n" } else { b"ok\n" };
        let child = cmd.spawn().expect("spawn the gateway");
        let mut gw = Gateway {
            child,
            addr: ([127, 0, 0, 1], port).into(),
            admin: ([127, 0, 0, 1], admin).into(),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut ready_since = None;
        while Instant::now() < deadline {
            if let Some(status) = gw.child.try_wait().unwrap() {
                eprintln!("gateway exited with {status}:\n{}", gw.log());
                return None;
            }
            // Both ports must be answered by this gateway: another process (a parallel test's
            // server) may have taken a port between `free_port` and the gateway's bind.
            let admin_ours = matches!(
                request(gw.admin, "GET", probe, &[]).await,
                Ok(r) if r.status == 200 && r.body == answer
            );
            if admin_ours {
                match request(gw.addr, "GET", "/", &[]).await {
                    Ok(r) if r.status == 307 => return Some(gw),
                    Ok(r) => {
                        eprintln!(
                            "registry port {} answered by another server: {r:?}",
                            gw.addr
                        );
                        return None;
                    }
                    Err(_)
                        if ready_since.get_or_insert_with(Instant::now).elapsed()
                            > Duration::from_secs(5) =>
                    {
                        eprintln!("registry port {} never listened:\n{}", gw.addr, gw.log());
                        return None;
                    }
                    Err(_) => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("gateway not ready within 20 s:\n{}", gw.log());
    }

    /// Spawns `cmd`, a gateway whose only registry listener is TLS on `tls_port` (its
    /// `addr`), and waits for `/readyz` on `admin`.
    pub async fn spawn_tls_only(
        mut cmd: Command,
        tls_port: u16,
        admin: u16,
        dir: tempfile::TempDir,
    ) -> Gateway {
        let mut gw = Gateway {
            child: cmd.spawn().expect("spawn the gateway"),
            addr: ([127, 0, 0, 1], tls_port).into(),
            admin: ([127, 0, 0, 1], admin).into(),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = gw.child.try_wait().unwrap() {
                panic!("gateway exited with {status}:\n{}", gw.log());
            }
            if matches!(request(gw.admin, "GET", "/readyz", &[]).await, Ok(r) if r.status == 200) {
                return gw;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("gateway not ready within 20 s:\n{}", gw.log());
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub async fn exited_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// What the process wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    pub async fn get(&self, target: &str) -> Resp {
        request(self.addr, "GET", target, &[]).await.unwrap()
    }

    pub async fn send(&self, method: &str, target: &str, headers: &[(&str, &str)]) -> Resp {
        request(self.addr, method, target, headers).await.unwrap()
    }

    /// The admin listener's `/metrics` text.
    pub async fn metrics(&self) -> String {
        let r = request(self.admin, "GET", "/metrics", &[]).await.unwrap();
        assert_eq!(r.status, 200);
        String::from_utf8(r.body).unwrap()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The gateway command with `args` and `env`, logging to `dir/stderr.log`, with no
/// inherited archeio environment variables.
pub fn command(args: &[&str], env: &[(&str, &str)], dir: &Path) -> Command {
    let mut cmd = Command::new(BINARY);
    cmd.args(args).current_dir(env!("CARGO_MANIFEST_DIR"));
    for var in archeio::config::ENV_VARS {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied()).env("RUST_LOG", "info");
    let log = std::fs::File::create(dir.join("stderr.log")).unwrap();
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    cmd
}

/// A response as received.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn location(&self) -> &str {
        self.header("location")
            .unwrap_or_else(|| panic!("no Location in {self:?}"))
    }

    /// The OCI error code of a JSON error body.
    pub fn oci_code(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body))
        });
        v["errors"][0]["code"].as_str().unwrap().to_string()
    }
}

/// One HTTP/1.1 request with the target sent byte for byte (no client-side normalisation),
/// `Connection: close`, and the whole response read.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    target: impl AsRef<str>,
    headers: &[(&str, &str)],
) -> std::io::Result<Resp> {
    request_from(None, addr, method, target, headers).await
}

/// [`request`] from the source address `from` (any 127.x address on Linux), so that one test
/// can play several clients.
pub async fn request_from(
    from: Option<std::net::IpAddr>,
    addr: SocketAddr,
    method: &str,
    target: impl AsRef<str>,
    headers: &[(&str, &str)],
) -> std::io::Result<Resp> {
    let target = target.as_ref();
    let mut stream = connect_from(from, addr).await?;
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .map_err(|_| std::io::Error::other("response not complete within 10 s"))??;
    parse_response(&raw).ok_or_else(|| {
        std::io::Error::other(format!("bad response {:?}", String::from_utf8_lossy(&raw)))
    })
}

/// A connection to `addr` from the source address `from`, else the system's choice.
pub async fn connect_from(
    from: Option<std::net::IpAddr>,
    addr: SocketAddr,
) -> std::io::Result<TcpStream> {
    let Some(from) = from else {
        return TcpStream::connect(addr).await;
    };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(addr).await
}

/// Reads one response from `raw` bytes of a closed connection.
pub fn parse_response(raw: &[u8]) -> Option<Resp> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Some(Resp {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    })
}

/// The digest of the object the gateway's mirror health checks ask for.
pub const PROBE_DIGEST: &str =
    "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// A blob mirror: answers HEAD and GET with 200 for blobs it holds, with a configured status
/// (404 unless set) otherwise, and counts the HEADs per path.
pub struct Mirror {
    pub addr: SocketAddr,
    state: Arc<MirrorState>,
}

#[derive(Default)]
struct MirrorState {
    present: Mutex<HashSet<String>>,
    status: Mutex<HashMap<String, u16>>,
    heads: Mutex<HashMap<String, usize>>,
    traceparents: Mutex<Vec<Option<String>>>,
    delay: Mutex<Duration>,
    default_status: Mutex<Option<u16>>,
    sizes: Mutex<HashMap<String, u64>>,
}

impl Mirror {
    pub async fn start() -> Mirror {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(MirrorState::default());
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(state.answer(req).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Mirror { addr, state }
    }

    /// `http://127.0.0.1:PORT`
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Makes the blob at `path` present.
    pub fn put(&self, path: &str) {
        self.state.present.lock().unwrap().insert(path.to_string());
    }

    /// Makes the blob at `path` present, its `HEAD` saying it has `size` bytes (for
    /// redirects: its `GET` still has no body).
    pub fn put_sized(&self, path: &str, size: u64) {
        self.put(path);
        self.state
            .sizes
            .lock()
            .unwrap()
            .insert(path.to_string(), size);
    }

    /// Answers `status` for `path` (when not present).
    pub fn set_status(&self, path: &str, status: u16) {
        self.state
            .status
            .lock()
            .unwrap()
            .insert(path.to_string(), status);
    }

    /// Answers `status` for every path it does not hold (instead of 404 or the per-path one).
    pub fn set_default_status(&self, status: u16) {
        *self.state.default_status.lock().unwrap() = Some(status);
    }

    /// Delays every answer.
    pub fn set_delay(&self, delay: Duration) {
        *self.state.delay.lock().unwrap() = delay;
    }

    /// HEADs received for `path`.
    pub fn heads(&self, path: &str) -> usize {
        self.state
            .heads
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// The `traceparent` of each HEAD received, in order.
    pub fn head_traceparents(&self) -> Vec<Option<String>> {
        self.state.traceparents.lock().unwrap().clone()
    }

    /// HEADs received for blobs in all (the gateway's health checks, which ask for an
    /// object no mirror holds, left out).
    pub fn all_heads(&self) -> usize {
        let heads = self.state.heads.lock().unwrap();
        heads
            .iter()
            .filter(|(path, _)| !path.contains(PROBE_DIGEST))
            .map(|(_, n)| n)
            .sum()
    }

    /// The gateway's health checks received.
    pub fn probes(&self) -> usize {
        let heads = self.state.heads.lock().unwrap();
        heads
            .iter()
            .filter(|(path, _)| path.contains(PROBE_DIGEST))
            .map(|(_, n)| n)
            .sum()
    }
}

impl MirrorState {
    async fn answer(&self, req: hyper::Request<hyper::body::Incoming>) -> Response<Empty<Bytes>> {
        let path = req.uri().path().to_string();
        if req.method() == Method::HEAD {
            *self.heads.lock().unwrap().entry(path.clone()).or_default() += 1;
            let trace = req.headers().get("traceparent");
            let trace = trace.and_then(|v| v.to_str().ok()).map(str::to_string);
            self.traceparents.lock().unwrap().push(trace);
        }
        let delay = *self.delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let status = if self.present.lock().unwrap().contains(&path) {
            200
        } else if let Some(status) = *self.default_status.lock().unwrap() {
            status
        } else {
            self.status
                .lock()
                .unwrap()
                .get(&path)
                .copied()
                .unwrap_or(404)
        };
        let mut resp = Response::new(Empty::new());
        *resp.status_mut() = StatusCode::from_u16(status).unwrap();
        let size = self.sizes.lock().unwrap().get(&path).copied();
        if let Some(size) = size.filter(|_| status == 200 && req.method() == Method::HEAD) {
            resp.headers_mut()
                .insert(hyper::header::CONTENT_LENGTH, size.into());
        }
        resp
    }
}

/// A listener that accepts connections and never answers; counts the connections.
pub struct BlackHole {
    pub addr: SocketAddr,
    accepted: Arc<Mutex<usize>>,
}

impl BlackHole {
    pub async fn start() -> BlackHole {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(Mutex::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                *count.lock().unwrap() += 1;
                held.push(stream);
            }
        });
        BlackHole { addr, accepted }
    }

    pub fn accepted(&self) -> usize {
        *self.accepted.lock().unwrap()
    }
}

/// The value of a metric sample line `name{labels} value` (labels in Prometheus' sorted
/// order), 0 when absent.
pub fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// `archeio_blob_checks_total` of `outcome`, summed over the mirrors.
pub fn blob_checks(metrics: &str, outcome: &str) -> f64 {
    let label = format!(",outcome=\"{outcome}\"}} ");
    metrics
        .lines()
        .filter(|l| l.starts_with("archeio_blob_checks_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Path of a file in the repository.
pub fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}
