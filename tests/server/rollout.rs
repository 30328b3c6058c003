//! Rolling versions in and out of a real server on loopback: the directory watcher and the
//! policies, promote and rollback, a sticky canary and its judge, validation against the
//! serving version, and no failed request across swaps under load.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::{Reply, TestServer, request, write_version};
use http_body_util::Full;
use hyper::body::Bytes;
use retort_model::manifest::{FeatureKind, Manifest};
use retort_model::two_tower::TwoTower;
use retort_model::{package, scaffold};
use retort_server::config::Config;
use retort_server::rollout::Policy;
use serde_json::{Value, json};

const TOKEN: &str = "rollout-token";

/// A version of `arch` (the music features, maybe altered, maybe wider).
fn write_arch(dir: &Path, version: &str, arch: &TwoTower) {
    let (manifest, graph): (Manifest, Vec<u8>) =
        scaffold::random_package("m", version, 9, arch, &[("play", 1.0), ("like", 0.5)]);
    package::write(dir, &manifest, &graph).unwrap();
}

fn config(dir: &Path, policy: Policy, poll_ms: u64) -> Config {
    let mut config = Config::serving(dir);
    config.admin.admin_token = Some(TOKEN.into());
    config.rollout.poll_interval_ms = poll_ms;
    config.rollout.rollout_policy = policy;
    config
}

async fn admin(server: &TestServer, path: &str, body: Option<Value>) -> Reply {
    let method = if body.is_some()
        || path.ends_with("/load")
        || path.ends_with("/promote")
        || path.ends_with("/rollback")
    {
        "POST"
    } else {
        "GET"
    };
    let req = hyper::Request::builder()
        .method(method)
        .uri(server.url(path))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::new(Bytes::from(body.map(|b| b.to_string()).unwrap_or_default())))
        .unwrap();
    server.send(req).await
}

async fn state(server: &TestServer, version: &str) -> Option<Value> {
    let listed = admin(server, "/v1/models", None).await.json();
    listed["models"].as_array().unwrap().iter().find(|m| m["version"] == version).cloned()
}

