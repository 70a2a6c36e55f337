//! Slow and idle clients must not hold connections open for long. Pingora's own limits are
//! per read (a client sending a header one byte every 59 s never times out) and none at all
//! between keep-alive requests, so the registry listener adds:
//! - a deadline for a whole request header, from its first byte ([`HeaderDeadline`], a
//!   wrapper around each connection's stream that watches for the end of the header; empty
//!   lines before a request line count as part of the header, as the parser skips them);
//! - the gateway's own answer to request lines the HTTP parser would rewrite or refuse
//!   without calling the proxy ([`crate::routing::refuse_request_line`]): the wrapper sees
//!   the raw line, holds it back, writes the answer and ends the connection;
//! - a deadline for a new connection's first byte, waited for before Pingora sees the
//!   connection (`first_bytes`), which also keeps a graceful upgrade from dropping a request
//!   that arrives as the old process stops;
//! - on the listeners that expect one, the PROXY protocol header of a trusted load balancer,
//!   read after the first bytes and before Pingora (`super::proxy_protocol`);
//! - an idle timeout between keep-alive requests and a limit on request-body reads (set on
//!   each session by the proxy glue, see `gateway::request`).

use std::fmt;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::{SslDigest, TlsRef, ALPN};
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use pingora_core::server::ShutdownWatch;
use pingora_proxy::Session;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::time::{sleep, sleep_until, Sleep};

use super::access_log::record_refused;
use super::proxy_protocol::ProxyProtocol;
use super::responses::error_response_bytes;
use crate::metrics;
use crate::routing::client_addr::canonical;
use crate::routing::{refuse_request_line, Reply, MAX_TARGET_LEN};

/// What the registry listener asks of each new connection. A configuration reload
/// replaces it whole; a connection keeps the rules it was accepted under.
#[derive(Debug, Clone)]
pub struct ConnectionRules {
    /// A new connection's first byte must come within this.
    pub first_byte: Duration,
    /// Every request header must be complete within this of its first byte.
    pub header: Duration,
    /// Every write must make progress within this.
    pub write: Duration,
    /// The listeners whose connections start with a PROXY protocol header, and whom to
    /// take it from.
    pub proxy_protocol: ProxyProtocol,
}

/// Runs `inner` on connections wrapped in a [`DeadlineStream`].
pub struct HeaderDeadline<A> {
    inner: Arc<A>,
    rules: Arc<ArcSwap<ConnectionRules>>,
}

