//! The item catalogs requests look candidates up in: the newest complete version of each
//! catalog under the catalogs directory, and which one each model reads.
//!
//! A model reads the catalog its `[models.<name>] catalog` names or, without one, the catalog
//! keyed by one of its item features (a catalog of `track_id`s for a model with a `track_id`
//! feature) when exactly one is. A newer version of a catalog is read beside the one serving
//! and swapped in whole; one that cannot be read leaves the serving version as it was.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use retort_model::catalog::file;
use retort_model::catalog::{Catalog, ColumnKind};
use retort_model::manifest::{Manifest, Side};
use retort_model::package::compare_versions;
use serde::Serialize;

use super::events::{CatalogSwap, RolloutEvents};

#[derive(Debug, thiserror::Error)]
pub enum ItemsError {
    #[error("no catalog {name}/{version} in the catalogs directory")]
    Unknown { name: String, version: String },
    #[error("catalog {name}/{version} cannot be served: {reason}")]
    Invalid { name: String, version: String, reason: String },
    #[error("catalog {name} has no previous version to roll back to")]
    NothingToRollBack { name: String },
}

/// One catalog's versions in memory: the one serving, and the one before it, kept so that a
/// rollback is one swap.
struct Entry {
    serving: Arc<Catalog>,
    previous: Option<Arc<Catalog>>,
    /// The newest version this server has served: the poller brings only newer ones, so a
    /// rollback or an older version loaded by an operator holds until a newer one is published.
    newest_served: String,
}

#[derive(Default)]
struct Versions {
    entries: BTreeMap<String, Entry>,
    /// Versions that could not be read, with why, so that each is reported once.
    refused: BTreeMap<(String, String), String>,
}

pub struct Items {
    dir: PathBuf,
    /// By catalog name, what requests read: one atomic load per request.
    current: ArcSwap<BTreeMap<String, Arc<Catalog>>>,
    /// Serialises the operations, each of which reads the state it changes.
    versions: Mutex<Versions>,
    /// `[models.<name>] catalog`: a model's catalog by name.
    named: BTreeMap<String, String>,
    events: RolloutEvents,
}

/// Readies the models that would read a catalog version for it, or says why they cannot.
pub type Prepare<'a> = &'a dyn Fn(&Arc<Catalog>) -> Result<(), String>;

/// What a refresh did to one catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refreshed {
    Loaded { name: String, version: String, items: usize },
    Refused { name: String, version: String, error: String },
}

