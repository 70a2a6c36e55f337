//! The access-log line (`archeio::access`, level info) and the request metrics, written
//! once per request when it ends; also for request lines refused before Pingora parsed them.

use std::net::IpAddr;
use std::time::Duration;

use log::{info, log_enabled, Level};
use pingora_core::Error;
use pingora_proxy::Session;

use super::request::peer_ip;
use super::slow_clients::set_request_deadline;
use super::{Gateway, RequestCtx};
use crate::metrics;
use crate::routing::{Answer, Reply, Route, Target};

impl metrics::Label for Route {
    fn slot(self) -> usize {
        self as usize
    }

    fn as_str(self) -> &'static str {
        Route::as_str(self)
    }
}

impl metrics::Label for &Target {
    fn slot(self) -> usize {
        match self {
            Target::Upstream => 0,
            Target::SignatureUpstream => 1,
            Target::DefaultMirror => 2,
            Target::Page => 3,
            Target::Mirror(_) => 4,
        }
    }

    fn as_str(self) -> &'static str {
        self.kind()
    }
}

impl Gateway {
    /// The request is over: clears its deadline, counts it, and logs it.
    pub(super) fn finish(&self, session: &Session, error: Option<&Error>, ctx: &RequestCtx) {
        if ctx.upstream.sent_at.is_some() {
            set_request_deadline(session, None);
        }
        let elapsed = ctx.started.elapsed();
        let reply = ctx.reply.as_ref();
        let status = reply
            .and_then(|r| r.answer.status())
            .or_else(|| session.response_written().map(|r| r.status.as_u16()))
            .unwrap_or(0);
        if let Some(reply) = reply {
            metrics::record_request(reply.route, status, elapsed.as_secs_f64());
            if let Answer::Redirect { target, .. } = &reply.answer {
                let region = match target {
                    Target::Mirror(region) => Some(&**region),
                    _ => None,
                };
                metrics::record_redirect(target, region);
            }
        }
        if !log_enabled!(target: "archeio::access", Level::Info) {
            return;
        }
        let how = match reply.map(|r| &r.answer) {
            Some(Answer::Redirect { target, .. }) => target.kind(),
            Some(Answer::Proxy { .. }) if ctx.upstream.stale => "stale",
            Some(Answer::Proxy { .. }) if ctx.upstream.from_cache => "cache",
            Some(Answer::Proxy { .. }) => "proxy",
            Some(Answer::ProxyMirror { .. }) => "mirror_proxy",
            _ => "-",
        };
        let detail = AccessEntry::detail(reply.map(|r| &r.answer), error);
        let upstream = match ctx.upstream.endpoint {
            Some(i) if !ctx.upstream.from_cache => Some(self.upstream.endpoints.label(i)),
            _ => None,
        };
        let req = session.req_header();
        AccessEntry {
            method: req.method.as_str().as_bytes(),
            target: req.raw_path(),
            client: peer_ip(session),
            route: reply.map_or("error", |r| r.route.as_str()),
            how,
            status,
            elapsed,
            upstream,
            detail,
        }
        .write();
    }
}

/// Counts and logs a request line refused before Pingora parsed it, as [`Gateway::finish`]
/// does for the others.
pub(super) fn record_refused(method: &[u8], target: &[u8], client: Option<IpAddr>, reply: &Reply) {
    let status = reply.answer.status().unwrap_or(0);
    metrics::record_request(reply.route, status, 0.0);
    AccessEntry {
        method,
        target,
        client,
        route: reply.route.as_str(),
        how: "-",
        status,
        elapsed: Duration::ZERO,
        upstream: None,
        detail: AccessEntry::detail(Some(&reply.answer), None),
    }
    .write();
}

/// One access-log line (`archeio::access`, level info).
struct AccessEntry<'a> {
    /// The method as sent.
    method: &'a [u8],
    /// The request target; the query is left out of the log.
    target: &'a [u8],
    /// The socket peer.
    client: Option<IpAddr>,
    /// The rule that answered ([`Route::as_str`]), or `error`.
    route: &'a str,
    /// Where the answer came from: a redirect target kind, `proxy`, `cache`, `stale`, or `-`.
    how: &'a str,
    /// The status sent; 0 when none was.
    status: u16,
    /// Time from the request to the answer.
    elapsed: Duration,
    /// The upstream endpoint's label, when one was asked.
    upstream: Option<&'a str>,
    /// ` detail="..."` or ` error="..."`, or empty.
    detail: String,
}

impl<'a> AccessEntry<'a> {
    /// ` detail="<why>"` for an error the gateway decided, else ` error="<what failed>"`
    /// when something failed, else nothing.
    fn detail(answer: Option<&Answer>, error: Option<&Error>) -> String {
        match (answer, error) {
            (Some(Answer::Error { message, .. }), _) => {
                format!(" detail=\"{}\"", message.escape_default())
            }
            (_, Some(e)) => format!(" error=\"{}\"", e.to_string().escape_default()),
            _ => String::new(),
        }
    }

    /// Writes the line.
    fn write(&self) {
        let path = &self.target[..self
            .target
            .iter()
            .position(|b| *b == b'?')
            .unwrap_or(self.target.len())];
        let client = self
            .client
            .map_or_else(|| "-".to_string(), |ip| ip.to_string());
        let upstream = self
            .upstream
            .map_or_else(String::new, |u| format!(" upstream={u}"));
        info!(
            target: "archeio::access",
            "{} {} client={} decision={}/{} status={} duration_ms={:.3}{}{}",
            self.method.escape_ascii(),
            path.escape_ascii(),
            client,
            self.route,
            self.how,
            self.status,
            self.elapsed.as_secs_f64() * 1e3,
            upstream,
            self.detail
        );
    }
}
