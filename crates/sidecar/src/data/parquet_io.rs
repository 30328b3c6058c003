//! Writing Parquet files whole or not at all: each file is written under a hidden temporary
//! name beside its destination, synced, then renamed into place, so a reader (or a rerun after a
//! crash) never takes a half-written file for a whole one.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: {source}")]
    Parquet { path: String, source: parquet::errors::ParquetError },
}

/// The temporary name a file is written under before it is renamed to `path`.
pub fn temporary_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Whether `name` is one of [`temporary_path`]'s names.
fn is_temporary(name: &str) -> bool {
    name.starts_with('.')
        && name
            .strip_suffix(".tmp")
            .and_then(|n| n.rsplit_once('.'))
            .is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// Removes, under `dir` (recursively), the temporary files of interrupted writes that have not
/// been modified for `older_than`. Returns what was removed; a file that cannot be removed is
/// left for the next run.
pub fn remove_stale_temporaries(dir: &Path, older_than: std::time::Duration) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return removed };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            removed.extend(remove_stale_temporaries(&path, older_than));
            continue;
        }
        let name = entry.file_name();
        let stale = meta.modified().ok().and_then(|m| m.elapsed().ok()).is_some_and(|age| age >= older_than);
        if is_temporary(&name.to_string_lossy()) && stale && std::fs::remove_file(&path).is_ok() {
            removed.push(path);
        }
    }
    removed
}

/// Writes `batches` (all of `schema`) to `path` atomically, with `metadata` as the file's
/// key-value metadata.
pub fn write_atomic(
    path: &Path,
    schema: SchemaRef,
    batches: &[RecordBatch],
    metadata: &[(String, String)],
) -> Result<(), WriteError> {
    let io = |p: &Path| {
        let p = p.display().to_string();
        move |source| WriteError::Io { path: p, source }
    };
    let parquet = |p: &Path| {
        let p = p.display().to_string();
        move |source| WriteError::Parquet { path: p, source }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let tmp = temporary_path(path);
    let result = (|| {
        let file = File::create(&tmp).map_err(io(&tmp))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).expect("level 1 is valid")))
            .set_key_value_metadata(Some(
                metadata.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())).collect(),
            ))
            .build();
        let mut writer = ArrowWriter::try_new(file, schema, Some(props)).map_err(parquet(&tmp))?;
        for batch in batches {
            writer.write(batch).map_err(parquet(&tmp))?;
        }
        let file = writer.into_inner().map_err(parquet(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))?;
        if let Some(dir) = path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The key-value metadata of a Parquet file.
pub fn read_metadata(path: &Path) -> Result<Vec<(String, String)>, WriteError> {
    let p = path.display().to_string();
    let file = File::open(path).map_err(|source| WriteError::Io { path: p.clone(), source })?;
    let reader = parquet::file::serialized_reader::SerializedFileReader::new(file)
        .map_err(|source| WriteError::Parquet { path: p, source })?;
    let kv = parquet::file::reader::FileReader::metadata(&reader).file_metadata().key_value_metadata();
    Ok(kv
        .map(|kv| kv.iter().map(|e| (e.key.clone(), e.value.clone().unwrap_or_default())).collect())
        .unwrap_or_default())
}

/// The column names of a Parquet file.
pub fn column_names(path: &Path) -> Result<Vec<String>, WriteError> {
    let p = path.display().to_string();
    let file = File::open(path).map_err(|source| WriteError::Io { path: p.clone(), source })?;
    let reader = parquet::file::serialized_reader::SerializedFileReader::new(file)
        .map_err(|source| WriteError::Parquet { path: p, source })?;
    let schema = parquet::file::reader::FileReader::metadata(&reader).file_metadata().schema_descr_ptr();
    Ok(schema.root_schema().get_fields().iter().map(|f| f.name().to_string()).collect())
}

/// Writes a text file whole or not at all: beside it first, then renamed into place.
pub fn write_text(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = temporary_path(path);
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_stale_temporary_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("day=1");
        std::fs::create_dir_all(&nested).unwrap();
        let tmp = nested.join(".part-0.parquet.4242.tmp");
        let keep = [dir.path().join("part-0.parquet"), dir.path().join(".hidden"), dir.path().join("x.tmp")];
        for p in keep.iter().chain([&tmp]) {
            std::fs::write(p, b"x").unwrap();
        }
        assert!(remove_stale_temporaries(dir.path(), std::time::Duration::from_secs(3600)).is_empty());
        assert_eq!(remove_stale_temporaries(dir.path(), std::time::Duration::ZERO), vec![tmp.clone()]);
        assert!(!tmp.exists() && keep.iter().all(|p| p.exists()));
    }
}
