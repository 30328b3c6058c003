//! Where a log's rows land: Parquet partitions under `<dir>/dt=<YYYY-MM-DD>/`, one day
//! directory per UTC day of their first row, each file named
//! `<log>-<first_ms>-<writer>-<seq>.parquet`. A partition is written as `….parquet.tmp` and
//! renamed into place once its footer is on disk, so a file with the `.parquet` name is always
//! whole; a killed writer leaves at most a `.tmp`, which readers never list and the next writer
//! to start in the directory removes.
//!
//! Each file's key-value metadata says what it holds (`retort.log`, `retort.format`,
//! `retort.rows`, and the arrival times of its first and last rows in `retort.first_ms` and
//! `retort.last_ms`), so a join can decide from the footer alone whether a partition's
//! attribution window has closed.

use std::fs::File;
use std::path::{Path, PathBuf};

use parquet::file::reader::FileReader;
use parquet::file::serialized_reader::SerializedFileReader;

/// The format version in every partition's metadata; a reader refuses another.
pub const FORMAT: &str = "1";

pub const KEY_LOG: &str = "retort.log";
pub const KEY_FORMAT: &str = "retort.format";
pub const KEY_ROWS: &str = "retort.rows";
pub const KEY_FIRST_MS: &str = "retort.first_ms";
pub const KEY_LAST_MS: &str = "retort.last_ms";

const SUFFIX: &str = ".parquet";
const TMP_SUFFIX: &str = ".parquet.tmp";

#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: not a readable Parquet partition: {source}")]
    Parquet { path: String, source: parquet::errors::ParquetError },
    #[error("{path}: {problem}")]
    Metadata { path: String, problem: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PartitionError + '_ {
    move |source| PartitionError::Io { path: path.display().to_string(), source }
}

/// The final path of a partition of `log` whose first row arrived at `first_ms`.
pub fn path(dir: &Path, log: &str, first_ms: i64, writer: &str, seq: u64) -> PathBuf {
    let day = &retort_model::timestamp::rfc3339_secs(first_ms.div_euclid(1000))[..10];
    dir.join(format!("dt={day}")).join(format!("{log}-{first_ms:013}-{writer}-{seq:06}{SUFFIX}"))
}

/// Where a partition is written before it is whole.
pub fn temporary(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// A complete partition and what its footer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub path: PathBuf,
    pub rows: u64,
    pub first_ms: i64,
    pub last_ms: i64,
}

/// Every complete partition of `log` under `dir`, oldest first (by first arrival, then name).
/// A missing directory holds none. Unfinished (`.tmp`) files are not listed.
pub fn list(dir: &Path, log: &str) -> Result<Vec<Partition>, PartitionError> {
    let mut out = Vec::new();
    for path in files(dir, log, SUFFIX)? {
        out.push(read(&path, log)?);
    }
    out.sort_by(|a, b| (a.first_ms, &a.path).cmp(&(b.first_ms, &b.path)));
    Ok(out)
}

/// Removes the unfinished partitions of `log` a killed writer left under `dir`; returns them.
/// Their rows were never complete: a Parquet file without its footer cannot be read.
pub fn remove_unfinished(dir: &Path, log: &str) -> Result<Vec<PathBuf>, PartitionError> {
    let stale = files(dir, log, TMP_SUFFIX)?;
    for path in &stale {
        std::fs::remove_file(path).map_err(io(path))?;
    }
    Ok(stale)
}

/// Reads a complete partition's footer.
pub fn read(path: &Path, log: &str) -> Result<Partition, PartitionError> {
    let file = File::open(path).map_err(io(path))?;
    let reader = SerializedFileReader::new(file)
        .map_err(|source| PartitionError::Parquet { path: path.display().to_string(), source })?;
    let kv = reader.metadata().file_metadata().key_value_metadata().cloned().unwrap_or_default();
    let get = |key: &str| -> Result<&str, PartitionError> {
        kv.iter().find(|e| e.key == key).and_then(|e| e.value.as_deref()).ok_or_else(|| {
            PartitionError::Metadata {
                path: path.display().to_string(),
                problem: format!("no `{key}` in its metadata"),
            }
        })
    };
    let bad = |problem: String| PartitionError::Metadata { path: path.display().to_string(), problem };
    if get(KEY_LOG)? != log {
        return Err(bad(format!("holds a `{}` log, not `{log}`", get(KEY_LOG)?)));
    }
    if get(KEY_FORMAT)? != FORMAT {
        return Err(bad(format!("format {} (this build reads format {FORMAT})", get(KEY_FORMAT)?)));
    }
    let number = |key: &str| -> Result<i64, PartitionError> {
        let text = get(key)?;
        text.parse().map_err(|_| bad(format!("`{key}` = {text:?} is not an integer")))
    };
    let rows = number(KEY_ROWS)?;
    let rows = u64::try_from(rows).map_err(|_| bad(format!("`{KEY_ROWS}` = {rows} is negative")))?;
    let (first_ms, last_ms) = (number(KEY_FIRST_MS)?, number(KEY_LAST_MS)?);
    let stored = reader.metadata().file_metadata().num_rows();
    if stored != rows as i64 {
        return Err(bad(format!("its metadata says {rows} rows, its row groups hold {stored}")));
    }
    Ok(Partition { path: path.to_path_buf(), rows, first_ms, last_ms })
}

