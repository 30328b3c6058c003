//! `POST /v1/rank`, top to bottom: arrive (shed unread under overload) → decode → route (the
//! version, the shadow, the budget) → admit (the full answer or a step of the degradation
//! ladder) → encode → infer on the pool → combine heads with the objective → top-k → respond,
//! with the time of each stage in the body and in `Server-Timing` → log what the answer showed
//! (when the impression log is on and samples the request). The handler returns what the
//! request came to, and [`record`] alone feeds it to metrics, the version's stats, the warm-up
//! ring and the shadow.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::ser::SerializeMap;

use super::App;
use super::error::{ApiError, Counts};
use super::impressions::{Answered, Listed};
use super::metrics::{CatalogLabels, FeatureLabels, ModelLabels, OutcomeLabels, RankLabels, StageLabels};
use crate::admission::budget::{self, Asked};
use crate::admission::degrade::{self, Degraded, Pickup, Planned, Reason, Situation};
use crate::admission::pool::PoolError;
use crate::rollout::routes::{ItemsFor, Routes, Served};
use retort_model::catalog::Catalog as ItemCatalog;
use retort_model::encode::{Encoded, Location};
use retort_model::request::{self, CandidateId, DecodeError, RankRequest};
use retort_model::{HeadValues, Model};

pub async fn rank(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    // If the client goes away, hyper drops this future: the guard then marks the request
    // cancelled, so an inference thread that has not started it yet never will.
    let guard = CancelGuard { app: app.clone(), flag: Arc::new(AtomicBool::new(false)), finished: false };
    let outcome = handle(&app, &headers, body, started, &guard.flag).await;
    guard.finish();
    record(&app, outcome, started.elapsed())
}

/// An answered request, and what the bookkeeping needs of it.
struct Answer {
    served: Arc<Served>,
    response: Response,
    degraded: Option<Degraded>,
    /// The request as it arrived: for the warm-up ring, and for the shadow to score.
    body: Bytes,
    /// The shadow version, with the scores its own are compared with.
    shadow: Option<(Arc<Served>, Vec<f32>)>,
    timing: Timing,
    candidates: usize,
}

/// A failed request, and the version it counts against (`None`: refused before one was
/// picked).
struct Failure {
    served: Option<Arc<Served>>,
    error: ApiError,
}

impl<E: Into<ApiError>> From<E> for Failure {
    fn from(error: E) -> Self {
        Failure { served: None, error: error.into() }
    }
}

/// Charges a step's error to the version that was answering.
trait Charge<T> {
    fn charge(self, served: &Arc<Served>) -> Result<T, Failure>;
}

impl<T, E: Into<ApiError>> Charge<T> for Result<T, E> {
    fn charge(self, served: &Arc<Served>) -> Result<T, Failure> {
        self.map_err(|e| Failure { served: Some(served.clone()), error: e.into() })
    }
}

/// The one place a finished request is accounted for: the outcome and duration metrics, the
/// version's stats (refusals for want of time or capacity say nothing about a version), the
/// warm-up ring and the shadow; then its response.
fn record(app: &App, outcome: Result<Answer, Failure>, elapsed: Duration) -> Response {
    // The error's row of the table, read once.
    let (served, code, budget_outcome, class) = match &outcome {
        Ok(a) => (Some(&a.served), "ok", a.degraded.map_or("full", |d| d.mode.as_str()), None),
        Err(f) => {
            let class = f.error.class();
            (f.served.as_ref(), class.code, class.counts.outcome(), Some(class))
        }
    };
    if let Some(s) = served
        && class.is_none_or(|c| c.counts == Counts::Fault)
    {
        s.stats.record(elapsed, outcome.is_ok());
    }
    let (model, version) = match served {
        Some(s) => (s.model.name().to_string(), s.version().to_string()),
        None => (String::new(), String::new()),
    };
    let labels = OutcomeLabels { model: model.clone(), version: version.clone(), outcome: budget_outcome };
    app.metrics.outcomes.get_or_create(&labels).inc();
    match &outcome {
        Ok(answer) => {
            tracing::trace!(%model, %version, total_us = elapsed.as_micros() as u64, "ranked");
            record_stages(app, &answer.served.model, &answer.timing, answer.candidates);
        }
        Err(f) if class.is_some_and(|c| c.status.is_client_error()) => {
            tracing::debug!(%model, %version, outcome = code, error = %f.error, "rank request refused");
        }
        Err(_) => {}
    }
    let labels = RankLabels { model, version, outcome: code };
    app.metrics.rank_duration.get_or_create(&labels).observe(elapsed.as_secs_f64());
    match outcome {
        Ok(answer) => {
            app.rollout.warmup.record(answer.served.model.name(), answer.body.clone());
            if let Some((shadow, scores)) = answer.shadow {
                let items = shadow.items(app.rollout.items.for_model(&shadow.model.manifest));
                crate::rollout::shadow::spawn(app.pool.clone(), shadow, items, answer.body, scores);
            }
            answer.response
        }
        Err(f) => f.error.into_response(),
    }
}

