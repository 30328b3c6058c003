//! Per-version request counts and latency, cheap enough to record on every request (a few
//! relaxed atomic adds) and read as quantiles by the admin API and the canary's judge.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::histogram::{Histogram, exponential_bounds};

/// 10 µs to about 18 s in 10% steps: fine enough for the canary's judge to tell a p99 10%
/// worse, too fine to export (the Prometheus series use `http/metrics.rs`'s coarser layout).
static LATENCY_SECONDS: LazyLock<Vec<f64>> = LazyLock::new(|| exponential_bounds(10e-6, 1.1, 152));

/// What one model version has served.
pub struct VersionStats {
    pub requests: AtomicU64,
    /// Requests this version failed (not counting overload sheds, which say nothing of it).
    pub errors: AtomicU64,
    /// Seconds, of the requests it answered.
    pub latency: Histogram,
    /// As a shadow: its agreement with the serving version.
    pub shadow: crate::rollout::shadow::ShadowAgreement,
}

impl Default for VersionStats {
    fn default() -> Self {
        VersionStats {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: Histogram::new(&LATENCY_SECONDS),
            shadow: Default::default(),
        }
    }
}

impl VersionStats {
    pub fn record(&self, elapsed: Duration, ok: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if ok {
            self.latency.observe(elapsed.as_secs_f64());
        } else {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    pub fn error_rate(&self) -> f64 {
        self.errors() as f64 / self.requests().max(1) as f64
    }

    /// Latency quantile `q` of the requests answered, to within 10% above; `None` before any.
    pub fn latency_quantile(&self, q: f64) -> Option<Duration> {
        self.latency.quantile(q).map(Duration::from_secs_f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_quantiles_are_within_ten_percent_above() {
        let s = VersionStats::default();
        assert_eq!(s.latency_quantile(0.99), None);
        for us in 1..=1000u64 {
            s.record(Duration::from_micros(us), true);
        }
        let p99 = s.latency_quantile(0.99).unwrap().as_secs_f64() * 1e6;
        assert!((990.0..=1090.0).contains(&p99), "p99 {p99}");
        // Beyond the last bucket (about 18 s): counted, and read as the last bound.
        s.record(Duration::from_secs(100), true);
        let max = s.latency_quantile(1.0).unwrap().as_secs_f64();
        assert!((17.0..19.0).contains(&max), "max {max}");
    }

    #[test]
    fn errors_count_apart_from_latency() {
        let s = VersionStats::default();
        s.record(Duration::from_millis(1), true);
        s.record(Duration::from_millis(1), false);
        assert_eq!((s.requests(), s.errors(), s.latency.count()), (2, 1, 1));
        assert!((s.error_rate() - 0.5).abs() < 1e-12);
    }
}
