//! The per-client rate limit: a token bucket (governor's GCRA) per client address group,
//! held in a bounded table so that a flood of distinct addresses costs bounded memory. The
//! table is least-recently-used: when full, the client seen longest ago is forgotten (and
//! starts again with a full bucket), so a client sending now always keeps its bucket as long
//! as fewer than `max_clients` other clients arrive between two of its requests. (An
//! admission policy by frequency, such as moka's, would instead turn a new abusive client
//! away from a table full of regular ones, and start it with a full bucket every time.)

use std::net::IpAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};
use lru::LruCache;

use crate::config::RateLimit;
use crate::routing::client_addr::canonical;

/// A client group: IPv6 or not, and the address with its host bits cleared.
type Group = (bool, u128);

/// Buckets by client group.
pub struct RateLimiter {
    /// The table in shards by the group's hash, each an LRU of its share of the bound: one
    /// lock per request, rarely the same one on two cores. Small tables are one shard,
    /// so that the least recently seen client is exactly the one forgotten.
    shards: Box<[Mutex<LruCache<Group, DefaultDirectRateLimiter>>]>,
    quota: Quota,
    clock: DefaultClock,
    ipv4_prefix: u8,
    ipv6_prefix: u8,
}

/// Clients per shard below which the table is not split.
const SHARD_MIN: u64 = 4096;
/// Most shards.
const SHARDS: u64 = 16;

impl RateLimiter {
    /// A limiter with `cfg`'s rate, burst, grouping and bound.
    pub fn new(cfg: &RateLimit) -> RateLimiter {
        let rate = NonZeroU32::new(cfg.per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(cfg.burst).unwrap_or(NonZeroU32::MIN);
        let shards = (cfg.max_clients / SHARD_MIN).clamp(1, SHARDS);
        let per_shard = usize::try_from(cfg.max_clients.div_ceil(shards)).unwrap_or(usize::MAX);
        let per_shard = NonZeroUsize::new(per_shard).unwrap_or(NonZeroUsize::MIN);
        RateLimiter {
            shards: (0..shards)
                .map(|_| Mutex::new(LruCache::new(per_shard)))
                .collect(),
            quota: Quota::per_second(rate).allow_burst(burst),
            clock: DefaultClock::default(),
            ipv4_prefix: cfg.ipv4_prefix,
            ipv6_prefix: cfg.ipv6_prefix,
        }
    }

    /// Takes a token for `client`: `Err` with how long until the next one when it has none.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        let group = self.group(client);
        let shard = &self.shards[shard_of(group, self.shards.len())];
        let mut table = shard.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = table.get_or_insert(group, || DefaultDirectRateLimiter::direct(self.quota));
        bucket
            .check()
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Clients tracked.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// The address with its host bits cleared: one bucket per `/32` or `/64` by default.
    fn group(&self, client: IpAddr) -> Group {
        match canonical(client) {
            IpAddr::V4(v4) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.ipv4_prefix))
                    .unwrap_or(0);
                (false, u128::from(u32::from(v4) & mask))
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.ipv6_prefix))
                    .unwrap_or(0);
                (true, u128::from(v6) & mask)
            }
        }
    }
}

/// The shard of `group` among `n`: the group's bits folded and mixed (Fibonacci hashing),
/// so that neighbouring networks spread.
fn shard_of(group: Group, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let folded = (group.1 as u64) ^ ((group.1 >> 64) as u64) ^ u64::from(group.0);
    (folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize % n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: u32, burst: u32, max_clients: u64) -> RateLimiter {
        RateLimiter::new(&RateLimit {
            per_second,
            burst,
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            max_clients,
        })
    }

    #[test]
    fn a_burst_passes_then_the_client_waits() {
        let l = limiter(1, 3, 100);
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        for _ in 0..3 {
            assert!(l.check(ip).is_ok());
        }
        let wait = l.check(ip).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(l.check("203.0.113.8".parse().unwrap()).is_ok());
    }

    #[test]
    fn ipv6_clients_are_grouped_by_their_64() {
        let l = limiter(1, 1, 100);
        assert!(l.check("2001:db8:1:2::1".parse().unwrap()).is_ok());
        assert!(l.check("2001:db8:1:2::ffff".parse().unwrap()).is_err());
        assert!(l.check("2001:db8:1:3::1".parse().unwrap()).is_ok());
        // An IPv4-mapped address is its IPv4 client.
        assert!(l.check("198.51.100.1".parse().unwrap()).is_ok());
        assert!(l.check("::ffff:198.51.100.1".parse().unwrap()).is_err());
    }

    #[test]
    fn a_flood_of_distinct_addresses_stays_within_the_bound() {
        for max in [1000, 100_000] {
            let l = limiter(10, 10, max);
            for i in 0..200_000u32 {
                let _ = l.check(IpAddr::V4(i.into()));
            }
            assert!(l.len() as u64 <= max + SHARDS, "{max}: {}", l.len());
        }
    }

    /// Issue 23, defect 4: a table full of regular clients (each seen many times) must not
    /// turn away a new abusive client, nor forget it while it keeps sending.
    #[test]
    fn an_active_client_keeps_its_bucket_when_the_table_is_full() {
        let l = limiter(1, 5, 20);
        for _ in 0..16 {
            for i in 0..20u32 {
                let _ = l.check(IpAddr::V4((0x0a00_0000 + i).into()));
            }
        }
        let abuser: IpAddr = "192.0.2.9".parse().unwrap();
        let mut limited = 0;
        for i in 0..40u32 {
            limited += usize::from(l.check(abuser).is_err());
            // And a client never seen before after each of its requests.
            let _ = l.check(IpAddr::V4((0x0b00_0000 + i).into()));
        }
        assert!(limited >= 34, "{limited} of 40");
    }
}
