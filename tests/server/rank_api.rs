//! `POST /v1/rank` against a real server on a loopback port: ranking semantics, context-once
//! broadcasting, every error case, and the metrics they move.

use crate::common;

use crate::common::{TestServer, request, write_model};
use retort_model::encode::Encoder;
use retort_model::manifest::ContextRows;
use retort_model::request::decode;
use retort_server::config::Config;
use serde_json::{Value, json};

/// Expected head values per candidate from the plain-Rust reference forward pass (no engine).
fn reference_heads(
    arch: &retort_model::two_tower::TwoTower,
    w: &retort_model::two_tower::TwoTowerWeights,
    manifest: &retort_model::manifest::Manifest,
    body: &Value,
) -> Vec<Vec<f32>> {
    let bytes = serde_json::to_vec(body).unwrap();
    let req = decode(&bytes).unwrap();
    let encoder = Encoder::new(manifest);
    let encoded = encoder.encode(&req.context, &req.candidates).unwrap();
    arch.reference_forward(w, encoder.inputs(), &encoded)
}

fn ids(reply: &Value) -> Vec<String> {
    reply["items"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_string()).collect()
}

fn order_by(scores: &[f32]) -> Vec<String> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    idx.into_iter().map(|i| format!("c{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranks_by_the_combined_score_of_the_model_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let (arch, w, manifest) = write_model(dir.path(), "ranker", 11, ContextRows::Once);
    let server = TestServer::start_with_models(dir.path()).await;

    let mut body = request(200, 1);
    body["heads"] = json!(true);
    body["top_k"] = json!(200);
    let reply = server.rank(&body).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let got = reply.json();
    assert_eq!(got["model"], "ranker");
    assert_eq!(got["version"], "1");
    assert_eq!(got["degraded"], Value::Null);

    // Independently: reference forward pass, default objective, sort.
    let heads = reference_heads(&arch, &w, &manifest, &body);
    let names = ["play", "like", "skip", "long_listen"];
    let weights: Vec<f32> =
        names.iter().map(|h| manifest.objective.get(*h).copied().unwrap_or(0.0) as f32).collect();
    let scores: Vec<f32> = (0..200).map(|i| (0..4).map(|h| weights[h] * heads[h][i]).sum()).collect();
    assert_eq!(ids(&got), order_by(&scores));
    for item in got["items"].as_array().unwrap() {
        let i: usize = item["id"].as_str().unwrap()[1..].parse().unwrap();
        assert!((item["score"].as_f64().unwrap() as f32 - scores[i]).abs() < 1e-5);
        for (h, name) in names.iter().enumerate() {
            let v = item["heads"][name].as_f64().unwrap() as f32;
            assert!((v - heads[h][i]).abs() < 1e-5, "candidate {i} head {name}: {v} vs {}", heads[h][i]);
        }
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_k_keeps_the_best_k_in_order() {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), "ranker", 12, ContextRows::Once);
    let server = TestServer::start_with_models(dir.path()).await;
    let mut body = request(150, 2);
    body["top_k"] = json!(1000);
    let all = ids(&server.rank(&body).await.json());
    assert_eq!(all.len(), 150);
    body["top_k"] = json!(7);
    let top = server.rank(&body).await.json();
    assert_eq!(ids(&top), all[..7]);
    // Without one, the server's default: the best 100, and no per-head values unless asked.
    body.as_object_mut().unwrap().remove("top_k");
    let reply = server.rank(&body).await.json();
    assert_eq!(ids(&reply), all[..100]);
    assert!(reply["items"].as_array().unwrap().iter().all(|i| i.get("heads").is_none()), "{reply}");
    body["heads"] = json!(true);
    let reply = server.rank(&body).await.json();
    let first = &reply["items"][0];
    let heads = first["heads"].as_object().unwrap();
    assert_eq!(
        heads.keys().collect::<Vec<_>>(),
        ["like", "long_listen", "play", "skip"],
        "every serving head"
    );
    body["heads"] = json!("yes");
    let r = server.rank(&body).await;
    assert_eq!(r.status, 422);
    assert!(r.text().contains("`heads`"), "{}", r.text());
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_objective_override_reorders_by_the_heads_it_weighs() {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), "ranker", 13, ContextRows::Once);
    let server = TestServer::start_with_models(dir.path()).await;
    let mut body = request(50, 3);
    body["heads"] = json!(true);

    body["objective"] = json!({"skip": 1.0});
    let by_skip = server.rank(&body).await.json();
    let skip: Vec<f32> = by_skip["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["heads"]["skip"].as_f64().unwrap() as f32)
        .collect();
    assert!(skip.windows(2).all(|w| w[0] >= w[1]), "sorted by skip, descending: {skip:?}");
    for item in by_skip["items"].as_array().unwrap() {
        assert_eq!(item["score"], item["heads"]["skip"]);
    }

    body["objective"] = json!({"skip": -1.0});
    let avoid_skip = server.rank(&body).await.json();
    let mut reversed = ids(&by_skip);
    reversed.reverse();
    assert_eq!(ids(&avoid_skip), reversed, "negating the only weight reverses the order");

    let default = server.rank(&request(50, 3)).await.json();
    assert_ne!(ids(&default), ids(&by_skip), "the default objective ranks differently");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_once_scores_equal_the_context_fed_per_candidate() {
    let dir = tempfile::tempdir().unwrap();
    // Same weights (seed), two ways of feeding the context.
    write_model(dir.path(), "once", 14, ContextRows::Once);
    write_model(dir.path(), "per-candidate", 14, ContextRows::PerCandidate);
    let server = TestServer::start_with_models(dir.path()).await;
    for n in [1, 37, 500] {
        let mut body = request(n, 4 + n as u64);
        body["model"] = json!("once");
        let once = server.rank(&body).await.json();
        body["model"] = json!("per-candidate");
        let repeated = server.rank(&body).await.json();
        assert_eq!(ids(&once), ids(&repeated));
        for (a, b) in once["items"].as_array().unwrap().iter().zip(repeated["items"].as_array().unwrap()) {
            let (a, b) = (a["score"].as_f64().unwrap(), b["score"].as_f64().unwrap());
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gets_its_status_and_names_the_culprit() {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), "ranker", 15, ContextRows::Once);
    let mut config = Config::serving(dir.path());
    config.server.max_body_bytes = 64 * 1024;
    config.server.max_candidates = 50;
    let server = TestServer::start(config).await;
    let error = |reply: &common::Reply| reply.json()["error"].clone();

    let r = server.post("/v1/rank", "{\"context\": {}, \"candidates\": [").await;
    assert_eq!((r.status, error(&r)["code"].as_str()), (400, Some("malformed_json")));

    let r = server.post("/v1/rank", "{\"candidates\": []}").await;
    assert_eq!(r.status, 422);
    assert!(error(&r)["message"].as_str().unwrap().contains("context"), "{}", r.text());

    let mut body = request(5, 5);
    body["candidates"][3]["features"]["duration_s"] = json!("long");
    let r = server.rank(&body).await;
    assert_eq!(r.status, 422);
    let e = error(&r);
    assert_eq!(
        (e["code"].as_str(), e["candidate"].as_u64(), e["feature"].as_str()),
        (Some("invalid_feature"), Some(3), Some("duration_s"))
    );
    assert!(e["message"].as_str().unwrap().contains("candidate 3"), "{e}");

    // Finite in JSON, not once normalised: the model would see infinity.
    let mut body = request(5, 5);
    body["candidates"][2]["features"]["popularity"] = json!(1e308);
    let r = server.rank(&body).await;
    let e = error(&r);
    assert_eq!(
        (r.status, e["candidate"].as_u64(), e["feature"].as_str()),
        (422, Some(2), Some("popularity"))
    );
    assert!(e["message"].as_str().unwrap().contains("not finite"), "{e}");

    let mut body = request(5, 5);
    body["candidates"][4]["features"]["track_embedding"] = json!([1.0, 2.0]);
    let r = server.rank(&body).await;
    assert_eq!(
        (r.status, error(&r)["candidate"].as_u64(), error(&r)["feature"].as_str()),
        (422, Some(4), Some("track_embedding"))
    );

    let mut body = request(5, 5);
    body["context"]["hour"] = json!([1]);
    let r = server.rank(&body).await;
    let e = error(&r);
    assert_eq!((r.status, e["feature"].as_str(), e.get("candidate")), (422, Some("hour"), None));

    let mut body = request(5, 5);
    body["objective"] = json!({"plays": 1.0});
    let r = server.rank(&body).await;
    assert_eq!(
        (r.status, error(&r)["code"].as_str(), error(&r)["head"].as_str()),
        (422, Some("invalid_objective"), Some("plays"))
    );

    let mut body = request(5, 5);
    body["model"] = json!("nope");
    let r = server.rank(&body).await;
    assert_eq!((r.status, error(&r)["code"].as_str()), (404, Some("unknown_model")));
    assert!(error(&r)["message"].as_str().unwrap().contains("ranker"), "lists what is served");

    let r = server.rank(&request(51, 5)).await;
    assert_eq!((r.status, error(&r)["code"].as_str()), (413, Some("too_many_candidates")));

    let mut body = request(5, 5);
    body["context"]["padding"] = json!("x".repeat(70 * 1024));
    let r = server.rank(&body).await;
    assert_eq!((r.status, error(&r)["code"].as_str()), (413, Some("body_too_large")));

    let r = server.rank(&json!({"context": {}, "candidates": []})).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["items"], json!([]));

    // And after all that, the server still ranks.
    assert_eq!(server.rank(&request(5, 6)).await.status, 200);
    server.stop().await.unwrap();
}

// See: issue 14 (G, 2, 4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_values_and_routing_errors_are_named_in_the_error_shape() {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), "ranker", 15, ContextRows::Once);
    let server = TestServer::start_with_models(dir.path()).await;
    let error = |reply: &common::Reply| reply.json()["error"].clone();

    // A weight past f32's range would make every score null.
    let mut body = request(5, 5);
    body["objective"] = json!({"play": 1e39});
    let r = server.rank(&body).await;
    assert_eq!(
        (r.status, error(&r)["code"].as_str(), error(&r)["head"].as_str()),
        (422, Some("invalid_objective"), Some("play"))
    );
    // Finite weights whose sum overflows: refused, never answered with null scores.
    let mut body = request(20, 5);
    body["objective"] = json!({"play": 3.0e38, "like": 3.0e38, "skip": 3.0e38, "long_listen": 3.0e38});
    let r = server.rank(&body).await;
    if r.status == 200 {
        assert!(r.json()["items"].as_array().unwrap().iter().all(|i| i["score"].is_f64()), "{}", r.text());
    } else {
        assert_eq!((r.status, error(&r)["code"].as_str()), (422, Some("invalid_objective")), "{}", r.text());
        assert!(error(&r)["message"].as_str().unwrap().contains("overflow"), "{}", r.text());
    }

    // Integer ids past i64 and past 2^53: served, or named for what they are.
    let mut body = request(3, 5);
    body["context"]["user_id"] = json!(18_446_744_073_709_551_615u64);
    body["candidates"][0]["id"] = json!(18_446_744_073_709_551_615u64);
    let r = server.rank(&body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("18446744073709551615"), "{}", r.text());
    let mut body = request(3, 5);
    body["candidates"][1]["features"]["artist_id"] = json!(1e20);
    let r = server.rank(&body).await;
    assert_eq!((r.status, error(&r)["feature"].as_str()), (422, Some("artist_id")));
    assert!(error(&r)["message"].as_str().unwrap().contains("too large"), "{}", r.text());

    // Arrays are not requests, nor candidates.
    let r = server.post("/v1/rank", r#"[{"user_id": "u1"}, []]"#).await;
    assert_eq!((r.status, error(&r)["code"].as_str()), (422, Some("invalid_request")));
    let r = server.post("/v1/rank", r#"{"context": {}, "candidates": [["t1", {}]]}"#).await;
    assert_eq!(r.status, 422);
    assert!(error(&r)["message"].as_str().unwrap().contains("candidate 0"), "{}", r.text());
    let r = server.post("/v1/rank", r#"{"context": {}, "candidates": [], "top_k": -1}"#).await;
    assert_eq!(r.status, 422);
    assert!(error(&r)["message"].as_str().unwrap().contains("`top_k`"), "{}", r.text());

    // A non-positive budget header is the caller's mistake, not overload.
    for bad in ["0", "-5", "soon"] {
        let req = hyper::Request::post(server.url("/v1/rank"))
            .header("content-type", "application/json")
            .header("x-retort-budget-ms", bad)
            .body(http_body_util::Full::new(hyper::body::Bytes::from(
                serde_json::to_vec(&request(3, 1)).unwrap(),
            )))
            .unwrap();
        let r = server.send(req).await;
        assert_eq!((r.status, error(&r)["code"].as_str()), (422, Some("invalid_request")), "budget {bad}");
        assert!(error(&r)["message"].as_str().unwrap().contains("x-retort-budget-ms"), "{}", r.text());
    }

    // Routing errors carry the JSON error shape too.
    let r = server.get("/v1/nothing-here").await;
    assert_eq!((r.status, error(&r)["code"].as_str()), (404, Some("not_found")));
    assert!(error(&r)["message"].as_str().unwrap().contains("/v1/nothing-here"));
    let r = server.get("/v1/rank").await;
    assert_eq!((r.status, error(&r)["code"].as_str()), (405, Some("method_not_allowed")));
    assert_eq!(r.headers["content-type"], "application/json");
    server.stop().await.unwrap();
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_features_take_defaults_and_metrics_move() {
    let dir = tempfile::tempdir().unwrap();
    let (arch, w, manifest) = write_model(dir.path(), "ranker", 16, ContextRows::Once);
    let server = TestServer::start_with_models(dir.path()).await;

    // Candidate 1 has no features at all: every item feature takes its default.
    let body = json!({"request_id": "mine", "context": {"user_id": "u1"},
        "candidates": [{"id": "c0", "features": {"genre": "jazz"}}, {"id": "c1"}], "objective": {"play": 1.0},
        "heads": true});
    let reply = server.rank(&body).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let got = reply.json();
    assert_eq!(got["request_id"], "mine");
    let heads = reference_heads(&arch, &w, &manifest, &body);
    let c1 = got["items"].as_array().unwrap().iter().find(|i| i["id"] == "c1").unwrap();
    assert!((c1["heads"]["play"].as_f64().unwrap() as f32 - heads[0][1]).abs() < 1e-5);

    let timing = reply.headers.get("server-timing").unwrap().to_str().unwrap().to_string();
    for stage in ["decode;dur=", "encode;dur=", "queue;dur=", "infer;dur=", "rank;dur=", "total;dur="] {
        assert!(timing.contains(stage), "{timing}");
    }
    for stage in ["decode", "encode", "queue", "infer", "rank", "total"] {
        assert!(got["timing_us"][stage].is_u64(), "{}", got["timing_us"]);
    }

    let _ = server.rank(&json!({"context": {}, "candidates": [{"id": 1, "features": {"genre": 3.5}}]})).await;
    let text = server.get("/metrics").await.text();
    // track_id missing twice (both candidates), genre once (candidate 1) in the first request.
    assert_eq!(metric(&text, "retort_missing_features_total{model=\"ranker\",feature=\"track_id\"}"), 2.0);
    assert_eq!(metric(&text, "retort_missing_features_total{model=\"ranker\",feature=\"genre\"}"), 1.0);
    assert_eq!(metric(&text, "retort_missing_features_total{model=\"ranker\",feature=\"country\"}"), 1.0);
    assert_eq!(
        metric(&text, "retort_rank_duration_seconds_count{model=\"ranker\",version=\"1\",outcome=\"ok\"}"),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "retort_rank_duration_seconds_count{model=\"ranker\",version=\"1\",outcome=\"invalid_feature\"}"
        ),
        1.0
    );
    assert_eq!(metric(&text, "retort_rank_candidates_sum{model=\"ranker\",version=\"1\"}"), 2.0);
    assert_eq!(
        metric(&text, "retort_rank_stage_duration_seconds_count{model=\"ranker\",stage=\"infer\"}"),
        1.0
    );
    assert_eq!(metric(&text, "retort_models_loaded"), 1.0);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    let server = TestServer::start_with_models(&common::shipped_models()).await;
    let health = server.get("/healthz").await;
    assert_eq!((health.status, health.text().trim()), (200, "ok"));
    let ready = server.get("/readyz").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["models"], json!(["music-ranker/1", "music-ranker-fallback/1"]));
    // The fallback stands in for the student, so the student is the one a request without a
    // model name gets; the fallback answers when named.
    let r = server.rank(&request(3, 9)).await;
    assert_eq!((r.status, r.json()["model"].as_str()), (200, Some("music-ranker")));
    let mut named = request(3, 9);
    named["model"] = json!("music-ranker-fallback");
    let r = server.rank(&named).await;
    assert_eq!((r.status, r.json()["model"].as_str()), (200, Some("music-ranker-fallback")));
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_models_need_a_name_or_a_default() {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), "a", 17, ContextRows::Once);
    write_model(dir.path(), "b", 18, ContextRows::Once);
    let server = TestServer::start_with_models(dir.path()).await;
    let r = server.rank(&request(3, 1)).await;
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (422, Some("model_required")));
    server.stop().await.unwrap();

    let mut config = Config::serving(dir.path());
    config.rollout.default_model = Some("b".into());
    let server = TestServer::start(config).await;
    assert_eq!(server.rank(&request(3, 1)).await.json()["model"], "b");
    server.stop().await.unwrap();
}

/// The server's inference thread (one) held by a job until released.
struct PoolHeld {
    release: std::sync::mpsc::Sender<()>,
    job: tokio::task::JoinHandle<
        Result<((), retort_server::admission::pool::Picked), retort_server::admission::pool::PoolError>,
    >,
}

impl PoolHeld {
    /// Returns once the job runs.
    async fn new(server: &TestServer) -> PoolHeld {
        let (started, is_started) = tokio::sync::oneshot::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let app = server.app.clone();
        let job = tokio::spawn(async move {
            app.pool
                .run(move || {
                    let _ = started.send(());
                    let _ = released.recv();
                })
                .await
        });
        is_started.await.unwrap();
        PoolHeld { release, job }
    }

    async fn release(self) {
        self.release.send(()).unwrap();
        self.job.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_requests_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), "ranker", 19, ContextRows::Once);
    let mut config = Config::serving(dir.path());
    config.admission.inference_threads = 1;
    let mut server = TestServer::start(config).await;

    // Hold the only inference thread, so that every request below is received and queued
    // before the shutdown signal: then each of them is in flight, none merely in transit.
    let held = PoolHeld::new(&server).await;

    let url = server.url("/v1/rank");
    let body = serde_json::to_vec(&request(500, 7)).unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (url, body) = (url.clone(), body.clone());
            tokio::spawn(async move {
                let req = hyper::Request::post(url)
                    .body(http_body_util::Full::new(hyper::body::Bytes::from(body)))
                    .unwrap();
                common::client().request(req).await.map(|r| r.status().as_u16())
            })
        })
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while server.app.pool.queued() < 8 {
        assert!(std::time::Instant::now() < deadline, "requests never queued");
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    server.signal_stop();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    held.release().await;
    for t in tasks {
        assert_eq!(t.await.unwrap().expect("request dropped during shutdown"), 200);
    }
    server.join().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_models_directory_without_packages_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::serving(dir.path());
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    let listener = retort_server::http::bind(&config).await.unwrap();
    let app = retort_server::http::App::new(config).unwrap();
    let err = retort_server::http::serve(listener, app, std::future::pending()).await.unwrap_err();
    assert!(err.to_string().contains("holds no model package"), "{err}");
}

