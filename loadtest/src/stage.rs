//! The part of a run that `broadcast`, `chat` and `connect` share around their measured
//! phase: spawn the worker fleet with the server sampler, connect every client, wait for
//! the last deliveries, stop the fleet and fill in the result fields every scenario
//! reports the same way. One place, so the scenarios cannot drift apart in how they
//! count connects, drops and latency.

use std::time::{Duration, Instant};

use crate::fleet::{Fleet, FleetPlan};
use crate::hist;
use crate::report::RunResult;
use crate::run::{self, Common, Sampler};
use crate::worker::{ChannelPlan, Status};

/// What the server sampler's measured window covers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// The connect phase itself (the connection storm).
    Connecting,
    /// A phase after connecting; the scenario marks it with `Stage::mark_start/end`.
    Later,
}

/// A connected fleet of clients for one scenario run.
pub struct Stage {
    pub fleet: Fleet,
    pub sampler: Option<Sampler>,
    pub connect_secs: f64,
    /// Totals when the connect phase ended.
    pub connected: Status,
}

impl Stage {
    /// Spawns the workers, waits until every client connected (or failed), then lets
    /// the connections settle for `settle`.
    pub async fn connect(
        c: &Common,
        clients: u64,
        channels: &ChannelPlan,
        chat_rate: f64,
        window: Window,
        settle: Duration,
    ) -> anyhow::Result<Stage> {
        let peer = c.peer_conf();
        let sampler = c.server_pid.map(|pid| Sampler::start(pid, Instant::now()));
        if window == Window::Connecting {
            if let Some(s) = &sampler {
                s.mark_start();
            }
        }
        let mut fleet = Fleet::spawn(&FleetPlan {
            peer: &peer,
            secret: &c.hmac_secret,
            connections: clients,
            workers: c.workers,
            source_addrs: c.source_addrs,
            concurrency: c.concurrency,
            channels,
            connect_timeout: Duration::from_secs_f64(c.connect_timeout_secs),
            chat_rate,
        })?;
        let connect_secs = run::connect_phase(
            &mut fleet,
            clients,
            c.connect_deadline_secs,
            sampler.as_ref(),
        )
        .await?;
        if window == Window::Connecting {
            if let Some(s) = &sampler {
                s.mark_end();
            }
        }
        let connected = fleet.total();
        fleet.watch_for(settle).await;
        Ok(Stage {
            fleet,
            sampler,
            connect_secs,
            connected,
        })
    }

    pub fn mark_start(&self) {
        if let Some(s) = &self.sampler {
            s.mark_start();
        }
    }

    pub fn mark_end(&self) {
        if let Some(s) = &self.sampler {
            s.mark_end();
        }
    }

    /// Waits for the last deliveries after publishing stopped: until `expected(totals)`
    /// arrived since `from`, nothing new came for a second, or `limit` passed.
    pub async fn drain(
        &mut self,
        from: &Status,
        limit: Duration,
        expected: impl Fn(&Status) -> u64,
    ) {
        let until = Instant::now() + limit;
        let mut prev = self.fleet.total().deliveries;
        loop {
            let t = self.fleet.total();
            if t.deliveries.saturating_sub(from.deliveries) >= expected(&t)
                || Instant::now() >= until
            {
                return;
            }
            self.fleet.watch_for(Duration::from_secs(1)).await;
            let now = self.fleet.total().deliveries;
            if now == prev {
                return;
            }
            prev = now;
        }
    }

    /// Stops the workers and returns their last totals with the result fields every
    /// scenario fills the same way: connects, errors, drops, latency histograms, the
    /// server's figures. The scenario adds its own (publications, deliveries, ...).
    pub async fn finish(
        mut self,
        scenario: &str,
        c: &Common,
        params: serde_json::Value,
        clients: u64,
    ) -> (RunResult, Status) {
        let last = self.fleet.stop(Duration::from_secs(15)).await;
        let latency = self.fleet.merged(|s: &Status| s.latency_hist.as_ref());
        let connect_latency = self.fleet.merged(|s: &Status| s.connect_hist.as_ref());
        let connected = &self.connected;
        let result = RunResult {
            scenario: scenario.into(),
            server: c.server.to_string(),
            unix_time: run::unix_now(),
            params,
            clients,
            connected: connected.connected,
            connect_errors: connected.failed,
            errors: connected.errors.clone(),
            first_error: last.first_error.clone(),
            dropped: last.dropped,
            first_drop: last.first_drop.clone(),
            connect_secs: self.connect_secs,
            connects_per_sec: connected.connected as f64 / self.connect_secs.max(1e-9),
            duration_secs: self.connect_secs,
            latency: hist::summary(&latency),
            connect_latency: hist::summary(&connect_latency),
            server_stats: self.sampler.map(Sampler::finish),
            ..RunResult::default()
        };
        (result, last)
    }
}

/// Deliveries per second since the previous call, for progress lines.
pub struct RateMeter {
    at: Instant,
    count: u64,
}

impl RateMeter {
    pub fn new(count: u64) -> RateMeter {
        RateMeter {
            at: Instant::now(),
            count,
        }
    }

    pub fn per_sec(&mut self, count: u64) -> f64 {
        let now = Instant::now();
        let rate =
            count.saturating_sub(self.count) as f64 / (now - self.at).as_secs_f64().max(1e-3);
        self.at = now;
        self.count = count;
        rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_meter_counts_since_the_last_call() {
        let mut m = RateMeter::new(100);
        std::thread::sleep(Duration::from_millis(20));
        let r = m.per_sec(300);
        // 200 in at least 20 ms: at most 10,000/s, and positive.
        assert!(r > 0.0 && r <= 10_000.0, "{r}");
        // A counter that went backwards (a restarted worker) is not a negative rate.
        assert_eq!(m.per_sec(50), 0.0);
    }
}
