//! The models being served, by name, and how a request's `model` field picks one.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::model::engine::EngineKind;
use crate::model::{Model, package};

use super::error::ApiError;

/// An immutable snapshot of the served models; replaced whole, never mutated.
#[derive(Default)]
pub struct Catalog {
    pub models: BTreeMap<String, Arc<Model>>,
    /// Used when a request names no model.
    pub default_model: Option<String>,
}

impl Catalog {
    pub fn resolve(&self, name: Option<&str>) -> Result<&Arc<Model>, ApiError> {
        let name = match (name, &self.default_model) {
            (Some(n), _) => n,
            (None, Some(d)) => d.as_str(),
            (None, None) if self.models.is_empty() => return Err(ApiError::NotReady),
            (None, None) => {
                // A model that only stands in for another (its declared fallback) is never the
                // default: with a student and its fallback served, the student answers.
                let mut primary = self.models.values().filter(|m| !self.is_fallback(m.name()));
                return match (primary.next(), primary.next()) {
                    (Some(m), None) => Ok(m),
                    _ => Err(ApiError::ModelRequired { serving: self.names() }),
                };
            }
        };
        self.models
            .get(name)
            .ok_or_else(|| ApiError::UnknownModel { name: name.to_string(), serving: self.names() })
    }

    /// Whether another served model declares `name` as its fallback.
    pub fn is_fallback(&self, name: &str) -> bool {
        self.models.values().any(|m| m.name() != name && m.manifest.model.fallback.as_deref() == Some(name))
    }

    fn names(&self) -> String {
        self.models.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// Models that loaded, by name.
pub type Loaded = BTreeMap<String, Arc<Model>>;

/// A package that failed to load, with the reason.
#[derive(Debug)]
pub struct LoadFailure {
    pub dir: String,
    pub reason: String,
}

/// Loads and warms the newest version of every model under `models_dir`. Packages that fail
/// are reported and skipped; the caller decides whether what loaded is enough.
pub fn load_latest(
    models_dir: &Path,
    engine: EngineKind,
) -> Result<(Loaded, Vec<LoadFailure>), package::PackageError> {
    let mut models = BTreeMap::new();
    let mut failures = Vec::new();
    for (name, p) in package::latest(models_dir)? {
        let started = std::time::Instant::now();
        match Model::load(&p.dir, engine).inspect(warm_up) {
            Ok(model) => {
                tracing::info!(
                    model = %name,
                    version = %p.version,
                    engine = %engine,
                    load_ms = started.elapsed().as_millis() as u64,
                    "model loaded and warmed"
                );
                models.insert(name, Arc::new(model));
            }
            Err(e) => {
                tracing::error!(dir = %p.dir.display(), error = %e, "model failed to load");
                failures.push(LoadFailure { dir: p.dir.display().to_string(), reason: e.to_string() });
            }
        }
    }
    Ok((models, failures))
}

/// Runs the golden examples at a few batch sizes so the engine has sized its buffers before
/// the first real request pays for it.
pub fn warm_up(model: &Model) {
    for example in &model.manifest.golden.examples {
        for copies in [1usize, 16, 128] {
            let mut wide = example.clone();
            let base = example.candidates.clone();
            wide.candidates = base.iter().cycle().take(base.len() * copies).cloned().collect();
            let _ = model.run_example(&wide);
        }
    }
}
