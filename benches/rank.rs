//! Criterion benches on the shipped model: engine inference by candidate count (tract, and ort
//! where `ORT_DYLIB_PATH` is set and the `ort` feature is built), and request decode + encode.
//!
//! `cargo bench --features ort --bench rank`

#[path = "../tests/common/mod.rs"]
mod common;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use retort::model::Model;
use retort::model::engine::EngineKind;
use retort::serve::request::decode;

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

criterion_group!(benches, inference, decode_encode);
criterion_main!(benches);
