//! `retort label`: runs a teacher over a dataset of examples and writes its logits to the label
//! store, once per partition, shardable across workers, resumable after a crash, and able to
//! follow a directory that partitions keep landing in.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use arrow_array::{ArrayRef, Float32Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};

use crate::data::dataset::{Column, DataError, Dataset, Partition};
use crate::data::mapping::{Mapping, MappingError, Source};
use crate::data::parquet_io::{self, WriteError};
use crate::data::spec::DataSpec;
use crate::label::store::{self, LabelFileInfo};
use retort_model::encode::{EncodeError, FeatureSource, Location, Value};
use retort_model::engine::EngineKind;
use retort_model::manifest::FeatureKind;
use retort_model::{HeadValues, InferError, LoadError, Model};

/// `i/n`: this worker labels the partitions whose name hashes to `i` modulo `n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Shard { index: 0, count: 1 }
    }
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Shard, String> {
        let (i, n) = s.split_once('/').ok_or_else(|| format!("`{s}`: expected i/n, e.g. 0/4"))?;
        let index: usize = i.trim().parse().map_err(|_| format!("`{s}`: `{i}` is not a number"))?;
        let count: usize = n.trim().parse().map_err(|_| format!("`{s}`: `{n}` is not a number"))?;
        if count == 0 || index >= count {
            return Err(format!("`{s}`: need 0 <= i < n"));
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    /// Whether this shard owns a partition; by name, so every worker agrees without talking.
    pub fn owns(&self, partition_name: &str) -> bool {
        retort_model::encode::fnv1a64(partition_name.as_bytes()) % self.count as u64 == self.index as u64
    }
}

#[derive(Debug, Clone)]
pub struct LabelOptions {
    pub shard: Shard,
    /// Rows per inference call.
    pub batch_size: usize,
    /// Threads running the teacher; 0 for one per core.
    pub threads: usize,
    /// Show a progress line on a terminal.
    pub progress: bool,
}

impl Default for LabelOptions {
    fn default() -> Self {
        LabelOptions { shard: Shard::default(), batch_size: 2048, threads: 0, progress: true }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    #[error("teacher: {0}")]
    Teacher(#[from] LoadError),
    #[error(transparent)]
    Mapping(#[from] MappingError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("{path}, row {row}: teacher feature `{feature}` (from {source_desc}): {problem}")]
    Row { path: String, row: usize, feature: String, source_desc: String, problem: String },
    #[error("{path}: the teacher failed: {source}")]
    Inference { path: String, source: InferError },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("partitions {a} and {b} would write the same label file")]
    Collision { a: String, b: String },
    #[error("{} partition(s) could not be labelled (the others were): {}", failed.len(), failed.iter().map(|(p, why)| format!("{p}: {why}")).collect::<Vec<_>>().join("; "))]
    Incomplete { failed: Vec<(String, String)> },
}

/// What happened to one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Labelled {
        rows: usize,
    },
    /// Already labelled by this teacher version under this mapping, from the same input bytes.
    AlreadyLabelled,
    /// Another shard's.
    NotMine,
}

/// Totals of a run, and per teacher feature how many rows took its default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelReport {
    pub labelled: Vec<String>,
    pub already: Vec<String>,
    /// Partitions that could not be labelled, with why: the others were labelled all the same.
    pub failed: Vec<(String, String)>,
    /// Temporary files of interrupted runs, removed.
    pub removed_temporaries: Vec<PathBuf>,
    pub rows: usize,
    /// Teacher feature → (rows defaulted, rows seen), over the partitions labelled in this run.
    pub defaulted: BTreeMap<String, (u64, u64)>,
    pub elapsed: Duration,
    pub store: PathBuf,
}

impl LabelReport {
    /// The report, or an error naming every partition that failed: for a caller that needs
    /// the whole dataset labelled before it goes on.
    pub fn complete(self) -> Result<LabelReport, LabelError> {
        if self.failed.is_empty() { Ok(self) } else { Err(LabelError::Incomplete { failed: self.failed }) }
    }

