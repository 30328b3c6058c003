//! Engines against each other and against the plain-Rust reference forward pass, and the
//! shipped default model against the generator that wrote it.

use crate::common;

use crate::common::request;
use retort_model::Model;
use retort_model::engine::EngineKind;
use retort_model::manifest::ContextRows;
use retort_model::request::decode;
use retort_model::{package, scaffold};

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn tract_matches_the_reference_forward_pass_with_fixed_and_symbolic_plans() {
    let dir = tempfile::tempdir().unwrap();
    let (arch, w, manifest) = common::write_model(dir.path(), "m", 21, ContextRows::Once);
    let fixed = Model::load(&dir.path().join("m/1"), EngineKind::Tract).unwrap();
    let mut symbolic_manifest = manifest.clone();
    symbolic_manifest.model.independent_candidates = false;
    let graph = std::fs::read(dir.path().join("m/1").join(package::GRAPH)).unwrap();
    let symbolic =
        Model::from_parts(symbolic_manifest, &graph, std::path::Path::new("m.onnx"), EngineKind::Tract)
            .unwrap();
    // Sizes on the ladder, between rungs, and past its top (chunked).
    for n in [1, 5, 50, 500, 2048, 2500] {
        let body = serde_json::to_vec(&request(n, n as u64)).unwrap();
        let req = decode(&body).unwrap();
        for model in [&fixed, &symbolic] {
            let whole = model.encoder().encode(&req.context, &req.candidates).unwrap();
            let expected = arch.reference_forward(&w, model.encoder().inputs(), &whole);
            let got = model.infer(model.apart(model.encode(&req.context, &req.candidates).unwrap())).unwrap();
            assert_eq!(got.rows, n);
            for (h, exp) in expected.iter().enumerate() {
                let d = max_abs_diff(got.head(h), exp);
                assert!(d <= 1e-5, "{n} candidates, head {h}: max diff {d}");
            }
        }
    }
}

/// In CI (`CI` set, as `.ci/run` does) a missing ONNX Runtime fails the run, so that a green
/// CI proves both engines; elsewhere the `ort` tests skip without it. See: issue 14 (15).
#[test]
fn ci_runs_both_engines() {
    if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0") {
        if !cfg!(feature = "ort") {
            panic!("CI must build the tests with --features ort");
        }
        let path = std::env::var_os("ORT_DYLIB_PATH").expect("CI must set ORT_DYLIB_PATH");
        assert!(std::path::Path::new(&path).is_file(), "ORT_DYLIB_PATH={path:?} is not a file");
    }
}

/// Runs where ONNX Runtime is available (`ORT_DYLIB_PATH`); CI sets it.
#[cfg(feature = "ort")]
#[test]
fn tract_and_ort_give_the_same_outputs() {
    if std::env::var_os("ORT_DYLIB_PATH").is_none() {
        eprintln!("skipped: ORT_DYLIB_PATH is not set");
        return;
    }
    let dir = common::shipped_models().join("music-ranker/1");
    let tract = Model::load(&dir, EngineKind::Tract).unwrap();
    let ort = Model::load(&dir, EngineKind::Ort).unwrap();
    assert_eq!(ort.engine_kind(), EngineKind::Ort);
    // The shipped student names its item tower's output: both engines serve it in two parts,
    // and its whole graph is the reference.
    assert!(tract.tower().is_some() && ort.tower().is_some());
    let manifest = retort_model::manifest::Manifest { item_tower: None, ..tract.manifest.clone() };
    let graph = std::fs::read(dir.join(package::GRAPH)).unwrap();
    let whole = Model::from_parts(manifest, &graph, &dir, EngineKind::Tract).unwrap();
    for n in [1, 2, 50, 500, 2000] {
        let body = serde_json::to_vec(&request(n, 100 + n as u64)).unwrap();
        let req = decode(&body).unwrap();
        // Through the two parts (as for candidates the catalog lacks) and whole (as for candidates
        // carrying their features).
        let a = tract.infer(tract.apart(tract.encode(&req.context, &req.candidates).unwrap())).unwrap();
        let b = ort.infer(ort.apart(ort.encode(&req.context, &req.candidates).unwrap())).unwrap();
        let served_whole = ort.infer(ort.encode(&req.context, &req.candidates).unwrap()).unwrap();
        let d = max_abs_diff(&served_whole.values, &b.values);
        assert!(d <= 1e-5, "{n} candidates: ort whole and apart differ by {d}");
        let c = whole.infer(whole.encode(&req.context, &req.candidates).unwrap()).unwrap();
        let d = max_abs_diff(&a.values, &b.values);
        assert!(d <= 1e-5, "{n} candidates: tract and ort differ by {d}");
        let d = max_abs_diff(&a.values, &c.values);
        assert!(d <= 1e-5, "{n} candidates: the two parts and the whole graph differ by {d}");
    }
}

