//! Offline ranking metrics on a holdout: AUC over all rows, GAUC and NDCG@10 within requests
//! (what a ranker is actually asked to do), calibration (ECE), and, where a simulation knows it,
//! the distance to the true probability.

use std::collections::HashMap;

fn sigmoid(z: f32) -> f64 {
    1.0 / (1.0 + (-(z as f64)).exp())
}

/// Row indices grouped by request, in first-seen order.
pub fn by_request<'a>(requests: impl Iterator<Item = &'a str>) -> Vec<Vec<usize>> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, r) in requests.enumerate() {
        let g = *index.entry(r).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(i);
    }
    groups
}

/// AUC within each request that has both a positive and a negative, averaged with each
/// request weighted by its number of rows. `None` when no request qualifies.
pub fn gauc(scores: &[f32], labels: &[f32], groups: &[Vec<usize>]) -> Option<f64> {
    let (mut total, mut weight) = (0.0, 0.0);
    for g in groups {
        let s: Vec<f32> = g.iter().map(|&i| scores[i]).collect();
        let y: Vec<f32> = g.iter().map(|&i| labels[i]).collect();
        if let Some(a) = auc(&s, &y) {
            total += a * g.len() as f64;
            weight += g.len() as f64;
        }
    }
    (weight > 0.0).then(|| total / weight)
}

/// NDCG@k of each request's ranking by score, with the labels as gains, averaged over requests
/// with at least one positive label.
pub fn ndcg_at(k: usize, scores: &[f32], labels: &[f32], groups: &[Vec<usize>]) -> Option<f64> {
    let dcg = |gains: &[f32]| -> f64 {
        gains.iter().take(k).enumerate().map(|(i, &g)| g as f64 / ((i + 2) as f64).log2()).sum()
    };
    let (mut total, mut n) = (0.0, 0usize);
    for g in groups {
        let mut ranked: Vec<usize> = g.clone();
        ranked.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        let gains: Vec<f32> = ranked.iter().map(|&i| labels[i]).collect();
        let mut ideal = gains.clone();
        ideal.sort_by(|a, b| b.total_cmp(a));
        let best = dcg(&ideal);
        if best > 0.0 {
            total += dcg(&gains) / best;
            n += 1;
        }
    }
    (n > 0).then(|| total / n as f64)
}

/// Expected calibration error of the probabilities `sigmoid(logit)`: over 10 equal-width bins,
/// the row-weighted gap between the mean prediction and the observed rate.
pub fn ece(logits: &[f32], labels: &[f32]) -> Option<f64> {
    if logits.is_empty() {
        return None;
    }
    let mut bins = [(0.0f64, 0.0f64, 0usize); 10];
    for (&z, &y) in logits.iter().zip(labels) {
        let p = sigmoid(z);
        let b = ((p * 10.0) as usize).min(9);
        bins[b].0 += p;
        bins[b].1 += y as f64;
        bins[b].2 += 1;
    }
    let n = logits.len() as f64;
    Some(bins.iter().map(|&(p, y, _)| (p - y).abs() / n).sum())
}

/// Mean absolute difference between the predicted probabilities and the true ones.
pub fn truth_mae(logits: &[f32], truth: &[f32]) -> Option<f64> {
    (!logits.is_empty()).then(|| {
        logits.iter().zip(truth).map(|(&z, &t)| (sigmoid(z) - t as f64).abs()).sum::<f64>()
            / logits.len() as f64
    })
}

/// Area under the ROC curve: the probability that a random positive outscores a random
/// negative (ties count half). `None` when one class is absent.
pub fn auc(scores: &[f32], labels: &[f32]) -> Option<f64> {
    let mut pairs: Vec<(f32, bool)> = scores.iter().zip(labels).map(|(s, y)| (*s, *y > 0.5)).collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut negatives, mut wins, mut i) = (0.0f64, 0.0f64, 0);
    while i < pairs.len() {
        let mut j = i;
        // `total_cmp`, not `==`: a NaN score equals itself here, so the loop always advances.
        while j < pairs.len() && pairs[j].0.total_cmp(&pairs[i].0).is_eq() {
            j += 1;
        }
        let (pos, neg) =
            pairs[i..j].iter().fold((0.0, 0.0), |(p, n), x| if x.1 { (p + 1.0, n) } else { (p, n + 1.0) });
        wins += pos * (negatives + neg / 2.0);
        negatives += neg;
        i = j;
    }
    let positives = pairs.iter().filter(|p| p.1).count() as f64;
    (positives > 0.0 && negatives > 0.0).then(|| wins / (positives * negatives))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_counts_ordered_pairs_and_ties_half() {
        assert_eq!(auc(&[0.1, 0.4, 0.35, 0.8], &[0.0, 0.0, 1.0, 1.0]), Some(0.75));
        assert_eq!(auc(&[0.5, 0.5], &[0.0, 1.0]), Some(0.5));
        assert_eq!(auc(&[0.1, 0.2], &[1.0, 1.0]), None);
    }

    // See: issue 14 (A): one NaN score looped forever.
    #[test]
    fn auc_ends_on_nan_scores() {
        // NaN sorts above every number: the positive at 0.3 beats nothing, the tied NaNs half.
        assert_eq!(auc(&[f32::NAN, f32::NAN, 0.3], &[0.0, 1.0, 1.0]), Some(0.25));
    }

    #[test]
    fn ranking_metrics_match_hand_computed_values() {
        // Two requests: rows 0-2 and 3-5.
        let groups = by_request(["a", "a", "a", "b", "b", "b"].into_iter());
        assert_eq!(groups, [vec![0, 1, 2], vec![3, 4, 5]]);
        let scores = [0.9, 0.1, 0.5, 0.2, 0.8, 0.3];
        let labels = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0];
        // Request a: the positive is on top (AUC 1); request b: it is last (AUC 0).
        assert_eq!(gauc(&scores, &labels, &groups), Some(0.5));
        // NDCG: a = 1; b: the positive at rank 3, 1/log2(4) = 0.5; mean 0.75.
        let n = ndcg_at(10, &scores, &labels, &groups).unwrap();
        assert!((n - 0.75).abs() < 1e-12, "{n}");
        // NDCG@2 cuts b's positive off: (1 + 0) / 2.
        assert_eq!(ndcg_at(2, &scores, &labels, &groups), Some(0.5));
    }

    #[test]
    fn calibration_and_distance_to_truth() {
        // Logit 0 is p = 0.5 for every row; half the labels positive: perfectly calibrated.
        assert!(ece(&[0.0; 4], &[1.0, 0.0, 1.0, 0.0]).unwrap() < 1e-12);
        // All predicted 0.5, none positive: the gap is 0.5.
        assert!((ece(&[0.0; 4], &[0.0; 4]).unwrap() - 0.5).abs() < 1e-12);
        assert!((truth_mae(&[0.0, 0.0], &[0.25, 0.75]).unwrap() - 0.25).abs() < 1e-12);
    }
}
