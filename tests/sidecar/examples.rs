//! `retort examples` against what a real server logged: the examples joined from its impression
//! and feedback logs encode, in the trainer, to exactly the inputs the server encoded for the
//! same requests (no training/serving skew), and carry the feedback sent over HTTP as labels.

use serde_json::json;

use retort_model::catalog::{file as catalog_file, look_up};
use retort_model::encode::{Encoder, TensorData};
use retort_model::manifest::{ContextRows, FeatureColumn, Manifest};
use retort_model::request::decode;
use retort_server::config::Config;
use retort_sidecar::data::dataset::Dataset;
use retort_sidecar::data::spec::DataSpec;
use retort_sidecar::join::config::{Join, JoinConfig};
use retort_sidecar::join::run::{Dirs, Joiner};
use retort_sidecar::train::fit::TrainingData;

use crate::common::{TestServer, shipped_models};

fn rank_bodies() -> Vec<serde_json::Value> {
    vec![
        // Integers for categorical features, a decimal no shorter form of which is the same
        // double, and ids alone from the catalog.
        json!({"request_id": "s0", "top_k": 3,
               "context": {"user_id": 42, "country": "SE", "device": "ios", "hour": 21,
                           "account_age_days": 0.30000000000000004},
               "candidates": ["t1", "t2", "t3", "t4", "t5"]}),
        // The request's own features over the catalog's, a track the catalog lacks, a missing
        // context feature, and an unknown one.
        json!({"request_id": "s1",
               "context": {"user_id": "u7", "hour": 3, "account_age_days": 123.45678901234568,
                           "mood": {"not": "a feature"}},
               "candidates": [{"id": "t9", "features": {"duration_s": 187.3333333333333}},
                              {"id": "new-track", "features": {"duration_s": 201.0, "popularity": 0.1}},
                              "not-in-the-catalog", 7]}),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_joined_from_the_logs_encode_as_the_server_encoded() {
    let dir = tempfile::tempdir().unwrap();
    let (impressions, feedback) = (dir.path().join("impressions"), dir.path().join("feedback"));
    let mut config = Config::serving(shipped_models());
    config.impressions.impressions_dir = Some(impressions.clone());
    config.impressions.feedback_dir = Some(feedback.clone());
    let server = TestServer::start(config).await;
    let mut answers = Vec::new();
    for body in rank_bodies() {
        let reply = server.rank(&body).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        answers.push(reply.json());
    }
    let top = |a: &serde_json::Value, i: usize| a["items"][i]["id"].clone();
    let events = json!({"events": [
        {"request_id": "s0", "item_id": top(&answers[0], 0), "event": "play"},
        {"request_id": "s1", "item_id": top(&answers[1], 2), "event": "play"},
        {"request_id": "s1", "item_id": top(&answers[1], 2), "event": "like"},
    ]});
    let reply = server.post("/v1/feedback", serde_json::to_vec(&events).unwrap()).await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    server.stop().await.unwrap();

    let manifest = Manifest::from_path(&shipped_models().join("music-ranker/1/manifest.toml")).unwrap();
    let features: Vec<FeatureColumn> = manifest
        .features
        .iter()
        .map(|f| FeatureColumn { name: f.name.clone(), side: f.side, kind: f.kind.clone() })
        .collect();
    let spec = DataSpec { columns: Default::default(), features, tasks: vec![] };
    let config: JoinConfig = toml::from_str(
        r#"
spec = "features.toml"
window_secs = 600
lag_secs = 0
[[tasks]]
name = "play"
kind = "binary"
events = ["play"]
[[tasks]]
name = "like"
kind = "binary"
events = ["like"]
"#,
    )
    .unwrap();
    let out = dir.path().join("examples");
    let catalogs = shipped_models().with_file_name("catalogs");
    let dirs = Dirs { impressions, feedback, catalogs: catalogs.clone(), out: out.clone() };
    let mut joiner = Joiner::open(Join::new(config, spec).unwrap(), dirs).unwrap();
    let pass = joiner.pass(i64::MAX).unwrap();
    assert!(pass.failed.is_empty(), "{:?}", pass.failed);
    let rows: u64 = pass.joined.iter().map(|j| j.rows).sum();
    let listed: usize = answers.iter().map(|a| a["items"].as_array().unwrap().len()).sum();
    assert_eq!(rows as usize, listed);

    // What the trainer reads from the examples…
    let spec = DataSpec::from_path(&out.join("features.toml")).unwrap();
    let data = TrainingData::load_for(
        &Dataset::open(&out).unwrap(),
        &spec,
        &manifest.features,
        &["play".to_string(), "like".to_string()],
    )
    .unwrap();
    // …against what the server encoded: each request decoded, looked up in the catalog that
    // served, its listed candidates in the answer's order, one context row per candidate.
    let catalog = catalog_file::read(&catalogs.join("music/1")).unwrap();
    let encoder = Encoder::for_features(&manifest.features, ContextRows::PerCandidate);
    let mut at = 0;
    for (body, answer) in rank_bodies().iter().zip(&answers) {
        let bytes = serde_json::to_vec(body).unwrap();
        let request = decode(&bytes).unwrap();
        let lookup = look_up(Some(&catalog), request.candidates.iter(), None);
        let ids: Vec<String> = request.candidates.iter().map(|c| c.id.text().into_owned()).collect();
        let listed: Vec<usize> = answer["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| {
                let id = match &item["id"] {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                ids.iter().position(|c| *c == id).unwrap()
            })
            .collect();
        let sources: Vec<_> = listed.iter().map(|&i| &lookup.sources[i]).collect();
        let served = encoder.encode(&request.context, &sources).unwrap();
        for (t, (served, trained)) in served.tensors.iter().zip(&data.encoded.tensors).enumerate() {
            let width = served.shape[1];
            for row in 0..listed.len() {
                let (s, tr) = (row_of(&served.data, row, width), row_of(&trained.data, at + row, width));
                assert_eq!(s, tr, "input {t}, request {}, position {row}", body["request_id"]);
            }
        }
        at += listed.len();
    }
    assert_eq!(at, data.encoded.rows);
    // The feedback sent is in the labels, on the rows it named.
    let positives = |task: usize| -> Vec<&str> {
        data.labels[task]
            .iter()
            .zip(&data.example_ids)
            .filter(|(y, _)| **y == 1.0)
            .map(|(_, id)| id.as_str())
            .collect()
    };
    assert_eq!(positives(0), ["s0/0", "s1/2"]);
    assert_eq!(positives(1), ["s1/2"]);
}

/// One row of a tensor, as bits: equal means encoded to the same bytes.
fn row_of(data: &TensorData, row: usize, width: usize) -> Vec<u64> {
    let range = row * width..(row + 1) * width;
    match data {
        TensorData::I64(v) => v[range].iter().map(|&x| x as u64).collect(),
        TensorData::F32(v) => v[range].iter().map(|x| x.to_bits() as u64).collect(),
    }
}
