//! Vocabularies built from training rows: what goes in them, how the package keeps them, and
//! that the server gives an id training never saw the row a missing value trains.

use std::collections::BTreeMap;
use std::path::Path;

use retort_model::Model;
use retort_model::engine::EngineKind;
use retort_model::manifest::{FeatureKind, Side};
use retort_model::vocabulary::{Vocab, VocabularyRule};
use retort_server::config::Config;
use retort_sidecar::data::dataset::Dataset;
use retort_sidecar::data::demo;
use retort_sidecar::data::spec::DataSpec;
use retort_sidecar::release::run::{self, RunConfig};
use retort_sidecar::train::fit::TrainingData;

use crate::common;

/// Rows a user needs in training for a row of their own (users have 10–200 in this world).
const MIN_USER_ROWS: u64 = 40;

/// The demo target with `user_id` and `track_id` numbered by vocabularies instead of hashed.
fn world(dir: &Path) -> (std::path::PathBuf, DataSpec) {
    let (target, mut spec) = crate::student::target_world(dir, &crate::student::small_world());
    for f in &mut spec.features {
        let rule = match f.name.as_str() {
            "user_id" => VocabularyRule { min_count: MIN_USER_ROWS, max_size: None },
            "track_id" => VocabularyRule { min_count: 1, max_size: Some(50) },
            _ => continue,
        };
        f.kind = FeatureKind::Categorical { buckets: 0, default: None, vocabulary: Some(Vocab::Build(rule)) };
    }
    // The spec reads back from its own TOML, rules and all.
    assert_eq!(toml::from_str::<DataSpec>(&spec.to_toml()).unwrap(), spec);
    (target, spec)
}

/// How often each value of `column` appears in rows before `cutoff` (training) and from it on.
fn counts(
    target: &Path,
    spec: &DataSpec,
    column: &str,
    cutoff: i64,
) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
    let (mut before, mut after) = (BTreeMap::new(), BTreeMap::new());
    for p in &Dataset::open(target).unwrap().partitions {
        let ex = p.read(spec, &["ts", column]).unwrap();
        for b in 0..ex.batches.len() {
            let (ts, ids) = (ex.column(b, "ts"), ex.column(b, column));
            for row in 0..ids.len() {
                let id = ids.id(row).unwrap().into_owned();
                let side = if (ts.number(row).unwrap() as i64) < cutoff { &mut before } else { &mut after };
                *side.entry(id).or_insert(0) += 1;
            }
        }
    }
    (before, after)
}

