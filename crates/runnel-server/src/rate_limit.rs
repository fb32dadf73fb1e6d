//! The per-environment rate limit (contract §1.5), applied by the `/api` guard
//! (`guard.rs`).
//!
//! Rate limiting is **off unless configured** (`runnel serve --rate-limit 750/250/10s`).
//! When on, each environment has a token bucket: it starts full with `max` tokens, gains
//! `refill` tokens (capped at `max`) at the end of every `interval`, and each request
//! takes one. The worker protocol and a few upstream-exempt paths are not limited. A limited response carries `x-ratelimit-limit`,
//! `x-ratelimit-remaining` and `x-ratelimit-reset` (unix ms of the next refill); an
//! empty bucket answers 429 with the §1.5 problem body. The caller is identified by the
//! same `auth::identify` as the handlers (a secret key or a public token, both keyed by
//! their environment) and the result is handed on in the request's extensions. A request
//! whose credentials do not check out is passed on unlimited: its handler refuses it.
//!
//! Buckets live in this process: a deployment of N nodes behind a balancer admits up to
//! N times the configured rate. The map holds one bucket per environment that passed
//! authentication, so it stays as small as the number of environments.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, HeaderValue};
use runnel_core::duration::parse_duration_secs;

/// Upstream's self-host defaults: a bucket of 750, refilled by 250 every 10 s.
pub const RATE_LIMIT_MAX_DEFAULT: u32 = 750;
pub const RATE_LIMIT_REFILL_DEFAULT: u32 = 250;
pub const RATE_LIMIT_INTERVAL_MS_DEFAULT: i64 = 10_000;

/// A bucket's size and refill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub max: u32,
    pub refill: u32,
    pub interval_ms: i64,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            max: RATE_LIMIT_MAX_DEFAULT,
            refill: RATE_LIMIT_REFILL_DEFAULT,
            interval_ms: RATE_LIMIT_INTERVAL_MS_DEFAULT,
        }
    }
}

/// A malformed `MAX/REFILL/INTERVAL`.
#[derive(Debug, thiserror::Error)]
#[error("expected MAX/REFILL/INTERVAL with positive numbers, e.g. 750/250/10s (got {0:?})")]
pub struct InvalidRateLimit(String);

impl FromStr for RateLimit {
    type Err = InvalidRateLimit;

    /// `750/250/10s`: bucket size, tokens added per interval, interval (a duration like
    /// `10s`, `1m`, or whole seconds).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidRateLimit(s.to_owned());
        let mut parts = s.split('/');
        let (Some(max), Some(refill), Some(interval), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid());
        };
        let positive = |v: &str| v.trim().parse::<u32>().ok().filter(|n| *n > 0);
        let interval = interval.trim();
        let interval_secs = interval
            .parse::<u64>()
            .ok()
            .or_else(|| parse_duration_secs(interval))
            .filter(|secs| *secs > 0 && *secs <= 86_400)
            .ok_or_else(invalid)?;
        Ok(RateLimit {
            max: positive(max).ok_or_else(invalid)?,
            refill: positive(refill).ok_or_else(invalid)?,
            interval_ms: i64::try_from(interval_secs).map_err(|_| invalid())? * 1000,
        })
    }
}

/// What one request got from its bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Unix ms of the next refill.
    pub reset_ms: i64,
}

impl Decision {
    pub(crate) fn write_headers(&self, headers: &mut HeaderMap) {
        headers.insert("x-ratelimit-limit", HeaderValue::from(self.limit));
        headers.insert("x-ratelimit-remaining", HeaderValue::from(self.remaining));
        headers.insert("x-ratelimit-reset", HeaderValue::from(self.reset_ms));
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: u32,
    /// The end of the last interval whose refill has been added.
    refilled_at_ms: i64,
}

/// Token buckets keyed by environment id, shared by the clones of the app state.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    limit: RateLimit,
    buckets: Arc<Mutex<HashMap<String, Bucket>>>,
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> Self {
        RateLimiter {
            limit,
            buckets: Arc::default(),
        }
    }

