//! Successive halving within a budget: the schedule of the teacher search (Paper B's "optimal
//! teacher configurations within time and budgetary constraints").
//!
//! Many candidates get a little resource (a short teacher run on a subsample, a short proxy
//! student); the best `1 / eta` of them go on with `eta` times as much, and so on until one
//! is left or the budget is spent. Each evaluation's cost is predicted before it starts (from
//! what the same candidate cost at the rung below, scaled by the resource, or from the rung's
//! costs so far) and an evaluation that would not fit in what is left of the budget is not
//! started: the budget is never exceeded by more than a misprediction, and the objective is
//! told the deadline too.
//!
//! Up to `workers` evaluations of a rung run side by side (a teacher trains on one core); a
//! batch of them costs what its slowest member cost, as the wall clock sees it.
//!
//! The schedule knows nothing of teachers: an [`Objective`] evaluates a candidate at a resource
//! level and says what it scored and what it cost, so the schedule is tested with a fast fake.

use std::time::Duration;

use serde::Serialize;

/// Evaluates candidates; the teacher search's objective trains a teacher and a proxy student.
pub trait Objective: Sync {
    /// Evaluates candidate `index` with `resource` (1 at the lowest rung, `eta`× per rung up),
    /// stopping when `allowed` has passed. Called from several threads at once when the search
    /// has workers.
    fn evaluate(&self, index: usize, resource: f64, allowed: Duration) -> Result<Evaluation, Failed>;

    /// What evaluating `index` at `resource` will cost, when the objective knows better than
    /// the schedule's own guess (the candidate's last cost per unit of resource, else the mean).
    fn predict(&self, _index: usize, _resource: f64) -> Option<Duration> {
        None
    }
}

/// An evaluation that did not finish, and what it cost before it stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct Failed {
    pub why: String,
    pub cost: Duration,
}

/// What one evaluation found.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Evaluation {
    /// Higher is better (the proxy student's gain over the control).
    pub score: f64,
    /// What it took: wall-clock time for the real search, a simulated clock for a fake.
    pub cost: Duration,
}

/// One row of the search's record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trial {
    pub candidate: usize,
    pub rung: usize,
    pub resource: f64,
    pub score: Option<f64>,
    pub cost_s: f64,
    /// Why the candidate has no score at this rung (failed, or skipped for the budget).
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub trials: Vec<Trial>,
    /// The candidate that reached the highest rung with the best score there.
    pub best: Option<usize>,
    pub spent_s: f64,
    pub budget_s: f64,
}

/// The schedule's shape: halving factor, rungs, and how many evaluations run at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Keep the best `1 / eta` of each rung (at least 2).
    pub eta: usize,
    /// At most this many rungs; the top one has `eta^(rungs - 1)` times the lowest's resource.
    pub rungs: usize,
    /// Evaluations side by side (at least 1).
    pub workers: usize,
    pub budget: Duration,
}

