//! What a request gets when the full answer cannot make its deadline: the steps of the
//! model's degradation ladder, tried in order. Decided twice: on admission, from the predicted
//! queue wait and service time ([`admit`], [`plan`]), and again when an inference thread picks
//! the request up, from the time actually left ([`at_pickup`]); [`settle`] gives what the
//! answer then says. Every degradation decision is in this file.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::cost::Estimate;

/// One step of a degradation ladder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Score every candidate with the model's declared fallback (`[model] fallback`), a smaller
    /// student.
    Fallback,
    /// Score only as many candidates as fit, in the caller's `prior` order (else the order
    /// sent), with the full model; the rest follow them unscored.
    Truncate,
    /// Refuse with 429 and `Retry-After`.
    Shed,
}

/// The ladders, and what every step needs (file: `[degradation]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DegradationRules {
    /// The ladder of a model without one of its own.
    pub ladder: Vec<Step>,
    /// Per-model ladders (`[degradation.models] music-ranker = ["truncate", "shed"]`).
    pub models: BTreeMap<String, Vec<Step>>,
    /// Truncation scores at least this many candidates, or is not worth taking.
    pub min_scored: usize,
    /// Time kept back from every deadline for ranking and writing the response, in
    /// milliseconds.
    pub margin_ms: f64,
}

impl Default for DegradationRules {
    fn default() -> Self {
        DegradationRules {
            ladder: vec![Step::Fallback, Step::Truncate, Step::Shed],
            models: BTreeMap::new(),
            min_scored: 1,
            margin_ms: 2.0,
        }
    }
}

impl DegradationRules {
    pub fn ladder(&self, model: &str) -> &[Step] {
        self.models.get(model).unwrap_or(&self.ladder)
    }

    pub fn margin(&self) -> Duration {
        Duration::from_secs_f64(self.margin_ms.max(0.0) / 1e3)
    }
}

/// Why a request was degraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The full answer would not fit the budget even with no queue.
    Budget,
    /// It would, but not after waiting for an inference thread.
    Overload,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Budget => "budget",
            Reason::Overload => "overload",
        }
    }
}

/// What admission decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Full,
    Fallback(Reason),
    /// Score this many candidates.
    Truncate(usize, Reason),
    Shed(Reason),
}

/// What admission knows about a request.
#[derive(Debug, Clone, Copy)]
pub struct Situation {
    /// Until the deadline, less the margin.
    pub remaining: Duration,
    /// Predicted wait for an inference thread.
    pub wait: Duration,
    pub candidates: usize,
    /// The full model's cost; `None` until it has been measured.
    pub full: Option<Estimate>,
    /// The fallback's cost, when the model has a usable fallback that has been measured.
    pub fallback: Option<Estimate>,
}

/// Tries the ladder's steps in order. With no estimate of the full model's cost, the request
/// runs in full; when no step fits and the ladder has no `shed`, it runs late as the last step
/// it can take (in full only when it can take none).
pub fn admit(ladder: &[Step], min_scored: usize, s: &Situation) -> Admission {
    let Some(full) = s.full else { return Admission::Full };
    let n = s.candidates;
    let fits = |e: &Estimate, rows: usize| s.wait + e.predict(rows) <= s.remaining;
    if fits(&full, n) {
        return Admission::Full;
    }
    let reason = if full.predict(n) <= s.remaining { Reason::Overload } else { Reason::Budget };
    for step in ladder {
        match step {
            Step::Fallback => {
                if s.fallback.is_some_and(|fb| fits(&fb, n)) {
                    return Admission::Fallback(reason);
                }
            }
            Step::Truncate => {
                let k = full.affordable(s.remaining.saturating_sub(s.wait)).min(n);
                if k >= min_scored.max(1) && k < n {
                    return Admission::Truncate(k, reason);
                }
            }
            Step::Shed => return Admission::Shed(reason),
        }
    }
    // Nothing fits and the ladder never sheds: the request runs late, as its last step (the
    // ladder's least wanted answer), so that a larger budget can only do better.
    for step in ladder.iter().rev() {
        match step {
            Step::Fallback if s.fallback.is_some() => return Admission::Fallback(reason),
            Step::Truncate if min_scored.max(1) < n => return Admission::Truncate(min_scored.max(1), reason),
            _ => {}
        }
    }
    Admission::Full
}

