//! `retort teacher-search`: the teacher configuration whose labels make the *student* best,
//! found within a wall-clock budget (Paper B's second challenge). The most accurate teacher is
//! not always the most useful one, so every candidate is judged by what it does for a student.
//!
//! An evaluation of a candidate at a resource level:
//!
//! 1. trains its teacher on the source product to that fraction of the teacher's whole
//!    schedule (its epochs over every source training row; the top rung is the whole run);
//! 2. labels the target product with it, zero-shot, into the label store, tagged by the
//!    teacher package (`teacher-<digest of its config>/<step>`);
//! 3. distils proxy students through auxiliary heads on the candidate's heads, tuned by the
//!    student config's `[tune]` grid, trained on all but the last training day(s) and judged
//!    on those, over paired seeds against a control tuned by the same grid;
//! 4. scores the mean AUC gain over every task (distilled or not) over the control.
//!
//! [`halving`] decides who gets how much. Reuse: candidates that differ only in their heads
//! or epochs share one training trajectory per teacher architecture, seed and masking; a
//! longer run continues from the furthest checkpoint of a shorter one (bit for bit what an
//! uninterrupted run computes, see `TrainConfig::start_step`), and labels are computed once
//! per teacher package. Teachers and labels live under the work directory, so a rerun reuses
//! them instead of training again.
//!
//! After the search, the winner is measured on the holdout day(s) against the tuned control
//! and against the control at the config's own hyperparameters, over `final_seeds` paired
//! seeds: a gain that holds only against the untuned control is regularisation, not knowledge.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::data::dataset::Dataset;
use crate::data::mapping::Mapping;
use crate::data::spec::DataSpec;
use crate::eval::holdout::TaskMetrics;
use crate::eval::metrics::auc;
use crate::experiments::compare::{Hyper, Trial, grid, mean_auc, mean_std, stops_early};
use crate::label::labeller::{LabelOptions, Labeller};
use crate::release::run::{RunConfig, evaluate};
use crate::search::halving::{self, Evaluation, Failed, Objective, Schedule};
use crate::search::space::{Candidate, Space};
use crate::train::checkpoint::{CHECKPOINT, Checkpoint};
use crate::train::fit::{TrainConfig, TrainError, TrainingData, train_resuming};
use crate::train::kd::{DistillConfig, Plan};
use crate::train::parallel;
use crate::train::student::Student;
use retort_model::engine::EngineKind;
use retort_model::manifest::Manifest;
use retort_model::two_tower::TwoTower;
use retort_model::{package, scaffold};

/// The search file: `[search]` (the schedule), `[space]` (the candidates) and `[student]` (a
/// `retort train` config for the proxy students; its `[tune]` grid is every student's search).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchFile {
    #[serde(default)]
    pub search: SearchSection,
    pub space: Space,
    #[serde(default)]
    pub student: RunConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchSection {
    /// Wall-clock seconds the search may spend (the winner's holdout measurement comes after).
    pub budget_s: f64,
    /// Keep the best `1 / eta` of each rung.
    pub eta: usize,
    /// Rungs; the top one trains each teacher's whole schedule, each lower one `1 / eta` of it.
    pub rungs: usize,
    /// Evaluations side by side; 0 for one per core.
    pub workers: usize,
    /// Paired seeds of each proxy comparison.
    pub proxy_seeds: u64,
    /// Paired seeds of the winner's holdout measurement.
    pub final_seeds: u64,
    pub teacher_batch_size: usize,
    pub teacher_learning_rate: f64,
    /// Every teacher's initial weights and batch order.
    pub seed: u64,
    /// Source holdout rows a teacher's own accuracy is measured on (evenly spaced).
    pub source_check_rows: usize,
}

impl Default for SearchSection {
    fn default() -> Self {
        SearchSection {
            budget_s: 300.0,
            eta: 3,
            rungs: 3,
            workers: 0,
            proxy_seeds: 2,
            final_seeds: 5,
            teacher_batch_size: 1024,
            teacher_learning_rate: 0.002,
            seed: 1,
            source_check_rows: 50_000,
        }
    }
}

impl SearchFile {
    pub fn from_path(path: &Path) -> Result<SearchFile, TrainError> {
        let file: SearchFile =
            retort_model::toml_file::read(path).map_err(|e| TrainError::Config(e.to_string()))?;
        file.validate().map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))?;
        Ok(file)
    }

    pub fn validate(&self) -> Result<(), String> {
        self.space.validate()?;
        let s = &self.search;
        if s.budget_s.is_nan() || s.budget_s <= 0.0 {
            return Err(format!("search.budget_s must be positive, not {}", s.budget_s));
        }
        if s.eta < 2 || s.rungs == 0 {
            return Err("search.eta must be at least 2 and search.rungs at least 1".into());
        }
        if s.proxy_seeds == 0 || s.final_seeds == 0 || s.teacher_batch_size == 0 {
            return Err("search.proxy_seeds, final_seeds and teacher_batch_size must be at least 1".into());
        }
        if self.student.tune.learning_rates.is_empty() || self.student.tune.weight_decays.is_empty() {
            return Err(
                "student.tune needs learning_rates and weight_decays: the control and every distilled \
                 student are tuned by that same grid"
                    .into(),
            );
        }
        Ok(())
    }
}

