//! A short, bounded run of the load generator against a real server on loopback: a few hundred
//! requests, enough to show it sends, times and classifies them. Benchmark figures come from
//! longer runs (BENCHMARKS.md); none is asserted here.

mod common;

use std::time::Duration;

use common::{TestServer, shipped_models};
use loadtest::driver::{Arrivals, Load};
use loadtest::report::table;
use loadtest::requests::{self, Shape};
use loadtest::scenario::{self, Plan, Swap};
use loadtest::target::Target;
use retort_server::config::Config;
use retort_server::rollout::Policy;

fn plan(server: &TestServer, bodies: Vec<hyper::body::Bytes>, rate: f64, seconds: f64) -> Plan {
    Plan {
        target: Target::parse(&format!("http://{}", server.addr)).unwrap(),
        bodies,
        load: Load {
            rate,
            arrivals: Arrivals::Poisson,
            duration: Duration::from_secs_f64(seconds),
            max_requests: 400,
            budget_header_ms: None,
            timeout: Duration::from_secs(10),
            max_in_flight: 1000,
            seed: 5,
        },
        warmup: Duration::from_millis(200),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_load_from_the_shipped_manifest_is_answered_and_counted() {
    let server = TestServer::start_with_models(&shipped_models()).await;
    let manifest = shipped_models().join("music-ranker/1/manifest.toml");
    let shape = Shape { candidates: 50, priors: true, ..Shape::default() };
    let bodies = requests::from_manifest(&manifest, &shape, 16, 1).unwrap();
    let phases = scenario::steady(&plan(&server, bodies, 200.0, 1.5)).await;
    let s = &phases[0];
    assert!(s.sent > 200 && s.sent <= 400, "Poisson arrivals at 200/s for 1.5 s, capped at 400: {}", s.sent);
    assert_eq!(s.count("200"), s.sent, "{:?}", s.statuses);
    assert_eq!(s.versions.get("1"), Some(&s.sent), "every answer names its version");
    assert!(s.ok_latency_ms.p50 > 0.0 && s.ok_latency_ms.p50 <= s.ok_latency_ms.p99);
    assert!(table(&phases).contains("| steady |"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_swap_scenario_promotes_and_rolls_back_under_load() {
    let dir = tempfile::tempdir().unwrap();
    for (version, seed) in [("1", 1), ("2", 2)] {
        common::write_version(dir.path(), version, seed);
    }
    let mut config = Config::serving(dir.path());
    config.admin.admin_token = Some("smoke".into());
    config.rollout.poll_interval_ms = 0;
    config.rollout.rollout_policy = Policy::Manual;
    config.rollout.persist_warmup = false;
    let server = TestServer::start(config).await;
    let manifest = dir.path().join("m/2/manifest.toml");
    let bodies =
        requests::from_manifest(&manifest, &Shape { candidates: 20, ..Shape::default() }, 8, 2).unwrap();
    let swap = Swap {
        admin_token: Some("smoke".into()),
        model: "m".into(),
        version: "1".into(),
        every: Duration::from_millis(150),
    };
    let (phases, result) = scenario::swap(&plan(&server, bodies, 100.0, 1.2), &swap).await.unwrap();
    assert!(result.swaps >= 4, "{result:?}");
    for p in &phases {
        assert_eq!((p.errors, p.count("200")), (0, p.sent), "{}: {:?}", p.label, p.statuses);
    }
    assert_eq!(phases[0].versions.keys().collect::<Vec<_>>(), ["2"]);
    assert!(
        phases[1].versions.contains_key("1") && phases[1].versions.contains_key("2"),
        "{:?}",
        phases[1].versions
    );
    let wrong_token = Swap { admin_token: Some("nope".into()), ..swap };
    let refused =
        scenario::swap(&plan(&server, vec![hyper::body::Bytes::from_static(b"{}")], 10.0, 0.2), &wrong_token)
            .await;
    assert!(refused.unwrap_err().to_string().contains("401"));
}
