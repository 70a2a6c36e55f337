//! A real upstream registry for tests: Debian's `docker-registry` (distribution 2.8) on
//! loopback, filled once per test binary by `skopeo` from OCI layouts written here, and
//! restartable with TLS, Basic auth or token auth over the same storage.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::free_port;

/// Images pushed into the shared storage, and their digests.
pub struct Images {
    /// Storage root directory holding them.
    pub storage: PathBuf,
    /// `test/app:v1`: one platform.
    pub app_manifest: String,
    /// Its layer (several hundred KiB) and config.
    pub app_layer: String,
    pub app_config: String,
    /// `test/multi:v1`: an OCI index of amd64 and arm64.
    pub multi_index: String,
    /// The amd64 and arm64 manifests in it.
    pub multi_platforms: Vec<String>,
    /// Their layers, in the same order.
    pub multi_layers: Vec<String>,
    /// `test/docker:v1`: the single-arch image in Docker v2 schema 2.
    pub docker_manifest: String,
}

/// The images, pushed on first use by a short-lived plain registry.
pub fn images() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(push_images)
}

/// How the registry authenticates clients.
pub enum Auth {
    None,
    /// htpasswd file with one bcrypt entry.
    Basic {
        user: String,
        password: String,
    },
    /// Tokens from `realm`, signed by the key whose certificate is `cert_pem`.
    Token {
        realm: String,
        service: String,
        issuer: String,
        cert_pem: String,
    },
}

/// A running `docker-registry`, killed on drop.
pub struct Registry {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Registry {
    /// Serves `storage` on a fresh port; with TLS when `tls` holds a PEM certificate and key.
    pub fn start(storage: &Path, tls: Option<(&str, &str)>, auth: Auth) -> Registry {
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            let mut conf = format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: false\n\
                 http:\n  addr: 127.0.0.1:{port}\n",
                storage.display()
            );
            if let Some((cert, key)) = tls {
                std::fs::write(dir.path().join("cert.pem"), cert).unwrap();
                std::fs::write(dir.path().join("key.pem"), key).unwrap();
                conf.push_str(&format!(
                    "  tls:\n    certificate: {d}/cert.pem\n    key: {d}/key.pem\n",
                    d = dir.path().display()
                ));
            }
            match &auth {
                Auth::None => {}
                Auth::Basic { user, password } => {
                    let hash = bcrypt::hash(password, 4).unwrap();
                    std::fs::write(dir.path().join("htpasswd"), format!("{user}:{hash}\n"))
                        .unwrap();
                    conf.push_str(&format!(
                        "auth:\n  htpasswd:\n    realm: test-realm\n    path: {}/htpasswd\n",
                        dir.path().display()
                    ));
                }
                Auth::Token {
                    realm,
                    service,
                    issuer,
                    cert_pem,
                } => {
                    std::fs::write(dir.path().join("token-ca.pem"), cert_pem).unwrap();
                    conf.push_str(&format!(
                        "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n    rootcertbundle: {}/token-ca.pem\n",
                        dir.path().display()
                    ));
                }
            }
            let path = dir.path().join("config.yml");
            std::fs::write(&path, conf).unwrap();
            let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(&path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("docker-registry runs (apt-get install docker-registry)");
            let mut reg = Registry { child, port, dir };
            if reg.wait_listening() {
                return reg;
            }
        }
        panic!("docker-registry did not start three times in a row");
    }

    fn wait_listening(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                eprintln!("docker-registry exited:\n{}", self.log());
                return false;
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("docker-registry not listening within 20 s:\n{}", self.log());
    }

    /// Its log, access log included.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Requests it answered for `path` with `method` (from its access log).
    pub fn served(&self, method: &str, path: &str) -> usize {
        let needle = format!("\"{method} {path} HTTP/1.1\"");
        self.log().matches(&needle).count()
    }

