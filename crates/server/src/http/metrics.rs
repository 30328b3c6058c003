//! Prometheus metrics: every name in this file (the rollout's in `rollout/events.rs`), units in the names, label values from small
//! fixed sets (model, version, outcome code, stage, feature name from the manifest).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::LazyLock;

use crate::histogram::Histogram;
use crate::rollout::events::RolloutEvents;

pub const RANK_DURATION_SECONDS: &str = "retort_rank_duration_seconds";
pub const RANK_STAGE_DURATION_SECONDS: &str = "retort_rank_stage_duration_seconds";
pub const RANK_CANDIDATES: &str = "retort_rank_candidates";
/// Registered without `_total`: the client appends it to counters.
pub const MISSING_FEATURES: &str = "retort_missing_features";
pub const INFERENCE_QUEUE_DEPTH: &str = "retort_inference_queue_depth";
/// Registered without `_total`: the client appends it to counters.
pub const INFERENCE_INLINE: &str = "retort_inference_inline";
pub const MODELS_LOADED: &str = "retort_models_loaded";
/// Registered without `_total`: the client appends it to counters.
pub const RANK_OUTCOMES: &str = "retort_rank_outcomes";
pub const COST_PREDICTION_RATIO: &str = "retort_cost_prediction_ratio";
pub const CONNECTIONS_OPEN: &str = "retort_connections_open";
/// Registered without `_total`: the client appends it to counters.
pub const CATALOG_MISSES: &str = "retort_catalog_misses";
/// Registered without `_total`: the client appends it to counters.
pub const CONNECTIONS_CLOSED: &str = "retort_connections_closed";

/// Registered without `_total`: the client appends it to counters.
pub const IMPRESSION_ROWS: &str = "retort_impression_rows";
/// Registered without `_total`: the client appends it to counters.
pub const FEEDBACK_ROWS: &str = "retort_feedback_rows";
/// Registered without `_total`: the client appends it to counters.
pub const IMPRESSION_PARTITIONS: &str = "retort_impression_partitions";
/// Registered without `_total`: the client appends it to counters.
pub const IMPRESSION_WRITE_ERRORS: &str = "retort_impression_write_errors";

/// What became of impression rows.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FateLabels {
    /// `offered` (handed to the log, dropped ones included), `dropped` (refused by a full queue, or lost with
    /// a partition that failed to write), `written` (in a complete partition).
    pub fate: &'static str,
}

/// Why the server closed (or never served) a connection.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    /// `refused` (at the limit, every connection busy), `idle_evicted` (closed to make room
    /// for a new one), `header_timeout` (headers not read in time).
    pub reason: &'static str,
}

