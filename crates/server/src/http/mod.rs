//! The HTTP layer: routes, shared state, start-up loading and graceful shutdown.
//!
//! # Layout
//! - [`rank`]: `POST /v1/rank`, the request path read top to bottom.
//! - [`admin`]: the token-protected admin API (served versions, loading a version).
//! - [`error`]: every failure and its HTTP status, in one place.
//! - [`connections`]: accepting connections, their limits and timeouts, and the drain.
//! - [`impressions`]: which answers the impression log records, and the record of each.
//! - [`feedback`]: `POST /v1/feedback`, events about shown items, into the feedback log.
//! - [`metrics`]: Prometheus metric names and buckets.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;

pub mod admin;
pub mod connections;
pub mod error;
pub mod feedback;
pub mod impressions;
pub mod metrics;
pub mod rank;

use crate::admission::budget::BudgetRules;
use crate::admission::degrade::DegradationRules;
use crate::admission::lag;
use crate::admission::pool::InferencePool;
use crate::config::Config;
use crate::rollout::Rollout;
use metrics::Metrics;

/// State shared by every request.
pub struct App {
    pub config: Config,
    /// The model versions and what serves. Requests take a snapshot of its routing table and keep it
    /// for their whole life, so a swap never changes a request's model midway.
    pub rollout: Arc<Rollout>,
    /// Shared with the shadow tasks that outlive a request.
    pub pool: Arc<InferencePool>,
    /// Every request's budget is resolved by these.
    pub budgets: BudgetRules,
    /// The degradation ladders, each model's own where it has one.
    pub degradation: DegradationRules,
    pub metrics: Metrics,
    /// How long requests wait for the async workers before a handler sees them.
    pub lag: Arc<lag::Lag>,
    /// What answers showed, when `impressions_dir` is set.
    pub impressions: Option<impressions::Impressions>,
    /// Events about shown items, when `feedback_dir` is set.
    pub feedback: Option<retort_log::Log<retort_log::Feedback>>,
    /// Numbers requests that arrive without a `request_id`.
    request_ids: AtomicU64,
    /// Starts the ids given to requests without one, so that they differ across restarts and
    /// replicas (the impression log and feedback join on them).
    request_id_prefix: String,
    /// Set once the models found at start have all been loaded (or have failed).
    started: std::sync::atomic::AtomicBool,
}

impl App {
    /// Fails only when the impression log cannot start in its directory.
    pub fn new(config: Config) -> Result<Arc<App>, ServeError> {
        let pool = Arc::new(
            InferencePool::new(config.threads(), config.admission.queue_capacity)
                .inline_when_idle(config.inline()),
        );
        let rollout = Rollout::new(config.rollout_settings());
        let metrics = Metrics::new(&rollout.events);
        let impressions = impressions::Impressions::start(&config)?;
        let feedback = match &config.impressions.feedback_dir {
            Some(dir) => Some(retort_log::Log::start(config.log_settings(dir))?),
            None => None,
        };
        Ok(Arc::new(App {
            rollout: Arc::new(rollout),
            pool,
            budgets: config.budgets(),
            degradation: config.degradation_rules(),
            metrics,
            lag: Arc::new(lag::Lag::default()),
            impressions,
            feedback,
            request_ids: AtomicU64::new(0),
            request_id_prefix: format!("retort-{}", retort_model::rng::start_tag()),
            started: std::sync::atomic::AtomicBool::new(false),
            config,
        }))
    }

