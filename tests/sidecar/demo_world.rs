//! The demo world: deterministic for a seed, sized as asked, its labels consistent with the
//! ground-truth probabilities written beside them, readable through its own feature spec.

use std::path::Path;

use retort_sidecar::data::dataset::{DataError, Dataset};
use retort_sidecar::data::demo::{self, DemoConfig, Domain};
use retort_sidecar::data::spec::DataSpec;

fn small() -> DemoConfig {
    DemoConfig {
        users: 300,
        days: 3,
        target_requests: 600,
        source_ratio: 5,
        tracks: 400,
        artists: 40,
        videos: 2000,
        channels: 100,
        ..DemoConfig::default()
    }
}

fn all_columns(spec: &DataSpec) -> Vec<String> {
    let mut c =
        vec![spec.columns.example_id.clone(), spec.columns.request_id.clone(), spec.columns.ts.clone()];
    c.extend(spec.features.iter().map(|f| f.name.clone()));
    for t in &spec.tasks {
        c.push(t.column().to_string());
        c.extend(t.truth.clone());
    }
    c
}

#[test]
fn the_same_seed_writes_the_same_bytes_and_a_rerun_resumes() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = small();
    let first = demo::generate(a.path(), &config, &[Domain::Target, Domain::Source]).unwrap();
    assert_eq!(first.written.len(), 6);
    demo::generate(b.path(), &config, &[Domain::Target, Domain::Source]).unwrap();
    for p in &first.written {
        let rel = p.strip_prefix(a.path()).unwrap();
        assert!(std::fs::read(p).unwrap() == std::fs::read(b.path().join(rel)).unwrap(), "{rel:?} differs");
    }

    // Lose one partition; the rerun writes only that one, identically.
    let lost = a.path().join("target/day-001.parquet");
    let before = std::fs::read(&lost).unwrap();
    std::fs::remove_file(&lost).unwrap();
    let again = demo::generate(a.path(), &config, &[Domain::Target, Domain::Source]).unwrap();
    assert_eq!(again.written, vec![lost.clone()]);
    assert_eq!(again.kept.len(), 5);
    assert!(std::fs::read(&lost).unwrap() == before);

    // Another world in the same place is refused.
    let other = DemoConfig { seed: 8, ..config };
    let err = demo::generate(a.path(), &other, &[Domain::Target]).unwrap_err().to_string();
    assert!(err.contains("different demo world"), "{err}");

    let c = tempfile::tempdir().unwrap();
    demo::generate(c.path(), &other, &[Domain::Target]).unwrap();
    assert!(
        std::fs::read(c.path().join("target/day-000.parquet")).unwrap()
            != std::fs::read(a.path().join("target/day-000.parquet")).unwrap()
    );
}

struct Stats {
    rows: usize,
    labels: Vec<f64>,
    truth: Vec<f64>,
    /// (truth, label) pairs of the first task, to check the truth ranks the labels.
    pairs: Vec<(f64, bool)>,
}

fn read_domain(dir: &Path) -> (DataSpec, Stats) {
    let spec = DataSpec::from_path(&dir.join("features.toml")).unwrap();
    let data = Dataset::open(dir).unwrap();
    let columns = all_columns(&spec);
    let names: Vec<&str> = columns.iter().map(String::as_str).collect();
    let mut s = Stats {
        rows: 0,
        labels: vec![0.0; spec.tasks.len()],
        truth: vec![0.0; spec.tasks.len()],
        pairs: Vec::new(),
    };
    let mut ids = std::collections::HashSet::new();
    for p in &data.partitions {
        let ex = p.read(&spec, &names).unwrap();
        for b in 0..ex.batches.len() {
            let id = ex.column(b, "example_id");
            let labels: Vec<_> = spec.tasks.iter().map(|t| ex.column(b, t.column())).collect();
            let truth: Vec<_> =
                spec.tasks.iter().map(|t| ex.column(b, t.truth.as_deref().unwrap())).collect();
            for row in 0..id.len() {
                assert!(ids.insert(id.id(row).unwrap().into_owned()), "example ids are unique");
                s.rows += 1;
                let y: Vec<f64> = labels.iter().map(|c| c.number(row).unwrap()).collect();
                for k in 0..y.len() {
                    let p = truth[k].number(row).unwrap();
                    assert!((0.0..=1.0).contains(&p));
                    s.labels[k] += y[k];
                    s.truth[k] += p;
                }
                s.pairs.push((truth[0].number(row).unwrap(), y[0] == 1.0));
                if spec.task("skip").is_some() {
                    // play, skip, long_listen, like: every later event needs a play; a long
                    // listen is never a skip.
                    assert!(y[1] <= y[0] && y[2] <= y[0] && y[3] <= y[0] && y[1] + y[2] <= 1.0, "{y:?}");
                }
            }
        }
    }
    (spec, s)
}

/// Probability that a random positive outranks a random negative.
fn auc(pairs: &mut [(f64, bool)]) -> f64 {
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut negatives, mut wins) = (0.0, 0.0);
    for &(_, y) in pairs.iter() {
        if y {
            wins += negatives;
        } else {
            negatives += 1.0;
        }
    }
    let positives = pairs.iter().filter(|p| p.1).count() as f64;
    wins / (positives * negatives)
}

