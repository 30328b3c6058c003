//! Catalogs from item tables: the item columns of a feature spec, read from Parquet or CSV
//! files with one row per item, become a catalog package the server looks candidates up in
//! (`retort catalog`). One table so feeds training (its columns are the examples' item
//! columns) and serving.

use std::path::{Path, PathBuf};

use retort_model::catalog::file::{self, CatalogFileError};
use retort_model::catalog::{Builder, Catalog, CatalogError, Cell, ColumnKind};
use retort_model::encode::Value;
use retort_model::manifest::{FeatureKind, Side};

use crate::data::dataset::{DataError, Dataset, Format, Partition};
use crate::data::spec::DataSpec;

#[derive(Debug, thiserror::Error)]
pub enum CatalogBuildError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("{path}, row {row}: item id `{id}` appears twice (first in {first_path}, row {first_row})")]
    DuplicateId { path: String, row: usize, id: String, first_path: String, first_row: usize },
    #[error("{path}, row {row}: no item id in column `{column}`")]
    MissingId { path: String, row: usize, column: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    File(#[from] CatalogFileError),
}

/// What to build a catalog from.
pub struct CatalogSource<'a> {
    /// An item table: one Parquet or CSV file, or a directory of them (read in name order).
    pub items: &'a Path,
    /// Its item-side features are the catalog's columns.
    pub spec: &'a DataSpec,
    /// The column holding each item's id (an item feature such as `track_id`, or any other
    /// column of the table).
    pub id_column: &'a str,
}

/// The files of an item table, in name order.
fn partitions(items: &Path) -> Result<Vec<Partition>, CatalogBuildError> {
    if items.is_dir() {
        let found = Dataset::open(items)?.partitions;
        if found.is_empty() {
            return Err(CatalogBuildError::Invalid(format!(
                "{}: no .parquet or .csv files",
                items.display()
            )));
        }
        return Ok(found);
    }
    let format = match items.extension().and_then(|e| e.to_str()) {
        Some("parquet") => Format::Parquet,
        Some("csv") => Format::Csv,
        _ => {
            return Err(CatalogBuildError::Invalid(format!(
                "{}: an item table is a .parquet or .csv file, or a directory of them",
                items.display()
            )));
        }
    };
    let name = items.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(vec![Partition { path: items.to_path_buf(), name, format }])
}

/// Reads every row of `source` into a catalog named `name`, version `version`; every value is
/// checked, and the first bad one is refused with its file, row and column.
pub fn build(source: &CatalogSource<'_>, name: &str, version: &str) -> Result<Catalog, CatalogBuildError> {
    let columns: Vec<(String, ColumnKind)> = source
        .spec
        .features_on(Side::Item)
        .filter(|f| f.name != source.id_column)
        .map(|f| {
            let kind = match f.kind {
                FeatureKind::Categorical { .. } => ColumnKind::Categorical,
                FeatureKind::Number { .. } => ColumnKind::Number,
                FeatureKind::Vector { dim, .. } => ColumnKind::Vector { dim },
            };
            (f.name.clone(), kind)
        })
        .collect();
    if columns.is_empty() {
        return Err(CatalogBuildError::Invalid(format!(
            "the spec has no item features besides `{}`: a catalog would hold nothing",
            source.id_column
        )));
    }
    let files = partitions(source.items)?;
    let mut wanted: Vec<&str> = vec![source.id_column];
    wanted.extend(columns.iter().map(|(n, _)| n.as_str()));
    let mut builder = Builder::new(name, version, source.id_column, &columns, 0)
        .map_err(|e| CatalogBuildError::Invalid(e.to_string()))?;
    // Where each file's rows start in the catalog, to name a duplicate's first place.
    let mut starts: Vec<(usize, String)> = Vec::new();
    for partition in &files {
        let examples = partition.read(source.spec, &wanted)?;
        let path = examples.path.clone();
        starts.push((builder.len(), path.clone()));
        let mut row_in_file = 0;
        for batch in 0..examples.batches.len() {
            let ids = examples.column(batch, source.id_column);
            let values: Vec<_> = columns.iter().map(|(n, _)| examples.column(batch, n)).collect();
            for row in 0..ids.len() {
                let id = ids.id(row).ok_or_else(|| CatalogBuildError::MissingId {
                    path: path.clone(),
                    row: row_in_file,
                    column: source.id_column.to_string(),
                })?;
                let cells: Vec<Cell<'_>> =
                    values.iter().zip(&columns).map(|(c, (_, kind))| cell(c.value(row), kind)).collect();
                builder.push(&id, &cells).map_err(|e| match e {
                    CatalogError::DuplicateId { id, first, .. } => {
                        let (start, first_path) = starts.iter().rev().find(|(s, _)| *s <= first).unwrap();
                        CatalogBuildError::DuplicateId {
                            path: path.clone(),
                            row: row_in_file,
                            id,
                            first_path: first_path.clone(),
                            first_row: first - start,
                        }
                    }
                    CatalogError::Value { column, problem, .. } => {
                        CatalogBuildError::Data(DataError::Value {
                            path: path.clone(),
                            column,
                            row: row_in_file,
                            problem,
                        })
                    }
                    other => CatalogBuildError::Invalid(format!("{path}, row {row_in_file}: {other}")),
                })?;
                row_in_file += 1;
            }
        }
    }
    Ok(builder.finish())
}

