//! A fault-injecting TCP proxy for the tests, between the gateway and a mirror or an
//! upstream, on 127.0.0.1: it passes bytes on, or (switched at any time, for new and open
//! connections alike) swallows them (a blackhole: connections accepted, nothing forwarded,
//! nothing answered), resets connections, or delays each piece by a round trip.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does to traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Bytes pass.
    None,
    /// Connections are accepted; nothing passes either way.
    Blackhole,
    /// Connections are reset (an RST) when opened or when they next carry bytes.
    Reset,
    /// Each piece of data waits this long before it passes (each way: a request and its
    /// answer take twice as long more).
    Delay(Duration),
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    fault: Arc<Mutex<Fault>>,
}

impl FaultProxy {
    /// A proxy to `target`, passing bytes until [`FaultProxy::set`].
    pub async fn start(target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fault = Arc::new(Mutex::new(Fault::None));
        let shared = fault.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, target, shared.clone()));
            }
        });
        FaultProxy { addr, fault }
    }

    /// `http://127.0.0.1:PORT`
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }
}

async fn relay(client: TcpStream, target: SocketAddr, fault: Arc<Mutex<Fault>>) {
    let now = || *fault.lock().unwrap();
    match now() {
        Fault::Reset => return reset(client),
        Fault::Blackhole => return swallow(client).await,
        _ => {}
    }
    let Ok(server) = TcpStream::connect(target).await else {
        return reset(client);
    };
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    // The first direction to stop decides for the connection.
    let blackholed = tokio::select! {
        b = pump(&mut cr, &mut sw, &fault) => b,
        b = pump(&mut sr, &mut cw, &fault) => b,
    };
    if blackholed {
        // Blackholed mid-connection: keep both ends open, forward nothing, until the
        // client gives up.
        let mut sink = vec![0u8; 16 * 1024];
        while matches!(cr.read(&mut sink).await, Ok(n) if n > 0) {}
        return;
    }
    if now() == Fault::Reset {
        if let Ok(client) = cr.reunite(cw) {
            reset(client);
        }
    }
}

/// Copies `from` to `to` as the fault allows; true when a blackhole stopped it (the
/// connection is to be held open, silent).
async fn pump(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    fault: &Mutex<Fault>,
) -> bool {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        let current = *fault.lock().unwrap();
        match current {
            Fault::None => {}
            Fault::Delay(d) => tokio::time::sleep(d).await,
            Fault::Blackhole => return true,
            Fault::Reset => return false,
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return false;
        }
    }
}

/// Closes with an RST rather than a FIN.
fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Reads and discards until the peer closes; never answers.
async fn swallow(mut stream: TcpStream) {
    let mut sink = vec![0u8; 16 * 1024];
    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
}