/// What a response says when it is not the full model's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Degraded {
    pub reason: Reason,
    pub mode: Mode,
    /// Candidates scored; the others follow them unscored.
    pub scored: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Scored by the model's declared fallback.
    Fallback,
    /// The first `scored` candidates in prior order, scored by the full model.
    Truncated,
    /// The first `scored` candidates, scored by the fallback.
    FallbackTruncated,
}

impl Mode {
    /// The outcome metric's label.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Fallback => "fallback",
            Mode::Truncated => "truncated",
            Mode::FallbackTruncated => "fallback_truncated",
        }
    }
}

/// What admission's decision means for the answer: the version that answers (the model's,
/// or its fallback when admission chose it and one is served), how many candidates it scores,
/// and how the answer is degraded. `Err` when admission sheds the request.
pub fn plan<V>(
    admission: Admission,
    model: V,
    fallback: Option<V>,
    candidates: usize,
) -> Result<Planned<V>, Reason> {
    match (admission, fallback) {
        (Admission::Fallback(reason), Some(fallback)) => Ok(Planned {
            answering: fallback,
            scored: candidates,
            degraded: Some(Degraded { reason, mode: Mode::Fallback, scored: candidates }),
        }),
        (Admission::Truncate(k, reason), _) => Ok(Planned {
            answering: model,
            scored: k,
            degraded: Some(Degraded { reason, mode: Mode::Truncated, scored: k }),
        }),
        (Admission::Shed(reason), _) => Err(reason),
        _ => Ok(Planned { answering: model, scored: candidates, degraded: None }),
    }
}

/// An admitted request's plan (see [`plan`]).
#[derive(Debug, Clone)]
pub struct Planned<V> {
    pub answering: V,
    pub scored: usize,
    pub degraded: Option<Degraded>,
}

/// The answer's final degradation, once inference ran `ran` of the `planned` rows: as planned,
/// unless the pickup cut it shorter (for `cut`, else the budget), which truncates the full
/// model's answer and the fallback's alike. Admission's reason, when it degraded the request,
/// stays the reason.
pub fn settle(
    planned: Option<Degraded>,
    cut: Option<Reason>,
    planned_rows: usize,
    ran: usize,
) -> Option<Degraded> {
    if ran >= planned_rows {
        return planned;
    }
    let mode = match planned {
        Some(d) if d.mode == Mode::Fallback => Mode::FallbackTruncated,
        _ => Mode::Truncated,
    };
    let reason = planned.map_or(cut.unwrap_or(Reason::Budget), |d| d.reason);
    Some(Degraded { reason, mode, scored: ran })
}

/// What an inference thread does with a request it picks up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pickup {
    Run,
    /// Run only the first this many rows.
    Truncate(usize),
    /// Do not run it: the ladder sheds what cannot make its deadline.
    Shed,
}

/// Checks, with the time actually left, that `rows` still fit; if not, truncates or sheds as
/// the ladder allows (a fallback cannot step in here: its inputs were never encoded).
pub fn at_pickup(
    ladder: &[Step],
    min_scored: usize,
    remaining: Duration,
    rows: usize,
    cost: Option<Estimate>,
) -> Pickup {
    let Some(cost) = cost else { return Pickup::Run };
    if cost.predict(rows) <= remaining {
        return Pickup::Run;
    }
    for step in ladder {
        match step {
            Step::Fallback => {}
            Step::Truncate => {
                let k = cost.affordable(remaining).min(rows);
                if k >= min_scored.max(1) && k < rows {
                    return Pickup::Truncate(k);
                }
            }
            Step::Shed => return Pickup::Shed,
        }
    }
    Pickup::Run
}

