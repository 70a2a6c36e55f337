//! Slow and idle clients must not hold connections open for long. Pingora's own limits are
//! per read (a client sending a header one byte every 59 s never times out) and none at all
//! between keep-alive requests, so the registry listener adds:
//! - a deadline for a whole request header, from its first byte ([`HeaderDeadline`], a
//!   wrapper around each connection's stream that watches for the end of the header);
//! - a deadline for a new connection's first byte, waited for before Pingora sees the
//!   connection ([`first_bytes`]), which also keeps a graceful upgrade from dropping a request
//!   that arrives as the old process stops;
//! - an idle timeout between keep-alive requests and a limit on request-body reads (set on
//!   each session by the proxy glue, see [`crate::proxy`]).

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{sleep, Sleep};

/// Runs `inner` on connections wrapped in a [`DeadlineStream`].
pub struct HeaderDeadline<A> {
    inner: Arc<A>,
    first_byte: Duration,
    header: Duration,
}

impl<A> HeaderDeadline<A> {
    /// A new connection's first byte must come within `first_byte`; every request header
    /// must be complete within `header` of its first byte.
    pub fn new(inner: A, first_byte: Duration, header: Duration) -> HeaderDeadline<A> {
        HeaderDeadline {
            inner: Arc::new(inner),
            first_byte,
            header,
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
        // A kept-alive connection comes back already wrapped.
        if !stream.as_any().is::<DeadlineStream>() {
            if !first_bytes(&mut stream, self.first_byte, shutdown).await {
                return None;
            }
            stream = Box::new(DeadlineStream::new(stream, self.header));
        }
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

/// Waits for a new connection's first bytes, at most `limit`. Pingora drops a connection whose
/// request has not been read when a graceful shutdown or upgrade begins; one accepted just
/// before that moment would lose a request its client had already sent. Waiting here for the
/// bytes (and up to [`SHUTDOWN_GRACE`] more once the shutdown began) hands Pingora a request
/// it reads at once. False: close the connection quietly.
async fn first_bytes(stream: &mut Stream, limit: Duration, shutdown: &ShutdownWatch) -> bool {
    let mut byte = [0u8; 1];
    let peek = stream.try_peek(&mut byte);
    tokio::pin!(peek);
    let mut shutdown = shutdown.clone();
    let wait = if *shutdown.borrow() {
        SHUTDOWN_GRACE
    } else {
        tokio::select! {
            peeked = &mut peek => return peeked.is_ok(),
            _ = sleep(limit) => return false,
            _ = shutdown.changed() => SHUTDOWN_GRACE,
        }
    };
    matches!(tokio::time::timeout(wait, peek).await, Ok(Ok(_)))
}

/// How long a new connection may still send its request once a shutdown began.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// A connection whose request headers must arrive in time. It looks for the end of a
/// header (an empty line) in what it reads; a response written means the next bytes start
/// a new header.
pub struct DeadlineStream {
    inner: Stream,
    header: Duration,
    /// Between a response and the end of the next request header.
    in_header: bool,
    /// Running while a header deadline applies.
    timer: Option<Pin<Box<Sleep>>>,
    /// The last four bytes read, to find the empty line across reads.
    tail: u32,
}

impl DeadlineStream {
    fn new(inner: Stream, header: Duration) -> DeadlineStream {
        DeadlineStream {
            inner,
            header,
            in_header: true,
            timer: None,
            tail: 0,
        }
    }
}

/// Feeds header bytes through `tail` (the last four bytes seen); true once the empty line
/// that ends a header went by.
fn header_ends(tail: &mut u32, bytes: &[u8]) -> bool {
    for &b in bytes {
        *tail = (*tail << 8) | u32::from(b);
        // "\r\n\r\n", or "\n\n" from clients that omit the CR.
        if *tail == 0x0d0a_0d0a || *tail & 0xffff == 0x0a0a {
            return true;
        }
    }
    false
}

impl fmt::Debug for DeadlineStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadlineStream")
            .field("inner", &self.inner)
            .field("in_header", &self.in_header)
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
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            let new = &buf.filled()[before..];
            if this.in_header && !new.is_empty() {
                let started = this.tail != 0;
                if header_ends(&mut this.tail, new) {
                    this.in_header = false;
                    this.timer = None;
                } else if !started {
                    // The first byte of a header: from now on the whole header has its time.
                    this.timer = Some(Box::pin(sleep(this.header)));
                }
            }
            return result;
        }
        if let (Poll::Pending, Some(timer)) = (&result, this.timer.as_mut()) {
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(timed_out()));
            }
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
        if let Poll::Ready(Ok(n)) = result {
            if n > 0 && !this.in_header {
                // A response is going out: what the client sends next is a new header. The
                // wait for it is Pingora's keep-alive idle timeout.
                this.in_header = true;
                this.tail = 0;
            }
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = result {
            if n > 0 && !this.in_header {
                this.in_header = true;
                this.tail = 0;
            }
        }
        result
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

impl Ssl for DeadlineStream {}

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
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_of_a_header_is_found_across_reads() {
        let mut tail = 0;
        assert!(!header_ends(&mut tail, b"GET / HTTP/1.1\r\nHost: x\r"));
        assert!(!header_ends(&mut tail, b"\n"));
        assert!(header_ends(&mut tail, b"\r\n"));
        let mut tail = 0;
        assert!(!header_ends(&mut tail, b"GET / HTTP/1.0\n"));
        assert!(header_ends(&mut tail, b"\n"));
        let mut tail = 0;
        assert!(!header_ends(&mut tail, b"GET / HTTP/1.1\r\nA: \r\r\n"));
    }
}
