//! The impression log against the answers a real server gave: every shown candidate is a row
//! with the answer's id, position, score and head values, the request's context and the
//! candidate's own features, written into complete partitions by the time the server stops.

use std::collections::BTreeMap;
use std::path::Path;

use retort_log::{impression, partition};
use retort_server::config::Config;

use crate::common::{TestServer, request, shipped_models};

fn logging(dir: &Path) -> Config {
    let mut config = Config::serving(shipped_models());
    config.impressions.impressions_dir = Some(dir.to_path_buf());
    config
}

fn rows(dir: &Path) -> Vec<impression::Row> {
    let parts = partition::list(dir, "impressions").unwrap();
    parts.iter().flat_map(|p| impression::read(&p.path).unwrap()).collect()
}

/// Equal JSON, numbers to the last bit or two of an f64: the logged values are those the
/// server decoded, whose float parser may round a long decimal to the neighbouring double.
fn assert_same(logged: &serde_json::Value, sent: &serde_json::Value) {
    use serde_json::Value::*;
    match (logged, sent) {
        (Number(a), Number(b)) if a.is_f64() || b.is_f64() => {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            assert!((a - b).abs() <= 1e-15 * a.abs().max(1.0), "{a} logged, {b} sent");
        }
        (Array(a), Array(b)) => {
            assert_eq!(a.len(), b.len(), "{logged} logged, {sent} sent");
            a.iter().zip(b).for_each(|(a, b)| assert_same(a, b));
        }
        (Object(a), Object(b)) => {
            assert_eq!(
                a.keys().collect::<Vec<_>>(),
                b.keys().collect::<Vec<_>>(),
                "{logged} logged, {sent} sent"
            );
            a.values().zip(b.values()).for_each(|(a, b)| assert_same(a, b));
        }
        _ => assert_eq!(logged, sent),
    }
}

fn metric(text: &str, series: &str) -> u64 {
    let line =
        text.lines().find(|l| l.starts_with(series)).unwrap_or_else(|| panic!("no {series} in\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shown_candidate_is_logged_as_it_was_answered() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(logging(dir.path())).await;
    let mut answers = Vec::new();
    let mut sent = Vec::new();
    for n in 0..12u64 {
        let mut body = request(8 + n as usize, n);
        if n % 2 == 0 {
            body["request_id"] = format!("req-{n}").into();
        }
        if n % 3 == 0 {
            body["top_k"] = 3.into();
        }
        body["heads"] = true.into();
        let reply = server.rank(&body).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        answers.push(reply.json());
        sent.push(body);
    }
    let scraped = server.get("/metrics").await.text();
    let shown: usize = answers.iter().map(|a| a["items"].as_array().unwrap().len()).sum();
    assert_eq!(metric(&scraped, "retort_impression_rows_total{fate=\"offered\"}"), shown as u64);
    server.stop().await.unwrap();

    let logged = rows(dir.path());
    assert_eq!(logged.len(), shown, "one row per shown candidate");
    let mut by_request: BTreeMap<&str, Vec<&impression::Row>> = BTreeMap::new();
    for row in &logged {
        by_request.entry(row.request_id.as_str()).or_default().push(row);
    }
    assert_eq!(by_request.len(), 12, "every request id is its own, generated ones too");
    for (answer, body) in answers.iter().zip(&sent) {
        let id = answer["request_id"].as_str().unwrap();
        if let Some(given) = body["request_id"].as_str() {
            assert_eq!(id, given);
        }
        let mut rows = by_request[id].clone();
        rows.sort_by_key(|r| r.position);
        let items = answer["items"].as_array().unwrap();
        assert_eq!(rows.len(), items.len(), "{id}");
        for (position, (row, item)) in rows.iter().zip(items).enumerate() {
            assert_eq!(row.position as usize, position);
            assert_eq!(row.item_id, item["id"].as_str().unwrap());
            assert_eq!(
                (row.model.as_str(), row.version.as_str()),
                (answer["model"].as_str().unwrap(), answer["version"].as_str().unwrap())
            );
            // JSON carries the f32 exactly: its shortest decimal reads back to the same value.
            assert_eq!(row.score, Some(item["score"].as_f64().unwrap() as f32), "{id} {position}");
            let heads: Vec<(String, f32)> = item["heads"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_f64().unwrap() as f32))
                .collect();
            let mut logged_heads = row.heads.clone();
            logged_heads.sort_by(|a, b| a.0.cmp(&b.0));
            assert_eq!(logged_heads, heads, "{id} {position}");
            let context: serde_json::Value = serde_json::from_str(&row.context).unwrap();
            assert_same(&context, &body["context"]);
            let sent_candidate =
                body["candidates"].as_array().unwrap().iter().find(|c| c["id"] == item["id"]).unwrap();
            let overrides: serde_json::Value =
                serde_json::from_str(row.overrides.as_deref().unwrap()).unwrap();
            assert_same(&overrides, &sent_candidate["features"]);
            assert_eq!(
                row.catalog,
                answer["catalog"].as_object().map(|c| (
                    c["name"].as_str().unwrap().to_string(),
                    c["version"].as_str().unwrap().to_string()
                ))
            );
            assert_eq!((row.degraded.as_deref(), row.sample_rate), (None, 1.0));
        }
    }
    let arrived: Vec<i64> = logged.iter().map(|r| r.ts_ms).collect();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    assert!(arrived.iter().all(|&t| now - 60_000 < t && t <= now), "arrival times are this minute's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sample_and_log_top_choose_what_is_logged() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = logging(dir.path());
    config.impressions.impression_log_top = 2;
    config.impressions.impression_sample = 0.5;
    config.models.entry("music-ranker".into()).or_default().impression_sample = Some(0.0);
    let server = TestServer::start(config).await;
    for n in 0..6u64 {
        let mut body = request(10, n);
        body["request_id"] = format!("r{n}").into();
        assert_eq!(server.rank(&body).await.status, 200);
        body["model"] = "music-ranker-fallback".into();
        body["request_id"] = format!("fallback-{n}").into();
        assert_eq!(server.rank(&body).await.status, 200);
    }
    server.stop().await.unwrap();
    let logged = rows(dir.path());
    assert!(logged.iter().all(|r| r.model == "music-ranker-fallback"), "music-ranker samples none");
    assert!(logged.iter().all(|r| r.position < 2 && r.sample_rate == 0.5));
    let requests: std::collections::BTreeSet<&str> = logged.iter().map(|r| r.request_id.as_str()).collect();
    assert_eq!(logged.len(), requests.len() * 2, "the top two of each logged answer");
    // Which ids half the hashes take is fixed: these six ids give a few, not all or none.
    assert!((1..6).contains(&requests.len()), "{requests:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_the_log_cannot_use_is_refused_at_start_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, b"x").unwrap();
    let err = retort_server::http::App::new(logging(&file)).err().expect("refused");
    let text = err.to_string();
    assert!(
        text.starts_with("cannot start the impression log") && text.contains("not-a-directory"),
        "{text}"
    );
}
