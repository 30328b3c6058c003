//! The registry of model versions and the operations that change what serves.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use super::events::{LoadFailure, RolloutEvents, Swap};
use super::stats::VersionStats;
use super::warmup::{WarmupRing, replay, warm_up};
use crate::rollout::routes::{ItemsFor, Role, Route, Routes, Served, Split};
use retort_model::engine::EngineKind;
use retort_model::item_tower::ItemVectors;
use retort_model::manifest::Manifest;
use retort_model::{Model, package};

/// What happens to a new version once it has loaded, validated and warmed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// It is promoted to serving.
    #[default]
    Auto,
    /// It waits, loaded, for an operator to promote, canary or shadow it.
    Manual,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Loading,
    /// Loaded, validated and warm; serving nothing yet.
    Staged,
    /// Scoring a share of requests off the critical path.
    Shadow,
    /// Answering a share of users.
    Canary,
    Serving,
    /// The last known-good version, kept loaded for a rollback.
    Previous,
    Retired,
    Failed,
}

impl State {
    pub const ALL: [State; 8] = [
        State::Loading,
        State::Staged,
        State::Shadow,
        State::Canary,
        State::Serving,
        State::Previous,
        State::Retired,
        State::Failed,
    ];

    /// As serialised (and as the versions-by-state metric's label).
    pub fn as_str(self) -> &'static str {
        match self {
            State::Loading => "loading",
            State::Staged => "staged",
            State::Shadow => "shadow",
            State::Canary => "canary",
            State::Serving => "serving",
            State::Previous => "previous",
            State::Retired => "retired",
            State::Failed => "failed",
        }
    }
}

/// One version as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct VersionInfo {
    pub name: String,
    pub version: String,
    pub state: State,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loaded_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_ms: Option<u64>,
    /// Canary or shadow share.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<u8>,
    pub requests: u64,
    pub errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_us: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_us: Option<u64>,
    /// As a shadow: agreement with the serving version's rankings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<crate::rollout::shadow::AgreementSummary>,
    /// For a loaded model with an item tower: the catalog versions its items' tower outputs
    /// are computed for, and the bytes they hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item_vectors: Option<ItemVectorsInfo>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ItemVectorsInfo {
    pub catalogs: Vec<String>,
    pub bytes: usize,
}

struct Record {
    state: State,
    reason: Option<String>,
    loaded_at: Option<SystemTime>,
    load_ms: Option<u64>,
    percent: Option<u8>,
    /// The loaded version, while it is staged, shadow, canary, serving or previous.
    served: Option<Arc<Served>>,
    /// What it served, kept after it is unloaded.
    stats: Option<Arc<VersionStats>>,
    /// Its files when it was loaded (or failed to).
    stamp: Option<package::FileStamp>,
}