    fn add(&mut self, name: &str, outcome: &Outcome, info: Option<&LabelFileInfo>) {
        match outcome {
            Outcome::Labelled { rows } => {
                self.labelled.push(name.to_string());
                self.rows += rows;
                if let Some(info) = info {
                    for (feature, n) in &info.defaulted {
                        let e = self.defaulted.entry(feature.clone()).or_default();
                        e.0 += n;
                        e.1 += info.rows;
                    }
                }
            }
            Outcome::AlreadyLabelled => self.already.push(name.to_string()),
            Outcome::NotMine => {}
        }
    }

    /// The defaulted-feature table, most-defaulted first.
    pub fn defaulted_table(&self) -> String {
        let mut rows: Vec<(&String, &(u64, u64))> = self.defaulted.iter().collect();
        rows.sort_by(|a, b| share(b.1).total_cmp(&share(a.1)).then(a.0.cmp(b.0)));
        let mut out = String::from("teacher feature            defaulted\n");
        for (feature, counts) in rows {
            out.push_str(&format!("{feature:<26} {:>8.1}%\n", 100.0 * share(counts)));
        }
        out
    }
}

fn share(&(defaulted, seen): &(u64, u64)) -> f64 {
    if seen == 0 { 0.0 } else { defaulted as f64 / seen as f64 }
}

pub struct Labeller {
    teacher: Arc<Model>,
    mapping: Mapping,
    spec: DataSpec,
    dir: PathBuf,
    options: LabelOptions,
}

impl Labeller {
    /// Loads the teacher (its context fed per row), and checks the mapping covers it.
    pub fn new(
        teacher_dir: &Path,
        engine: EngineKind,
        mapping: Mapping,
        spec: DataSpec,
        store_root: &Path,
        options: LabelOptions,
    ) -> Result<Labeller, LabelError> {
        let teacher = Model::load_per_row(teacher_dir, engine)?;
        mapping.check(&teacher.manifest)?;
        let dir = store::labels_dir(store_root, &teacher.manifest, &mapping.fingerprint());
        Ok(Labeller { teacher: Arc::new(teacher), mapping, spec, dir, options })
    }

    /// The directory this teacher and mapping write to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn threads(&self) -> usize {
        match self.options.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// Labels every partition of this shard that is not labelled yet.
    pub fn label_dataset(&self, dataset: &Dataset) -> Result<LabelReport, LabelError> {
        let started = Instant::now();
        let mut seen: BTreeMap<PathBuf, &str> = BTreeMap::new();
        for p in &dataset.partitions {
            if let Some(other) = seen.insert(store::label_path(&self.dir, &p.name), &p.name) {
                return Err(LabelError::Collision { a: other.to_string(), b: p.name.clone() });
            }
        }
        let mine: Vec<&Partition> =
            dataset.partitions.iter().filter(|p| self.options.shard.owns(&p.name)).collect();
        let progress = Progress::new(self.options.progress, mine.len());
        let mut report = LabelReport {
            store: self.dir.clone(),
            removed_temporaries: self.remove_stale_temporaries(),
            ..Default::default()
        };
        for p in mine {
            // One bad partition is reported and skipped; the rest are labelled all the same.
            match self.label_partition(p, &progress) {
                Ok((outcome, info)) => report.add(&p.name, &outcome, info.as_ref()),
                Err(e) => {
                    tracing::error!(partition = %p.name, error = %e, "partition not labelled");
                    report.failed.push((p.name.clone(), e.to_string()));
                }
            }
            progress.partition_done();
        }
        progress.finish();
        report.elapsed = started.elapsed();
        self.write_summary()?;
        Ok(report)
    }

