//! `retort train`: one model from a config file: read the examples, join teacher labels when
//! the config distils, train, evaluate on a time holdout, and publish a model package whose
//! manifest carries the provenance and the holdout metrics.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::data::dataset::Dataset;
use crate::data::spec::DataSpec;
use crate::eval::holdout::{TaskMetrics, evaluate_package, metrics_of, package_label};
use crate::release::publish::{Baseline, PublishConfig};
use crate::train::checkpoint::{CHECKPOINT, Checkpoint};
use crate::train::fit::{TrainConfig, TrainError, TrainLog, TrainingData, predict, train_resuming};
use crate::train::kd::{DistillConfig, Plan};
use crate::train::student::Student;
use retort_model::manifest::{HeadKind, Manifest};
use retort_model::two_tower::{HeadSpec, Layers, TwoTower};
use retort_model::{package, scaffold};

/// Layer sizes; features come from the dataset's spec, heads from its tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchConfig {
    pub embedding_dim: usize,
    pub context_hidden: Vec<usize>,
    pub item_hidden: Vec<usize>,
    pub interaction_hidden: Vec<usize>,
    /// Multi-gate mixture of experts: this many expert MLPs (`interaction_hidden[1..]` each)
    /// with a softmax gate per task; 0 for a shared bottom.
    pub experts: usize,
    pub task_hidden: Vec<usize>,
    /// Export binary heads as logits (teachers do).
    pub logit_outputs: bool,
    /// Tasks to learn; all of the spec's when empty.
    pub tasks: Vec<String>,
    /// Features of the spec the model does not read: a teacher kept off what the target
    /// product lacks, say.
    pub leave_out: Vec<String>,
}

impl Default for ArchConfig {
    fn default() -> Self {
        let Layers { embedding_dim, context_hidden, item_hidden, interaction_hidden, experts, task_hidden } =
            Layers::default();
        ArchConfig {
            embedding_dim,
            context_hidden,
            item_hidden,
            interaction_hidden,
            experts,
            task_hidden,
            logit_outputs: false,
            tasks: Vec::new(),
            leave_out: Vec::new(),
        }
    }
}

impl ArchConfig {
    pub fn layers(&self) -> Layers {
        Layers {
            embedding_dim: self.embedding_dim,
            context_hidden: self.context_hidden.clone(),
            item_hidden: self.item_hidden.clone(),
            interaction_hidden: self.interaction_hidden.clone(),
            experts: self.experts,
            task_hidden: self.task_hidden.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub batch_size: usize,
    pub epochs: usize,
    pub seed: u64,
    /// The last this many UTC days of the data (counted back from the day of the newest row)
    /// are held out for evaluation.
    pub holdout_days: u32,
    /// Hold out the rows from this time on instead (`2026-03-10`, `2026-03-10T06:00:00Z`, or
    /// seconds since the epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holdout_from: Option<String>,
    /// A holdout with fewer rows refuses the run: metrics on a handful of rows are noise, and
    /// the publish gate would judge by them.
    pub min_holdout_rows: usize,
    /// The last this many training days judge early stopping and the `[tune]` search.
    pub validation_days: u32,
    /// Probability of masking each feature of each training row to its missing value, so the
    /// model learns what a missing feature means (teachers meant for another product need it).
    pub mask_probability: f64,
    /// Per feature, a masking probability of its own instead of `mask_probability`: e.g. only
    /// the id features of a teacher whose ids will be unknown where its labels are used.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub mask_features: BTreeMap<String, f64>,
    /// Probability of zeroing each output of every hidden layer while training (towers, the
    /// joining layer, interaction MLP, experts, task towers; never the heads, never at export).
    pub dropout: f64,
    /// Early stopping: hold out the last `validation_days` training days and stop after this many
    /// epochs without a better validation loss (0: off, every epoch on all training days).
    pub patience: usize,
    /// Train for this many minibatch steps instead of `epochs` (0: count in epochs).
    pub steps: usize,
    /// Threads one training splits each batch over; 0 chooses: the machine's cores for a batch
    /// large enough to gain from them (a teacher's), one for a small student's. Trainings that
    /// run side by side (`retort distill`, the teacher search) take a core each instead.
    pub threads: usize,
}

impl Default for TrainSection {
    fn default() -> Self {
        let t = TrainConfig::default();
        TrainSection {
            learning_rate: t.learning_rate,
            weight_decay: t.weight_decay,
            batch_size: t.batch_size,
            epochs: t.epochs,
            seed: t.seed,
            holdout_days: 1,
            holdout_from: None,
            min_holdout_rows: 200,
            validation_days: 1,
            mask_probability: 0.0,
            mask_features: BTreeMap::new(),
            dropout: 0.0,
            patience: 0,
            steps: 0,
            threads: 0,
        }
    }
}

/// The whole `retort train` config file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    pub model: ArchConfig,
    pub train: TrainSection,
    pub distill: DistillConfig,
    /// Default objective of the published model; the first task with weight 1 when empty.
    pub objective: BTreeMap<String, f64>,
    /// Hyperparameter grid `retort distill` searches for every variant alike.
    pub tune: TuneConfig,
    /// The gate a new version must pass to replace the serving one.
    pub publish: PublishConfig,
}

/// A grid of learning rates, weight decays and numbers of epochs. Each variant of a comparison (the control
/// included) gets the same search, judged on the last `validation_days` training days, before the seeds run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TuneConfig {
    pub learning_rates: Vec<f64>,
    pub weight_decays: Vec<f64>,
    /// Numbers of epochs to search (empty: `train.epochs` alone).
    pub epochs: Vec<usize>,
}

