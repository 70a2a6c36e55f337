//! The per-client rate limit: a token bucket (governor's GCRA) per client address group,
//! held in a bounded cache so that a flood of distinct addresses costs bounded memory (the
//! least recently seen clients are forgotten first, and start again with a full bucket).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};

use crate::config::RateLimit;

/// Buckets by client group.
pub struct RateLimiter {
    buckets: moka::sync::Cache<(bool, u128), Arc<DefaultDirectRateLimiter>>,
    quota: Quota,
    clock: DefaultClock,
    ipv4_prefix: u8,
    ipv6_prefix: u8,
}

impl RateLimiter {
    /// A limiter with `cfg`'s rate, burst, grouping and bound.
    pub fn new(cfg: &RateLimit) -> RateLimiter {
        let rate = NonZeroU32::new(cfg.per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(cfg.burst).unwrap_or(NonZeroU32::MIN);
        RateLimiter {
            buckets: moka::sync::Cache::builder()
                .max_capacity(cfg.max_clients)
                // A bucket idle this long is full again anyway.
                .time_to_idle(Duration::from_secs(
                    u64::from(cfg.burst / cfg.per_second.max(1)) + 1,
                ))
                .build(),
            quota: Quota::per_second(rate).allow_burst(burst),
            clock: DefaultClock::default(),
            ipv4_prefix: cfg.ipv4_prefix,
            ipv6_prefix: cfg.ipv6_prefix,
        }
    }

    /// Takes a token for `client`: `Err` with how long until the next one when it has none.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        let key = self.group(client);
        let bucket = self.buckets.get_with(key, || {
            Arc::new(DefaultDirectRateLimiter::direct(self.quota))
        });
        bucket
            .check()
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// The address with its host bits cleared: one bucket per `/32` or `/64` by default.
    fn group(&self, client: IpAddr) -> (bool, u128) {
        let client = match client {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        match client {
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
        let l = limiter(10, 10, 1000);
        for i in 0..50_000u32 {
            let _ = l.check(IpAddr::V4(i.into()));
        }
        l.buckets.run_pending_tasks();
        assert!(
            l.buckets.entry_count() <= 1000,
            "{}",
            l.buckets.entry_count()
        );
    }
}
