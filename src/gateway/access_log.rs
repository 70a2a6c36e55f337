//! The access record (`archeio::access`, level info) and the request metrics, written once
//! per request when it ends; also for request lines refused before Pingora parsed them.
//! A record is a `key=value` line, or a JSON object with `log_format: json`.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use log::{info, log_enabled, Level};
use pingora_core::Error;
use pingora_proxy::Session;
use serde_json::{Map, Value};

use super::headers::trace_id;
use super::{Gateway, RequestCtx};
use crate::logging::{self, push_quoted, ACCESS_TARGET};
use crate::metrics;
use crate::routing::geo::{Code, GeoFacts};
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
    /// The request is over: counts it, and logs it.
    pub(super) fn finish(&self, session: &Session, error: Option<&Error>, ctx: &RequestCtx) {
        let elapsed = ctx.started.elapsed();
        let reply = ctx.reply.as_ref();
        let status = reply
            .and_then(|r| r.answer.status())
            .or_else(|| session.response_written().map(|r| r.status.as_u16()))
            .unwrap_or(0);
        if let Some(reply) = reply {
            metrics::record_request(reply.route, status, elapsed.as_secs_f64());
            if let (Route::ClientAddress, Some(e)) = (reply.route, ctx.client_error) {
                metrics::CLIENT_ADDRESS_REFUSALS
                    .with_label_values(&[e.reason()])
                    .inc();
            }
            if let Answer::Redirect { target, .. } = &reply.answer {
                let mirror = match target {
                    Target::Mirror(name) => Some(&**name),
                    _ => None,
                };
                metrics::record_redirect(target, mirror);
            }
            if reply.route == Route::Blob && session.req_header().method == http::Method::GET {
                count_blob_bytes(&reply.answer, ctx);
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
        let upstream = match ctx.upstream.endpoint {
            Some(i) if !ctx.upstream.from_cache => Some(self.upstream.endpoints.label(i)),
            _ => None,
        };
        let req = session.req_header();
        let peer = ctx.peer;
        let client = ctx.client.or(peer);
        let ranges = self.places.ranges.load();
        let placement = client.and_then(|ip| ranges.lookup(ip));
        let geo = self.places.geo.load();
        let facts = client.filter(|_| !geo.is_empty()).map(|ip| geo.lookup(ip));
        let header = |name: &str| req.headers.get(name).map(|v| v.as_bytes());
        AccessEntry {
            method: req.method.as_str().as_bytes(),
            target: req.raw_path(),
            client,
            peer,
            placement: placement.map(|p| (&*p.provider, &*p.region)),
            geo: facts,
            route: reply.map_or("error", |r| r.route.as_str()),
            how,
            rule: ctx
                .rule
                .and_then(|i| self.routes.policy.rules.get(i))
                .map(|r| &*r.name),
            status,
            location: match reply.map(|r| &r.answer) {
                Some(Answer::Redirect { location, .. }) => Some(location.as_str()),
                _ => None,
            },
            elapsed,
            upstream,
            user_agent: header("user-agent"),
            protocol: Some(match req.version {
                http::Version::HTTP_2 => "h2",
                http::Version::HTTP_10 => "http/1.0",
                _ => "http/1.1",
            }),
            trace_id: header("traceparent").and_then(trace_id),
            detail: AccessEntry::detail(reply.map(|r| &r.answer), error),
        }
        .write();
    }
}

/// Counts a blob answer's bytes against where they came from: a redirect by the size the
/// check learnt (the client may still not fetch it), a proxied answer by the bytes that
/// arrived to be streamed.
fn count_blob_bytes(answer: &Answer, ctx: &RequestCtx) {
    let (target, delivery, size) = match answer {
        Answer::Redirect { target, .. } => (Some(target), "redirect", ctx.blob.size),
        Answer::ProxyMirror { target, .. } => (Some(target), "proxy", Some(ctx.blob.streamed)),
        Answer::Proxy { .. } => (None, "proxy", Some(ctx.blob.streamed)),
        _ => return,
    };
    let (source, mirror) = match target.and_then(Target::mirror_name) {
        Some(name) => ("mirror", name),
        None => ("upstream", ""),
    };
    match size {
        Some(bytes) => metrics::BLOB_BYTES
            .with_label_values(&[source, mirror, delivery])
            .inc_by(bytes),
        None => metrics::BLOB_SIZE_UNKNOWN
            .with_label_values(&[source, delivery])
            .inc(),
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
        peer: client,
        placement: None,
        geo: None,
        route: reply.route.as_str(),
        how: "-",
        rule: None,
        status,
        location: None,
        elapsed: Duration::ZERO,
        upstream: None,
        user_agent: None,
        protocol: None,
        trace_id: None,
        detail: AccessEntry::detail(Some(&reply.answer), None),
    }
    .write();
}

/// One access record (`archeio::access`, level info).
struct AccessEntry<'a> {
    /// The method as sent.
    method: &'a [u8],
    /// The request target; the query is left out of the log.
    target: &'a [u8],
    /// The client address routing uses: the socket peer, or what trusted proxies said.
    client: Option<IpAddr>,
    /// The socket peer (a load balancer, often).
    peer: Option<IpAddr>,
    /// The client's provider and region, when its address is in the range table.
    placement: Option<(&'a str, &'a str)>,
    /// The client's country, continent and network, when geo databases are loaded.
    geo: Option<GeoFacts>,
    /// The rule that answered ([`Route::as_str`]), or `error`.
    route: &'a str,
    /// Where the answer came from: a redirect target kind, `proxy`, `cache`, `stale`, or `-`.
    how: &'a str,
    /// The policy rule that decided, by name.
    rule: Option<&'a str>,
    /// The status sent (the upstream's, when proxied); 0 when none was.
    status: u16,
    /// Where a redirect sent the client.
    location: Option<&'a str>,
    /// Time from the request to the answer.
    elapsed: Duration,
    /// The upstream endpoint's label, when one was asked.
    upstream: Option<&'a str>,
    /// The client's `User-Agent`.
    user_agent: Option<&'a [u8]>,
    /// The HTTP version the client spoke: `http/1.1`, `h2`, `http/1.0`.
    protocol: Option<&'static str>,
    /// The W3C trace id the client sent.
    trace_id: Option<&'a str>,
    /// `("detail", why)` for an error the gateway decided, `("error", what failed)` when
    /// something failed.
    detail: Option<(&'static str, String)>,
}

impl<'a> AccessEntry<'a> {
    fn detail(answer: Option<&Answer>, error: Option<&Error>) -> Option<(&'static str, String)> {
        match (answer, error) {
            (Some(Answer::Error { message, .. }), _) => Some(("detail", message.to_string())),
            (_, Some(e)) => Some(("error", e.to_string())),
            _ => None,
        }
    }

    /// The fields in the order the text line has them; the path without its query, a
    /// `Location` without its query (a private mirror's is a signed URL), client addresses
    /// only when the operator keeps them.
    fn fields(&self) -> Vec<(&'static str, Field<'_>)> {
        let addresses = logging::client_addresses();
        let ip = |ip: Option<IpAddr>| match ip {
            Some(ip) if addresses => Field::Ip(ip),
            _ => Field::Absent,
        };
        let text = |t: Option<&'a str>| t.map_or(Field::Absent, |t| Field::Text(t.into()));
        let word = |t: Option<&'a str>| t.map_or(Field::Absent, Field::Word);
        let bytes = |b: Option<&'a [u8]>| {
            b.map_or(Field::Absent, |b| Field::Text(String::from_utf8_lossy(b)))
        };
        let location = self.location.map(|l| &l[..l.find('?').unwrap_or(l.len())]);
        let mut fields = Vec::with_capacity(16);
        fields.extend([
            ("client", ip(self.client)),
            ("route", Field::Word(self.route)),
            ("destination", Field::Word(self.how)),
            ("status", Field::Status(self.status)),
            ("duration_ms", Field::Millis(self.elapsed)),
            ("peer", ip(self.peer)),
            ("provider", word(self.placement.map(|p| p.0))),
            (
                "region",
                text(self.placement.map(|p| p.1).filter(|r| !r.is_empty())),
            ),
            (
                "country",
                code(self.geo.as_ref().and_then(|g| g.country.as_ref())),
            ),
            (
                "continent",
                code(self.geo.as_ref().and_then(|g| g.continent.as_ref())),
            ),
            (
                "asn",
                self.geo
                    .and_then(|g| g.asn)
                    .map_or(Field::Absent, Field::Number),
            ),
            ("rule", text(self.rule)),
            ("location", text(location)),
            ("upstream", word(self.upstream)),
            ("user_agent", bytes(self.user_agent)),
            ("protocol", word(self.protocol)),
            ("request_id", Field::Id(logging::request_id())),
            ("trace_id", text(self.trace_id)),
        ]);
        if let Some((key, why)) = &self.detail {
            fields.push((key, Field::Text(why.as_str().into())));
        }
        fields
    }

    /// Writes the record. A line is built in one buffer, without a string per field: a
    /// record is written for every request.
    fn write(&self) {
        let path = &self.target[..self
            .target
            .iter()
            .position(|b| *b == b'?')
            .unwrap_or(self.target.len())];
        let fields = self.fields();
        if logging::json() {
            let mut record = Map::new();
            record.insert(
                "method".into(),
                Value::from(String::from_utf8_lossy(self.method)),
            );
            record.insert("path".into(), Value::from(String::from_utf8_lossy(path)));
            for (key, field) in fields {
                let value = match field {
                    Field::Absent => continue,
                    Field::Ip(ip) => Value::from(ip.to_string()),
                    Field::Status(n) => Value::from(n),
                    Field::Number(n) => Value::from(n),
                    Field::Millis(d) => {
                        let ms = d.as_secs_f64() * 1e3;
                        if ms.fract() == 0.0 {
                            Value::from(ms as u64)
                        } else {
                            Value::from((ms * 1e3).round() / 1e3)
                        }
                    }
                    Field::Id(id) => Value::from(format!("{id:016x}")),
                    Field::Word(t) => Value::from(t),
                    Field::Text(t) => Value::from(t),
                };
                record.insert(key.into(), value);
            }
            info!(target: ACCESS_TARGET, "{}", Value::Object(record));
            return;
        }
        // The leading fields keep the order earlier releases wrote, for existing parsers.
        let mut line = String::with_capacity(256);
        push_escaped(&mut line, self.method);
        line.push(' ');
        push_escaped(&mut line, path);
        for (key, field) in fields {
            // An unknown client is written as `-`; other absent fields are left out.
            if matches!(field, Field::Absent) && key != "client" {
                continue;
            }
            match key {
                "route" => line.push_str(" decision="),
                // The destination joins the route: `decision=route/destination`.
                "destination" => line.push('/'),
                _ => {
                    line.push(' ');
                    line.push_str(key);
                    line.push('=');
                }
            }
            push_value(&mut line, field);
        }
        info!(target: ACCESS_TARGET, "{line}");
    }
}

