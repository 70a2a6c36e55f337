//! Slow and idle clients cannot hold the registry listener: headers sent byte by byte,
//! connections that never send, and idle keep-alive connections are all closed after their
//! limits, while a normal client keeps being served.

mod common;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::*;

const LIMITS: &str = "  client_timeouts: {header: 1s, idle: 2s, body: 1s}";

/// Sends `bytes` one at a time every `gap` and reports when the server closed the
/// connection (`None`: still open after `give_up`).
async fn dribble(
    addr: std::net::SocketAddr,
    bytes: &'static [u8],
    gap: Duration,
    give_up: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut sent = 0;
    let mut buf = [0u8; 512];
    while started.elapsed() < give_up {
        if sent < bytes.len() && s.write_all(&bytes[sent..sent + 1]).await.is_err() {
            return Some(started.elapsed());
        }
        sent = (sent + 1).min(bytes.len());
        match tokio::time::timeout(gap, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => panic!("answered a request that was never complete"),
            Err(_) => {}
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn headers_sent_byte_by_byte_are_cut_off_and_others_still_served() {
    let gw = Gateway::start(LIMITS).await;
    let header: &'static [u8] =
        b"GET /v2/ HTTP/1.1\r\nHost: registry\r\nUser-Agent: slow-client/1.0\r\nAccept: */*\r\n";
    let slow: Vec<_> = (0..400)
        .map(|_| {
            tokio::spawn(dribble(
                gw.addr,
                header,
                Duration::from_millis(100),
                Duration::from_secs(8),
            ))
        })
        .collect();
    // While they dribble, normal requests are answered.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..20 {
        assert_eq!(gw.get("/v2/").await.status, 200);
    }
    let mut closed = Vec::new();
    for task in slow {
        closed.push(
            task.await
                .unwrap()
                .expect("a slow header was never cut off"),
        );
    }
    // The 1 s header limit, not the 8 s the clients would have gone on for (the header
    // above takes over 7 s at this pace).
    let latest = closed.iter().max().unwrap();
    assert!(*latest < Duration::from_secs(5), "{latest:?}");
    assert_eq!(gw.get("/v2/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_and_idle_keep_alive_connections_are_closed() {
    let gw = Gateway::start(LIMITS).await;
    let silent: Vec<_> = (0..200)
        .map(|_| {
            tokio::spawn(dribble(
                gw.addr,
                b"",
                Duration::from_millis(100),
                Duration::from_secs(8),
            ))
        })
        .collect();

    // One request, answered; then nothing: the keep-alive idle limit closes it.
    let started = Instant::now();
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: registry\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    let n = tokio::time::timeout(Duration::from_secs(8), s.read(&mut buf))
        .await
        .expect("idle keep-alive connection never closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "closed before the idle limit"
    );

    for task in silent {
        let closed = task
            .await
            .unwrap()
            .expect("a silent connection was never closed");
        assert!(closed < Duration::from_secs(6), "{closed:?}");
    }
    assert_eq!(gw.get("/v2/").await.status, 200);
}

/// Issue 12, item 4: in redirect mode a client that keeps sending requests and never reads
/// the answers is disconnected (once its answers back up, Pingora 0.9 reads requests ahead
/// and refuses the connection; every write also has `client_timeouts.write`).
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_reads_its_answers_is_disconnected() {
    let gw = Gateway::start("  client_timeouts: {header: 1s, idle: 2s, body: 1s, write: 1s}").await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut client = socket.connect(gw.addr).await.unwrap();
    let request = b"GET /v2/pause/manifests/latest HTTP/1.1\r\nHost: registry\r\n\r\n";
    let started = Instant::now();
    // One request at a time (each read on its own, so the server answers each), the answers
    // never read, until the connection breaks.
    let cut = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if client.write_all(request).await.is_err() {
                return started.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a client that never reads was still connected after 30 s");
    assert!(cut < Duration::from_secs(15), "{cut:?}");
    assert_eq!(gw.get("/v2/").await.status, 200);
}
