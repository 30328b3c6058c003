//! `POST /v1/feedback` on a real server: accepted events land in the feedback log as sent; a
//! bad event is named by its index and field and nothing of its batch is kept.

use std::path::Path;

use retort_log::{feedback, partition};
use retort_server::config::Config;
use serde_json::json;

use crate::common::{TestServer, shipped_models};

fn events(dir: &Path) -> Vec<(retort_log::Event, i64)> {
    let parts = partition::list(dir, "feedback").unwrap();
    parts.iter().flat_map(|p| feedback::read(&p.path).unwrap()).collect()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_logged_as_sent_and_a_bad_one_refuses_its_batch_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::serving(shipped_models());
    config.impressions.feedback_dir = Some(dir.path().to_path_buf());
    let server = TestServer::start(config).await;
    let before = now_ms();
    let sent = json!({"events": [
        {"request_id": "r1", "item_id": "t7", "event": "play", "ts_ms": 1_764_720_000_123_i64},
        {"request_id": "r1", "item_id": 42, "event": "listen_seconds", "ts_ms": 1_764_720_000_500_i64, "value": 187.5},
        {"request_id": "r2", "item_id": "t9", "event": "skip"},
    ]});
    let reply = server.post("/v1/feedback", serde_json::to_vec(&sent).unwrap()).await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    assert_eq!(reply.json(), json!({"accepted": 3}));

    for (body, status, named) in [
        (
            json!({"events": [{"request_id": "r3", "item_id": "t1", "event": "play"}, {"request_id": "r3", "item_id": "t1", "event": ""}]}),
            422,
            "events[1].event",
        ),
        (
            json!({"events": [{"request_id": "r3", "item_id": "t1", "event": "play", "ts_ms": 1_764_720_000_i64}]}),
            422,
            "events[0].ts_ms",
        ),
        (
            json!({"events": [{"request_id": "", "item_id": "t1", "event": "play"}]}),
            422,
            "events[0].request_id",
        ),
        (
            json!({"events": [{"request_id": "r3", "item_id": "t1", "event": "play", "colour": "red"}]}),
            422,
            "unknown field `colour`",
        ),
        (json!({"events": [{"request_id": "r3", "event": "play"}]}), 422, "missing field `item_id`"),
    ] {
        let reply = server.post("/v1/feedback", serde_json::to_vec(&body).unwrap()).await;
        assert_eq!(reply.status, status, "{body}: {}", reply.text());
        let error = &reply.json()["error"];
        assert_eq!(error["code"], "invalid_request");
        assert!(error["message"].as_str().unwrap().contains(named), "{named}: {error}");
    }
    let reply = server.post("/v1/feedback", "{\"events\": [").await;
    assert_eq!((reply.status, reply.json()["error"]["code"].as_str()), (400, Some("malformed_json")));
    let metrics = server.get("/metrics").await.text();
    assert!(metrics.contains("retort_feedback_rows_total{fate=\"offered\"} 3"), "{metrics}");
    server.stop().await.unwrap();

    let logged = events(dir.path());
    assert_eq!(logged.len(), 3, "only the accepted batch: {logged:?}");
    let (play, received) = &logged[0];
    assert_eq!((play.request_id.as_str(), play.item_id.as_str(), play.event.as_str()), ("r1", "t7", "play"));
    assert_eq!((play.ts_ms, play.value), (1_764_720_000_123, None));
    assert!(before <= *received && *received <= now_ms());
    assert_eq!((logged[1].0.item_id.as_str(), logged[1].0.value), ("42", Some(187.5)));
    let skip = &logged[2].0;
    assert!(before <= skip.ts_ms && skip.ts_ms <= now_ms(), "an event without a time takes its arrival");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_feedback_directory_the_endpoint_says_it_is_off() {
    let server = TestServer::start(Config::serving(shipped_models())).await;
    let reply = server.post("/v1/feedback", r#"{"events": []}"#).await;
    assert_eq!(reply.status, 404);
    assert!(reply.json()["error"]["message"].as_str().unwrap().contains("feedback_dir"), "{}", reply.text());
    server.stop().await.unwrap();
}