impl<A> HeaderDeadline<A> {
    /// Each new connection under the `rules` current when it is accepted.
    pub fn new(inner: A, rules: Arc<ArcSwap<ConnectionRules>>) -> HeaderDeadline<A> {
        HeaderDeadline {
            inner: Arc::new(inner),
            rules,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for HeaderDeadline<A> {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // A kept-alive HTTP/1 connection comes back already wrapped.
        if stream.as_any().is::<DeadlineStream>() {
            return self.inner.process_new(stream, shutdown).await;
        }
        // A TLS connection is counted once, by the protocol agreed.
        let alpn = stream
            .get_ssl_digest()
            .map(|_| stream.selected_alpn_proto());
        if let Some(alpn) = &alpn {
            metrics::record_tls_handshake(match alpn {
                Some(ALPN::H2) => "h2",
                Some(ALPN::H1) => "http/1.1",
                _ => "none",
            });
        }
        let rules = self.rules.load_full();
        let first = first_bytes(&mut stream, rules.first_byte, shutdown).await?;
        let digest = stream.get_socket_digest();
        let local = digest
            .as_ref()
            .and_then(|d| d.local_addr()?.as_inet().copied());
        let mut wrapped = DeadlineStream::new(stream, rules.header, rules.write);
        wrapped.pending = first;
        if alpn == Some(Some(ALPN::H2)) {
            // The header scan and its deadline are HTTP/1's; HTTP/2 frames its headers and
            // has its own limits (Pingora's idle timeout, the stream and header limits).
            wrapped.scan_headers = false;
            wrapped.in_header = false;
        } else if rules.proxy_protocol.expects(local) {
            let peer = digest.and_then(|d| d.peer_addr()?.as_inet().map(|a| a.ip()));
            // A refused connection is counted and logged there, and closed unanswered.
            let proxied = rules
                .proxy_protocol
                .read(&mut wrapped.inner, peer, rules.header)
                .await
                .ok()?;
            wrapped.proxied = proxied.source;
            wrapped.pending = proxied.rest;
        }
        self.inner.process_new(Box::new(wrapped), shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

/// Waits for a new connection's first bytes, at most `limit`. Pingora drops a connection whose
/// request has not been read when a graceful shutdown or upgrade begins; one accepted just
/// before that moment would lose a request its client had already sent. Waiting here for the
/// bytes (and up to [`SHUTDOWN_GRACE`] more once the shutdown began) hands Pingora a request
/// it reads at once. It is also the only limit on a TLS connection that never sends a
/// request: Pingora waits for the first HTTP/1 request and for the HTTP/2 preface without
/// one. `None`: close the connection quietly; otherwise the bytes read, to be replayed.
async fn first_bytes(
    stream: &mut Stream,
    limit: Duration,
    shutdown: &ShutdownWatch,
) -> Option<Bytes> {
    let first = first_read(stream);
    tokio::pin!(first);
    let mut shutdown = shutdown.clone();
    let wait = if *shutdown.borrow() {
        SHUTDOWN_GRACE
    } else {
        tokio::select! {
            read = &mut first => return read,
            _ = sleep(limit) => return None,
            _ = shutdown.changed() => SHUTDOWN_GRACE,
        }
    };
    tokio::time::timeout(wait, first).await.ok().flatten()
}

/// A connection's first bytes: peeked where the stream can (nothing consumed, none
/// returned), else (TLS) read, to be replayed to the parser.
async fn first_read(stream: &mut Stream) -> Option<Bytes> {
    let mut byte = [0u8; 1];
    match stream.try_peek(&mut byte).await {
        Ok(true) => Some(Bytes::new()),
        Ok(false) => {
            let mut buf = vec![0u8; 4096];
            match stream.read(&mut buf).await {
                Ok(n) if n > 0 => {
                    buf.truncate(n);
                    Some(buf.into())
                }
                _ => None,
            }
        }
        Err(_) => None,
    }
}

/// How long a new connection may still send its request once a shutdown began.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// A connection whose request headers must arrive in time and whose request lines are
/// checked before Pingora parses them. A response written means the next bytes start a new
/// header.
pub struct DeadlineStream {
    inner: Stream,
    header: Duration,
    /// Longest a write may wait for the client to take bytes. Pingora limits body writes
    /// only; a response header written to a client that stopped reading would wait forever.
    write: Duration,
    /// Running while a write waits.
    write_timer: Option<Pin<Box<Sleep>>>,
    /// Between a response and the end of the next request header.
    in_header: bool,
    /// HTTP/1: request headers are scanned and held to their deadline (not HTTP/2's).
    scan_headers: bool,
    /// Running while a header deadline applies.
    timer: Option<Pin<Box<Sleep>>>,
    /// The header being read.
    head: HeadScan,
    /// An answer being written instead of passing a refused request on.
    refusal: Option<Refusal>,
    /// The deadline of the request being proxied, set by the proxy glue; Pingora reads the
    /// connection while it proxies, so a read that waits past it ends the request.
    request_deadline: Mutex<Option<Instant>>,
    /// Running while a request deadline applies.
    request_timer: Option<Pin<Box<Sleep>>>,
    /// The client a PROXY protocol header named.
    proxied: Option<IpAddr>,
    /// Bytes read with the PROXY header that belong to the first request.
    pending: Bytes,
}

/// Follows request headers byte by byte: skips the empty lines before a request line, checks
/// the line, finds the empty line that ends the header.
#[derive(Debug)]
struct HeadScan {
    scan: Scan,
    /// The last four bytes of the header read, to find the empty line across reads.
    tail: u32,
    /// The request line so far (bounded), while [`Scan::Line`].
    line: Vec<u8>,
    /// Request lines are checked only while each read starts a request: bytes read past a
    /// header's end (pipelining) would leave Pingora holding the start of the next one.
    gate: bool,
}

/// Progress through one request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// Before the request line: the parser skips empty lines.
    Start,
    /// In the request line.
    Line,
    /// In the header fields.
    Fields,
}

/// The gateway's answer to a refused request line, and what is left to write.
struct Refusal {
    bytes: Bytes,
    written: usize,
}

/// Longest request line checked: a target of [`MAX_TARGET_LEN`] with a method and version.
const MAX_LINE: usize = MAX_TARGET_LEN + 64;

impl DeadlineStream {
    fn new(inner: Stream, header: Duration, write: Duration) -> DeadlineStream {
        DeadlineStream {
            inner,
            header,
            write,
            write_timer: None,
            in_header: true,
            scan_headers: true,
            timer: None,
            head: HeadScan::new(),
            refusal: None,
            request_deadline: Mutex::new(None),
            request_timer: None,
            proxied: None,
            pending: Bytes::new(),
        }
    }

    /// Ends the request being proxied at `deadline` (`None`: no deadline).
    pub fn set_request_deadline(&self, deadline: Option<Instant>) {
        *self
            .request_deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = deadline;
    }

    /// Whether the request deadline passed; polls its timer.
    fn request_deadline_passed(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = *self
            .request_deadline
            .get_mut()
            .unwrap_or_else(|e| e.into_inner());
        match deadline {
            None => {
                self.request_timer = None;
                false
            }
            Some(at) => {
                let at = at.into();
                let timer = self
                    .request_timer
                    .get_or_insert_with(|| Box::pin(sleep_until(at)));
                if timer.deadline() != at {
                    timer.as_mut().reset(at);
                }
                timer.as_mut().poll(cx).is_ready()
            }
        }
    }

    /// Logs the refusal of the request line `line` and queues its answer.
    fn refuse(&mut self, line: &[u8], reply: &Reply) {
        let head = line.starts_with(b"HEAD ");
        let peer = self.proxied.or_else(|| {
            let digest = self.inner.get_socket_digest()?;
            Some(canonical(digest.peer_addr()?.as_inet()?.ip()))
        });
        let mut parts = line.split(|b| *b == b' ');
        let method = parts.next().unwrap_or_default();
        let target = parts.next().unwrap_or_default();
        record_refused(method, target, peer, reply);
        self.refusal = Some(Refusal {
            bytes: error_response_bytes(reply, head),
            written: 0,
        });
    }

    /// `result` of a write, or an error once writes have waited `self.write`.
    fn write_deadline<T>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if result.is_ready() {
            self.write_timer = None;
            return result;
        }
        let write = self.write;
        let timer = self
            .write_timer
            .get_or_insert_with(|| Box::pin(sleep(write)));
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "client did not take the answer in time (archeio.client_timeouts.write)",
            )));
        }
        Poll::Pending
    }

    /// A write's `result` under the write deadline. Bytes going out are a response: what the
    /// client sends next is a new header (the wait for it is Pingora's keep-alive idle
    /// timeout).
    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        let result = self.write_deadline(cx, result);
        if self.scan_headers && matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.in_header = true;
        }
        result
    }

    /// Writes the refusal's answer; `Ready` once all of it is out (or the client is gone).
    fn poll_refusal(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(refusal) = &mut self.refusal else {
            return Poll::Ready(());
        };
        while refusal.written < refusal.bytes.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &refusal.bytes[refusal.written..]) {
                Poll::Ready(Ok(n)) if n > 0 => refusal.written += n,
                Poll::Ready(_) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => Poll::Ready(()),
        }
    }
}