    /// Labels one partition unless it already is; returns what was written.
    pub fn label_partition(
        &self,
        p: &Partition,
        progress: &Progress,
    ) -> Result<(Outcome, Option<LabelFileInfo>), LabelError> {
        if !self.options.shard.owns(&p.name) {
            return Ok((Outcome::NotMine, None));
        }
        let dest = store::label_path(&self.dir, &p.name);
        let io = |source| LabelError::Io { path: p.path.display().to_string(), source };
        let fingerprint = store::file_fingerprint(&p.path).map_err(io)?;
        if dest.exists() {
            match parquet_io::read_metadata(&dest) {
                Ok(metadata) => {
                    let existing = LabelFileInfo::from_metadata(&metadata);
                    if existing.input_fingerprint == fingerprint {
                        return Ok((Outcome::AlreadyLabelled, Some(existing)));
                    }
                    tracing::info!(partition = %p.name, "input changed since it was labelled; labelling again");
                }
                // Not written by retort's atomic writer (a copy cut short, a disk fault): the
                // labels are recomputed rather than every rerun failing on them.
                Err(e) => {
                    tracing::warn!(partition = %p.name, error = %e, "label file unreadable; labelling again")
                }
            }
        }

        let id_column = self.spec.columns.example_id.as_str();
        let mut columns = vec![id_column];
        columns.extend(self.mapping.columns().into_iter().filter(|c| *c != id_column));
        let examples = p.read(&self.spec, &columns)?;

        // Chunks of at most `batch_size` rows, run on all threads.
        let mut chunks = Vec::new();
        let mut first_row = 0;
        for (b, batch) in examples.batches.iter().enumerate() {
            for start in (0..batch.num_rows()).step_by(self.options.batch_size.max(1)) {
                let end = (start + self.options.batch_size.max(1)).min(batch.num_rows());
                chunks.push((b, start, end, first_row + start));
            }
            first_row += batch.num_rows();
        }
        let next = AtomicUsize::new(0);
        let results: Vec<(usize, Result<Chunk, LabelError>)> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..self.threads().min(chunks.len()).max(1))
                .map(|_| {
                    s.spawn(|| {
                        let mut out = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(&(b, start, end, global)) = chunks.get(i) else { break };
                            let result = self.run_chunk(&examples, b, start, end, global);
                            let failed = result.is_err();
                            progress.rows_done(end - start);
                            out.push((i, result));
                            if failed {
                                break;
                            }
                        }
                        out
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().expect("a labelling thread panicked. This is a bug."))
                .collect()
        });
        // In chunk order, so that a bad row is reported as the first bad row of the partition,
        // whichever thread met it.
        let mut results = results;
        results.sort_by_key(|(i, _)| *i);
        let mut ordered: Vec<Option<Chunk>> = (0..chunks.len()).map(|_| None).collect();
        for (i, r) in results {
            ordered[i] = Some(r?);
        }

