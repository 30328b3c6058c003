//! `retort distill`: the control against its distilled twins, over paired seeds, in the shape
//! of Paper A's table: per task, the teacher zero-shot, the control, `direct` and `aux`, with
//! each distilled variant's paired difference from the control and its standard error.
//!
//! Paired means: for one seed, every variant starts from the same shared weights and sees the
//! same batches in the same order, so the difference measures the teacher, not the luck of
//! the draw.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Device;
use serde::Serialize;

use crate::data::dataset::Dataset;
use crate::data::spec::DataSpec;
use crate::eval::holdout::TaskMetrics;
use crate::eval::metrics::auc;
use crate::release::run::{RunConfig, evaluate};
use crate::train::fit::{MISSING, TrainError, TrainingData, train_plan};
use crate::train::kd::{DistillConfig, Mode, Plan};
use crate::train::parallel;
use crate::train::student::Student;
use retort_model::two_tower::TwoTower;

/// The variants compared, in table order.
pub const VARIANTS: [&str; 3] = ["control", "direct", "aux"];

#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub variant: String,
    pub seed: u64,
    pub metrics: Vec<TaskMetrics>,
    /// The same on the cold users' holdout rows ([`Comparison::cold`]); empty without them.
    pub cold_metrics: Vec<TaskMetrics>,
}

/// One setting of the `[tune]` grid.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Hyper {
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub epochs: usize,
}

impl Hyper {
    /// The setting `config`'s `[train]` gives.
    pub fn of(config: &RunConfig) -> Hyper {
        Hyper {
            learning_rate: config.train.learning_rate,
            weight_decay: config.train.weight_decay,
            epochs: config.train.epochs,
        }
    }
}

/// The hyperparameters a variant ran with, and its validation score when they were searched.
#[derive(Debug, Clone, Serialize)]
pub struct Chosen {
    pub variant: String,
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub epochs: usize,
    /// Mean validation AUC over tasks of the chosen setting (when a grid was searched).
    pub validation_auc: Option<f64>,
}

