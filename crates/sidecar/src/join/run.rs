//! One pass of `retort examples` over the logs, and `--follow`. Each impression partition whose
//! attribution window has closed (its last impression `window + lag` ago) and that has no
//! examples partition yet is joined with the feedback received around it, into
//! `<out>/<its day>/examples-<its name>.parquet`, written whole or not at all. The output depends
//! only on the logs, so a rerun skips what is joined and would write the same bytes again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arrow_array::builder::{Float32Builder, Float64Builder, Int32Builder, Int64Builder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field};
use serde::Serialize;

use crate::data::parquet_io::{self, WriteError};
use crate::join::attribute::{self, Counts, Shown};
use crate::join::config::Join;
use crate::join::rows::{self, FeatureColumns, Sources, Unfit};
use retort_log::feedback::{self, Event, Feedback};
use retort_log::impression::{self, Impression};
use retort_log::partition::{self, Partition, PartitionError};
use retort_log::writer::Record;
use retort_model::catalog::Catalog;
use retort_model::manifest::HeadKind;

/// Where the join reads and writes.
#[derive(Debug, Clone)]
pub struct Dirs {
    pub impressions: PathBuf,
    pub feedback: PathBuf,
    /// The catalogs the server looked candidates up in (`catalogs_dir`).
    pub catalogs: PathBuf,
    pub out: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Log(#[from] PartitionError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error(
        "{path} holds the examples of another join (its feature spec differs from this config's); \
         write to another directory"
    )]
    OtherJoin { path: String },
    #[error("{partition}, row {row}: {what} is not a JSON object of features: {problem}")]
    Features { partition: String, row: usize, what: &'static str, problem: String },
    #[error(
        "{partition}: its requests were served with catalog {name} version {version}, which cannot be read: {source}"
    )]
    Catalog {
        partition: String,
        name: String,
        version: String,
        source: Box<retort_model::catalog::file::CatalogFileError>,
    },
}

/// What one impression partition became.
#[derive(Debug, Clone, Serialize)]
pub struct Joined {
    pub impressions: String,
    pub examples: String,
    pub rows: u64,
    /// Rows of a second answer to a request id already answered in the partition (a retry):
    /// the first answer's rows are kept.
    pub repeated: u64,
    /// Per task, the sum of its labels (positives, for a binary task).
    pub labels: BTreeMap<String, f64>,
    pub events: Counts,
    #[serde(skip)]
    pub unfit: Vec<Unfit>,
}

/// What one pass did.
#[derive(Debug, Default)]
pub struct Pass {
    pub joined: Vec<Joined>,
    /// Partitions joined by an earlier run.
    pub already: usize,
    /// Partitions whose window has not closed yet.
    pub waiting: usize,
    pub failed: Vec<(String, String)>,
    /// Events naming a request that no impression partition holds, though its impression
    /// would be in one joined by now: requests the sample did not log, or ids no server gave.
    /// Each is judged once per process, when the partitions that could hold it are joined.
    pub unknown: u64,
    /// The first few of those request ids, sorted.
    pub unknown_ids: Vec<String>,
}

const UNKNOWN_NAMED: usize = 10;

pub struct Joiner {
    join: Join,
    dirs: Dirs,
    catalogs: HashMap<(String, String), Arc<Catalog>>,
    /// Events received up to this time have been judged known or unknown.
    judged_until: Option<i64>,
    /// The request ids of partitions joined by this process, with their last impression's time,
    /// for as long as events for them may still be judged.
    recent: Vec<(i64, HashSet<String>)>,
}