/// Time spent in each stage of one request.
#[derive(Debug, Default, Clone, Serialize)]
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

impl CancelGuard {
    fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.flag.store(true, Ordering::Relaxed);
            let labels = OutcomeLabels { model: String::new(), version: String::new(), outcome: "cancelled" };
            self.app.metrics.outcomes.get_or_create(&labels).inc();
        }
    }
}

const BUDGET_HEADER: &str = "x-retort-budget-ms";

/// A request that got past the door: its body, the budget its header asks for, and how long it
/// waited for the async workers.
struct Arrival {
    body: Bytes,
    header_budget: Option<f64>,
    lag: Duration,
}

/// Under overload, refuses before spending anything on the request: when the inference queue
/// is full, or when requests wait so long for the async workers that half the budget is gone
/// before a handler sees them (known here only when the header settles the budget; otherwise
/// checked once the budget is resolved).
fn arrive(app: &App, headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<Arrival, ApiError> {
    if app.pool.is_full() {
        return Err(ApiError::Overloaded);
    }
    // A bad budget is the caller's fault whatever the load: named before anything is shed.
    let header_budget = match headers.get(BUDGET_HEADER) {
        None => None,
        Some(v) => {
            let ms = v.to_str().ok().and_then(|s| s.trim().parse::<f64>().ok()).ok_or_else(|| {
                ApiError::InvalidRequest(format!("{BUDGET_HEADER}: {v:?} is not a number of milliseconds"))
            })?;
            Some(budget::positive(BUDGET_HEADER, ms)?)
        }
    };
    let lag = app.lag.current();
    if let Some(budget_ms) = app.budgets.from_header(header_budget)
        && budget::lagging(lag, Some(budget_ms))
    {
        return Err(ApiError::Shed { reason: Reason::Overload, budget_ms });
    }
    let body = body.map_err(|rejection| app.body_error(rejection))?;
    Ok(Arrival { body, header_budget, lag })
}

fn decode<'b>(app: &App, body: &'b Bytes) -> Result<RankRequest<'b>, ApiError> {
    let req = request::decode(body).map_err(|e| match e {
        DecodeError::Malformed(m) => ApiError::MalformedJson(m),
        DecodeError::Invalid(m) => ApiError::InvalidRequest(m),
    })?;
    if req.candidates.len() > app.config.server.max_candidates {
        return Err(ApiError::TooManyCandidates {
            count: req.candidates.len(),
            limit: app.config.server.max_candidates,
        });
    }
    Ok(req)
}

/// A request's budget and the deadline it sets, fixed on arrival; every later stage sees it.
#[derive(Debug, Clone, Copy)]
struct Deadline {
    budget_ms: Option<f64>,
    at: Option<Instant>,
}

impl Deadline {
    fn expired(&self) -> ApiError {
        ApiError::DeadlineExceeded { budget_ms: self.budget_ms.unwrap_or_default() }
    }

    fn shed(&self, reason: Reason) -> ApiError {
        ApiError::Shed { reason, budget_ms: self.budget_ms.unwrap_or_default() }
    }
}