        let heads = &self.teacher.manifest.heads;
        let mut logits: Vec<Vec<f32>> = vec![Vec::with_capacity(examples.rows()); heads.len()];
        let mut defaulted = vec![0u64; self.teacher.manifest.features.len()];
        let mut ids: Vec<ArrayRef> = Vec::new();
        for (chunk, values) in chunks.iter().zip(ordered) {
            let (values, missing) = values.expect("every chunk ran. This is a bug.");
            for (h, column) in logits.iter_mut().enumerate() {
                column.extend_from_slice(values.head(h));
            }
            for (d, m) in defaulted.iter_mut().zip(missing) {
                *d += m as u64;
            }
            let (b, start, end, _) = *chunk;
            ids.push(examples.batches[b].column(examples.columns[id_column]).slice(start, end - start));
        }
        let id_type = ids.first().map_or(DataType::Int64, |a| a.data_type().clone());
        let ids = if ids.is_empty() {
            arrow_array::new_empty_array(&id_type)
        } else {
            let refs: Vec<&dyn arrow_array::Array> = ids.iter().map(|a| a.as_ref()).collect();
            arrow_select_concat(&refs)
        };
        let mut fields = vec![Field::new(id_column, id_type, false)];
        let mut arrays: Vec<ArrayRef> = vec![ids];
        for (head, column) in heads.iter().zip(logits) {
            fields.push(Field::new(&head.name, DataType::Float32, false));
            arrays.push(Arc::new(Float32Array::from(column)));
        }
        let schema = Arc::new(Schema::new(fields));
        let batch = RecordBatch::try_new(schema.clone(), arrays).map_err(|e| LabelError::Io {
            path: dest.display().to_string(),
            source: std::io::Error::other(e),
        })?;
        let rows = batch.num_rows();
        let info = LabelFileInfo {
            teacher: self.teacher.manifest.id(),
            mapping: self.mapping.fingerprint(),
            input: p.name.clone(),
            input_fingerprint: fingerprint,
            created_at: retort_model::timestamp::rfc3339(SystemTime::now()),
            rows: rows as u64,
            defaulted: self
                .teacher
                .manifest
                .features
                .iter()
                .zip(&defaulted)
                .map(|(f, &n)| (f.name.clone(), n))
                .collect(),
            targets: self.mapping.targets.clone(),
        };
        parquet_io::write_atomic(&dest, schema, &[batch], &info.to_metadata())?;
        Ok((Outcome::Labelled { rows }, Some(info)))
    }

    fn run_chunk(
        &self,
        examples: &crate::data::dataset::Examples,
        batch: usize,
        start: usize,
        end: usize,
        global: usize,
    ) -> Result<Chunk, LabelError> {
        let inputs = self.resolve(examples, batch);
        let rows: Vec<MappedRow<'_, '_>> =
            (start..end).map(|row| MappedRow { inputs: &inputs, row }).collect();
        let encoded =
            self.teacher.encoder().encode_rows(&rows).map_err(|e| self.row_error(examples, e, global))?;
        let missing = encoded.missing.clone();
        let values = self
            .teacher
            .infer_logits(encoded)
            .map_err(|source| LabelError::Inference { path: examples.path.clone(), source })?;
        Ok((values, missing))
    }

    fn row_error(
        &self,
        examples: &crate::data::dataset::Examples,
        e: EncodeError,
        first_row: usize,
    ) -> LabelError {
        let row = match e.location {
            Location::Candidate(i) => first_row + i,
            Location::Context => first_row,
        };
        let source_desc = match self.mapping.features.get(&e.feature) {
            Some(Source::Column(c)) => format!("column `{c}`"),
            Some(Source::Constant(v)) => format!("constant {v}"),
            _ => "its default".to_string(),
        };
        LabelError::Row {
            path: examples.path.clone(),
            row,
            feature: e.feature,
            source_desc,
            problem: e.problem,
        }
    }

    /// Per teacher feature, where its value comes from in this batch.
    fn resolve<'a>(&'a self, examples: &'a crate::data::dataset::Examples, batch: usize) -> Inputs<'a> {
        let sources = self
            .teacher
            .manifest
            .features
            .iter()
            .map(|f| {
                let source = match self.mapping.features.get(&f.name) {
                    Some(Source::Column(c)) => Resolved::Column(
                        examples.column(batch, c),
                        matches!(f.kind, FeatureKind::Vector { .. }),
                    ),
                    Some(Source::Constant(v)) => Resolved::Constant(constant(v)),
                    _ => Resolved::Default,
                };
                (f.name.as_str(), source)
            })
            .collect();
        Inputs { sources }
    }

    /// Removes the temporary files that interrupted runs left in this teacher's label
    /// directory. Only those untouched for [`STALE_TEMPORARY`]: another worker on the same
    /// store may be writing its own right now, and a write never pauses that long.
    fn remove_stale_temporaries(&self) -> Vec<PathBuf> {
        let removed = parquet_io::remove_stale_temporaries(&self.dir, STALE_TEMPORARY);
        for path in &removed {
            tracing::info!(path = %path.display(), "removed a temporary file an interrupted run left");
        }
        removed
    }

    /// Writes `report.toml` beside the labels: per teacher feature, the share of rows defaulted
    /// over every partition in the store (this run's and earlier ones').
    fn write_summary(&self) -> Result<(), LabelError> {
        let mut totals: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        let mut partitions = 0u64;
        let mut rows = 0u64;
        if let Ok(data) = Dataset::open(&self.dir) {
            for p in &data.partitions {
                // An unreadable file is relabelled by the next run; it counts for nothing here.
                let Ok(metadata) = parquet_io::read_metadata(&p.path) else { continue };
                let info = LabelFileInfo::from_metadata(&metadata);
                partitions += 1;
                rows += info.rows;
                for (f, n) in info.defaulted {
                    let e = totals.entry(f).or_default();
                    e.0 += n;
                    e.1 += info.rows;
                }
            }
        }
        let mut doc = toml::Table::new();
        doc.insert("teacher".into(), self.teacher.manifest.id().into());
        doc.insert("mapping".into(), self.mapping.fingerprint().into());
        doc.insert("partitions".into(), (partitions as i64).into());
        doc.insert("rows".into(), (rows as i64).into());
        let mut shares = toml::Table::new();
        for (f, counts) in &totals {
            shares.insert(f.clone(), toml::Value::Float((share(counts) * 1e6).round() / 1e6));
        }
        doc.insert("defaulted_share".into(), toml::Value::Table(shares));
        let path = self.dir.join("report.toml");
        let tmp = parquet_io::temporary_path(&path);
        let io = |source| LabelError::Io { path: path.display().to_string(), source };
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        std::fs::write(&tmp, doc.to_string()).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        Ok(())
    }

    /// Labels partitions as they land in `dataset_dir`, checking every `poll`, until `stop` is
    /// set. Calls `on_labelled` with each partition labelled and its lag (from the file's
    /// arrival to its labels being written).
    pub fn follow(
        &self,
        dataset_dir: &Path,
        poll: Duration,
        stop: &AtomicBool,
        mut on_labelled: impl FnMut(&str, usize, Duration),
    ) -> Result<LabelReport, LabelError> {
        let started = Instant::now();
        let mut report = LabelReport {
            store: self.dir.clone(),
            removed_temporaries: self.remove_stale_temporaries(),
            ..Default::default()
        };
        let quiet = Progress::new(false, 0);
        // A partition that failed, by its files' size and time: tried again only once it changes.
        let mut failed: BTreeMap<String, Stamp> = BTreeMap::new();
        while !stop.load(Ordering::Relaxed) {
            let dataset = Dataset::open(dataset_dir)?;
            let mut any = false;
            for p in dataset.partitions.iter().filter(|p| self.options.shard.owns(&p.name)) {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                // Size and modification time, not a hash of the bytes: this runs on every poll.
                let stamp = std::fs::metadata(&p.path).ok().map(|m| (m.len(), m.modified().ok()));
                if failed.get(&p.name) == Some(&stamp) {
                    continue;
                }
                let (outcome, info) = match self.label_partition(p, &quiet) {
                    Ok(done) => done,
                    Err(e) => {
                        tracing::error!(partition = %p.name, error = %e, "partition not labelled; retried when it changes");
                        report.failed.push((p.name.clone(), e.to_string()));
                        failed.insert(p.name.clone(), stamp);
                        continue;
                    }
                };
                failed.remove(&p.name);
                if let Outcome::Labelled { rows } = outcome {
                    any = true;
                    let arrived =
                        std::fs::metadata(&p.path).and_then(|m| m.modified()).unwrap_or(SystemTime::now());
                    let lag = SystemTime::now().duration_since(arrived).unwrap_or_default();
                    on_labelled(&p.name, rows, lag);
                    report.add(&p.name, &outcome, info.as_ref());
                }
            }
            if any {
                self.write_summary()?;
            }
            crate::progress::sleep_unless_stopped(poll, stop);
        }
        report.elapsed = started.elapsed();
        Ok(report)
    }
}