impl Chosen {
    pub fn hyper(&self) -> Hyper {
        Hyper { learning_rate: self.learning_rate, weight_decay: self.weight_decay, epochs: self.epochs }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub chosen: Vec<Chosen>,
    pub tasks: Vec<String>,
    /// Distilled task → the teacher label it learns from.
    pub distilled: BTreeMap<String, String>,
    /// Task → the teacher's own holdout AUC on it, zero-shot through the mapping: every
    /// binary task the label store has a teacher label for, distilled or not.
    pub teacher_auc: BTreeMap<String, f64>,
    /// The same for regression tasks: the root mean squared error of the teacher's value.
    pub teacher_rmse: BTreeMap<String, f64>,
    pub runs: Vec<RunResult>,
    pub rows_train: usize,
    pub rows_holdout: usize,
    /// The epochs every variant's seeds trained: `train.epochs`, or with `train.patience` set
    /// the control's best epoch on the validation days.
    pub epochs: usize,
    /// With `train.patience` set: the control's validation loss per epoch, which chose `epochs`.
    pub control_validation_losses: Vec<f64>,
    /// Where the spec names a user column: the holdout's users with no training rows, whom
    /// every student meets as a stranger (a new user of the app).
    pub cold: Option<ColdUsers>,
}

/// The holdout rows of users with no training rows, reported apart.
#[derive(Debug, Clone, Serialize)]
pub struct ColdUsers {
    /// The spec's user column.
    pub column: String,
    pub users: usize,
    pub rows: usize,
    /// Task → the teacher's AUC on these rows, as [`Comparison::teacher_auc`].
    pub teacher_auc: BTreeMap<String, f64>,
}

/// The rows of `holdout` whose user (`users`, per row) has no row in `train`; rows without a
/// user are nobody's and never cold. With the number of such users.
pub fn cold_rows(users: &[u32], train: &[usize], holdout: &[usize]) -> (Vec<usize>, usize) {
    let known: std::collections::HashSet<u32> = train.iter().map(|&r| users[r]).collect();
    let rows: Vec<usize> =
        holdout.iter().copied().filter(|&r| users[r] != MISSING && !known.contains(&users[r])).collect();
    let strangers: std::collections::HashSet<u32> = rows.iter().map(|&r| users[r]).collect();
    (rows, strangers.len())
}

/// Task → the teacher's AUC (binary tasks) and RMSE (regression tasks) on some rows.
struct TeacherScores {
    auc: BTreeMap<String, f64>,
    rmse: BTreeMap<String, f64>,
}

/// The teacher's scores on `rows`, per task of `scored` (task → its label, the `k`-th of
/// `data.teacher` in key order).
fn teacher_metrics(
    data: &TrainingData,
    base: &TwoTower,
    scored: &BTreeMap<String, String>,
    rows: &[usize],
) -> Result<TeacherScores, TrainError> {
    let (mut teacher_auc, mut teacher_rmse) = (BTreeMap::new(), BTreeMap::new());
    for (k, task) in scored.keys().enumerate() {
        let h = base.heads.iter().position(|h| &h.name == task).ok_or_else(|| {
            TrainError::Config(format!("distillation names task `{task}`, which the student does not have"))
        })?;
        let rows: Vec<usize> = rows.iter().copied().filter(|&r| data.teacher[k][r].is_finite()).collect();
        let scores: Vec<f32> = rows.iter().map(|&r| data.teacher[k][r]).collect();
        let labels: Vec<f32> = rows.iter().map(|&r| data.labels[h][r]).collect();
        match base.heads[h].kind {
            retort_model::manifest::HeadKind::Binary => {
                if let Some(a) = auc(&scores, &labels) {
                    teacher_auc.insert(task.clone(), a);
                }
            }
            retort_model::manifest::HeadKind::Regression if !rows.is_empty() => {
                let mse = scores.iter().zip(&labels).map(|(s, y)| ((s - y) as f64).powi(2)).sum::<f64>()
                    / rows.len() as f64;
                teacher_rmse.insert(task.clone(), mse.sqrt());
            }
            retort_model::manifest::HeadKind::Regression => {}
        }
    }
    Ok(TeacherScores { auc: teacher_auc, rmse: teacher_rmse })
}

/// The distillation config of one variant: `config`'s tasks, all in that variant's mode.
fn variant_config(config: &DistillConfig, variant: &str) -> DistillConfig {
    let mode = match variant {
        "direct" => Mode::Direct,
        "aux" => Mode::Aux,
        _ => return DistillConfig::default(),
    };
    let mut c = config.clone();
    for d in c.tasks.values_mut() {
        d.mode = mode;
    }
    if variant != "aux" {
        c.new_heads.clear();
    }
    c
}

pub fn compare(
    data_dir: &Path,
    spec: &DataSpec,
    labels: &Path,
    config: &RunConfig,
    seeds: &[u64],
) -> Result<Comparison, TrainError> {
    if config.distill.tasks.is_empty() {
        return Err(TrainError::Config(
            "name the tasks to distil under [distill.tasks] (their mode is set per variant)".into(),
        ));
    }
    let base = config.architecture(spec)?;
    let mut data = TrainingData::load(&Dataset::open(data_dir)?, spec, &base)?;
    let crate::release::run::Holdout { cutoff, fit, rows: holdout } = config.holdout(&data)?;
    // One vocabulary for every variant and phase: the tuning grid's validation days are among
    // the rows it is built from, the holdout never.
    let base = data.build_vocabularies(&base, &fit, &[])?;

    let distilled: BTreeMap<String, String> = config
        .distill
        .tasks
        .iter()
        .map(|(task, d)| (task.clone(), d.teacher.clone().unwrap_or_else(|| task.clone())))
        .collect();
    // The teacher is scored on every task it has a label for: the distilled ones through
    // their configured label, the others where the store has one of the task's own name.
    let in_store = crate::label::store::label_names(labels)?;
    let mut scored: BTreeMap<String, String> = distilled.clone();
    for h in &base.heads {
        if !scored.contains_key(&h.name) && in_store.contains(&h.name) {
            scored.insert(h.name.clone(), h.name.clone());
        }
    }
    let teacher_names: Vec<String> = scored.values().cloned().collect();
    data.attach_teacher(labels, &teacher_names)?;
    let TeacherScores { auc: teacher_auc, rmse: teacher_rmse } =
        teacher_metrics(&data, &base, &scored, &holdout)?;
    let (cold_holdout, cold) = match (&spec.columns.user, &data.users) {
        (Some(column), Some(users)) => {
            let (rows, users) = cold_rows(users, &fit, &holdout);
            let teacher_auc = teacher_metrics(&data, &base, &scored, &rows)?.auc;
            let cold = ColdUsers { column: column.clone(), users, rows: rows.len(), teacher_auc };
            (rows, Some(cold))
        }
        _ => (Vec::new(), None),
    };
    let teacher_names: Vec<String> = distilled.values().cloned().collect();

    // Every variant trains on one copy of the data, with the union of their teacher labels.
    let mut plans = Vec::new();
    let mut union = teacher_names.clone();
    for variant in VARIANTS {
        let plan = Plan::new(&base, &variant_config(&config.distill, variant)).map_err(TrainError::Config)?;
        for l in &plan.teacher_labels {
            if !union.contains(l) {
                union.push(l.clone());
            }
        }
        plans.push(plan);
    }
    data.attach_teacher(labels, &union)?;
    let plans: Vec<Plan> = plans
        .into_iter()
        .map(|p| if p.uses_teacher() { p.reading_labels(&union) } else { Ok(p) })
        .collect::<Result<_, _>>()
        .map_err(TrainError::Config)?;
    let data = &data;

    // The same search for every variant: grid on the first seed, trained on all but the last
    // training days (`validation_days`), judged on them by the mean AUC over tasks.
    let grid = grid(config);
    let validation_cutoff = config.validation_cutoff(cutoff);
    let (inner, validation): (Vec<usize>, Vec<usize>) =
        fit.iter().partition(|&&r| data.ts[r] < validation_cutoff);
    let searching = !grid.is_empty() && !inner.is_empty() && !validation.is_empty();
    let stopping = stops_early(config)?;
    let trials: Vec<(usize, Hyper)> = if searching {
        (0..VARIANTS.len()).flat_map(|v| grid.iter().map(move |&hp| (v, hp))).collect()
    } else {
        Vec::new()
    };
    let first_seed = seeds.first().copied().unwrap_or(1);
    let scores = parallel::map(trials.clone(), 0, |(v, hp)| {
        let student = Trial { data, base: &base, plan: &plans[v], config, seed: first_seed, deadline: None };
        Ok::<_, TrainError>(mean_auc(&student.run(hp, &inner, &validation)?))
    })?;
    let chosen_of = |variant: &str, hp: Hyper, validation_auc| Chosen {
        variant: variant.to_string(),
        learning_rate: hp.learning_rate,
        weight_decay: hp.weight_decay,
        epochs: hp.epochs,
        validation_auc,
    };
    let mut chosen: Vec<Chosen> = VARIANTS
        .iter()
        .enumerate()
        .map(|(v, variant)| {
            let mut best = chosen_of(variant, Hyper::of(config), None);
            // In grid order, so ties go to the first, whatever order the trials finished in.
            for (&(tv, hp), &score) in trials.iter().zip(&scores) {
                if tv == v && best.validation_auc.is_none_or(|b| score > b) {
                    best = chosen_of(variant, hp, Some(score));
                }
            }
            best
        })
        .collect();

    // Early stopping under one rule for every variant: the control's validation loss decides
    // how many epochs all of them train, so each variant's gain is measured at the control's
    // best budget, never at a budget each picked on its own.
    let (epochs, control_validation_losses) = if stopping && !inner.is_empty() && !validation.is_empty() {
        let trial = Trial { data, base: &base, plan: &plans[0], config, seed: first_seed, deadline: None };
        let log = trial.stop_early(chosen[0].hyper(), &inner, &validation)?;
        tracing::info!(epochs = log.best_epoch + 1, "the control's validation loss chose the epochs");
        for c in &mut chosen {
            c.epochs = log.best_epoch + 1;
        }
        (log.best_epoch + 1, log.validation_losses)
    } else {
        (chosen[0].epochs, Vec::new())
    };

    let jobs: Vec<(u64, usize)> =
        seeds.iter().flat_map(|&seed| (0..VARIANTS.len()).map(move |v| (seed, v))).collect();
    let runs = parallel::map(jobs, 0, |(seed, v)| {
        let variant = VARIANTS[v];
        let student = Trial { data, base: &base, plan: &plans[v], config, seed, deadline: None };
        let mut judged = student.run_judging(chosen[v].hyper(), &fit, &[&holdout, &cold_holdout])?;
        let cold_metrics = judged.pop().unwrap_or_default();
        let metrics = judged.pop().unwrap_or_default();
        tracing::info!(variant, seed, "trained");
        Ok::<_, TrainError>(RunResult { variant: variant.to_string(), seed, metrics, cold_metrics })
    })?;
    Ok(Comparison {
        chosen,
        tasks: base.heads.iter().map(|h| h.name.clone()).collect(),
        distilled,
        teacher_auc,
        teacher_rmse,
        runs,
        rows_train: fit.len(),
        rows_holdout: holdout.len(),
        epochs,
        control_validation_losses,
        cold,
    })
}

/// Whether `config` stops its students early (`train.patience`, counting in epochs): then the
/// control's best epoch on the validation days is every student's number of epochs. Refused
/// together with `tune.epochs`, which would choose them too.
pub fn stops_early(config: &RunConfig) -> Result<bool, TrainError> {
    if config.train.patience > 0 && !config.tune.epochs.is_empty() {
        return Err(TrainError::Config(
            "train.patience and tune.epochs both choose the number of epochs; set one of them".into(),
        ));
    }
    Ok(config.train.patience > 0 && config.train.steps == 0)
}

/// Every setting of `config`'s `[tune]` grid, learning rate outermost, then weight decay, then
/// epochs; a list left empty takes `[train]`'s one value. Empty when every list is.
pub fn grid(config: &RunConfig) -> Vec<Hyper> {
    let t = &config.tune;
    if t.learning_rates.is_empty() && t.weight_decays.is_empty() && t.epochs.is_empty() {
        return Vec::new();
    }
    let or = |list: &[f64], one: f64| if list.is_empty() { vec![one] } else { list.to_vec() };
    let learning_rates = or(&t.learning_rates, config.train.learning_rate);
    let weight_decays = or(&t.weight_decays, config.train.weight_decay);
    let epochs = if t.epochs.is_empty() { vec![config.train.epochs] } else { t.epochs.clone() };
    let mut grid = Vec::new();
    for &learning_rate in &learning_rates {
        for &weight_decay in &weight_decays {
            for &epochs in &epochs {
                grid.push(Hyper { learning_rate, weight_decay, epochs });
            }
        }
    }
    grid
}

/// One student of a comparison: its data, plan and seed (initial weights and batch order).
#[derive(Clone, Copy)]
pub struct Trial<'a> {
    pub data: &'a TrainingData,
    /// The served heads, which the metrics are of.
    pub base: &'a TwoTower,
    pub plan: &'a Plan,
    /// Everything but the learning rate, weight decay and seed.
    pub config: &'a RunConfig,
    pub seed: u64,
    /// Training stops with [`TrainError::Deadline`] once this has passed.
    pub deadline: Option<std::time::Instant>,
}