async fn handle(
    app: &App,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    started: Instant,
    cancelled: &Arc<AtomicBool>,
) -> Result<Answer, Failure> {
    let arrival = arrive(app, headers, body)?;
    let arrived_wall = SystemTime::now().checked_sub(arrival.lag).unwrap_or(SystemTime::UNIX_EPOCH);
    // 1. Decode.
    let req = decode(app, &arrival.body)?;

    // 2. Route: the version that answers this user, the shadow that also scores the request,
    //    and the budget, by the one rule (header, body, the model's default, the server's).
    let table = app.rollout.routes.load();
    let route = table.resolve(req.model.as_deref())?;
    let key = sticky_key(&req);
    let version = route.pick(key).clone();
    let shadow = route.shadow_for(key).filter(|s| !Arc::ptr_eq(s, &version)).cloned();
    // The header wins: the body's budget is not even read then.
    let body_budget = req.budget_ms.filter(|_| arrival.header_budget.is_none());
    let body_budget = body_budget.map(|b| budget::positive("budget_ms", b)).transpose().charge(&version)?;
    let asked = Asked { header: arrival.header_budget, body: body_budget };
    let budget_ms = app.budgets.resolve(asked, version.model.name());
    if arrival.header_budget.is_none() && budget::lagging(arrival.lag, budget_ms) {
        return Err(ApiError::Shed { reason: Reason::Overload, budget_ms: budget_ms.unwrap_or_default() })
            .charge(&version);
    }
    // It arrived about `lag` before this handler ran.
    let arrived = started.checked_sub(arrival.lag).unwrap_or(started);
    let deadline = Deadline { budget_ms, at: budget::deadline(arrived, budget_ms) };
    let mut timing = Timing { decode: micros(started.elapsed()), ..Timing::default() };

    // 3. Admission: the full answer if it can make the deadline, else the first step of the
    //    model's degradation ladder that can.
    let planned = admit(app, &table, &req, version, deadline)?;
    let answering = planned.answering.clone();

    // 4. Encode, infer, combine.
    let scored = score(app, &req, &planned, deadline, cancelled, &mut timing).await.charge(&answering)?;

    // 5. Respond, and log what the answer showed.
    let shadow = shadow.filter(|_| scored.degraded.is_none()).map(|s| (s, scored.scores.clone()));
    let request_id = match &req.request_id {
        Some(id) => id.0.clone(),
        None => Cow::Owned(app.next_request_id()),
    };
    let t = Instant::now();
    let listed = listed(app, &req, &scored);
    timing.rank += micros(t.elapsed());
    let model = &answering.model;
    let response =
        respond(&req, &request_id, model, &scored, &listed, &mut timing, started).charge(&answering)?;
    if let Some(log) = &app.impressions {
        log.record(&Answered {
            req: &req,
            request_id: &request_id,
            arrived: arrived_wall,
            model,
            values: &scored.values,
            scores: &scored.scores,
            listed: &listed,
            degraded: scored.degraded.map(|d| d.mode.as_str()),
            catalog: scored.catalog.as_deref().map(|c| (c.name.as_str(), c.version.as_str())),
        });
    }
    let candidates = req.candidates.len();
    Ok(Answer {
        served: answering,
        response,
        degraded: scored.degraded,
        body: arrival.body,
        shadow,
        timing,
        candidates,
    })
}

/// Decides, from the deadline, the predicted wait and each version's measured cost, what the
/// request gets; counts it in the queue's backlog from now, so that requests admitted next see
/// it. A request the ladder sheds counts against its version only as a refusal.
fn admit(
    app: &App,
    table: &Routes,
    req: &RankRequest<'_>,
    version: Arc<Served>,
    deadline: Deadline,
) -> Result<Planned<Arc<Served>>, Failure> {
    let rules = &app.degradation;
    let fallback =
        table.fallback_for(&version.model).filter(|fb| fb.model.objective(req.objective()).is_ok());
    let n = req.candidates.len();
    let admission = match deadline.at {
        Some(at) if n > 0 => degrade::admit(
            rules.ladder(version.model.name()),
            rules.min_scored,
            &Situation {
                remaining: at.saturating_duration_since(Instant::now()).saturating_sub(rules.margin()),
                wait: app.pool.predicted_wait(),
                candidates: n,
                full: version.cost.estimate(),
                fallback: fallback.and_then(|fb| fb.cost.estimate()),
            },
        ),
        _ => degrade::Admission::Full,
    };
    degrade::plan(admission, version.clone(), fallback.cloned(), n)
        .map_err(|reason| deadline.shed(reason))
        .charge(&version)
}

/// Candidates scored: the head values of the rows inference ran, their combined scores, the
/// order they were scored in, how the answer ended up degraded, and the catalog the candidates
/// were looked up in with those it lacked (by index in the request).
struct Scored {
    values: HeadValues,
    scores: Vec<f32>,
    order: Option<Vec<usize>>,
    degraded: Option<Degraded>,
    catalog: Option<Arc<ItemCatalog>>,
    misses: Vec<usize>,
}

