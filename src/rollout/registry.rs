//! The registry of model versions and the operations that change what serves.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use super::stats::VersionStats;
use super::warmup::{WarmupRing, replay};
use crate::config::Config;
use crate::model::engine::EngineKind;
use crate::model::manifest::Manifest;
use crate::model::{Model, package};
use crate::serve::catalog::{Catalog, Route, Served, Split, warm_up};

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
    pub shadow: Option<crate::serve::shadow::AgreementSummary>,
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
    pub catalog: ArcSwap<Catalog>,
    /// Recent requests per model, replayed to new versions.
    pub warmup: WarmupRing,
    latency_factor: f64,
    #[cfg(feature = "test-hooks")]
    inference_delays: BTreeMap<String, crate::model::InferenceDelay>,
    models_dir: PathBuf,
    engine: EngineKind,
    policy: Policy,
    policies: BTreeMap<String, Policy>,
    records: Mutex<BTreeMap<(String, String), Record>>,
    /// Versions retired so far: the watcher hands memory back to the system when it moves.
    pub retirements: std::sync::atomic::AtomicU64,
    /// Loads asked for through the admin API, run by the rollout's own thread.
    loads: (crossbeam_channel::Sender<LoadRequest>, crossbeam_channel::Receiver<LoadRequest>),
    /// Serialises the operations that change the catalog, so each reads the state it changes.
    ops: Mutex<()>,
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