#[cfg(test)]
mod tests {
    use super::*;

    const LADDER: [Step; 3] = [Step::Fallback, Step::Truncate, Step::Shed];

    fn ms(x: f64) -> Duration {
        Duration::from_secs_f64(x / 1e3)
    }

    /// 1 ms + 10 µs per candidate: 500 candidates take 6 ms.
    const FULL: Estimate = Estimate { fixed: 1e-3, per_candidate: 10e-6 };
    /// 0.2 ms + 1 µs per candidate: 500 candidates take 0.7 ms.
    const SMALL: Estimate = Estimate { fixed: 0.2e-3, per_candidate: 1e-6 };

    fn situation(remaining: f64, wait: f64) -> Situation {
        Situation {
            remaining: ms(remaining),
            wait: ms(wait),
            candidates: 500,
            full: Some(FULL),
            fallback: Some(SMALL),
        }
    }

    #[test]
    fn runs_in_full_when_it_fits_or_nothing_is_known() {
        assert_eq!(admit(&LADDER, 1, &situation(6.5, 0.0)), Admission::Full);
        assert_eq!(admit(&LADDER, 1, &Situation { full: None, ..situation(0.1, 9.0) }), Admission::Full);
    }

    #[test]
    fn takes_the_first_step_that_fits() {
        assert_eq!(admit(&LADDER, 1, &situation(3.0, 0.0)), Admission::Fallback(Reason::Budget));
        // Without a fallback: 3 ms hold 1 ms fixed + 200 candidates.
        let no_fallback = Situation { fallback: None, ..situation(3.0, 0.0) };
        assert_eq!(admit(&LADDER, 1, &no_fallback), Admission::Truncate(200, Reason::Budget));
        assert_eq!(
            admit(&LADDER, 250, &no_fallback),
            Admission::Shed(Reason::Budget),
            "fewer than min_scored"
        );
        assert_eq!(
            admit(&[Step::Truncate, Step::Fallback], 1, &situation(3.0, 0.0)),
            Admission::Truncate(200, Reason::Budget)
        );
        // 0.5 ms: neither fits.
        assert_eq!(admit(&LADDER, 1, &situation(0.5, 0.0)), Admission::Shed(Reason::Budget));
        // A ladder that never sheds runs late as its last step.
        assert_eq!(admit(&[Step::Fallback], 1, &situation(0.5, 0.0)), Admission::Fallback(Reason::Budget));
        let none = Situation { fallback: None, ..situation(0.5, 0.0) };
        assert_eq!(admit(&[Step::Fallback], 1, &none), Admission::Full, "no step applies");
        assert_eq!(admit(&[Step::Truncate], 1, &none), Admission::Truncate(1, Reason::Budget));
    }

    #[test]
    fn blames_the_queue_when_the_full_answer_alone_would_fit() {
        // 10 ms left, 8 ms of queue: the full model (6 ms) fits alone, not after the wait.
        assert_eq!(admit(&LADDER, 1, &situation(10.0, 8.0)), Admission::Fallback(Reason::Overload));
        assert_eq!(
            admit(&[Step::Truncate], 1, &situation(10.0, 8.0)),
            Admission::Truncate(100, Reason::Overload)
        );
        assert_eq!(admit(&LADDER, 1, &situation(10.0, 12.0)), Admission::Shed(Reason::Overload));
    }

    #[test]
    fn at_pickup_truncates_or_sheds_what_no_longer_fits() {
        assert_eq!(at_pickup(&LADDER, 1, ms(6.5), 500, Some(FULL)), Pickup::Run);
        assert_eq!(at_pickup(&LADDER, 1, ms(2.0), 500, Some(FULL)), Pickup::Truncate(100));
        assert_eq!(at_pickup(&LADDER, 1, ms(0.5), 500, Some(FULL)), Pickup::Shed);
        assert_eq!(at_pickup(&[Step::Fallback], 1, ms(0.5), 500, Some(FULL)), Pickup::Run);
        assert_eq!(at_pickup(&LADDER, 1, ms(0.5), 500, None), Pickup::Run);
    }