impl Joiner {
    /// Checks `out` (a directory for this join's examples, made if absent) and writes its
    /// `features.toml`, which `retort label` and `retort train` read.
    pub fn open(join: Join, dirs: Dirs) -> Result<Joiner, JoinError> {
        let io = |p: &Path| {
            let path = p.display().to_string();
            move |source| JoinError::Io { path, source }
        };
        std::fs::create_dir_all(&dirs.out).map_err(io(&dirs.out))?;
        let spec_path = dirs.out.join("features.toml");
        let text = join.spec.to_toml();
        match std::fs::read_to_string(&spec_path) {
            Ok(existing) if existing == text => {}
            Ok(_) => return Err(JoinError::OtherJoin { path: dirs.out.display().to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                parquet_io::write_text(&spec_path, &text).map_err(io(&spec_path))?
            }
            Err(e) => return Err(io(&spec_path)(e)),
        }
        Ok(Joiner { join, dirs, catalogs: HashMap::new(), judged_until: None, recent: Vec::new() })
    }

    /// The examples partition an impression partition becomes.
    fn examples_path(&self, p: &Partition) -> PathBuf {
        let relative = p.path.strip_prefix(&self.dirs.impressions).unwrap_or(&p.path);
        let name = relative.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let name = name.strip_prefix(Impression::LOG).map_or(name.clone(), |rest| format!("examples{rest}"));
        self.dirs.out.join(relative).with_file_name(name)
    }

    /// Joins every impression partition whose window closed by `now_ms` and that is not joined.
    /// A partition that fails is named in the pass and left for the next one.
    pub fn pass(&mut self, now_ms: i64) -> Result<Pass, JoinError> {
        let window = self.join.window_ms();
        let lag = self.join.lag_ms();
        let closes = |p: &Partition| p.last_ms.saturating_add(window).saturating_add(lag);
        let mut pass = Pass::default();
        let impressions = partition::list(&self.dirs.impressions, Impression::LOG)?;
        let feedback = if self.dirs.feedback.is_dir() {
            partition::list(&self.dirs.feedback, Feedback::LOG)?
        } else {
            Vec::new()
        };
        let mut due = Vec::new();
        let mut first_waiting = i64::MAX;
        for p in impressions {
            if self.examples_path(&p).exists() {
                pass.already += 1;
            } else if closes(&p) > now_ms {
                pass.waiting += 1;
                first_waiting = first_waiting.min(p.first_ms);
            } else {
                due.push(p);
            }
        }
        due.sort_by_key(|p| (p.first_ms, p.path.clone()));

        let mut cache: HashMap<PathBuf, Arc<Vec<(Event, i64)>>> = HashMap::new();
        let mut requests: HashSet<String> = HashSet::new();
        let mut joined_ids = Vec::with_capacity(due.len());
        for p in &due {
            let (from, to) = (p.first_ms.saturating_sub(window), closes(p));
            cache.retain(|path, _| feedback.iter().any(|f| &f.path == path && f.last_ms >= from));
            let mut events = Vec::new();
            for f in feedback.iter().filter(|f| f.last_ms >= from && f.first_ms <= to) {
                let read = match cache.get(&f.path) {
                    Some(read) => read.clone(),
                    None => {
                        let read = Arc::new(feedback::read(&f.path)?);
                        cache.insert(f.path.clone(), read.clone());
                        read
                    }
                };
                events.extend(read.iter().filter(|(_, r)| (from..=to).contains(r)).cloned());
            }
            match self.join_partition(p, &events) {
                Ok((joined, ids)) => {
                    requests.extend(ids.iter().cloned());
                    joined_ids.push(Some(ids));
                    pass.joined.push(joined);
                }
                Err(e) => {
                    joined_ids.push(None);
                    pass.failed.push((p.path.display().to_string(), e.to_string()));
                }
            }
        }

        // Events are judged unknown once no partition could still hold their request: received
        // by the watermark, before any partition still waiting, and read by this pass. Their
        // request would be among the partitions joined in the window before them.
        let read_until = due.iter().map(closes).max().unwrap_or(i64::MIN);
        let to = first_waiting.saturating_sub(1).min(now_ms.saturating_sub(lag)).min(read_until);
        // A fresh process knows no request before its first partition: it judges from a window
        // after that partition's first impression.
        if self.judged_until.is_none() {
            self.judged_until = due.first().map(|p| p.first_ms.saturating_add(window).saturating_sub(1));
        }
        let from = self.judged_until.map_or(i64::MAX, |until| until.saturating_add(1));
        if from <= to {
            self.recent.retain(|(last_ms, _)| *last_ms >= from.saturating_sub(window));
            let known =
                |id: &String| requests.contains(id) || self.recent.iter().any(|(_, ids)| ids.contains(id));
            let mut unknown = std::collections::BTreeSet::new();
            let mut seen = HashSet::new();
            for (e, r) in cache.values().flat_map(|v| v.iter()) {
                if (from..=to).contains(r)
                    && !known(&e.request_id)
                    && seen.insert((attribute::identity(e), *r))
                {
                    pass.unknown += 1;
                    unknown.insert(e.request_id.clone());
                }
            }
            pass.unknown_ids = unknown.into_iter().take(UNKNOWN_NAMED).collect();
            self.judged_until = Some(to);
        }
        for (p, ids) in due.iter().zip(joined_ids) {
            if let Some(ids) = ids {
                self.recent.push((p.last_ms, ids));
            }
        }
        Ok(pass)
    }

    fn catalog(&mut self, partition: &str, name: &str, version: &str) -> Result<Arc<Catalog>, JoinError> {
        let key = (name.to_string(), version.to_string());
        if let Some(c) = self.catalogs.get(&key) {
            return Ok(c.clone());
        }
        let dir = self.dirs.catalogs.join(name).join(version);
        let catalog = retort_model::catalog::file::read(&dir).map_err(|source| JoinError::Catalog {
            partition: partition.to_string(),
            name: name.to_string(),
            version: version.to_string(),
            source: Box::new(source),
        })?;
        let catalog = Arc::new(catalog);
        self.catalogs.insert(key, catalog.clone());
        Ok(catalog)
    }

    /// Joins one partition and writes its examples; returns them and its request ids.
    fn join_partition(
        &mut self,
        p: &Partition,
        events: &[(Event, i64)],
    ) -> Result<(Joined, HashSet<String>), JoinError> {
        let name = p.path.display().to_string();
        let logged = impression::read(&p.path)?;
        let kept = first_answers(&logged);
        let repeated = (logged.len() - kept.len()) as u64;

        let shown: Vec<Shown<'_>> = kept
            .iter()
            .map(|&i| Shown {
                request_id: &logged[i].request_id,
                item_id: &logged[i].item_id,
                ts_ms: logged[i].ts_ms,
            })
            .collect();
        let mut catalogs = Vec::with_capacity(kept.len());
        for &i in &kept {
            catalogs.push(match &logged[i].catalog {
                Some((c, v)) => Some(self.catalog(&name, c, v)?),
                None => None,
            });
        }
        let tasks = &self.join.config.tasks;
        let attribution = attribute::attribute(tasks, self.join.window_ms(), &shown, events);
        let spec = &self.join.spec;
        let mut features = FeatureColumns::new(&spec.features, kept.len());
        let no_overrides = retort_model::request::Features::default();
        for (k, &i) in kept.iter().enumerate() {
            let row = &logged[i];
            let bad = |what, problem| JoinError::Features { partition: name.clone(), row: i, what, problem };
            let context = rows::parse_features(&row.context).map_err(|p| bad("its context", p))?;
            let overrides = match &row.overrides {
                Some(json) => Some(rows::parse_features(json).map_err(|p| bad("its overrides", p))?),
                None => None,
            };
            let item = rows::candidate(
                overrides.as_ref().unwrap_or(&no_overrides),
                catalogs[k].as_deref(),
                &row.item_id,
            );
            features.push(&Sources { context: &context, item: &item }, &row.request_id);
        }
        let (feature_arrays, unfit) = features.finish();

        let mut fields = vec![
            Field::new(&spec.columns.example_id, DataType::Utf8, false),
            Field::new(&spec.columns.request_id, DataType::Utf8, false),
            Field::new(&spec.columns.ts, DataType::Int64, false),
            Field::new("position", DataType::Int32, false),
            Field::new("served_model", DataType::Utf8, false),
            Field::new("served_version", DataType::Utf8, false),
            Field::new("sample_rate", DataType::Float64, false),
            Field::new("score", DataType::Float32, true),
        ];
        let n = kept.len();
        let (mut example_id, mut request_id) = (StringBuilder::new(), StringBuilder::new());
        let (mut ts, mut position) = (Int64Builder::with_capacity(n), Int32Builder::with_capacity(n));
        let (mut model, mut version) = (StringBuilder::new(), StringBuilder::new());
        let (mut sample_rate, mut score) =
            (Float64Builder::with_capacity(n), Float32Builder::with_capacity(n));
        for &i in &kept {
            let r = &logged[i];
            example_id.append_value(format!("{}/{}", r.request_id, r.position));
            request_id.append_value(&r.request_id);
            ts.append_value(r.ts_ms.div_euclid(1000));
            position.append_value(r.position as i32);
            model.append_value(&r.model);
            version.append_value(&r.version);
            sample_rate.append_value(r.sample_rate);
            score.append_option(r.score);
        }
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(example_id.finish()),
            Arc::new(request_id.finish()),
            Arc::new(ts.finish()),
            Arc::new(position.finish()),
            Arc::new(model.finish()),
            Arc::new(version.finish()),
            Arc::new(sample_rate.finish()),
            Arc::new(score.finish()),
        ];
        fields.extend(FeatureColumns::fields(&spec.features));
        columns.extend(feature_arrays);
        let mut labels = BTreeMap::new();
        for (task, values) in tasks.iter().zip(&attribution.labels) {
            labels.insert(task.name.clone(), values.iter().sum());
            match task.kind {
                HeadKind::Binary => {
                    fields.push(Field::new(&task.name, DataType::Int32, false));
                    columns.push(Arc::new(
                        values.iter().map(|&y| y as i32).collect::<arrow_array::Int32Array>(),
                    ));
                }
                HeadKind::Regression => {
                    fields.push(Field::new(&task.name, DataType::Float64, false));
                    columns.push(Arc::new(arrow_array::Float64Array::from(values.clone())));
                }
            }
        }
        let batch: RecordBatch = rows::batch(fields, columns);

        let out = self.examples_path(p);
        let joined = Joined {
            impressions: name,
            examples: out.display().to_string(),
            rows: n as u64,
            repeated,
            labels,
            events: attribution.counts,
            unfit,
        };
        let source = p.path.strip_prefix(&self.dirs.impressions).unwrap_or(&p.path).display().to_string();
        let metadata = vec![
            ("retort.joined_from".to_string(), source),
            ("retort.window_secs".to_string(), self.join.config.window_secs.to_string()),
            ("retort.join".to_string(), serde_json::to_string(&joined).expect("a report serialises")),
        ];
        parquet_io::write_atomic(&out, batch.schema(), &[batch], &metadata)?;
        let ids = kept.iter().map(|&i| logged[i].request_id.clone()).collect();
        Ok((joined, ids))
    }

