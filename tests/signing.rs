//! Signed mirror URLs ([`MirrorSigner`]) against servers that check signatures, on
//! 127.0.0.1 and ephemeral ports:
//!
//! - S3: `s3s-fs` (the `s3s` crate's file-system server), which verifies SigV4 presigned
//!   URLs: method, path, query, expiry and signature. (`moto_server`, used by the sync
//!   tests, does not: it serves a presigned URL whose signature was altered.)
//! - Azure: Azurite's blob service, which verifies service SAS signatures with the
//!   well-known `devstoreaccount1` key.
//! - GCS: no emulator checks signatures, so the URLs are checked against Google's published
//!   V4 test vectors (see [`gcs_signed_urls_match_googles_v4_vectors`]).
//!
//! Each server is a child process killed by its pid when the test ends, also when it fails.
//! A test whose server binary is missing says so and passes without checking anything;
//! `scripts/test.sh` installs both binaries.

mod common;

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use archeio::config::signing::{AzureSigning, GcsSigning, S3Keys, S3Signing, SignedStore, Signing};
use archeio::mirror::signing::MirrorSigner;
use http::Method;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};
use sha2::{Digest, Sha256};
use url::Url;

/// The blob the tests sign URLs for, and its key in the layout the gateway uses.
const BLOB: &[u8] = b"a private layer\n";
/// Another blob in the same bucket, to show a URL signed for one key does not open another.
const OTHER: &[u8] = b"another private layer\n";

fn blob_key(bytes: &[u8]) -> String {
    format!("containers/images/sha256:{:x}", Sha256::digest(bytes))
}

