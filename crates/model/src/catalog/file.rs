//! Catalog packages on disk: `<catalogs>/<name>/<version>/{catalog.toml, items.bin}`.
//!
//! `catalog.toml` says what the catalog holds (its columns, item count, and the size and
//! checksum of `items.bin`); `items.bin` holds the values, columnar and little-endian, so a
//! million items load at the speed of reading the file. Like a model package, a catalog is
//! written in a hidden directory and renamed into place whole: a directory whose name starts
//! with `.` is never read, and a file whose size or checksum disagrees with `catalog.toml` is
//! refused, so a half-copied catalog is never taken for a whole one.
//!
//! `items.bin`: the 8 bytes `RTCAT\0\0\x01`, then the ids as strings, then each column in the
//! order `catalog.toml` lists them. Strings are a `u32` offset per row plus one (the first 0),
//! then the UTF-8 bytes; a categorical column adds one byte per row (1 present, 0 missing). A
//! number is an `f64` per row, a vector `dim` of them; `NaN` is a missing value (finite values
//! only are ever written).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Catalog, Column, ColumnKind, Values};
use crate::ids::{IdIndex, Strings};
use crate::package::{self, PackageError, compare_versions};

pub const MANIFEST: &str = "catalog.toml";
pub const ITEMS: &str = "items.bin";
const MAGIC: &[u8; 8] = b"RTCAT\0\0\x01";
const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CatalogFileError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error(transparent)]
    Manifest(#[from] crate::toml_file::TomlFileError),
    #[error("{path}: {problem}")]
    Invalid { path: String, problem: String },
    #[error("{0} already exists; a published catalog version is never overwritten")]
    Exists(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CatalogFileError + '_ {
    move |source| CatalogFileError::Io { path: path.display().to_string(), source }
}

/// `catalog.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogManifest {
    pub catalog: About,
    pub data: Data,
    #[serde(default)]
    pub columns: Vec<ColumnEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct About {
    pub format: u32,
    pub name: String,
    pub version: String,
    pub id_column: String,
    pub items: usize,
    pub created_at: String,
    /// Where the items came from (the files it was built from), for people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// For a delta: the version its new and changed items apply over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Data {
    pub bytes: u64,
    /// FNV-1a (64-bit) of `items.bin`, in hex.
    pub fnv1a64: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnEntry {
    pub name: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dim: Option<usize>,
}

impl ColumnEntry {
    fn kind(&self) -> Result<ColumnKind, String> {
        match (self.kind.as_str(), self.dim) {
            ("categorical", None) => Ok(ColumnKind::Categorical),
            ("number", None) => Ok(ColumnKind::Number),
            ("vector", Some(dim)) if dim > 0 => Ok(ColumnKind::Vector { dim }),
            ("vector", _) => Err(format!("column `{}`: a vector needs a positive `dim`", self.name)),
            (kind, Some(_)) => Err(format!("column `{}`: `dim` is for vectors, not {kind}", self.name)),
            (kind, None) => Err(format!(
                "column `{}`: unknown kind `{kind}` (expected categorical, number or vector)",
                self.name
            )),
        }
    }
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// `catalog`'s `items.bin` bytes (of its one layer).
fn encode(catalog: &Catalog) -> Vec<u8> {
    let layer = catalog.only_layer();
    let mut out = Vec::with_capacity(layer.heap_bytes() + 64);
    out.extend_from_slice(MAGIC);
    let strings = |out: &mut Vec<u8>, s: &Strings| {
        for o in &s.offsets {
            out.extend_from_slice(&o.to_le_bytes());
        }
        out.extend_from_slice(s.bytes.as_bytes());
    };
    strings(&mut out, layer.ids.strings());
    for column in &layer.columns {
        match &column.values {
            Values::Text { strings: s, present } => {
                strings(&mut out, s);
                out.extend(present.iter().map(|&p| p as u8));
            }
            Values::Number(v) | Values::Vector { values: v, .. } => {
                for x in v {
                    out.extend_from_slice(&x.to_le_bytes());
                }
            }
        }
    }
    out
}

/// Reads `items.bin` back, checking its structure.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| format!("ends inside {what} (at byte {})", self.at))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn strings(&mut self, rows: usize, what: &str) -> Result<Strings, String> {
        let size = rows.checked_add(1).and_then(|n| n.checked_mul(4));
        let raw = self.take(size.ok_or_else(|| format!("{what}: too large"))?, what)?;
        let offsets: Vec<u32> =
            raw.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect();
        if offsets[0] != 0 || offsets.windows(2).any(|w| w[0] > w[1]) {
            return Err(format!("{what}: offsets out of order"));
        }
        let text = self.take(offsets[rows] as usize, what)?;
        let bytes = std::str::from_utf8(text).map_err(|e| format!("{what}: not UTF-8: {e}"))?.to_string();
        if let Some(o) = offsets.iter().find(|&&o| !bytes.is_char_boundary(o as usize)) {
            return Err(format!("{what}: offset {o} splits a character"));
        }
        Ok(Strings { offsets, bytes })
    }

    fn numbers(&mut self, n: usize, what: &str) -> Result<Vec<f64>, String> {
        let raw = self.take(n.checked_mul(8).ok_or_else(|| format!("{what}: too large"))?, what)?;
        let values: Vec<f64> =
            raw.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect();
        match values.iter().position(|x| x.is_infinite()) {
            Some(i) => Err(format!("{what}: value {i} is not finite")),
            None => Ok(values),
        }
    }
}

fn decode(manifest: &CatalogManifest, bytes: &[u8]) -> Result<Catalog, String> {
    let rows = manifest.catalog.items;
    let mut r = Reader { bytes, at: 0 };
    if r.take(8, "the header")? != MAGIC {
        return Err("not a retort catalog (bad header)".into());
    }
    let ids = r.strings(rows, "the ids")?;
    let mut columns = Vec::with_capacity(manifest.columns.len());
    for entry in &manifest.columns {
        let what = format!("column `{}`", entry.name);
        let values = match entry.kind()? {
            ColumnKind::Categorical => {
                let strings = r.strings(rows, &what)?;
                let present = r.take(rows, &what)?.iter().map(|&b| b != 0).collect();
                Values::Text { strings, present }
            }
            ColumnKind::Number => Values::Number(r.numbers(rows, &what)?),
            ColumnKind::Vector { dim } => {
                let n = rows.checked_mul(dim).ok_or_else(|| format!("{what}: too large"))?;
                Values::Vector { dim, values: r.numbers(n, &what)? }
            }
        };
        columns.push(Column { name: entry.name.clone(), values });
    }
    if r.at != bytes.len() {
        return Err(format!("{} bytes after the last column", bytes.len() - r.at));
    }
    let ids = IdIndex::from_strings(ids)
        .map_err(|(id, first, row)| format!("item id `{id}` appears twice (rows {first} and {row})"))?;
    let about = &manifest.catalog;
    Ok(Catalog {
        name: about.name.clone(),
        version: about.version.clone(),
        id_column: about.id_column.clone(),
        layers: vec![std::sync::Arc::new(super::Layer { ids, columns })],
        len: rows,
    })
}

/// The largest `catalog.toml` read: a page of TOML.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// Reads the catalog version in `dir` (a delta over its base, read from disk).
pub fn read(dir: &Path) -> Result<Catalog, CatalogFileError> {
    read_over(dir, None)
}

/// The longest chain of deltas read.
const MAX_CHAIN: usize = 64;

/// Reads the catalog version in `dir`. A delta applies over its base: `serving` when that is
/// the base (nothing is read again), else the base read from disk, down its own chain.
pub fn read_over(dir: &Path, serving: Option<&Catalog>) -> Result<Catalog, CatalogFileError> {
    let mut chain = Vec::new();
    let mut at = dir.to_path_buf();
    let base = loop {
        let (manifest, layer) = read_one(&at)?;
        let invalid = |problem: String| CatalogFileError::Invalid { path: at.display().to_string(), problem };
        let Some(base) = manifest.catalog.base.clone() else { break layer };
        if !compare_versions(&base, &manifest.catalog.version).is_lt() {
            return Err(invalid(format!("its base {base} is not an older version")));
        }
        chain.push(layer);
        if chain.len() > MAX_CHAIN {
            return Err(invalid(format!(
                "over {MAX_CHAIN} deltas down to a whole version; publish a whole one"
            )));
        }
        if let Some(s) = serving.filter(|s| s.name == manifest.catalog.name && s.version == base) {
            break s.clone();
        }
        at = at.with_file_name(&base);
    };
    let mut catalog = base;
    for delta in chain.into_iter().rev() {
        let version = delta.version.clone();
        catalog = catalog.with_delta(delta).map_err(|problem| CatalogFileError::Invalid {
            path: dir.with_file_name(&version).display().to_string(),
            problem,
        })?;
    }
    Ok(catalog)
}

/// Reads the one version in `dir` (a delta's own items only), refusing one whose `items.bin`
/// is not exactly the file `catalog.toml` describes, or whose name and version are not its
/// directory's.
fn read_one(dir: &Path) -> Result<(CatalogManifest, Catalog), CatalogFileError> {
    let manifest_path = dir.join(MANIFEST);
    let invalid = |path: &Path, problem: String| CatalogFileError::Invalid {
        path: path.display().to_string(),
        problem,
    };
    let size = std::fs::metadata(&manifest_path).map_err(io_err(&manifest_path))?.len();
    if size > MAX_MANIFEST_BYTES {
        return Err(invalid(
            &manifest_path,
            format!("{size} bytes; a catalog manifest is at most {MAX_MANIFEST_BYTES}"),
        ));
    }
    let manifest: CatalogManifest = crate::toml_file::read(&manifest_path)?;
    if manifest.catalog.format != FORMAT {
        return Err(invalid(
            &manifest_path,
            format!("format {}; this server reads format {FORMAT}", manifest.catalog.format),
        ));
    }
    let named = (dir.parent().and_then(|p| p.file_name()), dir.file_name());
    let (name, version) = (&manifest.catalog.name, &manifest.catalog.version);
    if named != (Some(name.as_ref()), Some(version.as_ref())) {
        return Err(invalid(
            &manifest_path,
            format!("says {name} version {version}, but lies in {}", dir.display()),
        ));
    }
    let items_path = dir.join(ITEMS);
    let bytes = std::fs::read(&items_path).map_err(io_err(&items_path))?;
    if bytes.len() as u64 != manifest.data.bytes {
        return Err(invalid(
            &items_path,
            format!("{} bytes; catalog.toml says {} (incomplete copy?)", bytes.len(), manifest.data.bytes),
        ));
    }
    let sum = format!("{:016x}", fnv1a64(&bytes));
    if sum != manifest.data.fnv1a64 {
        return Err(invalid(
            &items_path,
            format!("checksum {sum}; catalog.toml says {}", manifest.data.fnv1a64),
        ));
    }
    let catalog = decode(&manifest, &bytes).map_err(|problem| invalid(&items_path, problem))?;
    Ok((manifest, catalog))
}

/// Writes `catalog` as `<catalogs_dir>/<name>/<version>/` and returns that directory: synced
/// in a hidden directory, then renamed into place, so a crash leaves no catalog or a whole one.
/// A catalog made of deltas is written whole, merged.
pub fn write(catalogs_dir: &Path, catalog: &Catalog, source: &str) -> Result<PathBuf, CatalogFileError> {
    write_version(catalogs_dir, catalog, None, source)
}

/// Writes `delta` (new and changed items) as a version that applies over version `base`.
pub fn write_delta(
    catalogs_dir: &Path,
    delta: &Catalog,
    base: &str,
    source: &str,
) -> Result<PathBuf, CatalogFileError> {
    write_version(catalogs_dir, delta, Some(base), source)
}

fn write_version(
    catalogs_dir: &Path,
    catalog: &Catalog,
    base: Option<&str>,
    source: &str,
) -> Result<PathBuf, CatalogFileError> {
    // One layer on disk: `merged` only clones the layer of a catalog that has one.
    let catalog = &catalog.merged();
    let items = encode(catalog);
    let manifest = CatalogManifest {
        catalog: About {
            format: FORMAT,
            name: catalog.name.clone(),
            version: catalog.version.clone(),
            id_column: catalog.id_column.clone(),
            items: catalog.len(),
            created_at: crate::timestamp::rfc3339(std::time::SystemTime::now()),
            source: source.to_string(),
            base: base.map(str::to_string),
        },
        data: Data { bytes: items.len() as u64, fnv1a64: format!("{:016x}", fnv1a64(&items)) },
        columns: catalog
            .columns()
            .map(|(name, kind)| ColumnEntry {
                name: name.to_string(),
                kind: kind.name().to_string(),
                dim: match kind {
                    ColumnKind::Vector { dim } => Some(dim),
                    _ => None,
                },
            })
            .collect(),
    };
    let text = toml::to_string(&manifest).expect("a catalog manifest serialises");
    let written = package::write_dir_whole(&catalogs_dir.join(&catalog.name), &catalog.version, |tmp| {
        package::write_synced(&tmp.join(ITEMS), &items)?;
        package::write_synced(&tmp.join(MANIFEST), text.as_bytes())
    });
    Ok(written?)
}

impl From<PackageError> for CatalogFileError {
    fn from(e: PackageError) -> Self {
        match e {
            PackageError::Io { path, source } => CatalogFileError::Io { path, source },
            PackageError::Exists(path) => CatalogFileError::Exists(path),
        }
    }
}

/// Whether `a` and `b` hold the same items with the same values (whatever their versions).
pub fn same_items(a: &Catalog, b: &Catalog) -> bool {
    a.id_column == b.id_column
        && a.columns().eq(b.columns())
        && a.len() == b.len()
        && encode(&a.merged()) == encode(&b.merged())
}

/// A catalog package found on disk (not yet read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogRef {
    pub name: String,
    pub version: String,
    pub dir: PathBuf,
}

