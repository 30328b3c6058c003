//! Training data in memory, and the minibatch loop: AdamW over shuffled minibatches, seeded so
//! a run is reproducible and two runs with one seed see the same batches in the same order.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::data::dataset::{DataError, Dataset};
use crate::data::parquet_io;
use crate::data::spec::DataSpec;
use crate::label::store::LabelFileInfo;
use crate::train::adamw::{AdamW, AdamWParams, OptimizerState, RowGrad};
use crate::train::dropout::Dropout;
use crate::train::kd::{DistillConfig, Plan};
use crate::train::step::{self, Targets};
use crate::train::student::Student;
use retort_model::encode::{Encoded, Encoder, FeatureSource, TensorData, Value, id_text};
use retort_model::manifest::{ContextRows, Feature, FeatureKind, HeadKind};
use retort_model::rng::SplitMix64;
use retort_model::two_tower::TwoTower;
use retort_model::vocabulary::{self, IdCounter, Vocab, Vocabulary, VocabularyRule};

#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub batch_size: usize,
    pub epochs: usize,
    /// Seeds the initial weights and the batch order.
    pub seed: u64,
    /// Probability of masking each feature of each training row to its missing value.
    pub mask_probability: f64,
    /// Per feature, a probability of its own instead of `mask_probability`.
    pub mask_features: std::collections::BTreeMap<String, f64>,
    /// Probability of zeroing each output of every hidden layer in training (never at export).
    pub dropout: f64,
    /// Stop after this many epochs without a better validation loss, keeping the best epoch's
    /// weights; 0 trains every epoch.
    pub patience: usize,
    /// Train for exactly this many minibatch steps (as many epochs as that takes, the last one
    /// cut short) instead of `epochs`; 0 counts in epochs.
    pub steps: usize,
    /// Steps of this schedule the student and optimiser already took: the run replays the
    /// batch order up to there and trains on from it, exactly as one uninterrupted run would
    /// (the teacher search continues a short teacher run into a longer one this way).
    pub start_step: usize,
    /// Stop with [`TrainError::Deadline`] at the first step after this instant.
    pub deadline: Option<std::time::Instant>,
    /// Report progress on stderr (a line on a terminal, a log line every 10 s otherwise).
    pub progress: bool,
    /// Threads each step's forward and backward pass is split over (the batch by rows), 0 to
    /// choose by the batch's work ([`step::threads_for`]); the result is the same to float
    /// rounding whatever the count.
    pub threads: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            learning_rate: 3e-3,
            weight_decay: 1e-4,
            batch_size: 512,
            epochs: 3,
            seed: 1,
            mask_probability: 0.0,
            mask_features: Default::default(),
            dropout: 0.0,
            patience: 0,
            steps: 0,
            start_step: 0,
            deadline: None,
            progress: true,
            threads: 1,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Data(#[from] DataError),
    /// `row` counts the partition's data rows from 0.
    #[error("{path}, row {row}: feature `{feature}`: {problem}")]
    Encode { path: String, row: usize, feature: String, problem: String },
    #[error("{path}, row {row}: label `{column}` {problem}")]
    Label { path: String, row: usize, column: String, problem: String },
    #[error("{path}, row {row}: user column `{column}`: {problem}")]
    User { path: String, row: usize, column: String, problem: String },
    #[error(
        "training diverged: the loss of head `{head}` is {value} at step {step} (epoch {epoch}); lower the learning rate, or check the labels and the distillation temperature"
    )]
    NonFinite { head: String, step: usize, epoch: usize, value: f32 },
    #[error("training: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{dir} holds no teacher labels")]
    NoLabels { dir: String },
    #[error("label store: {0}")]
    Store(String),
    #[error("publishing: {0}")]
    Publish(String),
    #[error("{0}")]
    Config(String),
    #[error("stopped at the deadline, after {steps} training steps")]
    Deadline { steps: usize },
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: String, reason: String },
    #[error(transparent)]
    Spec(#[from] crate::data::spec::SpecError),
}

impl From<crate::label::store::StoreError> for TrainError {
    fn from(e: crate::label::store::StoreError) -> Self {
        use crate::label::store::StoreError;
        match e {
            StoreError::NoLabels { dir } => TrainError::NoLabels { dir },
            StoreError::Data(e) => TrainError::Data(e),
            StoreError::Unreadable(m) => TrainError::Store(m),
        }
    }
}

