//! The limit a server's latency is measured against: the shipped model's own time per request
//! in-process, on one thread, with nothing else running, as percentiles (criterion reports
//! means). `loadtest/compare.sh` sets the server's end-to-end p50/p99 beside these.
//!
//!     cargo bench --features ort --bench limit [-- [ids] CANDIDATES RUNS]      (defaults 500 3000)
//!
//! With `ids`, the candidates are ids of the shipped catalog (`catalogs/music/1`), other ids
//! each run as traffic sends them, and the model serves with its item tower apart: the stages
//! are then the ranker's inference and decode + catalog lookup + encode + inference.
//!
//! Prints a table, and writes target/compare/limit.json.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use retort_model::Model;
use retort_model::catalog::{file, look_up};
use retort_model::engine::EngineKind;
use retort_model::item_tower::ItemVectors;
use retort_model::request::decode;
use serde_json::json;

fn quantile(sorted: &[Duration], q: f64) -> f64 {
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1].as_secs_f64() * 1e3
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let by_id = args.first().is_some_and(|a| a == "ids");
    if by_id {
        args.remove(0);
    }
    let candidates: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(500);
    let runs: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3000);
    let mut kinds = vec![EngineKind::Tract];
    if cfg!(feature = "ort") && std::env::var_os("ORT_DYLIB_PATH").is_some() {
        kinds.push(EngineKind::Ort);
    }
    let dir = common::shipped_models().join("music-ranker/1");
    let catalog = by_id.then(|| {
        std::sync::Arc::new(file::read(&common::shipped_models().join("../catalogs/music/1")).unwrap())
    });
    let bodies: Vec<Vec<u8>> = (0..16usize)
        .map(|s| match &catalog {
            Some(catalog) => {
                // Other ids in every body, spread over the catalog, so lookups miss the cache.
                let ids: Vec<String> = (0..candidates)
                    .map(|i| format!("t{}", 1 + (i * 7919 + s * 104729) % catalog.len()))
                    .collect();
                serde_json::to_vec(
                    &json!({"context": {"user_id": format!("u{s}"), "hour": 21}, "candidates": ids}),
                )
                .unwrap()
            }
            None => serde_json::to_vec(&common::request(candidates, s as u64)).unwrap(),
        })
        .collect();
    let mut rows = Vec::new();
    let shape = if by_id { "ids" } else { "candidates with features" };
    println!("shipped student, {candidates} {shape}, {runs} runs on one thread");
    println!("| engine | stage | p50 ms | p99 ms | max ms |");
    println!("| --- | --- | ---: | ---: | ---: |");
    for kind in kinds {
        let model = Model::load(&dir, kind).expect("load the shipped model");
        let vectors = catalog.as_ref().map(|c| ItemVectors::compute(&model, c, &[]).unwrap().unwrap());
        let (mut infer, mut whole) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
        for i in 0..runs + runs / 10 {
            let body = &bodies[i % bodies.len()];
            let started = Instant::now();
            let req = decode(body).unwrap();
            let encoded = match &catalog {
                Some(catalog) => {
                    let found = look_up(Some(catalog), &req.candidates, None);
                    model.encode_found(&req.context, &found, vectors.as_ref()).unwrap()
                }
                None => model.encode(&req.context, &req.candidates).unwrap(),
            };
            let inferred = Instant::now();
            std::hint::black_box(model.infer(encoded).unwrap());
            // The first tenth warms caches and buffers and is not counted.
            if i >= runs / 10 {
                infer.push(inferred.elapsed());
                whole.push(started.elapsed());
            }
        }
        infer.sort();
        whole.sort();
        let whole_stage = if by_id { "decode+look_up+encode+infer" } else { "decode+encode+infer" };
        for (stage, times) in [("infer", &infer), (whole_stage, &whole)] {
            let (p50, p99, max) = (quantile(times, 0.5), quantile(times, 0.99), quantile(times, 1.0));
            println!("| {} | {stage} | {p50:.3} | {p99:.3} | {max:.3} |", kind.as_str());
            rows.push(
                json!({"engine": kind.as_str(), "stage": stage, "p50_ms": p50, "p99_ms": p99, "max_ms": max}),
            );
        }
    }
    let out = std::path::Path::new("target/compare");
    std::fs::create_dir_all(out).unwrap();
    let report = json!({"candidates": candidates, "by_id": by_id, "runs": runs, "rows": rows});
    let name = if by_id { "limit-ids.json" } else { "limit.json" };
    std::fs::write(out.join(name), serde_json::to_vec_pretty(&report).unwrap()).unwrap();
}
