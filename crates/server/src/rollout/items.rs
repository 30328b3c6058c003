//! The item catalogs requests look candidates up in: the newest complete version of each
//! catalog under the catalogs directory, and which one each model reads.
//!
//! A model reads the catalog its `[models.<name>] catalog` names or, without one, the catalog
//! keyed by one of its item features (a catalog of `track_id`s for a model with a `track_id`
//! feature) when exactly one is. A newer version of a catalog is read beside the one serving
//! and swapped in whole; one that cannot be read leaves the serving version as it was.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use retort_model::catalog::Catalog;
use retort_model::catalog::file;
use retort_model::manifest::{Manifest, Side};

pub struct Items {
    dir: PathBuf,
    /// By catalog name: one atomic load per request.
    current: ArcSwap<BTreeMap<String, Arc<Catalog>>>,
    /// `[models.<name>] catalog`: a model's catalog by name.
    named: BTreeMap<String, String>,
    /// Catalog versions that failed to load, by directory, so a bad one is reported once, not
    /// on every poll.
    refused: std::sync::Mutex<BTreeMap<PathBuf, String>>,
}

/// What a refresh did to one catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refreshed {
    Loaded { name: String, version: String, items: usize },
    Refused { name: String, version: String, error: String },
}

impl Items {
    pub fn new(dir: PathBuf, named: BTreeMap<String, String>) -> Items {
        Items { dir, current: ArcSwap::default(), named, refused: Default::default() }
    }

