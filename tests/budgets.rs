//! Deadlines and cancellation against a real server on loopback, with a deliberately slow
//! engine (the `test-hooks` feature): a request whose deadline passes while it waits for an
//! inference thread, or whose client goes away, is never run.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::{TestServer, request, write_model};
use retort::config::Config;
use retort::model::DELAYED_RUNS;
use retort::model::manifest::ContextRows;
use std::sync::atomic::Ordering;

/// The slow engine's run counter is one per process: these tests take turns.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn slow_server(dir: &std::path::Path, delay_ms: u64) -> TestServer {
    write_model(dir, "m", 1, ContextRows::Once);
    let mut config = Config {
        models_dir: dir.to_path_buf(),
        inference_threads: 1,
        poll_interval_ms: 0,
        ..Config::default()
    };
    config.test_inference_delay_ms = delay_ms;
    config.persist_warmup = false;
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
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut late = request(5, 2);
    late["budget_ms"] = serde_json::json!(100);
    let sent = Instant::now();
    let r = server.rank(&late).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (503, Some("deadline_exceeded")),
        "{}",
        r.text()
    );
    assert!(r.headers.contains_key("retry-after"));
    assert!(sent.elapsed() < Duration::from_millis(600), "{:?}", sent.elapsed());
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
    tokio::time::sleep(Duration::from_millis(50)).await;
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
    let server =
        TestServer::start(Config { models_dir: dir.path().to_path_buf(), ..Config::default() }).await;
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
