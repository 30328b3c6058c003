//! The admin API: which model versions and catalogs are served, and loading a published
//! version into service.
//!
//! Every call needs `Authorization: Bearer <admin_token>`. With no token configured the admin
//! API refuses every call (403), unless the operator opened it with `admin_open_on_loopback`
//! on a loopback listen address. The ranking API never needs the token.
//!
//! The operations are [`crate::rollout::Rollout`]'s: `load` (then the model's policy), `promote`,
//! `canary {"percent": N}`, `shadow {"percent": N}` and `rollback`; each change of what serves
//! is one atomic swap, and requests already running finish on the version they started with.

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::App;
use super::error::ApiError;
use retort_model::package;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/models", get(list))
        .route("/v1/models/{name}/versions/{version}/load", post(load))
        .route("/v1/models/{name}/versions/{version}/promote", post(promote))
        .route("/v1/models/{name}/versions/{version}/canary", post(canary))
        .route("/v1/models/{name}/versions/{version}/shadow", post(shadow))
        .route("/v1/models/{name}/rollback", post(rollback))
        .route("/v1/catalogs", get(catalogs))
        .route("/v1/catalogs/{name}/versions/{version}/load", post(load_catalog))
        .route("/v1/catalogs/{name}/rollback", post(roll_back_catalog))
}

/// An authorized operator: every admin handler takes one, and extracting it checks the bearer
/// token, so no handler can forget to.
struct Operator;

impl FromRequestParts<Arc<App>> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        authorize(app, &parts.headers).map(|()| Operator)
    }
}

fn authorize(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    match &app.config.admin.admin_token {
        Some(token) => {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            match given {
                Some(g) if same_secret(g.as_bytes(), token.as_bytes()) => Ok(()),
                _ => Err(ApiError::Unauthorized),
            }
        }
        None if app.config.admin.admin_open_on_loopback && app.config.server.listen.ip().is_loopback() => {
            Ok(())
        }
        None => Err(ApiError::AdminDisabled),
    }
}

fn json_response(body: Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// Compares without stopping at the first difference, so the time taken does not tell an
/// attacker how much of a guess was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A path segment that names a directory inside the models directory, and nothing else.
fn segment(s: &str) -> Result<&str, ApiError> {
    if s.is_empty() || s.starts_with('.') || s.contains(['/', '\\', '\0']) {
        return Err(ApiError::InvalidRequest(format!("`{s}` is not a model name or version")));
    }
    Ok(s)
}

/// `GET /v1/models`: every version the server has seen, with its state, why it is in it, when
/// it loaded, and what it has served; and every package published in the models directory.
async fn list(_: Operator, State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    let rollout = app.rollout.clone();
    let (versions, published) =
        tokio::task::spawn_blocking(move || (rollout.versions(), package::discover(rollout.models_dir())))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
    let published = published.map_err(|e| ApiError::Internal(e.to_string()))?;
    let table = app.rollout.routes.load_full();
    let models: Vec<Value> = versions
        .iter()
        .map(|v| {
            let mut entry = serde_json::to_value(v).unwrap_or(Value::Null);
            if let (Some(obj), Some(route)) = (entry.as_object_mut(), table.routes.get(&v.name))
                && route.serving.version() == v.version
            {
                obj.insert("fallback".into(), json!(route.serving.model.manifest.model.fallback));
                obj.insert("is_fallback".into(), json!(table.is_fallback(&v.name)));
            }
            entry
        })
        .collect();
    let published: Vec<Value> =
        published.iter().map(|p| json!({ "name": p.name, "version": p.version })).collect();
    Ok(json_response(json!({ "models": models, "published": published })))
}

/// The state a version is in, as the operation's answer.
fn answer(app: &App, name: &str, version: &str) -> Response {
    let info = app.rollout.versions().into_iter().find(|v| v.name == name && v.version == version);
    json_response(serde_json::to_value(info).unwrap_or(Value::Null))
}

/// `POST .../load`: load, validate and warm off the serving path; then the model's policy
/// promotes it (`auto`) or leaves it staged (`manual`).
async fn load(
    _: Operator,
    State(app): State<Arc<App>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    segment(&name)?;
    segment(&version)?;
    // The rollout's own thread loads it: compiling a graph never runs on the async workers or
    // the inference pool.
    let loaded = app.rollout.request_load(&name, &version);
    loaded.await.map_err(|_| ApiError::NotReady)??;
    Ok(answer(&app, &name, &version))
}

async fn promote(
    _: Operator,
    State(app): State<Arc<App>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    app.rollout.promote(&name, &version)?;
    Ok(answer(&app, &name, &version))
}

/// The `{"percent": N}` body of canary and shadow.
fn percent(body: &[u8]) -> Result<u32, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    v.get("percent")
        .and_then(Value::as_u64)
        .map(|p| p.min(u64::from(u32::MAX)) as u32)
        .ok_or_else(|| ApiError::InvalidRequest("the body must be {\"percent\": 0..100}".into()))
}