/// A server process, killed by pid on drop (so also when an assertion fails).
struct Server {
    child: Child,
    port: u16,
    name: &'static str,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Runs `cmd` (which listens on `port`) and waits until the port accepts connections.
    fn start(name: &'static str, mut cmd: Command, port: u16, dir: tempfile::TempDir) -> Server {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{name} does not start: {e}"));
        let mut server = Server {
            child,
            port,
            name,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("{} exited before listening: {status}", server.name);
            }
            assert!(
                Instant::now() < deadline,
                "{} did not listen within 60 s",
                server.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `$var` if set, else the first of `candidates` that exists, else `name` on `PATH`.
fn binary(var: &str, name: &str, candidates: &[PathBuf]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(var) {
        return Some(PathBuf::from(path));
    }
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Some(found.clone());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

fn home() -> PathBuf {
    PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
}

/// The status and body of `method` on `url`, sent as it is (no redirects followed).
async fn fetch(method: Method, url: &str) -> (u16, Vec<u8>) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = client.request(method, url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.bytes().await.unwrap().to_vec())
}

/// `url` with the first character of query parameter `param`'s value changed (`0` to `1`,
/// anything else to `0`: still hex, still base64).
fn altered(url: &str, param: &str) -> String {
    let start = url
        .find(&format!("{param}="))
        .unwrap_or_else(|| panic!("{param} in {url}"))
        + param.len()
        + 1;
    let first = &url[start..start + 1];
    let replacement = if first == "0" { "1" } else { "0" };
    format!("{}{replacement}{}", &url[..start], &url[start + 1..])
}

/// `signed` with the path of `other` (a URL for another key): the signature of one object
/// presented for another.
fn moved(signed: &str, other: &str) -> String {
    let mut url = Url::parse(signed).unwrap();
    url.set_path(Url::parse(other).unwrap().path());
    url.to_string()
}

/// `url` without its query: the object's plain, unsigned URL.
fn unsigned(url: &str) -> String {
    url.split('?').next().unwrap().to_string()
}

// ---------------------------------------------------------------------------------------
// S3

const S3_ACCESS_KEY: &str = "AKIAARCHEIOTEST";
const S3_SECRET_KEY: &str = "archeio-test-secret-key";

fn s3_signing(port: u16, secret: &str, lifetime: Duration) -> Signing {
    Signing {
        lifetime,
        store: SignedStore::S3(S3Signing {
            bucket: "private".into(),
            region: "us-east-1".into(),
            endpoint: Some(format!("http://127.0.0.1:{port}")),
            keys: Some(S3Keys {
                access_key_id: S3_ACCESS_KEY.into(),
                secret_access_key: secret.into(),
                session_token: None,
            }),
        }),
    }
}

/// A private bucket on `s3s-fs` with both blobs, uploaded with object_store's own client.
async fn s3_server() -> Option<Server> {
    let Some(bin) = binary("S3S_FS", "s3s-fs", &[home().join(".cargo/bin/s3s-fs")]) else {
        skip("s3s-fs not found (set S3S_FS, or install it with \
             `cargo install s3s-fs --version 0.14.1 --features binary --locked`, as scripts/test.sh does)");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    // s3s-fs serves each directory under its root as a bucket.
    std::fs::create_dir(dir.path().join("private")).unwrap();
    let port = common::free_port();
    let mut cmd = Command::new(bin);
    cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
        .arg(dir.path());
    let server = Server::start("s3s-fs", cmd, port, dir);
    let store = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name("private")
        .with_region("us-east-1")
        .with_endpoint(server.base())
        .with_allow_http(true)
        .with_access_key_id(S3_ACCESS_KEY)
        .with_secret_access_key(S3_SECRET_KEY)
        .build()
        .unwrap();
    put_blobs(&store).await;
    Some(server)
}

/// The store refuses `get` (a signed GET of [`BLOB`]) without its signature, with the
/// signature (query parameter `signature`) altered, and moved onto [`OTHER`], which exists.
async fn refuses_forgeries(signer: &MirrorSigner, get: &str, signature: &str) {
    assert_eq!(
        fetch(Method::GET, &unsigned(get)).await.0,
        403,
        "no signature"
    );
    let altered = altered(get, signature);
    assert_eq!(fetch(Method::GET, &altered).await.0, 403, "{altered}");
    let other = signer.url(Method::GET, &blob_key(OTHER)).await.unwrap();
    assert_eq!(
        fetch(Method::GET, &other).await.0,
        200,
        "the other blob exists"
    );
    assert_eq!(fetch(Method::GET, &moved(get, &other)).await.0, 403);
}

/// Puts both blobs in `store` under the gateway's layout, with object_store's own client.
async fn put_blobs(store: &dyn ObjectStore) {
    for bytes in [BLOB, OTHER] {
        let path = ObjectPath::parse(blob_key(bytes)).unwrap();
        store
            .put(&path, PutPayload::from_static(bytes))
            .await
            .unwrap();
    }
}

/// Every proof asks the same object and shows only the signature decides: the signed GET
/// returns the bytes and the signed HEAD answers 200, while the plain URL, an altered
/// signature, the signature of another key, a GET URL used for HEAD, a URL signed with the
/// wrong secret and an expired URL are refused with 403.
#[tokio::test]
async fn s3_signed_urls_are_checked_by_an_s3_server() {
    let Some(server) = s3_server().await else {
        return;
    };
    let signer = MirrorSigner::new(&s3_signing(
        server.port,
        S3_SECRET_KEY,
        Duration::from_secs(300),
    ))
    .unwrap();
    assert_eq!(signer.lifetime(), Duration::from_secs(300));
    let key = blob_key(BLOB);
    let get = signer.url(Method::GET, &key).await.unwrap();
    let head = signer.url(Method::HEAD, &key).await.unwrap();
    assert!(get.starts_with(&format!(
        "{}/private/containers/images/sha256",
        server.base()
    )));
    assert!(get.contains("X-Amz-Signature="), "{get}");
    assert!(get.contains("X-Amz-Expires=300"), "{get}");

    assert_eq!(fetch(Method::GET, &get).await, (200, BLOB.to_vec()));
    assert_eq!(fetch(Method::HEAD, &head).await.0, 200);

    refuses_forgeries(&signer, &get, "X-Amz-Signature").await;
    assert_eq!(
        fetch(Method::HEAD, &get).await.0,
        403,
        "GET URL used for HEAD"
    );
    assert_eq!(
        fetch(Method::GET, &head).await.0,
        403,
        "HEAD URL used for GET"
    );

    let wrong = MirrorSigner::new(&s3_signing(
        server.port,
        "not-the-secret",
        signer.lifetime(),
    ))
    .unwrap();
    let forged = wrong.url(Method::GET, &key).await.unwrap();
    assert_eq!(fetch(Method::GET, &forged).await.0, 403, "wrong secret key");

    // The signature's time has whole seconds: a 1 s lifetime can be over before a busy
    // machine sends the first fetch; 2 s cannot.
    let short = MirrorSigner::new(&s3_signing(
        server.port,
        S3_SECRET_KEY,
        Duration::from_secs(2),
    ))
    .unwrap();
    let expiring = short.url(Method::GET, &key).await.unwrap();
    assert_eq!(fetch(Method::GET, &expiring).await.0, 200);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(fetch(Method::GET, &expiring).await.0, 403, "expired");
}

// ---------------------------------------------------------------------------------------
// Azure

/// Azurite's account and its published key (the emulator's fixed credentials).
const AZURE_ACCOUNT: &str = "devstoreaccount1";
const AZURE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

fn azure_signing(port: u16, key: &str, lifetime: Duration) -> Signing {
    Signing {
        lifetime,
        store: SignedStore::Azure(AzureSigning {
            account: AZURE_ACCOUNT.into(),
            container: "private".into(),
            access_key: Some(key.into()),
            endpoint: Some(format!("http://127.0.0.1:{port}/{AZURE_ACCOUNT}")),
        }),
    }
}

/// Azurite with a private container holding both blobs: the container created with a
/// request authorized by object_store's `AzureAuthorizer` (Shared Key), the blobs put with
/// object_store's own client.
async fn azure_server() -> Option<Server> {
    let Some(bin) = binary(
        "AZURITE_BLOB",
        "azurite-blob",
        &[home().join(".cache/archeio-test/azurite/node_modules/.bin/azurite-blob")],
    ) else {
        skip("azurite-blob not found (set AZURITE_BLOB, or install it with \
             `npm install --prefix ~/.cache/archeio-test/azurite azurite`, as scripts/test.sh does)");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let mut cmd = Command::new(bin);
    cmd.args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
        .arg("--location")
        .arg(dir.path())
        .args(["--skipApiVersionCheck", "--silent", "--disableTelemetry"]);
    let server = Server::start("azurite-blob", cmd, port, dir);

    let container = format!(
        "{}/{AZURE_ACCOUNT}/private?restype=container",
        server.base()
    );
    let mut request = http::Request::builder()
        .method(Method::PUT)
        .uri(&container)
        .body(object_store::client::HttpRequestBody::empty())
        .unwrap();
    let credential = object_store::azure::AzureCredential::AccessKey(
        object_store::azure::AzureAccessKey::try_new(AZURE_KEY).unwrap(),
    );
    object_store::azure::AzureAuthorizer::new(&credential, AZURE_ACCOUNT).authorize(&mut request);
    let mut put = reqwest::Client::new().put(&container);
    for (name, value) in request.headers() {
        put = put.header(name, value);
    }
    let response = put.header("content-length", "0").send().await.unwrap();
    assert_eq!(
        response.status().as_u16(),
        201,
        "{:?}",
        response.text().await
    );

    let store = object_store::azure::MicrosoftAzureBuilder::new()
        .with_account(AZURE_ACCOUNT)
        .with_container_name("private")
        .with_access_key(AZURE_KEY)
        .with_endpoint(format!("{}/{AZURE_ACCOUNT}", server.base()))
        .with_allow_http(true)
        .build()
        .unwrap();
    put_blobs(&store).await;
    Some(server)
}

/// The SAS GET returns the bytes and the SAS HEAD answers 200; the plain URL, an altered
/// `sig`, the SAS of another blob, a read SAS used to write, a SAS signed with another key
/// and an expired SAS are refused. A SAS does not sign the method, only permissions (`r`
/// covers GET and HEAD), so a GET URL serves a HEAD there; the PUT with a read-only SAS
/// shows the permissions are enforced instead.
#[tokio::test]
async fn azure_sas_urls_are_checked_by_azurite() {
    let Some(server) = azure_server().await else {
        return;
    };
    let signer = MirrorSigner::new(&azure_signing(
        server.port,
        AZURE_KEY,
        Duration::from_secs(300),
    ))
    .unwrap();
    let key = blob_key(BLOB);
    let get = signer.url(Method::GET, &key).await.unwrap();
    let head = signer.url(Method::HEAD, &key).await.unwrap();
    assert!(get.starts_with(&format!(
        "{}/{AZURE_ACCOUNT}/private/containers/images/sha256",
        server.base()
    )));
    assert!(get.contains("sig="), "{get}");

    assert_eq!(fetch(Method::GET, &get).await, (200, BLOB.to_vec()));
    assert_eq!(fetch(Method::HEAD, &head).await.0, 200);
    assert!(head.contains("sp=r&"), "read permission for HEAD: {head}");
    assert_eq!(fetch(Method::HEAD, &get).await.0, 200, "r covers HEAD");

    refuses_forgeries(&signer, &get, "sig").await;
    let write = reqwest::Client::new()
        .put(&get)
        .header("x-ms-blob-type", "BlockBlob")
        .body("overwritten")
        .send()
        .await
        .unwrap();
    assert_eq!(write.status().as_u16(), 403, "a read SAS used to write");
    assert_eq!(fetch(Method::GET, &get).await.1, BLOB, "still the blob");

    let other_key = base64_of(b"not the devstoreaccount1 key, 64 bytes long.....................");
    let wrong =
        MirrorSigner::new(&azure_signing(server.port, &other_key, signer.lifetime())).unwrap();
    let forged = wrong.url(Method::GET, &key).await.unwrap();
    assert_eq!(
        fetch(Method::GET, &forged).await.0,
        403,
        "wrong account key"
    );

    let short = MirrorSigner::new(&azure_signing(
        server.port,
        AZURE_KEY,
        Duration::from_secs(1),
    ))
    .unwrap();
    let expiring = short.url(Method::GET, &key).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(fetch(Method::GET, &expiring).await.0, 403, "expired");
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

// ---------------------------------------------------------------------------------------
// GCS

/// Google's V4 signing, rebuilt from a signed URL per
/// <https://cloud.google.com/storage/docs/authentication/canonical-requests>: the method,
/// the path as it is in the URL, the query parameters but the signature sorted by name with
/// names and values percent-encoded (all but `A-Za-z0-9-._~`), the `host` header, the
/// signed-header list and `UNSIGNED-PAYLOAD`.
fn canonical_request(method: &str, url: &Url) -> String {
    let mut query: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != "X-Goog-Signature")
        .map(|(k, v)| (encode(&k), encode(&v)))
        .collect();
    query.sort();
    let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let host = match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap()),
        None => url.host_str().unwrap().to_string(),
    };
    format!(
        "{method}\n{}\n{}\nhost:{host}\n\nhost\nUNSIGNED-PAYLOAD",
        url.path(),
        query.join("&")
    )
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GOOG4-RSA-SHA256`, the timestamp, the credential scope and the canonical request's
/// SHA-256, as the URL's own `X-Goog-Date` and `X-Goog-Credential` give them.
fn string_to_sign(url: &Url, canonical: &str) -> String {
    let param = |name: &str| param(url, name);
    let credential = param("X-Goog-Credential");
    let scope = credential.split_once('/').unwrap().1;
    format!(
        "GOOG4-RSA-SHA256\n{}\n{scope}\n{:x}",
        param("X-Goog-Date"),
        Sha256::digest(canonical.as_bytes())
    )
}

fn param(url: &Url, name: &str) -> String {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .unwrap_or_else(|| panic!("{name} in {url}"))
        .1
        .into_owned()
}

fn hex_decode(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// The test service account: its JSON key and the DER public key of its private key.
fn gcs_test_account() -> (String, String, Vec<u8>) {
    use rustls_pki_types::pem::PemObject;
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/gcs");
    let key =
        std::fs::read_to_string(format!("{dir}/test_service_account.not-a-test.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&key).unwrap();
    let pem = json["private_key"].as_str().unwrap();
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).unwrap();
    let pair = ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).unwrap();
    let email = json["client_email"].as_str().unwrap().to_string();
    (key, email, pair.public().as_ref().to_vec())
}

fn signed_by(public_key: &[u8], message: &str, signature_hex: &str) -> bool {
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        public_key,
    )
    .verify(message.as_bytes(), &hex_decode(signature_hex))
    .is_ok()
}

/// object_store signs with the current time, so its URLs cannot equal the vectors' byte
/// for byte. What is checked instead, for each vector (a GET of an object):
///
/// 1. The checker itself: [`canonical_request`] and [`string_to_sign`] rebuilt from the
///    vector's `expectedUrl` equal its `expectedCanonicalRequest` and
///    `expectedStringToSign`, and the vector's signature verifies over that string with
///    the test account's public key (RSA PKCS#1 v1.5, SHA-256).
/// 2. object_store's URL for the same bucket, object and expiration, with its timestamp
///    replaced by the vector's (in `X-Goog-Date` and the credential scope), equals the
///    vector's `expectedUrl` up to `X-Goog-Signature`: same host, path, parameters, order
///    and encoding; and its rebuilt canonical request equals `expectedCanonicalRequest`.
/// 3. object_store's signature verifies over the string to sign rebuilt from its own URL,
///    and does not once the method (`HEAD`) or the object is changed.
///
/// Then, with no vector for `HEAD`: a signed HEAD URL verifies as `HEAD` and not as `GET`,
/// and a key shaped as the gateway's (`containers/images/sha256:...`) is signed with its
/// path as it appears in the URL, as Google's canonical form requires.
#[tokio::test]
async fn gcs_signed_urls_match_googles_v4_vectors() {
    let (key, email, public_key) = gcs_test_account();
    let vectors: serde_json::Value =
        serde_json::from_str(include_str!("data/gcs/v4_signatures.json")).unwrap();
    let vectors = vectors["signingV4Tests"].as_array().unwrap();
    assert_eq!(vectors.len(), 2);
    for v in vectors {
        let text = |name: &str| v[name].as_str().unwrap().to_string();
        let (expected_url, expected_canonical) =
            (text("expectedUrl"), text("expectedCanonicalRequest"));
        let method = text("method");
        assert_eq!(method, "GET");

        // 1. The checker agrees with Google on Google's own URL.
        let expected = Url::parse(&expected_url).unwrap();
        assert_eq!(canonical_request(&method, &expected), expected_canonical);
        let expected_sts = string_to_sign(&expected, &expected_canonical);
        assert_eq!(expected_sts, text("expectedStringToSign"));
        assert!(signed_by(
            &public_key,
            &expected_sts,
            &param(&expected, "X-Goog-Signature")
        ));

        // 2. object_store's URL has the vector's shape.
        let signing = Signing {
            lifetime: Duration::from_secs(v["expiration"].as_u64().unwrap()),
            store: SignedStore::Gcs(GcsSigning {
                bucket: text("bucket"),
                service_account_key: Some(key.clone()),
            }),
        };
        let signer = MirrorSigner::new(&signing).unwrap();
        let ours = signer.url(Method::GET, &text("object")).await.unwrap();
        let url = Url::parse(&ours).unwrap();
        let date = param(&url, "X-Goog-Date");
        let vector_date = param(&expected, "X-Goog-Date");
        let at_vector_time = ours.replace(&date, &vector_date).replace(
            &format!("%2F{}%2F", &date[..8]),
            &format!("%2F{}%2F", &vector_date[..8]),
        );
        let signature_at = |u: &str| u.find("&X-Goog-Signature=").unwrap();
        assert_eq!(
            &at_vector_time[..signature_at(&at_vector_time)],
            &expected_url[..signature_at(&expected_url)],
        );
        let moved_in_time = Url::parse(&at_vector_time).unwrap();
        assert_eq!(canonical_request("GET", &moved_in_time), expected_canonical);
        assert_eq!(
            param(&url, "X-Goog-Credential"),
            format!("{email}/{}/auto/storage/goog4_request", &date[..8])
        );

        // 3. Its signature is over exactly that request.
        let signature = param(&url, "X-Goog-Signature");
        assert_eq!(signature.len(), 512, "a 2048-bit RSA signature in hex");
        let sts = string_to_sign(&url, &canonical_request("GET", &url));
        assert!(signed_by(&public_key, &sts, &signature), "{sts}");
        let as_head = string_to_sign(&url, &canonical_request("HEAD", &url));
        assert!(!signed_by(&public_key, &as_head, &signature));
        let mut elsewhere = url.clone();
        elsewhere.set_path(&format!("/{}/another-object", text("bucket")));
        let as_other = string_to_sign(&elsewhere, &canonical_request("GET", &elsewhere));
        assert!(!signed_by(&public_key, &as_other, &signature));
    }

    let signer = MirrorSigner::new(&Signing {
        lifetime: Duration::from_secs(900),
        store: SignedStore::Gcs(GcsSigning {
            bucket: "mirror-bucket".into(),
            service_account_key: Some(key),
        }),
    })
    .unwrap();
    let blob = blob_key(BLOB);
    let head = Url::parse(&signer.url(Method::HEAD, &blob).await.unwrap()).unwrap();
    assert_eq!(head.host_str(), Some("storage.googleapis.com"));
    assert_eq!(head.path(), format!("/mirror-bucket/{blob}"));
    assert_eq!(param(&head, "X-Goog-Expires"), "900");
    let signature = param(&head, "X-Goog-Signature");
    let as_head = string_to_sign(&head, &canonical_request("HEAD", &head));
    assert!(signed_by(&public_key, &as_head, &signature), "{as_head}");
    let as_get = string_to_sign(&head, &canonical_request("GET", &head));
    assert!(!signed_by(&public_key, &as_get, &signature));
}

/// Says why a test does not run; under `scripts/test.sh` (`ARCHEIO_TEST_REQUIRE_SERVERS=1`),
/// which installs every server, a missing one fails the test instead.
fn skip(why: &str) {
    if std::env::var_os("ARCHEIO_TEST_REQUIRE_SERVERS").is_some() {
        panic!("{why}");
    }
    eprintln!("SKIPPED: {why}");
}

/// A gateway whose blobs come from the private mirror `private` (its `signing` YAML given),
/// by redirect, and by proxy for clients in 10.0.0.0/8; its secrets from the environment.
async fn gateway_with_private_mirror(signing: &str, env: &[(&str, &str)]) -> common::Gateway {
    for _ in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let (port, admin) = (common::free_port(), common::free_port());
        let conf = format!(
            "version: 1\nthreads: 2\npid_file: {d}/archeio.pid\nupgrade_sock: {d}/upgrade.sock\n\
             archeio:\n  listen: ['127.0.0.1:{port}']\n  admin_listen: ['127.0.0.1:{admin}']\n\
             \x20 upstream: {{endpoints: ['http://upstream.test'], path: images}}\n\
             \x20 ranges: {{embedded: false}}\n\
             \x20 client_address: {{trusted_proxies: ['127.0.0.1/32']}}\n\
             \x20 mirrors:\n    named:\n      private: {{signing: {signing}}}\n\
             \x20 policy:\n    rules:\n\
             \x20     - {{match: {{cidr: 10.0.0.0/8}}, action: mirrors, mirrors: [private], delivery: proxy}}\n\
             \x20     - {{match: {{kind: blob}}, action: mirrors, mirrors: [private]}}\n",
            d = dir.path().display()
        );
        let path = dir.path().join("archeio.yaml");
        std::fs::write(&path, conf).unwrap();
        let cmd = common::command(&["-c", path.to_str().unwrap()], env, dir.path());
        if let Some(gw) = common::Gateway::spawn(cmd, port, admin, dir).await {
            return gw;
        }
    }
    panic!("the gateway did not start three times in a row");
}

/// What a client gets through the gateway from a private mirror: a `307` to a URL presigned
/// for its method, which the store serves, or (for a proxied client) the bytes themselves; a
/// blob the bucket lacks goes upstream. No signature or secret reaches the log or metrics.
async fn pull_through_gateway(
    gw: &common::Gateway,
    store_base: &str,
    signature: &str,
    secret: &str,
) {
    let path = |bytes: &[u8]| format!("/v2/app/blobs/sha256:{:x}", Sha256::digest(bytes));
    let r = gw.get(&path(BLOB)).await;
    assert_eq!(r.status, 307, "{r:?}\n{}", gw.log());
    let location = r.location().to_string();
    assert!(location.starts_with(store_base), "{location}");
    assert!(location.contains(signature), "{location}");
    assert_eq!(fetch(Method::GET, &location).await, (200, BLOB.to_vec()));
    assert_eq!(
        fetch(Method::GET, &unsigned(&location)).await.0,
        403,
        "the bucket is private"
    );

    let r = gw.send("HEAD", &path(OTHER), &[]).await;
    assert_eq!(r.status, 307);
    assert_eq!(fetch(Method::HEAD, r.location()).await.0, 200);

    let missing = path(b"not in the bucket");
    let r = gw.get(&missing).await;
    assert_eq!(
        (r.status, r.location()),
        (
            307,
            format!("http://upstream.test/v2/images{}", &missing[3..]).as_str()
        )
    );

    let r = gw
        .send(
            "GET",
            &path(OTHER),
            &[("X-Forwarded-For", "10.1.2.3, 127.0.0.1")],
        )
        .await;
    assert_eq!((r.status, r.body.as_slice()), (200, OTHER), "{r:?}");

    let metrics = gw.metrics().await;
    for text in [gw.log(), metrics] {
        assert!(!text.contains(signature), "a signature leaked:\n{text}");
        assert!(!text.contains(secret), "the secret leaked:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_sends_clients_to_presigned_s3_urls() {
    let Some(server) = s3_server().await else {
        return;
    };
    let signing = format!(
        "{{s3: {{bucket: private, region: us-east-1, endpoint: '{}', \
         access_key_id_env: TEST_S3_KEY_ID, secret_access_key_env: TEST_S3_SECRET, lifetime: 10m}}}}",
        server.base()
    );
    let env = [
        ("TEST_S3_KEY_ID", S3_ACCESS_KEY),
        ("TEST_S3_SECRET", S3_SECRET_KEY),
    ];
    let gw = gateway_with_private_mirror(&signing, &env).await;
    // object_store escapes the digest's `:` in S3 paths.
    let base = format!("{}/private/containers/images/sha256%3A", server.base());
    pull_through_gateway(&gw, &base, "X-Amz-Signature=", S3_SECRET_KEY).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_sends_clients_to_azure_sas_urls() {
    let Some(server) = azure_server().await else {
        return;
    };
    let signing = format!(
        "{{azure: {{account: {AZURE_ACCOUNT}, container: private, endpoint: '{}/{AZURE_ACCOUNT}', \
         access_key_env: TEST_AZURE_KEY, lifetime: 10m}}}}",
        server.base()
    );
    let gw = gateway_with_private_mirror(&signing, &[("TEST_AZURE_KEY", AZURE_KEY)]).await;
    let base = format!(
        "{}/{AZURE_ACCOUNT}/private/containers/images/sha256:",
        server.base()
    );
    pull_through_gateway(&gw, &base, "sig=", AZURE_KEY).await;
}

/// Issue 24, defect 6: two private mirrors whose buckets share a name on different endpoints
/// (two sites' S3-compatible servers) are two stores: a blob found at site A is not taken as
/// present at site B, where B's clients would get a 404.
#[tokio::test(flavor = "multi_thread")]
async fn buckets_of_one_name_on_two_endpoints_are_two_stores() {
    let (site_a, site_b) = (common::Mirror::start().await, common::Mirror::start().await);
    let digest = format!("sha256:{}", "ab".repeat(32));
    // Path-style, the digest's `:` escaped as object_store signs it.
    site_a.put(&format!(
        "/registry/containers/images/{}",
        digest.replace(':', "%3A")
    ));
    let secrets = tempfile::tempdir().unwrap();
    let (id, secret) = (secrets.path().join("id"), secrets.path().join("secret"));
    std::fs::write(&id, "AKIDEXAMPLE").unwrap();
    std::fs::write(&secret, "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY").unwrap();
    let store = |endpoint: String| {
        format!(
            "{{signing: {{s3: {{bucket: registry, region: us-east-1, endpoint: '{endpoint}', \
             access_key_id_file: '{}', secret_access_key_file: '{}'}}}}}}",
            id.display(),
            secret.display()
        )
    };
    let gw = common::Gateway::start(&format!(
        "  upstream: {{endpoints: ['http://upstream.test'], path: images}}
  ranges: {{embedded: false}}
  mirrors:
    named:
      site-a: {}
      site-b: {}
  policy:
    rules:
      - {{match: {{cidr: 127.0.0.1/32, kind: blob}}, action: mirrors, mirrors: [site-a]}}
      - {{match: {{kind: blob}}, action: mirrors, mirrors: [site-b]}}",
        store(site_a.base()),
        store(site_b.base())
    ))
    .await;
    let target = format!("/v2/app/blobs/{digest}");
    let from = |client: &'static str| {
        let target = target.clone();
        async move {
            common::request_from(Some(client.parse().unwrap()), gw.addr, "GET", &target, &[])
                .await
                .unwrap()
        }
    };
    let a = from("127.0.0.1").await;
    assert!(a.location().starts_with(&site_a.base()), "{a:?}");
    let b = from("127.0.0.3").await;
    assert_eq!(site_b.all_heads(), 1, "site B was never asked");
    assert!(
        b.location()
            .starts_with("http://upstream.test/v2/images/app/blobs/"),
        "site B's client sent to {}",
        b.location()
    );
}

/// Issue 24, defect 5: a private mirror whose signed `HEAD` is refused (a wrong or revoked
/// key) is an error, not "absent": logged once with the cause, counted under the mirror's
/// name, the mirror skipped like an open breaker; the right key written to the secret file
/// (as Kubernetes rewrites a mounted Secret) is used without a restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_key_is_an_error_until_the_secret_file_holds_the_right_one() {
    let Some(server) = s3_server().await else {
        return;
    };
    let secrets = tempfile::tempdir().unwrap();
    let (id, secret) = (secrets.path().join("id"), secrets.path().join("secret"));
    std::fs::write(&id, S3_ACCESS_KEY).unwrap();
    std::fs::write(&secret, "a-rotated-out-key\n").unwrap();
    let signing = format!(
        "{{s3: {{bucket: private, region: us-east-1, endpoint: '{}', \
         access_key_id_file: '{}', secret_access_key_file: '{}', lifetime: 10m}}}}",
        server.base(),
        id.display(),
        secret.display()
    );
    let gw = gateway_with_private_mirror(&signing, &[]).await;
    let path = |bytes: &[u8]| format!("/v2/app/blobs/sha256:{:x}", Sha256::digest(bytes));
    let upstream = "http://upstream.test/v2/images/app/blobs/";

    for blob in [BLOB, OTHER] {
        let r = gw.get(&path(blob)).await;
        assert_eq!(r.status, 307);
        assert!(r.location().starts_with(upstream), "{}", r.location());
    }
    let m = gw.metrics().await;
    let series = |outcome: &str| {
        common::sample(
            &m,
            &format!("archeio_blob_checks_total{{mirror=\"private\",outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(series("refused"), 1.0, "{m}");
    assert_eq!(series("skipped"), 1.0, "the mirror is out at once");
    assert_eq!(series("absent"), 0.0);
    let log = gw.log();
    assert_eq!(
        log.matches("refused the gateway's signed request").count(),
        1,
        "{log}"
    );
    assert!(log.contains("403"), "{log}");

    // The right key lands in the file: new requests are signed with it.
    std::fs::write(&secret, format!("{S3_SECRET_KEY}\n")).unwrap();
    let store_base = format!("{}/private/containers/images/sha256%3A", server.base());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = gw.get(&path(BLOB)).await;
        if r.location().starts_with(&store_base) {
            assert_eq!(fetch(Method::GET, r.location()).await, (200, BLOB.to_vec()));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new key was not used:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let m = gw.metrics().await;
    assert_eq!(
        common::sample(
            &m,
            "archeio_mirror_secret_reloads_total{mirror=\"private\",result=\"ok\"}"
        ),
        1.0
    );
    let log = gw.log();
    assert!(!log.contains(S3_SECRET_KEY) && !log.contains("a-rotated-out-key"));
}

/// Issue 24, defect 9: a private S3 mirror signed with the credentials of the pod's identity
/// (EKS Pod Identity and ECS hand them out at a local endpoint, with a token file), not
/// static keys; object_store fetches and refreshes them.
#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_signs_with_the_credentials_of_its_pod_identity() {
    let Some(server) = s3_server().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "pod-identity-token").unwrap();
    let credentials = common::fake::FakeServer::start(|_| {
        let body = serde_json::json!({
            "AccessKeyId": S3_ACCESS_KEY,
            "SecretAccessKey": S3_SECRET_KEY,
            "Token": "a-session-token",
            "Expiration": "2099-01-01T00:00:00Z",
        });
        common::fake::Canned::new(200)
            .header("content-type", "application/json")
            .body(body.to_string())
    })
    .await;
    let signing = format!(
        "{{s3: {{bucket: private, region: us-east-1, endpoint: '{}', \
         credentials: workload_identity, lifetime: 10m}}}}",
        server.base()
    );
    let uri = format!("{}/v1/credentials", credentials.url());
    let token_file = token.display().to_string();
    let env = [
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", uri.as_str()),
        (
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
            token_file.as_str(),
        ),
    ];
    let gw = gateway_with_private_mirror(&signing, &env).await;
    let base = format!("{}/private/containers/images/sha256%3A", server.base());
    pull_through_gateway(
        &gw,
        &base,
        "X-Amz-Security-Token=a-session-token",
        S3_SECRET_KEY,
    )
    .await;
    assert!(
        credentials
            .seen()
            .iter()
            .any(|s| s.header("authorization") == Some("pod-identity-token")),
        "the credentials were asked for with the pod's token"
    );
}
