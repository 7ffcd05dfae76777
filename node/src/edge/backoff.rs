//! Capped exponential backoff with jitter: the wait after the n-th failure in a row is drawn uniformly from
//! [d/2, d], d = min(cap, base · 2^n). The cap is a promise (issue 8: retries at most 30 s apart), so no
//! draw ever exceeds it.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// The longest wait between two attempts anywhere in Custodian's clients.
pub const RETRY_CAP: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
    rng: SmallRng,
}

impl Backoff {
    /// `cap` is clamped to `RETRY_CAP`, `base` to `cap`.
    pub fn new(base: Duration, cap: Duration, seed: u64) -> Backoff {
        let cap = cap.min(RETRY_CAP).max(Duration::from_millis(1));
        Backoff {
            base: base.clamp(Duration::from_millis(1), cap),
            cap,
            failures: 0,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// The upper bound of the next wait.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u64 << self.failures.min(30);
        self.base
            .checked_mul(factor as u32)
            .unwrap_or(self.cap)
            .min(self.cap)
    }

    /// The wait after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        let lo = d / 2;
        lo + Duration::from_nanos(self.rng.random_range(0..=(d - lo).as_nanos() as u64))
    }

    /// After a success, the next failure waits `base` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn no_wait_exceeds_the_cap_and_ceilings_grow_to_it(
            base_ms in 1u64..5_000,
            cap_ms in 1u64..120_000,
            seed in any::<u64>(),
        ) {
            let mut b = Backoff::new(Duration::from_millis(base_ms), Duration::from_millis(cap_ms), seed);
            let cap = Duration::from_millis(cap_ms).min(RETRY_CAP);
            let mut last_ceiling = Duration::ZERO;
            for _ in 0..64 {
                let c = b.ceiling();
                prop_assert!(c >= last_ceiling);
                prop_assert!(c <= cap);
                let d = b.next_delay();
                prop_assert!(d <= c && d >= c / 2);
                last_ceiling = c;
            }
            prop_assert_eq!(last_ceiling, cap);
            b.reset();
            prop_assert!(b.ceiling() <= Duration::from_millis(base_ms).max(Duration::from_millis(1)));
        }
    }

    #[test]
    fn the_same_seed_waits_the_same() {
        let mk = || Backoff::new(Duration::from_millis(200), RETRY_CAP, 7);
        let (mut a, mut b) = (mk(), mk());
        for _ in 0..20 {
            assert_eq!(a.next_delay(), b.next_delay());
        }
    }
}