impl HeadScan {
    fn new() -> HeadScan {
        HeadScan {
            scan: Scan::Start,
            tail: 0,
            line: Vec::new(),
            gate: true,
        }
    }

    /// Scans header bytes; `Some(n)`: the header ended after `n` of them. `Err`: the request
    /// line (in `self.line`) is refused with this answer. Line ends are found with `memchr`:
    /// this runs on every read of every request.
    fn scan(&mut self, bytes: &[u8]) -> Result<Option<usize>, Reply> {
        let mut i = 0;
        while i < bytes.len() {
            let rest = &bytes[i..];
            match self.scan {
                Scan::Start => match rest.iter().position(|&b| b != b'\r' && b != b'\n') {
                    None => return Ok(None),
                    Some(k) => {
                        i += k;
                        self.scan = Scan::Line;
                        self.line.clear();
                    }
                },
                Scan::Line => {
                    let end = memchr::memchr(b'\n', rest);
                    let part = &rest[..end.unwrap_or(rest.len())];
                    // One byte over the limit marks a line too long to check.
                    let room = (MAX_LINE + 1).saturating_sub(self.line.len());
                    self.line.extend_from_slice(&part[..part.len().min(room)]);
                    let Some(end) = end else {
                        return Ok(None);
                    };
                    i += end + 1;
                    if self.gate && self.line.len() <= MAX_LINE {
                        if let Some(reply) = refuse_request_line(&self.line) {
                            return Err(reply);
                        }
                    }
                    self.scan = Scan::Fields;
                    // The line's own end counts towards the empty line that ends the header.
                    self.tail = if self.line.last() == Some(&b'\r') {
                        0x0d0a
                    } else {
                        0x0a
                    };
                }
                Scan::Fields => {
                    for j in memchr::memchr_iter(b'\n', rest) {
                        if ends_empty_line(self.tail, &rest[..j]) {
                            self.scan = Scan::Start;
                            self.line.clear();
                            return Ok(Some(i + j + 1));
                        }
                    }
                    for &b in &rest[rest.len().saturating_sub(4)..] {
                        self.tail = (self.tail << 8) | u32::from(b);
                    }
                    return Ok(None);
                }
            }
        }
        Ok(None)
    }
}

