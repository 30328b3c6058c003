//! The admin API: which versions are served, and loading a published version into service.
//!
//! Every call needs `Authorization: Bearer <admin_token>`. With no token configured the admin
//! API refuses every call (403), unless the operator opened it with `admin_open_on_loopback`
//! on a loopback listen address. The ranking API never needs the token.
//!
//! `POST /v1/models/{name}/versions/{version}/load` loads the package, checks its golden
//! examples, warms it, and swaps it in for the model's current version in one atomic step:
//! requests already running finish on the version they started with.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::App;
use super::catalog::{self, Catalog};
use super::error::ApiError;
use crate::model::{Model, package};

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/models", get(list))
        .route("/v1/models/{name}/versions/{version}/load", post(load))
}

fn authorize(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    match &app.config.admin_token {
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
        None if app.config.admin_open_on_loopback && app.config.listen.ip().is_loopback() => Ok(()),
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

/// `GET /v1/models`: the version of each model being served, and every package on disk.
async fn list(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    let snapshot = app.catalog.load_full();
    let serving: Vec<Value> = snapshot
        .models
        .values()
        .map(|m| {
            json!({
                "name": m.name(),
                "version": m.version(),
                "state": "serving",
                "engine": m.engine_kind().to_string(),
                "fallback": m.manifest.model.fallback,
                "is_fallback_of": snapshot.models.values()
                    .filter(|o| o.manifest.model.fallback.as_deref() == Some(m.name()))
                    .map(|o| o.name())
                    .collect::<Vec<_>>(),
                "heads": m.serving_heads().map(|(_, h)| h).collect::<Vec<_>>(),
            })
        })
        .collect();
    let dir = app.config.models_dir.clone();
    let on_disk = tokio::task::spawn_blocking(move || package::discover(&dir))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let published: Vec<Value> =
        on_disk.iter().map(|p| json!({ "name": p.name, "version": p.version })).collect();
    Ok(json_response(json!({ "models": serving, "published": published })))
}

/// `POST /v1/models/{name}/versions/{version}/load`: load, validate, warm, promote.
async fn load(
    State(app): State<Arc<App>>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    let dir = app.config.models_dir.join(segment(&name)?).join(segment(&version)?);
    if !dir.join(package::MANIFEST).is_file() || !dir.join(package::GRAPH).is_file() {
        return Err(ApiError::UnknownVersion { name, version });
    }
    let started = Instant::now();
    let engine = app.config.engine;
    // Loading compiles the graph and warming runs it: both off the async workers.
    let model = tokio::task::spawn_blocking(move || Model::load(&dir, engine).inspect(catalog::warm_up))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::InvalidModel {
            package: format!("{name}/{version}"),
            reason: e.to_string(),
        })?;
    if model.name() != name || model.version() != version {
        return Err(ApiError::InvalidModel {
            package: format!("{name}/{version}"),
            reason: format!("its manifest says it is {}/{}", model.name(), model.version()),
        });
    }
    let model = Arc::new(model);
    let mut previous = None;
    app.catalog.rcu(|current| {
        let mut models = current.models.clone();
        previous = models.insert(name.clone(), model.clone()).map(|m| m.version().to_string());
        Catalog { models, default_model: current.default_model.clone() }
    });
    let load_ms = started.elapsed().as_millis() as u64;
    tracing::info!(model = %name, %version, previous = ?previous, load_ms, "model version loaded and serving");
    Ok(json_response(json!({
        "model": name,
        "version": version,
        "state": "serving",
        "previous": previous,
        "load_ms": load_ms,
    })))
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
