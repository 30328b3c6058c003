//! Criterion benches on the shipped model: engine inference by candidate count (tract, and ort
//! where `ORT_DYLIB_PATH` is set and the `ort` feature is built), request decode + encode, and
//! the whole `POST /v1/rank` handler in-process (router to response body, no network).
//!
//! `cargo bench --features ort --bench rank`

#[path = "../tests/common/mod.rs"]
mod common;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use retort_model::Model;
use retort_model::engine::EngineKind;
use retort_model::request::decode;

const CANDIDATES: [usize; 4] = [1, 50, 500, 2000];

fn engines() -> Vec<EngineKind> {
    let mut kinds = vec![EngineKind::Tract];
    if cfg!(feature = "ort") && std::env::var_os("ORT_DYLIB_PATH").is_some() {
        kinds.push(EngineKind::Ort);
    } else {
        eprintln!("ort: skipped (build with --features ort and set ORT_DYLIB_PATH)");
    }
    kinds
}

fn inference(c: &mut Criterion) {
    let dir = common::shipped_models().join("music-ranker/1");
    let mut group = c.benchmark_group("infer");
    for kind in engines() {
        let model = Model::load(&dir, kind).expect("load the shipped model");
        for n in CANDIDATES {
            let body = serde_json::to_vec(&common::request(n, n as u64)).unwrap();
            let req = decode(&body).unwrap();
            let encoded = model.encode(&req.context, &req.candidates).unwrap();
            group.throughput(Throughput::Elements(n as u64));
            group.bench_with_input(BenchmarkId::new(kind.as_str(), n), &encoded, |b, encoded| {
                b.iter_batched(|| encoded.clone(), |e| model.infer(e).unwrap(), BatchSize::SmallInput)
            });
        }
    }
    group.finish();
}

fn decode_encode(c: &mut Criterion) {
    let model = Model::load(&common::shipped_models().join("music-ranker/1"), EngineKind::Tract).unwrap();
    let body = serde_json::to_vec(&common::request(500, 7)).unwrap();
    let mut group = c.benchmark_group("request");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("decode/500", |b| b.iter(|| decode(&body).unwrap()));
    group.bench_function("decode+encode/500", |b| {
        b.iter(|| {
            let req = decode(&body).unwrap();
            model.encode(&req.context, &req.candidates).unwrap()
        })
    });
    group.finish();
}

/// The whole handler through the router, in-process: decode, encode, the inference pool,
/// ranking and the JSON response, without a socket.
fn handler(c: &mut Criterion) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut group = c.benchmark_group("handler");
    for kind in engines() {
        let mut config = retort_server::config::Config::serving(common::shipped_models());
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        config.rollout.engine = kind;
        config.rollout.poll_interval_ms = 0;
        config.rollout.persist_warmup = false;
        // A server started the usual way loads the models; the bench then calls its router.
        let (app, stop) = runtime.block_on(async {
            let listener = retort_server::http::bind(&config).await.unwrap();
            let app = retort_server::http::App::new(config);
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            tokio::spawn(retort_server::http::serve(listener, app.clone(), async move {
                let _ = stopped.await;
            }));
            while !app.ready() {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            (app, stop)
        });
        let router = retort_server::http::router(app);
        let body = hyper::body::Bytes::from(serde_json::to_vec(&common::request(500, 11)).unwrap());
        group.throughput(Throughput::Elements(500));
        group.bench_function(BenchmarkId::new(kind.as_str(), 500), |b| {
            b.iter(|| {
                runtime.block_on(async {
                    let req = axum::http::Request::post("/v1/rank")
                        .header("content-type", "application/json")
                        .body(axum::body::Body::from(body.clone()))
                        .unwrap();
                    let response = router.clone().oneshot(req).await.unwrap();
                    assert_eq!(response.status(), 200);
                    response.into_body().collect().await.unwrap().to_bytes()
                })
            })
        });
        let _ = stop.send(());
    }
    group.finish();
}

criterion_group!(benches, inference, decode_encode, handler);
criterion_main!(benches);