/// The newest complete version of each catalog under `catalogs_dir`, by name.
pub fn latest(catalogs_dir: &Path) -> Result<Vec<CatalogRef>, CatalogFileError> {
    Ok(every_version(catalogs_dir)?.into_iter().filter_map(|versions| versions.into_iter().next()).collect())
}

/// Every complete version of every catalog under `catalogs_dir`: one list per catalog (by
/// name), newest first.
pub fn every_version(catalogs_dir: &Path) -> Result<Vec<Vec<CatalogRef>>, CatalogFileError> {
    let mut found = Vec::new();
    for name in package::read_dir_sorted(catalogs_dir)? {
        let name_dir = catalogs_dir.join(&name);
        if !name_dir.is_dir() {
            continue;
        }
        let mut versions: Vec<String> = package::read_dir_sorted(&name_dir)?
            .into_iter()
            .filter(|v| name_dir.join(v).join(MANIFEST).is_file() && name_dir.join(v).join(ITEMS).is_file())
            .collect();
        versions.sort_by(|a, b| compare_versions(b, a));
        if !versions.is_empty() {
            found.push(
                versions
                    .into_iter()
                    .map(|version| CatalogRef { dir: name_dir.join(&version), name: name.clone(), version })
                    .collect(),
            );
        }
    }
    Ok(found)
}