async fn canary(
    _: Operator,
    State(app): State<Arc<App>>,
    Path((name, version)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    app.rollout.canary(&name, &version, percent(&body)?)?;
    Ok(answer(&app, &name, &version))
}

async fn shadow(
    _: Operator,
    State(app): State<Arc<App>>,
    Path((name, version)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    app.rollout.shadow(&name, &version, percent(&body)?)?;
    Ok(answer(&app, &name, &version))
}

/// `POST /v1/models/{name}/rollback`: the previous version serves again, in one swap.
async fn rollback(
    _: Operator,
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let version = app.rollout.rollback(&name, "rolled back by an operator")?;
    Ok(answer(&app, &name, &version))
}

/// `GET /v1/catalogs`: every catalog serving (version, items, columns, memory, the version a
/// rollback returns to), every version refused and why, and the newest published.
async fn catalogs(_: Operator, State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    let rollout = app.rollout.clone();
    let (serving, refused, published) = tokio::task::spawn_blocking(move || {
        let (serving, refused) = rollout.items.list();
        let dir = rollout.items.dir();
        let published = if dir.is_dir() {
            retort_model::catalog::file::latest(dir).unwrap_or_default()
        } else {
            Vec::new()
        };
        (serving, refused, published)
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    let published: Vec<Value> =
        published.iter().map(|p| json!({ "name": p.name, "version": p.version })).collect();
    Ok(json_response(json!({ "catalogs": serving, "refused": refused, "published": published })))
}

/// The catalog `name` as listed.
fn catalog_answer(app: &App, name: &str) -> Response {
    let (serving, _) = app.rollout.items.list();
    json_response(serde_json::to_value(serving.into_iter().find(|c| c.name == name)).unwrap_or(Value::Null))
}

/// `POST /v1/catalogs/{name}/versions/{version}/load`: read and check that version beside the
/// serving one, then swap it in (an older one too).
async fn load_catalog(
    _: Operator,
    State(app): State<Arc<App>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    segment(&name)?;
    segment(&version)?;
    let n = name.clone();
    catalog_operation(&app, move |rollout| rollout.load_items(&n, &version)).await?;
    Ok(catalog_answer(&app, &name))
}

/// Runs a catalog operation off the async workers: reading a large catalog, and computing the
/// models' item-tower outputs for it, take a while.
async fn catalog_operation<T: Send + 'static>(
    app: &App,
    op: impl FnOnce(&crate::rollout::Rollout) -> Result<T, crate::rollout::items::ItemsError> + Send + 'static,
) -> Result<T, ApiError> {
    let rollout = app.rollout.clone();
    Ok(tokio::task::spawn_blocking(move || op(&rollout))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??)
}

/// `POST /v1/catalogs/{name}/rollback`: the previous version serves again, in one swap.
async fn roll_back_catalog(
    _: Operator,
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let n = name.clone();
    catalog_operation(&app, move |rollout| rollout.rollback_items(&n)).await?;
    Ok(catalog_answer(&app, &name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        assert!(!same_secret(b"s3cret", b"s3creT"));
        assert!(!same_secret(b"s3cret", b"s3cre"));
    }

    #[test]
    fn segments_cannot_leave_the_models_directory() {
        for bad in ["", "..", ".hidden", "a/b", "a\\b"] {
            assert!(segment(bad).is_err(), "{bad:?}");
        }
        assert_eq!(segment("music-ranker").unwrap(), "music-ranker");
    }
}