/// Where the search reads and keeps things.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    pub source: &'a Path,
    pub source_spec: &'a DataSpec,
    pub target: &'a Path,
    pub target_spec: &'a DataSpec,
    /// How the teacher's inputs are built from the target's examples.
    pub mapping: &'a Mapping,
    /// Teachers (`teachers/`) and their labels (`labels/`), reused by a rerun.
    pub work: &'a Path,
}

/// One evaluation of a candidate, as the report lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluated {
    pub candidate: usize,
    pub rung: usize,
    /// The teacher package it used (`name/version`, the version its step).
    pub teacher: String,
    /// Fraction of the teacher's whole schedule trained.
    pub teacher_fraction: f64,
    /// Training seconds of the teacher's trajectory up to its step (shared by every candidate
    /// on the trajectory).
    pub teacher_train_s: f64,
    /// Dense-layer multiply-adds per example of the teacher.
    pub teacher_multiply_adds: u64,
    /// The teacher's own mean AUC over its tasks, on source holdout rows.
    pub teacher_source_auc: f64,
    /// The teacher's zero-shot mean AUC on the target's validation rows, over every target task
    /// the mapping gives it a label for: how accurate it is where it will be used.
    pub teacher_zero_shot_auc: f64,
    /// Mean over the student's tasks of the proxy's validation AUC minus the control's,
    /// averaged over paired seeds, and its paired standard error.
    pub gain: f64,
    pub gain_se: f64,
    /// The proxy student's hyperparameters, chosen by the `[tune]` grid.
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub epochs: usize,
    pub cost_s: f64,
}

/// A student's holdout gain over a control, per task and overall, over paired seeds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HoldoutGain {
    pub candidate: usize,
    pub teacher: String,
    pub seeds: u64,
    pub tasks: Vec<TaskGain>,
    /// Mean over tasks, against the control tuned by the same grid.
    pub gain: f64,
    pub gain_se: f64,
    /// Mean over tasks, against the control at the student config's own hyperparameters.
    pub gain_untuned: f64,
    pub gain_untuned_se: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskGain {
    pub task: String,
    pub distilled: bool,
    pub control_auc: f64,
    pub student_auc: f64,
    pub gain: f64,
    pub gain_se: f64,
}

/// Everything the search did and found.
#[derive(Debug, Clone, Serialize)]
pub struct SearchReport {
    pub search: SearchSection,
    /// Evaluations side by side, as resolved (`search.workers`, or the cores when 0).
    pub workers: usize,
    /// True for the brute-force sweep: every point of the space at the top rung.
    pub sweep: bool,
    pub candidates: Vec<Candidate>,
    /// Per candidate, the teacher trajectory it trains on.
    pub trajectory: Vec<String>,
    pub schedule: halving::Outcome,
    /// Seconds the control's tuning and runs took, before the schedule (whose budget is what
    /// was left).
    pub control_s: f64,
    pub evaluations: Vec<Evaluated>,
    pub winner: Option<usize>,
    /// The control's hyperparameters, chosen by the same grid.
    pub control_learning_rate: f64,
    pub control_weight_decay: f64,
    pub control_epochs: usize,
    /// The winner's (or, in a sweep, every candidate's) holdout measurement.
    pub holdout: Vec<HoldoutGain>,
    pub holdout_s: f64,
    pub rows_source_train: usize,
    pub rows_target_train: usize,
    pub rows_target_validation: usize,
    pub rows_target_holdout: usize,
}

/// A teacher package on a trajectory.
#[derive(Debug, Clone)]
struct Saved {
    dir: PathBuf,
    train_s: f64,
    source_auc: f64,
}

/// A teacher's labels of the target, and how accurate they are there.
#[derive(Debug, Clone)]
struct Labels {
    dir: PathBuf,
    /// Zero-shot mean AUC on the target's validation rows.
    zero_shot_auc: f64,
}

/// One teacher architecture, seed and masking, trained further as candidates need.
struct Trajectory {
    name: String,
    config: RunConfig,
    arch: TwoTower,
    saved: BTreeMap<usize, Saved>,
    /// Target labels by step, once labelled.
    labels: BTreeMap<usize, Labels>,
    /// Wall-clock seconds per training step the last time it trained (saving and labelling
    /// included), for predicting what going further costs.
    seconds_per_step: Option<f64>,
    /// Dense-layer multiply-adds per example, to scale another trajectory's rate to this one.
    multiply_adds: f64,
}

/// The source's examples, read once, when a teacher first needs training.
struct Source {
    data: TrainingData,
    /// The candidate's architecture with the vocabularies built from `fit`.
    arch: TwoTower,
    fit: Vec<usize>,
    check: Vec<usize>,
}

