//! The models being served, by name, and how a request's `model` field picks one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use retort_model::catalog::Catalog;
use retort_model::item_tower::{ItemVectors, ItemVectorsError};
use retort_model::{ItemSource, Model};

use crate::rollout::stats::VersionStats;

use crate::admission::cost::CostModel;

/// A loaded model version with the record of what it has served.
pub struct Served {
    pub model: Arc<Model>,
    pub stats: Arc<VersionStats>,
    /// How long this version takes per request, for admission control.
    pub cost: CostModel,
    /// For a model with an item tower: its tower's outputs for the items of the catalogs it
    /// reads (one per catalog serving; briefly two while one swaps in).
    vectors: ArcSwap<Vec<Arc<ItemVectors>>>,
    /// Serialises [`Served::prepare_vectors`], so that no catalog's vectors are computed twice.
    preparing: Mutex<()>,
}

/// The catalog a version reads candidates' items from, with its items' tower outputs for that
/// version when it has an item tower.
#[derive(Clone)]
pub struct ItemsFor {
    pub catalog: Arc<Catalog>,
    pub vectors: Option<Arc<ItemVectors>>,
}

impl ItemsFor {
    pub fn source(&self) -> ItemSource<'_> {
        ItemSource { catalog: &self.catalog, vectors: self.vectors.as_deref() }
    }
}

impl Served {
    /// Wraps a loaded model, timing it first so that admission can predict its first requests;
    /// `vectors` are its item tower's outputs for a catalog, computed already.
    pub fn new(model: Model, vectors: Option<Arc<ItemVectors>>) -> Arc<Served> {
        let cost = CostModel::default();
        cost.calibrate(&model);
        Arc::new(Served {
            model: Arc::new(model),
            stats: Arc::new(VersionStats::default()),
            cost,
            vectors: ArcSwap::from_pointee(vectors.into_iter().collect()),
            preparing: Mutex::new(()),
        })
    }

    pub fn version(&self) -> &str {
        self.model.version()
    }

    /// What this version reads candidates from, given the catalog it reads.
    pub fn items(&self, catalog: Option<Arc<Catalog>>) -> Option<ItemsFor> {
        let catalog = catalog?;
        let vectors = self.vectors.load().iter().find(|v| v.is_for(&catalog)).cloned();
        Some(ItemsFor { catalog, vectors })
    }

    /// Makes sure this version has its item tower's outputs for `catalog`'s items, computing
    /// those of the layers that no vectors it holds share (a delta's items only). Nothing for a
    /// model without an item tower.
    pub fn prepare_vectors(&self, catalog: &Arc<Catalog>) -> Result<(), ItemVectorsError> {
        if self.model.tower().is_none() {
            return Ok(());
        }
        let _one_at_a_time = self.preparing.lock().unwrap_or_else(|e| e.into_inner());
        let held = self.vectors.load_full();
        if held.iter().any(|v| v.is_for(catalog)) {
            return Ok(());
        }
        let reuse: Vec<&ItemVectors> = held.iter().map(|v| &**v).collect();
        if let Some(computed) = ItemVectors::compute(&self.model, catalog, &reuse)? {
            let mut next = (*held).clone();
            next.push(Arc::new(computed));
            self.vectors.store(Arc::new(next));
        }
        Ok(())
    }

    /// Drops the vectors of catalogs that `keep` says no longer serve.
    pub fn retain_vectors(&self, keep: impl Fn(&Catalog) -> bool) {
        let _one_at_a_time = self.preparing.lock().unwrap_or_else(|e| e.into_inner());
        let held = self.vectors.load_full();
        if held.iter().all(|v| keep(v.catalog())) {
            return;
        }
        self.vectors.store(Arc::new(held.iter().filter(|v| keep(v.catalog())).cloned().collect()));
    }

    /// Bytes held by its item tower's outputs, and the catalog versions they are for.
    pub fn vectors_held(&self) -> (usize, Vec<String>) {
        let held = self.vectors.load();
        let bytes = held.iter().map(|v| v.heap_bytes()).sum();
        (bytes, held.iter().map(|v| format!("{}/{}", v.catalog().name, v.catalog().version)).collect())
    }
}

/// A share of traffic sent to (canary) or copied to (shadow) a candidate version.
#[derive(Clone)]
pub struct Split {
    pub to: Arc<Served>,
    /// 1..=100.
    pub percent: u8,
}