/// Validates and encodes the candidates to score, in the order they are scored (the objective
/// checked before any inference is spent); runs inference on the pool, off the async workers,
/// where the thread that picks the request up checks the deadline again with the time actually
/// left; combines the heads.
async fn score(
    app: &App,
    req: &RankRequest<'_>,
    planned: &Planned<Arc<Served>>,
    deadline: Deadline,
    cancelled: &Arc<AtomicBool>,
    timing: &mut Timing,
) -> Result<Scored, ApiError> {
    let answering = &planned.answering;
    let model = &answering.model;
    let reservation =
        app.pool.reserve(answering.cost.estimate().map_or(Duration::ZERO, |e| e.predict(planned.scored)));
    let t = Instant::now();
    let weights = model.objective(req.objective())?;
    let order = scoring_order(&req.candidates);
    let items = answering.items(app.rollout.items.for_model(&model.manifest));
    let (encoded, misses) = encode_in_order(model, items.as_ref(), req, order.as_deref(), planned.scored)?;
    record_missing(app, model, &encoded.missing);
    let catalog = items.map(|i| i.catalog);
    record_misses(app, model, catalog.as_deref(), misses.len());
    let encode_time = t.elapsed();
    timing.encode = micros(encode_time);

    let (values, degraded) = if encoded.rows == 0 {
        (HeadValues { rows: 0, values: Vec::new() }, planned.degraded)
    } else {
        let queued = Instant::now();
        if deadline.at.is_some_and(|d| queued >= d) {
            return Err(deadline.expired());
        }
        let rules = &app.degradation;
        let job = {
            let (answering, ladder, min_scored, margin) =
                (answering.clone(), rules.ladder(model.name()).to_vec(), rules.min_scored, rules.margin());
            move || {
                let mut encoded = encoded;
                let estimate = answering.cost.estimate();
                // Why the pickup cut the request, when it did.
                let mut cut = None;
                if let Some(at) = deadline.at {
                    let left = at.saturating_duration_since(Instant::now()).saturating_sub(margin);
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
                let predicted = estimate.map(|e| e.predict(encoded.rows));
                let ran = Instant::now();
                let values = answering.model.infer(encoded);
                Ok((values, predicted, ran.elapsed(), cut))
            }
        };
        let submitted = app.pool.run_until(deadline.at, cancelled.clone(), Some(reservation), job);
        let (ran, picked) = submitted.await.map_err(|e| match e {
            PoolError::Full => ApiError::Overloaded,
            PoolError::Stopped => ApiError::NotReady,
            PoolError::Panicked => ApiError::Internal("inference panicked".into()),
            PoolError::Expired => deadline.expired(),
            PoolError::Cancelled => ApiError::Cancelled,
        })?;
        if picked.inline {
            app.metrics.inline_inference.inc();
        }
        timing.queue = micros(picked.waited);
        timing.infer = micros(queued.elapsed().saturating_sub(picked.waited));
        let (values, predicted, infer_time, cut) =
            ran.map_err(|at_pickup| deadline.shed(planned.degraded.map_or(at_pickup, |d| d.reason)))?;
        let values = values?;
        // What this request cost outside the queue: encoding (its share for the rows run)
        // and inference.
        let share = values.rows as f64 / planned.scored as f64;
        let took = encode_time.mul_f64(share) + infer_time;
        if let Some(predicted) = predicted {
            record_prediction(app, model, predicted + encode_time.mul_f64(share), took);
        }
        answering.cost.observe(values.rows, took);
        let degraded = degrade::settle(planned.degraded, cut, planned.scored, values.rows);
        (values, degraded)
    };
    let t = Instant::now();
    let scores = model.combine(&values, &weights)?;
    timing.rank = micros(t.elapsed());
    Ok(Scored { values, scores, order, degraded, catalog, misses })
}

/// What the answer lists, in order: the best `top_k` best first, then the candidates left
/// unscored in the order they would have been scored.
fn listed(app: &App, req: &RankRequest<'_>, scored: &Scored) -> Vec<Listed> {
    let n = req.candidates.len();
    let limit = req.top_k.unwrap_or(app.config.server.default_top_k).min(n);
    let best = top_k(&scored.scores, Some(limit));
    let candidate = |row: usize| scored.order.as_ref().map_or(row, |o| o[row]);
    let unscored = (scored.values.rows..n).take(limit.saturating_sub(best.len()));
    best.iter()
        .map(|&row| (candidate(row), Some(row)))
        .chain(unscored.map(|row| (candidate(row), None)))
        .collect()
}

fn respond(
    req: &RankRequest<'_>,
    request_id: &str,
    model: &Model,
    scored: &Scored,
    listed: &[Listed],
    timing: &mut Timing,
    started: Instant,
) -> Result<Response, ApiError> {
    let t = Instant::now();
    // Per-head values only when asked: they are most of an answer's bytes.
    let serving: Vec<(usize, &str)> = if req.heads { model.serving_heads().collect() } else { Vec::new() };
    let values = &scored.values;
    let items: Vec<Item<'_>> = listed
        .iter()
        .map(|&(candidate, row)| Item {
            id: &req.candidates[candidate].id,
            score: row.map(|r| scored.scores[r]),
            heads: req.heads.then_some(Heads { serving: &serving, values, row }),
        })
        .collect();
    timing.rank += micros(t.elapsed());
    timing.total = micros(started.elapsed());
    let response = RankResponse {
        request_id,
        model: model.name(),
        version: model.version(),
        items,
        degraded: scored.degraded,
        catalog: scored.catalog.as_deref().map(|c| CatalogAnswer {
            name: &c.name,
            version: &c.version,
            misses: scored.misses.iter().map(|&i| &req.candidates[i].id).collect(),
        }),
        timing_us: timing,
    };
    let json = serde_json::to_vec(&response).map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut response = (StatusCode::OK, json).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(&timing.server_timing()) {
        headers.insert("server-timing", v);
    }
    Ok(response)
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

/// Encodes the first `count` candidates of `order` (the order sent when `None`), each over
/// its item in `items`' catalog when there is one; returns the encoding and the candidates the
/// catalog lacks. Indices, in an error as in the misses, are the candidates' in the request.
fn encode_in_order(
    model: &Model,
    items: Option<&ItemsFor>,
    req: &request::RankRequest<'_>,
    order: Option<&[usize]>,
    count: usize,
) -> Result<(Encoded, Vec<usize>), ApiError> {
    let in_request = |i: usize| order.map_or(i, |o| o[i]);
    let picked = (0..count).map(|i| &req.candidates[in_request(i)]);
    let vectors = items.and_then(|i| i.vectors.as_deref());
    let found = retort_model::catalog::look_up(items.map(|i| &*i.catalog), picked, vectors);
    let encoded = model.encode_found(&req.context, &found, vectors).map_err(|mut e| {
        if let Location::Candidate(row) = e.location {
            e.location = Location::Candidate(in_request(row));
        }
        ApiError::from(e)
    })?;
    Ok((encoded, found.misses.into_iter().map(in_request).collect()))
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

/// Candidates the catalog lacked, which took the manifest's defaults.
fn record_misses(app: &App, model: &Model, catalog: Option<&ItemCatalog>, misses: usize) {
    if let Some(catalog) = catalog.filter(|_| misses > 0) {
        app.metrics
            .catalog_misses
            .get_or_create(&CatalogLabels { model: model.name().to_string(), catalog: catalog.name.clone() })
            .inc_by(misses as u64);
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

fn record_stages(app: &App, model: &Model, timing: &Timing, candidates: usize) {
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

#[derive(Serialize)]
struct RankResponse<'a> {
    request_id: &'a str,
    model: &'a str,
    version: &'a str,
    items: Vec<Item<'a>>,
    degraded: Option<Degraded>,
    /// The catalog the candidates were looked up in, when one was.
    #[serde(skip_serializing_if = "Option::is_none")]
    catalog: Option<CatalogAnswer<'a>>,
    timing_us: &'a Timing,
}

#[derive(Serialize)]
struct CatalogAnswer<'a> {
    name: &'a str,
    version: &'a str,
    /// Candidates it lacks, in the order sent: they took the manifest's defaults.
    misses: Vec<&'a CandidateId<'a>>,
}

#[derive(Serialize)]
struct Item<'a> {
    id: &'a CandidateId<'a>,
    /// `null` for a candidate a degraded answer did not score.
    score: Option<f32>,
    /// When the request asked for them (`"heads": true`).
    #[serde(skip_serializing_if = "Option::is_none")]
    heads: Option<Heads<'a>>,
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
