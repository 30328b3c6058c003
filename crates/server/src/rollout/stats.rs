//! Per-version request counts and latency, cheap enough to record on every request (a few
//! relaxed atomic adds) and read as quantiles by the admin API and the canary's judge.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bucket `i` holds latencies up to `FIRST_US · GROWTH^i`: 10 µs to about 18 s in 10% steps.
const BUCKETS: usize = 152;
const FIRST_US: f64 = 10.0;
const GROWTH: f64 = 1.1;

/// A latency histogram with fixed logarithmic buckets; quantiles are accurate to one bucket
/// (10%).
pub struct LatencyHistogram {
    counts: Vec<AtomicU64>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram { counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect() }
    }
}

impl LatencyHistogram {
    fn bucket(d: Duration) -> usize {
        let us = d.as_secs_f64() * 1e6;
        if us <= FIRST_US {
            return 0;
        }
        ((us / FIRST_US).ln() / GROWTH.ln()).ceil().min((BUCKETS - 1) as f64) as usize
    }

    pub fn record(&self, d: Duration) {
        self.counts[Self::bucket(d)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The upper bound of the bucket holding quantile `q` (0..=1), or `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let counts: Vec<u64> = self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Duration::from_secs_f64(FIRST_US * GROWTH.powi(i as i32) * 1e-6));
            }
        }
        None
    }
}

/// What one model version has served.
#[derive(Default)]
pub struct VersionStats {
    pub requests: AtomicU64,
    /// Requests this version failed (not counting overload sheds, which say nothing of it).
    pub errors: AtomicU64,
    pub latency: LatencyHistogram,
    /// As a shadow: its agreement with the serving version.
    pub shadow: crate::rollout::shadow::ShadowAgreement,
}

impl VersionStats {
    pub fn record(&self, elapsed: Duration, ok: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if ok {
            self.latency.record(elapsed);
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_land_within_one_bucket() {
        let h = LatencyHistogram::default();
        assert_eq!(h.quantile(0.5), None);
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let p50 = h.quantile(0.5).unwrap().as_secs_f64() * 1e6;
        let p99 = h.quantile(0.99).unwrap().as_secs_f64() * 1e6;
        assert!((500.0..=550.0).contains(&p50), "p50 {p50}");
        assert!((990.0..=1090.0).contains(&p99), "p99 {p99}");
        assert_eq!(h.count(), 1000);
        // Beyond the last bucket: counted in it.
        h.record(Duration::from_secs(100));
        assert_eq!(h.count(), 1001);
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