/// A label as training takes it: a finite number, and for a binary task one in [0, 1] (a hard
/// 0/1, or a probability). Anything else would train silently into a model that means nothing.
fn label(value: Option<f64>, kind: Option<HeadKind>) -> Result<f32, String> {
    let y = value.ok_or_else(|| "is missing or not a number".to_string())?;
    if !y.is_finite() {
        return Err(format!("is {y}, not a finite number"));
    }
    if kind == Some(HeadKind::Binary) && !(0.0..=1.0).contains(&y) {
        return Err(format!("is {y}; a binary task's label is 0 or 1 (or a probability between)"));
    }
    Ok(y as f32)
}

/// Examples encoded for the student's inputs, with their labels and times.
pub struct TrainingData {
    pub encoder: Encoder,
    pub encoded: Encoded,
    /// Per head of the architecture, one label per row.
    pub labels: Vec<Vec<f32>>,
    pub ts: Vec<i64>,
    pub example_ids: Vec<String>,
    /// Per row, the request it was shown in (for per-request metrics).
    pub request_ids: Vec<String>,
    /// Per head, the true probability behind its label, where the spec names a truth column.
    pub truth: Vec<Option<Vec<f32>>>,
    /// Per row, its user's number (the same for every row of a user; [`MISSING`] without one),
    /// where the spec names a user column: what tells a cold user apart.
    pub users: Option<Vec<u32>>,
    /// Name of the example id column (the label store's key).
    pub id_column: String,
    /// Teacher logits joined from the label store by example id, per requested label; NaN
    /// where the store has none for a row.
    pub teacher: Vec<Vec<f32>>,
    /// The features encoded, as [`TrainingData::build_vocabularies`] leaves them.
    features: Vec<Feature>,
    /// Features whose vocabulary is still to be built: every row encodes them to row 0 until
    /// it is.
    unbuilt: Vec<Unbuilt>,
}

/// A feature's ids as they were read, numbered, until the rows its vocabulary is built from
/// are known.
struct Unbuilt {
    feature: usize,
    rule: VocabularyRule,
    seen: IdCounter,
    /// Per row, its id's number; [`MISSING`] for a missing value.
    numbers: Vec<u32>,
}

/// The number of a missing id.
pub const MISSING: u32 = u32::MAX;

struct Row<'a> {
    columns: &'a [(String, crate::data::dataset::Column<'a>)],
    row: usize,
}

impl FeatureSource for Row<'_> {
    fn get(&self, name: &str) -> Value<'_> {
        self.columns.iter().find(|(n, _)| n == name).map_or(Value::Missing, |(_, c)| c.value(self.row))
    }
}

impl TrainingData {
    /// Reads every partition, encoding the architecture's features (one context per row) and
    /// the label of each of its heads (a spec task of the same name).
    pub fn load(dataset: &Dataset, spec: &DataSpec, arch: &TwoTower) -> Result<TrainingData, TrainError> {
        let heads: Vec<String> = arch.heads.iter().map(|h| h.name.clone()).collect();
        TrainingData::load_for(dataset, spec, &arch.features, &heads)
    }