/// The engines this build and machine run: ort only where ONNX Runtime is.
fn engines() -> Vec<EngineKind> {
    if cfg!(feature = "ort") && std::env::var_os("ORT_DYLIB_PATH").is_some() {
        vec![EngineKind::Tract, EngineKind::Ort]
    } else {
        vec![EngineKind::Tract]
    }
}

/// A model served as its item tower and its ranker, with the catalog items' tower outputs
/// computed ahead, scores as its whole graph does, on each engine. See: issue 16 (3).
#[test]
fn the_item_tower_apart_scores_as_the_whole_graph_on_every_engine() {
    use retort_model::ItemSource;
    use retort_model::catalog::{Builder, Cell, ColumnKind};
    use retort_model::item_tower::ItemVectors;
    use std::sync::Arc;

    let (manifest, graph) = scaffold::seeded_package("m", "1", 31);
    let whole_manifest = retort_model::manifest::Manifest { item_tower: None, ..manifest.clone() };
    let path = std::path::Path::new("m.onnx");
    let reference = Model::from_parts(whole_manifest.clone(), &graph, path, EngineKind::Tract).unwrap();
    // Every request's candidates, with their features, as a catalog: ids `t0`, `t1`, …
    let body = serde_json::to_vec(&request(700, 5)).unwrap();
    let req = decode(&body).unwrap();
    let columns = [
        ("artist_id".to_string(), ColumnKind::Categorical),
        ("genre".to_string(), ColumnKind::Categorical),
        ("duration_s".to_string(), ColumnKind::Number),
        ("popularity".to_string(), ColumnKind::Number),
        ("track_embedding".to_string(), ColumnKind::Vector { dim: 8 }),
    ];
    let mut b = Builder::new("music", "1", "track_id", &columns, 700).unwrap();
    for (i, c) in req.candidates.iter().enumerate() {
        use retort_model::encode::{FeatureSource, Value};
        let cells: Vec<Cell<'_>> = columns
            .iter()
            .map(|(name, _)| match c.get(name) {
                Value::Str(s) => Cell::Text(s.to_string().into()),
                Value::Float(x) => Cell::Number(x),
                Value::Int(x) => Cell::Number(x as f64),
                Value::List(v) => Cell::Vector(v.to_vec().into()),
                _ => Cell::Missing,
            })
            .collect();
        b.push(&format!("t{i}"), &cells).unwrap();
    }
    let catalog = Arc::new(b.finish());
    let ids: Vec<String> = (0..700).map(|i| format!("\"t{i}\"")).collect();
    let by_id = format!(
        r#"{{"context": {}, "candidates": [{}]}}"#,
        serde_json::to_string(&request(1, 5)["context"]).unwrap(),
        ids.join(",")
    );
    let by_id = decode(by_id.as_bytes()).unwrap();
    for engine in engines() {
        let whole = Model::from_parts(whole_manifest.clone(), &graph, path, engine).unwrap();
        let split = Model::from_parts(manifest.clone(), &graph, path, engine).unwrap();
        assert!(split.tower().is_some() && whole.tower().is_none());
        let vectors = ItemVectors::compute(&split, &catalog, &[]).unwrap().unwrap();
        for n in [1, 3, 50, 500, 700] {
            let (context, candidates) = (&req.context, &req.candidates[..n]);
            let expected = reference.infer(reference.encode(context, candidates).unwrap()).unwrap();
            for model in [&whole, &split] {
                let got = model.infer(model.apart(model.encode(context, candidates).unwrap())).unwrap();
                let d = max_abs_diff(&got.values, &expected.values);
                assert!(d <= 1e-5, "{engine}, {n} candidates, tower apart: {}: {d}", model.tower().is_some());
            }
        }
        // By id alone: every candidate's tower output was computed ahead, none runs the tower.
        let found = retort_model::catalog::look_up(Some(&catalog), &by_id.candidates, None);
        let encoded = split.encode_found(&by_id.context, &found, Some(&vectors)).unwrap();
        assert!(encoded.tower.as_ref().unwrap().rows.is_empty());
        let fast = split
            .score_request(&by_id, Some(ItemSource { catalog: &catalog, vectors: Some(&vectors) }))
            .unwrap();
        let expected = reference.score_request(&by_id, Some(ItemSource::catalog(&catalog))).unwrap();
        let d = max_abs_diff(&fast.values.values, &expected.values.values);
        assert!(d <= 1e-5, "{engine}, by id: {d}");
    }
}