/// One past the newest numeric version of catalog `name`, or "1".
pub fn next_version(catalogs_dir: &Path, name: &str) -> String {
    let newest = package::read_dir_sorted(&catalogs_dir.join(name))
        .unwrap_or_default()
        .iter()
        .filter_map(|v| v.parse::<u64>().ok())
        .max();
    newest.map_or(1, |v| v + 1).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::tests::tracks;
    use crate::encode::{FeatureSource, Value};

    #[test]
    fn a_written_catalog_reads_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = tracks();
        let at = write(dir.path(), &catalog, "tracks.parquet").unwrap();
        assert_eq!(at, dir.path().join("music/1"));
        let back = read(&at).unwrap();
        // Byte for byte (a missing number is NaN, which no `==` would call equal).
        assert_eq!(encode(&back), encode(&catalog));
        assert_eq!(
            (&back.name, &back.version, &back.id_column),
            (&catalog.name, &catalog.version, &catalog.id_column)
        );
        assert_eq!(back.get("t3").unwrap().get("duration_s"), Value::Missing);
        assert!(matches!(write(dir.path(), &catalog, ""), Err(CatalogFileError::Exists(_))));
        assert_eq!(
            latest(dir.path()).unwrap(),
            [CatalogRef { name: "music".into(), version: "1".into(), dir: at }]
        );
        assert_eq!(next_version(dir.path(), "music"), "2");
        assert_eq!(next_version(dir.path(), "other"), "1");
    }

    /// Version 2 changes `t1` and adds `t9` over version 1.
    fn delta() -> Catalog {
        let columns: Vec<(String, ColumnKind)> =
            tracks().columns().map(|(n, k)| (n.to_string(), k)).collect();
        let mut b = super::super::Builder::new("music", "2", "track_id", &columns, 2).unwrap();
        use super::super::Cell;
        b.push("t1", &[Cell::Text("a7".into()), Cell::Number(1.0), Cell::Vector(vec![0.0, 0.0].into())])
            .unwrap();
        b.push("t9", &[Cell::Text("a9".into()), Cell::Missing, Cell::Vector(vec![1.0, 1.0].into())]).unwrap();
        b.finish()
    }

    // See: issue 16 (1): a catalogue grows daily.
    #[test]
    fn a_delta_applies_over_its_base_read_or_serving() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &tracks(), "").unwrap();
        let at = write_delta(dir.path(), &delta(), "1", "new.csv").unwrap();
        let check = |c: &Catalog| {
            assert_eq!((c.version.as_str(), c.len(), c.layers()), ("2", 4, 2));
            assert_eq!(c.get("t1").unwrap().get("artist_id"), Value::Str("a7"));
            assert_eq!(c.get("t2").unwrap().get("artist_id"), Value::Str("a2"));
            assert_eq!(c.get("t9").unwrap().get("duration_s"), Value::Missing);
        };
        check(&read(&at).unwrap());
        let serving = read(&dir.path().join("music/1")).unwrap();
        check(&read_over(&at, Some(&serving)).unwrap());
        // Merged into one layer, the same items; written whole, it reads back whole.
        let merged = read(&at).unwrap().merged();
        assert_eq!((merged.layers(), merged.len()), (1, 4));
        assert!(same_items(&merged, &read(&at).unwrap()));
        let whole = write(&dir.path().join("other"), &read(&at).unwrap(), "").unwrap();
        check_whole(&read(&whole).unwrap());
        fn check_whole(c: &Catalog) {
            assert_eq!((c.len(), c.layers()), (4, 1));
            assert_eq!(c.get("t1").unwrap().get("duration_s"), Value::Float(1.0));
        }
    }

    #[test]
    fn a_delta_without_its_base_or_with_other_columns_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let at = write_delta(dir.path(), &delta(), "1", "").unwrap();
        let err = read(&at).unwrap_err().to_string();
        assert!(err.contains("music/1") && err.contains("catalog.toml"), "{err}");
        let columns = [("other".to_string(), ColumnKind::Number)];
        let base = super::super::Builder::new("music", "1", "track_id", &columns, 0).unwrap().finish();
        write(dir.path(), &base, "").unwrap();
        let err = read(&at).unwrap_err().to_string();
        assert!(err.contains("music/2") && err.contains("other columns than its base"), "{err}");
        let mut many = tracks();
        for v in 2..=(crate::catalog::MAX_LAYERS + 3) {
            let mut d = delta();
            d.version = v.to_string();
            many = many.with_delta(d).unwrap();
            assert!(many.layers() <= crate::catalog::MAX_LAYERS, "{} layers", many.layers());
            assert_eq!(many.len(), 4);
        }
    }

    #[test]
    fn a_truncated_changed_or_misplaced_catalog_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let at = write(dir.path(), &tracks(), "").unwrap();
        let items = at.join(ITEMS);
        let whole = std::fs::read(&items).unwrap();
        std::fs::write(&items, &whole[..whole.len() - 3]).unwrap();
        let err = read(&at).unwrap_err().to_string();
        assert!(err.contains("items.bin") && err.contains("incomplete copy"), "{err}");
        let mut flipped = whole.clone();
        flipped[20] ^= 1;
        std::fs::write(&items, &flipped).unwrap();
        let err = read(&at).unwrap_err().to_string();
        assert!(err.contains("checksum"), "{err}");
        std::fs::write(&items, &whole).unwrap();
        std::fs::rename(&at, dir.path().join("music/7")).unwrap();
        let err = read(&dir.path().join("music/7")).unwrap_err().to_string();
        assert!(err.contains("says music version 1"), "{err}");
        // A hidden (still being written) version is never a candidate.
        std::fs::rename(dir.path().join("music/7"), dir.path().join("music/.8.tmp-1")).unwrap();
        assert!(latest(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn a_structurally_broken_file_with_a_matching_checksum_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let at = write(dir.path(), &tracks(), "").unwrap();
        let mut manifest: CatalogManifest = crate::toml_file::read(&at.join(MANIFEST)).unwrap();
        // Claims one item more than the file holds: the reader runs out inside a column.
        manifest.catalog.items = 4;
        std::fs::write(at.join(MANIFEST), toml::to_string(&manifest).unwrap()).unwrap();
        let err = read(&at).unwrap_err().to_string();
        assert!(err.contains("ends inside") || err.contains("offsets"), "{err}");
        manifest.catalog.items = 3;
        manifest.columns[2].dim = None;
        std::fs::write(at.join(MANIFEST), toml::to_string(&manifest).unwrap()).unwrap();
        let err = read(&at).unwrap_err().to_string();
        assert!(err.contains("column `track_embedding`: a vector needs a positive `dim`"), "{err}");
    }
}