/// The record batches of the partition at `path`, each checked to have `schema`'s columns (a
/// file of another log, or of another format version, is named as such).
pub fn batches(
    path: &Path,
    log: &str,
    schema: &arrow_schema::Schema,
) -> Result<Vec<arrow_array::RecordBatch>, PartitionError> {
    let bad = |problem: String| PartitionError::Metadata { path: path.display().to_string(), problem };
    let parquet = |source| PartitionError::Parquet { path: path.display().to_string(), source };
    let file = File::open(path).map_err(io(path))?;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(parquet)?
        .build()
        .map_err(parquet)?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| bad(e.to_string()))?;
        if batch.schema().fields() != schema.fields() {
            return Err(bad(format!("its columns are not the {log} log's: {:?}", batch.schema())));
        }
        out.push(batch);
    }
    Ok(out)
}

/// Files of `log` ending in `suffix` in the day directories of `dir`.
fn files(dir: &Path, log: &str, suffix: &str) -> Result<Vec<PathBuf>, PartitionError> {
    let mut out = Vec::new();
    let days = match std::fs::read_dir(dir) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(dir)(e)),
    };
    let prefix = format!("{log}-");
    for day in days {
        let day = day.map_err(io(dir))?.path();
        if !day.is_dir() || !day.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("dt=")) {
            continue;
        }
        for entry in std::fs::read_dir(&day).map_err(io(&day))? {
            let path = entry.map_err(io(&day))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            // `.parquet.tmp` also ends in neither `.parquet` nor the other way round.
            if name.starts_with(&prefix) && name.ends_with(suffix) {
                out.push(path);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_is_named_by_its_day_log_first_arrival_writer_and_sequence() {
        let p = path(Path::new("/logs"), "impressions", 1_764_720_000_123, "0a1b2c3d", 7);
        assert_eq!(p, Path::new("/logs/dt=2025-12-03/impressions-1764720000123-0a1b2c3d-000007.parquet"));
        assert_eq!(
            temporary(&p),
            Path::new("/logs/dt=2025-12-03/impressions-1764720000123-0a1b2c3d-000007.parquet.tmp")
        );
    }

    #[test]
    fn listing_skips_unfinished_files_other_logs_and_stray_names() {
        let dir = tempfile::tempdir().unwrap();
        let day = dir.path().join("dt=2026-12-03");
        std::fs::create_dir_all(&day).unwrap();
        for name in ["impressions-1-w-000001.parquet.tmp", "feedback-1-w-000001.parquet.tmp", "notes.txt"] {
            std::fs::write(day.join(name), b"x").unwrap();
        }
        assert_eq!(list(dir.path(), "impressions").unwrap(), []);
        assert_eq!(list(&dir.path().join("absent"), "impressions").unwrap(), []);
        let removed = remove_unfinished(dir.path(), "impressions").unwrap();
        assert_eq!(removed, [day.join("impressions-1-w-000001.parquet.tmp")]);
        assert!(day.join("feedback-1-w-000001.parquet.tmp").exists(), "another log's file is its own");
        assert!(day.join("notes.txt").exists());
    }

    #[test]
    fn a_file_that_is_not_parquet_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("dt=2026-12-03/impressions-1-w-000001.parquet");
        std::fs::create_dir_all(bad.parent().unwrap()).unwrap();
        std::fs::write(&bad, b"not parquet").unwrap();
        let e = list(dir.path(), "impressions").unwrap_err().to_string();
        assert!(e.contains("impressions-1-w-000001.parquet: not a readable Parquet partition"), "{e}");
    }
}