/// A file's size and modification time, when it can be read.
type Stamp = Option<(u64, Option<SystemTime>)>;

/// How long a temporary label file must have been left alone to count as abandoned.
const STALE_TEMPORARY: Duration = Duration::from_secs(600);

/// One chunk's teacher logits and, per teacher feature, the rows that took its default.
type Chunk = (HeadValues, Vec<u32>);

fn arrow_select_concat(arrays: &[&dyn arrow_array::Array]) -> ArrayRef {
    arrow_select::concat::concat(arrays).expect("slices of one column share a type. This is a bug.")
}

fn constant(v: &toml::Value) -> Value<'_> {
    match v {
        toml::Value::String(s) => Value::Str(s),
        toml::Value::Integer(i) => Value::Int(*i),
        toml::Value::Float(x) => Value::Float(*x),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Array(items) => items
            .iter()
            .map(|x| x.as_float().or_else(|| x.as_integer().map(|i| i as f64)))
            .collect::<Option<Vec<f64>>>()
            .map_or(Value::Other("a list holding non-numbers"), |v| Value::List(Cow::Owned(v))),
        _ => Value::Other("a table or date"),
    }
}

enum Resolved<'a> {
    /// A column, and whether it feeds a vector (CSV vectors arrive as `;`-separated text).
    Column(Column<'a>, bool),
    Constant(Value<'a>),
    Default,
}

struct Inputs<'a> {
    sources: Vec<(&'a str, Resolved<'a>)>,
}

