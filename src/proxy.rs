//! Pingora glue: gathers the request facts, runs the routing decision (and the mirror check
//! it asks for), and writes the answer from `request_filter`, so no upstream is contacted.

use std::net::IpAddr;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use log::{info, log_enabled, Level};
use pingora_core::modules::http::HttpModules;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::{ProxyHttp, Session};

use crate::metrics;
use crate::mirror_check::MirrorCheck;
use crate::ranges::RangeTable;
use crate::routing::{decide, Answer, Decision, Reply, Request, Routes};

/// The registry-facing service.
pub struct Gateway {
    routes: Routes,
    ranges: RangeTable,
    mirror_check: MirrorCheck,
}

impl Gateway {
    /// A gateway answering by `routes` over `ranges`, checking mirrors with `mirror_check`.
    pub fn new(routes: Routes, ranges: RangeTable, mirror_check: MirrorCheck) -> Gateway {
        Gateway {
            routes,
            ranges,
            mirror_check,
        }
    }
}

/// What one request did, for the access log and the metrics.
pub struct RequestCtx {
    started: Instant,
    /// The answer sent, once decided.
    reply: Option<Reply>,
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            reply: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let req = session.req_header();
        let forwarded_for: Vec<&[u8]> = req
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        let facts = Request {
            method: req.method.as_str(),
            target: req.raw_path(),
            peer: peer_ip(session),
            forwarded_for: &forwarded_for,
        };
        let reply = match decide(&facts, &self.routes, &self.ranges) {
            Decision::Reply(reply) => reply,
            Decision::CheckMirror(candidate) => {
                let present = self.mirror_check.check(&candidate.mirror_url).await;
                candidate.decide(present)
            }
        };
        let head = session.req_header().method == http::Method::HEAD;
        let reply = ctx.reply.insert(reply);
        write_reply(session, reply, head).await?;
        Ok(true)
    }

    fn init_downstream_modules(&self, _modules: &mut HttpModules) {
        // Every answer is small and built here: no response compression module to consult.
    }

    async fn upstream_peer(&self, _: &mut Session, _: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        // Every request is answered in request_filter.
        Error::e_explain(ErrorType::InternalError, "redirect mode has no upstream")
    }

    async fn logging(&self, session: &mut Session, error: Option<&Error>, ctx: &mut RequestCtx) {
        let elapsed = ctx.started.elapsed();
        let reply = ctx.reply.as_ref();
        if let Some(reply) = reply {
            metrics::record_request(reply.route, reply.answer.status(), elapsed.as_secs_f64());
            if let Answer::Redirect { target, .. } = &reply.answer {
                metrics::record_redirect(target);
            }
        }
        if !log_enabled!(target: "archeio::access", Level::Info) {
            return;
        }
        let status = match (reply, session.response_written()) {
            (Some(r), _) => r.answer.status(),
            (None, Some(resp)) => resp.status.as_u16(),
            (None, None) => 0,
        };
        let (route, target) = match reply {
            Some(Reply {
                route,
                answer: Answer::Redirect { target, .. },
            }) => (route.as_str(), target.kind()),
            Some(r) => (r.route.as_str(), "-"),
            None => ("error", "-"),
        };
        let detail = match (reply.map(|r| &r.answer), error) {
            (Some(Answer::Error { message, .. }), _) => {
                format!(" detail=\"{}\"", message.escape_default())
            }
            (_, Some(e)) => format!(" error=\"{}\"", e.to_string().escape_default()),
            _ => String::new(),
        };
        let req = session.req_header();
        let path = req.raw_path();
        let path = &path[..path.iter().position(|b| *b == b'?').unwrap_or(path.len())];
        let client = peer_ip(session).map_or_else(|| "-".to_string(), |ip| ip.to_string());
        info!(
            target: "archeio::access",
            "{} {} client={} decision={}/{} status={} duration_ms={:.3}{}",
            req.method,
            path.escape_ascii(),
            client,
            route,
            target,
            status,
            elapsed.as_secs_f64() * 1e3,
            detail
        );
    }
}

fn peer_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// Writes the answer: redirects and the version check with an empty body, errors with a JSON
/// (registry API) or text body; HEAD gets the headers only.
async fn write_reply(session: &mut Session, reply: &Reply, head: bool) -> Result<()> {
    let status = reply.answer.status();
    let mut resp = ResponseHeader::build(status, Some(4))?;
    let body = match &reply.answer {
        Answer::Redirect { location, .. } => {
            resp.insert_header("Location", location.as_str())?;
            None
        }
        Answer::ApiVersion => {
            resp.insert_header("Docker-Distribution-Api-Version", "registry/2.0")?;
            None
        }
        Answer::Error {
            code, message, oci, ..
        } => {
            if status == 405 {
                resp.insert_header("Allow", "GET, HEAD")?;
            }
            let (content_type, body) = if *oci {
                resp.insert_header("Docker-Distribution-Api-Version", "registry/2.0")?;
                let json = serde_json::json!({ "errors": [{ "code": code, "message": message }] });
                ("application/json; charset=utf-8", format!("{json}\n"))
            } else {
                ("text/plain; charset=utf-8", format!("{message}\n"))
            };
            resp.insert_header("Content-Type", content_type)?;
            Some(Bytes::from(body))
        }
    };
    let len = body.as_ref().map_or(0, Bytes::len);
    resp.insert_header("Content-Length", len.to_string())?;
    match body {
        Some(body) if !head => {
            session.write_response_header(Box::new(resp), false).await?;
            session.write_response_body(Some(body), true).await
        }
        _ => session.write_response_header(Box::new(resp), true).await,
    }
}