impl RunConfig {
    pub fn from_path(path: &Path) -> Result<RunConfig, TrainError> {
        retort_model::toml_file::read(path).map_err(|e| TrainError::Config(e.to_string()))
    }

    /// Where the holdout starts in `data`: `holdout_from`, else the start of its last
    /// `holdout_days` UTC days.
    pub fn holdout_cutoff(&self, data: &TrainingData) -> Result<i64, TrainError> {
        match &self.train.holdout_from {
            Some(at) => retort_model::timestamp::parse(at)
                .map_err(|e| TrainError::Config(format!("train.holdout_from: {e}"))),
            None => Ok(data.last_days_cutoff(self.train.holdout_days)),
        }
    }

    /// The rows `data` trains on and is judged on, refused when either side is empty or the
    /// holdout is smaller than `min_holdout_rows`.
    pub fn holdout(&self, data: &TrainingData) -> Result<Holdout, TrainError> {
        let cutoff = self.holdout_cutoff(data)?;
        let (fit, rows) = data.split_at(cutoff);
        let from = retort_model::timestamp::rfc3339_secs(cutoff);
        let which = match &self.train.holdout_from {
            Some(_) => format!("the holdout from {from} (train.holdout_from)"),
            None => format!(
                "a holdout of the last {} day(s), from {from} (train.holdout_days)",
                self.train.holdout_days
            ),
        };
        if fit.is_empty() {
            return Err(TrainError::Config(format!("{which} leaves no rows to train on")));
        }
        if rows.len() < self.train.min_holdout_rows.max(1) {
            return Err(TrainError::Config(format!(
                "{which} has {} row(s), fewer than train.min_holdout_rows = {}: its metrics would be \
                 noise and the publish gate would judge by them; hold out more days, set \
                 train.holdout_from, or lower train.min_holdout_rows",
                rows.len(),
                self.train.min_holdout_rows
            )));
        }
        Ok(Holdout { cutoff, fit, rows })
    }

    /// Rows from this time on (and before the holdout's `cutoff`) validate.
    pub fn validation_cutoff(&self, cutoff: i64) -> i64 {
        cutoff - i64::from(self.train.validation_days.max(1)) * 86_400
    }

    /// The training loop's settings, as the `[train]` table gives them.
    pub fn train_config(&self) -> TrainConfig {
        TrainConfig {
            learning_rate: self.train.learning_rate,
            weight_decay: self.train.weight_decay,
            batch_size: self.train.batch_size,
            epochs: self.train.epochs,
            seed: self.train.seed,
            mask_probability: self.train.mask_probability,
            mask_features: self.train.mask_features.clone(),
            dropout: self.train.dropout,
            patience: self.train.patience,
            steps: self.train.steps,
            start_step: 0,
            deadline: None,
            progress: true,
            threads: self.train.threads,
        }
    }

