//! `POST /v1/rank`, top to bottom: decode → pick the model → validate and encode (context once,
//! candidates as one batch) → infer on the pool → combine heads with the objective → sort →
//! top-k → respond, with the time of each stage in the body and in `Server-Timing`.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::ser::SerializeMap;

use super::App;
use super::error::ApiError;
use super::metrics::{FeatureLabels, ModelLabels, OutcomeLabels, RankLabels, StageLabels};
use crate::admission::degrade::{self, Admission, Pickup, Reason, Situation};
use crate::admission::pool::PoolError;
use crate::rollout::catalog::Served;
use retort_model::encode::{Encoded, Location};
use retort_model::request::{self, CandidateId, DecodeError};
use retort_model::{HeadValues, Model};

pub async fn rank(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let mut served: Option<Arc<Served>> = None;
    let mut shadow_job: Option<(Arc<Served>, Vec<f32>)> = None;
    let raw = body.as_ref().ok().cloned();
    // If the client goes away, hyper drops this future: the guard then marks the request
    // cancelled, so an inference thread that has not started it yet never will.
    let guard = CancelGuard { app: app.clone(), flag: Arc::new(AtomicBool::new(false)), finished: false };
    let result = handle(&app, &headers, body, started, &mut served, &mut shadow_job, &guard.flag).await;
    let mut guard = guard;
    guard.finished = true;
    if let (Ok(_), Some(raw), Some(s)) = (&result, &raw, &served) {
        app.rollout.warmup.record(s.model.name(), raw.clone());
    }
    if let (Ok(_), Some((shadow, scores)), Some(raw)) = (&result, shadow_job, raw) {
        crate::rollout::shadow::spawn(app.pool.clone(), shadow, raw, scores);
    }
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.code(),
    };
    let elapsed = started.elapsed();
    // Overload says nothing about the version; everything else counts for or against it.
    if let Some(s) = &served
        && !result.as_ref().is_err_and(ApiError::is_refusal)
    {
        s.stats.record(elapsed, result.is_ok());
    }
    let (model, version) = match &served {
        Some(s) => (s.model.name().to_string(), s.version().to_string()),
        None => (String::new(), String::new()),
    };
    let budget_outcome = match &result {
        Ok(ranked) => ranked.degraded.map_or("full", |d| d.mode.as_str()),
        Err(ApiError::DeadlineExceeded { .. }) => "expired",
        Err(ApiError::Overloaded | ApiError::Shed { .. }) => "shed",
        Err(_) => "error",
    };
    app.metrics
        .outcomes
        .get_or_create(&OutcomeLabels {
            model: model.clone(),
            version: version.clone(),
            outcome: budget_outcome,
        })
        .inc();
    if let Err(e) = &result {
        if e.status().is_client_error() {
            tracing::debug!(%model, %version, outcome, error = %e, "rank request refused");
        }
    } else {
        tracing::trace!(%model, %version, total_us = elapsed.as_micros() as u64, "ranked");
    }
    app.metrics
        .rank_duration
        .get_or_create(&RankLabels { model, version, outcome })
        .observe(elapsed.as_secs_f64());
    match result {
        Ok(ranked) => ranked.response,
        Err(e) => e.into_response(),
    }
}

/// Time spent in each stage of one request.
#[derive(Debug, Default, Serialize)]
struct Timing {
    decode: u64,
    encode: u64,
    queue: u64,
    infer: u64,
    rank: u64,
    total: u64,
}

