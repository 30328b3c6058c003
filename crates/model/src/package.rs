//! Model packages on disk: `<models>/<name>/<version>/{model.onnx, manifest.toml}`.
//!
//! A package is written into a hidden temporary directory beside its final place and renamed
//! into place when complete, so a reader never sees half a package: directories whose name
//! starts with `.` are never read as packages.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::manifest::Manifest;

pub const MANIFEST: &str = "manifest.toml";
pub const GRAPH: &str = "model.onnx";

/// A package found on disk (not yet loaded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageRef {
    pub name: String,
    pub version: String,
    pub dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{0} already exists; a published version is never overwritten")]
    Exists(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PackageError + '_ {
    move |source| PackageError::Io { path: path.display().to_string(), source }
}

/// Every complete package under `models_dir`, sorted by name then version.
pub fn discover(models_dir: &Path) -> Result<Vec<PackageRef>, PackageError> {
    let mut found = Vec::new();
    for name in read_dir_sorted(models_dir)? {
        let name_dir = models_dir.join(&name);
        if !name_dir.is_dir() {
            continue;
        }
        for version in read_dir_sorted(&name_dir)? {
            let dir = name_dir.join(&version);
            if dir.join(MANIFEST).is_file() && dir.join(GRAPH).is_file() {
                found.push(PackageRef { name: name.clone(), version, dir });
            }
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| compare_versions(&a.version, &b.version)));
    Ok(found)
}

/// The newest version of each model under `models_dir`.
pub fn latest(models_dir: &Path) -> Result<BTreeMap<String, PackageRef>, PackageError> {
    let mut latest = BTreeMap::new();
    // `discover` sorts versions ascending, so the last one seen per name wins.
    for p in discover(models_dir)? {
        latest.insert(p.name.clone(), p);
    }
    Ok(latest)
}

/// One past the newest numeric version of `name` under `models_dir`, or "1".
pub fn next_version(models_dir: &Path, name: &str) -> String {
    let newest = discover(models_dir)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.name == name)
        .filter_map(|p| p.version.parse::<u64>().ok())
        .max();
    newest.map_or(1, |v| v + 1).to_string()
}

/// The names in `dir` that do not start with `.` (hidden: still being written), sorted.
pub(crate) fn read_dir_sorted(dir: &Path) -> Result<Vec<String>, PackageError> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        if let Some(name) = entry.file_name().to_str().filter(|n| !n.starts_with('.')) {
            names.push(name.to_string());
        }
    }
    names.sort();
    Ok(names)
}

/// Orders versions so that `2 < 10` and `1.2 < 1.10`: dot/dash-separated parts compare as
/// numbers when both are numbers, as text otherwise.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let parts = |s: &str| s.split(['.', '-', '_']).map(str::to_string).collect::<Vec<_>>();
    let (pa, pb) = (parts(a), parts(b));
    for (x, y) in pa.iter().zip(&pb) {
        let ord = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(m), Ok(n)) => m.cmp(&n),
            _ => x.cmp(y),
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    pa.len().cmp(&pb.len()).then_with(|| a.cmp(b))
}

/// The package files' sizes and modification times: a failed package is tried again once
/// this changes (a copy that was still arriving has finished).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    manifest: (u64, Option<std::time::SystemTime>),
    graph: (u64, Option<std::time::SystemTime>),
    /// The vocabulary files' total size and newest modification time.
    vocabularies: (u64, Option<std::time::SystemTime>),
}

fn vocabularies_stamp(dir: &Path) -> (u64, Option<std::time::SystemTime>) {
    let Ok(entries) = std::fs::read_dir(dir.join(crate::vocabulary::DIR)) else { return (0, None) };
    entries
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .fold((0, None), |(size, newest), m| (size + m.len(), newest.max(m.modified().ok())))
}

