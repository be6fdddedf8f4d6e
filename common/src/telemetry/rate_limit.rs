//! Rate-limited logging for errors that can repeat every step or every heartbeat (a
//! coordinator that is down, a peer that keeps sending garbage): the first occurrence is
//! logged, then at most one line per interval, carrying how many were suppressed in between.
//! Nothing is lost from the counts; only repeated lines are.

use std::time::{Duration, Instant};

/// One kind of message's limiter.
#[derive(Debug, Clone)]
pub struct RateLimit {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    /// At most one line per `every`.
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// Whether to log an occurrence at `now`: `Some(n)` with the `n` occurrences suppressed
    /// since the last logged one, or `None` to stay quiet (it is counted).
    pub fn check(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_is_logged_then_one_per_interval_with_the_suppressed_count() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut r = RateLimit::new(Duration::from_secs(5));
        assert_eq!(r.check(t0), Some(0));
        assert_eq!(r.check(t0 + s), None);
        assert_eq!(r.check(t0 + 4 * s), None);
        assert_eq!(r.check(t0 + 5 * s), Some(2));
        assert_eq!(r.check(t0 + 6 * s), None);
        assert_eq!(r.check(t0 + 20 * s), Some(1));
    }
}
