//! Retry policy and backoff (contract §4.2).
//!
//! The delay before attempt *n + 1* is `min(max, r × min × factor^(n − 1))`, with `r`
//! drawn from `[1, 2)` when `randomize` is on (else 1), rounded to whole milliseconds.
//! There is no next attempt once `n` reaches `max_attempts`.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::trigger::MAX_ATTEMPTS_CAP;

/// The longest retry delay a policy may ask for (30 days, in ms): a delay is added to a
/// date, and one near `u64::MAX` ms would overflow it.
pub const MAX_TIMEOUT_MS: u64 = 30 * 86_400_000;

/// How a task's failed attempts are retried. Every field is optional on the wire; a
/// missing one takes the library default ([`RetryPolicy::default`]).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RetryPolicy {
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 250))]
    pub max_attempts: u32,
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub factor: f64,
    /// At most `maxTimeoutInMs`.
    #[cfg_attr(feature = "openapi", schema(maximum = 2_592_000_000_u64))]
    pub min_timeout_in_ms: u64,
    #[cfg_attr(feature = "openapi", schema(maximum = 2_592_000_000_u64))]
    pub max_timeout_in_ms: u64,
    pub randomize: bool,
}

impl Default for RetryPolicy {
    /// `defaultRetryOptions`: 3 attempts, factor 2, 1 s to 60 s, randomized.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            factor: 2.0,
            min_timeout_in_ms: 1_000,
            max_timeout_in_ms: 60_000,
            randomize: true,
        }
    }
}

/// Why a retry policy was refused at registration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPolicy {
    #[error("retry.maxAttempts must be between 1 and {MAX_ATTEMPTS_CAP}")]
    MaxAttempts,
    #[error("retry.factor must be a finite number of at least 1")]
    Factor,
    #[error("retry.minTimeoutInMs must not exceed retry.maxTimeoutInMs")]
    Timeouts,
    #[error("retry.maxTimeoutInMs must be at most {MAX_TIMEOUT_MS} (30 days)")]
    TimeoutTooLong,
}

impl RetryPolicy {
    pub fn validate(&self) -> Result<(), InvalidPolicy> {
        if self.max_attempts == 0 || self.max_attempts > MAX_ATTEMPTS_CAP {
            return Err(InvalidPolicy::MaxAttempts);
        }
        if !self.factor.is_finite() || self.factor < 1.0 {
            return Err(InvalidPolicy::Factor);
        }
        if self.min_timeout_in_ms > self.max_timeout_in_ms {
            return Err(InvalidPolicy::Timeouts);
        }
        if self.max_timeout_in_ms > MAX_TIMEOUT_MS {
            return Err(InvalidPolicy::TimeoutTooLong);
        }
        Ok(())
    }