    /// Joins partitions as their windows close, every `poll`, until `stop` is set.
    pub fn follow(
        &mut self,
        poll: Duration,
        stop: &AtomicBool,
        mut on_pass: impl FnMut(&Pass),
    ) -> Result<(), JoinError> {
        // A partition that failed is tried again on the next poll: the failure is most often a
        // catalog version not copied yet.
        while !stop.load(Ordering::Relaxed) {
            let pass = self.pass(now_ms())?;
            on_pass(&pass);
            crate::progress::sleep_unless_stopped(poll, stop);
        }
        Ok(())
    }
}

/// The rows to keep, by index: the first answer logged for each request id (a retried
/// request is answered, and logged, again), each position once.
fn first_answers(rows: &[impression::Row]) -> Vec<usize> {
    let mut first: HashMap<&str, (i64, &str, &str)> = HashMap::new();
    let mut positions: HashSet<(&str, u32)> = HashSet::new();
    let mut kept = Vec::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        let answer = (r.ts_ms, r.model.as_str(), r.version.as_str());
        let first = *first.entry(&r.request_id).or_insert(answer);
        if first == answer && positions.insert((&r.request_id, r.position)) {
            kept.push(i);
        }
    }
    kept
}

/// The time a pass joins up to: now, on the logs' clock.
pub fn now_ms() -> i64 {
    retort_model::timestamp::unix_ms(std::time::SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::dataset::{Column, Dataset};
    use crate::data::spec::DataSpec;
    use crate::join::config::JoinConfig;
    use retort_log::writer::{Log, Settings};
    use retort_log::{Shown as Listed, feedback::Event};
    use retort_model::catalog::{Builder, Cell, ColumnKind};

    const T0: i64 = 1_764_720_000_000;
    const WINDOW_SECS: u64 = 60;

    fn spec() -> DataSpec {
        toml::from_str(
            r#"
[[features]]
name = "user_id"
side = "context"
kind = "categorical"
buckets = 100

[[features]]
name = "hour"
side = "context"
kind = "number"
mean = 12.0
std = 6.0

[[features]]
name = "track_id"
side = "item"
kind = "categorical"
buckets = 100

[[features]]
name = "duration_s"
side = "item"
kind = "number"
mean = 200.0
std = 50.0

[[features]]
name = "embedding"
side = "item"
kind = "vector"
dim = 2
"#,
        )
        .unwrap()
    }

    fn join() -> Join {
        let config: JoinConfig = toml::from_str(&format!(
            r#"
spec = "unused"
window_secs = {WINDOW_SECS}
lag_secs = 0
[[tasks]]
name = "play"
kind = "binary"
events = ["play"]
[[tasks]]
name = "seconds"
kind = "regression"
events = ["listen"]
"#
        ))
        .unwrap();
        Join::new(config, spec()).unwrap()
    }

    fn settings(dir: &Path) -> Settings {
        Settings {
            dir: dir.to_path_buf(),
            queue_rows: 1 << 16,
            rotate_rows: 1 << 20,
            rotate_after: Duration::from_secs(3600),
        }
    }

    fn answer(request: &str, at: i64, items: &[(&str, Option<&str>)]) -> Impression {
        Impression {
            request_id: request.into(),
            arrived_ms: at,
            model: "m".into(),
            version: "3".into(),
            catalog: Some(("music".into(), "1".into())),
            context: r#"{"user_id": 42, "hour": 21.5}"#.into(),
            degraded: None,
            sample_rate: 0.5,
            heads: Arc::from(vec!["play".to_string()]),
            shown: items
                .iter()
                .enumerate()
                .map(|(p, (id, overrides))| Listed {
                    item_id: id.to_string(),
                    position: p as u32,
                    score: Some(1.0 - p as f32 / 10.0),
                    heads: vec![0.5],
                    overrides: overrides.map(str::to_string),
                })
                .collect(),
        }
    }

    fn ev(request: &str, item: &str, event: &str, value: Option<f64>) -> Event {
        Event { request_id: request.into(), item_id: item.into(), event: event.into(), ts_ms: 0, value }
    }

    /// One partition per call: a writer of its own, closed.
    fn write<R: Record>(dir: &Path, records: Vec<R>) {
        let log = Log::<R>::start(settings(dir)).unwrap();
        for r in records {
            assert!(log.submit(r));
        }
        log.close();
    }

    struct World {
        _dir: tempfile::TempDir,
        dirs: Dirs,
    }

    /// Two impression partitions (the second a minute after the first), a catalog, and
    /// feedback on every edge the join has.
    fn world() -> World {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let dirs = Dirs {
            impressions: root.join("impressions"),
            feedback: root.join("feedback"),
            catalogs: root.join("catalogs"),
            out: root.join("examples"),
        };
        let columns = [
            ("duration_s".to_string(), ColumnKind::Number),
            ("embedding".to_string(), ColumnKind::Vector { dim: 2 }),
        ];
        let mut b = Builder::new("music", "1", "track_id", &columns, 2).unwrap();
        b.push("t1", &[Cell::Number(180.0), Cell::Vector(vec![0.1, 0.2].into())]).unwrap();
        b.push("t2", &[Cell::Number(240.0), Cell::Vector(vec![0.3, 0.4].into())]).unwrap();
        retort_model::catalog::file::write(&dirs.catalogs, &b.finish(), "test").unwrap();

        write(
            &dirs.impressions,
            vec![
                answer("r1", T0, &[("t1", None), ("t2", None)]),
                // A retry of r1: logged again, joined once.
                answer("r1", T0 + 5, &[("t2", None), ("t1", None)]),
                // t9 is not in the catalog; the request gave its duration.
                answer(
                    "r2",
                    T0 + 10,
                    &[("t9", Some(r#"{"duration_s": 99.0}"#)), ("t1", Some(r#"{"duration_s": 1}"#))],
                ),
            ],
        );
        write(&dirs.impressions, vec![answer("r3", T0 + 60_000, &[("t2", None)])]);

        let w = WINDOW_SECS as i64 * 1000;
        let batch = |received_ms, events| Feedback { received_ms, events };
        write(
            &dirs.feedback,
            vec![
                batch(T0, vec![ev("r1", "t1", "play", None)]),
                batch(T0 + 1_000, vec![ev("r1", "t2", "listen", Some(30.0))]),
                // The same batch again (a client's retry).
                batch(T0 + 1_000, vec![ev("r1", "t2", "listen", Some(30.0))]),
                // At the window's last millisecond, and one past it.
                batch(T0 + w, vec![ev("r1", "t2", "listen", Some(12.5))]),
                batch(T0 + w + 1, vec![ev("r1", "t1", "listen", Some(5.0))]),
                batch(
                    T0 + 20,
                    vec![
                        ev("r2", "t9", "play", None),
                        ev("r2", "t9", "share", None),
                        ev("r2", "t7", "play", None),
                    ],
                ),
                // Nobody logged r9: named as unknown.
                batch(T0 + w + 100, vec![ev("r9", "t1", "play", None)]),
                batch(T0 + 60_000 + w, vec![ev("r3", "t2", "play", None)]),
            ],
        );
        World { _dir: dir, dirs }
    }

    fn read_examples(dir: &Path) -> Vec<BTreeMap<String, String>> {
        let spec = DataSpec::from_path(&dir.join("features.toml")).unwrap();
        let mut out = Vec::new();
        for p in Dataset::open(dir).unwrap().partitions {
            let names = [
                "example_id",
                "request_id",
                "ts",
                "position",
                "user_id",
                "hour",
                "track_id",
                "duration_s",
                "embedding",
                "play",
                "seconds",
            ];
            let ex = p.read(&spec, &names).unwrap();
            for b in 0..ex.batches.len() {
                for row in 0..ex.batches[b].num_rows() {
                    let cell = |c: Column<'_>| format!("{:?}", c.value(row));
                    out.push(names.iter().map(|n| (n.to_string(), cell(ex.column(b, n)))).collect());
                }
            }
        }
        out
    }

    #[test]
    fn a_hand_built_log_joins_exactly_and_a_rerun_writes_nothing_new() {
        let w = world();
        let window = WINDOW_SECS as i64 * 1000;
        let mut joiner = Joiner::open(join(), w.dirs.clone()).unwrap();

        // The second partition's window closes a minute after the first's: a watermark between
        // joins only the first.
        let first = joiner.pass(T0 + 10 + window).unwrap();
        assert_eq!((first.joined.len(), first.waiting, first.already), (1, 1, 0), "{first:?}");
        let j = &first.joined[0];
        assert_eq!((j.rows, j.repeated), (4, 2));
        let want = Counts { attributed: 4, late: 1, early: 0, duplicates: 1, unmapped: 1, unshown: 1 };
        assert_eq!(j.events, want);
        assert_eq!(j.labels["play"], 2.0);
        assert_eq!(j.labels["seconds"], 42.5);
        // r9's feedback came after the second partition began: not judged before it is joined.
        assert_eq!(first.unknown, 0);

        let rows = read_examples(&w.dirs.out);
        let by_id: BTreeMap<String, &BTreeMap<String, String>> =
            rows.iter().map(|r| (r["example_id"].clone(), r)).collect();
        assert_eq!(
            by_id.keys().collect::<Vec<_>>(),
            ["Str(\"r1/0\")", "Str(\"r1/1\")", "Str(\"r2/0\")", "Str(\"r2/1\")"]
        );
        let r = |id: &str| by_id[&format!("Str(\"{id}\")")];
        // The first answer's order, the context as the request gave it (an integer id as text).
        assert_eq!(r("r1/0")["track_id"], "Str(\"t1\")");
        assert_eq!(r("r1/1")["track_id"], "Str(\"t2\")");
        assert_eq!(r("r1/0")["user_id"], "Str(\"42\")");
        assert_eq!(r("r1/0")["hour"], "Float(21.5)");
        assert_eq!(r("r1/0")["ts"], format!("Int({})", T0 / 1000));
        // Catalog values, the request's own over the catalog's, and a miss's id still read.
        assert_eq!(r("r1/1")["duration_s"], "Float(240.0)");
        assert_eq!(r("r1/1")["embedding"], "List([0.3, 0.4])");
        assert_eq!(r("r2/0")["duration_s"], "Float(99.0)");
        assert_eq!(r("r2/0")["embedding"], "Missing");
        assert_eq!(r("r2/0")["track_id"], "Str(\"t9\")");
        assert_eq!(r("r2/1")["duration_s"], "Float(1.0)");
        assert_eq!(r("r2/1")["embedding"], "List([0.1, 0.2])");
        // Labels: the window's last millisecond counts, one past it does not, a retry once.
        assert_eq!(r("r1/0")["play"], "Int(1)");
        assert_eq!(r("r1/0")["seconds"], "Float(0.0)");
        assert_eq!(r("r1/1")["seconds"], "Float(42.5)");
        assert_eq!(r("r2/0")["play"], "Int(1)");
        assert_eq!(r("r2/1")["play"], "Int(0)");

        let second = joiner.pass(T0 + 60_000 + window).unwrap();
        assert_eq!((second.joined.len(), second.waiting, second.already), (1, 0, 1));
        assert_eq!(second.joined[0].labels["play"], 1.0);
        // r1's late event is not unknown: r1 is the first partition's.
        assert_eq!((second.unknown, second.unknown_ids.clone()), (1, vec!["r9".to_string()]));

        // A rerun, even from a new process, joins nothing again; a partition removed is
        // written again to the same bytes.
        let outputs: Vec<PathBuf> =
            first.joined.iter().chain(&second.joined).map(|j| PathBuf::from(&j.examples)).collect();
        let bytes: Vec<Vec<u8>> = outputs.iter().map(|p| std::fs::read(p).unwrap()).collect();
        let mut again = Joiner::open(join(), w.dirs.clone()).unwrap();
        let rerun = again.pass(i64::MAX).unwrap();
        assert_eq!((rerun.joined.len(), rerun.already), (0, 2));
        std::fs::remove_file(&outputs[0]).unwrap();
        let redo = again.pass(i64::MAX).unwrap();
        assert_eq!(redo.joined.len(), 1);
        for (p, b) in outputs.iter().zip(&bytes) {
            assert_eq!(&std::fs::read(p).unwrap(), b, "{}", p.display());
        }
        assert_eq!(read_examples(&w.dirs.out).len(), 5);
    }

    #[test]
    fn a_missing_catalog_version_fails_its_partition_by_name_and_another_join_is_refused() {
        let w = world();
        std::fs::remove_dir_all(w.dirs.catalogs.join("music").join("1")).unwrap();
        let mut joiner = Joiner::open(join(), w.dirs.clone()).unwrap();
        let pass = joiner.pass(i64::MAX).unwrap();
        assert!(pass.joined.is_empty());
        assert_eq!(pass.failed.len(), 2);
        assert!(pass.failed[0].1.contains("catalog music version 1"), "{:?}", pass.failed);
        assert!(Dataset::open(&w.dirs.out).unwrap().partitions.is_empty());

        let mut other = join();
        other.spec.tasks[0].name = "click".into();
        let err = Joiner::open(other, w.dirs.clone()).err().unwrap();
        assert!(err.to_string().contains("another join"), "{err}");
    }
}