#[cfg(not(feature = "ort"))]
#[test]
fn ort_is_refused_with_a_clear_error_when_not_built() {
    let dir = common::shipped_models().join("music-ranker/1");
    let err = Model::load(&dir, EngineKind::Ort).err().unwrap().to_string();
    assert!(err.contains("--features ort"), "{err}");
}

#[test]
fn the_shipped_default_model_is_the_quickstart_student() {
    let dir = common::shipped_models().join("music-ranker/1");
    let model = Model::load(&dir, EngineKind::Tract).unwrap();
    let m = &model.manifest;
    assert!(m.provenance.trained_by.starts_with("retort quickstart"), "{}", m.provenance.trained_by);
    assert!(
        m.provenance.metrics.get("play_auc").is_some_and(|auc| *auc > 0.55),
        "{:?}",
        m.provenance.metrics
    );
    let heads: Vec<&str> = m.heads.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(heads, ["play", "skip", "long_listen", "like"], "auxiliary heads are not shipped");
}

#[test]
fn init_model_writes_the_same_bytes_for_the_same_seed() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for dir in [&a, &b] {
        let (manifest, graph) = scaffold::seeded_package("m", "1", scaffold::DEFAULT_SEED);
        package::write(dir.path(), &manifest, &graph).unwrap();
    }
    for file in [package::GRAPH, package::MANIFEST] {
        let read = |d: &tempfile::TempDir| std::fs::read(d.path().join("m/1").join(file)).unwrap();
        assert!(read(&a) == read(&b), "{file} differs between two runs with one seed");
    }
}

#[test]
fn a_package_whose_golden_examples_do_not_reproduce_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut manifest, graph) = scaffold::seeded_package("m", "1", 5);
    let expected = manifest.golden.examples[0].candidates[1].expected.get_mut("like").unwrap();
    *expected += 0.01;
    package::write(dir.path(), &manifest, &graph).unwrap();
    let err = Model::load(&dir.path().join("m/1"), EngineKind::Tract).err().unwrap().to_string();
    assert!(
        err.contains("golden example 0") && err.contains("candidate 1") && err.contains("`like`"),
        "{err}"
    );
}

#[test]
fn a_manifest_that_does_not_match_the_graph_is_refused_naming_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let (mut manifest, graph) = scaffold::seeded_package("m", "1", 5);
    manifest.golden.examples.clear();
    for f in manifest.features.iter_mut().filter(|f| f.input == "item_dense") {
        f.input = "item_floats".into();
    }
    package::write(dir.path(), &manifest, &graph).unwrap();
    let err = Model::load(&dir.path().join("m/1"), EngineKind::Tract).err().unwrap().to_string();
    assert!(err.contains("item_dense") || err.contains("item_floats"), "{err}");

    let (mut manifest, graph) = scaffold::seeded_package("n", "1", 5);
    manifest.heads[0].output = "plays".into();
    manifest.golden.examples.clear();
    package::write(dir.path(), &manifest, &graph).unwrap();
    let err = Model::load(&dir.path().join("n/1"), EngineKind::Tract).err().unwrap().to_string();
    assert!(err.contains("`plays`"), "{err}");
}

#[test]
fn a_corrupt_graph_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (manifest, graph) = scaffold::seeded_package("m", "1", 5);
    package::write(dir.path(), &manifest, &graph[..graph.len() / 2]).unwrap();
    let err = Model::load(&dir.path().join("m/1"), EngineKind::Tract).err().unwrap().to_string();
    assert!(err.contains("model.onnx"), "{err}");
}

#[test]
fn a_package_in_the_wrong_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (manifest, graph) = scaffold::seeded_package("m", "1", 5);
    package::write(dir.path(), &manifest, &graph).unwrap();
    std::fs::rename(dir.path().join("m/1"), dir.path().join("m/2")).unwrap();
    let err = Model::load(&dir.path().join("m/2"), EngineKind::Tract).err().unwrap().to_string();
    assert!(err.contains("m/2") && err.contains("m/1"), "{err}");
}
