//! Criterion benches on the shipped model: engine inference by candidate count (tract, and ort
//! where `ORT_DYLIB_PATH` is set and the `ort` feature is built), request decode + encode, the
//! whole `POST /v1/rank` handler in-process (router to response body, no network) with the
//! candidates' features in the request and as ids of the shipped catalog, and catalog loads and
//! lookups at a million items.
//!
//! `cargo bench --features ort --bench rank`

#[path = "../tests/common/mod.rs"]
mod common;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use retort_model::Model;
use retort_model::engine::EngineKind;
use retort_model::request::decode;

const CANDIDATES: [usize; 4] = [1, 50, 500, 2000];

/// The engines benched, by label: `tract` as served (the graphs it can on retort's native
/// interpreter), `tract-only` (`RETORT_NATIVE=off`, every graph on tract) and `ort` where built.
fn engines() -> Vec<(&'static str, EngineKind, bool)> {
    let mut kinds = vec![("tract", EngineKind::Tract, true), ("tract-only", EngineKind::Tract, false)];
    if cfg!(feature = "ort") && std::env::var_os("ORT_DYLIB_PATH").is_some() {
        kinds.push(("ort", EngineKind::Ort, true));
    } else {
        eprintln!("ort: skipped (build with --features ort and set ORT_DYLIB_PATH)");
    }
    kinds
}

/// Runs `load` with the native interpreter on or off (models read the switch when they load).
fn loading<T>(native: bool, load: impl FnOnce() -> T) -> T {
    let switch = retort_model::engine::native::SWITCH;
    // SAFETY: the benches set up one at a time, before any thread reads the environment.
    unsafe { std::env::set_var(switch, if native { "on" } else { "off" }) };
    let loaded = load();
    unsafe { std::env::remove_var(switch) };
    loaded
}

fn inference(c: &mut Criterion) {
    let dir = common::shipped_models().join("music-ranker/1");
    let mut group = c.benchmark_group("infer");
    for (label, kind, native) in engines() {
        let model = loading(native, || Model::load(&dir, kind).expect("load the shipped model"));
        for n in CANDIDATES {
            let body = serde_json::to_vec(&common::request(n, n as u64)).unwrap();
            let req = decode(&body).unwrap();
            let encoded = model.encode(&req.context, &req.candidates).unwrap();
            group.throughput(Throughput::Elements(n as u64));
            group.bench_with_input(BenchmarkId::new(label, n), &encoded, |b, encoded| {
                b.iter_batched(|| encoded.clone(), |e| model.infer(e).unwrap(), BatchSize::SmallInput)
            });
        }
    }
    group.finish();
}