    /// The architecture over `spec`, one serving head (and task tower) per task.
    pub fn architecture(&self, spec: &DataSpec) -> Result<TwoTower, TrainError> {
        let base = spec.two_tower(self.model.logit_outputs);
        let mut arch = TwoTower::new(base.features, self.model.layers(), base.heads, base.logit_outputs);
        if let Some(f) = self.model.leave_out.iter().find(|f| !arch.features.iter().any(|a| &a.name == *f)) {
            return Err(TrainError::Config(format!(
                "model.leave_out names `{f}`, which is not a feature of the spec"
            )));
        }
        arch.features.retain(|f| !self.model.leave_out.contains(&f.name));
        if !self.model.tasks.is_empty() {
            let mut heads = Vec::new();
            for (i, name) in self.model.tasks.iter().enumerate() {
                let task =
                    spec.task(name).ok_or_else(|| TrainError::Config(format!("unknown task `{name}`")))?;
                heads.push(HeadSpec::serving(&task.name, task.kind, i));
            }
            arch.heads = heads;
        }
        arch.validate().map_err(TrainError::Config)?;
        Ok(arch)
    }
}

/// A split in time: rows before `cutoff` train, rows from it on are held out.
#[derive(Debug, Clone)]
pub struct Holdout {
    pub cutoff: i64,
    pub fit: Vec<usize>,
    pub rows: Vec<usize>,
}

/// What a holdout cannot measure: per binary task whose holdout rows are all of one class, a
/// sentence saying so (its AUC, GAUC and ECE are undefined and the gate cannot judge it).
pub fn one_class_warnings(data: &TrainingData, rows: &[usize], heads: &[(String, HeadKind)]) -> Vec<String> {
    heads
        .iter()
        .enumerate()
        .filter(|(_, (_, kind))| *kind == HeadKind::Binary)
        .filter_map(|(h, (name, _))| {
            let positives = rows.iter().filter(|&&r| data.labels[h][r] > 0.5).count();
            let class = match positives {
                0 => "negatives",
                p if p == rows.len() => "positives",
                _ => return None,
            };
            Some(format!(
                "task `{name}` has only {class} in the {} holdout rows: its AUC, GAUC and ECE cannot \
                 be measured, and the publish gate does not judge it",
                rows.len()
            ))
        })
        .collect()
}

/// What a training run produced.
#[derive(Debug, Clone)]
pub struct Trained {
    pub metrics: Vec<TaskMetrics>,
    /// The serving version scored on the same holdout, when the job named one.
    pub baseline: Option<Baseline>,
    /// Weights, optimiser state and data reach, written beside the package for a warm start.
    pub checkpoint: Option<Checkpoint>,
    /// Loss curves and training throughput.
    pub log: TrainLog,
    pub rows_train: usize,
    pub rows_holdout: usize,
    /// Training rows with no teacher label (distilled runs).
    pub rows_without_teacher: usize,
    /// What the holdout could not measure, in sentences for the user.
    pub warnings: Vec<String>,
    pub manifest: Manifest,
    pub graph: Vec<u8>,
}

/// One `retort train` run: what to train on, as what, and against what.
#[derive(Debug, Clone, Copy)]
pub struct TrainJob<'a> {
    pub data_dir: &'a Path,
    pub spec: &'a DataSpec,
    pub config: &'a RunConfig,
    pub name: &'a str,
    pub version: &'a str,
    /// Teacher labels (a label store directory), for a config that distils.
    pub labels: Option<&'a Path>,
    /// The serving version's package, scored on the same holdout for the publish gate.
    pub baseline: Option<&'a Path>,
    /// A package whose checkpoint to continue from: its weights and optimiser state, trained
    /// further on the examples newer than it has seen.
    pub warm_start: Option<&'a Path>,
}