impl Rollout {
    pub fn new(config: &Config) -> Rollout {
        Rollout {
            catalog: ArcSwap::from_pointee(Catalog {
                routes: BTreeMap::new(),
                default_model: config.default_model.clone(),
            }),
            warmup: if config.persist_warmup {
                WarmupRing::load(&config.models_dir)
            } else {
                WarmupRing::default()
            },
            models_dir: config.models_dir.clone(),
            engine: config.engine,
            policy: config.rollout_policy,
            policies: config.model_policies.clone(),
            latency_factor: config.warmup_latency_factor,
            #[cfg(feature = "test-hooks")]
            inference_delays: config.test_inference_delays.clone(),
            records: Mutex::new(BTreeMap::new()),
            retirements: std::sync::atomic::AtomicU64::new(0),
            loads: crossbeam_channel::unbounded(),
            ops: Mutex::new(()),
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

    /// Whether the server has seen `name/version` (in any state, failed included).
    pub fn knows(&self, name: &str, version: &str) -> bool {
        self.records().contains_key(&key(name, version))
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
        let serving = self.catalog.load().routes.get(name).map(|r| r.serving.model.clone());
        let loaded =
            load_and_validate(&dir, self.engine, name, version, serving.as_deref().map(|m| &m.manifest))
                .and_then(|(model, notes)| {
                    self.warm_on_traffic(&model, name, serving.as_deref())?;
                    Ok((model, notes))
                });
        let mut records = self.records();
        let record = records.get_mut(&key(name, version)).expect("inserted above");
        match loaded {
            Ok((model, notes)) => {
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
                let served = Served::new(model);
                record.stats = Some(served.stats.clone());
                record.served = Some(served);
                tracing::info!(
                    model = name,
                    version,
                    load_ms = record.load_ms,
                    "version loaded, validated and warm"
                );
                Ok(())
            }
            Err(reason) => {
                tracing::error!(model = name, version, %reason, "version failed to load");
                record.state = State::Failed;
                record.reason = Some(reason.clone());
                Err(RolloutError::Invalid { name: name.into(), version: version.into(), reason })
            }
        }
    }

    /// Replays the recent requests of `name` to `model`: its outputs must be finite (and
    /// probabilities where its heads say so), and its median time on them within the
    /// configured factor of the serving version's on the same requests.
    fn warm_on_traffic(&self, model: &Model, name: &str, serving: Option<&Model>) -> Result<(), String> {
        // The newest few: enough to size buffers and time both versions, cheap enough to run
        // beside serving without moving its latency.
        let mut requests = self.warmup.requests(name);
        requests.drain(..requests.len().saturating_sub(REPLAYED));
        if requests.is_empty() {
            // No history yet: the golden examples warmed it.
            return Ok(());
        }
        let new = replay(model, &requests)?;
        let old = serving.and_then(|s| replay(s, &requests).ok().flatten());
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

    fn set(&self, name: &str, version: &str, state: State, percent: Option<u8>, reason: Option<String>) {
        if let Some(r) = self.records().get_mut(&key(name, version)) {
            r.state = state;
            r.percent = percent;
            if reason.is_some() {
                r.reason = reason;
            }
            if matches!(state, State::Retired | State::Failed) {
                // The catalog no longer holds it either: its memory goes with the last request.
                r.served = None;
                self.retirements.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// Makes `name/version` the serving version in one swap. The version it replaces becomes
    /// `previous` (kept loaded for a rollback); the one before that is retired.
    pub fn promote(&self, name: &str, version: &str) -> Result<(), RolloutError> {
        let _op = self.ops.lock().expect("not poisoned");
        let served = self.loaded(name, version, "only a loaded version can be promoted")?;
        let current = self.catalog.load_full();
        let old = current.routes.get(name).map(|r| r.serving.clone());
        if old.as_ref().is_some_and(|o| Arc::ptr_eq(o, &served)) {
            return Ok(());
        }
        let mut next = (*current).clone();
        next.routes.insert(name.to_string(), Route::serving(served));
        self.catalog.store(Arc::new(next));
        // Whatever was in canary or shadow for this model stops with the swap.
        if let Some(route) = current.routes.get(name) {
            for split in route.canary.iter().chain(&route.shadow) {
                if split.to.version() != version {
                    self.set(name, split.to.version(), State::Staged, None, None);
                }
            }
        }
        let retired: Vec<String> = self
            .records()
            .iter()
            .filter(|((n, _), r)| n == name && r.state == State::Previous)
            .map(|((_, v), _)| v.clone())
            .collect();
        for v in retired {
            self.set(name, &v, State::Retired, None, Some("replaced as the previous version".into()));
        }
        if let Some(old) = old {
            self.set(name, old.version(), State::Previous, None, None);
        }
        self.set(name, version, State::Serving, None, None);
        tracing::info!(model = name, version, "promoted to serving");
        Ok(())
    }

    /// Swaps the previous version back in; the serving one is retired with `reason`.
    pub fn rollback(&self, name: &str, reason: &str) -> Result<String, RolloutError> {
        let _op = self.ops.lock().expect("not poisoned");
        let previous = self
            .records()
            .iter()
            .find(|((n, _), r)| n == name && r.state == State::Previous)
            .map(|((_, v), _)| v.clone())
            .ok_or_else(|| RolloutError::NothingToRollBack { name: name.into() })?;
        let served = self.loaded(name, &previous, "the previous version is not loaded")?;
        let current = self.catalog.load_full();
        let mut next = (*current).clone();
        next.routes.insert(name.to_string(), Route::serving(served));
        self.catalog.store(Arc::new(next));
        if let Some(route) = current.routes.get(name) {
            self.set(name, route.serving.version(), State::Retired, None, Some(reason.to_string()));
            for split in route.canary.iter().chain(&route.shadow) {
                self.set(name, split.to.version(), State::Staged, None, None);
            }
        }
        self.set(name, &previous, State::Serving, None, None);
        tracing::warn!(model = name, version = %previous, reason, "rolled back");
        Ok(previous)
    }

    /// Sends `percent` of users to `name/version` (0 ends the canary, leaving it staged).
    pub fn canary(&self, name: &str, version: &str, percent: u32) -> Result<(), RolloutError> {
        self.split(name, version, percent, true)
    }

    /// Copies `percent` of requests to `name/version`, scored off the critical path (0 ends it).
    pub fn shadow(&self, name: &str, version: &str, percent: u32) -> Result<(), RolloutError> {
        self.split(name, version, percent, false)
    }

    fn split(&self, name: &str, version: &str, percent: u32, canary: bool) -> Result<(), RolloutError> {
        if percent > 100 {
            return Err(RolloutError::Percent(percent));
        }
        let _op = self.ops.lock().expect("not poisoned");
        let served = self.loaded(name, version, "only a loaded version can take traffic")?;
        let state = self.state(name, version).expect("loaded");
        if matches!(state, State::Serving | State::Previous) {
            return Err(RolloutError::WrongState {
                name: name.into(),
                version: version.into(),
                state,
                wanted: "a canary or shadow must be a version that is not serving",
            });
        }
        let current = self.catalog.load_full();
        let Some(route) = current.routes.get(name) else {
            return Err(RolloutError::WrongState {
                name: name.into(),
                version: version.into(),
                state,
                wanted: "nothing serves this model yet: promote a version first",
            });
        };
        let mut route = route.clone();
        let split = (percent > 0).then(|| Split { to: served, percent: percent as u8 });
        let replaced = if canary {
            std::mem::replace(&mut route.canary, split)
        } else {
            std::mem::replace(&mut route.shadow, split)
        };
        let mut next = (*current).clone();
        next.routes.insert(name.to_string(), route);
        self.catalog.store(Arc::new(next));
        if let Some(old) = replaced.filter(|o| o.to.version() != version) {
            self.set(name, old.to.version(), State::Staged, None, None);
        }
        let (state, pct) = match (percent, canary) {
            (0, _) => (State::Staged, None),
            (p, true) => (State::Canary, Some(p as u8)),
            (p, false) => (State::Shadow, Some(p as u8)),
        };
        self.set(name, version, state, pct, None);
        tracing::info!(model = name, version, ?state, percent, "traffic split changed");
        Ok(())
    }

    /// Marks a canary failed with `reason` and ends it (the serving version keeps serving).
    pub fn fail_canary(&self, name: &str, version: &str, reason: String) {
        let _op = self.ops.lock().expect("not poisoned");
        let current = self.catalog.load_full();
        if let Some(route) = current.routes.get(name)
            && route.canary.as_ref().is_some_and(|c| c.to.version() == version)
        {
            let mut route = route.clone();
            route.canary = None;
            let mut next = (*current).clone();
            next.routes.insert(name.to_string(), route);
            self.catalog.store(Arc::new(next));
        }
        tracing::warn!(model = name, version, %reason, "canary failed; rolled back to the serving version");
        self.set(name, version, State::Failed, None, Some(reason));
    }

    /// Every version the server has seen, and those published but never loaded.
    pub fn versions(&self) -> Vec<VersionInfo> {
        let records = self.records();
        records
            .iter()
            .map(|((name, version), r)| {
                let stats = r.stats.clone();
                let quantile =
                    |q: f64| stats.as_ref().and_then(|s| s.latency.quantile(q)).map(|d| d.as_micros() as u64);
                VersionInfo {
                    name: name.clone(),
                    version: version.clone(),
                    state: r.state,
                    reason: r.reason.clone(),
                    loaded_at: r.loaded_at.map(crate::timestamp::rfc3339),
                    load_ms: r.load_ms,
                    percent: r.percent,
                    requests: stats.as_ref().map_or(0, |s| s.requests()),
                    errors: stats.as_ref().map_or(0, |s| s.errors()),
                    p50_us: quantile(0.5),
                    p99_us: quantile(0.99),
                    shadow: stats.as_ref().and_then(|s| s.shadow.summary()),
                }
            })
            .collect()
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
