//! The impression log's writer: rows per second from the queue to a complete Parquet partition
//! (Arrow columns, encoding, compression, the rename), for answers of 100 shown candidates shaped
//! like the shipped model's: by catalog id, and with each candidate's features as overrides.
//!
//! `cargo bench --bench impressions`

use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use retort_log::{Impression, Log, Settings, Shown};

/// The server's allocator: the writer runs inside the server.
#[global_allocator]
static ALLOCATOR: retort_server::allocator::Allocator = retort_server::allocator::Allocator;

const ANSWERS: usize = 200;
const SHOWN: usize = 100;

fn answers(overrides: bool) -> Vec<Impression> {
    let mut rng = retort_model::rng::SplitMix64::new(7);
    let heads: Arc<[String]> = Arc::from(vec!["play".to_string(), "like".to_string(), "skip".to_string()]);
    (0..ANSWERS)
        .map(|n| Impression {
            request_id: format!("retort-3f9a01c2-{n:x}"),
            arrived_ms: 1_764_720_000_000 + n as i64,
            model: "music-ranker".into(),
            version: "1".into(),
            catalog: Some(("music".into(), "1".into())),
            context: format!(
                r#"{{"user_id":"u{}","country":"SE","hour":{},"account_age_days":{}}}"#,
                rng.below(100_000),
                rng.below(24),
                rng.below(2000)
            ),
            degraded: None,
            sample_rate: 1.0,
            heads: heads.clone(),
            shown: (0..SHOWN)
                .map(|i| Shown {
                    item_id: format!("t{}", rng.below(1_000_000)),
                    position: i as u32,
                    score: Some(rng.next_f64() as f32),
                    heads: (0..3).map(|_| rng.next_f64() as f32).collect(),
                    overrides: overrides.then(|| {
                        let embedding: Vec<String> = (0..8).map(|_| format!("{}", rng.uniform(-1.0, 1.0))).collect();
                        format!(
                            r#"{{"track_id":"t{}","artist_id":"a{}","genre":"jazz","duration_s":{},"popularity":{},"track_embedding":[{}]}}"#,
                            rng.below(100_000),
                            rng.below(500),
                            rng.uniform(60.0, 420.0),
                            rng.next_f64(),
                            embedding.join(",")
                        )
                    }),
                })
                .collect(),
        })
        .collect()
}

fn writer(c: &mut Criterion) {
    let mut group = c.benchmark_group("impression_log");
    group.throughput(Throughput::Elements((ANSWERS * SHOWN) as u64));
    group.sample_size(20);
    for (label, overrides) in [("ids", false), ("features", true)] {
        let sent = answers(overrides);
        group.bench_function(label, |b| {
            b.iter_batched(
                || (tempfile::tempdir().unwrap(), sent.clone()),
                |(dir, sent)| {
                    let log = Log::<Impression>::start(Settings {
                        dir: dir.path().to_path_buf(),
                        queue_rows: (ANSWERS * SHOWN) as u64,
                        rotate_rows: u64::MAX,
                        rotate_after: Duration::from_secs(3600),
                    })
                    .unwrap();
                    for answer in sent {
                        assert!(log.submit(answer));
                    }
                    log.close();
                    dir
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, writer);
criterion_main!(benches);
