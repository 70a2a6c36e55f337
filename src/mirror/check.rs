//! Does a mirror hold a blob? A `HEAD` of the blob's URL, where only `200` means yes, with
//! the answers cached (bounded, separate lifetimes for yes and no) and one `HEAD` in flight
//! per URL however many requests wait for it (quick_cache's placeholder guards). The mirror host's breaker is asked first, so
//! a failing host gets no clients even for blobs cached as present. Redirects are not
//! followed: the client would be sent to the first URL, not to where the `HEAD` ended.

use std::future::Future;
use std::time::{Duration, Instant};

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use log::{error, info, warn};
use prometheus::IntCounter;
use quick_cache::sync::Cache;
use xxhash_rust::xxh3::xxh3_128_with_seed;

use super::breaker::{host_of, Breakers, Permit};
use crate::config::{BlobCheck, MirrorProbe};
use crate::logging::error_chain;
use crate::metrics;

/// How a check was answered; a metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// From the cache (or from a `HEAD` another request had in flight).
    CacheHit,
    /// `HEAD` answered `200`.
    Present,
    /// `HEAD` answered another status below 500 (a redirect included).
    Absent,
    /// `HEAD` failed (timeout, connection, TLS) or answered a 5xx.
    Error,
    /// A private mirror answered its signed `HEAD` with `401` or `403`: the gateway's
    /// credentials are wrong, expired or revoked (not a missing blob, which a private bucket
    /// answers `404`).
    Refused,
    /// Not checked: the mirror host's breaker is open, or it is slow and a later mirror
    /// of the chain is not.
    Skipped,
}

impl Outcome {
    /// Every outcome, in declaration order.
    pub const ALL: [Outcome; 6] = [
        Outcome::CacheHit,
        Outcome::Present,
        Outcome::Absent,
        Outcome::Error,
        Outcome::Refused,
        Outcome::Skipped,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::CacheHit => "cache_hit",
            Outcome::Present => "present",
            Outcome::Absent => "absent",
            Outcome::Error => "error",
            Outcome::Refused => "refused",
            Outcome::Skipped => "skipped",
        }
    }
}

/// One mirror's check counters, by outcome.
pub struct Counters(Vec<IntCounter>);

impl Counters {
    /// The series of the mirror named `mirror`, each at 0 until counted.
    pub fn for_mirror(mirror: &str) -> Counters {
        Counters(metrics::blob_check_counters(
            mirror,
            &Outcome::ALL.map(Outcome::as_str),
        ))
    }

    /// Counts one check of the mirror by how it went.
    pub fn count(&self, outcome: Outcome) {
        self.0[outcome as usize].inc();
    }
}

/// Whether a mirror's requests are signed: only then is a `401`/`403` about the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone may read it; a `403` is a missing object in a bucket that hides its listing.
    Public,
    /// Presigned with the gateway's credentials.
    Signed,
}

/// A mirror holds the blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// Its size, from the `HEAD`'s `Content-Length`, when the mirror sent one.
    pub size: Option<u64>,
}

/// A cached answer: whether the mirror holds the blob (and its size), and until when that
/// holds.
#[derive(Debug, Clone, Copy)]
struct Answer {
    held: Option<Held>,
    /// Milliseconds since the check was made ([`MirrorCheck::epoch`]).
    expires_ms: u64,
}

/// The mirror check with its cache.
///
/// The cache is keyed by a seeded 128-bit hash of the URL rather than the URL itself: an
/// entry then costs a fraction of the memory (blob URLs are over 100 bytes), and with a
/// per-process random seed a collision is neither likely (about 2^-100 for 100,000 entries)
/// nor something a client can aim for. quick_cache keeps about 53 bytes per entry (moka,
/// with its per-entry expiry and LRU nodes, about 300), and its eviction admits the new
/// blobs that keep arriving; an entry's lifetime is kept in the entry and checked on reading.
pub struct MirrorCheck {
    client: reqwest::Client,
    cache: Cache<u128, Answer>,
    epoch: Instant,
    hit_ttl_ms: u64,
    miss_ttl_ms: u64,
    seed: u64,
    breakers: Breakers,
    /// When each host's last refusal was logged: once per miss lifetime.
    refusals_logged: Mutex<HashMap<String, Instant>>,
    /// The health checks of the hosts in use, when on.
    probe: Option<Probe>,
}

/// The gateway's own health checks of mirror hosts.
struct Probe {
    settings: MirrorProbe,
    client: reqwest::Client,
    /// Unhealthy checks in a row, per host.
    failing: Mutex<HashMap<String, u32>>,
    /// Hosts whose last check answered, but slower than `slow_after`.
    degraded: Mutex<HashSet<String>>,
    /// Whether any host is degraded: requests look no further when none is.
    any_degraded: AtomicBool,
}