impl Timing {
    fn stages(&self) -> [(&'static str, u64); 5] {
        [
            ("decode", self.decode),
            ("encode", self.encode),
            ("queue", self.queue),
            ("infer", self.infer),
            ("rank", self.rank),
        ]
    }

    fn server_timing(&self) -> String {
        let mut out = String::new();
        for (stage, us) in self.stages().into_iter().chain([("total", self.total)]) {
            if !out.is_empty() {
                out.push_str(", ");
            }
            out.push_str(&format!("{stage};dur={:.3}", us as f64 / 1000.0));
        }
        out
    }
}

fn micros(d: Duration) -> u64 {
    d.as_micros() as u64
}

/// Marks a request cancelled when its handler is dropped before it finished (the client went
/// away), and counts it.
struct CancelGuard {
    app: Arc<App>,
    flag: Arc<AtomicBool>,
    finished: bool,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.flag.store(true, Ordering::Relaxed);
            self.app
                .metrics
                .outcomes
                .get_or_create(&OutcomeLabels {
                    model: String::new(),
                    version: String::new(),
                    outcome: "cancelled",
                })
                .inc();
        }
    }
}

/// The request's latency budget in milliseconds: the `x-retort-budget-ms` header, else the
/// body's `budget_ms`, else the model's configured default; cut to the configured ceiling.
fn budget_ms(
    app: &App,
    header: Option<f64>,
    body: Option<f64>,
    model: &str,
) -> Result<Option<f64>, ApiError> {
    let asked = match (header, body) {
        (Some(h), _) => Some(h),
        (None, Some(b)) => Some(positive_budget("budget_ms", b)?),
        (None, None) => None,
    };
    let configured = app.config.model_budgets_ms.get(model).copied().or(app.config.default_budget_ms);
    Ok(asked.or(configured).map(|b| b.min(app.config.max_budget_ms)))
}

const BUDGET_HEADER: &str = "x-retort-budget-ms";

/// Share of a request's budget that waiting for the async workers may take before new
/// requests are shed unread.
const LAG_SHARE: f64 = 0.5;

/// The budget the `x-retort-budget-ms` header asks for, checked as the body's would be.
fn header_budget(headers: &HeaderMap) -> Result<Option<f64>, ApiError> {
    let Some(v) = headers.get(BUDGET_HEADER) else { return Ok(None) };
    let ms = v.to_str().ok().and_then(|s| s.trim().parse::<f64>().ok()).ok_or_else(|| {
        ApiError::InvalidRequest(format!("{BUDGET_HEADER}: {v:?} is not a number of milliseconds"))
    })?;
    positive_budget(BUDGET_HEADER, ms).map(Some)
}

fn positive_budget(source: &str, ms: f64) -> Result<f64, ApiError> {
    if ms.is_finite() && ms > 0.0 {
        Ok(ms)
    } else {
        Err(ApiError::InvalidRequest(format!("{source} must be a positive number of milliseconds, not {ms}")))
    }
}

