//! Exponential reconnect backoff with jitter.
//!
//! The nominal delay doubles from `initial` up to `max`; the actual delay is drawn uniformly from
//! the upper quarter below it (`[0.75 d, d]`), so a box whose cameras all dropped at once does not
//! reconnect them in lockstep, and the delay never exceeds `max`.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The nominal (un-jittered) delay of the next attempt.
    pub fn nominal(&self) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(20));
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The delay before the next attempt; each call moves one step up.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.nominal();
        self.attempt = self.attempt.saturating_add(1);
        let lo = d.mul_f64(0.75);
        if d <= lo {
            return d;
        }
        rand::rng().random_range(lo..=d)
    }

    /// Back to the first step (after a healthy period).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_bounded_jitter() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let nominal = [1, 2, 4, 8, 16, 30, 30, 30];
        for n in nominal {
            let d = b.next_delay();
            let n = Duration::from_secs(n);
            assert!(d <= n && d >= n.mul_f64(0.75), "{d:?} vs nominal {n:?}");
        }
        b.reset();
        assert_eq!(b.nominal(), Duration::from_secs(1));
    }

    #[test]
    fn never_overflows() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..1000 {
            assert!(b.next_delay() <= Duration::from_secs(30));
        }
    }
}