    pub fn url(&self, tls: bool) -> String {
        let scheme = if tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn sha256(bytes: &[u8]) -> String {
    format!(
        "sha256:{}",
        Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// A tar archive with one file, as image layers are.
fn tar_with(name: &str, data: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 512];
    header[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |field: &mut [u8], value: u64| {
        let text = format!("{value:0width$o}\0", width = field.len() - 1);
        field.copy_from_slice(text.as_bytes());
    };
    octal(&mut header[100..108], 0o644);
    octal(&mut header[108..116], 0);
    octal(&mut header[116..124], 0);
    octal(&mut header[124..136], data.len() as u64);
    octal(&mut header[136..148], 1_700_000_000);
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    header[148..156].fill(b' ');
    let sum: u64 = header.iter().map(|b| *b as u64).sum();
    octal(&mut header[148..155], sum);
    header[155] = b' ';
    let mut out = header.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512 + 1024, 0);
    out
}

/// Pseudo-random bytes (xorshift), so that layers do not compress away.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

/// An OCI layout directory being written.
struct Layout {
    dir: PathBuf,
}

impl Layout {
    fn new(dir: PathBuf) -> Layout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout { dir }
    }

    fn blob(&self, bytes: &[u8]) -> String {
        let digest = sha256(bytes);
        let hex = digest.trim_start_matches("sha256:");
        std::fs::write(self.dir.join("blobs/sha256").join(hex), bytes).unwrap();
        digest
    }

    /// An image for `arch`: layer, config, manifest; returns (manifest bytes, digests).
    fn image(&self, arch: &str, layer_len: usize, seed: u64) -> (Vec<u8>, String, String) {
        let layer = tar_with(&format!("data-{arch}"), &noise(layer_len, seed));
        let layer_digest = self.blob(&layer);
        let config = serde_json::json!({
            "architecture": arch, "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
            "config": {"Cmd": ["/data"]}
        })
        .to_string();
        let config_digest = self.blob(config.as_bytes());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": layer_digest, "size": layer.len()}]
        })
        .to_string()
        .into_bytes();
        (manifest, layer_digest, config_digest)
    }

    fn tag(&self, media_type: &str, manifest: &[u8], tag: &str) -> String {
        let digest = self.blob(manifest);
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": media_type, "digest": digest, "size": manifest.len(),
                           "annotations": {"org.opencontainers.image.ref.name": tag}}]
        });
        std::fs::write(self.dir.join("index.json"), index.to_string()).unwrap();
        digest
    }
}

fn skopeo(args: &[&str]) {
    let out = Command::new("skopeo")
        .args(args)
        .output()
        .expect("skopeo runs (apt-get install skopeo)");
    assert!(
        out.status.success(),
        "skopeo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn push_images() -> Images {
    // Kept for the whole test binary: every test's registries serve it.
    let root = Box::leak(Box::new(tempfile::tempdir().unwrap()));
    let storage = root.path().join("storage");
    std::fs::create_dir_all(&storage).unwrap();
    let seed = Registry::start(&storage, None, Auth::None);
    let dest = |repo: &str| format!("docker://127.0.0.1:{}/{repo}", seed.port);

    let single = Layout::new(root.path().join("single"));
    let (manifest, _, _) = single.image("amd64", 600 * 1024, 1);
    single.tag(
        "application/vnd.oci.image.manifest.v1+json",
        &manifest,
        "v1",
    );
    let src = format!("oci:{}:v1", single.dir.display());
    skopeo(&[
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        &src,
        &dest("test/app:v1"),
    ]);
    skopeo(&[
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        "--format",
        "v2s2",
        &src,
        &dest("test/docker:v1"),
    ]);

    let multi = Layout::new(root.path().join("multi"));
    let mut entries = Vec::new();
    for (i, arch) in ["amd64", "arm64"].into_iter().enumerate() {
        let (manifest, _, _) = multi.image(arch, 64 * 1024, 10 + i as u64);
        let digest = multi.blob(&manifest);
        entries.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest, "size": manifest.len(),
            "platform": {"architecture": arch, "os": "linux"}
        }));
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries
    })
    .to_string();
    multi.tag(
        "application/vnd.oci.image.index.v1+json",
        index.as_bytes(),
        "v1",
    );
    let src = format!("oci:{}:v1", multi.dir.display());
    skopeo(&[
        "copy",
        "--quiet",
        "--all",
        "--dest-tls-verify=false",
        &src,
        &dest("test/multi:v1"),
    ]);

    // skopeo may rewrite what it pushes: take the digests from the registry.
    let raw = |repo: &str| {
        let out = Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false", &dest(repo)])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (sha256(&out.stdout), json)
    };
    let (app_manifest, app) = raw("test/app:v1");
    let app_layer = app["layers"][0]["digest"].as_str().unwrap().to_string();
    let app_config = app["config"]["digest"].as_str().unwrap().to_string();
    let (multi_index, index) = raw("test/multi:v1");
    let multi_platforms: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap().to_string())
        .collect();
    let multi_layers = multi_platforms
        .iter()
        .map(|d| {
            let (_, m) = raw(&format!("test/multi@{d}"));
            m["layers"][0]["digest"].as_str().unwrap().to_string()
        })
        .collect();
    let (docker_manifest, _) = raw("test/docker:v1");
    drop(seed);
    Images {
        storage,
        app_manifest,
        app_layer,
        app_config,
        multi_index,
        multi_platforms,
        multi_layers,
        docker_manifest,
    }
}
