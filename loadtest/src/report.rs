//! What a phase measured: latency percentiles from an HDR histogram (microsecond resolution,
//! three significant figures), achieved rate, statuses, degraded answers by mode and answers by
//! version.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::driver::{Outcome, Run, Status};

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub label: String,
    /// Requests per second asked for.
    pub rate: f64,
    pub sent: u64,
    /// Requests per second answered (any status), over the phase.
    pub achieved_rate: f64,
    pub seconds: f64,
    /// Every answered request (any HTTP status).
    pub latency_ms: Percentiles,
    /// Only 200 answers.
    pub ok_latency_ms: Percentiles,
    /// Only refusals (429, 503).
    pub refused_latency_ms: Percentiles,
    /// Status (HTTP code, or `timeout`, `connection_failed`, `not_sent`) → count.
    pub statuses: BTreeMap<String, u64>,
    /// Degraded 200 answers by `degraded.mode`.
    pub degraded: BTreeMap<String, u64>,
    /// 200 answers by `version`.
    pub versions: BTreeMap<String, u64>,
    /// Anything but 200, 429 and 503: failures, not refusals.
    pub errors: u64,
    /// 429 and 503 answers without `Retry-After`.
    pub refusals_without_retry_after: u64,
    /// Latency quantiles from 0 to 99.99%, for plotting: `(quantile, ms)`.
    #[serde(skip)]
    pub curve: Vec<(f64, f64)>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

fn histogram<'a>(outcomes: impl Iterator<Item = &'a Outcome>) -> Histogram<u64> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds");
    for o in outcomes {
        h.saturating_record(o.latency.as_micros().max(1) as u64);
    }
    h
}

fn percentiles(h: &Histogram<u64>) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    let ms = |us: u64| us as f64 / 1e3;
    Percentiles {
        count: h.len(),
        p50: ms(h.value_at_quantile(0.5)),
        p90: ms(h.value_at_quantile(0.9)),
        p99: ms(h.value_at_quantile(0.99)),
        p999: ms(h.value_at_quantile(0.999)),
        max: ms(h.max()),
        mean: h.mean() / 1e3,
    }
}

impl Summary {
    pub fn of(label: impl Into<String>, run: &Run) -> Summary {
        let answered = || run.outcomes.iter().filter(|o| matches!(o.status, Status::Http(_)));
        let all = histogram(answered());
        let ok = histogram(answered().filter(|o| o.status == Status::Http(200)));
        let refused = histogram(answered().filter(|o| matches!(o.status, Status::Http(429 | 503))));
        let mut statuses = BTreeMap::new();
        let mut degraded = BTreeMap::new();
        let mut versions = BTreeMap::new();
        for o in &run.outcomes {
            *statuses.entry(o.status.label()).or_insert(0) += 1;
            if let Some(mode) = &o.degraded {
                *degraded.entry(mode.clone()).or_insert(0) += 1;
            }
            if let Some(v) = &o.version {
                *versions.entry(v.clone()).or_insert(0) += 1;
            }
        }
        let errors =
            run.outcomes.iter().filter(|o| !matches!(o.status, Status::Http(200 | 429 | 503))).count() as u64;
        let refusals_without_retry_after = run
            .outcomes
            .iter()
            .filter(|o| matches!(o.status, Status::Http(429 | 503)) && !o.retry_after)
            .count() as u64;
        let seconds = run.elapsed.as_secs_f64();
        let curve = if all.is_empty() {
            Vec::new()
        } else {
            // Evenly spaced in log(1 / (1 - q)): as much room for 99.9% as for 50%.
            (0..=80)
                .map(|i| 1.0 - 10f64.powf(-(i as f64) / 20.0))
                .map(|q| (q, all.value_at_quantile(q) as f64 / 1e3))
                .collect()
        };
        Summary {
            label: label.into(),
            rate: run.load.rate,
            sent: run.outcomes.len() as u64,
            achieved_rate: if seconds > 0.0 { all.len() as f64 / seconds } else { 0.0 },
            seconds,
            latency_ms: percentiles(&all),
            ok_latency_ms: percentiles(&ok),
            refused_latency_ms: percentiles(&refused),
            statuses,
            degraded,
            versions,
            errors,
            refusals_without_retry_after,
            curve,
        }
    }

    /// p99 of 200 answers.
    pub fn ok_p99(&self) -> Duration {
        Duration::from_secs_f64(self.ok_latency_ms.p99 / 1e3)
    }

    pub fn count(&self, status: &str) -> u64 {
        self.statuses.get(status).copied().unwrap_or(0)
    }
}

fn counts(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "-".into();
    }
    map.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ")
}

/// A Markdown table, a row per phase.
pub fn table(summaries: &[Summary]) -> String {
    let mut out = String::from(
        "| phase | rate asked | achieved | sent | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | 200 p99 ms | statuses | degraded | versions |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |\n",
    );
    for s in summaries {
        let l = &s.latency_ms;
        let _ = writeln!(
            out,
            "| {} | {:.0}/s | {:.0}/s | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} |",
            s.label,
            s.rate,
            s.achieved_rate,
            s.sent,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
            s.ok_latency_ms.p99,
            counts(&s.statuses),
            counts(&s.degraded),
            counts(&s.versions)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::{Arrivals, Load};

    fn outcome(ms: u64, code: u16) -> Outcome {
        Outcome {
            at: Duration::ZERO,
            latency: Duration::from_millis(ms),
            status: Status::Http(code),
            degraded: (code == 200 && ms > 90).then(|| "truncated".to_string()),
            version: (code == 200).then(|| "1".to_string()),
            retry_after: code == 429,
        }
    }

    #[test]
    fn counts_statuses_modes_and_percentiles() {
        let mut outcomes: Vec<Outcome> = (1..=100).map(|ms| outcome(ms, 200)).collect();
        outcomes.extend((0..10).map(|_| outcome(1, 429)));
        outcomes.push(Outcome { status: Status::Timeout, ..outcome(5000, 0) });
        let load = Load {
            rate: 111.0,
            arrivals: Arrivals::Constant,
            duration: Duration::from_secs(1),
            max_requests: 111,
            budget_header_ms: None,
            timeout: Duration::from_secs(5),
            max_in_flight: 10,
            seed: 0,
        };
        let s = Summary::of("steady", &Run { load, outcomes, elapsed: Duration::from_secs(1) });
        assert_eq!((s.sent, s.count("200"), s.count("429"), s.count("timeout")), (111, 100, 10, 1));
        assert_eq!(s.errors, 1, "the timeout");
        assert_eq!(s.refusals_without_retry_after, 0);
        assert_eq!(s.degraded.get("truncated"), Some(&10));
        assert_eq!(s.versions.get("1"), Some(&100));
        assert!((s.ok_latency_ms.p99 - 99.0).abs() < 0.1, "{:?}", s.ok_latency_ms);
        assert!((s.ok_latency_ms.p50 - 50.0).abs() < 0.1);
        assert_eq!(s.refused_latency_ms.count, 10);
        assert!((s.achieved_rate - 110.0).abs() < 1e-9, "answered, timeouts excluded");
        assert!(table(&[s]).contains("| steady | 111/s | 110/s | 111 |"));
    }
}