#[allow(clippy::too_many_arguments)]
async fn handle(
    app: &App,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    started: Instant,
    served: &mut Option<Arc<Served>>,
    shadow_job: &mut Option<(Arc<Served>, Vec<f32>)>,
    cancelled: &Arc<AtomicBool>,
) -> Result<Ranked, ApiError> {
    let mut timing = Timing::default();
    // Under overload, refuse before spending anything on the request: when the inference
    // queue is full, or when requests wait so long for the async workers that half the budget
    // is gone before a handler sees them.
    if app.pool.is_full() {
        return Err(ApiError::Overloaded);
    }
    // A bad budget is the caller's fault whatever the load: named before anything is shed.
    let header_budget = header_budget(headers)?;
    let lag = app.lag.current();
    if let Some(budget_ms) =
        header_budget.or(app.config.default_budget_ms).map(|b| b.min(app.config.max_budget_ms))
        && lag.as_secs_f64() * 1e3 >= budget_ms * LAG_SHARE
    {
        return Err(ApiError::Shed { reason: Reason::Overload, budget_ms });
    }
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::BodyTooLarge { limit: app.config.max_body_bytes },
        _ if super::connections::is_body_timeout(&rejection) => {
            ApiError::BodyTimeout(app.config.body_read_timeout_ms)
        }
        _ => ApiError::InvalidRequest(rejection.body_text()),
    })?;

    // 1. Decode.
    let req = request::decode(&body).map_err(|e| match e {
        DecodeError::Malformed(m) => ApiError::MalformedJson(m),
        DecodeError::Invalid(m) => ApiError::InvalidRequest(m),
    })?;
    if req.candidates.len() > app.config.max_candidates {
        return Err(ApiError::TooManyCandidates {
            count: req.candidates.len(),
            limit: app.config.max_candidates,
        });
    }
    let catalog = app.rollout.catalog.load();
    let route = catalog.resolve(req.model.as_deref())?;
    let key = sticky_key(&req);
    let version = route.pick(key).clone();
    let shadow = route.shadow_for(key).filter(|s| !Arc::ptr_eq(s, &version)).cloned();
    *served = Some(version.clone());
    // The deadline is fixed on arrival; every later stage sees it.
    let budget = budget_ms(app, header_budget, req.budget_ms, version.model.name())?;
    // It arrived about `lag` before this handler ran.
    let arrived = started.checked_sub(lag).unwrap_or(started);
    let deadline = budget.map(|b| arrived + Duration::from_secs_f64(b / 1e3));
    timing.decode = micros(started.elapsed());

    // 2. Admission: the full answer if it can make the deadline, else the first step of the
    //    model's degradation ladder that can.
    let rules = &app.config.degradation;
    let ladder = rules.ladder(version.model.name());
    let objective = || req.objective.as_ref().map(|o| o.0.iter().map(|(k, w)| (k.as_ref(), *w)));
    let fallback = catalog.fallback_for(&version.model).filter(|fb| fb.model.objective(objective()).is_ok());
    let n = req.candidates.len();
    let admission = match deadline {
        Some(deadline) if n > 0 => degrade::admit(
            ladder,
            rules.min_scored,
            &Situation {
                remaining: deadline.saturating_duration_since(Instant::now()).saturating_sub(rules.margin()),
                wait: app.pool.predicted_wait(),
                candidates: n,
                full: version.cost.estimate(),
                fallback: fallback.and_then(|fb| fb.cost.estimate()),
            },
        ),
        _ => Admission::Full,
    };
    let (answering, scored, mut degraded) = match (admission, fallback) {
        (Admission::Fallback(reason), Some(fb)) => {
            (fb.clone(), n, Some(Degraded { reason, mode: Mode::Fallback, scored: n }))
        }
        (Admission::Truncate(k, reason), _) => {
            (version, k, Some(Degraded { reason, mode: Mode::Truncated, scored: k }))
        }
        (Admission::Shed(reason), _) => {
            return Err(ApiError::Shed { reason, budget_ms: budget.unwrap_or_default() });
        }
        _ => (version, n, None),
    };
    let model = answering.model.clone();
    *served = Some(answering.clone());
    // Counted in the queue's backlog from now, so that requests admitted next see this one.
    let reservation =
        app.pool.reserve(answering.cost.estimate().map_or(Duration::ZERO, |e| e.predict(scored)));

    // 3. Validate and encode the candidates to score, in the order they are scored; the
    //    objective is checked before any inference is spent.
    let t = Instant::now();
    let weights = model.objective(objective())?;
    let order = scoring_order(&req.candidates);
    let encoded = encode_in_order(&model, &req, order.as_deref(), scored)?;
    record_missing(app, &model, &encoded.missing);
    let encode_time = t.elapsed();
    timing.encode = micros(encode_time);

    // 4. Infer on the pool, off the async workers. The thread that picks the request up checks
    //    the deadline again with the time actually left.
    let values = if encoded.rows == 0 {
        HeadValues { rows: 0, values: Vec::new() }
    } else {
        let queued = Instant::now();
        let expired = || ApiError::DeadlineExceeded { budget_ms: budget.unwrap_or_default() };
        if deadline.is_some_and(|d| queued >= d) {
            return Err(expired());
        }
        let job = {
            let (answering, ladder, min_scored, margin) =
                (answering.clone(), ladder.to_vec(), rules.min_scored, rules.margin());
            move || {
                let mut encoded = encoded;
                let estimate = answering.cost.estimate();
                // Why the pickup cut the request, when it did.
                let mut cut = None;
                if let Some(deadline) = deadline {
                    let left = deadline.saturating_duration_since(Instant::now()).saturating_sub(margin);
                    // The queue is to blame only if the rows would have fit but for their wait
                    // for a thread; otherwise the budget was too small for them.
                    let reason = match estimate {
                        Some(e) if e.predict(encoded.rows) <= left + queued.elapsed() => Reason::Overload,
                        _ => Reason::Budget,
                    };
                    match degrade::at_pickup(&ladder, min_scored, left, encoded.rows, estimate) {
                        Pickup::Run => {}
                        Pickup::Truncate(k) => {
                            encoded.truncate(k);
                            cut = Some(reason);
                        }
                        Pickup::Shed => return Err(reason),
                    }
                }
                let rows = encoded.rows;
                let predicted = estimate.map(|e| e.predict(rows));
                let ran = Instant::now();
                let values = answering.model.infer(encoded);
                Ok((values, predicted, ran.elapsed(), cut))
            }
        };
        let submitted = app.pool.run_until(deadline, cancelled.clone(), Some(reservation), job);
        let (picked, waited) = submitted.await.map_err(|e| match e {
            PoolError::Full => ApiError::Overloaded,
            PoolError::Stopped => ApiError::NotReady,
            PoolError::Panicked => ApiError::Internal("inference panicked".into()),
            PoolError::Expired => expired(),
            PoolError::Cancelled => ApiError::Internal("cancelled while its client waited".into()),
        })?;
        timing.queue = micros(waited);
        timing.infer = micros(queued.elapsed().saturating_sub(waited));
        let (values, predicted, infer_time, cut) = picked.map_err(|at_pickup| ApiError::Shed {
            reason: degraded.map_or(at_pickup, |d| d.reason),
            budget_ms: budget.unwrap_or_default(),
        })?;
        let values = values?;
        // What this request cost outside the queue: encoding (its share for the rows run)
        // and inference.
        let share = values.rows as f64 / scored as f64;
        let took = encode_time.mul_f64(share) + infer_time;
        if let Some(predicted) = predicted {
            record_prediction(app, &model, predicted + encode_time.mul_f64(share), took);
        }
        answering.cost.observe(values.rows, took);
        if values.rows < scored {
            degraded = Some(Degraded {
                reason: degraded.map_or(cut.unwrap_or(Reason::Budget), |d| d.reason),
                mode: if degraded.is_some_and(|d| d.mode == Mode::Fallback) {
                    Mode::FallbackTruncated
                } else {
                    Mode::Truncated
                },
                scored: values.rows,
            });
        }
        values
    };

    // 5. Combine heads into one score, keep the best `top_k`, best first; candidates left
    //    unscored follow in the order they would have been scored.
    let t = Instant::now();
    let scores = model.combine(&values, &weights)?;
    let best = top_k(&scores, req.top_k);
    let limit = req.top_k.unwrap_or(n).min(n);
    let candidate = |row: usize| order.as_ref().map_or(row, |o| o[row]);
    timing.rank = micros(t.elapsed());
    if let Some(shadow) = shadow
        && degraded.is_none()
    {
        *shadow_job = Some((shadow, scores.clone()));
    }

    // 6. Respond.
    let request_id = match &req.request_id {
        Some(id) => id.0.clone(),
        None => Cow::Owned(format!("retort-{:x}", app.request_ids.fetch_add(1, Ordering::Relaxed))),
    };
    let serving: Vec<(usize, &str)> = model.serving_heads().collect();
    let unscored = (values.rows..n).take(limit.saturating_sub(best.len()));
    let items: Vec<Item<'_>> = best
        .iter()
        .map(|&row| Item {
            id: &req.candidates[candidate(row)].id,
            score: Some(scores[row]),
            heads: Heads { serving: &serving, values: &values, row: Some(row) },
        })
        .chain(unscored.map(|row| Item {
            id: &req.candidates[candidate(row)].id,
            score: None,
            heads: Heads { serving: &serving, values: &values, row: None },
        }))
        .collect();
    timing.total = micros(started.elapsed());
    let response = RankResponse {
        request_id: &request_id,
        model: model.name(),
        version: model.version(),
        items,
        degraded,
        timing_us: &timing,
    };
    let json = serde_json::to_vec(&response).map_err(|e| ApiError::Internal(e.to_string()))?;
    record_success(app, &model, &timing, req.candidates.len());

    let mut response = (StatusCode::OK, json).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(&timing.server_timing()) {
        headers.insert("server-timing", v);
    }
    Ok(Ranked { response, degraded })
}

