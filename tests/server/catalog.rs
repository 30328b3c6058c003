//! Candidates by id alone, their features looked up in a catalog the server loads and swaps
//! while serving. See: issue 16 (1, 2).

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::{TestServer, shipped_models};
use retort_model::catalog::{Builder, Catalog, Cell, ColumnKind, file};
use retort_server::config::Config;
use serde_json::{Value, json};

const COLUMNS: [(&str, ColumnKind); 5] = [
    ("artist_id", ColumnKind::Categorical),
    ("genre", ColumnKind::Categorical),
    ("duration_s", ColumnKind::Number),
    ("popularity", ColumnKind::Number),
    ("track_embedding", ColumnKind::Vector { dim: 8 }),
];

/// A request of `n` candidates with every item feature in the request, the candidates named
/// `t0`, `t1`, … (their `track_id`s too).
fn full_request(n: usize) -> Value {
    let mut req = common::request(n, 7);
    for (i, c) in req["candidates"].as_array_mut().unwrap().iter_mut().enumerate() {
        c["id"] = json!(format!("t{i}"));
        c["features"]["track_id"] = json!(format!("t{i}"));
    }
    req
}

/// The catalog of `req`'s candidates: their item features, keyed by id.
fn catalog_of(req: &Value, version: &str) -> Catalog {
    let columns: Vec<(String, ColumnKind)> =
        COLUMNS.iter().map(|(n, k)| (n.to_string(), k.clone())).collect();
    let mut b = Builder::new("music", version, "track_id", &columns, 0).unwrap();
    for c in req["candidates"].as_array().unwrap() {
        let f = &c["features"];
        let cells: Vec<Cell<'_>> = COLUMNS
            .iter()
            .map(|(name, kind)| match (&f[*name], kind) {
                (Value::Null, _) => Cell::Missing,
                (Value::String(s), _) => Cell::Text(s.as_str().into()),
                (Value::Array(v), _) => {
                    Cell::Vector(v.iter().map(|x| x.as_f64().unwrap()).collect::<Vec<_>>().into())
                }
                (x, _) => Cell::Number(x.as_f64().unwrap()),
            })
            .collect();
        b.push(c["id"].as_str().unwrap(), &cells).unwrap();
    }
    b.finish()
}

fn config(catalogs: &Path, poll_ms: u64) -> Config {
    let mut config = Config::serving(shipped_models());
    config.rollout.catalogs_dir = catalogs.to_path_buf();
    config.rollout.poll_interval_ms = poll_ms;
    config.rollout.persist_warmup = false;
    config
}