/// The largest manifest read: a manifest is a page of TOML.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// Checks that the package in `dir` may be served from `models_dir` before any of it is read:
/// the directory and its files resolve inside `models_dir` (a link out of it would serve
/// whatever it points at), and the graph is at most `max_graph_bytes`. Returns the files'
/// stamp.
pub fn check_servable(models_dir: &Path, dir: &Path, max_graph_bytes: u64) -> Result<FileStamp, String> {
    let root = models_dir.canonicalize().map_err(|e| format!("{}: {e}", models_dir.display()))?;
    let resolved = dir.canonicalize().map_err(|e| format!("{}: {e}", dir.display()))?;
    if !resolved.starts_with(&root) {
        return Err(format!("{} links outside the models directory; refused", dir.display()));
    }
    let stamp = |file: &str, limit: u64| -> Result<(u64, Option<std::time::SystemTime>), String> {
        let path = dir.join(file);
        let real = path.canonicalize().map_err(|e| format!("{}: {e}", path.display()))?;
        if !real.starts_with(&root) {
            return Err(format!("{} links outside the models directory; refused", path.display()));
        }
        let meta = std::fs::metadata(&real).map_err(|e| format!("{}: {e}", path.display()))?;
        if !meta.is_file() {
            return Err(format!("{} is not a file", path.display()));
        }
        if meta.len() > limit {
            return Err(format!("{} is {} bytes, over the limit of {limit}", path.display(), meta.len()));
        }
        Ok((meta.len(), meta.modified().ok()))
    };
    Ok(FileStamp {
        manifest: stamp(MANIFEST, MAX_MANIFEST_BYTES)?,
        graph: stamp(GRAPH, max_graph_bytes)?,
        vocabularies: vocabularies_stamp(dir),
    })
}

/// The stamp of the package files in `dir`, if its manifest and graph can be read.
pub fn stamp(dir: &Path) -> Option<FileStamp> {
    let of = |file: &str| std::fs::metadata(dir.join(file)).ok().map(|m| (m.len(), m.modified().ok()));
    Some(FileStamp { manifest: of(MANIFEST)?, graph: of(GRAPH)?, vocabularies: vocabularies_stamp(dir) })
}

/// What publishing a package did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// A new version, in this directory.
    New(PathBuf),
    /// Nothing: the newest version, in this directory, is the same package (the same graph
    /// bytes and manifest but for its version and creation time). An identical package is not
    /// a new version.
    Unchanged(PathBuf),
}

impl Written {
    pub fn dir(&self) -> &Path {
        match self {
            Written::New(d) | Written::Unchanged(d) => d,
        }
    }
}

/// [`write_with`], unless the newest version of the model is the same package.
pub fn write_new(
    models_dir: &Path,
    manifest: &Manifest,
    graph: &[u8],
    extra: impl FnOnce(&Path) -> std::io::Result<()>,
) -> Result<Written, PackageError> {
    if let Some(dir) = same_as_newest(models_dir, manifest, graph) {
        return Ok(Written::Unchanged(dir));
    }
    write_with(models_dir, manifest, graph, extra).map(Written::New)
}

/// The newest version of `manifest`'s model, when it is `manifest` and `graph` again.
fn same_as_newest(models_dir: &Path, manifest: &Manifest, graph: &[u8]) -> Option<PathBuf> {
    let newest = latest(models_dir).ok()?.remove(&manifest.model.name)?;
    let old = Manifest::from_path(&newest.dir.join(MANIFEST)).ok()?;
    let mut new = manifest.clone();
    new.model.version = old.model.version.clone();
    new.provenance.created_at = old.provenance.created_at.clone();
    // The TOML names the vocabularies; their ids are compared apart.
    if new.to_toml() != old.to_toml() || !new.vocabularies().eq(old.vocabularies()) {
        return None;
    }
    // Sizes first: the graph is read only when it could be the same.
    let size = std::fs::metadata(newest.dir.join(GRAPH)).ok()?.len();
    (size == graph.len() as u64 && std::fs::read(newest.dir.join(GRAPH)).ok()? == graph).then_some(newest.dir)
}

/// Writes a complete package for `manifest` under `models_dir` and returns its directory.
/// The files are written and synced in a hidden temporary directory, which is then renamed
/// into place: a crash leaves either no package or a whole one.
pub fn write(models_dir: &Path, manifest: &Manifest, graph: &[u8]) -> Result<PathBuf, PackageError> {
    write_with(models_dir, manifest, graph, |_| Ok(()))
}

