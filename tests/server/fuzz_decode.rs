//! Random and truncated bodies never panic the decoder or the encoder, and never stop the
//! server from answering.

use crate::common;

use crate::common::{TestServer, request};
use retort_model::Model;
use retort_model::encode::Location;
use retort_model::engine::EngineKind;
use retort_model::request::{DecodeError, decode};
use retort_model::rng::SplitMix64;

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
    let (mut decoded, mut encoded) = (0, 0);
    let features: Vec<&str> = model.manifest.features.iter().map(|f| f.name.as_str()).collect();
    for body in bodies(5000, 1) {
        match decode(&body) {
            Ok(req) => {
                decoded += 1;
                // Whatever decodes encodes, or names a feature of the model and a real place.
                match model.encode(&req.context, &req.candidates) {
                    Ok(e) => {
                        encoded += 1;
                        assert_eq!(e.rows, req.candidates.len());
                    }
                    Err(e) => {
                        assert!(features.contains(&e.feature.as_str()), "{e}");
                        if let Location::Candidate(i) = e.location {
                            assert!(i < req.candidates.len(), "{e}");
                        }
                        assert!(!e.problem.is_empty());
                    }
                }
            }
            Err(DecodeError::Malformed(m) | DecodeError::Invalid(m)) => {
                assert!(
                    !m.trim().is_empty(),
                    "an empty decode error for {:?}",
                    String::from_utf8_lossy(&body)
                )
            }
        }
    }
    // Some mutations (e.g. a flipped digit) still decode: the encoder saw real work.
    assert!(decoded > 50 && encoded > 20, "only {decoded} bodies decoded, {encoded} encoded");
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
        if reply.status != 200 {
            let error = &reply.json()["error"];
            assert!(error["code"].is_string() && error["message"].is_string(), "{}", reply.text());
        }
    }
    assert_eq!(server.rank(&request(10, 3)).await.status, 200);
    server.stop().await.unwrap();
}
