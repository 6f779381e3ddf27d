//! Open-loop rate pacing: send number k is due at `start + k / rate`, whether or not the
//! earlier ones have been answered, so a slow server does not slow the offered load down.
//! A sender that falls further behind than `max_backlog` sends drops the excess slots
//! (counted in `skipped`) instead of bursting them all at once.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Pacer {
    start: Instant,
    interval: Duration,
    /// Slots handed out (sent or skipped).
    taken: u64,
    max_backlog: u64,
    /// Slots dropped because the sender was too far behind.
    pub skipped: u64,
}

impl Pacer {
    /// `rate` sends per second from `start` (a rate of 0 or less never sends).
    pub fn new(start: Instant, rate: f64, max_backlog: u64) -> Pacer {
        let interval = if rate > 0.0 && rate.is_finite() {
            Duration::from_secs_f64(1.0 / rate)
        } else {
            Duration::MAX
        };
        Pacer {
            start,
            interval,
            taken: 0,
            max_backlog: max_backlog.max(1),
            skipped: 0,
        }
    }

    /// When the next send is due.
    pub fn next_due(&self) -> Instant {
        if self.interval == Duration::MAX {
            return self.start + Duration::from_secs(86_400 * 365);
        }
        let offset = self
            .interval
            .checked_mul(u32::try_from(self.taken).unwrap_or(u32::MAX))
            .unwrap_or(Duration::from_secs(86_400 * 365));
        self.start + offset
    }

    /// Sends due at `now` (at most `max_backlog`); they count as taken.
    pub fn take_due(&mut self, now: Instant) -> u64 {
        if now < self.start || self.interval == Duration::MAX {
            return 0;
        }
        let elapsed = now - self.start;
        let due_total = (elapsed.as_nanos() / self.interval.as_nanos().max(1)) as u64 + 1;
        let mut n = due_total.saturating_sub(self.taken);
        if n > self.max_backlog {
            self.skipped += n - self.max_backlog;
            self.taken += n - self.max_backlog;
            n = self.max_backlog;
        }
        self.taken += n;
        n
    }

    /// Slots handed out so far.
    #[cfg(test)]
    pub fn taken(&self) -> u64 {
        self.taken
    }
}

/// A phase in `0..1` for client `n`, spread evenly-ish, so that clients with the same
/// rate do not all send in the same instant.
pub fn phase(n: u64) -> f64 {
    // Fibonacci hashing: consecutive n land far apart in 0..1.
    let h = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_at_the_target_rate() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0, 100.0, 1000);
        assert_eq!(p.take_due(t0), 1, "the first send is due at once");
        assert_eq!(p.take_due(t0 + Duration::from_millis(5)), 0);
        assert_eq!(p.next_due(), t0 + Duration::from_millis(10));
        assert_eq!(p.take_due(t0 + Duration::from_millis(10)), 1);
        // One second in: 101 slots (0 ms .. 1000 ms inclusive).
        let n = p.take_due(t0 + Duration::from_secs(1));
        assert_eq!(p.taken(), 101);
        assert_eq!(n, 99);
        assert_eq!(p.skipped, 0);
    }

    #[test]
    fn drops_slots_beyond_the_backlog() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0, 1000.0, 50);
        let n = p.take_due(t0 + Duration::from_secs(1));
        assert_eq!(n, 50);
        assert_eq!(p.skipped, 951);
        assert_eq!(p.taken(), 1001);
        assert_eq!(p.take_due(t0 + Duration::from_secs(1)), 0);
    }

    #[test]
    fn zero_rate_never_sends() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0, 0.0, 10);
        assert_eq!(p.take_due(t0 + Duration::from_secs(100)), 0);
        assert!(p.next_due() > t0 + Duration::from_secs(86_400));
    }

    #[test]
    fn nothing_due_before_start() {
        let t0 = Instant::now() + Duration::from_secs(5);
        let mut p = Pacer::new(t0, 10.0, 10);
        assert_eq!(p.take_due(Instant::now()), 0);
    }

    #[test]
    fn phases_spread_over_unit_interval() {
        let ps: Vec<f64> = (0..1000).map(phase).collect();
        assert!(ps.iter().all(|p| (0.0..1.0).contains(p)));
        let low = ps.iter().filter(|p| **p < 0.5).count();
        assert!((400..600).contains(&low), "{low}");
    }
}