    /// The error for a request body that could not be read: too large, too slow, or cut off.
    pub(crate) fn body_error(&self, rejection: axum::extract::rejection::BytesRejection) -> error::ApiError {
        match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => {
                error::ApiError::BodyTooLarge { limit: self.config.server.max_body_bytes }
            }
            _ if connections::is_body_timeout(&rejection) => {
                error::ApiError::BodyTimeout(self.config.server.body_read_timeout_ms)
            }
            _ => error::ApiError::InvalidRequest(rejection.body_text()),
        }
    }

    /// An id for a request that came without one: unique to this process and its start.
    pub fn next_request_id(&self) -> String {
        let n = self.request_ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}-{n:x}", self.request_id_prefix)
    }

    /// True once the models found at start are loaded and warmed, and at least one serves.
    pub fn ready(&self) -> bool {
        self.started.load(std::sync::atomic::Ordering::Acquire)
            && !self.rollout.routes.load().routes.is_empty()
    }
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/rank", post(rank::rank))
        .route("/v1/feedback", post(feedback::feedback))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .merge(admin::routes())
        // Routing errors in the same JSON shape as every other error.
        .fallback(|uri: axum::http::Uri| async move { error::ApiError::NotFound(uri.path().to_string()) })
        .method_not_allowed_fallback(|method: axum::http::Method, uri: axum::http::Uri| async move {
            error::ApiError::MethodNotAllowed { method: method.to_string(), path: uri.path().to_string() }
        })
        .layer(DefaultBodyLimit::max(app.config.server.max_body_bytes))
        .with_state(app)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    let models = app.rollout.routes.load().serving();
    let ready = app.ready();
    let body = serde_json::json!({ "ready": ready, "models": models });
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    app.metrics.queue_depth.set(app.pool.queued() as i64);
    app.metrics.models_loaded.set(app.rollout.routes.load().routes.len() as i64);
    if let Some(log) = &app.impressions {
        app.metrics.sync_impressions(log.counters());
    }
    if let Some(log) = &app.feedback {
        app.metrics.sync_feedback(log.counters());
    }
    let mut by_state = std::collections::BTreeMap::<(String, &'static str), i64>::new();
    for v in app.rollout.versions() {
        *by_state.entry((v.name, v.state.as_str())).or_default() += 1;
    }
    app.rollout.events.set_versions(by_state.iter().map(|((model, state), n)| (model.as_str(), *state, *n)));
    for (model, version) in app.rollout.take_unloaded() {
        // Unless it was loaded again since: then its series are live.
        use crate::rollout::State;
        let live =
            app.rollout.state(&model, &version).is_some_and(|s| !matches!(s, State::Retired | State::Failed));
        if !live {
            app.metrics.forget_version(&model, &version);
        }
    }
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        app.metrics.render(),
    )
        .into_response()
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot read the models directory: {0}")]
    Models(#[from] retort_model::package::PackageError),
    #[error("no model could be served from {dir}: {reasons}")]
    NoModels { dir: String, reasons: String },
    #[error("cannot start the impression log: {0}")]
    Impressions(#[from] retort_log::partition::PartitionError),
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

/// Binds the configured address.
pub async fn bind(config: &Config) -> Result<TcpListener, ServeError> {
    TcpListener::bind(config.server.listen)
        .await
        .map_err(|source| ServeError::Bind { addr: config.server.listen, source })
}

/// Serves `app` on `listener` until `shutdown` completes, then drains in-flight requests (for
/// at most the configured drain timeout). Models load in the background: `/healthz` answers at
/// once, `/readyz` once a model is loaded and warmed. Fails if no model can be loaded at all.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, models_dir = %app.config.rollout.models_dir.display(), engine = %app.config.rollout.engine, "listening");
    for deprecation in app.config.deprecations() {
        tracing::warn!("config: {deprecation}");
    }

    let watching = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loader = {
        let (app, watching) = (app.clone(), watching.clone());
        // Loading compiles graphs: on a thread of its own, never on the async workers. Once the
        // first versions serve, the same thread watches for new ones until shutdown.
        let (done, loaded) = tokio::sync::oneshot::channel();
        std::thread::Builder::new().name("retort-rollout".into()).spawn(move || {
            let result = load_models(&app);
            let ok = result.is_ok();
            let _ = done.send(result);
            if ok {
                let poll = Duration::from_millis(app.config.rollout.poll_interval_ms);
                crate::rollout::watch::run(
                    app.rollout.clone(),
                    poll,
                    app.config.rollout.canary.clone(),
                    watching,
                );
            }
        })?;
        loaded
    };
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let limits = connections::Limits {
        max_connections: connections::connection_limit(app.config.server.max_connections),
        header_read_timeout: Duration::from_millis(app.config.server.header_read_timeout_ms),
        body_read_timeout: Duration::from_millis(app.config.server.body_read_timeout_ms),
        max_body_bytes: app.config.server.max_body_bytes,
    };
    tracing::info!(max_connections = limits.max_connections, "accepting connections");
    let drain = Duration::from_millis(app.config.server.drain_timeout_ms);
    let server = tokio::spawn(connections::serve(
        listener,
        router(app.clone()),
        limits,
        app.clone(),
        drain,
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        },
    ));
    lag::spawn_probe(app.lag.clone());

    tokio::pin!(shutdown);
    let failure = tokio::select! {
        _ = &mut shutdown => None,
        loaded = loader => match loaded {
            Ok(Ok(())) => {
                shutdown.await;
                None
            }
            Ok(Err(e)) => Some(e),
            Err(_) => Some(ServeError::Io(std::io::Error::other("the model loader stopped"))),
        },
    };
    watching.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = stop.send(true);
    if app.config.rollout.persist_warmup
        && let Err(e) = app.rollout.warmup.save(&app.config.rollout.models_dir)
    {
        tracing::warn!(error = %e, "could not keep the warm-up requests for the next start");
    }
    // The connection loop drains within `drain` itself; this only joins it.
    let joined = server.await;
    // After the drain, so that the answers given during it are logged too.
    if let Some(log) = &app.impressions {
        log.close();
    }
    if let Some(log) = &app.feedback {
        log.close();
    }
    if let Err(join) = joined {
        return Err(ServeError::Io(std::io::Error::other(join.to_string())));
    }
    failure.map_or(Ok(()), Err)
}

/// Loads, validates and warms the newest version of every model and makes it serve (whatever
/// the rollout policy: nothing serves yet). Packages that fail are reported and skipped; it is
/// an error only when none loads.
fn load_models(app: &App) -> Result<(), ServeError> {
    // Before the models, so that their warm-up replays requests over the items they will read.
    app.rollout.refresh_items();
    let dir = &app.config.rollout.models_dir;
    let mut failures = Vec::new();
    for (name, p) in retort_model::package::latest(dir)? {
        let staged =
            app.rollout.stage(&name, &p.version).and_then(|()| app.rollout.promote(&name, &p.version));
        if let Err(e) = staged {
            tracing::error!(dir = %p.dir.display(), error = %e, "model failed to load");
            failures.push(format!("{}: {e}", p.dir.display()));
        }
    }
    app.rollout.settle_default();
    for route in app.rollout.routes.load().routes.values() {
        let manifest = &route.serving.model.manifest;
        match app.rollout.items.for_model(manifest) {
            Some(c) => {
                tracing::info!(model = %manifest.model.name, catalog = %c.name, "candidates looked up in a catalog")
            }
            None => {
                if let Some(why) = app.rollout.items.ambiguity(manifest) {
                    tracing::warn!("{why}");
                }
            }
        }
    }
    app.started.store(true, std::sync::atomic::Ordering::Release);
    if app.rollout.routes.load().routes.is_empty() {
        let reasons = if failures.is_empty() {
            "it holds no model package (<name>/<version>/{model.onnx, manifest.toml})".to_string()
        } else {
            failures.join("; ")
        };
        return Err(ServeError::NoModels { dir: dir.display().to_string(), reasons });
    }
    Ok(())
}