    /// Takes one token from `key`'s bucket at `now_ms`, if it has one.
    pub fn take(&self, key: &str, now_ms: i64) -> Decision {
        let RateLimit {
            max,
            refill,
            interval_ms,
        } = self.limit;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: max,
            refilled_at_ms: now_ms,
        });
        // A clock that stepped back refills nothing.
        let intervals = (now_ms - bucket.refilled_at_ms).max(0) / interval_ms;
        if intervals > 0 {
            let added = u64::try_from(intervals)
                .unwrap_or(u64::MAX)
                .saturating_mul(u64::from(refill));
            bucket.tokens = u64::from(bucket.tokens)
                .saturating_add(added)
                .min(u64::from(max)) as u32;
            bucket.refilled_at_ms += intervals * interval_ms;
        }
        let allowed = bucket.tokens > 0;
        if allowed {
            bucket.tokens -= 1;
        }
        Decision {
            allowed,
            limit: max,
            remaining: bucket.tokens,
            reset_ms: bucket.refilled_at_ms + interval_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(max: u32, refill: u32, interval_ms: i64) -> RateLimiter {
        RateLimiter::new(RateLimit {
            max,
            refill,
            interval_ms,
        })
    }

    #[test]
    fn a_full_bucket_admits_max_requests_then_refuses_until_the_refill() {
        let limiter = limiter(3, 2, 1000);
        let t0 = 1_000_000;
        let taken: Vec<_> = (0..4).map(|i| limiter.take("env", t0 + i)).collect();
        assert_eq!(
            taken
                .iter()
                .map(|d| (d.allowed, d.remaining))
                .collect::<Vec<_>>(),
            [(true, 2), (true, 1), (true, 0), (false, 0)]
        );
        assert!(taken
            .iter()
            .all(|d| d.limit == 3 && d.reset_ms == t0 + 1000));
        // Just before the interval ends: still empty.
        assert!(!limiter.take("env", t0 + 999).allowed);
        // The refill adds 2, the next reset is one interval later.
        assert_eq!(
            limiter.take("env", t0 + 1000),
            Decision {
                allowed: true,
                limit: 3,
                remaining: 1,
                reset_ms: t0 + 2000
            }
        );
    }

    #[test]
    fn refills_accumulate_over_idle_intervals_up_to_max() {
        let limiter = limiter(5, 2, 1000);
        for i in 0..5 {
            assert!(limiter.take("env", i).allowed);
        }
        // Two intervals: +4.
        assert_eq!(limiter.take("env", 2500).remaining, 3);
        // A long idle time fills the bucket to max only.
        let later = limiter.take("env", 1_000_000);
        assert_eq!((later.allowed, later.remaining), (true, 4));
        assert_eq!(later.reset_ms, 1_001_000);
    }

    #[test]
    fn each_environment_has_its_own_bucket() {
        let limiter = limiter(1, 1, 1000);
        assert!(limiter.take("a", 0).allowed);
        assert!(!limiter.take("a", 1).allowed);
        assert!(limiter.take("b", 1).allowed);
    }

    #[test]
    fn a_clock_stepping_back_refills_nothing() {
        let limiter = limiter(1, 1, 1000);
        assert!(limiter.take("a", 10_000).allowed);
        assert!(!limiter.take("a", 5_000).allowed);
    }

    #[test]
    fn rate_limit_parses_max_refill_interval() {
        assert_eq!(
            "750/250/10s".parse::<RateLimit>().unwrap(),
            RateLimit::default()
        );
        assert_eq!(
            "3/1/60".parse::<RateLimit>().unwrap(),
            RateLimit {
                max: 3,
                refill: 1,
                interval_ms: 60_000
            }
        );
        assert_eq!(
            "2/1/1h".parse::<RateLimit>().unwrap().interval_ms,
            3_600_000
        );
        for bad in [
            "", "750", "750/250", "0/1/1s", "1/0/1s", "1/1/0s", "1/1/x", "1/1/1s/1", "-1/1/1s",
        ] {
            assert!(bad.parse::<RateLimit>().is_err(), "{bad:?}");
        }
    }
}
