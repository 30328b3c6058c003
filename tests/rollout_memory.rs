//! Memory after many load/promote/retire cycles, in a test binary of its own so that no other
//! test's allocations move the process's resident size.

mod common;

use std::path::Path;

use common::{Reply, TestServer, request};
use http_body_util::Full;
use hyper::body::Bytes;
use retort::config::Config;
use retort::model::{package, scaffold};
use retort::rollout::Policy;
use serde_json::json;

const TOKEN: &str = "rollout-token";

async fn admin(server: &TestServer, path: &str) -> Reply {
    let method = if path == "/v1/models" { "GET" } else { "POST" };
    let req = hyper::Request::builder()
        .method(method)
        .uri(server.url(path))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    server.send(req).await
}

async fn version_for(server: &TestServer, user: &str) -> String {
    let mut body = request(20, 3);
    body["context"]["user_id"] = json!(user);
    server.rank(&body).await.json()["version"].as_str().unwrap().to_string()
}

fn write_version(dir: &Path, version: &str, seed: u64) {
    let (manifest, graph) = scaffold::seeded_package("m", version, seed);
    package::write(dir, &manifest, &graph).unwrap();
}

/// Resident memory once the rollout's thread has handed retired versions' memory back (it
/// looks every 250 ms).
async fn settled_resident_bytes() -> u64 {
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    resident_bytes()
}

/// Resident memory of this process, in bytes (Linux).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    statm.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_comes_back_after_many_load_promote_retire_cycles() {
    let dir = tempfile::tempdir().unwrap();
    write_version(dir.path(), "1", 1);
    write_version(dir.path(), "2", 2);
    let config = Config {
        models_dir: dir.path().to_path_buf(),
        admin_token: Some(TOKEN.into()),
        poll_interval_ms: 0,
        rollout_policy: Policy::Manual,
        ..Config::default()
    };
    let server = TestServer::start(config).await;
    let cycles: usize = std::env::var("RETORT_MEMORY_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let (mut after_first, mut warmed) = (0, 0);
    for cycle in 1..=cycles {
        // Load 1, promote it (2 becomes previous), roll back (1 retired, unloaded).
        assert_eq!(admin(&server, "/v1/models/m/versions/1/load").await.json()["state"], "staged");
        assert_eq!(admin(&server, "/v1/models/m/versions/1/promote").await.status, 200);
        assert_eq!(version_for(&server, "u").await, "1");
        assert_eq!(admin(&server, "/v1/models/m/rollback").await.status, 200);
        assert_eq!(version_for(&server, "u").await, "2");
        match cycle {
            1 => after_first = settled_resident_bytes().await,
            10 => warmed = settled_resident_bytes().await,
            _ => {}
        }
    }
    let after_last = settled_resident_bytes().await;
    let kib = |b: u64| b / 1024;
    eprintln!(
        "resident memory after cycle 1: {} KiB, after cycle 10: {} KiB, after cycle {cycles}: {} KiB",
        kib(after_first),
        kib(warmed),
        kib(after_last)
    );
    // A retired version that stayed in memory would add its graph and compiled plans (several
    // MiB) every cycle: hundreds of MiB over 50. What remains is allocator growth of a few MiB
    // (BENCHMARKS.md: the rollout issue's 10% target is not met yet).
    assert!(
        after_last < after_first + 16 * 1024 * 1024,
        "resident memory grew from {after_first} bytes after cycle 1 to {after_last} after cycle {cycles}"
    );
    server.stop().await.unwrap();
}
