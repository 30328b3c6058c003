//! The overload scenario, shared by `tests/overload.rs` (what must happen) and
//! `benches/overload.rs` (how fast): about three times what the server can serve, open loop on
//! loopback, against a model slowed by the `test-hooks` engine wrapper (so capacity is known:
//! the one inference thread sleeps a fixed time per request).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{TestServer, request, write_model};
use http_body_util::Full;
use hyper::body::Bytes;
use retort_model::InferenceDelay;
use retort_model::manifest::ContextRows;
use retort_server::config::Config;

pub const BUDGET_MS: f64 = 25.0;
pub const CANDIDATES: usize = 100;
/// One inference thread sleeping 2 ms + 20 µs per candidate: 4 ms for 100, 250 requests/s.
pub const CAPACITY_PER_S: f64 = 250.0;
pub const OVERLOAD_S: f64 = 2.0;

/// One request's fate, timed from when it was meant to be sent.
pub struct Sample {
    pub sent_at: Duration,
    pub latency: Duration,
    pub status: u16,
    pub mode: Option<String>,
    /// The error's code, for a request not answered.
    pub code: Option<String>,
    pub retry_after: bool,
}

/// Sends `count` requests at `rate` per second from `start`, each on time whatever the server
/// does (open loop), and waits for every answer.
async fn open_loop(
    server: &Arc<TestServer>,
    body: &Bytes,
    rate: f64,
    count: usize,
    start: Instant,
    t0: Instant,
) -> Vec<Sample> {
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        let intended = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(intended.into()).await;
        let (server, body) = (server.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let req = hyper::Request::post(server.url("/v1/rank"))
                .header("content-type", "application/json")
                .body(Full::new(body))
                .unwrap();
            let reply = server.send(req).await;
            let json = reply.json();
            let (mode, code) = if reply.status == 200 {
                (json["degraded"]["mode"].as_str().map(str::to_string), None)
            } else {
                (None, json["error"]["code"].as_str().map(str::to_string))
            };
            Sample {
                sent_at: intended - t0,
                latency: intended.elapsed(),
                status: reply.status,
                mode,
                code,
                retry_after: reply.headers.contains_key("retry-after"),
            }
        }));
    }
    let mut samples = Vec::with_capacity(count);
    for t in tasks {
        samples.push(t.await.unwrap());
    }
    samples
}

pub fn p99(mut latencies: Vec<Duration>) -> Duration {
    latencies.sort();
    latencies.get((latencies.len() * 99).div_ceil(100).saturating_sub(1)).copied().unwrap_or_default()
}

pub fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    statm.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 4096
}

/// What became of every request of the scenario.
pub struct Report {
    pub warm: Vec<Sample>,
    pub overload: Vec<Sample>,
    /// The light load through the recovery.
    pub after: Vec<Sample>,
    pub overload_rate: f64,
    /// When the overload ended, from the scenario's start.
    pub overload_end: Duration,
    pub deepest_queue: usize,
    pub resident_before: u64,
    pub resident_after: u64,
}

impl Report {
    pub fn admitted(&self) -> Vec<&Sample> {
        self.overload.iter().filter(|s| s.status == 200).collect()
    }

    pub fn shed(&self) -> Vec<&Sample> {
        self.overload.iter().filter(|s| s.status == 429).collect()
    }

    /// Admitted, then not run: the deadline passed while the request waited for the inference
    /// thread (503 `deadline_exceeded`), which happens when the machine stalls after admission.
    pub fn expired(&self) -> Vec<&Sample> {
        self.overload.iter().filter(|s| s.code.as_deref() == Some("deadline_exceeded")).collect()
    }

    /// Neither answered, shed nor expired.
    pub fn others(&self) -> Vec<(u16, Option<&str>)> {
        self.overload
            .iter()
            .filter(|s| s.status != 200 && s.status != 429 && s.code.as_deref() != Some("deadline_exceeded"))
            .map(|s| (s.status, s.code.as_deref()))
            .collect()
    }

    /// How long after the overload the last degraded or refused request was sent.
    pub fn recovered_within(&self) -> Duration {
        self.after
            .iter()
            .filter(|s| s.status != 200 || s.mode.is_some())
            .map(|s| s.sent_at.saturating_sub(self.overload_end))
            .max()
            .unwrap_or_default()
    }

    pub fn print(&self) {
        let (admitted, shed, expired, others) = (self.admitted(), self.shed(), self.expired(), self.others());
        let count_mode = |mode: Option<&str>| admitted.iter().filter(|s| s.mode.as_deref() == mode).count();
        let admitted_p99 = p99(admitted.iter().map(|s| s.latency).collect());
        let shed_p99 = p99(shed.iter().map(|s| s.latency).collect());
        eprintln!(
            "overload at {}/s for {OVERLOAD_S} s ({} requests, budget {BUDGET_MS} ms): admitted {} \
             (full {}, truncated {}), shed {} (429), expired {} (503), other {:?}; admitted p99 {:.1} ms, shed p99 {:.2} ms; \
             deepest queue {}; resident {} → {} KiB; last degraded or refused request {:?} after the overload",
            self.overload_rate,
            self.overload.len(),
            admitted.len(),
            count_mode(None),
            count_mode(Some("truncated")),
            shed.len(),
            expired.len(),
            others,
            admitted_p99.as_secs_f64() * 1e3,
            shed_p99.as_secs_f64() * 1e3,
            self.deepest_queue,
            self.resident_before / 1024,
            self.resident_after / 1024,
            self.recovered_within(),
        );
    }
}

/// Warms up at a third of capacity, overloads at three times it, then a light load through the
/// recovery.
pub async fn run() -> Report {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), "m", 1, ContextRows::Once);
    let mut config = Config::serving(dir.path());
    config.admission.inference_threads = 1;
    config.admission.default_budget_ms = Some(BUDGET_MS);
    config.rollout.poll_interval_ms = 0;
    config.rollout.persist_warmup = false;
    config.test_inference_delays.insert(
        "m".into(),
        InferenceDelay { fixed: Duration::from_millis(2), per_candidate: Duration::from_micros(20) },
    );
    let server = Arc::new(TestServer::start(config).await);
    let body = Bytes::from(serde_json::to_vec(&request(CANDIDATES, 3)).unwrap());

    // Watch the queue while the load runs.
    let deepest = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let watching = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = tokio::spawn({
        let (server, deepest, watching) = (server.clone(), deepest.clone(), watching.clone());
        async move {
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                deepest.fetch_max(server.app.pool.queued(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });

    // Warm up at a third of capacity, then overload at three times it, then a light load
    // through the recovery.
    let t0 = Instant::now();
    let warm = open_loop(&server, &body, CAPACITY_PER_S / 3.0, 50, t0, t0).await;
    let resident_before = resident_bytes();
    let overload_rate = 3.0 * CAPACITY_PER_S;
    let overload_start = Instant::now();
    let overload =
        open_loop(&server, &body, overload_rate, (overload_rate * OVERLOAD_S) as usize, overload_start, t0)
            .await;
    let overload_end = overload_start + Duration::from_secs_f64(OVERLOAD_S);
    let after = open_loop(&server, &body, 50.0, 75, overload_end, t0).await;
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    watcher.await.unwrap();
    let resident_after = resident_bytes();

    Report {
        warm,
        overload,
        after,
        overload_rate,
        overload_end: overload_end - t0,
        deepest_queue: deepest.load(std::sync::atomic::Ordering::Relaxed),
        resident_before,
        resident_after,
    }
}