/// Whether a `\n` that follows `before` (this read's bytes before it, and `tail`, the last
/// four bytes of earlier reads) ends an empty line: `\r\n\r\n`, or `\n\n` from clients that
/// omit the CR.
fn ends_empty_line(tail: u32, before: &[u8]) -> bool {
    let back = |k: usize| -> u8 {
        match before.len().checked_sub(k) {
            Some(at) => before[at],
            None => (tail >> (8 * (k - before.len() - 1))) as u8,
        }
    };
    back(1) == b'\n' || (back(1) == b'\r' && back(2) == b'\n' && back(3) == b'\r')
}

impl fmt::Debug for DeadlineStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadlineStream")
            .field("inner", &self.inner)
            .field("in_header", &self.in_header)
            .field("head", &self.head)
            .finish()
    }
}

fn timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "request header not received in time (archeio.client_timeouts)",
    )
}

impl AsyncRead for DeadlineStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.refusal.is_some() {
            // Pingora sees the end of the stream once the answer is out.
            return this.poll_refusal(cx).map(Ok);
        }
        let before = buf.filled().len();
        let result = if this.pending.is_empty() {
            Pin::new(&mut this.inner).poll_read(cx, buf)
        } else {
            let n = this.pending.len().min(buf.remaining());
            buf.put_slice(&this.pending.split_to(n));
            Poll::Ready(Ok(()))
        };
        if let Poll::Ready(Ok(())) = result {
            let filled = buf.filled().len();
            if this.in_header && filled > before {
                let new = &buf.filled()[before..];
                match this.head.scan(new) {
                    Ok(Some(n)) => {
                        this.in_header = false;
                        this.timer = None;
                        if n < new.len() {
                            this.head.gate = false;
                        }
                    }
                    // A header that came whole in one read, the usual case, needs no timer;
                    // one that did not has its time from this first read on.
                    Ok(None) if this.timer.is_none() => {
                        this.timer = Some(Box::pin(sleep(this.header)));
                    }
                    Ok(None) => {}
                    Err(reply) => {
                        // Held back: Pingora never parses the refused request.
                        buf.set_filled(before);
                        let line = std::mem::take(&mut this.head.line);
                        this.refuse(&line, &reply);
                        return this.poll_refusal(cx).map(Ok);
                    }
                }
            } else if filled > before {
                // Bytes while a request is in flight: a pipelined request or a body.
                this.head.gate = false;
            }
            return result;
        }
        if let (Poll::Pending, Some(timer)) = (&result, this.timer.as_mut()) {
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(timed_out()));
            }
        }
        if result.is_pending() && this.request_deadline_passed(cx) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "upstream response not complete in time (archeio.upstream.timeouts.total)",
            )));
        }
        result
    }
}