impl Trial<'_> {
    /// Trains on `train` with the learning rate, weight decay and epochs of `hp`; the metrics
    /// on `judge`.
    pub fn run(&self, hp: Hyper, train: &[usize], judge: &[usize]) -> Result<Vec<TaskMetrics>, TrainError> {
        Ok(self.run_judging(hp, train, &[judge])?.pop().unwrap_or_default())
    }

    /// [`Trial::run`], with the metrics on each of `judges` (none on an empty one).
    pub fn run_judging(
        &self,
        hp: Hyper,
        train: &[usize],
        judges: &[&[usize]],
    ) -> Result<Vec<Vec<TaskMetrics>>, TrainError> {
        let (student, config) = self.start(hp)?;
        train_plan(&student, self.data, train, &config, self.plan)?;
        judges
            .iter()
            .map(|judge| {
                if judge.is_empty() {
                    Ok(Vec::new())
                } else {
                    evaluate(&student, self.data, judge, self.base)
                }
            })
            .collect()
    }

    /// Trains on `train` with `hp` and early stopping on `validation` (`train.patience`, up to
    /// `hp.epochs`), returning the loss curves and the best epoch.
    pub fn stop_early(
        &self,
        hp: Hyper,
        train: &[usize],
        validation: &[usize],
    ) -> Result<crate::train::fit::TrainLog, TrainError> {
        let (student, config) = self.start(hp)?;
        let config = crate::train::fit::TrainConfig { patience: self.config.train.patience, ..config };
        crate::train::fit::train_validated(&student, self.data, train, validation, &config, self.plan)
    }

    /// A new student of this trial's seed, and the training settings of `hp`.
    fn start(&self, hp: Hyper) -> Result<(Student, crate::train::fit::TrainConfig), TrainError> {
        let student = Student::new(&self.plan.arch, self.seed, &Device::Cpu)?;
        let mut c = self.config.clone();
        c.train.seed = self.seed;
        (c.train.learning_rate, c.train.weight_decay, c.train.epochs) =
            (hp.learning_rate, hp.weight_decay, hp.epochs);
        Ok((student, crate::train::fit::TrainConfig { deadline: self.deadline, ..train_config(&c) }))
    }
}