    /// Reads every partition, encoding `features` (one context per row; a feature the data
    /// lacks gets its missing value) and the label of each task in `tasks`.
    pub fn load_for(
        dataset: &Dataset,
        spec: &DataSpec,
        features: &[Feature],
        tasks: &[String],
    ) -> Result<TrainingData, TrainError> {
        let encoder = Encoder::for_features(features, ContextRows::PerCandidate);
        let mut unbuilt: Vec<Unbuilt> = features
            .iter()
            .enumerate()
            .filter_map(|(feature, f)| match &f.kind {
                FeatureKind::Categorical { vocabulary: Some(Vocab::Build(rule)), .. } => {
                    Some(Unbuilt { feature, rule: *rule, seen: IdCounter::default(), numbers: Vec::new() })
                }
                _ => None,
            })
            .collect();
        let label_columns: Vec<String> =
            tasks.iter().map(|h| spec.task(h).map_or(h.clone(), |t| t.column().to_string())).collect();
        let label_kinds: Vec<Option<HeadKind>> = tasks.iter().map(|h| spec.task(h).map(|t| t.kind)).collect();
        let truth_columns: Vec<Option<String>> =
            tasks.iter().map(|h| spec.task(h).and_then(|t| t.truth.clone())).collect();
        let mut columns: Vec<&str> = vec![
            spec.columns.ts.as_str(),
            spec.columns.example_id.as_str(),
            spec.columns.request_id.as_str(),
        ];
        columns.extend(truth_columns.iter().flatten().map(String::as_str));
        columns.extend(features.iter().map(|f| f.name.as_str()));
        columns.extend(label_columns.iter().map(String::as_str));
        let user_column = spec.columns.user.as_deref();
        if let Some(user) = user_column.filter(|u| !columns.contains(u)) {
            columns.push(user);
        }
        let (mut user_numbers, mut users) = (IdCounter::default(), user_column.map(|_| Vec::new()));
        let mut parts: Vec<Encoded> = Vec::new();
        let mut labels = vec![Vec::new(); tasks.len()];
        let mut ts = Vec::new();
        let mut example_ids = Vec::new();
        let mut request_ids = Vec::new();
        let mut truth: Vec<Option<Vec<f32>>> =
            truth_columns.iter().map(|c| c.as_ref().map(|_| Vec::new())).collect();
        for p in &dataset.partitions {
            let ex = p.read(spec, &columns)?;
            // Rows are named by their place in the partition, not in one of its read batches.
            let mut offset = 0;
            for b in 0..ex.batches.len() {
                let cols: Vec<(String, crate::data::dataset::Column<'_>)> =
                    features.iter().map(|f| (f.name.clone(), ex.column(b, &f.name))).collect();
                let n = ex.batches[b].num_rows();
                let rows: Vec<Row<'_>> = (0..n).map(|row| Row { columns: &cols, row }).collect();
                parts.push(encoder.encode_rows(&rows).map_err(|e| TrainError::Encode {
                    path: ex.path.clone(),
                    row: offset + e.location.row(),
                    feature: e.feature,
                    problem: e.problem,
                })?);
                for u in &mut unbuilt {
                    let name = &features[u.feature].name;
                    let c = ex.column(b, name);
                    for row in 0..n {
                        let value = c.value(row);
                        let number = match id_text(&value, &mut [0; 20]) {
                            Ok(None) => Ok(MISSING),
                            Ok(Some(id)) => u.seen.number(id),
                            Err(problem) => Err(problem),
                        }
                        .map_err(|problem| TrainError::Encode {
                            path: ex.path.clone(),
                            row: offset + row,
                            feature: name.clone(),
                            problem,
                        })?;
                        u.numbers.push(number);
                    }
                }
                for ((h, column), kind) in label_columns.iter().enumerate().zip(&label_kinds) {
                    let c = ex.column(b, column);
                    for row in 0..n {
                        let y = label(c.number(row), *kind).map_err(|problem| TrainError::Label {
                            path: ex.path.clone(),
                            row: offset + row,
                            column: column.clone(),
                            problem,
                        })?;
                        labels[h].push(y);
                    }
                }
                if let (Some(column), Some(users)) = (user_column, users.as_mut()) {
                    let c = ex.column(b, column);
                    for row in 0..n {
                        let number = match id_text(&c.value(row), &mut [0; 20]) {
                            Ok(None) => Ok(MISSING),
                            Ok(Some(id)) => user_numbers.number(id),
                            Err(problem) => Err(problem),
                        }
                        .map_err(|problem| TrainError::User {
                            path: ex.path.clone(),
                            row: offset + row,
                            column: column.to_string(),
                            problem,
                        })?;
                        users.push(number);
                    }
                }
                let t = ex.column(b, &spec.columns.ts);
                ts.extend((0..n).map(|row| t.number(row).unwrap_or(0.0) as i64));
                let ids = ex.column(b, &spec.columns.example_id);
                example_ids.extend((0..n).map(|row| ids.id(row).map(|s| s.into_owned()).unwrap_or_default()));
                let requests = ex.column(b, &spec.columns.request_id);
                request_ids
                    .extend((0..n).map(|row| requests.id(row).map(|s| s.into_owned()).unwrap_or_default()));
                for (t, column) in truth.iter_mut().zip(&truth_columns) {
                    if let (Some(t), Some(column)) = (t, column) {
                        let c = ex.column(b, column);
                        t.extend((0..n).map(|row| c.number(row).map_or(f32::NAN, |v| v as f32)));
                    }
                }
                offset += n;
            }
        }
        Ok(TrainingData {
            encoded: concat(&encoder, parts),
            encoder,
            labels,
            ts,
            example_ids,
            request_ids,
            truth,
            users,
            id_column: spec.columns.example_id.clone(),
            teacher: Vec::new(),
            features: features.to_vec(),
            unbuilt,
        })
    }

    /// The features as encoded: with the vocabularies built so far.
    pub fn features(&self) -> &[Feature] {
        &self.features
    }

    /// Builds every vocabulary still to be built from the ids of `rows`, the rows the model
    /// trains on (never its holdout, whose unseen ids must meet row 0 as serving will), by its
    /// feature's rule; a feature of `given` that has a vocabulary keeps it instead (a warm start
    /// keeps its parent's table rows). Every row is encoded again with them, and `arch` comes
    /// back with them.
    pub fn build_vocabularies(
        &mut self,
        arch: &TwoTower,
        rows: &[usize],
        given: &[Feature],
    ) -> Result<TwoTower, TrainError> {
        for u in std::mem::take(&mut self.unbuilt) {
            let name = self.features[u.feature].name.clone();
            let vocabulary = match given.iter().find(|f| f.name == name).map(|f| &f.kind) {
                Some(FeatureKind::Categorical { vocabulary: Some(Vocab::Ids(v)), .. }) => v.clone(),
                Some(FeatureKind::Categorical { vocabulary: None, .. }) => {
                    return Err(TrainError::Config(format!(
                        "feature `{name}`: the model trained on from hashes it, and a vocabulary \
                         would give its table other rows; train from scratch, or drop the \
                         feature's vocabulary"
                    )));
                }
                _ => Arc::new(self.vocabulary_of(&u, &name, rows)?),
            };
            // Numbers to table rows, once per distinct id.
            let row_of: Vec<i64> = (0..u.seen.len()).map(|n| vocabulary.row(u.seen.get(n))).collect();
            let FeatureKind::Categorical { buckets, default, vocabulary: v } =
                &mut self.features[u.feature].kind
            else {
                unreachable!("only categorical features build vocabularies. This is a bug.")
            };
            let default_row = default.as_deref().map_or(0, |d| vocabulary.row(d));
            *buckets = vocabulary.buckets();
            *v = Some(Vocab::Ids(vocabulary));
            let (input, offset) =
                self.encoder.position(&name).expect("the encoder lays out every feature. This is a bug.");
            let t = &mut self.encoded.tensors[input];
            let width = t.shape[1];
            let TensorData::I64(ids) = &mut t.data else {
                unreachable!("categorical features feed int64 inputs. This is a bug.")
            };
            for (r, &number) in u.numbers.iter().enumerate() {
                ids[r * width + offset] =
                    if number == MISSING { default_row } else { row_of[number as usize] };
            }
        }
        self.encoder = Encoder::for_features(&self.features, ContextRows::PerCandidate);
        let mut arch = arch.clone();
        for f in &mut arch.features {
            if let Some(built) = self.features.iter().find(|b| b.name == f.name) {
                f.kind = built.kind.clone();
            }
        }
        Ok(arch)
    }

    fn vocabulary_of(&self, u: &Unbuilt, name: &str, rows: &[usize]) -> Result<Vocabulary, TrainError> {
        if !vocabulary::nameable(name) {
            return Err(TrainError::Config(format!(
                "feature `{name}`: a vocabulary is kept in a file named for its feature, and this name \
                 cannot be one (a path separator or a leading dot); rename the column or hash it"
            )));
        }
        let mut counts = vec![0u64; u.seen.len()];
        for &r in rows {
            if let Some(c) = counts.get_mut(u.numbers[r] as usize) {
                *c += 1;
            }
        }
        let built = u.rule.build(&vocabulary::file_for(name), &u.seen, &counts);
        if built.is_empty() {
            return Err(TrainError::Config(format!(
                "feature `{name}`: no id appears {} time(s) in the {} training rows, so its vocabulary \
                 would be empty; lower vocabulary.min_count, or hash it with `buckets`",
                u.rule.min_count,
                rows.len()
            )));
        }
        Ok(built)
    }

    pub fn rows(&self) -> usize {
        self.ts.len()
    }

    /// Joins teacher labels from a label store directory by example id. Each name is a column of
    /// the store (a teacher head) or a distillation target its files map to one. Returns how
    /// many rows found no teacher label (they train their hard heads only).
    pub fn attach_teacher(&mut self, store_dir: &Path, names: &[String]) -> Result<usize, TrainError> {
        let index: HashMap<&str, usize> =
            self.example_ids.iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
        let mut teacher = vec![vec![f32::NAN; self.rows()]; names.len()];
        let store = Dataset::open(store_dir)?;
        if store.partitions.is_empty() {
            return Err(TrainError::NoLabels { dir: store_dir.display().to_string() });
        }
        for p in &store.partitions {
            let info = LabelFileInfo::from_metadata(
                &parquet_io::read_metadata(&p.path).map_err(|e| TrainError::Store(e.to_string()))?,
            );
            let columns: Vec<String> =
                names.iter().map(|n| info.targets.get(n).cloned().unwrap_or_else(|| n.clone())).collect();
            let spec = DataSpec { columns: Default::default(), features: Vec::new(), tasks: Vec::new() };
            let mut wanted: Vec<&str> = vec![self.id_column.as_str()];
            wanted.extend(columns.iter().map(String::as_str));
            let ex = p.read(&spec, &wanted)?;
            for b in 0..ex.batches.len() {
                let ids = ex.column(b, &self.id_column);
                let cols: Vec<_> = columns.iter().map(|c| ex.column(b, c)).collect();
                for row in 0..ids.len() {
                    let Some(&r) = ids.id(row).and_then(|id| index.get(id.as_ref())) else { continue };
                    for (k, c) in cols.iter().enumerate() {
                        teacher[k][r] = c.number(row).map_or(f32::NAN, |v| v as f32);
                    }
                }
            }
        }
        let missing = (0..self.rows()).filter(|&r| teacher.iter().any(|t| t[r].is_nan())).count();
        self.teacher = teacher;
        Ok(missing)
    }

    /// The encoded inputs of `rows`, in that order (to run an exported model on them).
    pub fn subset(&self, rows: &[usize]) -> Encoded {
        use retort_model::encode::Tensor as T;
        let tensors = self
            .encoded
            .tensors
            .iter()
            .map(|t| {
                let w = t.shape[1];
                let data = match &t.data {
                    TensorData::I64(d) => TensorData::I64(
                        rows.iter().flat_map(|&r| d[r * w..(r + 1) * w].iter().copied()).collect(),
                    ),
                    TensorData::F32(d) => TensorData::F32(
                        rows.iter().flat_map(|&r| d[r * w..(r + 1) * w].iter().copied()).collect(),
                    ),
                };
                T { shape: [rows.len(), w], data }
            })
            .collect();
        Encoded { tensors, rows: rows.len(), missing: vec![0; self.encoded.missing.len()], tower: None }
    }

    /// The start of the last `days` UTC days of the data, counted back from the day of its
    /// newest row.
    pub fn last_days_cutoff(&self, days: u32) -> i64 {
        let last_day = self.ts.iter().max().copied().unwrap_or(0).div_euclid(86_400);
        (last_day + 1 - i64::from(days)) * 86_400
    }

    /// Rows before `cutoff` (training) and from it on (holdout): a split in time, as a model
    /// trained today is judged on tomorrow's traffic.
    pub fn split_at(&self, cutoff: i64) -> (Vec<usize>, Vec<usize>) {
        (0..self.rows()).partition(|&r| self.ts[r] < cutoff)
    }
}

fn concat(encoder: &Encoder, parts: Vec<Encoded>) -> Encoded {
    use retort_model::encode::Tensor as T;
    let rows = parts.iter().map(|p| p.rows).sum();
    let mut tensors: Vec<T> = encoder
        .inputs()
        .iter()
        .map(|l| T {
            shape: [rows, l.width],
            data: match l.dtype {
                retort_model::manifest::DType::I64 => TensorData::I64(Vec::with_capacity(rows * l.width)),
                retort_model::manifest::DType::F32 => TensorData::F32(Vec::with_capacity(rows * l.width)),
            },
        })
        .collect();
    let mut missing = vec![0u32; parts.first().map_or(0, |p| p.missing.len())];
    for part in parts {
        for (acc, t) in tensors.iter_mut().zip(part.tensors) {
            match (&mut acc.data, t.data) {
                (TensorData::I64(a), TensorData::I64(b)) => a.extend(b),
                (TensorData::F32(a), TensorData::F32(b)) => a.extend(b),
                _ => unreachable!("parts share one layout. This is a bug."),
            }
        }
        for (m, n) in missing.iter_mut().zip(part.missing) {
            *m += n;
        }
    }
    Encoded { tensors, rows, missing, tower: None }
}

/// Trains on `rows` with the hard labels only: each binary head with BCE on logits, each
/// regression head with MSE, summed. Returns the mean training loss of each epoch.
pub fn train(
    student: &Student,
    data: &TrainingData,
    rows: &[usize],
    config: &TrainConfig,
) -> Result<Vec<f64>, TrainError> {
    let plan = Plan::new(&student.arch, &DistillConfig::default()).map_err(TrainError::Config)?;
    train_plan(student, data, rows, config, &plan)
}

/// Trains every head on its target in `plan` (hard label, blended label, or teacher label),
/// the heads' losses summed. `data` must carry the teacher labels the plan needs. Returns the
/// mean training loss of each epoch.
pub fn train_plan(
    student: &Student,
    data: &TrainingData,
    rows: &[usize],
    config: &TrainConfig,
    plan: &Plan,
) -> Result<Vec<f64>, TrainError> {
    Ok(train_validated(student, data, rows, &[], config, plan)?.train_losses)
}

/// The loss curves of a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrainLog {
    pub train_losses: Vec<f64>,
    /// Per epoch, the served heads' mean hard-label loss on the validation rows.
    pub validation_losses: Vec<f64>,
    /// The epoch whose weights the student ends with (0-based).
    pub best_epoch: usize,
    /// Examples trained on, over all epochs.
    pub examples: usize,
    /// Time spent in training steps (batching, forward, backward, optimiser), without
    /// validation: what a training-throughput figure divides by.
    pub train_seconds: f64,
}