    /// How good an answer is by the ladder's own order: full, then each step as the ladder
    /// ranks it (a truncation better the more it scores), shed last.
    fn quality(ladder: &[Step], a: Admission, n: usize) -> usize {
        let rank = |step: Step| ladder.len() - ladder.iter().position(|s| *s == step).expect("a ladder step");
        match a {
            Admission::Shed(_) => 0,
            Admission::Truncate(k, _) => rank(Step::Truncate) * (n + 2) + k,
            Admission::Fallback(_) => rank(Step::Fallback) * (n + 2) + n + 1,
            Admission::Full => usize::MAX,
        }
    }

    // See: issue 14 (3): a larger budget must never get a worse answer than a smaller one.
    #[test]
    fn a_larger_budget_never_gets_a_worse_answer() {
        let ladders: [&[Step]; 4] = [
            &LADDER,
            &[Step::Truncate, Step::Shed],
            &[Step::Fallback, Step::Shed],
            &[Step::Truncate, Step::Fallback],
        ];
        for ladder in ladders {
            for fallback in [Some(SMALL), None] {
                for wait in [0.0, 0.5, 3.0, 8.0] {
                    let mut last = 0;
                    for tenth in 0..200 {
                        let s = Situation { fallback, ..situation(tenth as f64 / 10.0, wait) };
                        let q = quality(ladder, admit(ladder, 1, &s), s.candidates);
                        assert!(
                            q >= last,
                            "{ladder:?}, wait {wait} ms: {} ms got {q} after {last}",
                            tenth as f64 / 10.0
                        );
                        last = q;
                    }
                }
            }
        }
    }

    #[test]
    fn a_plan_takes_the_fallback_only_when_one_is_served() {
        let fb = plan(Admission::Fallback(Reason::Overload), "m", Some("fb"), 10).unwrap();
        assert_eq!((fb.answering, fb.scored), ("fb", 10));
        assert_eq!(
            fb.degraded,
            Some(Degraded { reason: Reason::Overload, mode: Mode::Fallback, scored: 10 })
        );
        let none = plan(Admission::Fallback(Reason::Overload), "m", None, 10).unwrap();
        assert_eq!((none.answering, none.degraded), ("m", None));
        let cut = plan(Admission::Truncate(4, Reason::Budget), "m", Some("fb"), 10).unwrap();
        assert_eq!(
            (cut.answering, cut.scored, cut.degraded.map(|d| d.mode)),
            ("m", 4, Some(Mode::Truncated))
        );
        assert_eq!(plan(Admission::Shed(Reason::Budget), "m", Some("fb"), 10).unwrap_err(), Reason::Budget);
        assert!(plan(Admission::Full, "m", Some("fb"), 10).unwrap().degraded.is_none());
    }

    #[test]
    fn settling_keeps_the_plan_unless_the_pickup_cut_it() {
        let fallback = Some(Degraded { reason: Reason::Overload, mode: Mode::Fallback, scored: 10 });
        assert_eq!(settle(fallback, None, 10, 10), fallback);
        assert_eq!(settle(None, None, 10, 10), None);
        assert_eq!(
            settle(fallback, Some(Reason::Budget), 10, 6),
            Some(Degraded { reason: Reason::Overload, mode: Mode::FallbackTruncated, scored: 6 })
        );
        assert_eq!(
            settle(None, Some(Reason::Overload), 10, 6),
            Some(Degraded { reason: Reason::Overload, mode: Mode::Truncated, scored: 6 })
        );
        let truncated = Some(Degraded { reason: Reason::Budget, mode: Mode::Truncated, scored: 8 });
        assert_eq!(
            settle(truncated, Some(Reason::Overload), 8, 3).map(|d| (d.reason, d.scored)),
            Some((Reason::Budget, 3))
        );
    }
}
