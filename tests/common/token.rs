//! A token service for registries with token auth (Distribution's `auth: token`), written in
//! the tests: it checks Basic credentials and signs ES256 tokens for the requested scope.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// A token service in the style of the distribution token protocol: checks Basic
/// credentials, signs ES256 tokens for the requested scope; counts requests per scope.
pub struct TokenServer {
    pub addr: SocketAddr,
    pub cert_pem: String,
    requests: Arc<Mutex<HashMap<String, usize>>>,
}

impl TokenServer {
    /// One user who may pull every repository.
    pub async fn start(user: &'static str, password: &'static str) -> TokenServer {
        TokenServer::with_grants(&[(user, password, &[""])]).await
    }

    /// Users `(name, password, repository prefixes they may pull)`: a token grants `pull` on
    /// the requested repository only when it starts with one of the user's prefixes (`""`:
    /// all), and no access otherwise, as a registry's token service decides per repository.
    pub async fn with_grants(
        users: &[(&'static str, &'static str, &[&'static str])],
    ) -> TokenServer {
        use rcgen::{CertificateParams, KeyPair};
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["token-signer".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let x5c = base64::engine::general_purpose::STANDARD.encode(cert.der());
        let signing = Arc::new(
            jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap(),
        );
        let requests: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counts = requests.clone();
        let expected: Arc<Vec<(String, Vec<&'static str>)>> = Arc::new(
            users
                .iter()
                .map(|(user, password, grants)| {
                    let basic = format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD
                            .encode(format!("{user}:{password}"))
                    );
                    (basic, grants.to_vec())
                })
                .collect(),
        );
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (signing, x5c, counts, expected) = (
                    signing.clone(),
                    x5c.clone(),
                    counts.clone(),
                    expected.clone(),
                );
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let query: HashMap<String, String> =
                            url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                                .into_owned()
                                .collect();
                        let scope = query.get("scope").cloned().unwrap_or_default();
                        *counts.lock().unwrap().entry(scope.clone()).or_default() += 1;
                        let grants = req.headers().get("authorization").and_then(|v| {
                            expected
                                .iter()
                                .find(|(basic, _)| v.as_bytes() == basic.as_bytes())
                                .map(|(_, grants)| grants.clone())
                        });
                        let body = if let Some(grants) = grants {
                            let name = scope.split(':').nth(1).unwrap_or("");
                            let actions: Vec<&str> =
                                match grants.iter().any(|g| name.starts_with(g)) {
                                    true => vec!["pull"],
                                    false => vec![],
                                };
                            let now = std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .unwrap()
                                .as_secs();
                            let claims = serde_json::json!({
                                "iss": "test-issuer", "sub": "archeio", "aud": "test-registry",
                                "exp": now + 300, "nbf": now - 10, "iat": now,
                                "jti": format!("{now}-{name}"),
                                "access": [{"type": "repository", "name": name, "actions": actions}]
                            });
                            let mut header =
                                jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
                            header.x5c = Some(vec![x5c.clone()]);
                            let token = jsonwebtoken::encode(&header, &claims, &signing).unwrap();
                            Some(serde_json::json!({"token": token, "expires_in": 300}).to_string())
                        } else {
                            None
                        };
                        async move {
                            let resp = match body {
                                Some(b) => Response::new(Full::new(Bytes::from(b))),
                                None => Response::builder()
                                    .status(401)
                                    .body(Full::new(Bytes::new()))
                                    .unwrap(),
                            };
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TokenServer {
            addr,
            cert_pem: cert.pem(),
            requests,
        }
    }

    pub fn count(&self, scope: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .get(scope)
            .copied()
            .unwrap_or(0)
    }
}