/// What became of a rank request, as far as its budget goes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub model: String,
    pub version: String,
    /// `full` (answered by the model in full); degraded to fit its deadline: `fallback`,
    /// `truncated`, `fallback_truncated`; `shed` (refused: queue full, or the ladder shed it);
    /// `expired` (its deadline passed before inference began); `cancelled` (its client went
    /// away); `error`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RankLabels {
    pub model: String,
    pub version: String,
    /// `ok` or the error code.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub model: String,
    pub stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CatalogLabels {
    pub model: String,
    pub catalog: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FeatureLabels {
    pub model: String,
    pub feature: String,
}

/// Every value of [`OutcomeLabels::outcome`].
pub const OUTCOMES: [&str; 8] =
    ["full", "fallback", "truncated", "fallback_truncated", "shed", "expired", "cancelled", "error"];

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latency bucket bounds in microseconds, 25 µs to 10 s: steps of about 1.5x, rounded so the
/// `le` labels read cleanly. Fine enough to tell a 300 µs inference from a 400 µs one, wide
/// enough to see a stall.
const LATENCY_BUCKETS_US: [u32; 31] = [
    25, 50, 75, 100, 150, 200, 300, 400, 500, 750, 1_000, 1_500, 2_000, 3_000, 4_000, 5_000, 7_500, 10_000,
    15_000, 20_000, 30_000, 50_000, 75_000, 100_000, 250_000, 500_000, 1_000_000, 2_000_000, 3_000_000,
    5_000_000, 10_000_000,
];

static LATENCY_SECONDS: LazyLock<Vec<f64>> =
    LazyLock::new(|| LATENCY_BUCKETS_US.iter().map(|&us| us as f64 / 1e6).collect());

fn latency_histogram() -> Histogram {
    Histogram::new(&LATENCY_SECONDS)
}

/// Actual over predicted: 1 is a perfect prediction.
fn ratio_histogram() -> Histogram {
    static RATIOS: [f64; 11] = [0.25, 0.5, 0.75, 0.9, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0];
    Histogram::new(&RATIOS)
}

fn candidates_histogram() -> Histogram {
    static CANDIDATES: [f64; 9] = [1.0, 10.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0];
    Histogram::new(&CANDIDATES)
}

pub struct Metrics {
    registry: Registry,
    pub rank_duration: Histograms<RankLabels>,
    pub stage_duration: Histograms<StageLabels>,
    pub candidates: Histograms<ModelLabels>,
    pub missing_features: Family<FeatureLabels, Counter>,
    pub catalog_misses: Family<CatalogLabels, Counter>,
    pub queue_depth: Gauge,
    pub inline_inference: Counter,
    pub models_loaded: Gauge,
    pub outcomes: Family<OutcomeLabels, Counter>,
    pub cost_prediction: Histograms<ModelLabels>,
    pub connections_open: Gauge,
    pub connections_closed: Family<ConnectionLabels, Counter>,
    pub impression_rows: Family<FateLabels, Counter>,
    pub feedback_rows: Family<FateLabels, Counter>,
    pub impression_partitions: Counter,
    pub impression_write_errors: Counter,
}

impl Metrics {
    /// The server's metrics, with the rollout's `events` registered beside them.
    pub fn new(events: &RolloutEvents) -> Metrics {
        let mut registry = Registry::default();
        events.register(&mut registry);
        let rank_duration: Histograms<RankLabels> = Family::new_with_constructor(latency_histogram);
        let stage_duration: Histograms<StageLabels> = Family::new_with_constructor(latency_histogram);
        let candidates: Histograms<ModelLabels> = Family::new_with_constructor(candidates_histogram);
        let missing_features = Family::<FeatureLabels, Counter>::default();
        let catalog_misses = Family::<CatalogLabels, Counter>::default();
        let queue_depth = Gauge::default();
        let inline_inference = Counter::default();
        let models_loaded = Gauge::default();
        let outcomes = Family::<OutcomeLabels, Counter>::default();
        let cost_prediction: Histograms<ModelLabels> = Family::new_with_constructor(ratio_histogram);
        registry.register(
            RANK_OUTCOMES,
            "Rank requests by what became of them: full, fallback, truncated, fallback_truncated, shed, \
             expired, cancelled or error",
            outcomes.clone(),
        );
        registry.register(
            COST_PREDICTION_RATIO,
            "A request's service time (encoding and inference) over the time admission control predicted",
            cost_prediction.clone(),
        );
        registry.register(
            RANK_DURATION_SECONDS,
            "Time from receiving a rank request to its response, by model, version and outcome",
            rank_duration.clone(),
        );
        registry.register(
            RANK_STAGE_DURATION_SECONDS,
            "Time spent per stage of a successful rank request (decode, encode, queue, infer, rank)",
            stage_duration.clone(),
        );
        registry.register(RANK_CANDIDATES, "Candidates per rank request", candidates.clone());
        registry.register(
            MISSING_FEATURES,
            "Feature values missing from requests and replaced by the manifest's default",
            missing_features.clone(),
        );
        registry.register(
            CATALOG_MISSES,
            "Candidates whose id the model's catalog lacks, answered with the manifest's defaults",
            catalog_misses.clone(),
        );
        registry.register(
            INFERENCE_QUEUE_DEPTH,
            "Requests waiting for an inference thread",
            queue_depth.clone(),
        );
        registry.register(
            INFERENCE_INLINE,
            "Rank requests whose inference ran on the thread that decoded them, the pool being idle \
             (inline_inference)",
            inline_inference.clone(),
        );
        registry.register(MODELS_LOADED, "Models loaded and serving", models_loaded.clone());
        let connections_open = Gauge::default();
        let connections_closed = Family::<ConnectionLabels, Counter>::default();
        registry.register(CONNECTIONS_OPEN, "Client connections open", connections_open.clone());
        registry.register(
            CONNECTIONS_CLOSED,
            "Connections the server closed or refused: refused, idle_evicted, header_timeout",
            connections_closed.clone(),
        );
        let impression_rows = Family::<FateLabels, Counter>::default();
        let impression_partitions = Counter::default();
        let feedback_rows = Family::<FateLabels, Counter>::default();
        registry.register(
            FEEDBACK_ROWS,
            "Feedback events by fate: offered, dropped (queue full: the request was refused) or written",
            feedback_rows.clone(),
        );
        let impression_write_errors = Counter::default();
        registry.register(
            IMPRESSION_ROWS,
            "Impression rows (shown candidates) by fate: offered, dropped (queue full or write failed), written",
            impression_rows.clone(),
        );
        registry.register(
            IMPRESSION_PARTITIONS,
            "Impression partitions completed and renamed into place",
            impression_partitions.clone(),
        );
        registry.register(
            IMPRESSION_WRITE_ERRORS,
            "Impression partitions that failed to write (each named in the server's log)",
            impression_write_errors.clone(),
        );
        Metrics {
            registry,
            impression_rows,
            feedback_rows,
            impression_partitions,
            impression_write_errors,
            rank_duration,
            stage_duration,
            candidates,
            missing_features,
            catalog_misses,
            queue_depth,
            inline_inference,
            models_loaded,
            outcomes,
            cost_prediction,
            connections_open,
            connections_closed,
        }
    }

    /// Removes every series of `model/version`: a retired version's series would otherwise
    /// stay in every scrape forever, one more set with each publish.
    pub fn forget_version(&self, model: &str, version: &str) {
        let labels = || ModelLabels { model: model.to_string(), version: version.to_string() };
        for outcome in std::iter::once("ok").chain(super::error::ApiError::CODES.iter().copied()) {
            let ModelLabels { model, version } = labels();
            self.rank_duration.remove(&RankLabels { model, version, outcome });
        }
        for outcome in OUTCOMES {
            let ModelLabels { model, version } = labels();
            self.outcomes.remove(&OutcomeLabels { model, version, outcome });
        }
        self.candidates.remove(&labels());
        self.cost_prediction.remove(&labels());
    }

    /// Brings the impression log's counters, kept by its writer, into the exported ones.
    pub fn sync_impressions(&self, counters: &retort_log::Counters) {
        use std::sync::atomic::Ordering::Acquire;
        catch_up_fates(&self.impression_rows, counters);
        catch_up(&self.impression_partitions, counters.partitions.load(Acquire));
        catch_up(&self.impression_write_errors, counters.write_errors.load(Acquire));
    }

    /// Brings the feedback log's row counters into the exported ones.
    pub fn sync_feedback(&self, counters: &retort_log::Counters) {
        catch_up_fates(&self.feedback_rows, counters);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail. This is a bug.");
        out
    }
}

/// Raises a counter kept elsewhere (a log's writer keeps its own atomics) to `now`.
fn catch_up(counter: &Counter, now: u64) {
    let seen = counter.get();
    if now > seen {
        counter.inc_by(now - seen);
    }
}

fn catch_up_fates(family: &Family<FateLabels, Counter>, counters: &retort_log::Counters) {
    use std::sync::atomic::Ordering::Acquire;
    for (fate, n) in
        [("offered", &counters.offered), ("dropped", &counters.dropped), ("written", &counters.written)]
    {
        catch_up(&family.get_or_create(&FateLabels { fate }), n.load(Acquire));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // See: issue 15 (4).
    #[test]
    fn a_forgotten_version_leaves_no_series() {
        let m = Metrics::new(&RolloutEvents::default());
        for (version, outcome) in [("1", "ok"), ("1", "shed"), ("2", "ok")] {
            m.rank_duration
                .get_or_create(&RankLabels { model: "m".into(), version: version.into(), outcome })
                .observe(1e-3);
            m.outcomes
                .get_or_create(&OutcomeLabels { model: "m".into(), version: version.into(), outcome: "full" })
                .inc();
            m.candidates
                .get_or_create(&ModelLabels { model: "m".into(), version: version.into() })
                .observe(5.0);
        }
        m.forget_version("m", "1");
        let text = m.render();
        assert!(!text.contains("version=\"1\""), "{text}");
        assert!(text.contains("version=\"2\""), "{text}");
    }

    #[test]
    fn histogram_names_carry_their_unit() {
        for name in [RANK_DURATION_SECONDS, RANK_STAGE_DURATION_SECONDS] {
            assert!(name.ends_with("_seconds"), "{name}");
        }
        let m = Metrics::new(&RolloutEvents::default());
        m.rank_duration
            .get_or_create(&RankLabels { model: "m".into(), version: "1".into(), outcome: "ok" })
            .observe(40e-6);
        let text = m.render();
        // 40 µs lands in the second bucket (25, 50 µs).
        let bucket = |le: &str, n: u32| {
            format!(
                "retort_rank_duration_seconds_bucket{{le=\"{le}\",model=\"m\",version=\"1\",outcome=\"ok\"}} {n}\n"
            )
        };
        assert!(text.contains(&bucket("0.000025", 0)), "{text}");
        assert!(text.contains(&bucket("0.00005", 1)), "{text}");
        assert!(text.contains(&bucket("10.0", 1)), "{text}");
    }
}