/// Each answered candidate's score, by id.
fn scores(reply: &Value) -> BTreeMap<String, f64> {
    let items = reply["items"].as_array().unwrap();
    items
        .iter()
        .map(|i| (i["id"].to_string().trim_matches('"').to_string(), i["score"].as_f64().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_only_candidates_score_as_if_they_carried_the_catalogs_features() {
    let dir = tempfile::tempdir().unwrap();
    let catalogs = dir.path().join("catalogs");
    let full = full_request(40);
    file::write(&catalogs, &catalog_of(&full, "1"), "test").unwrap();
    let server = TestServer::start(config(&catalogs, 0)).await;

    let r = server.rank(&full).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let expected = scores(&r.json());

    // By id alone, as strings and as objects, with an id the catalog lacks and an integer one.
    let mut ids: Vec<Value> = (0..40).map(|i| json!(format!("t{i}"))).collect();
    ids[1] = json!({"id": "t1"});
    ids.extend([json!("nope"), json!(12345)]);
    let by_id = json!({"context": full["context"], "candidates": ids});
    let r = server.rank(&by_id).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let reply = r.json();
    let got = scores(&reply);
    for (id, score) in &expected {
        assert!((got[id] - score).abs() <= 1e-6, "{id}: {} by id, {score} with features", got[id]);
    }
    assert_eq!(reply["catalog"], json!({"name": "music", "version": "1", "misses": ["nope", 12345]}));
    assert_eq!(got.len(), 42, "the misses are answered too, with the manifest's defaults");

    // A feature in the request wins over the catalog's.
    let mut over = by_id.clone();
    over["candidates"][0] = json!({"id": "t0", "features": {"duration_s": 999.0}});
    let mut full_over = full.clone();
    full_over["candidates"][0]["features"]["duration_s"] = json!(999.0);
    let (a, b) = (scores(&server.rank(&over).await.json()), scores(&server.rank(&full_over).await.json()));
    assert!((a["t0"] - b["t0"]).abs() <= 1e-6 && (a["t0"] - expected["t0"]).abs() > 1e-6, "{a:?} {b:?}");

    let metrics = server.get("/metrics").await.text();
    let line = "retort_catalog_misses_total{model=\"music-ranker\",catalog=\"music\"} 4";
    assert!(metrics.lines().any(|l| l == line), "no {line:?} in\n{metrics}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_catalog_version_swaps_in_while_serving_and_a_broken_one_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let catalogs = dir.path().join("catalogs");
    let full = full_request(10);
    file::write(&catalogs, &catalog_of(&full, "1"), "test").unwrap();
    let server = TestServer::start(config(&catalogs, 50)).await;
    let by_id = json!({"context": full["context"], "candidates": (0..10).map(|i| format!("t{i}")).collect::<Vec<_>>()});
    let answer = || async { server.rank(&by_id).await.json() };
    assert_eq!(answer().await["catalog"]["version"], "1");

    // Version 2 changes t0's duration; it serves within a few polls, and every answer on the
    // way is whole.
    let mut changed = full.clone();
    changed["candidates"][0]["features"]["duration_s"] = json!(999.0);
    file::write(&catalogs, &catalog_of(&changed, "2"), "test").unwrap();
    let started = Instant::now();
    let mut reply = answer().await;
    while reply["catalog"]["version"] != "2" {
        assert!(started.elapsed() < Duration::from_secs(20), "version 2 never served: {reply}");
        assert_eq!(reply["items"].as_array().unwrap().len(), 10);
        tokio::time::sleep(Duration::from_millis(20)).await;
        reply = answer().await;
    }
    assert!(reply["catalog"]["misses"].as_array().unwrap().is_empty());

    // Version 3 arrives broken (cut short): refused, and version 2 keeps serving.
    let staging = dir.path().join("staging");
    let written = file::write(&staging, &catalog_of(&full, "3"), "test").unwrap();
    let bytes = std::fs::read(written.join(file::ITEMS)).unwrap();
    std::fs::write(written.join(file::ITEMS), &bytes[..bytes.len() - 8]).unwrap();
    std::fs::rename(&written, catalogs.join("music/3")).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(answer().await["catalog"]["version"], "2");
    server.stop().await.unwrap();
}

/// The shipped catalog is what the README says it is: the demo world's item table through
/// `retort catalog`, byte for byte.
#[test]
fn the_shipped_catalog_is_built_from_the_demo_world() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_retort"))
            .args(args)
            .current_dir(dir.path())
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(out.status.success(), "retort {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&["demo-data", "--out", "data/demo", "--domains", "target"]);
    run(&[
        "catalog",
        "--items",
        "data/demo/items/target.parquet",
        "--spec",
        "data/demo/target/features.toml",
        "--id-column",
        "track_id",
        "--catalogs",
        "catalogs",
        "--name",
        "music",
    ]);
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("catalogs/music/1");
    let built = dir.path().join("catalogs/music/1");
    let bytes = |d: &Path| std::fs::read(d.join(file::ITEMS)).unwrap();
    assert!(bytes(&shipped) == bytes(&built), "catalogs/music/1/items.bin is not what the demo world builds");
    let catalog = file::read(&shipped).unwrap();
    assert_eq!((catalog.len(), catalog.id_column.as_str()), (3000, "track_id"));
}

/// The admin API lists catalogs and moves between their versions, the way requests then see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_lists_loads_and_rolls_back_catalog_versions() {
    let dir = tempfile::tempdir().unwrap();
    let catalogs = dir.path().join("catalogs");
    let full = full_request(5);
    file::write(&catalogs, &catalog_of(&full, "1"), "test").unwrap();
    let mut config = config(&catalogs, 0);
    config.admin.admin_token = Some("t".into());
    let server = TestServer::start(config).await;
    let admin = |method: &'static str, path: &'static str| {
        let req = hyper::Request::builder()
            .method(method)
            .uri(server.url(path))
            .header("authorization", "Bearer t")
            .body(http_body_util::Full::new(hyper::body::Bytes::new()))
            .unwrap();
        server.send(req)
    };
    let by_id = json!({"context": full["context"], "candidates": ["t0"]});
    let version = || async { server.rank(&by_id).await.json()["catalog"]["version"].clone() };
    // The catalog versions the serving student's item-tower outputs are computed for: the
    // serving one alone, each time.
    let vectors = || async {
        let listed = admin("GET", "/v1/models").await.json();
        let models = listed["models"].as_array().unwrap().clone();
        let student = models.iter().find(|m| m["name"] == "music-ranker" && m["state"] == "serving").unwrap();
        student["item_vectors"]["catalogs"].clone()
    };
    assert_eq!(vectors().await, json!(["music/1"]));

    let listed = admin("GET", "/v1/catalogs").await.json();
    assert_eq!(listed["catalogs"][0]["name"], "music");
    assert_eq!(listed["catalogs"][0]["items"], 5);
    assert_eq!(
        listed["catalogs"][0]["columns"][4],
        json!({"name": "track_embedding", "kind": "vector", "dim": 8})
    );
    assert_eq!(listed["published"], json!([{"name": "music", "version": "1"}]));

    // No poll (interval 0): version 2 serves when loaded.
    file::write(&catalogs, &catalog_of(&full, "2"), "test").unwrap();
    let r = admin("POST", "/v1/catalogs/music/versions/2/load").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!((r.json()["version"].clone(), r.json()["previous"].clone()), (json!("2"), json!("1")));
    assert_eq!(version().await, "2");
    assert_eq!(vectors().await, json!(["music/2"]));

    let r = admin("POST", "/v1/catalogs/music/rollback").await;
    assert_eq!((r.status, r.json()["version"].clone()), (200, json!("1")));
    assert_eq!(version().await, "1");
    assert_eq!(vectors().await, json!(["music/1"]));
    let r = admin("POST", "/v1/catalogs/music/rollback").await;
    assert_eq!((r.status, r.json()["error"]["code"].clone()), (409, json!("nothing_to_roll_back")));
    let r = admin("POST", "/v1/catalogs/music/versions/7/load").await;
    assert_eq!((r.status, r.json()["error"]["code"].clone()), (404, json!("unknown_version")));

    // A broken version: 422 naming the file, and version 1 keeps serving.
    let staging = dir.path().join("staging");
    let broken = file::write(&staging, &catalog_of(&full, "3"), "test").unwrap();
    std::fs::write(broken.join(file::ITEMS), b"RTCAT").unwrap();
    std::fs::rename(&broken, catalogs.join("music/3")).unwrap();
    let r = admin("POST", "/v1/catalogs/music/versions/3/load").await;
    assert_eq!((r.status, r.json()["error"]["code"].clone()), (422, json!("invalid_catalog")));
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("items.bin"), "{}", r.text());
    assert_eq!(version().await, "1");
    assert_eq!(admin("GET", "/v1/catalogs").await.json()["refused"][0]["version"], "3");

    let metrics = server.get("/metrics").await.text();
    for line in [
        "retort_catalog_swaps_total{catalog=\"music\",operation=\"load\"} 1",
        "retort_catalog_swaps_total{catalog=\"music\",operation=\"rollback\"} 1",
        "retort_catalog_refused_total{catalog=\"music\"} 1",
        "retort_catalog_items{catalog=\"music\"} 5",
    ] {
        assert!(metrics.lines().any(|l| l == line), "no {line:?} in\n{metrics}");
    }
    // A version the serving model cannot read (`duration_s` as text): refused, naming both.
    let columns = [("duration_s".to_string(), ColumnKind::Categorical)];
    let mut b = Builder::new("music", "4", "track_id", &columns, 1).unwrap();
    b.push("t0", &[Cell::Text("long".into())]).unwrap();
    file::write(&catalogs, &b.finish(), "test").unwrap();
    let r = admin("POST", "/v1/catalogs/music/versions/4/load").await;
    assert_eq!((r.status, r.json()["error"]["code"].clone()), (422, json!("invalid_catalog")));
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("`duration_s` as categorical") && message.contains("music-ranker"), "{message}");
    assert_eq!(version().await, "1");

    // Without the token: refused, as every admin call.
    assert_eq!(server.get("/v1/catalogs").await.status, 401);
    server.stop().await.unwrap();
}

/// A delta (new and changed items) lands while serving and applies over the serving version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_applies_over_the_serving_version_while_serving() {
    let dir = tempfile::tempdir().unwrap();
    let catalogs = dir.path().join("catalogs");
    let full = full_request(6);
    file::write(&catalogs, &catalog_of(&full, "1"), "test").unwrap();
    let server = TestServer::start(config(&catalogs, 50)).await;
    let ids: Vec<String> = (0..6).map(|i| format!("t{i}")).collect();
    let mut by_id = json!({"context": full["context"], "candidates": ids});
    let before = scores(&server.rank(&by_id).await.json());

    // The delta holds t0, changed, and a new t6; nothing else.
    let mut changed = full.clone();
    changed["candidates"][0]["features"]["duration_s"] = json!(999.0);
    let mut extra = full_request(7)["candidates"][6].clone();
    extra["features"]["duration_s"] = json!(123.0);
    let delta_items = json!({"candidates": [changed["candidates"][0].clone(), extra]});
    file::write_delta(&catalogs, &catalog_of(&delta_items, "2"), "1", "test").unwrap();
    by_id["candidates"].as_array_mut().unwrap().push(json!("t6"));
    let started = Instant::now();
    let mut reply = server.rank(&by_id).await.json();
    while reply["catalog"]["version"] != "2" {
        assert!(started.elapsed() < Duration::from_secs(20), "the delta never served: {reply}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        reply = server.rank(&by_id).await.json();
    }
    let after = scores(&reply);
    assert!(reply["catalog"]["misses"].as_array().unwrap().is_empty(), "{reply}");
    // By id over the delta, as with the delta's features in the request.
    let mut full_after = changed.clone();
    full_after["candidates"].as_array_mut().unwrap().push(delta_items["candidates"][1].clone());
    let expected = scores(&server.rank(&full_after).await.json());
    for (id, score) in &expected {
        assert!((after[id] - score).abs() <= 1e-6, "{id}: {} by id, {score} with features", after[id]);
    }
    assert!((after["t0"] - before["t0"]).abs() > 1e-6, "t0 changed");
    for i in 1..6 {
        let id = format!("t{i}");
        assert!((after[&id] - before[&id]).abs() <= 1e-6, "{id} did not change");
    }
    server.stop().await.unwrap();
}