/// [`write`], with `extra` adding files (e.g. a training checkpoint) to the hidden directory
/// before the rename, so they appear together with the package or not at all.
pub fn write_with(
    models_dir: &Path,
    manifest: &Manifest,
    graph: &[u8],
    extra: impl FnOnce(&Path) -> std::io::Result<()>,
) -> Result<PathBuf, PackageError> {
    let name_dir = models_dir.join(&manifest.model.name);
    write_dir_whole(&name_dir, &manifest.model.version, |tmp| {
        write_synced(&tmp.join(GRAPH), graph)?;
        for (_, vocabulary) in manifest.vocabularies() {
            let path = tmp.join(vocabulary.file());
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io_err(dir))?;
            }
            write_synced(&path, vocabulary.to_text().as_bytes())?;
        }
        write_synced(&tmp.join(MANIFEST), manifest.to_toml().as_bytes())?;
        extra(tmp).map_err(io_err(tmp))
    })
}

/// Creates `<parent>/<version>/` whole and returns it: `fill` writes its files into a hidden
/// temporary directory beside it, which is then renamed into place and the rename synced, so
/// a crash leaves no directory or a whole one. A version that exists is never overwritten.
/// Model and catalog packages are both published this way.
pub(crate) fn write_dir_whole(
    parent: &Path,
    version: &str,
    fill: impl FnOnce(&Path) -> Result<(), PackageError>,
) -> Result<PathBuf, PackageError> {
    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    let target = parent.join(version);
    if target.exists() {
        return Err(PackageError::Exists(target.display().to_string()));
    }
    let tmp = parent.join(format!(".{version}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    std::fs::create_dir(&tmp).map_err(io_err(&tmp))?;
    let result = (|| {
        fill(&tmp)?;
        std::fs::rename(&tmp, &target).map_err(io_err(&target))?;
        // The rename is durable only once the parent directory is synced.
        std::fs::File::open(parent).and_then(|d| d.sync_all()).map_err(io_err(parent))
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result.map(|_| target)
}

/// Writes `bytes` to a new file at `path` and syncs it.
pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), PackageError> {
    let mut f = std::fs::File::create(path).map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    // See: issue 14 (H).
    #[cfg(unix)]
    #[test]
    fn a_package_that_links_outside_or_is_too_large_is_refused_before_it_is_read() {
        let outside = tempfile::tempdir().unwrap();
        let models = tempfile::tempdir().unwrap();
        let (manifest, graph) = crate::scaffold::seeded_package("m", "1", 1);
        let real = write(outside.path(), &manifest, &graph).unwrap();
        std::fs::create_dir_all(models.path().join("m")).unwrap();
        let linked = models.path().join("m/1");
        std::os::unix::fs::symlink(&real, &linked).unwrap();
        let err = check_servable(models.path(), &linked, 1 << 30).unwrap_err();
        assert!(err.contains("links outside"), "{err}");

        let (manifest, graph) = crate::scaffold::seeded_package("m", "2", 1);
        let inside = write(models.path(), &manifest, &graph).unwrap();
        check_servable(models.path(), &inside, 1 << 30).unwrap();
        let err = check_servable(models.path(), &inside, 100).unwrap_err();
        assert!(err.contains("model.onnx") && err.contains("over the limit of 100"), "{err}");
        std::fs::remove_file(inside.join(MANIFEST)).unwrap();
        std::os::unix::fs::symlink(real.join(MANIFEST), inside.join(MANIFEST)).unwrap();
        let err = check_servable(models.path(), &inside, 1 << 30).unwrap_err();
        assert!(err.contains("manifest.toml links outside"), "{err}");
    }

    // See: issue 14 (6): every rerun of quickstart published a byte-identical version.
    #[test]
    fn an_identical_package_is_not_a_new_version() {
        let models = tempfile::tempdir().unwrap();
        let (manifest, graph) = crate::scaffold::seeded_package("m", "1", 1);
        let first = write_new(models.path(), &manifest, &graph, |_| Ok(())).unwrap();
        assert_eq!(first, Written::New(models.path().join("m/1")));
        let mut again = manifest.clone();
        again.model.version = "2".into();
        again.provenance.created_at = "2030-01-01T00:00:00Z".into();
        assert_eq!(
            write_new(models.path(), &again, &graph, |_| Ok(())).unwrap(),
            Written::Unchanged(first.dir().to_path_buf())
        );
        let (other, graph2) = crate::scaffold::seeded_package("m", "2", 2);
        assert_eq!(
            write_new(models.path(), &other, &graph2, |_| Ok(())).unwrap(),
            Written::New(models.path().join("m/2"))
        );
        again.model.description = "changed".into();
        again.model.version = "3".into();
        assert!(matches!(write_new(models.path(), &again, &graph, |_| Ok(())).unwrap(), Written::New(_)));
    }

    #[test]
    fn a_package_keeps_its_vocabularies_beside_its_manifest_and_reads_them_back() {
        use crate::manifest::FeatureKind;
        use crate::vocabulary::{Vocab, Vocabulary, file_for};
        let models = tempfile::tempdir().unwrap();
        let (mut manifest, graph) = crate::scaffold::seeded_package("m", "1", 1);
        let with = |manifest: &mut Manifest, ids: Vec<String>| {
            let v = Vocabulary::from_ids(&file_for("device"), ids.iter().map(String::as_str)).unwrap();
            let device = manifest.features.iter_mut().find(|f| f.name == "device").unwrap();
            device.kind = FeatureKind::Categorical {
                buckets: v.buckets(),
                default: Some("d3".into()),
                vocabulary: Some(Vocab::Ids(std::sync::Arc::new(v))),
            };
        };
        let ids: Vec<String> = (1..16).map(|i| format!("d{i}")).collect();
        with(&mut manifest, ids.clone());
        let dir = write(models.path(), &manifest, &graph).unwrap();
        let text = std::fs::read_to_string(dir.join("vocabularies/device.txt")).unwrap();
        assert_eq!(text.lines().collect::<Vec<_>>(), ids);
        let toml = std::fs::read_to_string(dir.join(MANIFEST)).unwrap();
        assert!(toml.contains("vocabulary = \"vocabularies/device.txt\""), "{toml}");
        let back = Manifest::from_path(&dir.join(MANIFEST)).unwrap();
        assert_eq!(back, manifest);

        // The same ids are the same package; other ids make a new version.
        let mut again = manifest.clone();
        again.model.version = "2".into();
        assert!(matches!(
            write_new(models.path(), &again, &graph, |_| Ok(())).unwrap(),
            Written::Unchanged(_)
        ));
        with(&mut again, ids.iter().rev().cloned().collect());
        assert!(matches!(write_new(models.path(), &again, &graph, |_| Ok(())).unwrap(), Written::New(_)));

        // A vocabulary that is not there, or does not fit the table, is named.
        std::fs::write(dir.join("vocabularies/device.txt"), "d1\nd2\n").unwrap();
        let e = Manifest::from_path(&dir.join(MANIFEST)).unwrap_err().to_string();
        assert!(e.contains("buckets = 16, but vocabulary `vocabularies/device.txt` holds 2 ids"), "{e}");
        std::fs::remove_file(dir.join("vocabularies/device.txt")).unwrap();
        let e = Manifest::from_path(&dir.join(MANIFEST)).unwrap_err().to_string();
        assert!(e.contains("feature `device`") && e.contains("vocabularies/device.txt"), "{e}");
    }

    #[test]
    fn versions_compare_numerically_where_they_can() {
        let mut v = vec!["10", "2", "1.10", "1.2", "1", "2026-11-28", "2026-01-05", "b", "a"];
        v.sort_by(|a, b| compare_versions(a, b));
        assert_eq!(v, ["1", "1.2", "1.10", "2", "10", "2026-01-05", "2026-11-28", "a", "b"]);
    }
}