    /// The delay in milliseconds before the attempt after attempt `attempt` (1-based),
    /// or `None` when `attempt` was the last one allowed by `max_attempts`.
    /// `max_attempts` is the effective limit (a trigger's `maxAttempts` overrides the
    /// policy's); it is capped at 250.
    pub fn next_delay_ms(
        &self,
        attempt: u32,
        max_attempts: u32,
        rng: &mut impl Rng,
    ) -> Option<u64> {
        if attempt == 0 || attempt >= max_attempts.min(MAX_ATTEMPTS_CAP) {
            return None;
        }
        let r = if self.randomize {
            rng.random_range(1.0..2.0)
        } else {
            1.0
        };
        let exponent = i32::try_from(attempt - 1).unwrap_or(i32::MAX);
        let raw = r * self.min_timeout_in_ms as f64 * self.factor.powi(exponent);
        let capped = raw.min(self.max_timeout_in_ms as f64);
        Some(capped.round().max(0.0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn fixed() -> RetryPolicy {
        RetryPolicy {
            randomize: false,
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn default_policy_doubles_from_one_second() {
        let mut rng = StdRng::seed_from_u64(1);
        let p = fixed();
        assert_eq!(p.next_delay_ms(1, 3, &mut rng), Some(1_000));
        assert_eq!(p.next_delay_ms(2, 3, &mut rng), Some(2_000));
        assert_eq!(p.next_delay_ms(3, 3, &mut rng), None);
        assert_eq!(p.next_delay_ms(6, 10, &mut rng), Some(32_000));
        assert_eq!(p.next_delay_ms(7, 10, &mut rng), Some(60_000), "capped");
    }

    #[test]
    fn one_attempt_means_no_retry() {
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(fixed().next_delay_ms(1, 1, &mut rng), None);
        assert_eq!(fixed().next_delay_ms(0, 5, &mut rng), None);
    }

    #[test]
    fn attempts_are_capped_at_250() {
        let mut rng = StdRng::seed_from_u64(1);
        assert!(fixed().next_delay_ms(249, u32::MAX, &mut rng).is_some());
        assert_eq!(fixed().next_delay_ms(250, u32::MAX, &mut rng), None);
    }

    #[test]
    fn validation() {
        assert!(RetryPolicy::default().validate().is_ok());
        let bad = |f: fn(&mut RetryPolicy)| {
            let mut p = RetryPolicy::default();
            f(&mut p);
            p.validate().unwrap_err()
        };
        assert_eq!(bad(|p| p.max_attempts = 0), InvalidPolicy::MaxAttempts);
        assert_eq!(bad(|p| p.max_attempts = 251), InvalidPolicy::MaxAttempts);
        assert_eq!(bad(|p| p.factor = 0.5), InvalidPolicy::Factor);
        assert_eq!(bad(|p| p.factor = f64::NAN), InvalidPolicy::Factor);
        assert_eq!(
            bad(|p| p.min_timeout_in_ms = 70_000),
            InvalidPolicy::Timeouts
        );
        assert_eq!(
            bad(|p| p.max_timeout_in_ms = MAX_TIMEOUT_MS + 1),
            InvalidPolicy::TimeoutTooLong
        );
        let longest = RetryPolicy {
            max_timeout_in_ms: MAX_TIMEOUT_MS,
            ..RetryPolicy::default()
        };
        assert!(longest.validate().is_ok());
    }

    #[test]
    fn missing_fields_take_defaults() {
        let p: RetryPolicy = serde_json::from_str(r#"{"maxAttempts": 5}"#).unwrap();
        assert_eq!(p.max_attempts, 5);
        assert_eq!(p.min_timeout_in_ms, 1_000);
        assert!(p.randomize);
    }

    proptest! {
        #[test]
        fn delay_stays_within_bounds(
            attempt in 1u32..60,
            max_attempts in 1u32..300,
            factor in 1.0f64..4.0,
            min in 0u64..10_000,
            extra in 0u64..100_000,
            randomize: bool,
            seed: u64,
        ) {
            let p = RetryPolicy { max_attempts, factor, min_timeout_in_ms: min, max_timeout_in_ms: min + extra, randomize };
            let mut rng = StdRng::seed_from_u64(seed);
            match p.next_delay_ms(attempt, max_attempts, &mut rng) {
                None => prop_assert!(attempt >= max_attempts.min(250)),
                Some(d) => {
                    prop_assert!(attempt < max_attempts.min(250));
                    prop_assert!(d <= p.max_timeout_in_ms);
                    let floor = (min as f64 * factor.powi(attempt as i32 - 1)).min(p.max_timeout_in_ms as f64);
                    prop_assert!(d as f64 >= floor.floor(), "{d} < {floor}");
                    if !randomize {
                        prop_assert_eq!(d as f64, floor.round());
                    } else {
                        prop_assert!((d as f64) <= (2.0 * floor).min(p.max_timeout_in_ms as f64).ceil());
                    }
                }
            }
        }

        #[test]
        fn delays_never_shrink_without_jitter(attempt in 1u32..40, factor in 1.0f64..3.0, min in 1u64..5_000) {
            let p = RetryPolicy { max_attempts: 250, factor, min_timeout_in_ms: min, max_timeout_in_ms: 600_000, randomize: false };
            let mut rng = StdRng::seed_from_u64(0);
            let a = p.next_delay_ms(attempt, 250, &mut rng).unwrap();
            let b = p.next_delay_ms(attempt + 1, 250, &mut rng).unwrap();
            prop_assert!(b >= a);
        }
    }
}