/// Mean AUC over the tasks that have one: what a `[tune]` search maximises.
pub fn mean_auc(metrics: &[TaskMetrics]) -> f64 {
    let aucs: Vec<f64> = metrics.iter().filter_map(|t| t.auc).collect();
    aucs.iter().sum::<f64>() / aucs.len().max(1) as f64
}

/// `c`'s training settings with early stopping off: a comparison trains every epoch.
fn train_config(c: &RunConfig) -> crate::train::fit::TrainConfig {
    // Many students train side by side, a core each: their progress would interleave into noise.
    crate::train::fit::TrainConfig { patience: 0, progress: false, threads: 1, ..c.train_config() }
}

/// Mean and sample standard deviation.
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n.max(1.0);
    let var = if xs.len() > 1 { xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

/// A holdout metric of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Higher is better.
    Auc,
    /// Lower is better.
    LogLoss,
    /// AUC within requests; higher is better.
    Gauc,
    /// NDCG@10 within requests; higher is better.
    Ndcg10,
}

/// Which holdout rows a metric is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slice {
    All,
    /// [`Comparison::cold`]'s.
    ColdUsers,
}

impl Comparison {
    /// Holdout values of `metric` for `task` and `variant`, one per seed, in seed order.
    pub fn values(&self, variant: &str, task: &str, metric: Metric) -> Vec<f64> {
        self.values_in(Slice::All, variant, task, metric)
    }

