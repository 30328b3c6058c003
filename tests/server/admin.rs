//! The admin API against a real server on loopback: token checks, loading a published version
//! into service, and `retort train --notify` publishing then asking the server to serve it.

use std::path::Path;
use std::process::Command;

use crate::common::{Reply, TestServer, request, write_model};
use http_body_util::Full;
use hyper::body::Bytes;
use retort_model::manifest::ContextRows;
use retort_server::config::Config;

const TOKEN: &str = "test-admin-token";

async fn admin(server: &TestServer, method: &str, path: &str, token: Option<&str>) -> Reply {
    let mut req = hyper::Request::builder().method(method).uri(server.url(path));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    server.send(req.body(Full::new(Bytes::new())).unwrap()).await
}

fn config(models: &Path, token: Option<&str>) -> Config {
    let mut config = Config::serving(models);
    config.admin.admin_token = token.map(String::from);
    config.rollout.poll_interval_ms = 0;
    config
}

#[tokio::test]
async fn without_a_token_the_admin_api_is_off_unless_opened_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), "m", 1, ContextRows::Once);
    let server = TestServer::start(config(dir.path(), None)).await;
    let r = admin(&server, "GET", "/v1/models", None).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "admin_disabled");
    assert_eq!(admin(&server, "POST", "/v1/models/m/versions/1/load", Some("guess")).await.status, 403);
    // The ranking API never needs the token.
    assert_eq!(server.rank(&request(5, 1)).await.status, 200);
    server.stop().await.unwrap();

    let mut open = config(dir.path(), None);
    open.admin.admin_open_on_loopback = true;
    let server = TestServer::start(open).await;
    let r = admin(&server, "GET", "/v1/models", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["models"][0]["version"], "1");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn loading_a_version_swaps_it_in_and_a_bad_one_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), "m", 1, ContextRows::Once);
    let server = TestServer::start(config(dir.path(), Some(TOKEN))).await;

    for token in [None, Some("wrong")] {
        let r = admin(&server, "POST", "/v1/models/m/versions/1/load", token).await;
        assert_eq!(r.status, 401, "{token:?}: {}", r.text());
        assert_eq!(r.headers["www-authenticate"], "Bearer");
    }

    // Version 2 appears on disk; the server keeps serving 1 until told.
    let (mut manifest, _) = retort_model::scaffold::seeded_package("m", "2", 2);
    manifest.model.context_rows = ContextRows::Once;
    let arch = retort_model::scaffold::music_architecture();
    let graph = retort_model::onnx::to_bytes(&arch.to_onnx(&arch.random_weights(2), "m"));
    retort_model::package::write(dir.path(), &manifest, &graph).unwrap();
    assert_eq!(server.rank(&request(5, 1)).await.json()["version"], "1");
    let listed = admin(&server, "GET", "/v1/models", Some(TOKEN)).await.json();
    assert_eq!(listed["published"].as_array().unwrap().len(), 2, "{listed}");

    let r = admin(&server, "POST", "/v1/models/m/versions/2/load", Some(TOKEN)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!((body["version"].as_str(), body["state"].as_str()), (Some("2"), Some("serving")));
    assert_eq!(server.rank(&request(5, 1)).await.json()["version"], "2");
    let listed = admin(&server, "GET", "/v1/models", Some(TOKEN)).await.json();
    let state = |v: &str| {
        listed["models"].as_array().unwrap().iter().find(|m| m["version"] == v).unwrap()["state"].clone()
    };
    assert_eq!((state("1"), state("2")), (serde_json::json!("previous"), serde_json::json!("serving")));

    let missing = admin(&server, "POST", "/v1/models/m/versions/9/load", Some(TOKEN)).await;
    assert_eq!((missing.status, missing.json()["error"]["code"].as_str()), (404, Some("unknown_version")));
    let hidden = admin(&server, "POST", "/v1/models/.m/versions/2/load", Some(TOKEN)).await;
    assert_eq!(hidden.status, 422, "{}", hidden.text());

    // A package whose graph is garbage is refused with the reason; version 2 keeps serving.
    // (Directory polling is off in these tests' config, so only the admin API loads it.)
    let broken = dir.path().join("m/3");
    std::fs::create_dir_all(&broken).unwrap();
    let text = std::fs::read_to_string(dir.path().join("m/2/manifest.toml")).unwrap();
    std::fs::write(broken.join("manifest.toml"), text.replace("version = \"2\"", "version = \"3\"")).unwrap();
    std::fs::write(broken.join("model.onnx"), b"not an onnx graph").unwrap();
    let r = admin(&server, "POST", "/v1/models/m/versions/3/load", Some(TOKEN)).await;
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (422, Some("invalid_model")), "{}", r.text());
    assert!(r.text().contains("m/3"), "{}", r.text());
    assert_eq!(server.rank(&request(5, 1)).await.json()["version"], "2");

    // What the rollout did is in Prometheus, by model (never by version). See: issue 15 (4).
    let r = admin(&server, "POST", "/v1/models/m/rollback", Some(TOKEN)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let metrics = server.get("/metrics").await.text();
    let value = |series: &str| -> f64 {
        let line =
            metrics.lines().find(|l| l.starts_with(series)).unwrap_or_else(|| panic!("{series}: {metrics}"));
        line[series.len()..].trim().parse().unwrap()
    };
    assert_eq!(value("retort_rollout_loads_total{model=\"m\"}"), 2.0);
    assert_eq!(value("retort_rollout_load_duration_seconds_count{model=\"m\"}"), 2.0);
    assert_eq!(value("retort_rollout_failed_loads_total{model=\"m\",reason=\"invalid\"}"), 1.0);
    assert_eq!(value("retort_rollout_swaps_total{model=\"m\",operation=\"promote\"}"), 2.0);
    assert_eq!(value("retort_rollout_swaps_total{model=\"m\",operation=\"rollback\"}"), 1.0);
    for (state, n) in [("serving", 1.0), ("retired", 1.0), ("failed", 1.0)] {
        assert_eq!(value(&format!("retort_rollout_versions{{model=\"m\",state=\"{state}\"}}")), n, "{state}");
    }
    assert!(!metrics.contains("state=\"previous\""), "no version is previous after a rollback: {metrics}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn train_notify_publishes_and_the_server_serves_the_new_version() {
    let tmp = tempfile::tempdir().unwrap();
    let (world, models) = (tmp.path().join("world"), tmp.path().join("models"));
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let bin = env!("CARGO_BIN_EXE_retort");
    let generated = Command::new(bin)
        .args(["demo-data", "--out", &s(&world), "--domains", "target", "--users", "300"])
        .args(["--target-requests", "600"])
        .output()
        .unwrap();
    assert!(generated.status.success());
    let train = |extra: &[&str]| {
        let mut c = Command::new(bin);
        c.args(["train", "--data", &s(&world.join("target")), "--models", &s(&models), "--name", "music"]);
        c.args(extra).env("RETORT_ADMIN_TOKEN", TOKEN).env("RUST_BACKTRACE", "0");
        c
    };
    assert!(train(&[]).output().unwrap().status.success());
    let server = TestServer::start(config(&models, Some(TOKEN))).await;
    assert_eq!(server.rank(&request(5, 1)).await.json()["version"], "1");

    // Another seed (the same training again would be the same package, not a new version),
    // with a tolerance that lets it through the gate: publishes 2 and notifies.
    let seeded = |seed: u64| {
        let path = tmp.path().join(format!("seed-{seed}.toml"));
        std::fs::write(&path, format!("[train]\nseed = {seed}\n[publish]\ntolerance = 1.0\n")).unwrap();
        s(&path)
    };
    let (second, third) = (seeded(2), seeded(3));
    let url = server.url("");
    let mut cmd = train(&["--notify", &url, "--config", &second]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{said}");
    assert!(said.contains("published") && said.contains("\"state\":\"serving\""), "{said}");
    assert_eq!(server.rank(&request(5, 1)).await.json()["version"], "2");

    // A wrong token: published, but the server refuses to load it, and the command says so.
    let mut cmd = train(&["--notify", &url, "--config", &third]);
    cmd.env("RETORT_ADMIN_TOKEN", "wrong");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(server.rank(&request(5, 1)).await.json()["version"], "2");
    server.stop().await.unwrap();
}