fn vocabulary(model: &Model, feature: &str) -> Vec<String> {
    let (_, v) = model.manifest.vocabularies().find(|(f, _)| *f == feature).expect("a vocabulary");
    v.ids().map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vocabularies_come_from_the_training_rows_and_an_unseen_id_serves_as_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let (target, spec) = world(dir.path());
    let config: RunConfig = toml::from_str(
        "[train]\nepochs = 2\n[train.mask_features]\nuser_id = 0.2\n[objective]\nplay = 1.0\n",
    )
    .unwrap();
    let trained = run::train_model(&run::TrainJob::new(&target, &spec, &config, "music", "1")).unwrap();
    let models = dir.path().join("models");
    let written = run::publish(&models, &trained).unwrap();
    // Loading runs the golden examples: the exported graph and the encoder agree.
    let model = Model::load(written.dir(), EngineKind::Tract).unwrap();

    let cutoff = demo::EPOCH + 2 * 86_400;
    let (users, holdout_users) = counts(&target, &spec, "user_id", cutoff);
    let mut expected: Vec<(&String, &u64)> = users.iter().filter(|(_, n)| **n >= MIN_USER_ROWS).collect();
    expected.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let expected: Vec<String> = expected.into_iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(
        vocabulary(&model, "user_id"),
        expected,
        "the ids seen often enough in training, most frequent first"
    );
    let rare = users.iter().find(|(_, n)| **n < MIN_USER_ROWS).map(|(u, _)| u.clone());
    let rare = rare.expect("the world has rare users, so min_count can fail");
    let unseen: Vec<&String> = holdout_users.keys().filter(|u| !users.contains_key(*u)).collect();

    let (tracks, _) = counts(&target, &spec, "track_id", cutoff);
    let kept = vocabulary(&model, "track_id");
    assert_eq!(kept.len(), 50, "max_size");
    let least_kept = kept.iter().map(|t| tracks[t]).min().unwrap();
    assert!(tracks.iter().filter(|(t, _)| !kept.contains(t)).all(|(_, n)| *n <= least_kept));
    assert!(tracks.len() > 50, "more tracks than kept");

    // The package keeps them as files, and the table has a row per id and row 0.
    let text = std::fs::read_to_string(written.dir().join("vocabularies/user_id.txt")).unwrap();
    assert_eq!(text, expected.iter().map(|u| format!("{u}\n")).collect::<String>());
    let user = model.manifest.feature("user_id").unwrap();
    assert_eq!(user.side, Side::Context);
    assert!(
        matches!(user.kind, FeatureKind::Categorical { buckets, .. } if buckets == expected.len() as u64 + 1)
    );

    // Served: an id training never saw scores as a missing one does (row 0, trained by the
    // masks); a known id scores otherwise.
    let server = common::TestServer::start(Config::serving(&models)).await;
    let candidates: Vec<serde_json::Value> = (0..5)
        .map(|i| {
            serde_json::json!({"id": format!("c{i}"), "features": {
                "track_id": kept[i], "artist_id": "a1", "genre": "g1", "duration_s": 200.0, "popularity": 0.5,
            }})
        })
        .collect();
    let scores = |user: Option<&str>| {
        let mut context = serde_json::json!({"country": "c0", "hour": 9, "account_age_days": 300});
        if let Some(u) = user {
            context["user_id"] = u.into();
        }
        let body =
            serde_json::json!({"model": "music", "context": context, "candidates": candidates, "top_k": 5});
        let server = &server;
        async move {
            let r = server.rank(&body).await;
            assert_eq!(r.status, 200, "{}", r.text());
            let items = r.json()["items"].as_array().unwrap().clone();
            let mut by_id: Vec<(String, f64)> = items
                .iter()
                .map(|i| (i["id"].as_str().unwrap().to_string(), i["score"].as_f64().unwrap()))
                .collect();
            by_id.sort_by(|a, b| a.0.cmp(&b.0));
            by_id
        }
    };
    let missing = scores(None).await;
    assert_eq!(scores(Some("a-user-from-tomorrow")).await, missing);
    assert_eq!(scores(Some(&rare)).await, missing, "user {rare} is too rare for a row of their own");
    if let Some(u) = unseen.first() {
        assert_eq!(scores(Some(u)).await, missing, "holdout user {u} was never trained on");
    }
    assert_ne!(scores(Some(&expected[0])).await, missing, "a known user has a row of their own");
    server.stop().await.unwrap();
}

#[test]
fn a_warm_start_keeps_its_parents_vocabulary_and_an_empty_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (target, spec) = world(dir.path());
    let config: RunConfig = toml::from_str("[train]\nepochs = 1\n").unwrap();
    let arch = config.architecture(&spec).unwrap();
    assert_eq!(arch.unbuilt_vocabularies().collect::<Vec<_>>(), ["user_id", "track_id"]);
    let load = || TrainingData::load(&Dataset::open(&target).unwrap(), &spec, &arch).unwrap();
    let mut data = load();
    let (fit, holdout) = data.split_at(demo::EPOCH + 2 * 86_400);
    let built = data.build_vocabularies(&arch, &fit, &[]).unwrap();
    assert_eq!(built.unbuilt_vocabularies().count(), 0);

    // Built from a day of rows only, given the first's: the first's ids and table rows.
    let mut again = load();
    let parent = again.build_vocabularies(&arch, &holdout, &built.features).unwrap();
    assert_eq!(parent.features, built.features);
    assert_eq!(again.encoded.tensors, data.encoded.tensors);

    // A parent that hashes the feature would read other rows from the same table.
    let mut hashed = built.features.clone();
    hashed[0].kind = FeatureKind::Categorical { buckets: 5000, default: None, vocabulary: None };
    let err = load().build_vocabularies(&arch, &fit, &hashed).err().unwrap().to_string();
    assert!(err.contains("feature `user_id`") && err.contains("hashes it"), "{err}");

    let mut rare = spec.clone();
    rare.features[0].kind = FeatureKind::Categorical {
        buckets: 0,
        default: None,
        vocabulary: Some(Vocab::Build(VocabularyRule { min_count: 1_000_000, max_size: None })),
    };
    let arch = config.architecture(&rare).unwrap();
    let mut data = TrainingData::load(&Dataset::open(&target).unwrap(), &rare, &arch).unwrap();
    let err = data.build_vocabularies(&arch, &fit, &[]).err().unwrap().to_string();
    assert!(err.contains("feature `user_id`: no id appears 1000000 time(s)"), "{err}");
}