/// On one core a request's inference runs on the thread that decoded it while the pool is idle
/// (`inline_inference`): answers equal the pool's, and each inline run is counted. While the
/// pool's thread is busy, requests still queue for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn inline_inference_answers_as_the_pool_does() {
    use retort_server::config::InlineInference;
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), "ranker", 23, ContextRows::Once);
    let mut body = request(200, 5);
    body["heads"] = json!(true);
    let mut answers = Vec::new();
    for inline in [InlineInference::Off, InlineInference::On] {
        let mut config = Config::serving(dir.path());
        config.admission.inference_threads = 1;
        config.admission.inline_inference = inline;
        let server = TestServer::start(config).await;
        let reply = server.rank(&body).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let mut answer = reply.json();
        // Each server numbers requests without an id from its own random start.
        for differs in ["timing_us", "request_id"] {
            answer.as_object_mut().unwrap().remove(differs);
        }
        answers.push(answer);
        let inline_runs = |text: &str| metric(text, "retort_inference_inline_total");
        let counted = inline_runs(&server.get("/metrics").await.text());
        assert_eq!(counted, if inline == InlineInference::On { 1.0 } else { 0.0 }, "{inline:?}");

        // Hold the pool's one thread: a request now waits for it instead of running inline.
        let held = PoolHeld::new(&server).await;
        let queued = tokio::spawn({
            let (url, body) = (server.url("/v1/rank"), serde_json::to_vec(&body).unwrap());
            async move {
                let req = hyper::Request::post(url)
                    .header("content-type", "application/json")
                    .body(http_body_util::Full::new(hyper::body::Bytes::from(body)))
                    .unwrap();
                common::client().request(req).await.unwrap().status()
            }
        });
        for _ in 0..400 {
            if server.app.pool.queued() == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(server.app.pool.queued(), 1, "{inline:?}: the request waits for the busy pool");
        held.release().await;
        assert_eq!(queued.await.unwrap(), 200);
        assert_eq!(inline_runs(&server.get("/metrics").await.text()), counted, "{inline:?}");
        server.stop().await.unwrap();
    }
    assert_eq!(answers[0], answers[1]);
}