/// The target's rows by role.
struct Split {
    fit: Vec<usize>,
    holdout: Vec<usize>,
    inner: Vec<usize>,
    validation: Vec<usize>,
}

/// The control's runs: its chosen hyperparameters and its metrics per seed.
struct Control {
    hp: Hyper,
    validation: Vec<Vec<TaskMetrics>>,
}

/// The control on the holdout over the final seeds, per seed.
struct HoldoutControls {
    /// Tuned by the grid.
    tuned: Vec<Vec<TaskMetrics>>,
    /// At the student config's own learning rate and weight decay.
    untuned: Vec<Vec<TaskMetrics>>,
}

struct Search<'a> {
    inputs: Inputs<'a>,
    file: &'a SearchFile,
    candidates: Vec<Candidate>,
    trajectory_of: Vec<usize>,
    trajectories: Vec<Mutex<Trajectory>>,
    /// Source training batches per epoch.
    batches_per_epoch: usize,
    /// The resource of the top rung: a resource of `top` trains the whole schedule.
    top: f64,
    /// The source's examples by the features and tasks a teacher reads, loaded when first needed.
    sources: Mutex<BTreeMap<String, Arc<Source>>>,
    base: TwoTower,
    split: Split,
    control: OnceLock<Result<Control, String>>,
    holdout_controls: OnceLock<Result<HoldoutControls, String>>,
    /// Students' side-by-side trainings within one evaluation (or one holdout measurement).
    inner_workers: AtomicUsize,
    evaluations: Mutex<Vec<Evaluated>>,
    /// Seconds each finished evaluation spent on its proxy students (everything but the
    /// teacher), for predicting the next.
    student_seconds: Mutex<Vec<f64>>,
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// An error as the schedule records it.
fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The search: successive halving over candidates drawn from the space (or, with `sweep`,
/// every point of the space at the top rung), then the winner's holdout measurement.
pub fn search(inputs: Inputs<'_>, file: &SearchFile, sweep: bool) -> Result<SearchReport, TrainError> {
    file.validate().map_err(TrainError::Config)?;
    let s = &file.search;
    let candidates =
        if sweep { (0..file.space.size()).map(|i| file.space.point(i)).collect() } else { file.space.draw() };
    let workers = if s.workers == 0 { cores() } else { s.workers };

    // Trajectories: one per distinct teacher (everything but epochs and heads) and source data;
    // a teacher trained on other data is another trajectory, never reused.
    let source_rows = source_training_rows(inputs)?;
    let data = source_fingerprint(inputs.source)?;
    let mut names: Vec<String> = Vec::new();
    let mut trajectories = Vec::new();
    let mut trajectory_of = Vec::new();
    let teacher_base = |config: &RunConfig| config.architecture(inputs.source_spec);
    for c in &candidates {
        let shared = Candidate { epochs: 1, distilled_heads: Vec::new(), ..c.clone() };
        let teacher = shared.teacher_config(s.teacher_batch_size, s.teacher_learning_rate);
        let digest = retort_model::encode::fnv1a64(format!("{teacher}seed = {}\n{data}", s.seed).as_bytes());
        let name = format!("teacher-{:08x}", digest as u32);
        let k = match names.iter().position(|n| *n == name) {
            Some(k) => k,
            None => {
                let config: RunConfig =
                    toml::from_str(&teacher).map_err(|e| TrainError::Config(e.to_string()))?;
                let arch = teacher_base(&config)?;
                let saved = discover(&inputs.work.join("teachers").join(&name));
                names.push(name.clone());
                trajectories.push(Mutex::new(Trajectory {
                    name,
                    config,
                    multiply_adds: arch.macs(1) as f64,
                    arch,
                    saved,
                    labels: BTreeMap::new(),
                    seconds_per_step: None,
                }));
                names.len() - 1
            }
        };
        trajectory_of.push(k);
    }

    // The target: its split, and the student's served heads, which every head to distil must be.
    let base = file.student.architecture(inputs.target_spec)?;
    for heads in &file.space.distilled_heads {
        if let Some(h) = heads.iter().find(|h| !base.heads.iter().any(|b| &b.name == *h)) {
            return Err(TrainError::Config(format!(
                "space.distilled_heads names `{h}`, which is not one of the student's tasks ({})",
                base.heads.iter().map(|b| b.name.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
    }
    let mut target = TrainingData::load(&Dataset::open(inputs.target)?, inputs.target_spec, &base)?;
    let split = split(&target, &file.student)?;
    // The proxies' vocabularies, from the rows before the holdout (tuning's validation days too).
    let base = target.build_vocabularies(&base, &split.fit, &[])?;
    let search = Search {
        inputs,
        file,
        trajectory_of,
        trajectories,
        batches_per_epoch: source_rows.div_ceil(s.teacher_batch_size),
        top: if sweep { 1.0 } else { (s.eta as f64).powi(s.rungs as i32 - 1) },
        sources: Mutex::new(BTreeMap::new()),
        base,
        split,
        control: OnceLock::new(),
        holdout_controls: OnceLock::new(),
        inner_workers: AtomicUsize::new((cores() / workers).max(1)),
        evaluations: Mutex::new(Vec::new()),
        student_seconds: Mutex::new(Vec::new()),
        candidates,
    };
    // The control is every evaluation's reference: tuned and run first, paid from the budget.
    let started = Instant::now();
    search.control().map_err(TrainError::Config)?;
    let control_s = started.elapsed().as_secs_f64();
    let schedule = Schedule {
        eta: s.eta,
        rungs: if sweep { 1 } else { s.rungs },
        workers,
        budget: if sweep {
            Duration::MAX
        } else {
            Duration::from_secs_f64((s.budget_s - control_s).max(0.0))
        },
    };
    let outcome = halving::run(&search, search.candidates.len(), schedule);
    let evaluations = search.evaluations.lock().expect("not poisoned").clone();

    let started = Instant::now();
    let measure: Vec<usize> =
        if sweep { (0..search.candidates.len()).collect() } else { outcome.best.into_iter().collect() };
    // At the highest rung each candidate reached: the teacher and hyperparameters it had.
    let measure: Vec<&Evaluated> = measure
        .into_iter()
        .filter_map(|c| evaluations.iter().filter(|e| e.candidate == c).max_by_key(|e| e.rung))
        .collect();
    let side_by_side = workers.min(measure.len()).max(1);
    search.inner_workers.store((cores() / side_by_side).max(1), Ordering::Relaxed);
    let holdout =
        parallel::map(measure, side_by_side, |e| search.holdout_gain(e)).map_err(TrainError::Config)?;
    let control = search.control().map_err(TrainError::Config)?;
    Ok(SearchReport {
        search: file.search.clone(),
        workers,
        sweep,
        trajectory: search.trajectory_of.iter().map(|&k| names[k].clone()).collect(),
        candidates: search.candidates.clone(),
        schedule: outcome.clone(),
        control_s,
        evaluations,
        winner: outcome.best,
        control_learning_rate: control.hp.learning_rate,
        control_weight_decay: control.hp.weight_decay,
        control_epochs: control.hp.epochs,
        holdout,
        holdout_s: started.elapsed().as_secs_f64(),
        rows_source_train: source_rows,
        rows_target_train: search.split.fit.len(),
        rows_target_validation: search.split.validation.len(),
        rows_target_holdout: search.split.holdout.len(),
    })
}

/// The teacher packages a trajectory already has under `dir` (`<step>/`, with a checkpoint).
fn discover(dir: &Path) -> BTreeMap<usize, Saved> {
    let mut saved = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return saved };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(step) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        // Anything else in the directory is not the search's: it is not read, and training to
        // its step fails, naming it, rather than overwrite it.
        let Ok(manifest) = Manifest::from_path(&path.join(package::MANIFEST)) else { continue };
        if !path.join(CHECKPOINT).is_file() {
            continue;
        }
        let note = |k: &str| manifest.provenance.notes.get(k).and_then(|v| v.parse::<f64>().ok());
        if let (Some(train_s), Some(source_auc)) = (note("train_seconds"), note("source_auc")) {
            saved.insert(step, Saved { dir: path, train_s, source_auc });
        }
    }
    saved
}

/// The source's partitions by name and size: what a trajectory's teachers were trained on.
fn source_fingerprint(dir: &Path) -> Result<String, TrainError> {
    let mut out = String::new();
    for p in &Dataset::open(dir)?.partitions {
        let len = std::fs::metadata(&p.path)
            .map_err(|e| TrainError::Store(format!("{}: {e}", p.path.display())))?
            .len();
        out.push_str(&format!("{} {len}\n", p.name));
    }
    Ok(out)
}

/// How many source rows a teacher trains on: those before the source's holdout day.
fn source_training_rows(inputs: Inputs<'_>) -> Result<usize, TrainError> {
    // No features and no labels: only the times are read.
    let data = TrainingData::load_for(&Dataset::open(inputs.source)?, inputs.source_spec, &[], &[])?;
    Ok(data.split_at(data.last_days_cutoff(1)).0.len())
}

fn split(data: &TrainingData, config: &RunConfig) -> Result<Split, TrainError> {
    let crate::release::run::Holdout { cutoff, fit, rows: holdout } = config.holdout(data)?;
    let (inner, validation): (Vec<usize>, Vec<usize>) =
        fit.iter().partition(|&&r| data.ts[r] < config.validation_cutoff(cutoff));
    if inner.is_empty() || validation.is_empty() {
        return Err(TrainError::Config(format!(
            "the target's training days leave {} training and {} validation rows; the search \
             needs both",
            inner.len(),
            validation.len(),
        )));
    }
    Ok(Split { fit, holdout, inner, validation })
}

impl Search<'_> {
    /// The schedule step a candidate's teacher is trained to at `resource`.
    fn teacher_step(&self, candidate: usize, resource: f64) -> usize {
        let whole = self.candidates[candidate].epochs * self.batches_per_epoch;
        ((whole as f64 * (resource / self.top).min(1.0)).ceil() as usize).clamp(1, whole)
    }

    /// The source's examples encoded for `arch`'s features and tasks.
    fn source(&self, arch: &TwoTower) -> Result<Arc<Source>, String> {
        let names =
            |v: &mut dyn Iterator<Item = &String>| v.map(String::as_str).collect::<Vec<_>>().join(",");
        let key = format!(
            "{};{}",
            names(&mut arch.features.iter().map(|f| &f.name)),
            names(&mut arch.heads.iter().map(|h| &h.name))
        );
        let mut sources = self.sources.lock().expect("not poisoned");
        if let Some(s) = sources.get(&key) {
            return Ok(s.clone());
        }
        let dataset = Dataset::open(self.inputs.source).map_err(text)?;
        let mut data = TrainingData::load(&dataset, self.inputs.source_spec, arch).map_err(text)?;
        let (fit, holdout) = data.split_at(data.last_days_cutoff(1));
        let arch = data.build_vocabularies(arch, &fit, &[]).map_err(text)?;
        let every = holdout.len().div_ceil(self.file.search.source_check_rows.max(1)).max(1);
        let check = holdout.iter().step_by(every).copied().collect();
        let source = Arc::new(Source { data, arch, fit, check });
        sources.insert(key, source.clone());
        Ok(source)
    }

    /// Trains trajectory `k` to `step` (from its furthest saved step before it) and labels the
    /// target with the teacher there; returns the package and its label directory. On the way,
    /// it saves the steps other candidates on the trajectory need at `resource`, if given, so that a
    /// one-epoch candidate finds the first half of a two-epoch one's run.
    fn teacher_at(
        &self,
        k: usize,
        step: usize,
        resource: Option<f64>,
        deadline: Option<Instant>,
    ) -> Result<(Saved, Labels), String> {
        let mut t = self.trajectories[k].lock().expect("not poisoned");
        let started = Instant::now();
        let from = t.saved.range(..=step).next_back().map_or(0, |(&s, _)| s);
        let mut waypoints: Vec<usize> = (0..self.candidates.len())
            .filter(|&c| self.trajectory_of[c] == k)
            .filter_map(|c| resource.map(|r| self.teacher_step(c, r)))
            .filter(|&s| s < step && !t.saved.contains_key(&s))
            .collect();
        waypoints.sort_unstable();
        waypoints.dedup();
        for w in waypoints.into_iter().chain([step]) {
            if !t.saved.contains_key(&w) {
                let s = self.train_teacher(&t, w, deadline)?;
                t.saved.insert(w, s);
            }
        }
        let saved = t.saved[&step].clone();
        if let Some(labels) = t.labels.get(&step) {
            return Ok((saved, labels.clone()));
        }
        // Labelled once per teacher package, however many candidates read it.
        // The mapping as far as this teacher reads: a teacher kept off a feature or a task has
        // no input or head for it.
        let manifest = Manifest::from_path(&saved.dir.join(package::MANIFEST)).map_err(text)?;
        let labeller = Labeller::new(
            &saved.dir,
            EngineKind::Tract,
            self.inputs.mapping.for_teacher(&manifest),
            self.inputs.target_spec.clone(),
            &self.inputs.work.join("labels"),
            LabelOptions {
                progress: false,
                threads: self.inner_workers.load(Ordering::Relaxed),
                ..LabelOptions::default()
            },
        )
        .map_err(text)?;
        labeller
            .label_dataset(&Dataset::open(self.inputs.target).map_err(text)?)
            .and_then(crate::label::labeller::LabelReport::complete)
            .map_err(text)?;
        let dir = labeller.dir().to_path_buf();
        let labels = Labels { zero_shot_auc: self.zero_shot(&dir)?, dir };
        t.labels.insert(step, labels.clone());
        if step > from {
            t.seconds_per_step = Some(started.elapsed().as_secs_f64() / (step - from) as f64);
        }
        Ok((saved, labels))
    }

    fn train_teacher(&self, t: &Trajectory, step: usize, deadline: Option<Instant>) -> Result<Saved, String> {
        let s = &self.file.search;
        let from = t.saved.range(..step).next_back().map(|(&k, v)| (k, v.clone()));
        let source = self.source(&t.arch)?;
        let arch = &source.arch;
        let student = Student::new(arch, s.seed, &Device::Cpu).map_err(text)?;
        let resume = match &from {
            Some((_, saved)) => {
                let ck = Checkpoint::read(&saved.dir.join(CHECKPOINT)).map_err(text)?;
                ck.restore(&student).map_err(text)?;
                Some(ck.optimizer)
            }
            None => None,
        };
        // The candidate's teacher config (batch size, learning rate, masking) counted in steps.
        let config = TrainConfig {
            seed: s.seed,
            steps: step,
            start_step: from.as_ref().map_or(0, |(k, _)| *k),
            deadline,
            // Teachers train side by side, a core each; each logs a line when it is done.
            progress: false,
            threads: 1,
            ..t.config.train_config()
        };
        let plan = Plan::new(arch, &DistillConfig::default())?;
        let started = Instant::now();
        let (_, optimizer) =
            train_resuming(&student, &source.data, &source.fit, &[], &config, &plan, resume).map_err(text)?;
        let train_s = from.as_ref().map_or(0.0, |(_, s)| s.train_s) + started.elapsed().as_secs_f64();
        let metrics = evaluate(&student, &source.data, &source.check, arch).map_err(text)?;
        let source_auc = mean_auc(&metrics);
        let through = source.fit.iter().map(|&r| source.data.ts[r]).max().unwrap_or(0);
        let checkpoint = Checkpoint::capture(&student, optimizer, through).map_err(text)?;
        let version = step.to_string();
        let (mut manifest, graph) = scaffold::package(
            &t.name,
            &version,
            arch,
            &student.weights().map_err(text)?,
            &[(arch.heads[0].name.as_str(), 1.0)],
            "A candidate teacher of retort teacher-search.",
            &format!(
                "retort teacher-search (seed {}, step {step} of {} per epoch)",
                s.seed, self.batches_per_epoch
            ),
            scaffold::golden_for(&arch.features),
        );
        manifest.provenance.notes.insert("train_seconds".into(), train_s.to_string());
        manifest.provenance.notes.insert("source_auc".into(), source_auc.to_string());
        manifest.provenance.notes.insert("config".into(), toml::to_string(&t.config).unwrap_or_default());
        for m in &metrics {
            if let Some(a) = m.auc {
                manifest.provenance.metrics.insert(format!("{}_auc", m.task), (a * 1e6).round() / 1e6);
            }
        }
        let teachers = self.inputs.work.join("teachers");
        let dir = package::write_with(&teachers, &manifest, &graph, |d| {
            checkpoint.write(&d.join(CHECKPOINT)).map_err(|e| std::io::Error::other(e.to_string()))
        })
        .map_err(text)?;
        tracing::info!(teacher = %t.name, step, train_s, source_auc, "teacher trained");
        Ok(Saved { dir, train_s, source_auc })
    }

    /// The target's examples, with teacher labels from `labels` for `plan` when it distils.
    fn target(&self, plan: &Plan, labels: Option<&Path>) -> Result<TrainingData, String> {
        let mut data = TrainingData::load(
            &Dataset::open(self.inputs.target).map_err(text)?,
            self.inputs.target_spec,
            &self.base,
        )
        .map_err(text)?;
        if let Some(labels) = labels {
            data.attach_teacher(labels, &plan.teacher_labels).map_err(text)?;
        }
        Ok(data)
    }

    /// The `[tune]` grid's choice for `plan` (trained on the inner rows with the first seed,
    /// judged on validation; ties to the first in grid order).
    fn tune(&self, data: &TrainingData, plan: &Plan, deadline: Option<Instant>) -> Result<Hyper, String> {
        let grid = grid(&self.file.student);
        if grid.is_empty() {
            return Ok(Hyper::of(&self.file.student));
        }
        let scores = parallel::map(grid.clone(), self.inner_workers.load(Ordering::Relaxed), |hp| {
            let trial = Trial { data, base: &self.base, plan, config: &self.file.student, seed: 1, deadline };
            trial.run(hp, &self.split.inner, &self.split.validation).map(|m| mean_auc(&m))
        })
        .map_err(text)?;
        let mut best = 0;
        for (i, s) in scores.iter().enumerate() {
            if *s > scores[best] {
                best = i;
            }
        }
        Ok(grid[best])
    }

    /// `plan` trained on `train` with `hp` and judged on `judge`, one run per seed `1..=seeds`.
    #[allow(clippy::too_many_arguments)]
    fn seeds(
        &self,
        data: &TrainingData,
        plan: &Plan,
        hp: Hyper,
        seeds: u64,
        train: &[usize],
        judge: &[usize],
        deadline: Option<Instant>,
    ) -> Result<Vec<Vec<TaskMetrics>>, String> {
        let config = &self.file.student;
        parallel::map((1..=seeds).collect(), self.inner_workers.load(Ordering::Relaxed), |seed| {
            Trial { data, base: &self.base, plan, config, seed, deadline }.run(hp, train, judge)
        })
        .map_err(text)
    }

    fn control_plan(&self) -> Result<Plan, String> {
        Plan::new(&self.base, &DistillConfig::default())
    }

    /// The control, tuned by the grid and run over the proxy seeds; computed once.
    fn control(&self) -> Result<&Control, String> {
        self.control
            .get_or_init(|| {
                let plan = self.control_plan()?;
                let data = self.target(&plan, None)?;
                let mut hp = self.tune(&data, &plan, None)?;
                let s = &self.split;
                if stops_early(&self.file.student).map_err(text)? {
                    // One rule for every proxy student: the control's best epoch.
                    let config = &self.file.student;
                    let trial =
                        Trial { data: &data, base: &self.base, plan: &plan, config, seed: 1, deadline: None };
                    let log = trial.stop_early(hp, &s.inner, &s.validation).map_err(text)?;
                    hp.epochs = log.best_epoch + 1;
                }
                let validation = self.seeds(
                    &data,
                    &plan,
                    hp,
                    self.file.search.proxy_seeds,
                    &s.inner,
                    &s.validation,
                    None,
                )?;
                Ok(Control { hp, validation })
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The plan distilling `heads` as the student config's `[distill]` says (an auxiliary head
    /// with the defaults for a head it does not name).
    fn student_plan(&self, heads: &[String]) -> Result<Plan, String> {
        if let Some(h) = heads.iter().find(|h| !self.base.heads.iter().any(|b| &b.name == *h)) {
            return Err(format!("space.distilled_heads names `{h}`, which the student has no task for"));
        }
        Plan::new(&self.base, &self.file.student.distill.for_heads(heads))
    }

    /// The teacher's zero-shot mean AUC over the target tasks it has a label for.
    fn zero_shot(&self, labels: &Path) -> Result<f64, String> {
        let mut data = self.target(&self.control_plan()?, None)?;
        let tasks: Vec<String> = self.base.heads.iter().map(|h| h.name.clone()).collect();
        let mut aucs = Vec::new();
        for (h, task) in tasks.iter().enumerate() {
            if data.attach_teacher(labels, std::slice::from_ref(task)).is_err() {
                continue;
            }
            let rows: Vec<usize> =
                self.split.validation.iter().copied().filter(|&r| data.teacher[0][r].is_finite()).collect();
            let scores: Vec<f32> = rows.iter().map(|&r| data.teacher[0][r]).collect();
            let truth: Vec<f32> = rows.iter().map(|&r| data.labels[h][r]).collect();
            aucs.extend(auc(&scores, &truth));
        }
        if aucs.is_empty() {
            return Err(format!("{} labels none of the student's tasks", labels.display()));
        }
        Ok(aucs.iter().sum::<f64>() / aucs.len() as f64)
    }

    fn evaluate_candidate(
        &self,
        c: usize,
        resource: f64,
        deadline: Option<Instant>,
    ) -> Result<Evaluated, String> {
        let started = Instant::now();
        let candidate = &self.candidates[c];
        let k = self.trajectory_of[c];
        let step = self.teacher_step(c, resource);
        let (teacher, labels) = self.teacher_at(k, step, Some(resource), deadline)?;
        let students_started = Instant::now();
        let control = self.control()?;
        let plan = self.student_plan(&candidate.distilled_heads)?;
        let data = self.target(&plan, Some(&labels.dir))?;
        let mut hp = self.tune(&data, &plan, deadline)?;
        if stops_early(&self.file.student).map_err(text)? {
            hp.epochs = control.hp.epochs;
        }
        let s = &self.split;
        let seeds = self.file.search.proxy_seeds;
        let runs = self.seeds(&data, &plan, hp, seeds, &s.inner, &s.validation, deadline)?;
        let diffs: Vec<f64> =
            runs.iter().zip(&control.validation).map(|(a, b)| mean_auc(a) - mean_auc(b)).collect();
        let (gain, std) = mean_std(&diffs);
        let t = self.trajectories[k].lock().expect("not poisoned");
        let (one, two) = (t.arch.macs(1), t.arch.macs(2));
        let e = Evaluated {
            candidate: c,
            rung: 0,
            teacher: format!("{}/{step}", t.name),
            teacher_fraction: step as f64 / (candidate.epochs * self.batches_per_epoch) as f64,
            teacher_train_s: teacher.train_s,
            teacher_multiply_adds: two - one,
            teacher_source_auc: teacher.source_auc,
            teacher_zero_shot_auc: labels.zero_shot_auc,
            gain,
            gain_se: std / (diffs.len() as f64).sqrt(),
            learning_rate: hp.learning_rate,
            weight_decay: hp.weight_decay,
            epochs: hp.epochs,
            cost_s: started.elapsed().as_secs_f64(),
        };
        self.student_seconds.lock().expect("not poisoned").push(students_started.elapsed().as_secs_f64());
        tracing::info!(candidate = c, resource, teacher = %e.teacher, gain, cost_s = e.cost_s, "evaluated");
        Ok(e)
    }

    /// The control on the holdout over the final seeds: tuned by the grid, and at the student
    /// config's own hyperparameters; computed once.
    fn holdout_controls(&self) -> Result<&HoldoutControls, String> {
        self.holdout_controls
            .get_or_init(|| {
                let control = self.control()?;
                let (seeds, s, student) = (self.file.search.final_seeds, &self.split, &self.file.student);
                let plan = self.control_plan()?;
                let plain = self.target(&plan, None)?;
                let tuned = self.seeds(&plain, &plan, control.hp, seeds, &s.fit, &s.holdout, None)?;
                let own = Hyper::of(student);
                let untuned = self.seeds(&plain, &plan, own, seeds, &s.fit, &s.holdout, None)?;
                Ok(HoldoutControls { tuned, untuned })
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// A candidate's student on the holdout, over the final seeds, against the tuned control
    /// and the control at the config's own hyperparameters.
    fn holdout_gain(&self, e: &Evaluated) -> Result<HoldoutGain, String> {
        let c = e.candidate;
        let (_, step) = e.teacher.rsplit_once('/').expect("name/step");
        let step: usize = step.parse().map_err(text)?;
        let (_, Labels { dir: labels, .. }) = self.teacher_at(self.trajectory_of[c], step, None, None)?;
        let HoldoutControls { tuned, untuned } = self.holdout_controls()?;
        let (seeds, s) = (self.file.search.final_seeds, &self.split);
        let plan = self.student_plan(&self.candidates[c].distilled_heads)?;
        let data = self.target(&plan, Some(&labels))?;
        let hp = Hyper { learning_rate: e.learning_rate, weight_decay: e.weight_decay, epochs: e.epochs };
        let distilled = self.seeds(&data, &plan, hp, seeds, &s.fit, &s.holdout, None)?;
        let paired =
            |a: &[Vec<TaskMetrics>], b: &[Vec<TaskMetrics>], f: &dyn Fn(&[TaskMetrics]) -> Option<f64>| {
                let d: Vec<f64> = a.iter().zip(b).filter_map(|(x, y)| Some(f(x)? - f(y)?)).collect();
                let (m, sd) = mean_std(&d);
                (m, sd / (d.len() as f64).sqrt().max(1.0))
            };
        let tasks = self
            .base
            .heads
            .iter()
            .map(|h| {
                let of = |m: &[TaskMetrics]| m.iter().find(|t| t.task == h.name).and_then(|t| t.auc);
                let mean = |runs: &[Vec<TaskMetrics>]| {
                    let v: Vec<f64> = runs.iter().filter_map(|m| of(m)).collect();
                    mean_std(&v).0
                };
                let (gain, gain_se) = paired(&distilled, tuned, &of);
                TaskGain {
                    task: h.name.clone(),
                    distilled: self.candidates[c].distilled_heads.contains(&h.name),
                    control_auc: mean(tuned),
                    student_auc: mean(&distilled),
                    gain,
                    gain_se,
                }
            })
            .collect();
        let overall = |m: &[TaskMetrics]| Some(mean_auc(m));
        let (gain, gain_se) = paired(&distilled, tuned, &overall);
        let (gain_untuned, gain_untuned_se) = paired(&distilled, untuned, &overall);
        Ok(HoldoutGain {
            candidate: c,
            teacher: e.teacher.clone(),
            seeds,
            tasks,
            gain,
            gain_se,
            gain_untuned,
            gain_untuned_se,
        })
    }
}

impl Objective for Search<'_> {
    fn evaluate(&self, index: usize, resource: f64, allowed: Duration) -> Result<Evaluation, Failed> {
        let started = Instant::now();
        // A little is kept back for what cannot stop mid-way (labelling, a last step).
        // (A sweep has no budget: no deadline.)
        let deadline = started.checked_add(allowed.saturating_sub(allowed / 20));
        let mut e = self
            .evaluate_candidate(index, resource, deadline)
            .map_err(|why| Failed { why, cost: started.elapsed() })?;
        e.rung = resource.log(self.file.search.eta as f64).round() as usize;
        let score = e.gain;
        self.evaluations.lock().expect("not poisoned").push(e);
        Ok(Evaluation { score, cost: started.elapsed() })
    }

    /// The teacher steps still to train at the trajectory's last rate (or, for a trajectory
    /// not trained yet, the others' rates scaled by multiply-adds), plus the mean of the proxy
    /// students so far.
    fn predict(&self, index: usize, resource: f64) -> Option<Duration> {
        let students = {
            let s = self.student_seconds.lock().expect("not poisoned");
            (!s.is_empty()).then(|| s.iter().sum::<f64>() / s.len() as f64)?
        };
        let step = self.teacher_step(index, resource);
        let k = self.trajectory_of[index];
        let (to_train, rate, macs) = {
            let t = self.trajectories[k].lock().expect("not poisoned");
            let from = t.saved.range(..=step).next_back().map_or(0, |(&s, _)| s);
            (step - from, t.seconds_per_step, t.multiply_adds)
        };
        if to_train == 0 {
            return Some(Duration::from_secs_f64(students));
        }
        let rate = rate.or_else(|| {
            let per_mac: Vec<f64> = self
                .trajectories
                .iter()
                .filter_map(|t| {
                    let t = t.lock().expect("not poisoned");
                    t.seconds_per_step.map(|r| r / t.multiply_adds)
                })
                .collect();
            (!per_mac.is_empty()).then(|| macs * per_mac.iter().sum::<f64>() / per_mac.len() as f64)
        })?;
        Some(Duration::from_secs_f64(students + rate * to_train as f64))
    }
}