/// A catalog as the admin API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct CatalogInfo {
    pub name: String,
    pub version: String,
    pub items: usize,
    pub id_column: String,
    pub columns: Vec<ColumnInfo>,
    /// The version a rollback returns to.
    pub previous: Option<String>,
    /// Bytes its values, ids and index hold.
    pub bytes: usize,
    /// 1 for a whole version; one more for each delta over it.
    pub layers: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ColumnInfo {
    pub name: String,
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dim: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RefusedInfo {
    pub name: String,
    pub version: String,
    pub reason: String,
}

impl Items {
    pub fn new(dir: PathBuf, named: BTreeMap<String, String>, events: RolloutEvents) -> Items {
        Items { dir, current: ArcSwap::default(), versions: Mutex::default(), named, events }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Versions> {
        self.versions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `catalog` serve in one swap, the one it replaces kept as the previous version.
    fn install(&self, versions: &mut Versions, catalog: Arc<Catalog>, how: CatalogSwap) {
        let name = catalog.name.clone();
        self.events.catalog_swapped(&name, how, catalog.len());
        match versions.entries.get_mut(&name) {
            Some(e) => {
                if compare_versions(&catalog.version, &e.newest_served).is_gt() {
                    e.newest_served = catalog.version.clone();
                }
                e.previous = Some(std::mem::replace(&mut e.serving, catalog));
            }
            None => {
                let newest_served = catalog.version.clone();
                versions.entries.insert(name, Entry { serving: catalog, previous: None, newest_served });
            }
        }
        self.publish(versions);
    }

    fn publish(&self, versions: &Versions) {
        let serving = versions.entries.iter().map(|(n, e)| (n.clone(), e.serving.clone())).collect();
        self.current.store(Arc::new(serving));
    }

    /// Reads the version of catalog `name` in `dir` and has `prepare` pass it. A delta over the
    /// serving version applies to it in memory: only the delta's items are read.
    fn read_checked(
        &self,
        versions: &Versions,
        name: &str,
        dir: &std::path::Path,
        prepare: Prepare<'_>,
    ) -> Result<Arc<Catalog>, String> {
        let serving = versions.entries.get(name).map(|e| e.serving.clone());
        let catalog = Arc::new(file::read_over(dir, serving.as_deref()).map_err(|e| e.to_string())?);
        prepare(&catalog)?;
        Ok(catalog)
    }

    fn refuse(&self, versions: &mut Versions, name: &str, version: &str, reason: String) {
        tracing::error!(catalog = %name, version = %version, error = %reason, "catalog refused");
        self.events.catalog_refused(name);
        versions.refused.insert((name.to_string(), version.to_string()), reason);
    }

    /// For each catalog, reads the newest complete version newer than any it has served and
    /// swaps it in whole; a version that fails to read is reported once and refused, and the
    /// next older one is tried (so a broken newest version at start still leaves the last
    /// good one serving). A missing catalogs directory is no catalog.
    /// `prepare` says whether a version may serve (the models that would read it can) and
    /// readies them for it; one it refuses is refused like an unreadable one.
    pub fn refresh(&self, prepare: Prepare<'_>) -> Vec<Refreshed> {
        if !self.dir.is_dir() {
            return Vec::new();
        }
        let found = match file::every_version(&self.dir) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the catalogs directory");
                return Vec::new();
            }
        };
        let mut versions = self.lock();
        let mut done = Vec::new();
        for newest_first in found {
            for found in newest_first {
                let seen = versions.entries.get(&found.name).map(|e| e.newest_served.as_str());
                if seen.is_some_and(|v| !compare_versions(&found.version, v).is_gt()) {
                    break;
                }
                if versions.refused.contains_key(&(found.name.clone(), found.version.clone())) {
                    continue;
                }
                let started = std::time::Instant::now();
                match self.read_checked(&versions, &found.name, &found.dir, prepare) {
                    Ok(catalog) => {
                        let items = catalog.len();
                        tracing::info!(
                            catalog = %found.name,
                            version = %found.version,
                            items,
                            seconds = started.elapsed().as_secs_f64(),
                            "catalog loaded"
                        );
                        self.install(&mut versions, catalog, CatalogSwap::New);
                        done.push(Refreshed::Loaded { name: found.name, version: found.version, items });
                        break;
                    }
                    Err(e) => {
                        self.refuse(&mut versions, &found.name, &found.version, e.clone());
                        done.push(Refreshed::Refused { name: found.name, version: found.version, error: e });
                    }
                }
            }
        }
        done
    }

    /// Makes `name`/`version` serve (an older one too: a way back past the previous version).
    /// It is read and checked first (by `prepare` too, as in [`Items::refresh`]); one that fails
    /// changes nothing.
    pub fn load(&self, name: &str, version: &str, prepare: Prepare<'_>) -> Result<(), ItemsError> {
        let dir = self.dir.join(name).join(version);
        if !(dir.join(file::MANIFEST).is_file() && dir.join(file::ITEMS).is_file()) {
            return Err(ItemsError::Unknown { name: name.into(), version: version.into() });
        }
        let mut versions = self.lock();
        if versions.entries.get(name).is_some_and(|e| e.serving.version == version) {
            return Ok(());
        }
        match self.read_checked(&versions, name, &dir, prepare) {
            Ok(catalog) => {
                versions.refused.remove(&(name.to_string(), version.to_string()));
                self.install(&mut versions, catalog, CatalogSwap::Load);
                Ok(())
            }
            Err(e) => {
                self.refuse(&mut versions, name, version, e.clone());
                Err(ItemsError::Invalid { name: name.into(), version: version.into(), reason: e })
            }
        }
    }

    /// The previous version serves again, in one swap once `prepare` has readied the models
    /// for it; the one it replaces is dropped (and not brought back by the poller, which loads
    /// only versions newer than any served).
    pub fn rollback(&self, name: &str, prepare: Prepare<'_>) -> Result<String, ItemsError> {
        let mut versions = self.lock();
        let nothing = || ItemsError::NothingToRollBack { name: name.into() };
        let entry = versions.entries.get(name).ok_or_else(nothing)?;
        let previous = entry.previous.clone().ok_or_else(nothing)?;
        prepare(&previous).map_err(|reason| ItemsError::Invalid {
            name: name.into(),
            version: previous.version.clone(),
            reason,
        })?;
        let entry = versions.entries.get_mut(name).expect("found above");
        entry.previous = None;
        entry.serving = previous;
        let (version, items) = (entry.serving.version.clone(), entry.serving.len());
        self.events.catalog_swapped(name, CatalogSwap::Rollback, items);
        self.publish(&versions);
        Ok(version)
    }

    /// Every catalog serving, by name.
    pub fn serving(&self) -> Arc<BTreeMap<String, Arc<Catalog>>> {
        self.current.load_full()
    }

    /// Every catalog in memory, and every version refused, for the admin API.
    pub fn list(&self) -> (Vec<CatalogInfo>, Vec<RefusedInfo>) {
        let versions = self.lock();
        let catalogs = versions
            .entries
            .values()
            .map(|e| {
                let c = &e.serving;
                CatalogInfo {
                    name: c.name.clone(),
                    version: c.version.clone(),
                    items: c.len(),
                    id_column: c.id_column.clone(),
                    columns: c
                        .columns()
                        .map(|(name, kind)| ColumnInfo {
                            name: name.to_string(),
                            kind: kind.name(),
                            dim: match kind {
                                ColumnKind::Vector { dim } => Some(dim),
                                _ => None,
                            },
                        })
                        .collect(),
                    previous: e.previous.as_ref().map(|p| p.version.clone()),
                    bytes: c.heap_bytes(),
                    layers: c.layers(),
                }
            })
            .collect();
        let refused = versions
            .refused
            .iter()
            .map(|((name, version), reason)| RefusedInfo {
                name: name.clone(),
                version: version.clone(),
                reason: reason.clone(),
            })
            .collect();
        (catalogs, refused)
    }

    /// The catalogs directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Whether `manifest`'s model would read `catalog`: the one its `[models.<name>] catalog`
    /// names, or else one keyed by one of its item features ([`Items::for_model`] then wants
    /// exactly one such catalog serving).
    pub fn would_read(&self, manifest: &Manifest, catalog: &Catalog) -> bool {
        match self.named.get(&manifest.model.name) {
            Some(name) => *name == catalog.name,
            None => keyed_by_item_feature(manifest, catalog),
        }
    }

    /// The catalog `manifest`'s model reads: the one serving catalog it would read, if exactly
    /// one is.
    pub fn for_model(&self, manifest: &Manifest) -> Option<Arc<Catalog>> {
        let current = self.current.load();
        let mut readable = current.values().filter(|c| self.would_read(manifest, c));
        match (readable.next(), readable.next()) {
            (Some(only), None) => Some(only.clone()),
            _ => None,
        }
    }

    /// Why `manifest`'s model reads no catalog although several would fit, to warn about.
    pub fn ambiguity(&self, manifest: &Manifest) -> Option<String> {
        let current = self.current.load();
        let readable: Vec<&str> =
            current.values().filter(|c| self.would_read(manifest, c)).map(|c| c.name.as_str()).collect();
        (readable.len() > 1).then(|| {
            format!(
                "model `{}` could read catalogs {}; name one with [models.{}] catalog",
                manifest.model.name,
                readable.join(", "),
                manifest.model.name
            )
        })
    }
}

/// Whether `catalog` is keyed by one of `manifest`'s item features.
fn keyed_by_item_feature(manifest: &Manifest, catalog: &Catalog) -> bool {
    manifest.features.iter().any(|f| f.side == Side::Item && f.name == catalog.id_column)
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
        let items = Items::new(dir.path().join("catalogs"), BTreeMap::new(), RolloutEvents::default());
        assert!(items.refresh(&|_| Ok(())).is_empty());
        file::write(&dir.path().join("catalogs"), &catalog("music", "1", "track_id", 3), "").unwrap();
        assert_eq!(
            items.refresh(&|_| Ok(())),
            [Refreshed::Loaded { name: "music".into(), version: "1".into(), items: 3 }]
        );
        assert!(items.refresh(&|_| Ok(())).is_empty(), "nothing new: nothing read");
        let m = manifest("music-ranker");
        assert_eq!(items.for_model(&m).unwrap().version, "1");

        let bad =
            file::write(&dir.path().join("catalogs"), &catalog("music", "2", "track_id", 5), "").unwrap();
        let bytes = std::fs::read(bad.join(file::ITEMS)).unwrap();
        std::fs::write(bad.join(file::ITEMS), &bytes[..bytes.len() / 2]).unwrap();
        let refreshed = items.refresh(&|_| Ok(()));
        assert!(
            matches!(&refreshed[..], [Refreshed::Refused { version, .. }] if version == "2"),
            "{refreshed:?}"
        );
        assert!(items.refresh(&|_| Ok(())).is_empty(), "a refused version is reported once");
        assert_eq!(items.for_model(&m).unwrap().version, "1");

        file::write(&dir.path().join("catalogs"), &catalog("music", "3", "track_id", 7), "").unwrap();
        items.refresh(&|_| Ok(()));
        assert_eq!(items.for_model(&m).unwrap().len(), 7);
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Op {
        /// A new, good version published, then a poll.
        PublishGood,
        /// A new version published cut short, then a poll.
        PublishBad,
        /// An operator loads version 1.
        LoadFirst,
        Rollback,
    }

    /// What the server should serve: the oracle the catalogs are checked against.
    #[derive(Debug, Clone, PartialEq)]
    struct Expected {
        serving: String,
        previous: Option<String>,
        next: u32,
    }

    fn apply(items: &Items, dir: &std::path::Path, e: &mut Expected, op: Op) -> bool {
        let publish = |version: &str, bad: bool| {
            let staging = dir.join(format!("staging-{version}"));
            let written = file::write(&staging, &catalog("music", version, "track_id", 2), "").unwrap();
            if bad {
                let bytes = std::fs::read(written.join(file::ITEMS)).unwrap();
                std::fs::write(written.join(file::ITEMS), &bytes[..bytes.len() - 1]).unwrap();
            }
            std::fs::rename(written, dir.join("catalogs/music").join(version)).unwrap();
        };
        let ok = match op {
            Op::PublishGood | Op::PublishBad => {
                let version = e.next.to_string();
                e.next += 1;
                publish(&version, op == Op::PublishBad);
                let refreshed = items.refresh(&|_| Ok(()));
                if op == Op::PublishGood {
                    e.previous = Some(std::mem::replace(&mut e.serving, version));
                }
                refreshed.len() == 1
            }
            Op::LoadFirst => {
                if e.serving != "1" {
                    e.previous = Some(std::mem::replace(&mut e.serving, "1".into()));
                }
                items.load("music", "1", &|_| Ok(())).is_ok()
            }
            Op::Rollback => match e.previous.take() {
                Some(p) => {
                    e.serving = p;
                    items.rollback("music", &|_| Ok(())).is_ok()
                }
                None => {
                    matches!(items.rollback("music", &|_| Ok(())), Err(ItemsError::NothingToRollBack { .. }))
                }
            },
        };
        // The poller never undoes an operator's load or rollback, nor retries a refused one.
        ok && items.refresh(&|_| Ok(())).is_empty()
    }

    // Every ordered pair of operations, from one version serving. See: issue 16 (1).
    #[test]
    fn every_pair_of_catalog_operations_ends_where_the_rules_say() {
        let ops = [Op::PublishGood, Op::PublishBad, Op::LoadFirst, Op::Rollback];
        for first in ops {
            for second in ops {
                let dir = tempfile::tempdir().unwrap();
                file::write(&dir.path().join("catalogs"), &catalog("music", "1", "track_id", 2), "").unwrap();
                let items =
                    Items::new(dir.path().join("catalogs"), BTreeMap::new(), RolloutEvents::default());
                items.refresh(&|_| Ok(()));
                let mut expected = Expected { serving: "1".into(), previous: None, next: 2 };
                for op in [first, second] {
                    assert!(
                        apply(&items, dir.path(), &mut expected, op),
                        "{first:?} then {second:?}: {op:?}"
                    );
                }
                let (listed, refused) = items.list();
                let got = (listed[0].version.clone(), listed[0].previous.clone());
                assert_eq!(
                    got,
                    (expected.serving.clone(), expected.previous.clone()),
                    "{first:?} then {second:?}"
                );
                assert_eq!(items.serving()["music"].version, expected.serving, "{first:?} then {second:?}");
                let bad = [first, second].iter().filter(|o| **o == Op::PublishBad).count();
                assert_eq!(refused.len(), bad, "{first:?} then {second:?}: {refused:?}");
            }
        }
    }

    // A broken newest version at start must not leave the catalog unserved.
    #[test]
    fn at_start_a_broken_newest_version_leaves_the_last_good_one_serving() {
        let dir = tempfile::tempdir().unwrap();
        let catalogs = dir.path().join("catalogs");
        file::write(&catalogs, &catalog("music", "1", "track_id", 2), "").unwrap();
        let two = file::write(&catalogs, &catalog("music", "2", "track_id", 3), "").unwrap();
        std::fs::write(two.join(file::ITEMS), b"RTCAT").unwrap();
        let items = Items::new(catalogs, BTreeMap::new(), RolloutEvents::default());
        let refreshed = items.refresh(&|_| Ok(()));
        assert!(
            matches!(&refreshed[..], [Refreshed::Refused { version: v2, .. }, Refreshed::Loaded { version: v1, .. }]
            if v2 == "2" && v1 == "1"),
            "{refreshed:?}"
        );
        assert_eq!(items.serving()["music"].version, "1");
        assert!(items.refresh(&|_| Ok(())).is_empty());
    }

    #[test]
    fn loading_a_version_that_is_not_there_or_is_broken_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let catalogs = dir.path().join("catalogs");
        file::write(&catalogs, &catalog("music", "1", "track_id", 2), "").unwrap();
        let items = Items::new(catalogs.clone(), BTreeMap::new(), RolloutEvents::default());
        items.refresh(&|_| Ok(()));
        assert!(matches!(items.load("music", "9", &|_| Ok(())), Err(ItemsError::Unknown { .. })));
        assert!(matches!(items.load("other", "1", &|_| Ok(())), Err(ItemsError::Unknown { .. })));
        let two =
            file::write(&dir.path().join("staging"), &catalog("music", "2", "track_id", 2), "").unwrap();
        std::fs::write(two.join(file::ITEMS), b"RTCAT").unwrap();
        std::fs::rename(two, catalogs.join("music/2")).unwrap();
        let err = items.load("music", "2", &|_| Ok(())).unwrap_err().to_string();
        assert!(err.contains("music/2") && err.contains("items.bin"), "{err}");
        assert_eq!(items.serving()["music"].version, "1");
    }

    #[test]
    fn a_model_reads_the_catalog_keyed_by_its_item_feature_or_the_one_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let catalogs = dir.path().join("catalogs");
        file::write(&catalogs, &catalog("music", "1", "track_id", 1), "").unwrap();
        file::write(&catalogs, &catalog("artists", "1", "artist_id", 1), "").unwrap();
        file::write(&catalogs, &catalog("videos", "1", "video_id", 1), "").unwrap();
        let items = Items::new(catalogs.clone(), BTreeMap::new(), RolloutEvents::default());
        items.refresh(&|_| Ok(()));
        let m = manifest("music-ranker");
        // The shipped model has both `track_id` and `artist_id` item features: ambiguous.
        assert!(items.for_model(&m).is_none());
        assert!(items.ambiguity(&m).unwrap().contains("artists, music"));
        let named = Items::new(
            catalogs,
            [("music-ranker".to_string(), "music".to_string())].into(),
            RolloutEvents::default(),
        );
        named.refresh(&|_| Ok(()));
        assert_eq!(named.for_model(&m).unwrap().name, "music");
        assert!(named.ambiguity(&m).is_none());
    }
}