impl Record {
    fn new(state: State) -> Record {
        Record {
            state,
            reason: None,
            loaded_at: None,
            load_ms: None,
            percent: None,
            served: None,
            stats: None,
            stamp: None,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RolloutError {
    #[error("no package {name}/{version} in the models directory")]
    Unknown { name: String, version: String },
    #[error("{name}/{version} is {state:?}; {wanted}")]
    WrongState { name: String, version: String, state: State, wanted: &'static str },
    #[error("{name}/{version} cannot be served: {reason}")]
    Invalid { name: String, version: String, reason: String },
    #[error("{name} has no previous version to roll back to")]
    NothingToRollBack { name: String },
    #[error("percent must be 1..=100, not {0}")]
    Percent(u32),
}

/// Every version the server has seen, and the routing snapshot requests read.
pub struct Rollout {
    /// What requests read: one atomic load per request.
    pub routes: ArcSwap<Routes>,
    /// The item catalogs candidates are looked up in.
    pub items: super::items::Items,
    /// Recent requests per model, replayed to new versions.
    pub warmup: WarmupRing,
    latency_factor: f64,
    #[cfg(feature = "test-hooks")]
    inference_delays: BTreeMap<String, retort_model::InferenceDelay>,
    models_dir: PathBuf,
    /// The largest `model.onnx` staged; a larger one is refused before it is read.
    max_model_bytes: u64,
    engine: EngineKind,
    policy: Policy,
    policies: BTreeMap<String, Policy>,
    records: Mutex<BTreeMap<(String, String), Record>>,
    /// What the rollout did, for Prometheus.
    pub events: RolloutEvents,
    /// Versions retired so far: the watcher hands memory back to the system when it moves.
    pub retirements: std::sync::atomic::AtomicU64,
    /// Loads asked for through the admin API, run by the rollout's own thread.
    loads: (crossbeam_channel::Sender<LoadRequest>, crossbeam_channel::Receiver<LoadRequest>),
    /// Serialises the operations that change the routing table, so each reads the state it changes.
    ops: Mutex<()>,
    /// `--default-model`, when given: then the routing table's default is never chosen.
    configured_default: Option<String>,
    /// Set once the models found at start are loaded ([`Rollout::settle_default`]).
    default_settled: std::sync::atomic::AtomicBool,
    /// The model names the settings mention, with the setting ([`RolloutSettings::named_models`]).
    named_models: Vec<(&'static str, String)>,
    /// Versions unloaded since the metrics last asked, whose series go ([`Rollout::take_unloaded`]).
    unloaded: Mutex<Vec<(String, String)>>,
}

type Key = (String, String);

/// A load for the rollout's thread, and where to send its outcome.
pub struct LoadRequest {
    pub name: String,
    pub version: String,
    pub reply: tokio::sync::oneshot::Sender<Result<State, RolloutError>>,
}

/// Recent requests replayed to a new version (and to the serving one, for the time).
const REPLAYED: usize = 16;

fn key(name: &str, version: &str) -> Key {
    (name.to_string(), version.to_string())
}

/// What the rollout needs of the server's configuration (built by `Config::rollout`).
#[derive(Debug, Clone)]
pub struct RolloutSettings {
    pub models_dir: PathBuf,
    /// Where catalog packages are (`<catalogs>/<name>/<version>/`).
    pub catalogs_dir: PathBuf,
    /// Per-model catalog names overriding the match by id column.
    pub catalogs: BTreeMap<String, String>,
    pub engine: EngineKind,
    /// The largest `model.onnx` staged; a larger one is refused before it is read.
    pub max_model_bytes: u64,
    /// `--default-model`, when given.
    pub default_model: Option<String>,
    pub policy: Policy,
    /// Per-model policies overriding `policy`.
    pub policies: BTreeMap<String, Policy>,
    /// A new version slower than this multiple of the serving one on recent requests is refused.
    pub latency_factor: f64,
    /// Keep the warm-up ring in `<models>/.warmup/` across restarts.
    pub persist_warmup: bool,
    pub warmup_max_bytes: usize,
    /// The model names the settings mention, with the setting that names each, warned about
    /// when no such model is served.
    pub named_models: Vec<(&'static str, String)>,
    #[cfg(feature = "test-hooks")]
    pub inference_delays: BTreeMap<String, retort_model::InferenceDelay>,
}

impl Rollout {
    pub fn new(settings: RolloutSettings) -> Rollout {
        let RolloutSettings {
            models_dir,
            catalogs_dir,
            catalogs,
            engine,
            max_model_bytes,
            default_model,
            policy,
            policies,
            latency_factor,
            persist_warmup,
            warmup_max_bytes,
            named_models,
            #[cfg(feature = "test-hooks")]
            inference_delays,
        } = settings;
        let events = RolloutEvents::default();
        Rollout {
            routes: ArcSwap::from_pointee(Routes {
                routes: BTreeMap::new(),
                default_model: default_model.clone(),
            }),
            items: super::items::Items::new(catalogs_dir, catalogs, events.clone()),
            warmup: if persist_warmup {
                WarmupRing::load(&models_dir, warmup_max_bytes)
            } else {
                WarmupRing::new(warmup_max_bytes)
            },
            models_dir,
            max_model_bytes,
            engine,
            policy,
            policies,
            latency_factor,
            #[cfg(feature = "test-hooks")]
            inference_delays,
            records: Mutex::new(BTreeMap::new()),
            events,
            retirements: std::sync::atomic::AtomicU64::new(0),
            loads: crossbeam_channel::unbounded(),
            ops: Mutex::new(()),
            configured_default: default_model,
            default_settled: std::sync::atomic::AtomicBool::new(false),
            named_models,
            unloaded: Mutex::new(Vec::new()),
        }
    }

    pub fn policy_of(&self, name: &str) -> Policy {
        self.policies.get(name).copied().unwrap_or(self.policy)
    }

    fn records(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, Record>> {
        self.records.lock().expect("rollout records are never poisoned")
    }

    /// The state of `name/version`, if the server has seen it.
    pub fn state(&self, name: &str, version: &str) -> Option<State> {
        self.records().get(&key(name, version)).map(|r| r.state)
    }

    /// Whether the watcher should load `name/version`: never seen, or failed and its files
    /// changed since (a copy that was still arriving when it was tried).
    pub fn should_try(&self, name: &str, version: &str) -> bool {
        match self.records().get(&key(name, version)) {
            None => true,
            Some(r) if r.state == State::Failed => {
                let now = package::stamp(&self.models_dir.join(name).join(version));
                now.is_some() && now != r.stamp
            }
            Some(_) => false,
        }
    }

    /// Loads, validates and warms `name/version` on the calling thread (callers keep it off the
    /// serving path), leaving it staged; or records why it failed.
    pub fn stage(&self, name: &str, version: &str) -> Result<(), RolloutError> {
        let dir = self.models_dir.join(name).join(version);
        if !dir.join(package::MANIFEST).is_file() || !dir.join(package::GRAPH).is_file() {
            return Err(RolloutError::Unknown { name: name.into(), version: version.into() });
        }
        {
            let mut records = self.records();
            match records.get(&key(name, version)).map(|r| r.state) {
                None | Some(State::Failed | State::Retired) => {
                    records.insert(key(name, version), Record::new(State::Loading));
                }
                Some(State::Loading) => {
                    return Err(RolloutError::WrongState {
                        name: name.into(),
                        version: version.into(),
                        state: State::Loading,
                        wanted: "it is being loaded already",
                    });
                }
                // Loaded already: nothing to do.
                Some(_) => return Ok(()),
            }
        }
        let started = Instant::now();
        let serving = self.routes.load().routes.get(name).map(|r| r.serving.clone());
        let stamp = package::stamp(&dir);
        let loaded = package::check_servable(&self.models_dir, &dir, self.max_model_bytes)
            .map_err(|e| (LoadFailure::Package, e))
            .and_then(|_| {
                load_and_validate(
                    &dir,
                    self.engine,
                    name,
                    version,
                    serving.as_ref().map(|s| &s.model.manifest),
                )
                .map_err(|e| (LoadFailure::Invalid, e))
            })
            .and_then(|(model, notes)| {
                // The catalog it would read must hold its item features as it reads them; its
                // items' tower outputs are computed before the version is warmed on them.
                let catalog = self.items.for_model(&model.manifest);
                let vectors = match &catalog {
                    Some(catalog) => {
                        retort_model::catalog::compatible(&model.manifest, catalog)
                            .map_err(|e| (LoadFailure::Invalid, e))?;
                        ItemVectors::compute(&model, catalog, &[])
                            .map_err(|e| (LoadFailure::Invalid, e.to_string()))?
                    }
                    None => None,
                };
                let items = catalog.map(|catalog| ItemsFor { catalog, vectors: vectors.map(Arc::new) });
                self.warm_on_traffic(&model, items.as_ref(), name, serving.as_deref())
                    .map_err(|e| (LoadFailure::WarmUp, e))?;
                Ok((model, notes, items.and_then(|i| i.vectors)))
            });
        let mut records = self.records();
        let record = records.get_mut(&key(name, version)).expect("inserted above");
        record.stamp = stamp;
        match loaded {
            Ok((model, notes, vectors)) => {
                #[cfg(feature = "test-hooks")]
                let model = {
                    let mut model = model;
                    if let Some(delay) = self.inference_delays.get(name) {
                        model.delay_inference(*delay);
                    }
                    model
                };
                record.state = State::Staged;
                record.reason = notes;
                record.loaded_at = Some(SystemTime::now());
                record.load_ms = Some(started.elapsed().as_millis() as u64);
                self.events.loaded(name, started.elapsed().as_secs_f64());
                let served = Served::new(model, vectors);
                record.stats = Some(served.stats.clone());
                record.served = Some(served.clone());
                let load_ms = record.load_ms;
                drop(records);
                // A catalog that swapped in while this version loaded found it not loaded yet.
                if let Some(catalog) = self.items.for_model(&served.model.manifest)
                    && let Err(e) = served.prepare_vectors(&catalog)
                {
                    tracing::error!(model = name, version, error = %e, "cannot compute the item tower's outputs");
                }
                let interpreter = served.model.interpreter();
                tracing::info!(
                    model = name,
                    version,
                    load_ms,
                    interpreter,
                    "version loaded, validated and warm"
                );
                Ok(())
            }
            Err((failure, reason)) => {
                self.events.failed(name, failure);
                tracing::error!(model = name, version, %reason, "version failed to load");
                record.state = State::Failed;
                record.reason = Some(reason.clone());
                Err(RolloutError::Invalid { name: name.into(), version: version.into(), reason })
            }
        }
    }

    /// Reads the catalogs' new versions ([`super::items::Items::refresh`]), each checked against
    /// and prepared for every loaded version that would read it.
    pub fn refresh_items(&self) -> Vec<super::items::Refreshed> {
        let done = self.items.refresh(&|c| self.prepare_catalog(c));
        self.retain_vectors();
        done
    }

    /// Makes catalog `name`/`version` serve, checked as [`Rollout::refresh_items`] checks.
    pub fn load_items(&self, name: &str, version: &str) -> Result<(), super::items::ItemsError> {
        let loaded = self.items.load(name, version, &|c| self.prepare_catalog(c));
        self.retain_vectors();
        loaded
    }

    /// Makes catalog `name`'s previous version serve again, prepared as the others are.
    pub fn rollback_items(&self, name: &str) -> Result<String, super::items::ItemsError> {
        let rolled = self.items.rollback(name, &|c| self.prepare_catalog(c));
        self.retain_vectors();
        rolled
    }

    /// Whether every version routed to (serving, canary, shadow, fallback) that would read
    /// `catalog` can; then computes its items' tower outputs for every loaded version that
    /// reads it, before it swaps in. A version staged but not routed that cannot read it is
    /// only warned about.
    fn prepare_catalog(&self, catalog: &Arc<retort_model::catalog::Catalog>) -> Result<(), String> {
        let routes = self.routes.load();
        let routed: Vec<&Arc<Served>> = routes
            .routes
            .values()
            .flat_map(|route| {
                std::iter::once(&route.serving)
                    .chain(route.canary.as_ref().map(|c| &c.to))
                    .chain(route.shadow.as_ref().map(|s| &s.to))
            })
            .collect();
        // Every routed version is loaded. All are checked before any work is spent on one.
        let loaded: Vec<Arc<Served>> = self.records().values().filter_map(|r| r.served.clone()).collect();
        let mut readers = Vec::new();
        for v in loaded.iter().filter(|v| self.items.would_read(&v.model.manifest, catalog)) {
            match retort_model::catalog::compatible(&v.model.manifest, catalog) {
                Ok(()) => readers.push(v),
                Err(e) if routed.iter().any(|r| Arc::ptr_eq(r, v)) => return Err(e),
                Err(e) => tracing::warn!(error = %e, "a staged version cannot read the new catalog"),
            }
        }
        for v in readers {
            if let Err(e) = v.prepare_vectors(catalog) {
                let e = format!("{}: {e}", v.model.manifest.id());
                if routed.iter().any(|r| Arc::ptr_eq(r, v)) {
                    return Err(e);
                }
                tracing::warn!(error = %e, "a staged version cannot read the new catalog");
            }
        }
        Ok(())
    }

    /// Drops every loaded version's item-tower outputs for catalogs that no longer serve.
    fn retain_vectors(&self) {
        let serving = self.items.serving();
        let loaded: Vec<Arc<Served>> = self.records().values().filter_map(|r| r.served.clone()).collect();
        for v in loaded {
            v.retain_vectors(|c| serving.values().any(|s| std::ptr::eq(&**s, c)));
        }
    }

    /// Replays the recent requests of `name` to `model`: its outputs must be finite (and
    /// probabilities where its heads say so), and its median time on them within the
    /// configured factor of the serving version's on the same requests.
    fn warm_on_traffic(
        &self,
        model: &Model,
        items: Option<&ItemsFor>,
        name: &str,
        serving: Option<&Served>,
    ) -> Result<(), String> {
        // The newest few: enough to size buffers and time both versions, cheap enough to run
        // beside serving without moving its latency.
        let mut requests = self.warmup.requests(name);
        requests.drain(..requests.len().saturating_sub(REPLAYED));
        if requests.is_empty() {
            // No history yet: the golden examples warmed it.
            return Ok(());
        }
        // The first pass sizes buffers and builds plans for these request shapes (a batch size
        // the golden examples did not have costs a plan the first time); the second is timed,
        // so a new version is not judged on its cold start against a warm one.
        // Over the catalogs the versions read, as the requests were answered.
        let source = items.map(ItemsFor::source);
        replay(model, source, &requests)?;
        let new = replay(model, source, &requests)?;
        let old = serving.and_then(|s| {
            let items = s.items(self.items.for_model(&s.model.manifest));
            replay(&s.model, items.as_ref().map(ItemsFor::source), &requests).ok().flatten()
        });
        if let (Some(new), Some(old)) = (new, old)
            && new.as_secs_f64() > old.as_secs_f64() * self.latency_factor
        {
            return Err(format!(
                "median warm-up time {:.2} ms on {} recent requests against {:.2} ms for the serving version \
                 (allowed {}x)",
                new.as_secs_f64() * 1e3,
                requests.len(),
                old.as_secs_f64() * 1e3,
                self.latency_factor
            ));
        }
        Ok(())
    }

    /// Stages `name/version`, then applies the model's policy: `auto` promotes it, `manual`
    /// leaves it staged. Returns its state.
    pub fn load(&self, name: &str, version: &str) -> Result<State, RolloutError> {
        self.stage(name, version)?;
        if self.policy_of(name) == Policy::Auto && self.state(name, version) == Some(State::Staged) {
            self.promote(name, version)?;
        }
        Ok(self.state(name, version).expect("staged above"))
    }

    /// Asks the rollout's thread to [`Rollout::load`] `name/version`; the answer comes on the
    /// returned channel. One long-lived thread does every load, at low priority.
    pub fn request_load(
        &self,
        name: &str,
        version: &str,
    ) -> tokio::sync::oneshot::Receiver<Result<State, RolloutError>> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let _ = self.loads.0.send(LoadRequest { name: name.into(), version: version.into(), reply });
        answer
    }

    /// The next load asked for, waiting at most `wait`.
    pub fn next_load(&self, wait: std::time::Duration) -> Option<LoadRequest> {
        self.loads.1.recv_timeout(wait).ok()
    }

    fn loaded(&self, name: &str, version: &str, wanted: &'static str) -> Result<Arc<Served>, RolloutError> {
        let records = self.records();
        let r = records
            .get(&key(name, version))
            .ok_or_else(|| RolloutError::Unknown { name: name.into(), version: version.into() })?;
        r.served.clone().ok_or(RolloutError::WrongState {
            name: name.into(),
            version: version.into(),
            state: r.state,
            wanted,
        })
    }

    /// Stores `route` as `name`'s routing and brings each of its versions' records in line: a
    /// loaded version takes the role the route gives it (or is staged), and the versions in
    /// `unload` leave memory in the state and with the reason given. Every state change goes
    /// through here, so the admin API always shows the routing in force.
    fn commit(
        &self,
        name: &str,
        swap: Swap,
        current: &Routes,
        route: Route,
        unload: &[(&str, State, String)],
    ) {
        self.events.swapped(name, swap);
        let mut next = current.clone();
        let added = next.routes.insert(name.to_string(), route).is_none();
        if self.configured_default.is_none()
            && (!self.default_settled.load(std::sync::atomic::Ordering::Relaxed)
                || (added && next.default_model.is_none()))
        {
            next.default_model = next.primary();
        }
        let route = next.routes[name].clone();
        if added && self.default_settled.load(std::sync::atomic::Ordering::Relaxed) {
            self.warn_unknown_names(&next);
        }
        self.routes.store(Arc::new(next));
        let mut records = self.records();
        for ((n, v), r) in records.iter_mut() {
            if n != name {
                continue;
            }
            if let Some((_, state, reason)) = unload.iter().find(|(u, _, _)| u == v) {
                debug_assert!(
                    r.served.as_ref().is_none_or(|s| route.role_of(s).is_none()),
                    "unloading a routed version"
                );
                r.state = *state;
                r.reason = Some(reason.clone());
                r.percent = None;
                // The routing table no longer holds it either: its memory goes with its last request.
                if r.served.take().is_some() {
                    self.retirements.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.unloaded.lock().expect("never poisoned").push((n.clone(), v.clone()));
                }
                continue;
            }
            let Some(served) = &r.served else { continue };
            (r.state, r.percent) = match route.role_of(served) {
                Some((Role::Serving, _)) => (State::Serving, None),
                Some((Role::Previous, _)) => (State::Previous, None),
                Some((Role::Canary, p)) => (State::Canary, p),
                Some((Role::Shadow, p)) => (State::Shadow, p),
                None => (State::Staged, None),
            };
        }
    }

    /// Fixes which model answers requests that name none, once the models found at start
    /// are all loaded: from then on a new version never changes it (only a model name added
    /// while there is no default can set it). `--default-model` overrides all of this.
    pub fn settle_default(&self) {
        let _op = self.ops.lock().expect("not poisoned");
        let current = self.routes.load_full();
        let mut next = (*current).clone();
        if self.configured_default.is_none() {
            next.default_model = next.primary();
        }
        match &next.default_model {
            Some(d) => tracing::info!(model = %d, "requests that name no model go to this one"),
            None if next.routes.len() > 1 => {
                tracing::info!("several models serve: requests must name one (or set --default-model)")
            }
            None => {}
        }
        self.warn_unknown_names(&next);
        self.routes.store(Arc::new(next));
        self.default_settled.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The settings that name a model `table` does not serve.
    pub fn unknown_names(&self, table: &Routes) -> Vec<(&'static str, &str)> {
        self.named_models
            .iter()
            .filter(|(_, name)| !table.routes.contains_key(name))
            .map(|(setting, name)| (*setting, name.as_str()))
            .collect()
    }

    /// Logs a warning for each setting that names no served model: at start, and whenever a
    /// model name starts serving.
    fn warn_unknown_names(&self, table: &Routes) {
        let serving = table.routes.keys().cloned().collect::<Vec<_>>().join(", ");
        for (setting, name) in self.unknown_names(table) {
            tracing::warn!(setting, model = name, %serving, "the setting names a model that is not served; it does nothing");
        }
    }

    /// Makes `name/version` the serving version in one swap. The version it replaces becomes
    /// `previous` (kept loaded for a rollback); the previous one before is retired. A canary or
    /// shadow of the model ends with the swap.
    pub fn promote(&self, name: &str, version: &str) -> Result<(), RolloutError> {
        let _op = self.ops.lock().expect("not poisoned");
        let served = self.loaded(name, version, "only a loaded version can be promoted")?;
        let current = self.routes.load_full();
        let old = current.routes.get(name);
        if old.is_some_and(|o| Arc::ptr_eq(&o.serving, &served)) {
            return Ok(());
        }
        let retired: Vec<(&str, State, String)> = old
            .and_then(|o| o.previous.as_ref())
            .filter(|p| !Arc::ptr_eq(p, &served))
            .map(|p| (p.version(), State::Retired, "replaced as the previous version".to_string()))
            .into_iter()
            .collect();
        let route =
            Route { serving: served, previous: old.map(|o| o.serving.clone()), canary: None, shadow: None };
        self.commit(name, Swap::Promote, &current, route, &retired);
        tracing::info!(model = name, version, "promoted to serving");
        Ok(())
    }

    /// Swaps the previous version back in; the serving one is retired with `reason`.
    pub fn rollback(&self, name: &str, reason: &str) -> Result<String, RolloutError> {
        let _op = self.ops.lock().expect("not poisoned");
        let current = self.routes.load_full();
        let route = current.routes.get(name);
        let Some(previous) = route.and_then(|r| r.previous.clone()) else {
            return Err(RolloutError::NothingToRollBack { name: name.into() });
        };
        let serving = route.expect("a previous version has a route").serving.clone();
        let version = previous.version().to_string();
        self.commit(
            name,
            Swap::Rollback,
            &current,
            Route::serving(previous),
            &[(serving.version(), State::Retired, reason.to_string())],
        );
        tracing::warn!(model = name, %version, reason, "rolled back");
        Ok(version)
    }

    /// Sends `percent` of users to `name/version` (0 ends its canary, leaving it staged).
    pub fn canary(&self, name: &str, version: &str, percent: u32) -> Result<(), RolloutError> {
        self.split(name, version, percent, Role::Canary)
    }

    /// Copies `percent` of requests to `name/version`, scored off the critical path (0 ends it).
    pub fn shadow(&self, name: &str, version: &str, percent: u32) -> Result<(), RolloutError> {
        self.split(name, version, percent, Role::Shadow)
    }

    fn split(&self, name: &str, version: &str, percent: u32, role: Role) -> Result<(), RolloutError> {
        if percent > 100 {
            return Err(RolloutError::Percent(percent));
        }
        let _op = self.ops.lock().expect("not poisoned");
        let served = self.loaded(name, version, "only a loaded version can take traffic")?;
        let state = self.state(name, version).expect("loaded");
        let wrong =
            |wanted| RolloutError::WrongState { name: name.into(), version: version.into(), state, wanted };
        let current = self.routes.load_full();
        let Some(route) = current.routes.get(name) else {
            return Err(wrong("nothing serves this model yet: promote a version first"));
        };
        let now = route.role_of(&served).map(|(r, _)| r);
        if matches!(now, Some(Role::Serving | Role::Previous)) {
            return Err(wrong("a canary or shadow must be a version that is not serving"));
        }
        let mut route = route.clone();
        if percent == 0 && now != Some(role) {
            return Err(wrong(match role {
                Role::Canary => "only a canary's share can be ended",
                _ => "only a shadow's share can be ended",
            }));
        }
        // A version takes one role at a time: moving it from canary to shadow (or back) ends
        // the first, so it never answers users while it is shown as a shadow.
        match now {
            Some(Role::Canary) => route.canary = None,
            Some(Role::Shadow) => route.shadow = None,
            _ => {}
        }
        let split = (percent > 0).then(|| Split { to: served, percent: percent as u8 });
        match role {
            Role::Canary => route.canary = split,
            _ => route.shadow = split,
        }
        self.commit(name, Swap::Split, &current, route, &[]);
        tracing::info!(model = name, version, ?role, percent, "traffic split changed");
        Ok(())
    }

    /// Ends `name/version`'s canary as failed with `reason` (the serving version keeps
    /// serving). Nothing happens when it is no longer the canary: an operator moved it first.
    pub fn fail_canary(&self, name: &str, version: &str, reason: String) {
        let _op = self.ops.lock().expect("not poisoned");
        let current = self.routes.load_full();
        let Some(route) = current.routes.get(name) else { return };
        if route.canary.as_ref().is_none_or(|c| c.to.version() != version) {
            return;
        }
        let mut route = route.clone();
        route.canary = None;
        self.commit(name, Swap::CanaryFailed, &current, route, &[(version, State::Failed, reason.clone())]);
        tracing::warn!(model = name, version, %reason, "canary failed; rolled back to the serving version");
    }

    /// Every version the server has seen, and those published but never loaded.
    pub fn versions(&self) -> Vec<VersionInfo> {
        let records = self.records();
        records
            .iter()
            .map(|((name, version), r)| {
                let stats = r.stats.clone();
                let quantile =
                    |q: f64| stats.as_ref().and_then(|s| s.latency_quantile(q)).map(|d| d.as_micros() as u64);
                VersionInfo {
                    name: name.clone(),
                    version: version.clone(),
                    state: r.state,
                    reason: r.reason.clone(),
                    loaded_at: r.loaded_at.map(retort_model::timestamp::rfc3339),
                    load_ms: r.load_ms,
                    percent: r.percent,
                    requests: stats.as_ref().map_or(0, |s| s.requests()),
                    errors: stats.as_ref().map_or(0, |s| s.errors()),
                    p50_us: quantile(0.5),
                    p99_us: quantile(0.99),
                    shadow: stats.as_ref().and_then(|s| s.shadow.summary()),
                    item_vectors: r.served.as_ref().filter(|s| s.model.tower().is_some()).map(|s| {
                        let (bytes, catalogs) = s.vectors_held();
                        ItemVectorsInfo { catalogs, bytes }
                    }),
                }
            })
            .collect()
    }

    /// The versions unloaded (retired or failed) since the last call.
    pub fn take_unloaded(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *self.unloaded.lock().expect("never poisoned"))
    }

    /// The models directory this rollout loads from.
    pub fn models_dir(&self) -> &Path {
        &self.models_dir
    }
}

/// Loads the package, which checks its manifest and reproduces its golden examples, checks it
/// against the version serving now (a feature whose kind changed breaks callers; one removed
/// or added is noted), and warms it. Returns the model and any notes.
fn load_and_validate(
    dir: &Path,
    engine: EngineKind,
    name: &str,
    version: &str,
    serving: Option<&Manifest>,
) -> Result<(Model, Option<String>), String> {
    let model = Model::load(dir, engine).map_err(|e| e.to_string())?;
    if model.name() != name || model.version() != version {
        return Err(format!("its manifest says it is {}/{}", model.name(), model.version()));
    }
    let mut notes = Vec::new();
    if let Some(old) = serving {
        for f in &old.features {
            match model.manifest.features.iter().find(|n| n.name == f.name) {
                None => notes.push(format!("feature `{}` removed (callers may still send it)", f.name)),
                Some(n) if n.kind.name() != f.kind.name() || n.side != f.side => {
                    return Err(format!(
                        "feature `{}` changed from {} {} to {} {}: callers of the serving version would break",
                        f.name,
                        f.side.as_str(),
                        f.kind.name(),
                        n.side.as_str(),
                        n.kind.name()
                    ));
                }
                Some(_) => {}
            }
        }
        for n in &model.manifest.features {
            if !old.features.iter().any(|f| f.name == n.name) {
                notes.push(format!("feature `{}` added", n.name));
            }
        }
        for (_, head) in old.heads.iter().enumerate().filter(|(_, h)| h.serving) {
            if !model.manifest.heads.iter().any(|h| h.serving && h.name == head.name) {
                return Err(format!(
                    "serving head `{}` is gone: callers' objectives that weight it would break",
                    head.name
                ));
            }
        }
    }
    warm_up(&model);
    Ok((model, (!notes.is_empty()).then(|| notes.join("; "))))
}

#[cfg(test)]
mod tests {
    //! Every operation from every state the version states can reach, against a model of what
    //! each operation means written apart from the code under test. See: issue 14 (B, 1).

    use std::collections::{BTreeMap, HashMap, VecDeque};

    use super::*;
    use crate::config::Config;
    use retort_model::scaffold;

    const VERSIONS: [&str; 3] = ["1", "2", "3"];

    /// The model of a rollout: which version plays which part, which are unloaded.
    #[derive(Debug, Clone, PartialEq, Eq, Hash)]
    struct Expected {
        serving: &'static str,
        previous: Option<&'static str>,
        canary: Option<&'static str>,
        shadow: Option<&'static str>,
        unloaded: BTreeMap<&'static str, bool>, // version → failed (else retired)
    }

    #[derive(Debug, Clone, Copy)]
    enum Op {
        Promote(&'static str),
        Rollback,
        Canary(&'static str, u32),
        Shadow(&'static str, u32),
        FailCanary(&'static str),
        Load(&'static str),
    }

    fn ops() -> Vec<Op> {
        let mut ops = vec![Op::Rollback];
        for v in VERSIONS {
            ops.extend([
                Op::Promote(v),
                Op::Canary(v, 30),
                Op::Canary(v, 0),
                Op::Shadow(v, 40),
                Op::Shadow(v, 0),
                Op::FailCanary(v),
                Op::Load(v),
            ]);
        }
        ops
    }

    impl Expected {
        fn state(&self, v: &str) -> State {
            match self.unloaded.get(v) {
                Some(true) => State::Failed,
                Some(false) => State::Retired,
                None if self.serving == v => State::Serving,
                None if self.canary == Some(v) => State::Canary,
                None if self.shadow == Some(v) => State::Shadow,
                None if self.previous == Some(v) => State::Previous,
                None => State::Staged,
            }
        }

        /// The state after `op`, or `None` when the operation must be refused.
        fn apply(&self, op: Op) -> Option<Expected> {
            let mut e = self.clone();
            let loaded = |v: &str| !self.unloaded.contains_key(v);
            match op {
                Op::Promote(v) => {
                    if !loaded(v) {
                        return None;
                    }
                    if self.serving != v {
                        if let Some(p) = self.previous.filter(|p| *p != v) {
                            e.unloaded.insert(p, false);
                        }
                        e.previous = Some(self.serving);
                        e.serving = v;
                        e.canary = None;
                        e.shadow = None;
                    }
                }
                Op::Rollback => {
                    let p = self.previous?;
                    e.unloaded.insert(self.serving, false);
                    e.serving = p;
                    e.previous = None;
                    e.canary = None;
                    e.shadow = None;
                }
                Op::Canary(v, p) | Op::Shadow(v, p) => {
                    let canary = matches!(op, Op::Canary(..));
                    if !loaded(v) || self.serving == v || self.previous == Some(v) {
                        return None;
                    }
                    let (mine, other) =
                        if canary { (self.canary, self.shadow) } else { (self.shadow, self.canary) };
                    if p == 0 && mine != Some(v) {
                        return None;
                    }
                    let (mine, other) = (if p == 0 { None } else { Some(v) }, other.filter(|o| *o != v));
                    (e.canary, e.shadow) = if canary { (mine, other) } else { (other, mine) };
                }
                Op::FailCanary(v) => {
                    if self.canary == Some(v) {
                        e.canary = None;
                        e.unloaded.insert(v, true);
                    }
                }
                Op::Load(v) => {
                    e.unloaded.remove(v);
                }
            }
            Some(e)
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        config: Config,
        served: HashMap<&'static str, Arc<Served>>,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let mut served = HashMap::new();
        for (i, v) in VERSIONS.into_iter().enumerate() {
            let (manifest, graph) = scaffold::seeded_package("m", v, i as u64 + 1);
            let path = package::write(dir.path(), &manifest, &graph).unwrap();
            served.insert(v, Served::new(Model::load(&path, EngineKind::Tract).unwrap(), None));
        }
        let config = Config::serving(dir.path());
        Fixture { _dir: dir, config, served }
    }

    impl Fixture {
        /// Versions 1-3 loaded (without compiling them again), 1 serving.
        fn rollout(&self) -> Rollout {
            let rollout = Rollout::new(self.config.rollout_settings());
            for v in VERSIONS {
                self.insert_loaded(&rollout, v);
            }
            rollout.promote("m", "1").unwrap();
            rollout
        }

        fn insert_loaded(&self, rollout: &Rollout, v: &str) {
            let mut record = Record::new(State::Staged);
            record.served = Some(self.served[v].clone());
            rollout.records().insert(key("m", v), record);
        }

        fn apply(&self, rollout: &Rollout, op: Op) -> bool {
            match op {
                Op::Promote(v) => rollout.promote("m", v).is_ok(),
                Op::Rollback => rollout.rollback("m", "test").is_ok(),
                Op::Canary(v, p) => rollout.canary("m", v, p).is_ok(),
                Op::Shadow(v, p) => rollout.shadow("m", v, p).is_ok(),
                Op::FailCanary(v) => {
                    rollout.fail_canary("m", v, "test".into());
                    true
                }
                Op::Load(v) => {
                    // What `stage` does for an unloaded version, without compiling it again.
                    if matches!(rollout.state("m", v), Some(State::Retired | State::Failed)) {
                        self.insert_loaded(rollout, v);
                    }
                    true
                }
            }
        }
    }

    /// The rollout agrees with the model: each version's state, and the routing requests see.
    fn check(rollout: &Rollout, expected: &Expected, path: &[Op]) {
        for v in VERSIONS {
            assert_eq!(rollout.state("m", v), Some(expected.state(v)), "version {v} after {path:?}");
        }
        let table = rollout.routes.load();
        let route = &table.routes["m"];
        assert_eq!(route.serving.version(), expected.serving, "after {path:?}");
        assert_eq!(route.previous.as_ref().map(|p| p.version()), expected.previous, "after {path:?}");
        assert_eq!(route.canary.as_ref().map(|c| c.to.version()), expected.canary, "after {path:?}");
        assert_eq!(route.shadow.as_ref().map(|s| s.to.version()), expected.shadow, "after {path:?}");
        // Exactly one routing in force: every user is answered by the serving version or the
        // canary, never by a shadow, a previous or an unloaded version.
        for key in 0..100 {
            let answering = route.pick(key).version();
            assert!(
                answering == expected.serving || Some(answering) == expected.canary,
                "user key {key} answered by {answering} after {path:?}"
            );
        }
        for (v, r) in rollout.records().iter() {
            assert_eq!(
                r.served.is_some(),
                !expected.unloaded.contains_key(v.1.as_str()),
                "{v:?} after {path:?}"
            );
        }
    }

    #[test]
    fn every_operation_from_every_reachable_state_leaves_one_routing_in_force() {
        let fixture = fixture();
        let start =
            Expected { serving: "1", previous: None, canary: None, shadow: None, unloaded: BTreeMap::new() };
        let mut paths: HashMap<Expected, Vec<Op>> = HashMap::from([(start.clone(), Vec::new())]);
        let mut queue = VecDeque::from([start]);
        let (mut transitions, mut refusals) = (0, 0);
        while let Some(state) = queue.pop_front() {
            let path = paths[&state].clone();
            for op in ops() {
                let rollout = fixture.rollout();
                for &step in &path {
                    assert!(fixture.apply(&rollout, step), "replaying {path:?}");
                }
                let accepted = fixture.apply(&rollout, op);
                let mut taken = path.clone();
                taken.push(op);
                match state.apply(op) {
                    Some(next) => {
                        assert!(accepted, "{op:?} refused after {path:?}");
                        check(&rollout, &next, &taken);
                        transitions += 1;
                        if !paths.contains_key(&next) {
                            paths.insert(next.clone(), taken);
                            queue.push_back(next);
                        }
                    }
                    None => {
                        assert!(!accepted, "{op:?} accepted after {path:?}");
                        check(&rollout, &state, &taken);
                        refusals += 1;
                    }
                }
            }
        }
        // Every state the model reaches, with every operation tried from it.
        assert!(paths.len() > 50, "{} states", paths.len());
        eprintln!("{} states, {transitions} transitions, {refusals} refusals", paths.len());
    }

    // See: issue 14 (5).
    #[test]
    fn settings_naming_a_model_that_is_not_served_are_found() {
        let mut f = fixture();
        f.config.model_budgets_ms.insert("m".into(), 5.0);
        f.config.model_budgets_ms.insert("music-rankr".into(), 5.0);
        f.config.admission.degradation.models.insert("nope".into(), Vec::new());
        f.config.model_policies.insert("m".into(), Policy::Manual);
        f.config.fold_deprecated().unwrap();
        let rollout = f.rollout();
        let table = rollout.routes.load();
        assert_eq!(rollout.unknown_names(&table), [("models", "music-rankr"), ("models", "nope")]);
        // The deprecated tables were moved into `[models.<name>]`, each with a warning.
        assert_eq!(f.config.models["m"].policy, Some(Policy::Manual));
        assert_eq!(f.config.models["m"].budget_ms, Some(5.0));
        assert_eq!(f.config.deprecations().len(), 4, "{:?}", f.config.deprecations());
    }

    // See: issue 14 (B): load 2, promote 1, promote 2, promote 1 lost the rollback.
    #[test]
    fn alternating_promotes_keep_both_versions_loaded() {
        let fixture = fixture();
        let rollout = fixture.rollout();
        for v in ["2", "1", "2", "1"] {
            rollout.promote("m", v).unwrap();
        }
        assert_eq!(rollout.state("m", "1"), Some(State::Serving));
        assert_eq!(rollout.state("m", "2"), Some(State::Previous));
        assert_eq!(rollout.rollback("m", "test").unwrap(), "2");
        assert_eq!(rollout.state("m", "1"), Some(State::Retired));
    }
}