#[test]
fn labels_agree_with_the_ground_truth_and_sizes_are_as_configured() {
    let dir = tempfile::tempdir().unwrap();
    let config = small();
    demo::generate(dir.path(), &config, &[Domain::Target, Domain::Source]).unwrap();
    for domain in [Domain::Target, Domain::Source] {
        let (spec, mut s) = read_domain(&dir.path().join(domain.as_str()));
        let requests = match domain {
            Domain::Target => config.target_requests,
            Domain::Source => config.target_requests * config.source_ratio,
        };
        assert_eq!(s.rows, requests * config.slate, "{domain}");
        for (k, task) in spec.tasks.iter().enumerate() {
            let n = s.rows as f64;
            let (mean_label, mean_truth) = (s.labels[k] / n, s.truth[k] / n);
            // Labels are Bernoulli draws of the truth: their mean is within a few standard errors.
            let se = (mean_truth * (1.0 - mean_truth) / n).sqrt();
            assert!(
                (mean_label - mean_truth).abs() < 5.0 * se + 1e-9,
                "{domain} {}: label rate {mean_label:.4} vs truth {mean_truth:.4}",
                task.name
            );
            assert!(
                mean_truth > 0.01 && mean_truth < 0.9,
                "{domain} {}: degenerate rate {mean_truth}",
                task.name
            );
        }
        let a = auc(&mut s.pairs);
        assert!(a > 0.6, "{domain}: the truth should rank its labels (AUC {a:.3})");
    }
}

#[test]
fn reading_names_the_file_and_column_that_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    demo::generate(dir.path(), &small(), &[Domain::Target]).unwrap();
    let target = dir.path().join("target");
    let spec = DataSpec::from_path(&target.join("features.toml")).unwrap();
    let data = Dataset::open(&target).unwrap();
    assert_eq!(data.partitions.len(), 3);
    let p = &data.partitions[0];
    assert_eq!(p.name, "day-000.parquet");

    let err = p.read(&spec, &["example_id", "no_such_column"]).err().unwrap();
    assert!(matches!(&err, DataError::MissingColumn { column, .. } if column == "no_such_column"));
    assert!(err.to_string().contains("day-000.parquet"), "{err}");

    // A spec that calls a string column a number.
    let mut wrong = spec.clone();
    let genre = wrong.features.iter_mut().find(|f| f.name == "genre").unwrap();
    genre.kind = retort_model::manifest::FeatureKind::Number { mean: 0.0, std: 1.0, default: 0.0 };
    let err = p.read(&wrong, &["genre"]).err().unwrap().to_string();
    assert!(err.contains("`genre`") && err.contains("Utf8") && err.contains("a number"), "{err}");

    // A truncated file.
    let bytes = std::fs::read(&p.path).unwrap();
    let broken = target.join("day-009.parquet");
    std::fs::write(&broken, &bytes[..bytes.len() / 2]).unwrap();
    let data = Dataset::open(&target).unwrap();
    let err = data
        .partitions
        .iter()
        .find(|p| p.path == broken)
        .unwrap()
        .read(&spec, &["example_id"])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("day-009.parquet") && err.contains("Parquet"), "{err}");

    // Half-written files (hidden, .tmp) are not partitions.
    std::fs::write(target.join(".day-010.parquet.123.tmp"), b"x").unwrap();
    std::fs::write(target.join("day-011.parquet.tmp"), b"x").unwrap();
    assert_eq!(Dataset::open(&target).unwrap().partitions.len(), 4);
}

#[test]
fn csv_partitions_read_with_types_from_the_spec() {
    let dir = tempfile::tempdir().unwrap();
    let spec: DataSpec = toml::from_str(
        r#"
[[features]]
name = "user_id"
side = "context"
kind = "categorical"
buckets = 100

[[features]]
name = "duration_s"
side = "item"
kind = "number"

[[features]]
name = "emb"
side = "item"
kind = "vector"
dim = 2

[[tasks]]
name = "play"
kind = "binary"
"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("part-0.csv"),
        "example_id,request_id,ts,user_id,duration_s,emb,play\n1,r1,100,u1,201.5,0.5;1.5,1\n2,r1,100,42,,,0\n",
    )
    .unwrap();
    let data = Dataset::open(dir.path()).unwrap();
    let ex = data.partitions[0]
        .read(&spec, &["example_id", "ts", "user_id", "duration_s", "emb", "play"])
        .unwrap();
    assert_eq!(ex.rows(), 2);
    assert_eq!(ex.column(0, "example_id").id(1).unwrap(), "2");
    assert_eq!(ex.column(0, "ts").number(0), Some(100.0));
    assert_eq!(ex.column(0, "user_id").id(1).unwrap(), "42");
    assert_eq!(ex.column(0, "duration_s").number(0), Some(201.5));
    assert_eq!(ex.column(0, "duration_s").number(1), None);
    assert_eq!(ex.column(0, "play").number(0), Some(1.0));
}