/// Where one model's requests go. The states the admin API shows for a model's loaded
/// versions are read off this one value (serving, previous, canary, shadow, else staged), so a
/// state can never disagree with the routing in force.
#[derive(Clone)]
pub struct Route {
    pub serving: Arc<Served>,
    /// The version `serving` replaced, kept loaded for a rollback; never answers.
    pub previous: Option<Arc<Served>>,
    /// Answers `percent` of users (by a hash of their id) instead of `serving`.
    pub canary: Option<Split>,
    /// Also scores `percent` of requests, off the critical path, for comparison.
    pub shadow: Option<Split>,
}

impl Route {
    pub fn serving(serving: Arc<Served>) -> Route {
        Route { serving, previous: None, canary: None, shadow: None }
    }

    /// The role `served` plays in this route, with its share of traffic; `None` when it plays
    /// none (a staged version).
    pub fn role_of(&self, served: &Arc<Served>) -> Option<(Role, Option<u8>)> {
        let is = |other: &Arc<Served>| Arc::ptr_eq(other, served);
        if is(&self.serving) {
            Some((Role::Serving, None))
        } else if self.canary.as_ref().is_some_and(|c| is(&c.to)) {
            Some((Role::Canary, self.canary.as_ref().map(|c| c.percent)))
        } else if self.shadow.as_ref().is_some_and(|s| is(&s.to)) {
            Some((Role::Shadow, self.shadow.as_ref().map(|s| s.percent)))
        } else if self.previous.as_ref().is_some_and(is) {
            Some((Role::Previous, None))
        } else {
            None
        }
    }

    /// The version that answers a request whose sticky key is `key` (a hash of the user id):
    /// the same user always lands on the same side of a canary.
    pub fn pick(&self, key: u64) -> &Arc<Served> {
        match &self.canary {
            Some(c) if key % 100 < u64::from(c.percent) => &c.to,
            _ => &self.serving,
        }
    }

    /// The shadow version, when request `key` is in its share.
    pub fn shadow_for(&self, key: u64) -> Option<&Arc<Served>> {
        // A different cut of the key space than the canary's, so the two samples are independent.
        self.shadow.as_ref().filter(|s| (key / 100) % 100 < u64::from(s.percent)).map(|s| &s.to)
    }
}

/// What a loaded version does in its model's route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Serving,
    Previous,
    Canary,
    Shadow,
}

/// An immutable snapshot of the served models; replaced whole, never mutated. A request takes
/// one snapshot and is answered entirely by the versions in it.
#[derive(Default, Clone)]
pub struct Routes {
    pub routes: BTreeMap<String, Route>,
    /// Used when a request names no model.
    pub default_model: Option<String>,
}

/// Why a request's `model` field picks no route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("unknown model `{name}`; serving: {serving}")]
    UnknownModel { name: String, serving: String },
    #[error("the request names no model and several are served ({serving}); name one")]
    ModelRequired { serving: String },
    #[error("no model is loaded yet")]
    NotReady,
}

impl Routes {
    pub fn resolve(&self, name: Option<&str>) -> Result<&Route, ResolveError> {
        let name = match (name, &self.default_model) {
            (Some(n), _) => n,
            (None, Some(d)) => d.as_str(),
            (None, None) if self.routes.is_empty() => return Err(ResolveError::NotReady),
            (None, None) => return Err(ResolveError::ModelRequired { serving: self.names() }),
        };
        self.routes
            .get(name)
            .ok_or_else(|| ResolveError::UnknownModel { name: name.to_string(), serving: self.names() })
    }

    /// The model a request naming none should get, judged from the models served now: the
    /// only one, or the only one no other declares as its fallback (with a student and its
    /// fallback served, the student). `None` when that leaves a choice.
    pub fn primary(&self) -> Option<String> {
        let mut primary = self.routes.keys().filter(|name| !self.is_fallback(name));
        match (primary.next(), primary.next()) {
            (Some(name), None) => Some(name.clone()),
            _ => None,
        }
    }

    /// The serving version of the fallback `model` declares, when it is served.
    pub fn fallback_for(&self, model: &Model) -> Option<&Arc<Served>> {
        let name = model.manifest.model.fallback.as_deref().filter(|f| *f != model.name())?;
        self.routes.get(name).map(|r| &r.serving)
    }

    /// Whether another served model declares `name` as its fallback.
    pub fn is_fallback(&self, name: &str) -> bool {
        self.routes
            .iter()
            .any(|(n, r)| n != name && r.serving.model.manifest.model.fallback.as_deref() == Some(name))
    }

    /// `name/version` of every serving version.
    pub fn serving(&self) -> Vec<String> {
        self.routes.iter().map(|(n, r)| format!("{n}/{}", r.serving.version())).collect()
    }

    fn names(&self) -> String {
        self.routes.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}
