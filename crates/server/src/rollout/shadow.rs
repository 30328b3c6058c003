//! Shadow scoring: a share of live requests is also scored by a candidate version, after the
//! response has gone, and the two rankings are compared. The shadow never delays a response: it
//! runs in a task of its own, and is skipped when the inference queue is not empty.

use std::sync::Arc;
use std::sync::Mutex;

use axum::body::Bytes;
use serde::Serialize;

use super::routes::Served;
use crate::admission::pool::InferencePool;
use retort_model::request;

/// How far a shadow version agrees with the serving one, summed over compared requests.
#[derive(Debug, Default)]
pub struct ShadowAgreement {
    inner: Mutex<Sums>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Sums {
    requests: u64,
    skipped: u64,
    tau: f64,
    top10: f64,
    shift: f64,
}

/// Means over the requests compared.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AgreementSummary {
    pub requests: u64,
    /// Requests not shadowed because the inference queue was busy.
    pub skipped: u64,
    /// Kendall's tau between the two versions' scores of the same candidates (1: same order).
    pub kendall_tau: f64,
    /// Share of the serving version's top 10 that the shadow also ranks in its top 10.
    pub top10_overlap: f64,
    /// Mean of (shadow score − serving score) over candidates: how the score scale moved.
    pub score_shift: f64,
}

impl ShadowAgreement {
    pub fn record(&self, serving: &[f32], shadow: &[f32]) {
        let (tau, top10, shift) =
            (kendall_tau(serving, shadow), top_overlap(serving, shadow, 10), mean_shift(serving, shadow));
        let mut s = self.inner.lock().expect("not poisoned");
        s.requests += 1;
        s.tau += tau;
        s.top10 += top10;
        s.shift += shift;
    }

    pub fn skipped(&self) {
        self.inner.lock().expect("not poisoned").skipped += 1;
    }

    pub fn summary(&self) -> Option<AgreementSummary> {
        let s = *self.inner.lock().expect("not poisoned");
        if s.requests == 0 && s.skipped == 0 {
            return None;
        }
        let n = s.requests.max(1) as f64;
        Some(AgreementSummary {
            requests: s.requests,
            skipped: s.skipped,
            kendall_tau: s.tau / n,
            top10_overlap: s.top10 / n,
            score_shift: s.shift / n,
        })
    }
}

/// Scores `body` with `shadow` (over `items`, the catalog it reads) and records its
/// agreement with `serving_scores`. Called after the response is built; spawns and returns at
/// once.
pub fn spawn(
    pool: Arc<InferencePool>,
    shadow: Arc<Served>,
    items: Option<super::routes::ItemsFor>,
    body: Bytes,
    serving_scores: Vec<f32>,
) {
    if pool.queued() > 0 {
        shadow.stats.shadow.skipped();
        return;
    }
    tokio::spawn(async move {
        let model = shadow.model.clone();
        let scored = pool
            .run(move || -> Option<Vec<f32>> {
                let req = request::decode(&body).ok()?;
                model.score_request(&req, items.as_ref().map(|i| i.source())).ok().map(|scored| scored.scores)
            })
            .await;
        match scored {
            Ok((Some(scores), _)) if scores.len() == serving_scores.len() => {
                shadow.stats.shadow.record(&serving_scores, &scores);
            }
            // The shadow could not score what the serving version did: that is disagreement
            // worth seeing, as an error of the shadow version.
            Ok(_) => {
                shadow.stats.errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(_) => shadow.stats.shadow.skipped(),
        }
    });
}

/// Kendall's tau-a over all pairs (ties count as neither concordant nor discordant).
pub fn kendall_tau(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len());
    if n < 2 {
        return 1.0;
    }
    let mut score = 0i64;
    for i in 0..n {
        for j in i + 1..n {
            let x = (a[i] - a[j]).partial_cmp(&0.0).map_or(0, |o| o as i64);
            let y = (b[i] - b[j]).partial_cmp(&0.0).map_or(0, |o| o as i64);
            score += x * y;
        }
    }
    score as f64 / (n * (n - 1) / 2) as f64
}

fn top(scores: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&x, &y| scores[y].total_cmp(&scores[x]).then(x.cmp(&y)));
    order.truncate(k);
    order
}

/// Share of `a`'s top `k` that is also in `b`'s top `k`.
pub fn top_overlap(a: &[f32], b: &[f32], k: usize) -> f64 {
    let (ta, tb) = (top(a, k), top(b, k));
    if ta.is_empty() {
        return 1.0;
    }
    ta.iter().filter(|i| tb.contains(i)).count() as f64 / ta.len() as f64
}

fn mean_shift(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len()).max(1);
    a.iter().zip(b).map(|(x, y)| (y - x) as f64).sum::<f64>() / n as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_measures_by_hand() {
        let a = [0.9, 0.5, 0.1, 0.3];
        assert_eq!(kendall_tau(&a, &a), 1.0);
        assert_eq!(kendall_tau(&a, &[0.1, 0.5, 0.9, 0.7]), -1.0);
        // One swapped pair of six: (5 - 1) / 6.
        assert!((kendall_tau(&a, &[0.9, 0.5, 0.3, 0.1]) - 4.0 / 6.0).abs() < 1e-12);
        assert_eq!(top_overlap(&a, &a, 2), 1.0);
        assert_eq!(top_overlap(&a, &[0.9, 0.1, 0.5, 0.2], 2), 0.5);
        assert!((mean_shift(&a, &[1.0, 0.6, 0.2, 0.4]) - 0.1).abs() < 1e-6);
        let agg = ShadowAgreement::default();
        assert_eq!(agg.summary(), None);
        agg.record(&a, &a);
        agg.record(&a, &[0.1, 0.5, 0.9, 0.7]);
        agg.skipped();
        let s = agg.summary().unwrap();
        assert_eq!((s.requests, s.skipped, s.kendall_tau), (2, 1, 0.0));
    }
}
