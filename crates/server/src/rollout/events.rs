//! What the rollout did, for Prometheus: swaps of the routing, loads and how long they took,
//! failed loads by the step that refused them, the canary judge's verdicts, and versions by
//! state. Labelled by model, never by version, so the series do not grow with each publish.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::histogram::Histogram;

/// Registered without `_total`: the client appends it to counters.
pub const SWAPS: &str = "retort_rollout_swaps";
pub const LOADS: &str = "retort_rollout_loads";
pub const LOAD_SECONDS: &str = "retort_rollout_load_duration_seconds";
pub const FAILED_LOADS: &str = "retort_rollout_failed_loads";
pub const CANARY_VERDICTS: &str = "retort_rollout_canary_verdicts";
pub const VERSIONS: &str = "retort_rollout_versions";
/// Registered without `_total`: the client appends it to counters.
pub const CATALOG_SWAPS: &str = "retort_catalog_swaps";
pub const CATALOG_REFUSED: &str = "retort_catalog_refused";
pub const CATALOG_ITEMS: &str = "retort_catalog_items";

/// What changed the routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Swap {
    Promote,
    Rollback,
    /// A canary's or shadow's share set or ended by an operator.
    Split,
    /// The canary judge ended a canary.
    CanaryFailed,
}

impl Swap {
    fn as_str(self) -> &'static str {
        match self {
            Swap::Promote => "promote",
            Swap::Rollback => "rollback",
            Swap::Split => "split",
            Swap::CanaryFailed => "canary_failed",
        }
    }
}

/// What made a catalog version serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CatalogSwap {
    /// A newer version found in the catalogs directory.
    New,
    /// A version an operator loaded.
    Load,
    Rollback,
}

impl CatalogSwap {
    fn as_str(self) -> &'static str {
        match self {
            CatalogSwap::New => "new",
            CatalogSwap::Load => "load",
            CatalogSwap::Rollback => "rollback",
        }
    }
}

/// The step of a load that refused a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadFailure {
    /// The package's files: outside the models directory, too large, unreadable.
    Package,
    /// The manifest, the graph, the golden examples, or compatibility with the serving version.
    Invalid,
    /// Replaying recent requests: outputs out of range, or too slow against the serving version.
    WarmUp,
}

impl LoadFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            LoadFailure::Package => "package",
            LoadFailure::Invalid => "invalid",
            LoadFailure::WarmUp => "warm_up",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabel {
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SwapLabels {
    pub model: String,
    /// `promote`, `rollback`, `split`, `canary_failed`.
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub model: String,
    /// `package`, `invalid`, `warm_up`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    pub model: String,
    /// Why the judge failed a canary: `error_rate` or `p99`.
    pub verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CatalogLabel {
    pub catalog: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CatalogSwapLabels {
    pub catalog: String,
    /// `new`, `load`, `rollback`.
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub model: String,
    pub state: &'static str,
}

/// Loads take from milliseconds (a small student) to minutes (a large graph on a busy core).
fn load_histogram() -> Histogram {
    static SECONDS: [f64; 12] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];
    Histogram::new(&SECONDS)
}

/// Cheap clones share the counts, so the rollout counts and the server's registry reads.
#[derive(Clone)]
pub struct RolloutEvents {
    pub swaps: Family<SwapLabels, Counter>,
    /// Versions loaded, validated and warmed (staged).
    pub loads: Family<ModelLabel, Counter>,
    pub load_seconds: Family<ModelLabel, Histogram, fn() -> Histogram>,
    pub failed_loads: Family<FailureLabels, Counter>,
    pub canary_verdicts: Family<VerdictLabels, Counter>,
    /// Set at each scrape from the records ([`RolloutEvents::set_versions`]).
    pub versions: Family<StateLabels, Gauge>,
    pub catalog_swaps: Family<CatalogSwapLabels, Counter>,
    pub catalog_refused: Family<CatalogLabel, Counter>,
    /// Items in each catalog's serving version.
    pub catalog_items: Family<CatalogLabel, Gauge>,
}

impl Default for RolloutEvents {
    fn default() -> Self {
        RolloutEvents {
            swaps: Family::default(),
            loads: Family::default(),
            load_seconds: Family::new_with_constructor(load_histogram),
            failed_loads: Family::default(),
            canary_verdicts: Family::default(),
            versions: Family::default(),
            catalog_swaps: Family::default(),
            catalog_refused: Family::default(),
            catalog_items: Family::default(),
        }
    }
}

impl RolloutEvents {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            SWAPS,
            "Atomic swaps of a model's routing, by operation: promote, rollback, split, canary_failed",
            self.swaps.clone(),
        );
        registry.register(LOADS, "Versions loaded, validated and warmed", self.loads.clone());
        registry.register(
            LOAD_SECONDS,
            "Time to load, validate and warm a version that was then staged",
            self.load_seconds.clone(),
        );
        registry.register(
            FAILED_LOADS,
            "Versions refused while loading, by the step that refused them: package, invalid, warm_up",
            self.failed_loads.clone(),
        );
        registry.register(
            CANARY_VERDICTS,
            "Canaries the judge ended as failed, by verdict: error_rate or p99",
            self.canary_verdicts.clone(),
        );
        registry.register(VERSIONS, "Versions the server knows, by state", self.versions.clone());
        registry.register(
            CATALOG_SWAPS,
            "Catalog versions swapped in, by operation: new, load, rollback",
            self.catalog_swaps.clone(),
        );
        registry.register(
            CATALOG_REFUSED,
            "Catalog versions refused (unreadable, cut short, a checksum or an id that disagrees)",
            self.catalog_refused.clone(),
        );
        registry.register(
            CATALOG_ITEMS,
            "Items in each catalog's serving version",
            self.catalog_items.clone(),
        );
    }

    pub fn catalog_swapped(&self, catalog: &str, how: CatalogSwap, items: usize) {
        let labels = CatalogSwapLabels { catalog: catalog.to_string(), operation: how.as_str() };
        self.catalog_swaps.get_or_create(&labels).inc();
        self.catalog_items.get_or_create(&CatalogLabel { catalog: catalog.to_string() }).set(items as i64);
    }

    pub fn catalog_refused(&self, catalog: &str) {
        self.catalog_refused.get_or_create(&CatalogLabel { catalog: catalog.to_string() }).inc();
    }

    pub fn swapped(&self, model: &str, swap: Swap) {
        self.swaps.get_or_create(&SwapLabels { model: model.to_string(), operation: swap.as_str() }).inc();
    }

    pub fn loaded(&self, model: &str, seconds: f64) {
        let label = ModelLabel { model: model.to_string() };
        self.loads.get_or_create(&label).inc();
        self.load_seconds.get_or_create(&label).observe(seconds);
    }

    pub fn failed(&self, model: &str, failure: LoadFailure) {
        let labels = FailureLabels { model: model.to_string(), reason: failure.as_str() };
        self.failed_loads.get_or_create(&labels).inc();
    }

    pub fn verdict(&self, model: &str, verdict: &'static str) {
        self.canary_verdicts.get_or_create(&VerdictLabels { model: model.to_string(), verdict }).inc();
    }

    /// Replaces the versions-by-state gauges with `counts` (a state absent from it has none).
    pub fn set_versions<'a>(&self, counts: impl IntoIterator<Item = (&'a str, &'static str, i64)>) {
        self.versions.clear();
        for (model, state, n) in counts {
            self.versions.get_or_create(&StateLabels { model: model.to_string(), state }).set(n);
        }
    }
}
