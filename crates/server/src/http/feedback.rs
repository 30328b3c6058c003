//! `POST /v1/feedback`: events about shown items (a play, a like, a skip), named by the request
//! and item they are about, validated whole (the first bad event named by its index and field,
//! and none of the batch kept) and handed to the feedback log, which never blocks: a full queue
//! refuses the batch with 429 so the client can send it again.

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::App;
use super::error::ApiError;
use retort_log::{Event, Feedback};

/// Most events one request may carry.
pub const MAX_EVENTS: usize = 10_000;
/// Longest request id, item id and event type accepted, in bytes.
const MAX_ID_BYTES: usize = 256;
const MAX_EVENT_BYTES: usize = 64;
/// Events from before 2000 or more than a day ahead of the server's clock are refused: a time
/// in seconds sent as milliseconds, or the other way round, lands outside.
const EARLIEST_MS: i64 = 946_684_800_000;
const AHEAD_MS: i64 = 86_400_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    events: Vec<EventIn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventIn {
    request_id: String,
    item_id: ItemId,
    event: String,
    #[serde(default)]
    ts_ms: Option<i64>,
    #[serde(default)]
    value: Option<f64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ItemId {
    Text(String),
    Int(i64),
    Uint(u64),
}

pub async fn feedback(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Response {
    match accept(&app, body) {
        Ok(n) => (
            StatusCode::ACCEPTED,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            serde_json::json!({ "accepted": n }).to_string(),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

fn accept(app: &App, body: Result<Bytes, BytesRejection>) -> Result<usize, ApiError> {
    let Some(log) = &app.feedback else {
        return Err(ApiError::NotFound("/v1/feedback: the feedback log is off (set feedback_dir)".into()));
    };
    let body = body.map_err(|rejection| app.body_error(rejection))?;
    let parsed: Body = serde_json::from_slice(&body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::InvalidRequest(e.to_string()),
        _ => ApiError::MalformedJson(e.to_string()),
    })?;
    if parsed.events.len() > MAX_EVENTS {
        return Err(ApiError::InvalidRequest(format!(
            "{} events in one request; the limit is {MAX_EVENTS}",
            parsed.events.len()
        )));
    }
    let received_ms = retort_model::timestamp::unix_ms(SystemTime::now());
    let events = parsed
        .events
        .into_iter()
        .enumerate()
        .map(|(i, e)| validate(i, e, received_ms))
        .collect::<Result<Vec<_>, _>>()?;
    let n = events.len();
    if n > 0 && !log.submit(Feedback { received_ms, events }) {
        return Err(ApiError::FeedbackQueueFull);
    }
    Ok(n)
}

fn validate(i: usize, e: EventIn, now_ms: i64) -> Result<Event, ApiError> {
    let bad =
        |field: &str, problem: String| ApiError::InvalidRequest(format!("events[{i}].{field}: {problem}"));
    let id = |field: &str, text: String| {
        if text.is_empty() || text.len() > MAX_ID_BYTES {
            return Err(bad(field, format!("must be 1 to {MAX_ID_BYTES} bytes, not {}", text.len())));
        }
        Ok(text)
    };
    let request_id = id("request_id", e.request_id)?;
    let item_id = id(
        "item_id",
        match e.item_id {
            ItemId::Text(s) => s,
            ItemId::Int(n) => n.to_string(),
            ItemId::Uint(n) => n.to_string(),
        },
    )?;
    let valid_event = !e.event.is_empty()
        && e.event.len() <= MAX_EVENT_BYTES
        && e.event.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if !valid_event {
        return Err(bad(
            "event",
            format!(
                "{:?} is not an event type (1 to {MAX_EVENT_BYTES} letters, digits, `_`, `-` or `.`)",
                e.event
            ),
        ));
    }
    let ts_ms = e.ts_ms.unwrap_or(now_ms);
    if !(EARLIEST_MS..=now_ms + AHEAD_MS).contains(&ts_ms) {
        return Err(bad(
            "ts_ms",
            format!("{ts_ms} is not a time in milliseconds since the epoch between 2000 and a day from now"),
        ));
    }
    if let Some(v) = e.value.filter(|v| !v.is_finite()) {
        return Err(bad("value", format!("{v} is not a finite number")));
    }
    Ok(Event { request_id, item_id, event: e.event, ts_ms, value: e.value })
}