    /// [`Comparison::values`] on the rows of `slice`.
    pub fn values_in(&self, slice: Slice, variant: &str, task: &str, metric: Metric) -> Vec<f64> {
        self.runs
            .iter()
            .filter(|r| r.variant == variant)
            .filter_map(|r| {
                let metrics = match slice {
                    Slice::All => &r.metrics,
                    Slice::ColdUsers => &r.cold_metrics,
                };
                let m = metrics.iter().find(|m| m.task == task)?;
                match metric {
                    Metric::Auc => m.auc,
                    Metric::LogLoss => m.log_loss,
                    Metric::Gauc => m.gauc,
                    Metric::Ndcg10 => m.ndcg_10,
                }
            })
            .collect()
    }

    /// Holdout AUCs of `task` for `variant`, one per seed.
    pub fn aucs(&self, variant: &str, task: &str) -> Vec<f64> {
        self.values(variant, task, Metric::Auc)
    }

    /// Paired differences `variant − control` per seed: their mean and standard error.
    pub fn paired_gain(&self, variant: &str, task: &str) -> (f64, f64) {
        self.paired_difference(Slice::All, variant, task, Metric::Auc)
    }

    /// Paired differences `variant − control` of `metric` on `slice`: mean and standard error.
    pub fn paired_difference(&self, slice: Slice, variant: &str, task: &str, metric: Metric) -> (f64, f64) {
        let diffs: Vec<f64> = self
            .values_in(slice, variant, task, metric)
            .iter()
            .zip(self.values_in(slice, "control", task, metric))
            .map(|(v, c)| v - c)
            .collect();
        let (mean, std) = mean_std(&diffs);
        (mean, std / (diffs.len() as f64).sqrt().max(1.0))
    }