impl AsyncWrite for DeadlineStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(cx, result)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_flush(cx);
        this.write_deadline(cx, result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.poll_refusal(cx).is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for DeadlineStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for DeadlineStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for DeadlineStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for DeadlineStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
}

impl GetProxyDigest for DeadlineStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for DeadlineStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl Peek for DeadlineStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        if !self.pending.is_empty() {
            // What comes next is held here, not in the socket.
            return Ok(false);
        }
        self.inner.try_peek(buf).await
    }
}

/// The client a PROXY protocol header named for the session's connection.
pub fn proxied_source(session: &Session) -> Option<IpAddr> {
    session
        .as_downstream()
        .stream()
        .and_then(|s| s.as_any().downcast_ref::<DeadlineStream>())
        .and_then(|s| s.proxied)
}

/// Sets (or clears) the deadline of the request on the client's connection.
pub fn set_request_deadline(session: &Session, deadline: Option<Instant>) {
    if let Some(stream) = session
        .as_downstream()
        .stream()
        .and_then(|s| s.as_any().downcast_ref::<DeadlineStream>())
    {
        stream.set_request_deadline(deadline);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12, item 3: empty lines before the request line do not end the header.
    #[test]
    fn leading_empty_lines_are_not_the_end_of_a_header() {
        let mut s = HeadScan::new();
        assert_eq!(s.scan(b"\r\n\r\n\n\n"), Ok(None));
        assert_eq!(s.scan(b"GET /v2/ HTTP/1.1\r\nHost: x\r"), Ok(None));
        assert_eq!(s.scan(b"\n\r\nGET"), Ok(Some(3)));
        let mut s = HeadScan::new();
        assert_eq!(s.scan(b"GET /v2/ HTTP/1.0\n\n"), Ok(Some(19)));
        assert_eq!(s.scan(b"GET /v2/ HTTP/1.1\r\n\r\n"), Ok(Some(21)));
        assert!(s.scan(b"GET /v2/a b HTTP/1.1\r\n").is_err());
    }

    #[test]
    fn the_end_of_a_header_is_found_across_reads() {
        let mut s = HeadScan::new();
        assert_eq!(s.scan(b"GET / HTTP/1.1\r\nHost: x\r"), Ok(None));
        assert_eq!(s.scan(b"\n"), Ok(None));
        assert_eq!(s.scan(b"\r"), Ok(None));
        assert_eq!(s.scan(b"\nGET"), Ok(Some(1)));
        let mut s = HeadScan::new();
        assert_eq!(s.scan(b"GET / HTTP/1.0\n"), Ok(None));
        assert_eq!(s.scan(b"\n"), Ok(Some(1)));
        let mut s = HeadScan::new();
        assert_eq!(s.scan(b"GET / HTTP/1.1\r\nA: \r\r\n"), Ok(None));
        assert_eq!(s.scan(b"B: c\n\r\n"), Ok(None));
        assert_eq!(s.scan(b"\n"), Ok(Some(1)));
    }

    /// Split anywhere, a header ends where it ends in one piece.
    #[test]
    fn every_split_of_a_header_finds_the_same_end() {
        let whole: &[u8] = b"\r\nGET /v2/ HTTP/1.1\r\nHost: x\r\nA: \r\n\r\nGET /v2/ HTTP/1.1\r\n";
        for a in 0..whole.len() {
            for b in a..whole.len() {
                let mut s = HeadScan::new();
                let mut at = None;
                let mut offset = 0;
                for piece in [&whole[..a], &whole[a..b], &whole[b..]] {
                    if at.is_none() {
                        at = s.scan(piece).unwrap().map(|n| offset + n);
                    }
                    offset += piece.len();
                }
                assert_eq!(at, Some(37), "split at {a} and {b}");
            }
        }
    }
}