impl<'a> TrainJob<'a> {
    pub fn new(
        data_dir: &'a Path,
        spec: &'a DataSpec,
        config: &'a RunConfig,
        name: &'a str,
        version: &'a str,
    ) -> TrainJob<'a> {
        TrainJob { data_dir, spec, config, name, version, labels: None, baseline: None, warm_start: None }
    }

    pub fn labels(self, labels: Option<&'a Path>) -> TrainJob<'a> {
        TrainJob { labels, ..self }
    }

    pub fn baseline(self, baseline: Option<&'a Path>) -> TrainJob<'a> {
        TrainJob { baseline, ..self }
    }

    pub fn warm_start(self, warm_start: Option<&'a Path>) -> TrainJob<'a> {
        TrainJob { warm_start, ..self }
    }
}

/// Trains one model as `job` says; distils from its labels when the config asks; scores the
/// baseline, if any, on the same holdout.
pub fn train_model(job: &TrainJob<'_>) -> Result<Trained, TrainError> {
    let TrainJob { data_dir, spec, config, name, version, labels, baseline, warm_start } = *job;
    let resume = warm_start.map(|dir| Checkpoint::read(&dir.join(CHECKPOINT))).transpose()?;
    // A warm start keeps the vocabularies its parent's tables were trained with.
    let parent = warm_start
        .map(|dir| Manifest::from_path(&dir.join(package::MANIFEST)))
        .transpose()
        .map_err(|e| TrainError::Config(e.to_string()))?;
    let base = config.architecture(spec)?;
    let plan = Plan::new(&base, &config.distill).map_err(TrainError::Config)?;
    let dataset = Dataset::open(data_dir)?;
    let mut data = TrainingData::load(&dataset, spec, &base)?;
    let mut rows_without_teacher = 0;
    if plan.uses_teacher() {
        let labels = labels.ok_or_else(|| {
            TrainError::Config(
                "the config distils from a teacher: give the label directory with --labels".into(),
            )
        })?;
        rows_without_teacher = data.attach_teacher(labels, &plan.teacher_labels)?;
    }
    let Holdout { cutoff, fit, rows: holdout } = config.holdout(&data)?;
    let served: Vec<(String, HeadKind)> = base.heads.iter().map(|h| (h.name.clone(), h.kind)).collect();
    let warnings = one_class_warnings(&data, &holdout, &served);
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let mut train_config = config.train_config();
    let mut fit = fit;
    if let Some(ck) = &resume {
        // Only what the checkpoint has not seen; a new batch order each round.
        fit.retain(|&r| data.ts[r] > ck.trained_through);
        if fit.is_empty() {
            return Err(TrainError::Config(format!(
                "nothing to train on: the checkpoint has seen every example before the holdout \
                 (through {}); a warm start waits for newer data",
                retort_model::timestamp::rfc3339_secs(ck.trained_through)
            )));
        }
        train_config.seed = train_config.seed.wrapping_add(ck.optimizer.step);
    }
    // Early stopping judges on the last training days, never on the holdout.
    let validation: Option<(Vec<usize>, Vec<usize>)> = (config.train.patience > 0)
        .then(|| fit.iter().partition(|&&r| data.ts[r] < config.validation_cutoff(cutoff)));
    if let Some((inner, validation)) = &validation
        && (inner.is_empty() || validation.is_empty())
    {
        return Err(TrainError::Config(format!(
            "early stopping needs training days before the {} validation day(s)",
            config.train.validation_days
        )));
    }
    let trained_on = validation.as_ref().map_or(&fit, |(inner, _)| inner);
    let base = data.build_vocabularies(&base, trained_on, parent.as_ref().map_or(&[], |m| &m.features))?;
    let plan = Plan::new(&base, &config.distill).map_err(TrainError::Config)?;
    let student = Student::new(&plan.arch, config.train.seed, &Device::Cpu)?;
    if let Some(ck) = &resume {
        ck.restore(&student)?;
    }
    let optimizer = resume.as_ref().map(|ck| ck.optimizer.clone());
    let (log, optimizer) = match &validation {
        Some((inner, validation)) => {
            train_resuming(&student, &data, inner, validation, &train_config, &plan, optimizer)?
        }
        None => train_resuming(&student, &data, &fit, &[], &train_config, &plan, optimizer)?,
    };
    let trained_through = fit.iter().map(|&r| data.ts[r]).max().unwrap_or(0);
    let checkpoint = Checkpoint::capture(&student, optimizer, trained_through)?;
    let metrics = evaluate(&student, &data, &holdout, &base)?;
    let baseline = baseline.map(|dir| Baseline {
        version: package_label(dir),
        metrics: evaluate_package(dir, &dataset, spec, cutoff).map_err(|e| e.to_string()),
    });

    let objective: Vec<(&str, f64)> = if config.objective.is_empty() {
        vec![(base.heads[0].name.as_str(), 1.0)]
    } else {
        config.objective.iter().map(|(k, v)| (k.as_str(), *v)).collect()
    };
    let weights = student.weights()?;
    let (mut manifest, graph) = scaffold::package(
        name,
        version,
        &plan.arch,
        &weights,
        &objective,
        "Two-tower multi-task model trained by retort.",
        &format!("retort train (seed {}, {} epochs)", config.train.seed, config.train.epochs),
        scaffold::golden_for(&plan.arch.features),
    );
    let first = data.ts.iter().min().copied().unwrap_or(0);
    let last = data.ts.iter().max().copied().unwrap_or(0);
    manifest.provenance.data_window = format!(
        "{}..{} (holdout from {})",
        &retort_model::timestamp::rfc3339_secs(first)[..10],
        &retort_model::timestamp::rfc3339_secs(last)[..10],
        retort_model::timestamp::rfc3339_secs(cutoff)
    );
    manifest.provenance.created_at = retort_model::timestamp::rfc3339(std::time::SystemTime::now());
    manifest.model.fallback = config.publish.fallback.clone();
    if let Some(labels) = labels.filter(|_| plan.uses_teacher()) {
        // The teacher's name and version, as the label files record them.
        let teacher = Dataset::open(labels)
            .ok()
            .and_then(|d| d.partitions.first().map(|p| p.path.clone()))
            .and_then(|p| crate::data::parquet_io::read_metadata(&p).ok())
            .map(|kv| crate::label::store::LabelFileInfo::from_metadata(&kv).teacher)
            .unwrap_or_default();
        manifest.provenance.teacher = format!("{teacher} (labels {})", labels.display());
    }
    manifest.provenance.notes.insert("distill".into(), toml::to_string(&config.distill).unwrap_or_default());
    // The inference cost, for comparing teachers and students (and budgets): the context once
    // plus the per-candidate part, in dense-layer multiply-adds.
    let (one, two) = (plan.arch.macs(1), plan.arch.macs(2));
    manifest.provenance.notes.insert(
        "multiply_adds".into(),
        format!("{} for the context, {} per candidate", one - (two - one), two - one),
    );
    if let (Some(dir), Some(ck)) = (warm_start, &resume) {
        let through = retort_model::timestamp::rfc3339_secs(ck.trained_through);
        manifest.provenance.notes.insert(
            "warm_start".into(),
            format!(
                "continued from {} (trained through {through}) on {} newer rows",
                package_label(dir),
                fit.len()
            ),
        );
    }
    for m in &metrics {
        if let Some(a) = m.auc {
            manifest.provenance.metrics.insert(format!("{}_auc", m.task), (a * 1e6).round() / 1e6);
        }
        for (suffix, value) in [
            ("log_loss", m.log_loss),
            ("gauc", m.gauc),
            ("ndcg_10", m.ndcg_10),
            ("ece", m.ece),
            ("truth_mae", m.truth_mae),
        ] {
            if let Some(v) = value {
                manifest.provenance.metrics.insert(format!("{}_{suffix}", m.task), (v * 1e6).round() / 1e6);
            }
        }
    }
    Ok(Trained {
        metrics,
        baseline,
        checkpoint: Some(checkpoint),
        log,
        rows_train: fit.len(),
        rows_holdout: holdout.len(),
        rows_without_teacher,
        warnings,
        manifest,
        graph,
    })
}

/// Every holdout metric of each task's served head on `rows`.
pub fn evaluate(
    student: &Student,
    data: &TrainingData,
    rows: &[usize],
    base: &TwoTower,
) -> Result<Vec<TaskMetrics>, TrainError> {
    let out = predict(student, data, rows)?;
    let heads: Vec<(String, HeadKind)> = base.heads.iter().map(|h| (h.name.clone(), h.kind)).collect();
    Ok(metrics_of(&out, data, rows, &heads))
}

/// Publishes a trained model under `models_dir`, with its checkpoint when it has one; nothing
/// when the newest version is the same package.
pub fn publish(models_dir: &Path, trained: &Trained) -> Result<package::Written, TrainError> {
    package::write_new(models_dir, &trained.manifest, &trained.graph, |dir| match &trained.checkpoint {
        Some(ck) => ck.write(&dir.join(CHECKPOINT)).map_err(|e| std::io::Error::other(e.to_string())),
        None => Ok(()),
    })
    .map_err(|e| TrainError::Publish(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config with a per-feature table among `[train]`'s values writes and reads back whole
    /// (the teacher search and the manifest write configs out).
    #[test]
    fn a_train_section_with_mask_features_round_trips() {
        let mut c = RunConfig::default();
        c.train.mask_features.insert("user_id".into(), 0.3);
        c.train.dropout = 0.1;
        let written = toml::to_string(&c).unwrap();
        assert_eq!(toml::from_str::<RunConfig>(&written).unwrap(), c, "{written}");
    }
}