    /// The report: holdout AUC and log loss per task, mean ± std over seeds, each distilled
    /// variant's paired difference from the control ± its standard error, and the
    /// hyperparameters each variant ran with.
    pub fn markdown(&self) -> String {
        let seeds = self.runs.iter().filter(|r| r.variant == "control").count();
        let mut out = format!(
            "{seeds} paired seed(s); mean ± std over seeds; Δ = paired difference from the control ± standard error.\n\
             {} training rows, {} holdout rows.\n",
            self.rows_train, self.rows_holdout
        );
        if !self.control_validation_losses.is_empty() {
            let losses: Vec<String> =
                self.control_validation_losses.iter().map(|l| format!("{l:.4}")).collect();
            out.push_str(&format!(
                "Every variant trained {} epoch(s): the control's best on the validation day(s) \
                 (its validation loss per epoch: {}).\n",
                self.epochs,
                losses.join(", ")
            ));
        }
        out.push_str("\nHoldout AUC (higher is better):\n\n");
        out.push_str(&self.table(Slice::All, Metric::Auc));
        out.push_str("\nHoldout log loss (lower is better):\n\n");
        out.push_str(&self.table(Slice::All, Metric::LogLoss));
        out.push_str("\nHoldout GAUC, within requests (higher is better):\n\n");
        out.push_str(&self.table(Slice::All, Metric::Gauc));
        out.push_str("\nHoldout NDCG@10, within requests (higher is better):\n\n");
        out.push_str(&self.table(Slice::All, Metric::Ndcg10));
        match &self.cold {
            Some(c) if c.rows > 0 => {
                out.push_str(&format!(
                    "\nCold users: {} holdout rows of {} user(s) with no training rows (user column `{}`).\n",
                    c.rows, c.users, c.column
                ));
                out.push_str("\nCold users' holdout AUC (higher is better):\n\n");
                out.push_str(&self.table(Slice::ColdUsers, Metric::Auc));
                out.push_str("\nCold users' holdout log loss (lower is better):\n\n");
                out.push_str(&self.table(Slice::ColdUsers, Metric::LogLoss));
                out.push_str("\nCold users' holdout GAUC, within requests (higher is better):\n\n");
                out.push_str(&self.table(Slice::ColdUsers, Metric::Gauc));
            }
            Some(c) => out.push_str(&format!(
                "\nCold users: none; every holdout row's user (column `{}`) has training rows.\n",
                c.column
            )),
            None => {}
        }
        if self.chosen.iter().any(|c| c.validation_auc.is_some()) {
            out.push_str(
                "\nHyperparameters, chosen per variant by the same grid search on the last training day(s):\n\n",
            );
            out.push_str(
                "| variant | learning rate | weight decay | epochs | validation AUC (mean over tasks) |\n| --- | ---: | ---: | ---: | ---: |\n",
            );
            for c in &self.chosen {
                let v = c.validation_auc.map_or("–".to_string(), |a| format!("{a:.4}"));
                out.push_str(&format!(
                    "| {} | {} | {} | {} | {v} |\n",
                    c.variant, c.learning_rate, c.weight_decay, c.epochs
                ));
            }
        }
        out
    }