impl TrainLog {
    pub fn examples_per_second(&self) -> f64 {
        self.examples as f64 / self.train_seconds.max(1e-9)
    }
}

/// Mean over served heads of their hard-label loss on `rows` (BCE for binary, MSE otherwise).
pub fn validation_loss(student: &Student, data: &TrainingData, rows: &[usize]) -> Result<f64, TrainError> {
    let out = predict(student, data, rows)?;
    let mut total = 0.0;
    for (h, labels) in data.labels.iter().enumerate() {
        let kind = student.arch.heads[h].kind;
        let sum: f64 = rows
            .iter()
            .zip(&out[h])
            .map(|(&r, &z)| {
                let (z, y) = (z as f64, labels[r] as f64);
                match kind {
                    retort_model::manifest::HeadKind::Binary => z.max(0.0) - z * y + (-z.abs()).exp().ln_1p(),
                    retort_model::manifest::HeadKind::Regression => (z - y).powi(2),
                }
            })
            .sum();
        total += sum / rows.len().max(1) as f64;
    }
    Ok(total / data.labels.len().max(1) as f64)
}

/// [`train_plan`] with a validation set: logs both loss curves and, when `config.patience` is
/// set, stops once the validation loss has not improved for that many epochs and restores the
/// best epoch's weights.
pub fn train_validated(
    student: &Student,
    data: &TrainingData,
    rows: &[usize],
    validation: &[usize],
    config: &TrainConfig,
    plan: &Plan,
) -> Result<TrainLog, TrainError> {
    Ok(train_resuming(student, data, rows, validation, config, plan, None)?.0)
}

