//! Per-connection command rate limit: a token bucket refilled continuously.

use std::time::Instant;

pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// `rate` commands per second with bursts of `burst`; a rate of 0 never limits.
    pub fn new(rate: u32, burst: u32) -> Self {
        TokenBucket {
            rate: rate as f64,
            burst: burst as f64,
            tokens: burst as f64,
            last: Instant::now(),
        }
    }

    pub fn allow(&mut self) -> bool {
        self.allow_at(Instant::now())
    }

    fn allow_at(&mut self, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill() {
        let mut b = TokenBucket::new(10, 3);
        let t0 = Instant::now();
        assert!(b.allow_at(t0) && b.allow_at(t0) && b.allow_at(t0));
        assert!(!b.allow_at(t0));
        assert!(b.allow_at(t0 + Duration::from_millis(110)));
        assert!(!b.allow_at(t0 + Duration::from_millis(110)));
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let mut b = TokenBucket::new(0, 0);
        assert!((0..1000).all(|_| b.allow()));
    }
}
