//! Shared helpers for integration tests: a real retort server on an ephemeral loopback port and
//! a real HTTP client.
#![allow(dead_code)]

pub mod overload;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use retort_model::manifest::{ContextRows, Manifest};
use retort_model::two_tower::{TwoTower, TwoTowerWeights};
use retort_model::{onnx, package, scaffold};
use retort_server::config::{Config, InlineInference};
use retort_server::http::{App, ServeError};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The allocator of the `retort` binary, as in production.
#[global_allocator]
static ALLOCATOR: retort_server::allocator::Allocator = retort_server::allocator::Allocator;

/// The repository's shipped models.
pub fn shipped_models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
    client: Client<HttpConnector, Full<Bytes>>,
}

pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl TestServer {
    /// Starts a server on `127.0.0.1:0` with `config` and waits until it is ready. The shipped
    /// models read the shipped catalog (`catalogs/`, as `retort serve` from the repository root
    /// does); a test's own models read a catalog only where the test puts one. Inference runs
    /// inline only where a test asks for it: tests that slow the engine or hold the pool expect
    /// the async workers free, which `auto` would not leave them on a one-core test machine.
    pub async fn start(mut config: Config) -> TestServer {
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        if config.admission.inline_inference == InlineInference::Auto {
            config.admission.inline_inference = InlineInference::Off;
        }
        if config.rollout.catalogs_dir == Config::default().rollout.catalogs_dir {
            config.rollout.catalogs_dir = match config.rollout.models_dir == shipped_models() {
                true => shipped_models().with_file_name("catalogs"),
                false => config.rollout.models_dir.join("catalogs"),
            };
        }
        let listener = retort_server::http::bind(&config).await.expect("bind loopback");
        let addr = listener.local_addr().unwrap();
        let app = App::new(config).expect("the impression log starts");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(retort_server::http::serve(listener, app.clone(), async move {
            let _ = stopped.await;
        }));
        let server = TestServer { addr, app, stop: Some(stop), task: Some(task), client: client() };
        for _ in 0..500 {
            if server.get("/readyz").await.status == 200 {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("server on {addr} did not become ready within 5 s");
    }

    pub async fn start_with_models(models_dir: &Path) -> TestServer {
        TestServer::start(Config::serving(models_dir)).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn get(&self, path: &str) -> Reply {
        let req = hyper::Request::get(self.url(path)).body(Full::new(Bytes::new())).unwrap();
        self.send(req).await
    }

    pub async fn post(&self, path: &str, body: impl Into<Bytes>) -> Reply {
        let req = hyper::Request::post(self.url(path))
            .header("content-type", "application/json")
            .body(Full::new(body.into()))
            .unwrap();
        self.send(req).await
    }

    pub async fn rank(&self, body: &serde_json::Value) -> Reply {
        self.post("/v1/rank", serde_json::to_vec(body).unwrap()).await
    }

    pub async fn send(&self, req: hyper::Request<Full<Bytes>>) -> Reply {
        let response = tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
            .await
            .expect("request timed out")
            .expect("request failed");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.expect("read body").to_bytes();
        Reply { status, headers, body }
    }

    /// Signals shutdown and waits for the server to drain and return.
    pub async fn stop(mut self) -> Result<(), ServeError> {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(30), self.task.take().unwrap())
            .await
            .expect("server did not stop")
            .expect("server task panicked")
    }

    /// Sends the shutdown signal without waiting.
    pub fn signal_stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    pub async fn join(mut self) -> Result<(), ServeError> {
        tokio::time::timeout(Duration::from_secs(30), self.task.take().unwrap())
            .await
            .expect("server did not stop")
            .expect("server task panicked")
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A model package built from the default architecture with `seed`, written under `dir` as
/// `name/1`, with the context fed as `context_rows`. Returns the architecture and weights so a
/// test can compute expected outputs independently.
pub fn write_model(
    dir: &Path,
    name: &str,
    seed: u64,
    context_rows: ContextRows,
) -> (TwoTower, TwoTowerWeights, Manifest) {
    let (mut manifest, _) = scaffold::seeded_package(name, "1", seed);
    manifest.model.context_rows = context_rows;
    let arch = scaffold::music_architecture();
    let weights = arch.random_weights(seed);
    let graph = onnx::to_bytes(&arch.to_onnx(&weights, name));
    package::write(dir, &manifest, &graph).unwrap();
    (arch, weights, manifest)
}

/// Publishes version `version` of model `m`: the shipped music architecture with weights drawn
/// from `seed`.
pub fn write_version(dir: &Path, version: &str, seed: u64) {
    let (manifest, graph) = scaffold::seeded_package("m", version, seed);
    package::write(dir, &manifest, &graph).unwrap();
}

/// A request with `n` candidates whose features vary with `seed`, some left out.
pub fn request(n: usize, seed: u64) -> serde_json::Value {
    let mut rng = retort_model::rng::SplitMix64::new(seed);
    let genres = ["rock", "jazz", "pop", "folk", "metal"];
    let candidates: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            let mut f = serde_json::Map::new();
            f.insert("track_id".into(), format!("t{}", rng.below(100_000)).into());
            f.insert("artist_id".into(), format!("a{}", rng.below(500)).into());
            if i % 3 != 0 {
                f.insert("genre".into(), genres[rng.below(5) as usize].into());
            }
            f.insert("duration_s".into(), rng.uniform(60.0, 420.0).into());
            f.insert("popularity".into(), rng.next_f64().into());
            if i % 2 == 0 {
                let v: Vec<f64> = (0..8).map(|_| rng.uniform(-1.0, 1.0)).collect();
                f.insert("track_embedding".into(), v.into());
            }
            serde_json::json!({"id": format!("c{i}"), "features": f})
        })
        .collect();
    serde_json::json!({
        "context": {"user_id": format!("u{}", rng.below(1000)), "country": "SE", "hour": rng.below(24), "account_age_days": 100},
        "candidates": candidates,
    })
}