    /// A grouped bar chart of holdout AUC per task (control, direct, aux; whiskers ± one std
    /// over seeds; a tick for the teacher's zero-shot AUC), as a standalone SVG.
    pub fn svg(&self) -> String {
        const COLORS: [&str; 3] = ["#8c8c8c", "#e69f00", "#0072b2"];
        let (width, height, left, bottom, top) = (120 + 150 * self.tasks.len(), 360.0, 60.0, 50.0, 40.0);
        let values: Vec<f64> = VARIANTS
            .iter()
            .flat_map(|v| self.tasks.iter().map(move |t| (v, t)))
            .map(|(v, t)| mean_std(&self.aucs(v, t)))
            .flat_map(|(m, s)| [m - s, m + s])
            .chain(self.teacher_auc.values().copied())
            .collect();
        let lo = (values.iter().copied().fold(f64::INFINITY, f64::min) * 20.0).floor() / 20.0;
        let hi = (values.iter().copied().fold(f64::NEG_INFINITY, f64::max) * 20.0).ceil() / 20.0;
        let (lo, hi) = if hi > lo { (lo.max(0.0), hi.min(1.0)) } else { (0.4, 1.0) };
        let y = |v: f64| top + (height - top - bottom) * (1.0 - (v - lo) / (hi - lo));
        let mut out = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
             <text x=\"{left}\" y=\"20\" font-size=\"14\">Holdout AUC by task: control, direct, aux (± std over seeds); ◆ teacher zero-shot</text>\n"
        );
        let mut tick = lo;
        while tick <= hi + 1e-9 {
            out.push_str(&format!(
                "<line x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{tick:.2}</text>\n",
                width - 20,
                left - 6.0,
                y(tick) + 4.0,
                y = y(tick)
            ));
            tick += 0.05;
        }
        for (t, task) in self.tasks.iter().enumerate() {
            let x0 = left + 20.0 + 150.0 * t as f64;
            for (k, variant) in VARIANTS.iter().enumerate() {
                let (m, s) = mean_std(&self.aucs(variant, task));
                let x = x0 + 36.0 * k as f64;
                out.push_str(&format!(
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"30\" height=\"{:.1}\" fill=\"{}\"><title>{variant} {m:.4} ± {s:.4}</title></rect>\n\
                     <line x1=\"{cx:.1}\" x2=\"{cx:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\"/>\n",
                    y(m),
                    (y(lo) - y(m)).max(0.0),
                    COLORS[k],
                    y(m + s),
                    y(m - s),
                    cx = x + 15.0
                ));
            }
            if let Some(a) = self.teacher_auc.get(task) {
                let cx = x0 + 51.0;
                out.push_str(&format!(
                    "<text x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#cc3311\">◆<title>teacher {a:.4}</title></text>\n",
                    y(*a) + 4.0
                ));
            }
            out.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{task}</text>\n",
                x0 + 51.0,
                height - bottom + 18.0
            ));
        }
        for (k, variant) in VARIANTS.iter().enumerate() {
            let x = left + 20.0 + 90.0 * k as f64;
            out.push_str(&format!(
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{:.1}\">{variant}</text>\n",
                height - 20.0,
                COLORS[k],
                x + 16.0,
                height - 10.0
            ));
        }
        out.push_str("</svg>\n");
        out
    }

    fn table(&self, slice: Slice, metric: Metric) -> String {
        let mut out = String::from(
            "| task | teacher (zero-shot) | control | direct | Δ direct | aux | Δ aux |\n\
             | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        );
        for task in &self.tasks {
            let cell = |variant: &str| {
                let values = self.values_in(slice, variant, task, metric);
                if values.is_empty() {
                    return "–".to_string();
                }
                let (m, s) = mean_std(&values);
                format!("{m:.4} ± {s:.4}")
            };
            let gain = |variant: &str| {
                if self.values_in(slice, variant, task, metric).is_empty() {
                    return "–".to_string();
                }
                let (m, se) = self.paired_difference(slice, variant, task, metric);
                format!("{m:+.4} ± {se:.4}")
            };
            let (teacher_auc, teacher_rmse) = match (slice, &self.cold) {
                (Slice::ColdUsers, Some(c)) => (&c.teacher_auc, &BTreeMap::new()),
                _ => (&self.teacher_auc, &self.teacher_rmse),
            };
            let teacher = match metric {
                Metric::Auc => match (teacher_auc.get(task), teacher_rmse.get(task)) {
                    (Some(a), _) => format!("{a:.4}"),
                    (None, Some(rmse)) => format!("RMSE {rmse:.4}"),
                    (None, None) => "–".to_string(),
                },
                // Only the teacher's overall AUC is computed: its logit is calibrated for another
                // product's task, and the per-request metrics would need its scores per request.
                Metric::LogLoss | Metric::Gauc | Metric::Ndcg10 => "–".to_string(),
            };
            let label = match self.distilled.get(task) {
                Some(t) if t != task => format!("{task} (teacher: {t})"),
                Some(_) => task.clone(),
                None => format!("{task} (not distilled)"),
            };
            out.push_str(&format!(
                "| {label} | {teacher} | {} | {} | {} | {} | {} |\n",
                cell("control"),
                cell("direct"),
                gain("direct"),
                cell("aux"),
                gain("aux")
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grid_takes_trains_value_for_a_list_left_empty() {
        let mut c = RunConfig::default();
        assert!(grid(&c).is_empty(), "nothing to search");
        c.tune.epochs = vec![2, 4];
        let g = grid(&c);
        assert_eq!(g.iter().map(|h| h.epochs).collect::<Vec<_>>(), [2, 4]);
        assert!(
            g.iter()
                .all(|h| h.learning_rate == c.train.learning_rate && h.weight_decay == c.train.weight_decay)
        );
        c.tune.learning_rates = vec![0.1, 0.01];
        let g = grid(&c);
        assert_eq!(g.len(), 4);
        assert_eq!(
            (g[1].learning_rate, g[1].epochs, g[2].learning_rate),
            (0.1, 4, 0.01),
            "learning rate outermost"
        );
    }

    #[test]
    fn paired_gains_and_their_standard_error() {
        let m =
            |auc: f64| vec![TaskMetrics { task: "play".into(), auc: Some(auc), ..TaskMetrics::default() }];
        let run = |variant: &str, seed, auc: f64| RunResult {
            variant: variant.into(),
            seed,
            metrics: m(auc),
            cold_metrics: m(auc - 0.1),
        };
        let c = Comparison {
            chosen: Vec::new(),
            tasks: vec!["play".into()],
            distilled: [("play".to_string(), "click".to_string())].into(),
            teacher_auc: [("play".to_string(), 0.6)].into(),
            teacher_rmse: BTreeMap::new(),
            runs: vec![
                run("control", 1, 0.60),
                run("aux", 1, 0.62),
                run("control", 2, 0.64),
                run("aux", 2, 0.65),
            ],
            rows_train: 10,
            rows_holdout: 5,
            epochs: 3,
            control_validation_losses: Vec::new(),
            cold: None,
        };
        // Differences 0.02 and 0.01: mean 0.015, std 0.00707, SE 0.005.
        let (mean, se) = c.paired_gain("aux", "play");
        assert!((mean - 0.015).abs() < 1e-12 && (se - 0.005).abs() < 1e-9, "{mean} {se}");
        let table = c.markdown();
        assert!(table.contains("| play (teacher: click) | 0.6000 | 0.6200 ± 0.0283 |"), "{table}");
        assert!(table.contains("+0.0150 ± 0.0050"), "{table}");
        let svg = c.svg();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        // One bar per variant for the one task, plus the three legend swatches.
        assert_eq!(svg.matches("<rect").count(), 6, "{svg}");
        assert!(svg.contains("<title>aux 0.6350 ± 0.0212</title>"), "{svg}");
        assert!(!table.contains("Cold users"), "no user column, no cold slice: {table}");

        let cold = ColdUsers {
            column: "user_id".into(),
            users: 2,
            rows: 7,
            teacher_auc: [("play".to_string(), 0.55)].into(),
        };
        let c = Comparison { cold: Some(cold), ..c };
        let table = c.markdown();
        let slice = table.split("Cold users' holdout AUC").nth(1).unwrap_or_else(|| panic!("{table}"));
        assert!(table.contains(
            "Cold users: 7 holdout rows of 2 user(s) with no training rows (user column `user_id`)"
        ));
        assert!(slice.contains("| play (teacher: click) | 0.5500 | 0.5200 ± 0.0283 |"), "{table}");
        let (cold_gain, gain) =
            (c.paired_difference(Slice::ColdUsers, "aux", "play", Metric::Auc), c.paired_gain("aux", "play"));
        assert!((cold_gain.0 - gain.0).abs() < 1e-12 && (cold_gain.1 - gain.1).abs() < 1e-9, "{cold_gain:?}");
        let none = Comparison { cold: Some(ColdUsers { rows: 0, users: 0, ..c.cold.clone().unwrap() }), ..c };
        assert!(none.markdown().contains("Cold users: none; every holdout row's user (column `user_id`)"));
    }

    #[test]
    fn cold_users_are_the_holdouts_users_without_training_rows() {
        // Rows 0-3 train, 4-7 are held out: user 2 (rows 4, 6) is known, users 5 (row 5) and 9
        // (row 7) are not; row 3 has no user.
        let users = [1, 2, 1, MISSING, 2, 5, 2, 9];
        let (rows, strangers) = cold_rows(&users, &[0, 1, 2, 3], &[4, 5, 6, 7]);
        assert_eq!((rows, strangers), (vec![5, 7], 2));
        let (rows, strangers) = cold_rows(&[MISSING, MISSING], &[0], &[1]);
        assert_eq!((rows, strangers), (Vec::new(), 0), "rows without a user are nobody's");
    }
}