impl MirrorCheck {
    /// A check with the configured timeout, lifetimes and capacity.
    pub fn new(cfg: &BlobCheck) -> Result<MirrorCheck, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .user_agent(concat!("archeio/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let capacity = usize::try_from(cfg.capacity).unwrap_or(usize::MAX).max(1);
        let seed = std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), 0u8);
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Ok(MirrorCheck {
            client,
            cache: Cache::new(capacity),
            epoch: Instant::now(),
            hit_ttl_ms: ms(cfg.hit_ttl),
            miss_ttl_ms: ms(cfg.miss_ttl),
            seed,
            breakers: Breakers::new(
                cfg.breaker_failures,
                cfg.breaker_cool_down,
                Box::new(metrics::set_mirror_breaker),
            ),
            refusals_logged: Mutex::new(HashMap::new()),
            probe: match cfg.probe {
                Some(settings) => Some(Probe {
                    settings,
                    client: reqwest::Client::builder()
                        .timeout(settings.timeout)
                        .connect_timeout(settings.timeout)
                        .user_agent(concat!("archeio/", env!("CARGO_PKG_VERSION")))
                        .redirect(reqwest::redirect::Policy::none())
                        .build()?,
                    failing: Mutex::new(HashMap::new()),
                    degraded: Mutex::new(HashSet::new()),
                    any_degraded: AtomicBool::new(false),
                }),
                None => None,
            },
        })
    }

    /// Whether any host's last health check answered slower than `slow_after`: when none
    /// did, the request path looks no further.
    pub fn any_degraded(&self) -> bool {
        self.probe
            .as_ref()
            .is_some_and(|p| p.any_degraded.load(Ordering::Relaxed))
    }

    /// Whether `host`'s last health check answered slower than `slow_after`.
    pub fn degraded(&self, host: &str) -> bool {
        self.probe.as_ref().is_some_and(|p| {
            p.any_degraded.load(Ordering::Relaxed)
                && p.degraded
                    .lock()
                    .expect("lock is never poisoned")
                    .contains(host)
        })
    }

    /// Whether `host` is skipped now (its breaker open): asks without taking a probe's turn.
    pub fn skipped(&self, host: &str) -> bool {
        self.breakers.is_open(host, Instant::now())
    }

    fn note_latency(&self, probe: &Probe, host: &str, took: Duration) {
        let mut degraded = probe.degraded.lock().expect("lock is never poisoned");
        if took > probe.settings.slow_after {
            if degraded.insert(host.to_string()) {
                warn!(
                    "mirror {host} is slow (its health check took {took:?}, over \
                     blob_check.probe.slow_after): skipped while a later mirror of the chain \
                     is not"
                );
            }
        } else if degraded.remove(host) {
            info!("mirror {host} answers its health check in {took:?} again: in use again");
        }
        probe
            .any_degraded
            .store(!degraded.is_empty(), Ordering::Relaxed);
    }

    /// Time between two health checks of a host; `None`: they are off.
    pub fn probe_interval(&self) -> Option<Duration> {
        self.probe.as_ref().map(|p| p.settings.interval)
    }

    /// One health check of `host` with a `HEAD` of `url` (of an object no mirror holds):
    /// any answer below 500 in time is healthy. Unhealthy ones in a row open the host's
    /// breaker and keep it open; a healthy one closes what they opened.
    pub async fn probe(&self, host: &str, url: Result<String, String>) {
        let Some(probe) = &self.probe else {
            return;
        };
        let started = Instant::now();
        let unhealthy = match url {
            Err(e) => {
                // Not the host's fault: nothing is recorded.
                warn!("health check of mirror {host}: cannot sign the HEAD: {e}");
                return;
            }
            Ok(url) => match probe.client.head(&url).send().await {
                Ok(resp) if resp.status().as_u16() < 500 => {
                    self.note_latency(probe, host, started.elapsed());
                    None
                }
                Ok(resp) => Some(format!("answered {}", resp.status())),
                Err(e) if e.is_timeout() => Some(format!(
                    "no answer within {:?} (blob_check.probe.timeout)",
                    probe.settings.timeout
                )),
                Err(e) => Some(error_chain(&e)),
            },
        };
        metrics::record_mirror_probe(host, unhealthy.is_none());
        let now = Instant::now();
        let mut failing = probe.failing.lock().expect("lock is never poisoned");
        match unhealthy {
            None => {
                // Only a breaker these checks opened is theirs to close: one that failed
                // blob checks opened keeps its own cool-down.
                let opened_it = failing
                    .remove(host)
                    .is_some_and(|n| n >= probe.settings.failures);
                if opened_it && self.breakers.reset(host) {
                    info!("mirror {host} passes its health check again: in use again");
                }
            }
            Some(why) => {
                let count = failing.entry(host.to_string()).or_insert(0);
                *count += 1;
                if *count >= probe.settings.failures && self.breakers.trip(host, now) {
                    warn!(
                        "mirror {host} fails its health checks ({why}): skipped (its clients \
                         go to the next mirror of their rule's chain, else the upstream) until \
                         one passes"
                    );
                }
            }
        }
    }

    /// Whether the public mirror holds the blob at `url`; how that was found out goes to
    /// `counters`. `traceparent` goes with the `HEAD`, when one is sent.
    pub async fn check(
        &self,
        url: &str,
        counters: &Counters,
        traceparent: Option<&str>,
    ) -> Option<Held> {
        self.check_via(
            url,
            host_of(url),
            Access::Public,
            counters,
            traceparent,
            || async { Ok(url.to_string()) },
        )
        .await
    }

    /// Whether the mirror holds the blob known as `name` (its unsigned URL: the cache key,
    /// and what logs say), asking the breaker of `host` first, with a `HEAD` of the URL
    /// `head_url` makes (a presigned one for a private mirror), made only when the answer is
    /// not cached.
    pub async fn check_via<F, U>(
        &self,
        name: &str,
        host: &str,
        access: Access,
        counters: &Counters,
        traceparent: Option<&str>,
        head_url: F,
    ) -> Option<Held>
    where
        F: FnOnce() -> U,
        U: Future<Output = Result<String, String>>,
    {
        let permit = self.breakers.permit(host, Instant::now());
        if permit == Permit::Skip {
            // Not cached: the answer is about the host, not the blob.
            counters.count(Outcome::Skipped);
            return None;
        }
        let key = xxh3_128_with_seed(name.as_bytes(), self.seed);
        let guard = loop {
            // An answer another request's HEAD is finding is waited for here.
            match self.cache.get_value_or_guard_async(&key).await {
                Ok(answer) if answer.expires_ms > self.now_ms() => {
                    if permit == Permit::Probe {
                        self.breakers.abandon_probe(host, Instant::now());
                    }
                    counters.count(Outcome::CacheHit);
                    return answer.held;
                }
                Ok(_) => {
                    let now = self.now_ms();
                    self.cache.remove_if(&key, |a| a.expires_ms <= now);
                }
                Err(guard) => break guard,
            }
        };
        let (held, outcome) = match head_url().await {
            Ok(url) => {
                let (held, o, healthy) = self.head(&url, name, host, access, traceparent).await;
                if let Outcome::Refused = o {
                    // No blob will be readable with these credentials: out at once, as if
                    // the breaker had opened, and not cached, so that new credentials are
                    // tried as soon as the breaker lets a probe through.
                    self.breakers.trip(host, Instant::now());
                    counters.count(o);
                    return None;
                }
                self.breakers.record(host, healthy, Instant::now());
                (held, o)
            }
            Err(e) => {
                // Not the host's fault: the breaker is left alone.
                warn!("mirror check of {name}: cannot sign the HEAD: {e}");
                (None, Outcome::Error)
            }
        };
        let ttl = if held.is_some() {
            self.hit_ttl_ms
        } else {
            self.miss_ttl_ms
        };
        let expires_ms = self.now_ms().saturating_add(ttl);
        // Err: the entry was removed meanwhile; the answer still stands for this request.
        let _ = guard.insert(Answer { held, expires_ms });
        counters.count(outcome);
        held
    }

    /// Remembers that the mirror's copy of the blob known as `name` is not the blob (its
    /// bytes did not hash to the digest): the mirror counts as not holding it for as long as
    /// a holding answer would have lasted.
    pub fn mark_corrupt(&self, name: &str) {
        let key = xxh3_128_with_seed(name.as_bytes(), self.seed);
        let expires_ms = self.now_ms().saturating_add(self.hit_ttl_ms);
        self.cache.insert(
            key,
            Answer {
                held: None,
                expires_ms,
            },
        );
    }

    /// Closes `host`'s breaker: its credentials changed, so it deserves a new try.
    pub fn reset(&self, host: &str) {
        self.breakers.reset(host);
        self.refusals_logged
            .lock()
            .expect("lock is never poisoned")
            .remove(host);
    }

    /// A refusal is logged at error once per host and miss lifetime: it does not heal by
    /// itself, and every request until the credentials are fixed would repeat it.
    fn log_refusal(&self, host: &str, name: &str, status: reqwest::StatusCode) {
        let now = Instant::now();
        let mut logged = self.refusals_logged.lock().expect("lock is never poisoned");
        let quiet = Duration::from_millis(self.miss_ttl_ms.max(1000));
        if logged
            .get(host)
            .is_some_and(|t| now.duration_since(*t) < quiet)
        {
            return;
        }
        logged.insert(host.to_string(), now);
        drop(logged);
        error!(
            "private mirror {host} refused the gateway's signed request (HEAD {name} answered \
             {status}): its credentials are wrong, expired or lack read access; its blobs go \
             to the next mirror or the upstream until it accepts them"
        );
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The answer (with the size the mirror gave), how it was found, and whether the host
    /// answered sanely (for the breaker).
    /// Logs name the blob by `name`: a presigned `url` is a credential.
    async fn head(
        &self,
        url: &str,
        name: &str,
        host: &str,
        access: Access,
        traceparent: Option<&str>,
    ) -> (Option<Held>, Outcome, bool) {
        let started = Instant::now();
        let mut request = self.client.head(url);
        if let Some(value) = traceparent {
            request = request.header("traceparent", value);
        }
        let result = request.send().await;
        metrics::MIRROR_HEAD_SECONDS.observe(started.elapsed().as_secs_f64());
        match result {
            Ok(resp) if resp.status() == reqwest::StatusCode::OK => {
                // From the header: reqwest's content_length() is the empty body of a HEAD.
                let size = resp
                    .headers()
                    .get(http::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok());
                (Some(Held { size }), Outcome::Present, true)
            }
            Ok(resp) if access == Access::Signed && matches!(resp.status().as_u16(), 401 | 403) => {
                self.log_refusal(host, name, resp.status());
                (None, Outcome::Refused, false)
            }
            Ok(resp) if resp.status().is_server_error() => {
                warn!("mirror check HEAD {name} answered {}", resp.status());
                (None, Outcome::Error, false)
            }
            Ok(resp) if resp.status().is_redirection() => {
                // Answered, so the host is healthy; where it points is not checked.
                warn!(
                    "mirror check HEAD {name} answered {} (a redirect): counted as absent",
                    resp.status()
                );
                (None, Outcome::Absent, true)
            }
            Ok(_) => (None, Outcome::Absent, true),
            Err(e) => {
                // reqwest's message holds the URL, and a presigned one is a credential.
                let e = e.without_url();
                warn!("mirror check HEAD {name} failed: {}", error_chain(&e));
                (None, Outcome::Error, false)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A mirror on loopback that answers every request `200`, one request per connection,
    /// counting them; aborting the task closes the port.
    async fn mirror(heads: Arc<AtomicUsize>) -> (String, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf).await;
                heads.fetch_add(1, Ordering::SeqCst);
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
            }
        });
        (base, task)
    }

    fn check(cool_down: Duration) -> MirrorCheck {
        MirrorCheck::new(&BlobCheck {
            timeout: Duration::from_secs(5),
            hit_ttl: Duration::from_secs(3600),
            miss_ttl: Duration::from_secs(3600),
            capacity: 100,
            breaker_failures: 1,
            breaker_cool_down: cool_down,
            probe: None,
            repository_ttl: Duration::from_secs(600),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn an_open_breaker_wins_over_a_cached_present_answer() {
        let heads = Arc::new(AtomicUsize::new(0));
        let (base, server) = mirror(heads.clone()).await;
        let c = check(Duration::from_millis(300));
        let counters = Counters::for_mirror("test");
        let cached = format!("{base}/blob/a");
        assert!(
            c.check(&cached, &counters, None).await.is_some(),
            "the mirror holds it"
        );
        assert!(
            c.check(&cached, &counters, None).await.is_some(),
            "now from the cache"
        );
        assert_eq!(heads.load(Ordering::SeqCst), 1, "one HEAD for both");

        // The mirror goes away: a check of another blob fails and opens the breaker.
        server.abort();
        let _ = server.await;
        assert!(c
            .check(&format!("{base}/blob/b"), &counters, None)
            .await
            .is_none());
        assert!(
            c.check(&cached, &counters, None).await.is_none(),
            "an open breaker overrides the cached present answer"
        );

        // After the cool-down a request may probe; one answered from the cache hands the
        // probe on rather than spending it, so the next uncached check is the probe: it fails
        // and the breaker opens again, over the cached answer too.
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(
            c.check(&cached, &counters, None).await.is_some(),
            "the probe's turn, answered from the cache"
        );
        assert!(
            c.check(&format!("{base}/blob/c"), &counters, None)
                .await
                .is_none(),
            "the probe fails"
        );
        assert!(
            c.check(&cached, &counters, None).await.is_none(),
            "open again"
        );
        assert_eq!(heads.load(Ordering::SeqCst), 1);
    }
}