/// Waits (at most 15 s) until `version` is in `wanted` state.
async fn wait_state(server: &TestServer, version: &str, wanted: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = state(server, version).await
            && v["state"] == wanted
        {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{version} never became {wanted}: {:?}",
            state(server, version).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn version_for(server: &TestServer, user: &str) -> String {
    let mut body = request(20, 3);
    body["context"]["user_id"] = json!(user);
    let r = server.rank(&body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["version"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_policy_stages_what_the_watcher_finds_until_promoted_and_rollback_swaps_back() {
    let dir = tempfile::tempdir().unwrap();
    write_version(dir.path(), "1", 1);
    let server = TestServer::start(config(dir.path(), Policy::Manual, 100)).await;
    write_version(dir.path(), "2", 2);
    let staged = wait_state(&server, "2", "staged").await;
    assert!(staged["load_ms"].as_u64().is_some(), "{staged}");
    assert_eq!(version_for(&server, "u1").await, "1", "a staged version serves nothing");

    let r = admin(&server, "/v1/models/m/versions/2/promote", None).await;
    assert_eq!((r.status, r.json()["state"].as_str()), (200, Some("serving")));
    assert_eq!(version_for(&server, "u1").await, "2");
    assert_eq!(state(&server, "1").await.unwrap()["state"], "previous");

    let r = admin(&server, "/v1/models/m/rollback", None).await;
    assert_eq!((r.status, r.json()["version"].as_str()), (200, Some("1")));
    assert_eq!(version_for(&server, "u1").await, "1");
    let retired = state(&server, "2").await.unwrap();
    assert_eq!(
        (retired["state"].as_str(), retired["reason"].as_str()),
        (Some("retired"), Some("rolled back by an operator"))
    );
    let again = admin(&server, "/v1/models/m/rollback", None).await;
    assert_eq!((again.status, again.json()["error"]["code"].as_str()), (409, Some("nothing_to_roll_back")));
    // Per-version counts: version 1 answered twice, version 2 once.
    assert_eq!(state(&server, "1").await.unwrap()["requests"], 2);
    assert_eq!(retired["requests"], 1);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_policy_promotes_a_new_version_once_it_validates() {
    let dir = tempfile::tempdir().unwrap();
    write_version(dir.path(), "1", 1);
    let server = TestServer::start(config(dir.path(), Policy::Auto, 100)).await;
    write_version(dir.path(), "2", 2);
    wait_state(&server, "2", "serving").await;
    assert_eq!(version_for(&server, "u1").await, "2");

    // A version whose feature changed kind would break callers: refused, with the reason.
    let mut arch = scaffold::music_architecture();
    let duration = arch.features.iter_mut().find(|f| f.name == "duration_s").unwrap();
    duration.kind = FeatureKind::Categorical { buckets: 64, default: None, vocabulary: None };
    duration.input = TwoTower::input_for(duration.side, &duration.kind).to_string();
    write_arch(dir.path(), "3", &arch);
    let failed = wait_state(&server, "3", "failed").await;
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("`duration_s` changed from item number to item categorical"),
        "{failed}"
    );
    assert_eq!(version_for(&server, "u1").await, "2");
    server.stop().await.unwrap();
}

/// The model and version that answer a request naming no model.
async fn unnamed(server: &TestServer) -> (String, String) {
    let r = server.rank(&request(10, 1)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    (j["model"].as_str().unwrap().to_string(), j["version"].as_str().unwrap().to_string())
}

// See: issue 14 (C): a new version without its predecessor's `fallback` line, promoted, made
// every request that names no model fail with `model_required`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_model_survives_a_version_that_drops_its_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let (mut student, graph) = scaffold::seeded_package("m", "1", 1);
    student.model.fallback = Some("m-fallback".into());
    package::write(dir.path(), &student, &graph).unwrap();
    let (fallback, graph) = scaffold::seeded_package("m-fallback", "1", 2);
    package::write(dir.path(), &fallback, &graph).unwrap();
    let server = TestServer::start(config(dir.path(), Policy::Auto, 100)).await;
    assert_eq!(unnamed(&server).await, ("m".to_string(), "1".to_string()));
    write_version(dir.path(), "2", 3);
    wait_state(&server, "2", "serving").await;
    assert_eq!(unnamed(&server).await, ("m".to_string(), "2".to_string()));
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_takes_a_sticky_share_of_users() {
    let dir = tempfile::tempdir().unwrap();
    write_version(dir.path(), "1", 1);
    write_version(dir.path(), "2", 2);
    // Version 2 is not the newest-at-start... both exist: the server serves 2. Make 1 the canary.
    let server = TestServer::start(config(dir.path(), Policy::Manual, 0)).await;
    assert_eq!(version_for(&server, "u").await, "2");
    let r = admin(&server, "/v1/models/m/versions/1/load", None).await;
    assert_eq!((r.status, r.json()["state"].as_str()), (200, Some("staged")), "{}", r.text());
    let bad = admin(&server, "/v1/models/m/versions/1/canary", Some(json!({"percent": 101}))).await;
    assert_eq!(bad.status, 422);
    let r = admin(&server, "/v1/models/m/versions/1/canary", Some(json!({"percent": 30}))).await;
    assert_eq!(
        (r.status, r.json()["state"].as_str(), r.json()["percent"].as_u64()),
        (200, Some("canary"), Some(30))
    );

    let mut on_canary = 0;
    for u in 0..200 {
        let user = format!("user-{u}");
        let first = version_for(&server, &user).await;
        assert_eq!(version_for(&server, &user).await, first, "{user} switched versions");
        on_canary += usize::from(first == "1");
    }
    assert!((30..=90).contains(&on_canary), "{on_canary} of 200 users on a 30% canary");
    let canary = state(&server, "1").await.unwrap();
    assert_eq!(canary["requests"].as_u64(), Some(2 * on_canary as u64));
    assert!(canary["p99_us"].as_u64().is_some());

    // Ending the canary sends everyone back.
    let r = admin(&server, "/v1/models/m/versions/1/canary", Some(json!({"percent": 0}))).await;
    assert_eq!(r.json()["state"], "staged");
    for u in 0..20 {
        assert_eq!(version_for(&server, &format!("user-{u}")).await, "2");
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_slower_than_the_rules_allow_is_retired_as_failed() {
    let dir = tempfile::tempdir().unwrap();
    write_version(dir.path(), "1", 1);
    let mut config = config(dir.path(), Policy::Manual, 0);
    config.rollout.canary.min_requests = 40;
    config.rollout.canary.max_p99_ratio = 2.0;
    let server = TestServer::start(config).await;
    // Far wider layers: many times the serving version's work per candidate.
    let mut wide = scaffold::music_architecture();
    wide.item_hidden = vec![1024, 512];
    wide.interaction_hidden = vec![512, 256];
    write_arch(dir.path(), "2", &wide);
    assert_eq!(admin(&server, "/v1/models/m/versions/2/load", None).await.json()["state"], "staged");
    admin(&server, "/v1/models/m/versions/2/canary", Some(json!({"percent": 50}))).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut u = 0;
    let failed = loop {
        u += 1;
        let mut body = request(400, u);
        body["context"]["user_id"] = json!(format!("user-{u}"));
        assert_eq!(server.rank(&body).await.status, 200);
        if let Some(v) = state(&server, "2").await
            && v["state"] == "failed"
        {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "the slow canary was never failed: {:?}",
            state(&server, "2").await
        );
    };
    assert!(failed["reason"].as_str().unwrap().contains("p99"), "{failed}");
    for u in 0..20 {
        assert_eq!(version_for(&server, &format!("again-{u}")).await, "1");
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_request_fails_across_twenty_promotions_and_rollbacks() {
    let dir = tempfile::tempdir().unwrap();
    write_version(dir.path(), "1", 1);
    write_version(dir.path(), "2", 2);
    let server = std::sync::Arc::new(TestServer::start(config(dir.path(), Policy::Manual, 0)).await);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..4 {
        let (server, stop) = (server.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let (mut ok, mut versions) = (0u32, std::collections::BTreeSet::new());
            for i in 0..2000u64 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let r = server.rank(&request(50, c * 10_000 + i)).await;
                assert_eq!(r.status, 200, "{}", r.text());
                versions.insert(r.json()["version"].as_str().unwrap().to_string());
                ok += 1;
            }
            (ok, versions)
        }));
    }
    for _ in 0..10 {
        // A rolled-back version is retired and unloaded: each round loads it again.
        assert_eq!(admin(&server, "/v1/models/m/versions/1/load", None).await.json()["state"], "staged");
        assert_eq!(admin(&server, "/v1/models/m/versions/1/promote", None).await.status, 200);
        // Once a swap has returned, every new request gets the new version.
        for u in 0..5 {
            assert_eq!(version_for(&server, &format!("after-promote-{u}")).await, "1");
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(admin(&server, "/v1/models/m/rollback", None).await.status, 200);
        for u in 0..5 {
            assert_eq!(version_for(&server, &format!("after-rollback-{u}")).await, "2");
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut seen = std::collections::BTreeSet::new();
    let mut total = 0;
    for c in clients {
        let (ok, versions) = c.await.unwrap();
        total += ok;
        seen.extend(versions);
    }
    assert!(total > 40, "{total} requests");
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["1", "2"], "both versions answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_scores_requests_after_the_response_and_reports_agreement() {
    let dir = tempfile::tempdir().unwrap();
    write_version(dir.path(), "1", 1);
    let server = TestServer::start(config(dir.path(), Policy::Manual, 0)).await;
    // Version 2 has version 1's weights: it must agree completely. Version 3 is another model.
    write_version(dir.path(), "2", 1);
    write_version(dir.path(), "3", 3);
    for v in ["2", "3"] {
        assert_eq!(
            admin(&server, &format!("/v1/models/m/versions/{v}/load"), None).await.json()["state"],
            "staged"
        );
    }
    let r = admin(&server, "/v1/models/m/versions/2/shadow", Some(json!({"percent": 100}))).await;
    assert_eq!((r.status, r.json()["state"].as_str()), (200, Some("shadow")));
    let agreement = |v: Value| v["shadow"].clone();
    for u in 0..30 {
        assert_eq!(version_for(&server, &format!("u{u}")).await, "1", "a shadow never answers");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let same = loop {
        let a = agreement(state(&server, "2").await.unwrap());
        if a["requests"].as_u64().unwrap_or(0) + a["skipped"].as_u64().unwrap_or(0) >= 30 {
            break a;
        }
        assert!(Instant::now() < deadline, "shadow scoring did not keep up: {a}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(same["requests"].as_u64().unwrap() > 0, "{same}");
    assert_eq!(
        (same["kendall_tau"].as_f64(), same["top10_overlap"].as_f64()),
        (Some(1.0), Some(1.0)),
        "{same}"
    );
    assert_eq!(same["score_shift"].as_f64(), Some(0.0));

    // Another model in the shadow: it replaces 2 (back to staged) and disagrees.
    admin(&server, "/v1/models/m/versions/3/shadow", Some(json!({"percent": 100}))).await;
    assert_eq!(state(&server, "2").await.unwrap()["state"], "staged");
    for u in 0..30 {
        version_for(&server, &format!("u{u}")).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let other = loop {
        let a = agreement(state(&server, "3").await.unwrap());
        if a["requests"].as_u64().unwrap_or(0) >= 10 {
            break a;
        }
        assert!(Instant::now() < deadline, "no shadow comparisons for version 3: {a}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(other["kendall_tau"].as_f64().unwrap() < 0.99, "{other}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_versions_warm_on_recent_traffic_and_a_much_slower_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_version(dir.path(), "1", 1);
    let mut config = config(dir.path(), Policy::Manual, 0);
    config.rollout.warmup_latency_factor = 2.0;
    let server = TestServer::start(config).await;
    for u in 0..20 {
        let mut body = request(300, u);
        body["context"]["user_id"] = json!(format!("u{u}"));
        assert_eq!(server.rank(&body).await.status, 200);
    }
    // A version like the serving one warms on those requests and stages.
    write_version(dir.path(), "2", 2);
    assert_eq!(admin(&server, "/v1/models/m/versions/2/load", None).await.json()["state"], "staged");
    // One many times slower on the same requests is refused before it can take any traffic.
    let mut wide = scaffold::music_architecture();
    wide.item_hidden = vec![1024, 512];
    wide.interaction_hidden = vec![512, 256];
    write_arch(dir.path(), "3", &wide);
    let r = admin(&server, "/v1/models/m/versions/3/load", None).await;
    assert_eq!(r.status, 422, "{}", r.text());
    let failed = state(&server, "3").await.unwrap();
    assert_eq!(failed["state"], "failed");
    assert!(failed["reason"].as_str().unwrap().contains("median warm-up time"), "{failed}");
    server.stop().await.unwrap();

    // The recent requests outlive the process.
    let kept = std::fs::read_to_string(dir.path().join(".warmup/m.jsonl")).unwrap();
    assert_eq!(kept.lines().count(), 20);
    assert!(kept.lines().all(|l| serde_json::from_str::<Value>(l).is_ok()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_packages_are_refused_with_their_reason_while_the_serving_version_answers() {
    let dir = tempfile::tempdir().unwrap();
    write_version(dir.path(), "1", 1);
    let server = TestServer::start(config(dir.path(), Policy::Auto, 100)).await;
    let (manifest, graph) = scaffold::seeded_package("m", "2", 2);
    // Half-copied: the graph cut short (as a copy in progress looks, had it not been renamed in).
    let half = dir.path().join("m/2");
    std::fs::create_dir_all(&half).unwrap();
    std::fs::write(half.join("manifest.toml"), manifest.to_toml()).unwrap();
    std::fs::write(half.join("model.onnx"), &graph[..graph.len() / 2]).unwrap();
    let failed = wait_state(&server, "2", "failed").await;
    assert!(failed["reason"].as_str().unwrap().contains("model.onnx"), "{failed}");
    assert_eq!(version_for(&server, "u").await, "1");

    // Golden examples that do not reproduce: the manifest promises other outputs.
    let (mut manifest, graph) = scaffold::seeded_package("m", "3", 3);
    for c in &mut manifest.golden.examples[0].candidates {
        for v in c.expected.values_mut() {
            *v += 0.25;
        }
    }
    package::write(dir.path(), &manifest, &graph).unwrap();
    let failed = wait_state(&server, "3", "failed").await;
    assert!(failed["reason"].as_str().unwrap().contains("golden"), "{failed}");
    assert_eq!(version_for(&server, "u").await, "1");
    server.stop().await.unwrap();
}

// See: issue 14 (H): a version that failed half-copied was never tried again once whole; a
// version linked from outside the models directory was served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_version_is_retried_once_its_files_change_and_links_outside_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_version(dir.path(), "1", 1);
    let server = TestServer::start(config(dir.path(), Policy::Auto, 50)).await;
    let (manifest, graph) = scaffold::seeded_package("m", "2", 2);
    let half = dir.path().join("m/2");
    std::fs::create_dir_all(&half).unwrap();
    std::fs::write(half.join("manifest.toml"), manifest.to_toml()).unwrap();
    std::fs::write(half.join("model.onnx"), &graph[..graph.len() / 2]).unwrap();
    wait_state(&server, "2", "failed").await;
    // The copy finishes: the watcher sees new bytes and tries again.
    std::fs::write(half.join("model.onnx"), &graph).unwrap();
    wait_state(&server, "2", "serving").await;
    assert_eq!(version_for(&server, "u").await, "2");

    let outside = tempfile::tempdir().unwrap();
    let (manifest, graph) = scaffold::seeded_package("m", "3", 3);
    let real = package::write(outside.path(), &manifest, &graph).unwrap();
    std::os::unix::fs::symlink(&real, dir.path().join("m/3")).unwrap();
    let failed = wait_state(&server, "3", "failed").await;
    assert!(failed["reason"].as_str().unwrap().contains("links outside the models directory"), "{failed}");
    assert_eq!(version_for(&server, "u").await, "2");
    server.stop().await.unwrap();
}

// See: issue 15 (4): series labelled with a retired version stayed in every scrape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_versions_metric_series_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    write_version(dir.path(), "1", 1);
    let server = TestServer::start(config(dir.path(), Policy::Auto, 50)).await;
    assert_eq!(version_for(&server, "u1").await, "1");
    let metrics = || async { server.get("/metrics").await.text() };
    assert!(metrics().await.contains("version=\"1\""));
    for (v, seed) in [("2", 2), ("3", 3)] {
        write_version(dir.path(), v, seed);
        wait_state(&server, v, "serving").await;
        assert_eq!(version_for(&server, "u1").await, v);
    }
    wait_state(&server, "1", "retired").await;
    let text = metrics().await;
    assert!(!text.contains("version=\"1\""), "{text}");
    assert!(text.contains("version=\"3\""), "{text}");
    server.stop().await.unwrap();
}
