//! The admin listener: `/metrics` (Prometheus text), `/healthz` (the process answers) and
//! `/readyz` (ready for traffic: see [`Lifecycle::readiness`]), kept off the registry port.

use std::sync::Arc;

use async_trait::async_trait;
use http::{header, Response, StatusCode};
use pingora_core::apps::http_app::{HttpServer, ServeHttp};
use pingora_core::modules::http::compression::ResponseCompressionBuilder;
use pingora_core::protocols::http::ServerSession;
use pingora_prometheus::PrometheusHttpApp;

use super::lifecycle::Lifecycle;

/// The admin application.
pub struct AdminApp {
    lifecycle: Arc<Lifecycle>,
}

impl AdminApp {
    /// Answers `/readyz` from `lifecycle`.
    pub fn server(lifecycle: Arc<Lifecycle>) -> HttpServer<AdminApp> {
        let mut server = HttpServer::new_app(AdminApp { lifecycle });
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
            "/metrics" => {
                // archeio_ready as of this scrape.
                let _ = self.lifecycle.readiness();
                PrometheusHttpApp.response(session).await
            }
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => match self.lifecycle.readiness() {
                Ok(()) => text(StatusCode::OK, "ready\n"),
                Err(why) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("not ready: {why}\n"),
                ),
            },
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /metrics, /healthz or /readyz\n",
            ),
        }
    }
}
