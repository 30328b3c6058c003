//! p99 while versions are swapped, against steady state at the same load, in one run.
//!
//! An in-process server on loopback serves the seeded music model; an open-loop client sends
//! rank requests at a fixed rate (each timed from its intended send time, so a slow server
//! cannot slow the load down), first for a steady phase, then for a phase in which version 1
//! is loaded, promoted over version 2 and rolled back every 250 ms through the admin API.
//!
//!     cargo bench --bench swap [-- RATE CANDIDATES SECONDS]     (defaults 300 200 8)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use retort_model::{package, scaffold};
use retort_server::config::Config;
use retort_server::http::App;
use retort_server::rollout::Policy;

/// The allocator the `retort` binary runs with, so that what is measured here is what serves.
#[global_allocator]
static ALLOCATOR: retort_server::allocator::Allocator = retort_server::allocator::Allocator;

fn body(candidates: usize, i: u64) -> Bytes {
    let items: Vec<serde_json::Value> = (0..candidates)
        .map(|c| {
            serde_json::json!({"id": format!("t{c}"), "features": {
                "track_id": format!("t{}", (i * 31 + c as u64) % 5000), "artist_id": format!("a{}", c % 300),
                "genre": "rock", "duration_s": 200.0, "popularity": 0.5}})
        })
        .collect();
    let req = serde_json::json!({"context": {"user_id": format!("u{}", i % 1000), "country": "SE", "hour": 21},
        "candidates": items, "top_k": 50});
    Bytes::from(serde_json::to_vec(&req).unwrap())
}

struct Phase {
    latencies: Vec<Duration>,
    errors: usize,
}

impl Phase {
    fn quantile(&self, q: f64) -> Duration {
        let mut v = self.latencies.clone();
        v.sort();
        v.get(((v.len() as f64 * q).ceil() as usize).saturating_sub(1)).copied().unwrap_or_default()
    }
}

async fn drive(url: &str, rate: f64, candidates: usize, seconds: f64, seed: u64) -> Phase {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let bodies: Vec<Bytes> = (0..64).map(|i| body(candidates, seed * 1000 + i)).collect();
    let start = Instant::now();
    let total = (rate * seconds) as u64;
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let intended = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(intended.into()).await;
        let (client, url, b) = (client.clone(), url.to_string(), bodies[i as usize % bodies.len()].clone());
        tasks.push(tokio::spawn(async move {
            let req = hyper::Request::post(url)
                .header("content-type", "application/json")
                .body(Full::new(b))
                .unwrap();
            let ok = match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
                Ok(Ok(r)) => {
                    let status = r.status();
                    let _ = r.into_body().collect().await;
                    status.is_success()
                }
                _ => false,
            };
            (intended.elapsed(), ok)
        }));
    }
    let mut phase = Phase { latencies: Vec::new(), errors: 0 };
    for t in tasks {
        let (latency, ok) = t.await.unwrap();
        if ok {
            phase.latencies.push(latency);
        } else {
            phase.errors += 1;
        }
    }
    phase
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let rate: f64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(300.0);
    let candidates: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(200);
    let seconds: f64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(8.0);

    let dir = tempfile::tempdir().unwrap();
    for (v, seed) in [("1", 1), ("2", 2)] {
        let (manifest, graph) = scaffold::seeded_package("m", v, seed);
        package::write(dir.path(), &manifest, &graph).unwrap();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async move {
        let mut config = Config::serving(dir.path());
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        config.admin.admin_open_on_loopback = true;
        config.rollout.poll_interval_ms = 0;
        config.rollout.rollout_policy = Policy::Manual;
        config.rollout.persist_warmup = false;
        let listener = retort_server::http::bind(&config).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = App::new(config).unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(retort_server::http::serve(listener, app.clone(), async move {
            let _ = stop_rx.await;
        }));
        while !app.ready() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let url = format!("http://{addr}/v1/rank");
        // Warm the connection pool and the model before measuring.
        drive(&url, rate, candidates, 1.0, 0).await;

        let steady = drive(&url, rate, candidates, seconds, 1).await;

        let swapping = Arc::new(AtomicBool::new(true));
        let swaps = {
            let (swapping, base) = (swapping.clone(), format!("http://{addr}/v1/models/m"));
            tokio::spawn(async move {
                let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
                let post = |path: String| {
                    let client = client.clone();
                    async move {
                        let req = hyper::Request::post(path).body(Full::new(Bytes::new())).unwrap();
                        let r = client.request(req).await.unwrap();
                        let ok = r.status().is_success();
                        let _ = r.into_body().collect().await;
                        assert!(ok, "admin call failed");
                    }
                };
                let mut n = 0;
                while swapping.load(Ordering::Relaxed) {
                    post(format!("{base}/versions/1/load")).await;
                    post(format!("{base}/versions/1/promote")).await;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    post(format!("{base}/rollback")).await;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    n += 2;
                }
                n
            })
        };
        let during = drive(&url, rate, candidates, seconds, 2).await;
        swapping.store(false, Ordering::Relaxed);
        let swaps = swaps.await.unwrap();

        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "open loop at {rate} requests/s, {candidates} candidates, {seconds} s per phase, tract, 2 cores"
        );
        println!("| phase | requests | errors | p50 ms | p99 ms | max ms |");
        println!("| --- | ---: | ---: | ---: | ---: | ---: |");
        for (name, p) in [("steady", &steady), ("swapping", &during)] {
            println!(
                "| {name} | {} | {} | {:.2} | {:.2} | {:.2} |",
                p.latencies.len() + p.errors,
                p.errors,
                ms(p.quantile(0.5)),
                ms(p.quantile(0.99)),
                ms(p.quantile(1.0))
            );
        }
        println!(
            "{swaps} swaps (promote + rollback) during the second phase; p99 swapping / steady = {:.2}x",
            ms(during.quantile(0.99)) / ms(steady.quantile(0.99)).max(1e-9)
        );
        let _ = stop_tx.send(());
        let _ = server.await;
    });
}