/// A column value as a catalog cell of `kind`. A value of another type becomes a cell the
/// builder refuses, naming what it was.
fn cell<'a>(value: Value<'a>, kind: &ColumnKind) -> Cell<'a> {
    match (value, kind) {
        (Value::Missing, _) => Cell::Missing,
        (Value::Str(s), ColumnKind::Categorical) => Cell::Text(s.into()),
        (Value::Int(i), ColumnKind::Categorical) => Cell::Text(i.to_string().into()),
        (Value::Uint(u), ColumnKind::Categorical) => Cell::Text(u.to_string().into()),
        (Value::Bool(b), ColumnKind::Categorical) => Cell::Text(b.to_string().into()),
        (Value::Int(i), _) => Cell::Number(i as f64),
        (Value::Uint(u), _) => Cell::Number(u as f64),
        (Value::Float(x), _) => Cell::Number(x),
        (Value::Bool(b), _) => Cell::Number(b as u8 as f64),
        (Value::List(v), _) => Cell::Vector(v),
        (Value::Str(s), _) => Cell::Text(s.into()),
        (Value::Other(_), _) => Cell::Missing,
    }
}

/// What publishing a catalog did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// A new version, in this directory.
    New(PathBuf),
    /// Nothing: the newest version, in this directory, holds exactly these items. A rerun on
    /// the same table is not a new version.
    Unchanged(PathBuf),
}

impl Published {
    pub fn dir(&self) -> &Path {
        match self {
            Published::New(d) | Published::Unchanged(d) => d,
        }
    }
}

/// Builds a delta of `source`'s items (new and changed ones) and publishes it as the next
/// version of `name`, applying over version `base`, which must be published and have the same
/// columns.
pub fn publish_delta(
    source: &CatalogSource<'_>,
    catalogs_dir: &Path,
    name: &str,
    base: &str,
) -> Result<(PathBuf, Catalog), CatalogBuildError> {
    let base_catalog = file::read(&catalogs_dir.join(name).join(base))?;
    let version = file::next_version(catalogs_dir, name);
    let delta = build(source, name, &version)?;
    let composed = base_catalog.with_delta(delta.clone()).map_err(CatalogBuildError::Invalid)?;
    let dir = file::write_delta(catalogs_dir, &delta, base, &source.items.display().to_string())?;
    Ok((dir, composed))
}

/// Builds the catalog and publishes it under `catalogs_dir` as `name`, version `version` (one
/// past the newest when `None`), unless the newest version already holds the same items.
pub fn publish(
    source: &CatalogSource<'_>,
    catalogs_dir: &Path,
    name: &str,
    version: Option<&str>,
) -> Result<(Published, Catalog), CatalogBuildError> {
    let version = version.map_or_else(|| file::next_version(catalogs_dir, name), str::to_string);
    let catalog = build(source, name, &version)?;
    let newest = catalogs_dir.is_dir().then(|| file::latest(catalogs_dir)).transpose()?.unwrap_or_default();
    if let Some(newest) = newest.into_iter().find(|c| c.name == name)
        && file::read(&newest.dir).is_ok_and(|old| file::same_items(&old, &catalog))
    {
        return Ok((Published::Unchanged(newest.dir), catalog));
    }
    let dir = file::write(catalogs_dir, &catalog, &source.items.display().to_string())?;
    Ok((Published::New(dir), catalog))
}

#[cfg(test)]
mod tests {
    use super::*;
    use retort_model::encode::FeatureSource;

    const SPEC: &str = r#"
[[features]]
name = "user_id"
side = "context"
kind = "categorical"
buckets = 100

[[features]]
name = "track_id"
side = "item"
kind = "categorical"
buckets = 1000

[[features]]
name = "duration_s"
side = "item"
kind = "number"
mean = 200.0
std = 50.0

[[features]]
name = "track_embedding"
side = "item"
kind = "vector"
dim = 2
"#;

    fn source<'a>(items: &'a Path, spec: &'a DataSpec) -> CatalogSource<'a> {
        CatalogSource { items, spec, id_column: "track_id" }
    }

