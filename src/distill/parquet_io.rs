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

/// Writes a text file whole or not at all: beside it first, then renamed into place.
pub fn write_text(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = temporary_path(path);
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}