    /// Reads every catalog whose newest complete version is not the one serving, and swaps
    /// the new ones in together. A version that fails to read is reported (once) and the
    /// serving version, if any, stays. A missing catalogs directory is no catalog.
    pub fn refresh(&self) -> Vec<Refreshed> {
        if !self.dir.is_dir() {
            return Vec::new();
        }
        let found = match file::latest(&self.dir) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the catalogs directory");
                return Vec::new();
            }
        };
        let serving = self.current.load_full();
        let mut next = (*serving).clone();
        let mut done = Vec::new();
        for found in found {
            if serving.get(&found.name).is_some_and(|c| c.version == found.version) {
                continue;
            }
            let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
            if refused.contains_key(&found.dir) {
                continue;
            }
            let started = std::time::Instant::now();
            match file::read(&found.dir) {
                Ok(catalog) => {
                    tracing::info!(
                        catalog = %found.name,
                        version = %found.version,
                        items = catalog.len(),
                        seconds = started.elapsed().as_secs_f64(),
                        "catalog loaded"
                    );
                    done.push(Refreshed::Loaded {
                        name: found.name.clone(),
                        version: found.version.clone(),
                        items: catalog.len(),
                    });
                    next.insert(found.name, Arc::new(catalog));
                }
                Err(e) => {
                    tracing::error!(catalog = %found.name, version = %found.version, error = %e, "catalog refused");
                    refused.insert(found.dir.clone(), e.to_string());
                    done.push(Refreshed::Refused {
                        name: found.name,
                        version: found.version,
                        error: e.to_string(),
                    });
                }
            }
        }
        if done.iter().any(|d| matches!(d, Refreshed::Loaded { .. })) {
            self.current.store(Arc::new(next));
        }
        done
    }

    /// Every catalog serving, by name.
    pub fn serving(&self) -> Arc<BTreeMap<String, Arc<Catalog>>> {
        self.current.load_full()
    }

    /// The catalog `manifest`'s model reads, if any.
    pub fn for_model(&self, manifest: &Manifest) -> Option<Arc<Catalog>> {
        let current = self.current.load();
        if let Some(name) = self.named.get(&manifest.model.name) {
            return current.get(name).cloned();
        }
        let mut keyed = current
            .values()
            .filter(|c| manifest.features.iter().any(|f| f.side == Side::Item && f.name == c.id_column));
        match (keyed.next(), keyed.next()) {
            (Some(only), None) => Some(only.clone()),
            _ => None,
        }
    }

    /// Why `manifest`'s model reads no catalog although several would fit, to warn about.
    pub fn ambiguity(&self, manifest: &Manifest) -> Option<String> {
        if self.named.contains_key(&manifest.model.name) {
            return None;
        }
        let current = self.current.load();
        let keyed: Vec<&str> = current
            .values()
            .filter(|c| manifest.features.iter().any(|f| f.side == Side::Item && f.name == c.id_column))
            .map(|c| c.name.as_str())
            .collect();
        (keyed.len() > 1).then(|| {
            format!(
                "model `{}` could read catalogs {}; name one with [models.{}] catalog",
                manifest.model.name,
                keyed.join(", "),
                manifest.model.name
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use retort_model::catalog::{Builder, Cell, ColumnKind};

    fn catalog(name: &str, version: &str, id_column: &str, n: usize) -> Catalog {
        let columns = [("duration_s".to_string(), ColumnKind::Number)];
        let mut b = Builder::new(name, version, id_column, &columns, n).unwrap();
        for i in 0..n {
            b.push(&format!("t{i}"), &[Cell::Number(i as f64)]).unwrap();
        }
        b.finish()
    }

    fn manifest(name: &str) -> Manifest {
        let (mut m, _) = retort_model::scaffold::seeded_package(name, "1", 1);
        m.model.name = name.into();
        m
    }

    #[test]
    fn a_new_version_swaps_in_whole_and_a_bad_one_leaves_the_serving_one() {
        let dir = tempfile::tempdir().unwrap();
        let items = Items::new(dir.path().join("catalogs"), BTreeMap::new());
        assert!(items.refresh().is_empty());
        file::write(&dir.path().join("catalogs"), &catalog("music", "1", "track_id", 3), "").unwrap();
        assert_eq!(
            items.refresh(),
            [Refreshed::Loaded { name: "music".into(), version: "1".into(), items: 3 }]
        );
        assert!(items.refresh().is_empty(), "nothing new: nothing read");
        let m = manifest("music-ranker");
        assert_eq!(items.for_model(&m).unwrap().version, "1");

        let bad =
            file::write(&dir.path().join("catalogs"), &catalog("music", "2", "track_id", 5), "").unwrap();
        let bytes = std::fs::read(bad.join(file::ITEMS)).unwrap();
        std::fs::write(bad.join(file::ITEMS), &bytes[..bytes.len() / 2]).unwrap();
        let refreshed = items.refresh();
        assert!(
            matches!(&refreshed[..], [Refreshed::Refused { version, .. }] if version == "2"),
            "{refreshed:?}"
        );
        assert!(items.refresh().is_empty(), "a refused version is reported once");
        assert_eq!(items.for_model(&m).unwrap().version, "1");

        file::write(&dir.path().join("catalogs"), &catalog("music", "3", "track_id", 7), "").unwrap();
        items.refresh();
        assert_eq!(items.for_model(&m).unwrap().len(), 7);
    }

    #[test]
    fn a_model_reads_the_catalog_keyed_by_its_item_feature_or_the_one_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let catalogs = dir.path().join("catalogs");
        file::write(&catalogs, &catalog("music", "1", "track_id", 1), "").unwrap();
        file::write(&catalogs, &catalog("artists", "1", "artist_id", 1), "").unwrap();
        file::write(&catalogs, &catalog("videos", "1", "video_id", 1), "").unwrap();
        let items = Items::new(catalogs.clone(), BTreeMap::new());
        items.refresh();
        let m = manifest("music-ranker");
        // The shipped model has both `track_id` and `artist_id` item features: ambiguous.
        assert!(items.for_model(&m).is_none());
        assert!(items.ambiguity(&m).unwrap().contains("artists, music"));
        let named = Items::new(catalogs, [("music-ranker".to_string(), "music".to_string())].into());
        named.refresh();
        assert_eq!(named.for_model(&m).unwrap().name, "music");
        assert!(named.ambiguity(&m).is_none());
    }
}