    #[test]
    fn a_csv_item_table_becomes_a_catalog_that_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let spec: DataSpec = toml::from_str(SPEC).unwrap();
        let items = dir.path().join("tracks.csv");
        std::fs::write(&items, "track_id,duration_s,track_embedding,other\nt1,200,0.5;1,x\nt2,,1;2,y\n")
            .unwrap();
        let (published, catalog) =
            publish(&source(&items, &spec), &dir.path().join("catalogs"), "music", None).unwrap();
        let at = published.dir().to_path_buf();
        assert!(matches!(published, Published::New(_)) && at.ends_with("catalogs/music/1"), "{published:?}");
        assert_eq!(catalog.len(), 2);
        let back = file::read(&at).unwrap();
        let t1 = back.get("t1").unwrap();
        assert_eq!(t1.get("duration_s"), Value::Float(200.0));
        assert_eq!(t1.get("track_embedding"), Value::List(vec![0.5, 1.0].into()));
        assert_eq!(back.get("t2").unwrap().get("duration_s"), Value::Missing);
        let (again, _) =
            publish(&source(&items, &spec), &dir.path().join("catalogs"), "music", None).unwrap();
        assert_eq!(again, Published::Unchanged(at), "the same table again is not a new version");
        std::fs::write(&items, "track_id,duration_s,track_embedding\nt1,201,0.5;1\nt2,,1;2\n").unwrap();
        let (changed, _) =
            publish(&source(&items, &spec), &dir.path().join("catalogs"), "music", None).unwrap();
        assert!(matches!(&changed, Published::New(d) if d.ends_with("music/2")), "{changed:?}");
    }

    #[test]
    fn a_delta_publishes_only_its_items_over_its_base() {
        let dir = tempfile::tempdir().unwrap();
        let spec: DataSpec = toml::from_str(SPEC).unwrap();
        let catalogs = dir.path().join("catalogs");
        let items = dir.path().join("tracks.csv");
        std::fs::write(&items, "track_id,duration_s,track_embedding\nt1,200,0.5;1\nt2,180,1;2\n").unwrap();
        publish(&source(&items, &spec), &catalogs, "music", None).unwrap();
        let new = dir.path().join("new.csv");
        std::fs::write(&new, "track_id,duration_s,track_embedding\nt2,999,1;2\nt3,100,0;0\n").unwrap();
        let (at, composed) = publish_delta(&source(&new, &spec), &catalogs, "music", "1").unwrap();
        assert!(at.ends_with("music/2"));
        assert_eq!(composed.len(), 3);
        let read = file::read(&at).unwrap();
        assert_eq!(read.get("t2").unwrap().get("duration_s"), Value::Float(999.0));
        assert_eq!(read.get("t1").unwrap().get("duration_s"), Value::Float(200.0));
        let err = publish_delta(&source(&new, &spec), &catalogs, "music", "7").unwrap_err().to_string();
        assert!(err.contains("music/7"), "{err}");
    }

    #[test]
    fn a_bad_table_is_refused_naming_file_row_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let spec: DataSpec = toml::from_str(SPEC).unwrap();
        let items = dir.path().join("items");
        std::fs::create_dir(&items).unwrap();
        let write = |name: &str, text: &str| std::fs::write(items.join(name), text).unwrap();
        write("a.csv", "track_id,duration_s,track_embedding\nt1,200,0.5;1\nt2,180,1;2\n");
        write("b.csv", "track_id,duration_s,track_embedding\nt3,200,0.5;1\nt1,100,0;0\n");
        let err = build(&source(&items, &spec), "music", "1").unwrap_err().to_string();
        assert!(
            err.contains("b.csv, row 1: item id `t1` appears twice (first in")
                && err.contains("a.csv, row 0"),
            "{err}"
        );
        write("b.csv", "track_id,duration_s,track_embedding\nt3,inf,0.5;1\n");
        let err = build(&source(&items, &spec), "music", "1").unwrap_err().to_string();
        assert!(
            err.contains("b.csv: column `duration_s`, row 0") && err.contains("not a finite number"),
            "{err}"
        );
        write("b.csv", "track_id,duration_s,track_embedding\nt3,1,0.5;1;3\n");
        let err = build(&source(&items, &spec), "music", "1").unwrap_err().to_string();
        assert!(err.contains("column `track_embedding`, row 0") && err.contains("expected 2"), "{err}");
        write("b.csv", "track_id,track_embedding\nt3,0.5;1\n");
        let err = build(&source(&items, &spec), "music", "1").unwrap_err().to_string();
        assert!(err.contains("b.csv: missing column `duration_s`"), "{err}");
        write("b.csv", "track_id,duration_s,track_embedding\n,1,0.5;1\n");
        let err = build(&source(&items, &spec), "music", "1").unwrap_err().to_string();
        assert!(err.contains("b.csv, row 0: no item id in column `track_id`"), "{err}");
    }
}