/// A field's value in a text line. Writing to a `String` cannot fail.
fn push_value(line: &mut String, field: Field<'_>) {
    match field {
        Field::Absent => line.push('-'),
        Field::Ip(IpAddr::V4(ip)) => push_ipv4(line, ip),
        Field::Ip(ip) => {
            let _ = write!(line, "{ip}");
        }
        Field::Status(n) => {
            let _ = write!(line, "{n}");
        }
        Field::Number(n) => {
            let _ = write!(line, "{n}");
        }
        Field::Millis(d) => {
            let micros = (d.as_nanos() + 500) / 1000;
            let _ = write!(line, "{}.{:03}", micros / 1000, micros % 1000);
        }
        Field::Id(id) => {
            let _ = write!(line, "{id:016x}");
        }
        Field::Word(t) => line.push_str(t),
        Field::Text(t) => push_quoted(line, &t),
    }
}

/// `bytes` as `escape_ascii` writes them; as they are when nothing needs escaping, the usual
/// case.
fn push_escaped(line: &mut String, bytes: &[u8]) {
    let plain = |b: &u8| (0x20..0x7f).contains(b) && !matches!(b, b'\\' | b'\'' | b'"');
    match std::str::from_utf8(bytes) {
        Ok(text) if bytes.iter().all(plain) => line.push_str(text),
        _ => {
            let _ = write!(line, "{}", bytes.escape_ascii());
        }
    }
}

/// An IPv4 address in dotted decimal, without the formatting machinery.
fn push_ipv4(line: &mut String, ip: Ipv4Addr) {
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            line.push('.');
        }
        if octet >= 100 {
            line.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            line.push(char::from(b'0' + octet / 10 % 10));
        }
        line.push(char::from(b'0' + octet % 10));
    }
}

/// A value of the record, borrowed from the request where it can be.
enum Field<'a> {
    /// Not known, or left out.
    Absent,
    /// An address.
    Ip(IpAddr),
    /// An HTTP status.
    Status(u16),
    /// A duration, in milliseconds with three decimals.
    Millis(Duration),
    /// An id, as 16 hex digits.
    Id(u64),
    /// A number (an AS number).
    Number(u32),
    /// A token that needs no quotes (a route, a provider).
    Word(&'a str),
    /// Free text: quoted in a line.
    Text(Cow<'a, str>),
}

/// A country or continent code as a field.
fn code(c: Option<&Code>) -> Field<'_> {
    c.map_or(Field::Absent, |c| Field::Word(c.as_str()))
}
