//! Deadlines and cancellation against a real server on loopback, with a deliberately slow
//! engine (the `test-hooks` feature): a request whose deadline passes while it waits for an
//! inference thread, or whose client goes away, is never run.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{TestServer, request, write_model};
use retort_model::manifest::ContextRows;
use retort_model::{DELAYED_RUNS, InferenceDelay};
use retort_server::config::Config;
use std::sync::atomic::Ordering;

/// Waits (at most 2 s) until the slow engine has started one run since `before`: its one
/// thread is then busy, so the next request queues behind it, whatever the machine's speed.
async fn until_started(before: u64) {
    for _ in 0..400 {
        if DELAYED_RUNS.load(Ordering::Relaxed) > before {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the slow engine never started");
}

/// The slow engine's run counter is one per process: these tests take turns.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn slow_server(dir: &std::path::Path, delay_ms: u64) -> TestServer {
    write_model(dir, "m", 1, ContextRows::Once);
    let mut config = Config::serving(dir);
    config.admission.inference_threads = 1;
    config.rollout.poll_interval_ms = 0;
    config.test_inference_delays.insert(
        "m".into(),
        InferenceDelay { fixed: Duration::from_millis(delay_ms), per_candidate: Duration::ZERO },
    );
    // No degradation: these tests are about requests that wait past their deadline.
    config.admission.degradation.ladder = Vec::new();
    config.rollout.persist_warmup = false;
    TestServer::start(config).await
}

fn metric(text: &str, outcome: &str) -> u64 {
    text.lines()
        .find(|l| {
            l.starts_with("retort_rank_outcomes_total") && l.contains(&format!("outcome=\"{outcome}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0, |v| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_request_whose_deadline_passes_is_never_run() {
    let _turn = TURN.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let server = std::sync::Arc::new(slow_server(dir.path(), 300).await);
    let before = DELAYED_RUNS.load(Ordering::Relaxed);
    // The only inference thread is busy for 300 ms with this one.
    let busy = tokio::spawn({
        let server = server.clone();
        async move { server.rank(&request(5, 1)).await.status }
    });
    until_started(before).await;
    let mut late = request(5, 2);
    late["budget_ms"] = serde_json::json!(100);
    let r = server.rank(&late).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (503, Some("deadline_exceeded")),
        "{}",
        r.text()
    );
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(busy.await.unwrap(), 200);
    assert_eq!(DELAYED_RUNS.load(Ordering::Relaxed) - before, 1, "only the first request ran");
    let metrics = server.get("/metrics").await.text();
    assert_eq!((metric(&metrics, "expired"), metric(&metrics, "full")), (1, 1), "{metrics}");

    // With room to spare, the budget changes nothing.
    let mut roomy = request(5, 3);
    roomy["budget_ms"] = serde_json::json!(5000);
    assert_eq!(server.rank(&roomy).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_clients_request_is_never_run() {
    let _turn = TURN.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let server = std::sync::Arc::new(slow_server(dir.path(), 400).await);
    let before = DELAYED_RUNS.load(Ordering::Relaxed);
    let busy = tokio::spawn({
        let server = server.clone();
        async move { server.rank(&request(5, 1)).await.status }
    });
    until_started(before).await;
    // A client sends its request, then hangs up while it waits in the queue.
    let addr = server.addr;
    tokio::task::spawn_blocking(move || {
        let body = serde_json::to_vec(&request(5, 2)).unwrap();
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(s, "POST /v1/rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len()).unwrap();
        s.write_all(&body).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        s.shutdown(std::net::Shutdown::Both).unwrap();
    })
    .await
    .unwrap();
    assert_eq!(busy.await.unwrap(), 200);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(DELAYED_RUNS.load(Ordering::Relaxed) - before, 1, "the abandoned request ran");
    assert_eq!(metric(&server.get("/metrics").await.text(), "cancelled"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_header_wins_and_bad_budgets_are_named() {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), "m", 1, ContextRows::Once);
    let server = TestServer::start(Config::serving(dir.path())).await;
    let post = |budget: Option<&str>, body: serde_json::Value| {
        let mut req = hyper::Request::post(server.url("/v1/rank")).header("content-type", "application/json");
        if let Some(b) = budget {
            req = req.header("x-retort-budget-ms", b);
        }
        req.body(http_body_util::Full::new(hyper::body::Bytes::from(serde_json::to_vec(&body).unwrap())))
            .unwrap()
    };
    let mut zero = request(3, 1);
    zero["budget_ms"] = serde_json::json!(0);
    let r = server.send(post(None, zero.clone())).await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("budget_ms"), "{}", r.text());
    // The header wins over the body's invalid budget.
    assert_eq!(server.send(post(Some("5000"), zero)).await.status, 200);
    let r = server.send(post(Some("soon"), request(3, 1))).await;
    assert_eq!(r.status, 422);
    assert!(r.text().contains("x-retort-budget-ms"), "{}", r.text());
}

/// A server whose models `(name, fixed, per_candidate)` sleep that long per run; `m` declares
/// `m-small` as its fallback when `with_fallback`.
async fn degrading_server(
    dir: &std::path::Path,
    delays: &[(&str, f64, f64)],
    with_fallback: bool,
) -> TestServer {
    write_model(dir, "m", 1, ContextRows::Once);
    if with_fallback {
        write_model(dir, "m-small", 2, ContextRows::Once);
        let path = dir.join("m/1/manifest.toml");
        let manifest = std::fs::read_to_string(&path).unwrap();
        let manifest = manifest.replacen("[model]\n", "[model]\nfallback = \"m-small\"\n", 1);
        assert!(manifest.contains("fallback = \"m-small\""), "{manifest}");
        std::fs::write(&path, manifest).unwrap();
    }
    let mut config = Config::serving(dir);
    config.admission.inference_threads = 1;
    config.rollout.poll_interval_ms = 0;
    config.rollout.default_model = Some("m".into());
    config.rollout.persist_warmup = false;
    for &(name, fixed_ms, per_candidate_us) in delays {
        config.test_inference_delays.insert(
            name.into(),
            InferenceDelay {
                fixed: Duration::from_secs_f64(fixed_ms / 1e3),
                per_candidate: Duration::from_secs_f64(per_candidate_us / 1e6),
            },
        );
    }
    TestServer::start(config).await
}

/// `n` candidates whose priors put them in reverse order: `c{n-1}` first.
fn with_priors(n: usize, budget_ms: f64) -> serde_json::Value {
    let mut body = request(n, 7);
    for (i, c) in body["candidates"].as_array_mut().unwrap().iter_mut().enumerate() {
        c["prior"] = serde_json::json!(i as f64 / n as f64);
    }
    body["budget_ms"] = serde_json::json!(budget_ms);
    // Every candidate listed, with its heads: what a degraded answer leaves out shows.
    body["top_k"] = serde_json::json!(n);
    body["heads"] = serde_json::json!(true);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_the_full_model_cannot_meet_gets_the_best_prefix_it_can_afford() {
    let _turn = TURN.lock().await;
    let dir = tempfile::tempdir().unwrap();
    // 400 candidates take 1 ms + 400 × 100 µs = 41 ms.
    let server = degrading_server(dir.path(), &[("m", 1.0, 100.0)], false).await;
    let before = DELAYED_RUNS.load(Ordering::Relaxed);
    let r = server.rank(&with_priors(400, 25.0)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    let degraded = &body["degraded"];
    assert_eq!(
        (degraded["reason"].as_str(), degraded["mode"].as_str()),
        (Some("budget"), Some("truncated")),
        "{degraded}"
    );
    let scored = degraded["scored"].as_u64().unwrap() as usize;
    assert!((120..240).contains(&scored), "scored {scored} of 400 in 25 ms at 100 µs each");
    assert_eq!(DELAYED_RUNS.load(Ordering::Relaxed) - before, 1);

    // The scored ones are the `scored` highest priors, ranked by the model; the rest follow
    // unscored, in prior order.
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 400);
    let index = |item: &serde_json::Value| item["id"].as_str().unwrap()[1..].parse::<usize>().unwrap();
    let mut top: Vec<usize> = items[..scored].iter().map(index).collect();
    assert!(items[..scored].iter().all(|i| i["score"].is_f64() && i["heads"]["play"].is_f64()));
    let scores: Vec<f64> = items[..scored].iter().map(|i| i["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "scored candidates best first");
    top.sort_unstable();
    assert_eq!(top, (400 - scored..400).collect::<Vec<_>>());
    let rest: Vec<usize> = items[scored..].iter().map(index).collect();
    assert_eq!(rest, (0..400 - scored).rev().collect::<Vec<_>>());
    assert!(items[scored..].iter().all(|i| i["score"].is_null() && i["heads"] == serde_json::json!({})));

    // With room to spare, nothing is degraded.
    let r = server.rank(&with_priors(400, 500.0)).await;
    assert_eq!(r.status, 200);
    assert!(r.json()["degraded"].is_null(), "{}", r.text());
    assert!(r.json()["items"].as_array().unwrap().iter().all(|i| i["score"].is_f64()));
    let metrics = server.get("/metrics").await.text();
    assert_eq!((metric(&metrics, "truncated"), metric(&metrics, "full")), (1, 1), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_fallback_answers_in_time_when_the_full_model_cannot() {
    let _turn = TURN.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let server = degrading_server(dir.path(), &[("m", 1.0, 100.0)], true).await;
    let before = DELAYED_RUNS.load(Ordering::Relaxed);
    let r = server.rank(&with_priors(400, 25.0)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["model"], "m-small");
    assert_eq!(body["degraded"], serde_json::json!({"reason": "budget", "mode": "fallback", "scored": 400}));
    assert!(body["items"].as_array().unwrap().iter().all(|i| i["score"].is_f64()));
    assert_eq!(DELAYED_RUNS.load(Ordering::Relaxed) - before, 0, "the slow model never ran");

    // A request the full model can afford gets it.
    let r = server.rank(&with_priors(20, 25.0)).await;
    assert_eq!(
        (r.json()["model"].as_str(), r.json()["degraded"].is_null()),
        (Some("m"), true),
        "{}",
        r.text()
    );
    assert_eq!(metric(&server.get("/metrics").await.text(), "fallback"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_nothing_can_meet_is_shed_at_once() {
    let _turn = TURN.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let server = degrading_server(dir.path(), &[("m", 20.0, 0.0)], false).await;
    let before = DELAYED_RUNS.load(Ordering::Relaxed);
    let r = server.rank(&with_priors(50, 5.0)).await;
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (429, Some("shed")), "{}", r.text());
    assert_eq!(r.json()["error"]["reason"], "budget");
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(DELAYED_RUNS.load(Ordering::Relaxed) - before, 0);
    assert_eq!(metric(&server.get("/metrics").await.text(), "shed"), 1);
}

// See: issue 14 (3): on an idle but noisy machine a 5 ms budget was shed as `overload`, and a
// larger budget got a worse answer than a smaller one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_server_never_blames_overload_and_a_roomy_budget_is_answered_in_full() {
    let _turn = TURN.lock().await;
    let dir = tempfile::tempdir().unwrap();
    // 200 candidates take 1 ms + 200 × 10 µs = 3 ms.
    let server = degrading_server(dir.path(), &[("m", 1.0, 10.0)], false).await;
    for _ in 0..3 {
        assert_eq!(server.rank(&with_priors(200, 1000.0)).await.status, 200);
    }
    let mut outcomes = Vec::new();
    for round in 0..3 {
        for budget in [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 12.0, 20.0, 40.0] {
            let r = server.rank(&with_priors(200, budget)).await;
            let body = r.json();
            let (reason, mode) = match r.status {
                200 => (
                    body["degraded"]["reason"].as_str().map(str::to_string),
                    body["degraded"]["mode"].as_str().map(str::to_string),
                ),
                429 => (body["error"]["reason"].as_str().map(str::to_string), Some("shed".to_string())),
                // A budget this tight can run out while a thread wakes up for it.
                503 if budget < 12.0 => (None, Some("expired".to_string())),
                s => panic!("budget {budget} ms: {s} {}", r.text()),
            };
            // Near the edge (the full answer takes 3 ms, plus the 2 ms margin) a slow wake-up of
            // the inference thread on a busy machine is a real wait; with twice the room it
            // must never be blamed on overload.
            if budget >= 12.0 {
                assert_ne!(
                    reason.as_deref(),
                    Some("overload"),
                    "round {round}, budget {budget} ms on an idle server: {}",
                    r.text()
                );
            }
            outcomes.push((budget, mode));
        }
    }
    // Four times what the full answer takes, plus the margin: never degraded.
    for (budget, mode) in &outcomes {
        if *budget >= 20.0 {
            assert_eq!(mode, &None, "budget {budget} ms degraded: {outcomes:?}");
        }
    }
    let metrics = server.get("/metrics").await.text();
    assert!(metric(&metrics, "truncated") + metric(&metrics, "shed") > 0, "the small budgets were degraded");
}