/// What keeps one user on one side of a canary: a hash of the context's `user_id`, or of the
/// request id when there is none; a request with neither lands anywhere.
fn sticky_key(req: &request::RankRequest<'_>) -> u64 {
    use retort_model::encode::{Value, fnv1a64};
    match (req.context.get("user_id"), &req.request_id) {
        (Value::Str(s), _) => fnv1a64(s.as_bytes()),
        (Value::Int(i), _) => fnv1a64(i.to_string().as_bytes()),
        (Value::Uint(u), _) => fnv1a64(u.to_string().as_bytes()),
        (_, Some(id)) => fnv1a64(id.0.as_bytes()),
        _ => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            fnv1a64(&now.as_nanos().to_le_bytes())
        }
    }
}

/// The order candidates are scored in, and in which a truncated answer lists those it did not
/// score: by the caller's `prior`, highest first (candidates without one last, ties in the
/// order sent); `None` when no candidate has a prior, meaning the order sent.
fn scoring_order(candidates: &[request::Candidate<'_>]) -> Option<Vec<usize>> {
    if candidates.iter().all(|c| c.prior.is_none()) {
        return None;
    }
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    let prior = |i: usize| candidates[i].prior.unwrap_or(f64::NEG_INFINITY);
    order.sort_by(|&a, &b| prior(b).total_cmp(&prior(a)));
    Some(order)
}

/// Encodes the first `count` candidates of `order` (the order sent when `None`); an error
/// names the candidate by its index in the request.
fn encode_in_order(
    model: &Model,
    req: &request::RankRequest<'_>,
    order: Option<&[usize]>,
    count: usize,
) -> Result<Encoded, ApiError> {
    let Some(order) = order else { return Ok(model.encode(&req.context, &req.candidates[..count])?) };
    let picked: Vec<&request::Candidate<'_>> = order[..count].iter().map(|&i| &req.candidates[i]).collect();
    model.encode(&req.context, &picked).map_err(|mut e| {
        if let Location::Candidate(row) = e.location {
            e.location = Location::Candidate(order[row]);
        }
        ApiError::from(e)
    })
}

/// Row indices of the `k` best scores, best first; ties keep the caller's order.
fn top_k(scores: &[f32], k: Option<usize>) -> Vec<usize> {
    let better = |a: &usize, b: &usize| scores[*b].total_cmp(&scores[*a]).then(a.cmp(b));
    let mut order: Vec<usize> = (0..scores.len()).collect();
    let k = k.unwrap_or(scores.len()).min(scores.len());
    if k == 0 {
        return Vec::new();
    }
    if k < order.len() {
        // Partition first: O(n) to find the best k, then sort only those.
        order.select_nth_unstable_by(k - 1, better);
        order.truncate(k);
    }
    order.sort_unstable_by(better);
    order
}

fn record_missing(app: &App, model: &Model, missing: &[u32]) {
    for (feature, &count) in model.manifest.features.iter().zip(missing) {
        if count > 0 {
            app.metrics
                .missing_features
                .get_or_create(&FeatureLabels {
                    model: model.name().to_string(),
                    feature: feature.name.clone(),
                })
                .inc_by(count as u64);
        }
    }
}

/// How far the cost model's prediction was from the time a request took.
fn record_prediction(app: &App, model: &Model, predicted: Duration, took: Duration) {
    if predicted.is_zero() {
        return;
    }
    app.metrics
        .cost_prediction
        .get_or_create(&ModelLabels { model: model.name().to_string(), version: model.version().to_string() })
        .observe(took.as_secs_f64() / predicted.as_secs_f64());
}

fn record_success(app: &App, model: &Model, timing: &Timing, candidates: usize) {
    for (stage, us) in timing.stages() {
        app.metrics
            .stage_duration
            .get_or_create(&StageLabels { model: model.name().to_string(), stage })
            .observe(us as f64 * 1e-6);
    }
    app.metrics
        .candidates
        .get_or_create(&ModelLabels { model: model.name().to_string(), version: model.version().to_string() })
        .observe(candidates as f64);
}

/// An answered request: its response, and how it was degraded if it was.
struct Ranked {
    response: Response,
    degraded: Option<Degraded>,
}

/// What the response says when it is not the full model's answer.
#[derive(Debug, Clone, Copy, Serialize)]
struct Degraded {
    reason: Reason,
    mode: Mode,
    /// Candidates scored; the others follow them unscored.
    scored: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Mode {
    /// Scored by the model's declared fallback.
    Fallback,
    /// The first `scored` candidates in prior order, scored by the full model.
    Truncated,
    /// The first `scored` candidates, scored by the fallback.
    FallbackTruncated,
}

impl Mode {
    /// The outcome metric's label.
    fn as_str(self) -> &'static str {
        match self {
            Mode::Fallback => "fallback",
            Mode::Truncated => "truncated",
            Mode::FallbackTruncated => "fallback_truncated",
        }
    }
}

#[derive(Serialize)]
struct RankResponse<'a> {
    request_id: &'a str,
    model: &'a str,
    version: &'a str,
    items: Vec<Item<'a>>,
    degraded: Option<Degraded>,
    timing_us: &'a Timing,
}