/// One example row, seen through the mapping as the teacher's features.
struct MappedRow<'a, 'b> {
    inputs: &'b Inputs<'a>,
    row: usize,
}

impl FeatureSource for MappedRow<'_, '_> {
    fn get(&self, name: &str) -> Value<'_> {
        match self.inputs.sources.iter().find(|(n, _)| *n == name).map(|(_, s)| s) {
            Some(Resolved::Column(c, vector)) => match c.value(self.row) {
                // A column the examples' spec does not call a vector, feeding a teacher's vector.
                Value::Str(text) if *vector => crate::data::dataset::vector_from_text(text)
                    .map_or(Value::Other("text that is not `;`-separated numbers"), |v| {
                        Value::List(Cow::Owned(v))
                    }),
                v => v,
            },
            Some(Resolved::Constant(v)) => v.clone(),
            Some(Resolved::Default) | None => Value::Missing,
        }
    }
}

/// Labelling's progress: rows labelled, and partitions done out of this run's.
pub struct Progress {
    rows: crate::progress::Progress,
    total: usize,
    partitions: AtomicUsize,
}

impl Progress {
    pub fn new(enabled: bool, total: usize) -> Progress {
        Progress {
            rows: crate::progress::Progress::new("labelling", "rows", None, enabled),
            total,
            partitions: AtomicUsize::new(0),
        }
    }

    fn rows_done(&self, n: usize) {
        self.rows.add(n, || format!("{}/{} partitions", self.partitions.load(Ordering::Relaxed), self.total));
    }

    fn partition_done(&self) {
        self.partitions.fetch_add(1, Ordering::Relaxed);
        self.rows_done(0);
    }

    fn finish(&self) {
        self.rows.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_split_partitions_between_them() {
        assert_eq!("1/4".parse::<Shard>().unwrap(), Shard { index: 1, count: 4 });
        assert!("4/4".parse::<Shard>().is_err());
        assert!("x/4".parse::<Shard>().unwrap_err().contains("`x`"));
        let names: Vec<String> = (0..100).map(|i| format!("day-{i:03}.parquet")).collect();
        let shards: Vec<Shard> = (0..3).map(|index| Shard { index, count: 3 }).collect();
        for n in &names {
            assert_eq!(shards.iter().filter(|s| s.owns(n)).count(), 1, "{n} has exactly one owner");
        }
        assert!(shards.iter().all(|s| names.iter().filter(|n| s.owns(n)).count() > 20), "roughly even");
    }
}
