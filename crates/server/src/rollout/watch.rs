//! The rollout's background thread: it watches the models directory for new versions (loading
//! them off the serving path, at low priority) and judges running canaries against the
//! serving version, retiring a canary that errs or slows down more than the rules allow.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::memory;
use super::registry::Rollout;
use retort_model::{engine, package};

/// When a canary is retired as failed: judged once it has served `min_requests`, comparing it
/// with the serving version over the same period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CanaryRules {
    pub min_requests: u64,
    /// The canary's p99 may be at most this multiple of the serving version's.
    pub max_p99_ratio: f64,
    /// The canary's error rate may exceed the serving version's by at most this much.
    pub max_error_rate_increase: f64,
}

impl Default for CanaryRules {
    fn default() -> Self {
        CanaryRules { min_requests: 200, max_p99_ratio: 1.5, max_error_rate_increase: 0.01 }
    }
}

impl CanaryRules {
    /// Why the canary fails, judged on (requests, errors, p99) of the canary and of the
    /// serving version over the same period, with the verdict (`error_rate` or `p99`); `None`
    /// while it passes or has too few requests.
    pub fn judge(
        &self,
        canary: (u64, u64, Option<Duration>),
        serving: (u64, u64, Option<Duration>),
    ) -> Option<(&'static str, String)> {
        let (requests, _, p99) = canary;
        if requests < self.min_requests {
            return None;
        }
        let rate = |(r, e, _): (u64, u64, Option<Duration>)| e as f64 / r.max(1) as f64;
        let (canary_rate, serving_rate) = (rate(canary), rate(serving));
        if canary_rate - serving_rate > self.max_error_rate_increase {
            return Some((
                "error_rate",
                format!(
                    "canary error rate {:.2}% over {requests} requests against {:.2}% serving (allowed +{:.2}%)",
                    canary_rate * 100.0,
                    serving_rate * 100.0,
                    self.max_error_rate_increase * 100.0
                ),
            ));
        }
        if let (Some(c), Some(s)) = (p99, serving.2)
            && serving.0 >= self.min_requests / 4
            && c.as_secs_f64() > s.as_secs_f64() * self.max_p99_ratio
        {
            return Some((
                "p99",
                format!(
                    "canary p99 {:.2} ms against {:.2} ms serving (allowed {}x)",
                    c.as_secs_f64() * 1e3,
                    s.as_secs_f64() * 1e3,
                    self.max_p99_ratio
                ),
            ));
        }
        None
    }
}

/// Runs until `stop`: every `poll` (never when zero) looks for new versions, every 250 ms
/// judges canaries, and in between runs the loads the admin API asks for.
pub fn run(rollout: Arc<Rollout>, poll: Duration, rules: CanaryRules, stop: Arc<AtomicBool>) {
    lower_priority();
    let mut last_poll = Instant::now();
    // Retirements seen, and whether every thread had let go of their run states then.
    let mut released = (0, true);
    while !stop.load(Ordering::Relaxed) {
        if !poll.is_zero() && last_poll.elapsed() >= poll {
            last_poll = Instant::now();
            // Catalogs first: a model version found in the same poll warms on the new items.
            rollout.refresh_items();
            discover(&rollout);
        }
        judge_canaries(&rollout, &rules);
        engine::release_retired_states();
        // Trimmed once when a version retires and again when the inference threads have
        // dropped its run states, which hold its compiled plans until then.
        let now = (rollout.retirements.load(Ordering::Relaxed), engine::retired_states_pending() == 0);
        if now != released {
            released = now;
            memory::release_freed();
        }
        // Loads asked for through the admin API, as they come; otherwise a pause.
        if let Some(load) = rollout.next_load(Duration::from_millis(250)) {
            let _ = load.reply.send(rollout.load(&load.name, &load.version));
        }
    }
}

/// Loads the newest version of each model if it is newer than what serves and not seen yet.
pub fn discover(rollout: &Rollout) {
    let latest = match package::latest(rollout.models_dir()) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the models directory");
            return;
        }
    };
    let table = rollout.routes.load_full();
    for (name, p) in latest {
        let newer = table
            .routes
            .get(&name)
            .is_none_or(|r| package::compare_versions(&p.version, r.serving.version()).is_gt());
        if newer && rollout.should_try(&name, &p.version) {
            tracing::info!(model = %name, version = %p.version, policy = ?rollout.policy_of(&name), "new version found");
            if let Err(e) = rollout.load(&name, &p.version) {
                tracing::error!(model = %name, version = %p.version, error = %e, "new version not taken");
            }
        }
    }
}

fn judge_canaries(rollout: &Rollout, rules: &CanaryRules) {
    let table = rollout.routes.load_full();
    for (name, route) in &table.routes {
        let Some(canary) = &route.canary else { continue };
        let snapshot =
            |s: &crate::rollout::stats::VersionStats| (s.requests(), s.errors(), s.latency_quantile(0.99));
        if let Some((verdict, reason)) =
            rules.judge(snapshot(&canary.to.stats), snapshot(&route.serving.stats))
        {
            rollout.events.verdict(name, verdict);
            rollout.fail_canary(name, canary.to.version(), reason);
        }
    }
}

/// Loading and compiling a model competes with serving for the CPU: the calling thread yields
/// to it.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        unsafe extern "C" {
            fn setpriority(which: i32, who: u32, prio: i32) -> i32;
        }
        const PRIO_PROCESS: i32 = 0;
        // SAFETY: setpriority only changes this thread's nice value (who = 0 on Linux is the
        // calling thread); a failure leaves the priority as it was, which is harmless.
        unsafe {
            setpriority(PRIO_PROCESS, 0, 10);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_canary_fails_on_errors_or_slowness_once_it_has_enough_requests() {
        let rules = CanaryRules { min_requests: 100, max_p99_ratio: 1.5, max_error_rate_increase: 0.01 };
        let ms = |m: u64| Some(Duration::from_millis(m));
        assert_eq!(rules.judge((50, 50, ms(9)), (1000, 0, ms(1))), None, "too few requests to judge");
        assert_eq!(rules.judge((200, 2, ms(1)), (1000, 10, ms(1))), None, "same error rate");
        let (verdict, errs) = rules.judge((200, 10, ms(1)), (1000, 10, ms(1))).unwrap();
        assert_eq!(verdict, "error_rate");
        assert!(errs.contains("5.00%") && errs.contains("1.00%"), "{errs}");
        let (verdict, slow) = rules.judge((200, 0, ms(4)), (1000, 0, ms(2))).unwrap();
        assert_eq!(verdict, "p99");
        assert!(slow.contains("4.00 ms") && slow.contains("2.00 ms"), "{slow}");
        assert_eq!(rules.judge((200, 0, ms(2)), (1000, 0, ms(2))), None);
    }
}