/// Successive halving of `candidates` as `schedule` says.
pub fn run(objective: &dyn Objective, candidates: usize, schedule: Schedule) -> Outcome {
    let Schedule { eta, rungs, workers, budget } = schedule;
    let (eta, workers) = (eta.max(2), workers.max(1));
    let mut trials = Vec::new();
    let mut spent = Duration::ZERO;
    let mut alive: Vec<usize> = (0..candidates).collect();
    // Cost per unit of resource, per candidate, from its last evaluation.
    let mut unit_cost: Vec<Option<f64>> = vec![None; candidates];
    let mut best = None;
    for rung in 0..rungs.max(1) {
        let resource = (eta as f64).powi(rung as i32);
        let mut scored: Vec<(usize, f64)> = Vec::new();
        let mut queue = alive.iter().copied().peekable();
        while queue.peek().is_some() {
            let left = budget.saturating_sub(spent);
            // Unknown candidates are predicted from the mean unit cost seen so far.
            let known: Vec<f64> = unit_cost.iter().flatten().copied().collect();
            let mean = (!known.is_empty()).then(|| known.iter().sum::<f64>() / known.len() as f64);
            // A batch of up to `workers` that each fit in what is left: side by side, the batch
            // costs its slowest, so each must fit on its own.
            let mut batch = Vec::new();
            while batch.len() < workers
                && let Some(c) = queue.next()
            {
                let predicted = objective
                    .predict(c, resource)
                    .or_else(|| unit_cost[c].or(mean).map(|u| Duration::from_secs_f64(u * resource)));
                if predicted.is_some_and(|p| p > left) || left.is_zero() {
                    trials.push(Trial {
                        candidate: c,
                        rung,
                        resource,
                        score: None,
                        cost_s: 0.0,
                        note: Some(format!(
                            "skipped: predicted {:.1} s, {:.1} s of budget left",
                            predicted.unwrap_or_default().as_secs_f64(),
                            left.as_secs_f64()
                        )),
                    });
                    continue;
                }
                batch.push(c);
                // Nothing is known of an unknown's cost until one finishes: it runs alone.
                if predicted.is_none() {
                    break;
                }
            }
            let started = std::time::Instant::now();
            let results: Vec<Result<Evaluation, Failed>> = std::thread::scope(|s| {
                let running: Vec<_> =
                    batch.iter().map(|&c| s.spawn(move || objective.evaluate(c, resource, left))).collect();
                running
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(Failed { why: "the evaluation panicked".into(), cost: started.elapsed() })
                        })
                    })
                    .collect()
            });
            let mut slowest = Duration::ZERO;
            for (&c, result) in batch.iter().zip(results) {
                match result {
                    Ok(e) => {
                        slowest = slowest.max(e.cost);
                        unit_cost[c] = Some(e.cost.as_secs_f64() / resource);
                        scored.push((c, e.score));
                        trials.push(Trial {
                            candidate: c,
                            rung,
                            resource,
                            score: Some(e.score),
                            cost_s: e.cost.as_secs_f64(),
                            note: None,
                        });
                    }
                    Err(f) => {
                        // What a failure cost is spent all the same, and is at least what the
                        // candidate would cost: the next unknown one is predicted from it.
                        slowest = slowest.max(f.cost);
                        unit_cost[c] = Some(f.cost.as_secs_f64() / resource);
                        trials.push(Trial {
                            candidate: c,
                            rung,
                            resource,
                            score: None,
                            cost_s: f.cost.as_secs_f64(),
                            note: Some(format!("failed: {}", f.why)),
                        })
                    }
                }
            }
            spent += slowest;
        }
        if scored.is_empty() {
            break;
        }
        // Best first; ties by candidate index, so the schedule is deterministic.
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        best = Some(scored[0].0);
        let keep = scored.len().div_ceil(eta);
        if scored.len() == 1 {
            break;
        }
        alive = scored.into_iter().take(keep).map(|(c, _)| c).collect();
    }
    Outcome { trials, best, spent_s: spent.as_secs_f64(), budget_s: budget.as_secs_f64() }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Candidate `i` scores `truth[i]` (plus a rung-dependent bias that shrinks with resource)
    /// and costs `unit[i] × resource` seconds on a simulated clock.
    struct Fake {
        truth: Vec<f64>,
        unit: Vec<f64>,
        calls: std::sync::Mutex<Vec<(usize, f64)>>,
    }

    impl Fake {
        fn calls(&self) -> Vec<(usize, f64)> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl Objective for Fake {
        fn evaluate(&self, index: usize, resource: f64, _allowed: Duration) -> Result<Evaluation, Failed> {
            self.calls.lock().unwrap().push((index, resource));
            if self.truth[index].is_nan() {
                return Err(Failed { why: "diverged".into(), cost: Duration::from_secs(1) });
            }
            Ok(Evaluation {
                score: self.truth[index] - 0.01 / resource,
                cost: Duration::from_secs_f64(self.unit[index] * resource),
            })
        }
    }

    fn fake(truth: &[f64]) -> Fake {
        Fake { truth: truth.to_vec(), unit: vec![1.0; truth.len()], calls: Default::default() }
    }

    fn schedule(eta: usize, rungs: usize, budget: f64) -> Schedule {
        Schedule { eta, rungs, workers: 1, budget: Duration::from_secs_f64(budget) }
    }

    #[test]
    fn halving_keeps_the_best_half_each_rung_and_finds_the_best() {
        let truth = [0.1, 0.7, 0.3, 0.9, 0.5, 0.2, 0.8, 0.4];
        let f = fake(&truth);
        let out = run(&f, 8, schedule(2, 4, 1000.0));
        let at = |r: f64| {
            let mut v: Vec<usize> = f.calls().iter().filter(|c| c.1 == r).map(|c| c.0).collect();
            v.sort();
            v
        };
        assert_eq!(at(1.0), (0..8).collect::<Vec<_>>());
        assert_eq!(at(2.0), [1, 3, 4, 6], "the best four of eight");
        assert_eq!(at(4.0), [3, 6]);
        assert_eq!(at(8.0), [3]);
        assert_eq!(out.best, Some(3));
        // 8×1 + 4×2 + 2×4 + 1×8 units.
        assert_eq!(out.spent_s, 32.0);
        assert_eq!(out.trials.len(), 15);
    }

    #[test]
    fn never_starts_what_the_budget_cannot_pay_for() {
        let truth = [0.1, 0.7, 0.3, 0.9, 0.5, 0.2, 0.8, 0.4];
        for budget in [3.0, 9.0, 15.0, 20.0, 31.0] {
            let f = fake(&truth);
            let out = run(&f, 8, schedule(2, 4, budget));
            assert!(out.spent_s <= budget, "spent {} of {budget}", out.spent_s);
            let skipped = out
                .trials
                .iter()
                .filter(|t| t.note.as_deref().is_some_and(|n| n.starts_with("skipped")))
                .count();
            assert!(skipped > 0, "a budget of {budget} cannot pay for all 32 units");
            // With the first rung paid for, the best so far is the best of what was seen.
            if budget >= 8.0 {
                assert_eq!(out.best, Some(3), "budget {budget}");
            }
        }
    }

    #[test]
    fn a_failing_candidate_is_recorded_and_dropped() {
        let f = fake(&[0.5, f64::NAN, 0.6, 0.4]);
        let out = run(&f, 4, schedule(2, 3, 100.0));
        let failed = out.trials.iter().find(|t| t.candidate == 1).unwrap();
        assert_eq!(failed.note.as_deref(), Some("failed: diverged"));
        assert_eq!(failed.cost_s, 1.0, "a failure's cost is charged");
        assert_eq!(out.spent_s, 4.0 + 2.0 * 2.0 + 4.0, "rung 0: four units, failure included");
        assert_eq!(out.best, Some(2));
        assert!(!f.calls().iter().any(|&(c, r)| c == 1 && r > 1.0));
    }

    #[test]
    fn expensive_candidates_are_predicted_from_their_own_cost() {
        let mut f = fake(&[0.9, 0.8, 0.1, 0.2]);
        f.unit = vec![10.0, 1.0, 1.0, 1.0];
        // 13 units for rung 0; rung 1 would need 20 for candidate 0 (skipped) and 2 for 1.
        let out = run(&f, 4, schedule(2, 3, 20.0));
        assert!(out.spent_s <= 20.0);
        let c0 = out.trials.iter().find(|t| t.candidate == 0 && t.rung == 1).unwrap();
        assert!(c0.note.as_deref().unwrap().starts_with("skipped: predicted 20.0 s"), "{c0:?}");
        assert!(f.calls().contains(&(1, 2.0)));
    }

    #[test]
    fn the_objectives_own_prediction_comes_first() {
        struct Knows(Fake);
        impl Objective for Knows {
            fn evaluate(&self, i: usize, r: f64, a: Duration) -> Result<Evaluation, Failed> {
                self.0.evaluate(i, r, a)
            }
            fn predict(&self, index: usize, resource: f64) -> Option<Duration> {
                Some(Duration::from_secs_f64(self.0.unit[index] * resource))
            }
        }
        // Candidate 3 costs 10 per unit: the schedule's own guess (the mean of what came
        // before, 1) would start it and overspend; the objective's prediction skips it.
        let mut f = fake(&[0.1, 0.2, 0.3, 0.9]);
        f.unit = vec![1.0, 1.0, 1.0, 10.0];
        let out = run(&Knows(f), 4, schedule(2, 2, 8.0));
        assert!(out.spent_s <= 8.0, "spent {}", out.spent_s);
        let c3 = out.trials.iter().find(|t| t.candidate == 3).unwrap();
        assert!(c3.note.as_deref().unwrap().starts_with("skipped: predicted 10.0 s"), "{c3:?}");
    }

    #[test]
    fn side_by_side_a_batch_costs_its_slowest_and_the_budget_holds() {
        let truth = [0.1, 0.7, 0.3, 0.9, 0.5, 0.2, 0.8, 0.4];
        let mut f = fake(&truth);
        f.unit = vec![1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0];
        let out = run(&f, 8, Schedule { workers: 2, ..schedule(2, 4, 1000.0) });
        assert_eq!(out.best, Some(3), "the same winner as one at a time");
        // Rung 0: the first runs alone (nothing known yet), then pairs (1,2) (3,4) (5,6) and 7
        // alone: 1 + 2 + 2 + 2 + 2 = 9. Rung 1, best first at 2x: (3,6) (1,4): 4 + 4 = 8.
        // Rung 2: (3,6) at 4x: max(8, 4) = 8. Rung 3: 3 at 8x: 16.
        assert_eq!(out.spent_s, 41.0);
        for budget in [5.0, 12.0, 20.0, 30.0] {
            let out = run(&f, 8, Schedule { workers: 2, ..schedule(2, 4, budget) });
            assert!(out.spent_s <= budget, "spent {} of {budget}", out.spent_s);
        }
    }
}
