//! A scripted HTTP server for the cases a real registry cannot play: paging tag lists,
//! foreign token realms, header recording, redirects, outages. Every request it receives is
//! recorded; the answer comes from a handler.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::AbortHandle;

/// A request as the server received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub target: String,
    /// Header names lowercased, in order.
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An answer.
#[derive(Debug, Clone, Default)]
pub struct Canned {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Canned {
    pub fn new(status: u16) -> Canned {
        Canned {
            status,
            ..Canned::default()
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Canned {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Canned {
        self.body = body.into();
        self
    }
}

type Handler = dyn Fn(&Seen) -> Canned + Send + Sync;

/// The server; stopped (port closed, connections dropped) on [`FakeServer::stop`] or drop.
pub struct FakeServer {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl FakeServer {
    /// Serves on `ip`:0 with `handler`.
    pub async fn start_on(
        ip: &str,
        handler: impl Fn(&Seen) -> Canned + Send + Sync + 'static,
    ) -> FakeServer {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let tasks: Arc<Mutex<Vec<AbortHandle>>> = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let (log, conns) = (seen.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (log, handler) = (log.clone(), handler.clone());
                let conn = tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let seen = Seen {
                            method: req.method().to_string(),
                            target: req
                                .uri()
                                .path_and_query()
                                .map_or("/".into(), |p| p.to_string()),
                            headers: req
                                .headers()
                                .iter()
                                .map(|(k, v)| {
                                    (k.as_str().to_string(), v.to_str().unwrap_or("").to_string())
                                })
                                .collect(),
                        };
                        let canned = handler(&seen);
                        log.lock().unwrap().push(seen);
                        async move {
                            let mut resp = Response::new(Full::new(Bytes::from(canned.body)));
                            *resp.status_mut() = StatusCode::from_u16(canned.status).unwrap();
                            for (k, v) in canned.headers {
                                resp.headers_mut().append(
                                    hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                                    v.parse().unwrap(),
                                );
                            }
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                conns.lock().unwrap().push(conn.abort_handle());
            }
        });
        tasks.lock().unwrap().push(accept.abort_handle());
        FakeServer { addr, seen, tasks }
    }

    /// Serves on 127.0.0.1.
    pub async fn start(handler: impl Fn(&Seen) -> Canned + Send + Sync + 'static) -> FakeServer {
        FakeServer::start_on("127.0.0.1", handler).await
    }

    /// `http://ADDR`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Requests so far other than the health check (`/v2/`).
    pub fn seen_except_health(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.target != "/v2/")
            .collect()
    }

    /// Closes the port and every connection.
    pub fn stop(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop();
    }
}
