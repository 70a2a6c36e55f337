//! `moto_server`, an S3-compatible object store, as a child process on loopback.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, request};

/// A `moto_server` process, killed on drop.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    pub async fn start() -> Moto {
        let port = free_port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs (moto_server: python3 -m pip install 'moto[server]')");
        let moto = Moto { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while request(moto.addr(), "GET", "/", &[]).await.is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        moto
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    pub async fn bucket(&self, name: &str) {
        let r = request(
            self.addr(),
            "PUT",
            format!("/{name}"),
            &[("Content-Length", "0")],
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
    }

    /// Object keys in the bucket.
    pub async fn keys(&self, bucket: &str) -> BTreeSet<String> {
        let r = request(
            self.addr(),
            "GET",
            format!("/{bucket}?list-type=2&max-keys=1000"),
            &[],
        )
        .await
        .unwrap();
        let xml = String::from_utf8(r.body).unwrap();
        xml.split("<Key>")
            .skip(1)
            .map(|s| s.split("</Key>").next().unwrap().to_string())
            .collect()
    }

    /// An object's bytes, through the S3 API.
    pub async fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        let r = request(self.addr(), "GET", format!("/{bucket}/{key}"), &[])
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        r.body
    }

    /// Overwrites an object through the S3 API (readable by anyone, as the sync writes).
    pub async fn put(&self, bucket: &str, key: &str, bytes: &[u8]) {
        let r = reqwest::Client::new()
            .put(format!("http://{}/{bucket}/{key}", self.addr()))
            .header("x-amz-acl", "public-read")
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{r:?}");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
