//! Random and truncated bodies never panic the decoder or the encoder, and never stop the
//! server from answering.

mod common;

use common::{TestServer, request};
use retort::model::Model;
use retort::model::engine::EngineKind;
use retort::rng::SplitMix64;
use retort::serve::request::decode;

/// Mutations of a valid body: truncations, byte flips, spliced JSON fragments, random bytes.
fn bodies(count: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = SplitMix64::new(seed);
    let valid = serde_json::to_vec(&request(20, seed)).unwrap();
    let fragments: [&[u8]; 14] = [
        b"{",
        b"}",
        b"[",
        b"]",
        b"\"",
        b":",
        b",",
        b"null",
        b"1e999",
        b"-0",
        b"\"\\u0000\"",
        b"[[[[",
        b"{\"a\":",
        b"\xff\xfe",
    ];
    (0..count)
        .map(|i| {
            let mut b = valid.clone();
            match i % 4 {
                0 => b.truncate(rng.below(valid.len() as u64) as usize),
                1 => {
                    for _ in 0..1 + rng.below(8) {
                        let at = rng.below(b.len() as u64) as usize;
                        b[at] = rng.below(256) as u8;
                    }
                }
                2 => {
                    let at = rng.below(b.len() as u64) as usize;
                    let frag = fragments[rng.below(fragments.len() as u64) as usize];
                    b.splice(at..at, frag.iter().copied());
                }
                _ => b = (0..rng.below(200)).map(|_| rng.below(256) as u8).collect(),
            }
            b
        })
        .collect()
}

#[test]
fn thousands_of_broken_bodies_never_panic_decode_or_encode() {
    let model = Model::load(&common::shipped_models().join("music-ranker/1"), EngineKind::Tract).unwrap();
    let mut decoded = 0;
    for body in bodies(5000, 1) {
        if let Ok(req) = decode(&body) {
            decoded += 1;
            // Whatever decodes must encode or fail cleanly.
            let _ = model.encode(&req.context, &req.candidates);
        }
    }
    // Some mutations (e.g. a flipped digit) still decode: the encoder saw real work.
    assert!(decoded > 50, "only {decoded} bodies decoded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_answers_broken_bodies_with_client_errors_and_keeps_serving() {
    let server = TestServer::start_with_models(&common::shipped_models()).await;
    for body in bodies(300, 2) {
        let reply = server.post("/v1/rank", body).await;
        assert!(
            reply.status == 200 || (400..500).contains(&reply.status),
            "status {}: {}",
            reply.status,
            reply.text()
        );
    }
    assert_eq!(server.rank(&request(10, 3)).await.status, 200);
    server.stop().await.unwrap();
}
