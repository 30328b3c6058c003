//! A live estimate of how long one model version takes to answer a request of `n` candidates:
//! `fixed + per_candidate * n`, for the work a request costs outside the queue (encoding and
//! inference). Admission control asks it whether the full answer can make a deadline, and how
//! many candidates can.
//!
//! The fit is a least-squares line over exponentially weighted moments of the observed
//! `(candidates, time)` pairs, so it follows a version whose speed changes (a busier machine,
//! a warmer cache) within a few dozen requests. A new version is calibrated on its golden
//! examples before it serves, at two sizes, so the first requests are predicted too.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use retort_model::Model;

/// Weight of each new observation against all before it.
const DECAY: f64 = 0.05;
/// Candidate counts whose spread is below this share of their mean cannot tell the fixed cost
/// from the per-candidate one; the last slope fitted on a wider spread is kept instead.
const MIN_SPREAD: f64 = 0.1;

#[derive(Debug, Default)]
pub struct CostModel {
    fit: Mutex<Moments>,
}

/// Exponentially weighted sums; each mean is its sum over `weight`.
#[derive(Debug, Default, Clone, Copy)]
struct Moments {
    weight: f64,
    n: f64,
    t: f64,
    nn: f64,
    nt: f64,
    /// Seconds per candidate, from the last time the candidate counts were spread enough.
    slope: Option<f64>,
}

/// A fitted line: seconds for `n` candidates = `fixed + per_candidate * n`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub fixed: f64,
    pub per_candidate: f64,
}

impl Estimate {
    pub fn predict(&self, candidates: usize) -> Duration {
        Duration::from_secs_f64((self.fixed + self.per_candidate * candidates as f64).max(0.0))
    }

    /// The most candidates that fit in `within` (`usize::MAX` when candidates cost nothing).
    pub fn affordable(&self, within: Duration) -> usize {
        let left = within.as_secs_f64() - self.fixed;
        if left < 0.0 {
            0
        } else if self.per_candidate <= 0.0 {
            usize::MAX
        } else {
            // The nudge keeps an exact fit (2 ms for 1 ms + 100 × 10 µs) from rounding down.
            (left / self.per_candidate + 1e-6).floor().min(usize::MAX as f64) as usize
        }
    }
}

impl CostModel {
    /// Records that a request of `candidates` took `took` outside the queue.
    pub fn observe(&self, candidates: usize, took: Duration) {
        let (n, t) = (candidates as f64, took.as_secs_f64());
        let mut m = self.fit.lock().unwrap_or_else(|p| p.into_inner());
        let keep = 1.0 - DECAY;
        m.weight = m.weight * keep + 1.0;
        m.n = m.n * keep + n;
        m.t = m.t * keep + t;
        m.nn = m.nn * keep + n * n;
        m.nt = m.nt * keep + n * t;
        let (mean_n, mean_t) = (m.n / m.weight, m.t / m.weight);
        let var = m.nn / m.weight - mean_n * mean_n;
        if var > (MIN_SPREAD * mean_n).powi(2) {
            let cov = m.nt / m.weight - mean_n * mean_t;
            m.slope = Some((cov / var).max(0.0));
        }
    }

    /// The current line, once anything was observed.
    pub fn estimate(&self) -> Option<Estimate> {
        let m = *self.fit.lock().unwrap_or_else(|p| p.into_inner());
        if m.weight == 0.0 {
            return None;
        }
        let (mean_n, mean_t) = (m.n / m.weight, m.t / m.weight);
        let proportional =
            || Estimate { fixed: 0.0, per_candidate: if mean_n > 0.0 { mean_t / mean_n } else { 0.0 } };
        Some(match m.slope {
            // The line goes through the recent mean: the level follows what is observed now,
            // the slope what was learnt when sizes varied.
            Some(slope) if mean_t - slope * mean_n >= 0.0 => {
                Estimate { fixed: mean_t - slope * mean_n, per_candidate: slope }
            }
            _ if mean_n == 0.0 => Estimate { fixed: mean_t, per_candidate: 0.0 },
            _ => proportional(),
        })
    }

    /// Times `model` on its first golden example repeated to two sizes (the best of three runs
    /// each: the calibrating thread runs at a low priority and may be preempted) and records
    /// both. A model without golden examples starts unknown and learns from its first requests.
    pub fn calibrate(&self, model: &Model) {
        let Some(example) = model.manifest.golden.examples.first() else { return };
        let features: Vec<_> = example.candidates.iter().map(|c| c.features.clone()).collect();
        if features.is_empty() {
            return;
        }
        for size in [16usize, 256] {
            let candidates: Vec<_> = features.iter().cycle().take(size).cloned().collect();
            let mut best: Option<Duration> = None;
            for _ in 0..3 {
                let started = Instant::now();
                if model.score(&example.context, &candidates, None::<[(&str, f64); 0]>).is_err() {
                    return;
                }
                let took = started.elapsed();
                best = Some(best.map_or(took, |b| b.min(took)));
            }
            if let Some(best) = best {
                self.observe(size, best);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(x: f64) -> Duration {
        Duration::from_secs_f64(x / 1e3)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn an_unobserved_version_has_no_estimate() {
        assert_eq!(CostModel::default().estimate(), None);
    }

    #[test]
    fn fits_fixed_and_per_candidate_cost_from_varied_sizes() {
        let cost = CostModel::default();
        // 0.5 ms + 4 µs per candidate.
        for n in [10, 500, 100, 300, 50, 200] {
            cost.observe(n, ms(0.5 + 0.004 * n as f64));
        }
        let e = cost.estimate().unwrap();
        assert!(close(e.fixed, 0.5e-3), "{e:?}");
        assert!(close(e.per_candidate, 4e-6), "{e:?}");
        assert!((e.predict(1000).as_secs_f64() - 4.5e-3).abs() < 1e-9);
        // 2 ms leave room for (2 - 0.5) / 0.004 = 375 candidates.
        assert_eq!(e.affordable(ms(2.0)), 375);
        assert_eq!(e.affordable(ms(0.4)), 0, "not even the fixed cost fits");
    }

    #[test]
    fn same_sized_requests_move_the_level_and_keep_a_slope() {
        let cost = CostModel::default();
        cost.observe(16, ms(0.5 + 0.004 * 16.0));
        cost.observe(256, ms(0.5 + 0.004 * 256.0));
        // Then only 500-candidate requests, the machine twice as slow on them.
        for _ in 0..400 {
            cost.observe(500, ms(2.0 * (0.5 + 0.004 * 500.0)));
        }
        // Sizes no longer vary: the slope stays what it was last fitted to, and the line goes
        // through what 500 candidates cost now.
        let e = cost.estimate().unwrap();
        assert!(e.per_candidate > 0.0 && e.fixed >= 0.0, "{e:?}");
        assert!((e.predict(500).as_secs_f64() - 5e-3).abs() < 1e-6, "{e:?}");
        assert!(e.affordable(ms(2.5)) < 500, "{e:?}");
    }

    #[test]
    fn follows_a_slowdown_within_a_few_dozen_requests() {
        let cost = CostModel::default();
        for i in 0..200 {
            cost.observe(100 + (i % 3) * 100, ms(1.0));
        }
        for i in 0..60 {
            cost.observe(100 + (i % 3) * 100, ms(3.0));
        }
        let predicted = cost.estimate().unwrap().predict(200).as_secs_f64();
        assert!(predicted > 2.8e-3, "{predicted}");
    }
}
