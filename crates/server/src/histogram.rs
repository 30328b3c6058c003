//! The server's one histogram: recorded on the request path with atomic adds (no lock, unlike
//! `prometheus_client`'s, which takes a write lock per observation), read as quantiles by the
//! canary's judge and the admin API, and exported to Prometheus as a histogram.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Counts of observations by bucket, over a fixed, ascending list of finite upper bounds
/// (Prometheus `le` semantics: a value equal to a bound counts in that bound's bucket), with
/// one more bucket for values above the last bound.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// `bounds.len() + 1` counts, not cumulative; the last is the overflow (`+Inf`) bucket.
    counts: Box<[AtomicU64]>,
    /// The sum of observations, as `f64` bits.
    sum: AtomicU64,
}

impl Histogram {
    /// An empty histogram over `bounds`, which must be ascending. The bounds are `'static`
    /// because every layout the server uses is fixed, and a family of thousands of series
    /// then shares one list.
    pub fn new(bounds: &'static [f64]) -> Histogram {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "histogram bounds must ascend: {bounds:?}");
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// Records `value`. A NaN (say, a ratio over a zero prediction) is not recorded: it has no
    /// bucket, and it would turn the sum into NaN for good.
    pub fn observe(&self, value: f64) {
        if value.is_nan() {
            return;
        }
        let bucket = self.bounds.partition_point(|&bound| bound < value);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        // A CAS loop rather than a lock: contended only when two requests finish at once.
        let _ = self.sum.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
            Some((f64::from_bits(bits) + value).to_bits())
        });
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    pub fn sum(&self) -> f64 {
        f64::from_bits(self.sum.load(Ordering::Relaxed))
    }

    /// The upper bound of the bucket holding quantile `q` (0..=1), so an overestimate by at
    /// most one bucket's width; the last finite bound for a quantile in the overflow bucket;
    /// `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let counts: Vec<u64> = self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        let bucket = counts.iter().position(|c| {
            seen += c;
            seen >= rank
        })?;
        self.bounds.get(bucket).or(self.bounds.last()).copied()
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // The encoder writes `f64::MAX` as `+Inf`. Counts are read one by one, so a scrape
        // racing a request may see its bucket and not yet its sum: Prometheus tolerates that.
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .zip(self.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        encoder.encode_histogram::<NoLabelSet>(self.sum(), count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// `n` bounds from `first`, each `growth` times the one before: a layout whose quantiles are
/// accurate to a fixed ratio.
pub fn exponential_bounds(first: f64, growth: f64, n: usize) -> Vec<f64> {
    (0..n).map(|i| first * growth.powi(i as i32)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;
    use std::sync::LazyLock;

    static FINE: LazyLock<Vec<f64>> = LazyLock::new(|| exponential_bounds(10e-6, 1.1, 152));

    #[test]
    fn quantiles_land_within_one_bucket() {
        let h = Histogram::new(&FINE);
        assert_eq!(h.quantile(0.5), None);
        for us in 1..=1000u64 {
            h.observe(us as f64 * 1e-6);
        }
        let p50 = h.quantile(0.5).unwrap() * 1e6;
        let p99 = h.quantile(0.99).unwrap() * 1e6;
        assert!((500.0..=550.0).contains(&p50), "p50 {p50}");
        assert!((990.0..=1090.0).contains(&p99), "p99 {p99}");
        assert_eq!(h.count(), 1000);
        assert!((h.sum() - 500_500e-6).abs() < 1e-9, "sum {}", h.sum());
    }

    #[test]
    fn a_value_on_a_bound_counts_in_its_bucket_and_beyond_the_last_in_the_overflow() {
        static BOUNDS: [f64; 3] = [1.0, 2.0, 4.0];
        let h = Histogram::new(&BOUNDS);
        h.observe(2.0);
        assert_eq!(h.quantile(1.0), Some(2.0));
        h.observe(100.0);
        h.observe(f64::NAN);
        assert_eq!(h.count(), 2);
        // The overflow bucket answers with the last finite bound, never infinity.
        assert_eq!(h.quantile(1.0), Some(4.0));
        assert_eq!(h.quantile(0.0), Some(2.0));
    }

    #[test]
    fn exports_cumulative_buckets_sum_and_count() {
        static BOUNDS: [f64; 2] = [0.5, 1.0];
        let h = Histogram::new(&BOUNDS);
        for v in [0.25, 0.75, 0.75, 3.0] {
            h.observe(v);
        }
        let mut registry = Registry::default();
        registry.register("h_seconds", "A histogram", h);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "# TYPE h_seconds histogram",
            "h_seconds_sum 4.75",
            "h_seconds_count 4",
            "h_seconds_bucket{le=\"0.5\"} 1",
            "h_seconds_bucket{le=\"1.0\"} 3",
            "h_seconds_bucket{le=\"+Inf\"} 4",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}
