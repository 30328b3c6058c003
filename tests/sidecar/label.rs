//! `retort label`: exact teacher logits, the defaulted-feature report, once-only labelling,
//! sharding, crash safety with a real kill, following a directory, and bad input.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use retort_model::Model;
use retort_model::encode::Value;
use retort_model::engine::EngineKind;
use retort_model::manifest::HeadKind;
use retort_model::{package, scaffold};
use retort_sidecar::data::dataset::{Column, Dataset};
use retort_sidecar::data::demo::{self, DemoConfig, Domain};
use retort_sidecar::data::mapping::{Mapping, Source};
use retort_sidecar::data::spec::DataSpec;
use retort_sidecar::label::labeller::{LabelOptions, LabelReport, Labeller, Shard};

struct World {
    _dir: tempfile::TempDir,
    root: PathBuf,
    target: PathBuf,
    teacher: PathBuf,
}

fn world(config: DemoConfig) -> World {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    demo::generate(&root.join("demo"), &config, &[Domain::Target]).unwrap();
    // A stand-in teacher over the source domain's features and tasks.
    let arch = demo::spec(Domain::Source).two_tower(true);
    let (manifest, graph) = scaffold::random_package("video-teacher", "3", 99, &arch, &[("click", 1.0)]);
    package::write(&root.join("models"), &manifest, &graph).unwrap();
    World { target: root.join("demo/target"), teacher: root.join("models/video-teacher/3"), root, _dir: dir }
}

fn small() -> DemoConfig {
    DemoConfig {
        users: 200,
        days: 4,
        target_requests: 400,
        tracks: 300,
        artists: 30,
        ..DemoConfig::default()
    }
}

fn quiet() -> LabelOptions {
    LabelOptions { progress: false, batch_size: 256, ..LabelOptions::default() }
}

fn labeller(w: &World, mapping: Mapping, store: &Path, options: LabelOptions) -> Labeller {
    let spec = DataSpec::from_path(&w.target.join("features.toml")).unwrap();
    Labeller::new(&w.teacher, EngineKind::Tract, mapping, spec, store, options).unwrap()
}

/// Every label file's rows: example id → logits per head.
fn read_store(dir: &Path) -> BTreeMap<String, Vec<BTreeMap<i64, Vec<f32>>>> {
    let data = Dataset::open(dir).unwrap();
    let mut files = BTreeMap::new();
    for p in &data.partitions {
        let file = std::fs::File::open(&p.path).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        let mut rows = BTreeMap::new();
        for batch in reader {
            let batch = batch.unwrap();
            for r in 0..batch.num_rows() {
                let id = match Column::of(batch.column(0)) {
                    Column::I64(a) => arrow_array::Array::is_valid(a, r).then(|| a.values()[r]).unwrap(),
                    _ => panic!("ids are integers"),
                };
                let logits = (1..batch.num_columns())
                    .map(|c| Column::of(batch.column(c)).number(r).unwrap() as f32)
                    .collect();
                assert!(rows.insert(id, logits).is_none(), "example {id} twice in {}", p.name);
            }
        }
        files.entry(p.name.clone()).or_insert_with(Vec::new).push(rows);
    }
    files
}

fn all_ids(files: &BTreeMap<String, Vec<BTreeMap<i64, Vec<f32>>>>) -> Vec<i64> {
    let mut ids: Vec<i64> = files.values().flatten().flat_map(|m| m.keys().copied()).collect();
    ids.sort();
    ids
}

fn input_ids(dir: &Path) -> Vec<i64> {
    let spec = DataSpec::from_path(&dir.join("features.toml")).unwrap();
    let mut ids = Vec::new();
    for p in Dataset::open(dir).unwrap().partitions {
        let ex = p.read(&spec, &["example_id"]).unwrap();
        for b in 0..ex.batches.len() {
            let c = ex.column(b, "example_id");
            ids.extend((0..c.len()).map(|r| c.id(r).unwrap().parse::<i64>().unwrap()));
        }
    }
    ids.sort();
    ids
}