/// [`train_validated`] continuing from an optimiser state (a warm start: `student` already
/// holds the checkpoint's weights), returning the optimiser's state at the end for the next
/// checkpoint.
pub fn train_resuming(
    student: &Student,
    data: &TrainingData,
    rows: &[usize],
    validation: &[usize],
    config: &TrainConfig,
    plan: &Plan,
    resume: Option<OptimizerState>,
) -> Result<(TrainLog, OptimizerState), TrainError> {
    if plan.uses_teacher() && data.teacher.len() != plan.teacher_labels.len() {
        return Err(TrainError::Config("the plan needs teacher labels the data does not carry".into()));
    }
    let params = AdamWParams {
        learning_rate: config.learning_rate,
        weight_decay: config.weight_decay,
        ..Default::default()
    };
    let features: Vec<&str> = data.encoder.feature_names().collect();
    let masked: Vec<f64> =
        std::iter::once(config.mask_probability).chain(config.mask_features.values().copied()).collect();
    if let Some(p) = masked.iter().find(|p| !(0.0..=1.0).contains(*p)) {
        return Err(TrainError::Config(format!("a masking probability is {p}; it must be in [0, 1]")));
    }
    if let Some(name) = config.mask_features.keys().find(|n| !features.contains(&n.as_str())) {
        return Err(TrainError::Config(format!(
            "train.mask_features names `{name}`, which is not a feature of the model (its features: {})",
            features.join(", ")
        )));
    }
    if !(0.0..1.0).contains(&config.dropout) {
        return Err(TrainError::Config(format!("dropout is {}; it must be in [0, 1)", config.dropout)));
    }
    let mask = |name: &str| config.mask_features.get(name).copied().unwrap_or(config.mask_probability);
    let masking = masked.iter().any(|&p| p > 0.0);
    let mut optimizer = match resume {
        None => AdamW::new(student.vars(), params),
        Some(state) => AdamW::resume(student.vars(), params, state)?,
    };
    let mut rng = SplitMix64::new(config.seed ^ 0xba7c4);
    let mut order = rows.to_vec();
    let mut log = TrainLog::default();
    let mut best: Option<(f64, retort_model::two_tower::TwoTowerWeights)> = None;
    let batches_per_epoch = rows.len().div_ceil(config.batch_size.max(1));
    let teacher: Vec<Vec<f32>> =
        data.teacher.iter().map(|t| t.iter().map(|x| if x.is_nan() { 0.0 } else { *x }).collect()).collect();
    let present: Vec<Vec<f32>> =
        data.teacher.iter().map(|t| t.iter().map(|x| if x.is_nan() { 0.0 } else { 1.0 }).collect()).collect();
    let epochs = match config.steps {
        0 => config.epochs,
        steps => steps.div_ceil(batches_per_epoch.max(1)),
    };
    // Counts the schedule's steps from its start, replayed ones included.
    let mut step = 0usize;
    let to_train = match config.steps {
        0 => epochs * batches_per_epoch,
        steps => steps,
    }
    .saturating_sub(config.start_step);
    let progress = crate::progress::Progress::new("training", "steps", Some(to_train), config.progress);
    let threads = step::threads_for(&student.arch, config.batch_size.min(rows.len()), config.threads);
    let training_started = std::time::Instant::now();
    for epoch in 0..epochs {
        // Fisher–Yates with the run's own generator: the order depends on the seed alone, so a
        // control and a distilled student with one seed see the same batches.
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let (mut total, mut batches, mut examples) = (0.0, 0usize, 0usize);
        let epoch_started = std::time::Instant::now();
        for chunk in order.chunks(config.batch_size.max(1)) {
            if config.steps > 0 && step == config.steps {
                break;
            }
            if step < config.start_step {
                step += 1;
                continue;
            }
            if config.deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return Err(TrainError::Deadline { steps: step - config.start_step });
            }
            let batch = if masking {
                // A stream per step, apart from the batch order's: a continued run masks each
                // batch as the uninterrupted run would.
                let mut mask_rng =
                    SplitMix64::new(config.seed ^ 0x3a5c ^ (step as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                let mut rows = data.subset(chunk);
                data.encoder.mask_missing(&mut rows, mask, || mask_rng.next_f64());
                student.training_batch(data.encoder.inputs(), &rows, &(0..chunk.len()).collect::<Vec<_>>())?
            } else {
                student.training_batch(data.encoder.inputs(), &data.encoded, chunk)?
            };
            let targets = Targets { labels: &data.labels, teacher: &teacher, present: &present };
            let dropout = (config.dropout > 0.0).then_some(Dropout {
                p: config.dropout,
                seed: config.seed,
                step: step as u64,
                first_row: 0,
            });
            let g = step::gradients(student, &batch, chunk, plan, &targets, threads, dropout)?;
            let value: f32 = g.head_losses.iter().sum();
            if !value.is_finite() {
                // A step on a non-finite loss would poison every weight: stop, naming the head.
                return Err(non_finite(plan, &g.head_losses, step, epoch, value));
            }
            let rows: Vec<RowGrad<'_>> = g
                .tables
                .iter()
                .filter_map(|t| {
                    g.grads.get(&t.values).map(|grad| RowGrad { var: t.param, rows: &t.rows, grad })
                })
                .collect();
            optimizer.step_rows(&g.grads, &rows)?;
            total += value as f64;
            batches += 1;
            step += 1;
            examples += chunk.len();
            progress.add(1, || {
                let trained = log.examples + examples;
                let rate = trained as f64 / training_started.elapsed().as_secs_f64().max(1e-9);
                format!(
                    "epoch {}/{epochs}, loss {:.4}, {rate:.0} examples/s",
                    epoch + 1,
                    total / batches as f64
                )
            });
        }
        progress.finish();
        if batches == 0 {
            // An epoch replayed whole by a continued run: nothing trained, nothing to log.
            continue;
        }
        log.train_seconds += epoch_started.elapsed().as_secs_f64();
        log.examples += examples;
        let train_loss = total / batches.max(1) as f64;
        log.train_losses.push(train_loss);
        if validation.is_empty() {
            tracing::debug!(epoch = epoch + 1, train_loss, "epoch done");
            log.best_epoch = epoch;
            continue;
        }
        let validation_loss = validation_loss(student, data, validation)?;
        log.validation_losses.push(validation_loss);
        tracing::info!(epoch = epoch + 1, train_loss, validation_loss, "epoch done");
        if best.as_ref().is_none_or(|(b, _)| validation_loss < *b) {
            best = Some((validation_loss, student.weights()?));
            log.best_epoch = epoch;
        } else if config.patience > 0 && epoch - log.best_epoch >= config.patience {
            tracing::info!(best_epoch = log.best_epoch + 1, "validation loss stopped improving; stopping");
            break;
        }
    }
    if config.patience > 0
        && let Some((_, weights)) = best
    {
        student.set_weights(&weights)?;
    }
    Ok((log, optimizer.state()))
}

/// The error for a step whose summed loss is `value` (not finite): the first head whose own
/// loss is not finite, else (the sum overflowed) the largest.
fn non_finite(plan: &Plan, values: &[f32], step: usize, epoch: usize, value: f32) -> TrainError {
    let h = values
        .iter()
        .position(|v| !v.is_finite())
        .or_else(|| (0..values.len()).max_by(|&a, &b| values[a].total_cmp(&values[b])))
        .unwrap_or(0);
    TrainError::NonFinite {
        head: plan.arch.heads[h].name.clone(),
        step: step + 1,
        epoch: epoch + 1,
        value: values.get(h).copied().filter(|v| !v.is_finite()).unwrap_or(value),
    }
}

/// The student's outputs (logits for binary heads) on `rows`, one `Vec` per head.
pub fn predict(student: &Student, data: &TrainingData, rows: &[usize]) -> Result<Vec<Vec<f32>>, TrainError> {
    let mut out = vec![Vec::with_capacity(rows.len()); student.arch.heads.len()];
    for chunk in rows.chunks(4096) {
        let batch = student.batch(data.encoder.inputs(), &data.encoded, chunk)?;
        let y = student.forward(&batch)?.to_vec2::<f32>()?;
        for row in y {
            for (h, v) in row.into_iter().enumerate() {
                out[h].push(v);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_must_be_finite_and_binary_ones_in_range() {
        assert_eq!(label(Some(1.0), Some(HeadKind::Binary)), Ok(1.0));
        assert_eq!(label(Some(0.25), Some(HeadKind::Binary)), Ok(0.25));
        assert_eq!(label(Some(7.0), Some(HeadKind::Regression)), Ok(7.0));
        for bad in [f64::NAN, f64::INFINITY, 7.0, -3.0] {
            assert!(label(Some(bad), Some(HeadKind::Binary)).is_err(), "{bad}");
        }
        assert!(label(Some(f64::NAN), Some(HeadKind::Regression)).unwrap_err().contains("NaN"));
        assert!(label(None, None).unwrap_err().contains("missing"));
    }
}