/// The ranker alone: candidates as ids of the shipped catalog, their item-tower outputs
/// computed ahead, so inference runs only the context tower, the join and the heads.
fn ranker(c: &mut Criterion) {
    use retort_model::catalog::{file, look_up};
    use retort_model::item_tower::ItemVectors;
    let dir = common::shipped_models().join("music-ranker/1");
    let catalog =
        std::sync::Arc::new(file::read(&common::shipped_models().join("../catalogs/music/1")).unwrap());
    let mut group = c.benchmark_group("infer");
    for (label, kind, native) in engines() {
        let model = loading(native, || Model::load(&dir, kind).expect("load the shipped model"));
        let vectors = ItemVectors::compute(&model, &catalog, &[]).unwrap().unwrap();
        for n in [50, 500] {
            let ids: Vec<String> = (0..n).map(|i| format!("\"t{}\"", i * 6)).collect();
            let body = format!(
                r#"{{"context": {{"user_id": "u42", "hour": 21}}, "candidates": [{}]}}"#,
                ids.join(",")
            );
            let req = decode(body.as_bytes()).unwrap();
            let found = look_up(Some(&catalog), &req.candidates, None);
            let encoded = model.encode_found(&req.context, &found, Some(&vectors)).unwrap();
            assert!(
                encoded.tower.as_ref().unwrap().rows.is_empty(),
                "every candidate's tower output is known"
            );
            group.throughput(Throughput::Elements(n as u64));
            group.bench_with_input(BenchmarkId::new(format!("{label}/ranker"), n), &encoded, |b, encoded| {
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

/// The shipped models with their `[item_tower]` left out: served whole, as before the tower ran
/// apart, for a side-by-side figure.
fn shipped_whole(dir: &std::path::Path) {
    use retort_model::manifest::Manifest;
    for name in ["music-ranker", "music-ranker-fallback"] {
        let from = common::shipped_models().join(name).join("1");
        let mut manifest = Manifest::from_path(&from.join(retort_model::package::MANIFEST)).unwrap();
        manifest.item_tower = None;
        let graph = std::fs::read(from.join(retort_model::package::GRAPH)).unwrap();
        retort_model::package::write(dir, &manifest, &graph).unwrap();
    }
}

/// The whole handler through the router, in-process: decode, encode, the inference pool,
/// ranking and the JSON response, without a socket; the shipped models served whole and with
/// their item towers apart (their catalog items' tower outputs computed at load), and apart with
/// the impression log on (every request, all 100 listed candidates: the request path's share of
/// its cost, the writer's thread running beside it).
fn handler(c: &mut Criterion) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let whole = tempfile::tempdir().unwrap();
    shipped_whole(whole.path());
    let logs = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("handler");
    for (label, kind, native) in engines() {
        let shipped = common::shipped_models();
        for (served, models, logged) in [
            ("whole", whole.path().to_path_buf(), false),
            ("apart", shipped.clone(), false),
            ("apart-logged", shipped, true),
        ] {
            let mut config = retort_server::config::Config::serving(models);
            if logged {
                config.impressions.impressions_dir = Some(logs.path().join(label));
            }
            config.server.listen = "127.0.0.1:0".parse().unwrap();
            config.rollout.engine = kind;
            config.rollout.poll_interval_ms = 0;
            config.rollout.persist_warmup = false;
            config.rollout.catalogs_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("catalogs");
            // A server started the usual way loads the models; the bench then calls its router.
            let (app, stop) = loading(native, || {
                runtime.block_on(async {
                    let listener = retort_server::http::bind(&config).await.unwrap();
                    let app = retort_server::http::App::new(config).unwrap();
                    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                    tokio::spawn(retort_server::http::serve(listener, app.clone(), async move {
                        let _ = stopped.await;
                    }));
                    while !app.ready() {
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                    (app, stop)
                })
            });
            let router = retort_server::http::router(app);
            let features = common::request(500, 11);
            // The same context, the candidates as ids of the shipped catalog (`catalogs/music/1`).
            let ids: Vec<String> = (0..500).map(|i| format!("t{}", i * 6)).collect();
            let by_id = serde_json::json!({"context": features["context"], "candidates": ids});
            group.throughput(Throughput::Elements(500));
            for (shape, request) in [("features", &features), ("ids", &by_id)] {
                let body = hyper::body::Bytes::from(serde_json::to_vec(request).unwrap());
                eprintln!("handler/{shape}: a {} byte body", body.len());
                let id = BenchmarkId::new(format!("{label}/{served}/{shape}"), 500);
                group.bench_function(id, |b| {
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
            }
            let _ = stop.send(());
        }
    }
    group.finish();
}

/// A million items shaped like the demo's tracks (two categorical columns, two numbers, an
/// 8-dimensional embedding): reading the package, and looking up a request's 500 ids.
fn catalog(c: &mut Criterion) {
    use retort_model::catalog::{Builder, Cell, ColumnKind, file};
    const ITEMS: usize = 1_000_000;
    let columns: Vec<(String, ColumnKind)> = [
        ("artist_id", ColumnKind::Categorical),
        ("genre", ColumnKind::Categorical),
        ("duration_s", ColumnKind::Number),
        ("popularity", ColumnKind::Number),
        ("track_embedding", ColumnKind::Vector { dim: 8 }),
    ]
    .into_iter()
    .map(|(n, k)| (n.to_string(), k))
    .collect();
    let mut rng = retort_model::rng::SplitMix64::new(1);
    let mut b = Builder::new("bench", "1", "track_id", &columns, ITEMS).unwrap();
    for i in 0..ITEMS {
        let embedding: Vec<f64> = (0..8).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let cells = [
            Cell::Text(format!("a{}", rng.below(100_000)).into()),
            Cell::Text(format!("g{}", rng.below(64)).into()),
            Cell::Number(rng.uniform(60.0, 420.0)),
            Cell::Number(rng.next_f64()),
            Cell::Vector(embedding.into()),
        ];
        b.push(&format!("t{i}"), &cells).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let at = file::write(dir.path(), &b.finish(), "bench").unwrap();
    let bytes = std::fs::metadata(at.join(file::ITEMS)).unwrap().len();
    let rss = || {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        statm.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()).unwrap_or(0) * 4096
    };
    let before = rss();
    let started = std::time::Instant::now();
    let catalog = file::read(&at).unwrap();
    eprintln!(
        "catalog: {ITEMS} items, items.bin {:.1} MB, read in {:.2} s; {:.1} MB held, resident grew {:.1} MB",
        bytes as f64 / 1e6,
        started.elapsed().as_secs_f64(),
        catalog.heap_bytes() as f64 / 1e6,
        rss().saturating_sub(before) as f64 / 1e6
    );
    let mut group = c.benchmark_group("catalog");
    group.sample_size(10);
    group.bench_function("read/1M", |b| b.iter(|| file::read(&at).unwrap().len()));
    let req_body = serde_json::to_vec(&serde_json::json!({
        "context": {},
        "candidates": (0..500).map(|i| format!("t{}", i * 1999)).collect::<Vec<_>>(),
    }))
    .unwrap();
    let req = decode(&req_body).unwrap();
    // A day's delta: 10k items, half of them changed, half new, applied over the serving
    // million (only the delta is read).
    let mut d = Builder::new("bench", "2", "track_id", &columns, 10_000).unwrap();
    for i in 0..10_000 {
        let id = if i % 2 == 0 { format!("t{}", i * 97) } else { format!("new-{i}") };
        let cells = [
            Cell::Text("a1".into()),
            Cell::Text("g1".into()),
            Cell::Number(200.0),
            Cell::Number(0.5),
            Cell::Vector(vec![0.0; 8].into()),
        ];
        d.push(&id, &cells).unwrap();
    }
    let delta = file::write_delta(dir.path(), &d.finish(), "1", "bench").unwrap();
    group.bench_function("delta/10k-over-1M", |b| {
        b.iter(|| file::read_over(&delta, Some(&catalog)).unwrap().len())
    });
    group.sample_size(50);
    group.throughput(Throughput::Elements(500));
    group.bench_function("look_up/500", |b| {
        b.iter(|| retort_model::catalog::look_up(Some(&catalog), &req.candidates, None).sources.len())
    });
    group.finish();
    served_catalog(c, &catalog, &delta);
}

/// The shipped student over a million items: its item tower's outputs for all of them
/// computed, and a request's 500 random ids encoded, by the whole graph (each candidate's
/// features read from the catalog's columns) and with the tower apart (each candidate's tower
/// output copied). Every iteration asks for other ids, as traffic does, so the caches miss.
fn served_catalog(c: &mut Criterion, catalog: &retort_model::catalog::Catalog, delta: &std::path::Path) {
    use retort_model::catalog::{file, look_up};
    use retort_model::item_tower::ItemVectors;
    use retort_model::manifest::Manifest;
    use std::sync::Arc;
    let dir = common::shipped_models().join("music-ranker/1");
    let apart = Model::load(&dir, EngineKind::Tract).unwrap();
    let whole_manifest = Manifest { item_tower: None, ..apart.manifest.clone() };
    let graph = std::fs::read(dir.join(retort_model::package::GRAPH)).unwrap();
    let whole = Model::from_parts(whole_manifest, &graph, &dir, EngineKind::Tract).unwrap();
    let catalog = Arc::new(catalog.clone());
    let started = std::time::Instant::now();
    let vectors = ItemVectors::compute(&apart, &catalog, &[]).unwrap().unwrap();
    eprintln!(
        "item tower outputs: {} items in {:.2} s on one thread, {:.1} MB",
        catalog.len(),
        started.elapsed().as_secs_f64(),
        vectors.heap_bytes() as f64 / 1e6
    );
    let layered = Arc::new(file::read_over(delta, Some(&catalog)).unwrap());
    let mut group = c.benchmark_group("catalog");
    group.sample_size(10);
    group.bench_function("vectors/10k-delta-over-1M", |b| {
        b.iter(|| ItemVectors::compute(&apart, &layered, &[&vectors]).unwrap().unwrap().heap_bytes())
    });
    let mut rng = retort_model::rng::SplitMix64::new(9);
    let bodies: Vec<Vec<u8>> = (0..256)
        .map(|_| {
            let ids: Vec<String> =
                (0..500).map(|_| format!("t{}", rng.below(catalog.len() as u64))).collect();
            serde_json::to_vec(&serde_json::json!({"context": {"user_id": "u1"}, "candidates": ids})).unwrap()
        })
        .collect();
    let requests: Vec<_> = bodies.iter().map(|b| decode(b).unwrap()).collect();
    group.sample_size(50);
    group.throughput(Throughput::Elements(500));
    for (served, model) in [("whole", &whole), ("apart", &apart)] {
        let mut next = 0;
        group.bench_function(format!("encode/{served}/500-random-of-1M"), |b| {
            b.iter(|| {
                next = (next + 1) % requests.len();
                let req = &requests[next];
                let vectors = model.tower().map(|_| &vectors);
                let found = look_up(Some(&catalog), &req.candidates, vectors);
                model.encode_found(&req.context, &found, vectors).unwrap().rows
            })
        });
    }
    group.finish();
}

criterion_group!(benches, inference, ranker, decode_encode, handler, catalog);
criterion_main!(benches);