fn to_toml(v: Value<'_>) -> Option<toml::Value> {
    match v {
        Value::Missing => None,
        Value::Int(i) => Some(toml::Value::Integer(i)),
        Value::Float(x) => Some(toml::Value::Float(x)),
        Value::Str(s) => Some(toml::Value::String(s.to_string())),
        Value::List(l) => Some(toml::Value::Array(l.iter().map(|x| toml::Value::Float(*x)).collect())),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn store_logits_equal_a_direct_engine_call_and_defaults_are_reported() {
    let w = world(small());
    let store = w.root.join("labels");
    let l = labeller(&w, demo::mapping(), &store, quiet());
    let report = l.label_dataset(&Dataset::open(&w.target).unwrap()).unwrap();
    assert_eq!(report.labelled.len(), 4);
    assert_eq!(report.rows, 4000);
    // The demo mapping leaves exactly the three video-only features to their defaults.
    for (feature, (defaulted, seen)) in &report.defaulted {
        let expected =
            if ["video_id", "channel_id", "category"].contains(&feature.as_str()) { 4000 } else { 0 };
        assert_eq!((*defaulted, *seen), (expected, 4000), "{feature}");
    }
    let summary: toml::Table = std::fs::read_to_string(l.dir().join("report.toml")).unwrap().parse().unwrap();
    assert_eq!(summary["defaulted_share"]["video_id"].as_float(), Some(1.0));
    assert_eq!(summary["defaulted_share"]["user_id"].as_float(), Some(0.0));

    // Direct engine calls, one request per sampled row, context fed once.
    let teacher = Model::load(&w.teacher, EngineKind::Tract).unwrap();
    let spec = DataSpec::from_path(&w.target.join("features.toml")).unwrap();
    let stored = read_store(l.dir());
    let mapping = demo::mapping();
    let columns: Vec<&str> = std::iter::once("example_id").chain(mapping.columns()).collect();
    let mut checked = 0;
    for p in Dataset::open(&w.target).unwrap().partitions {
        let ex = p.read(&spec, &columns).unwrap();
        let labels = &stored[&p.name][0];
        for b in 0..ex.batches.len() {
            let ids = ex.column(b, "example_id");
            for row in (0..ids.len()).step_by(97) {
                let mut context = BTreeMap::new();
                let mut item = BTreeMap::new();
                for f in &teacher.manifest.features {
                    let Source::Column(c) = &mapping.features[&f.name] else { continue };
                    if let Some(v) = to_toml(ex.column(b, c).value(row)) {
                        match f.side {
                            retort_model::manifest::Side::Context => context.insert(f.name.clone(), v),
                            retort_model::manifest::Side::Item => item.insert(f.name.clone(), v),
                        };
                    }
                }
                let encoded = teacher.encode(&context, &[item]).unwrap();
                let direct = teacher.infer_logits(encoded).unwrap();
                let id: i64 = ids.id(row).unwrap().parse().unwrap();
                for (h, got) in labels[&id].iter().enumerate() {
                    let want = direct.head(h)[0];
                    assert!(
                        (got - want).abs() <= 1e-4,
                        "example {id}, head {h}: store {got} vs direct {want}"
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 40, "{checked}");
    assert_eq!(teacher.manifest.heads.iter().filter(|h| h.kind == HeadKind::Binary).count(), 4);
}

#[test]
fn a_second_run_does_no_work_and_a_changed_partition_is_relabelled() {
    let w = world(small());
    let store = w.root.join("labels");
    let l = labeller(&w, demo::mapping(), &store, quiet());
    let data = Dataset::open(&w.target).unwrap();
    l.label_dataset(&data).unwrap();
    let before: HashMap<PathBuf, Vec<u8>> = Dataset::open(l.dir())
        .unwrap()
        .partitions
        .iter()
        .map(|p| (p.path.clone(), std::fs::read(&p.path).unwrap()))
        .collect();

    let again = l.label_dataset(&data).unwrap();
    assert!(again.labelled.is_empty(), "{:?}", again.labelled);
    assert_eq!(again.already.len(), 4);
    for (path, bytes) in &before {
        assert!(&std::fs::read(path).unwrap() == bytes, "{path:?} was rewritten");
    }

    // A partition whose bytes change (here: replaced by another day's) is labelled again.
    std::fs::copy(w.target.join("day-000.parquet"), w.target.join("day-001.parquet")).unwrap();
    let third = l.label_dataset(&Dataset::open(&w.target).unwrap()).unwrap();
    assert_eq!(third.labelled, ["day-001.parquet"]);

    // Another mapping is another set of labels, in its own directory.
    let mut other = demo::mapping();
    other.features.insert("category".into(), Source::Constant(toml::Value::String("k3".into())));
    let l2 = labeller(&w, other, &store, quiet());
    assert_ne!(l2.dir(), l.dir());
    assert_eq!(l2.label_dataset(&Dataset::open(&w.target).unwrap()).unwrap().labelled.len(), 4);
}

#[test]
fn two_shards_together_equal_one_unsharded_run() {
    let w = world(DemoConfig { days: 9, ..small() });
    let data = Dataset::open(&w.target).unwrap();
    let whole = labeller(&w, demo::mapping(), &w.root.join("whole"), quiet());
    whole.label_dataset(&data).unwrap();
    let mut labelled = Vec::new();
    for index in 0..2 {
        let options = LabelOptions { shard: Shard { index, count: 2 }, ..quiet() };
        let l = labeller(&w, demo::mapping(), &w.root.join("sharded"), options);
        let r = l.label_dataset(&data).unwrap();
        assert!(!r.labelled.is_empty(), "shard {index} got no partition");
        labelled.extend(r.labelled);
    }
    labelled.sort();
    assert_eq!(labelled.len(), 9, "each partition labelled by exactly one shard");
    labelled.dedup();
    assert_eq!(labelled.len(), 9);
    let sharded_dir = retort_sidecar::label::store::labels_dir(
        &w.root.join("sharded"),
        &Model::load(&w.teacher, EngineKind::Tract).unwrap().manifest,
        &demo::mapping().fingerprint(),
    );
    assert_eq!(read_store(&sharded_dir), read_store(whole.dir()));
}

#[test]
fn a_killed_run_resumes_and_labels_every_example_exactly_once() {
    // Enough rows that the run takes a while: 24 partitions of 10k rows.
    let w = world(DemoConfig { days: 24, target_requests: 24_000, ..small() });
    let store = w.root.join("labels");
    let args = |store: &Path| {
        vec![
            "label".to_string(),
            "--data".into(),
            w.target.display().to_string(),
            "--teacher".into(),
            w.teacher.display().to_string(),
            "--mapping".into(),
            w.root.join("demo/mapping.toml").display().to_string(),
            "--store".into(),
            store.display().to_string(),
            "--batch-size".into(),
            "512".into(),
        ]
    };
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_retort"))
        .args(args(&store))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once it has written something, mid-run.
    let deadline = Instant::now() + Duration::from_secs(60);
    let labels_dir = |store: &Path| {
        retort_sidecar::label::store::labels_dir(
            store,
            &Model::load(&w.teacher, EngineKind::Tract).unwrap().manifest,
            &demo::mapping().fingerprint(),
        )
    };
    let dir = labels_dir(&store);
    loop {
        let written = Dataset::open(&dir).map(|d| d.partitions.len()).unwrap_or(0);
        if written >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the labeller wrote nothing in 60 s");
        assert!(child.try_wait().unwrap().is_none(), "the labeller finished before it could be killed");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let after_kill = Dataset::open(&dir).unwrap().partitions.len();
    assert!(after_kill < 24, "killed after {after_kill} of 24 partitions");

    let status = std::process::Command::new(env!("CARGO_BIN_EXE_retort"))
        .args(args(&store))
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let files = read_store(&dir);
    assert_eq!(files.len(), 24);
    assert_eq!(all_ids(&files), input_ids(&w.target), "every example exactly once");
}

/// An empty directory partitions land in, with the target's spec.
fn inbox(w: &World) -> PathBuf {
    let inbox = w.root.join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::copy(w.target.join("features.toml"), inbox.join("features.toml")).unwrap();
    inbox
}

#[test]
fn follow_labels_partitions_as_they_land() {
    let w = world(small());
    let inbox = inbox(&w);
    let l = labeller(&w, demo::mapping(), &w.root.join("labels"), quiet());
    let stop = AtomicBool::new(false);
    let landed = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        let follower = s.spawn(|| {
            l.follow(&inbox, Duration::from_millis(20), &stop, |name, rows, lag| {
                landed.lock().unwrap().push((name.to_string(), rows, lag));
            })
        });
        for day in 0..4 {
            let name = format!("day-{day:03}.parquet");
            // Land atomically: copy under a hidden name, then rename.
            let hidden = inbox.join(format!(".{name}.tmp"));
            std::fs::copy(w.target.join(&name), &hidden).unwrap();
            std::fs::rename(&hidden, inbox.join(&name)).unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            while landed.lock().unwrap().len() <= day {
                assert!(Instant::now() < deadline, "{name} was not labelled");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        stop.store(true, Ordering::Relaxed);
        let report = follower.join().unwrap().unwrap();
        assert_eq!(report.labelled.len(), 4);
    });
    let landed = landed.into_inner().unwrap();
    let names: Vec<&str> = landed.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names, ["day-000.parquet", "day-001.parquet", "day-002.parquet", "day-003.parquet"]);
    assert!(landed.iter().all(|(_, rows, lag)| *rows == 1000 && *lag < Duration::from_secs(20)));
}

// See: issue 14 (E): a truncated label file made every rerun fail; a killed run's temporary
// files were never removed.
#[test]
fn a_corrupt_label_file_is_relabelled_and_stale_temporaries_removed() {
    let w = world(small());
    let l = labeller(&w, demo::mapping(), &w.root.join("labels"), quiet());
    let data = Dataset::open(&w.target).unwrap();
    l.label_dataset(&data).unwrap().complete().unwrap();
    let before = read_store(l.dir());
    let label_file = l.dir().join("day-002.parquet");
    let bytes = std::fs::read(&label_file).unwrap();
    std::fs::write(&label_file, &bytes[..bytes.len() / 2]).unwrap();
    let stale = l.dir().join(".day-003.parquet.4242.tmp");
    let fresh = l.dir().join(".day-000.parquet.4243.tmp");
    for p in [&stale, &fresh] {
        std::fs::write(p, b"half a file").unwrap();
    }
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options().write(true).open(&stale).unwrap().set_modified(hour_ago).unwrap();

    let report = l.label_dataset(&data).unwrap().complete().unwrap();
    assert_eq!(report.labelled, ["day-002.parquet"]);
    assert_eq!(report.already.len(), 3);
    assert_eq!(report.removed_temporaries, std::slice::from_ref(&stale));
    assert!(!stale.exists() && fresh.exists(), "only the abandoned temporary file goes");
    assert_eq!(read_store(l.dir()), before, "the relabelled file holds the same labels");
}

#[test]
fn follow_goes_on_past_a_corrupt_partition_and_retries_it_once_replaced() {
    let w = world(small());
    let inbox = inbox(&w);
    let l = labeller(&w, demo::mapping(), &w.root.join("labels"), quiet());
    let stop = AtomicBool::new(false);
    let landed = std::sync::Mutex::new(Vec::new());
    let land = |name: &str, bytes: &[u8]| {
        let hidden = inbox.join(format!(".{name}.tmp"));
        std::fs::write(&hidden, bytes).unwrap();
        std::fs::rename(&hidden, inbox.join(name)).unwrap();
    };
    let wait_for = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while landed.lock().unwrap().len() < n {
            assert!(Instant::now() < deadline, "only {:?} labelled", landed.lock().unwrap());
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let good = |day: usize| std::fs::read(w.target.join(format!("day-{day:03}.parquet"))).unwrap();
    std::thread::scope(|s| {
        let follower = s.spawn(|| {
            l.follow(&inbox, Duration::from_millis(20), &stop, |name, _, _| {
                landed.lock().unwrap().push(name.to_string());
            })
        });
        let broken = good(0);
        land("day-000.parquet", &broken[..broken.len() / 3]);
        land("day-001.parquet", &good(1));
        wait_for(1);
        land("day-000.parquet", &good(0));
        wait_for(2);
        stop.store(true, Ordering::Relaxed);
        let report = follower.join().unwrap().unwrap();
        assert_eq!(
            report.failed.len(),
            1,
            "the broken file failed once, not on every poll: {:?}",
            report.failed
        );
    });
    assert_eq!(landed.into_inner().unwrap(), ["day-001.parquet", "day-000.parquet"]);
}

#[test]
fn bad_input_is_named_and_nothing_half_written_is_left() {
    let w = world(small());
    let spec = DataSpec::from_path(&w.target.join("features.toml")).unwrap();
    let store = w.root.join("labels");

    let mut uncovered = demo::mapping();
    uncovered.features.remove("video_id");
    uncovered.features.remove("hour");
    let err = Labeller::new(&w.teacher, EngineKind::Tract, uncovered, spec.clone(), &store, quiet())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not covered: hour, video_id"), "{err}");

    let mut unknown_head = demo::mapping();
    unknown_head.targets.insert("skip".into(), "skipped".into());
    let err = Labeller::new(&w.teacher, EngineKind::Tract, unknown_head, spec.clone(), &store, quiet())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("`skipped`"), "{err}");

    let mut missing_column = demo::mapping();
    missing_column.features.insert("hour".into(), Source::Column("hour_of_day".into()));
    let l = labeller(&w, missing_column, &store, quiet());
    let err = l
        .label_dataset(&Dataset::open(&w.target).unwrap())
        .and_then(LabelReport::complete)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`hour_of_day`") && err.contains("day-000.parquet"), "{err}");

    // A string column fed to a number feature: the error names file, row, feature and column.
    let mut mistyped = demo::mapping();
    mistyped.features.insert("duration_s".into(), Source::Column("genre".into()));
    let l = labeller(&w, mistyped, &store, quiet());
    let err = l
        .label_dataset(&Dataset::open(&w.target).unwrap())
        .and_then(LabelReport::complete)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("day-000.parquet, row 0")
            && err.contains("`duration_s`")
            && err.contains("column `genre`"),
        "{err}"
    );
    assert!(Dataset::open(l.dir()).map(|d| d.partitions.is_empty()).unwrap_or(true));

    // See: issue 14 (E). A corrupt partition fails by name; the others, before and after it,
    // are labelled, nothing partial.
    let bytes = std::fs::read(w.target.join("day-001.parquet")).unwrap();
    std::fs::write(w.target.join("day-001.parquet"), &bytes[..bytes.len() / 3]).unwrap();
    let l = labeller(&w, demo::mapping(), &store, quiet());
    let report = l.label_dataset(&Dataset::open(&w.target).unwrap()).unwrap();
    assert_eq!(report.failed.len(), 1, "{:?}", report.failed);
    assert_eq!(report.failed[0].0, "day-001.parquet");
    assert!(report.failed[0].1.contains("day-001.parquet"), "{:?}", report.failed);
    let written: Vec<String> =
        Dataset::open(l.dir()).unwrap().partitions.into_iter().map(|p| p.name).collect();
    assert_eq!(written, ["day-000.parquet", "day-002.parquet", "day-003.parquet"]);
    let err = report.complete().unwrap_err().to_string();
    assert!(err.contains("1 partition(s)") && err.contains("day-001.parquet"), "{err}");
    let leftovers: Vec<_> = std::fs::read_dir(l.dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left behind");
}

#[test]
fn csv_examples_with_missing_values_report_their_share() {
    let w = world(small());
    let csv = w.root.join("csv");
    std::fs::create_dir_all(&csv).unwrap();
    std::fs::copy(w.target.join("features.toml"), csv.join("features.toml")).unwrap();
    let mut text = String::from(
        "example_id,request_id,ts,user_id,country,device,hour,account_age_days,duration_s,popularity,track_embedding\n",
    );
    for i in 0..10 {
        let duration = if i < 3 { String::new() } else { format!("{}", 100 + i) };
        let country = if i % 2 == 0 { "SE" } else { "" };
        text.push_str(&format!(
            "{i},r{},100,u{i},{country},mobile,{},300,{duration},0.5,0.1;0.2;0.3;0.4;0.5;0.6;0.7;0.8\n",
            i / 5,
            i % 24
        ));
    }
    std::fs::write(csv.join("part-0.csv"), text).unwrap();
    let spec = DataSpec::from_path(&csv.join("features.toml")).unwrap();
    let l =
        Labeller::new(&w.teacher, EngineKind::Tract, demo::mapping(), spec, &w.root.join("labels"), quiet())
            .unwrap();
    let report = l.label_dataset(&Dataset::open(&csv).unwrap()).unwrap();
    assert_eq!(report.rows, 10);
    assert_eq!(report.defaulted["duration_s"], (3, 10));
    assert_eq!(report.defaulted["country"], (5, 10));
    assert_eq!(report.defaulted["content_embedding"], (0, 10));
    assert_eq!(report.defaulted["video_id"], (10, 10));
    assert!(
        report.defaulted_table().lines().nth(1).unwrap().starts_with("category"),
        "{}",
        report.defaulted_table()
    );
}
