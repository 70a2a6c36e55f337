//! The admin listener: `/metrics` (Prometheus text), `/healthz` (the process answers) and
//! `/readyz` (the range table is loaded), kept off the registry port.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use http::{header, Response, StatusCode};
use pingora_core::apps::http_app::{HttpServer, ServeHttp};
use pingora_core::modules::http::compression::ResponseCompressionBuilder;
use pingora_core::protocols::http::ServerSession;
use pingora_prometheus::PrometheusHttpApp;

/// The admin application.
pub struct AdminApp {
    ready: Arc<AtomicBool>,
}

impl AdminApp {
    /// `ready` turns true once the range table is in place.
    pub fn server(ready: Arc<AtomicBool>) -> HttpServer<AdminApp> {
        let mut server = HttpServer::new_app(AdminApp { ready });
        // Scrapes of a few hundred series compress well; Pingora only compresses when the
        // scraper asks for it.
        server.add_module(ResponseCompressionBuilder::enable(6));
        server
    }
}

fn text(status: StatusCode, body: &str) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CONTENT_LENGTH, body.len())
        .body(body.as_bytes().to_vec())
        .expect("static response parts are valid")
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path();
        match path {
            "/metrics" => PrometheusHttpApp.response(session).await,
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" if self.ready.load(Ordering::Acquire) => text(StatusCode::OK, "ready\n"),
            "/readyz" => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "cloud IP ranges not loaded\n",
            ),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /metrics, /healthz or /readyz\n",
            ),
        }
    }
}
