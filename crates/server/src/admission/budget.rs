//! A request's latency budget, resolved by one rule: the `x-retort-budget-ms` header, else the
//! body's `budget_ms`, else the model's configured default, else the server's; cut to the
//! ceiling. The deadline it gives is counted from the request's arrival.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The configured defaults and ceiling (built by `Config::budgets`).
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetRules {
    /// A request that asks for none gets this (none: no deadline).
    pub default_ms: Option<f64>,
    /// Per model, overriding `default_ms`.
    pub per_model: BTreeMap<String, f64>,
    /// Larger budgets are cut to this.
    pub max_ms: f64,
}

impl Default for BudgetRules {
    fn default() -> Self {
        BudgetRules { default_ms: None, per_model: BTreeMap::new(), max_ms: 10_000.0 }
    }
}

/// What the request asked for, each already checked by [`positive`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Asked {
    pub header: Option<f64>,
    pub body: Option<f64>,
}

impl BudgetRules {
    /// The budget of a request to `model`, in milliseconds; `None`: no deadline.
    pub fn resolve(&self, asked: Asked, model: &str) -> Option<f64> {
        let configured = || self.per_model.get(model).copied().or(self.default_ms);
        asked.header.or(asked.body).or_else(configured).map(|b| b.min(self.max_ms))
    }

    /// The budget when the header alone settles it (the header wins over everything else), so
    /// that it is known before the body is read: what [`BudgetRules::resolve`] gives whatever
    /// the body and model turn out to be.
    pub fn from_header(&self, header: Option<f64>) -> Option<f64> {
        header.map(|h| h.min(self.max_ms))
    }
}

/// A budget that is not a positive number of milliseconds, named by where it came from.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field} must be a positive number of milliseconds, not {ms}")]
pub struct BudgetError {
    /// The header or body field it came from.
    pub field: &'static str,
    pub ms: f64,
}

/// Checks a budget the request asked for; `field` names the header or body field.
pub fn positive(field: &'static str, ms: f64) -> Result<f64, BudgetError> {
    if ms.is_finite() && ms > 0.0 { Ok(ms) } else { Err(BudgetError { field, ms }) }
}

/// When a request with `budget_ms` that arrived at `arrived` must be answered.
pub fn deadline(arrived: Instant, budget_ms: Option<f64>) -> Option<Instant> {
    budget_ms.map(|b| arrived + Duration::from_secs_f64(b / 1e3))
}

/// Share of a request's budget that waiting for the async workers may take before it is shed
/// unread: past it, the server is too far behind for the rest of the budget to be worth trying.
pub const LAG_SHARE: f64 = 0.5;

/// Whether a request with `budget_ms` is shed for the async workers' lag alone.
pub fn lagging(lag: Duration, budget_ms: Option<f64>) -> bool {
    budget_ms.is_some_and(|b| lag.as_secs_f64() * 1e3 >= b * LAG_SHARE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> BudgetRules {
        BudgetRules { default_ms: Some(50.0), per_model: [("slow".to_string(), 200.0)].into(), max_ms: 100.0 }
    }

    #[test]
    fn the_header_wins_then_the_body_then_the_model_then_the_server_all_cut_to_the_ceiling() {
        let r = rules();
        let asked = |header, body| Asked { header, body };
        assert_eq!(r.resolve(asked(Some(5.0), Some(7.0)), "slow"), Some(5.0));
        assert_eq!(r.resolve(asked(None, Some(7.0)), "slow"), Some(7.0));
        assert_eq!(r.resolve(asked(None, None), "slow"), Some(100.0), "the model's 200 is cut to 100");
        assert_eq!(r.resolve(asked(None, None), "other"), Some(50.0));
        assert_eq!(r.resolve(asked(Some(500.0), None), "other"), Some(100.0));
        assert_eq!(BudgetRules::default().resolve(asked(None, None), "m"), None);
    }

    /// The budget known before decoding is the one decoding would give, for any body and model.
    #[test]
    fn a_header_budget_is_final_before_the_body_is_read() {
        let r = rules();
        for header in [None, Some(1.0), Some(80.0), Some(1e6)] {
            for body in [None, Some(3.0), Some(1e6)] {
                for model in ["slow", "other"] {
                    if let Some(early) = r.from_header(header) {
                        assert_eq!(Some(early), r.resolve(Asked { header, body }, model));
                    }
                }
            }
        }
        assert_eq!(r.from_header(None), None);
    }

    #[test]
    fn only_positive_finite_budgets_are_taken() {
        assert_eq!(positive("budget_ms", 2.5), Ok(2.5));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let e = positive("budget_ms", bad).unwrap_err();
            assert!(e.to_string().starts_with("budget_ms must be a positive number"), "{e}");
        }
    }

    #[test]
    fn a_request_is_shed_for_lag_from_half_its_budget() {
        assert!(!lagging(Duration::from_millis(4), Some(10.0)));
        assert!(lagging(Duration::from_millis(5), Some(10.0)));
        assert!(!lagging(Duration::from_secs(60), None));
    }
}