#[derive(Serialize)]
struct Item<'a> {
    id: &'a CandidateId<'a>,
    /// `null` for a candidate a degraded answer did not score.
    score: Option<f32>,
    heads: Heads<'a>,
}

/// One candidate's serving-head values, written as a JSON object without building a map;
/// empty for a candidate left unscored.
struct Heads<'a> {
    serving: &'a [(usize, &'a str)],
    values: &'a HeadValues,
    row: Option<usize>,
}

impl Serialize for Heads<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Some(row) = self.row else { return s.serialize_map(Some(0))?.end() };
        let mut map = s.serialize_map(Some(self.serving.len()))?;
        for &(h, name) in self.serving {
            map.serialize_entry(name, &self.values.head(h)[row])?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_best_first_and_keeps_ties_stable() {
        let s = [0.1, 0.9, 0.5, 0.9, -1.0];
        assert_eq!(top_k(&s, None), [1, 3, 2, 0, 4]);
        assert_eq!(top_k(&s, Some(2)), [1, 3]);
        assert_eq!(top_k(&s, Some(3)), [1, 3, 2]);
        assert_eq!(top_k(&s, Some(0)), Vec::<usize>::new());
        assert_eq!(top_k(&s, Some(99)), [1, 3, 2, 0, 4]);
        assert_eq!(top_k(&[], Some(3)), Vec::<usize>::new());
    }

    #[test]
    fn server_timing_lists_every_stage_in_ms() {
        let t = Timing { decode: 12, encode: 30, queue: 5, infer: 250, rank: 7, total: 320 };
        assert_eq!(
            t.server_timing(),
            "decode;dur=0.012, encode;dur=0.030, queue;dur=0.005, infer;dur=0.250, rank;dur=0.007, total;dur=0.320"
        );
    }
}
