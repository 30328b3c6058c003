//! The label store: teacher logits computed once and shared by every student.
//!
//! Layout: `<root>/<teacher name>/<teacher version>/<mapping fingerprint>/<partition>.parquet`,
//! one file per input partition, keyed by `example_id`, with one float32 column per teacher head
//! (its logit) and the file's provenance in Parquet key-value metadata. A teacher version and a
//! mapping fully determine the labels, so anything under one directory can be reused by any
//! student without running the teacher again.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use retort_model::manifest::Manifest;

pub const META_TEACHER: &str = "retort.teacher";
pub const META_MAPPING: &str = "retort.mapping";
pub const META_INPUT: &str = "retort.input";
pub const META_INPUT_FINGERPRINT: &str = "retort.input_fingerprint";
pub const META_CREATED_AT: &str = "retort.created_at";
pub const META_ROWS: &str = "retort.rows";
/// TOML table: teacher feature → rows that took its default.
pub const META_DEFAULTED: &str = "retort.defaulted";
/// TOML table: distillation target → teacher head.
pub const META_TARGETS: &str = "retort.targets";

/// The directory holding one teacher version's labels under one mapping.
pub fn labels_dir(root: &Path, teacher: &Manifest, mapping_fingerprint: &str) -> PathBuf {
    root.join(&teacher.model.name).join(&teacher.model.version).join(mapping_fingerprint)
}

/// Where the labels of an input partition go: its name, with a `.parquet` extension.
pub fn label_path(dir: &Path, partition_name: &str) -> PathBuf {
    let mut path = dir.join(partition_name);
    path.set_extension("parquet");
    path
}

/// A digest of a file's bytes: labels of a partition whose content changed are stale.
pub fn file_fingerprint(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ file.metadata()?.len();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        // Eight bytes at a time: FNV's byte loop is too slow for large partitions.
        let mut chunks = buf[..n].chunks_exact(8);
        for c in &mut chunks {
            h = (h ^ u64::from_le_bytes(c.try_into().expect("8 bytes"))).wrapping_mul(0x0000_0100_0000_01b3);
            h ^= h >> 29;
        }
        for &b in chunks.remainder() {
            h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    Ok(format!("{h:016x}"))
}

/// Why a label store's contents could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{dir} holds no teacher labels")]
    NoLabels { dir: String },
    #[error(transparent)]
    Data(#[from] crate::data::dataset::DataError),
    #[error("label store: {0}")]
    Unreadable(String),
}

/// The teacher labels a label store directory holds: its heads' columns and the distillation
/// targets its mapping names (as its first file records them).
pub fn label_names(dir: &Path) -> Result<std::collections::BTreeSet<String>, StoreError> {
    let store = crate::data::dataset::Dataset::open(dir)?;
    let Some(first) = store.partitions.first() else {
        return Err(StoreError::NoLabels { dir: dir.display().to_string() });
    };
    let unreadable = |e: crate::data::parquet_io::WriteError| StoreError::Unreadable(e.to_string());
    let info = LabelFileInfo::from_metadata(
        &crate::data::parquet_io::read_metadata(&first.path).map_err(unreadable)?,
    );
    let mut names: std::collections::BTreeSet<String> = info.targets.into_keys().collect();
    names.extend(crate::data::parquet_io::column_names(&first.path).map_err(unreadable)?);
    Ok(names)
}

/// Provenance of one label file, as read back from its metadata.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelFileInfo {
    pub teacher: String,
    pub mapping: String,
    pub input: String,
    pub input_fingerprint: String,
    pub created_at: String,
    pub rows: u64,
    pub defaulted: BTreeMap<String, u64>,
    pub targets: BTreeMap<String, String>,
}

impl LabelFileInfo {
    pub fn to_metadata(&self) -> Vec<(String, String)> {
        let table = |m: &dyn Fn(&mut toml::Table)| {
            let mut t = toml::Table::new();
            m(&mut t);
            t.to_string()
        };
        vec![
            (META_TEACHER.into(), self.teacher.clone()),
            (META_MAPPING.into(), self.mapping.clone()),
            (META_INPUT.into(), self.input.clone()),
            (META_INPUT_FINGERPRINT.into(), self.input_fingerprint.clone()),
            (META_CREATED_AT.into(), self.created_at.clone()),
            (META_ROWS.into(), self.rows.to_string()),
            (
                META_DEFAULTED.into(),
                table(&|t| {
                    for (k, v) in &self.defaulted {
                        t.insert(k.clone(), toml::Value::Integer(*v as i64));
                    }
                }),
            ),
            (
                META_TARGETS.into(),
                table(&|t| {
                    for (k, v) in &self.targets {
                        t.insert(k.clone(), toml::Value::String(v.clone()));
                    }
                }),
            ),
        ]
    }

    pub fn from_metadata(kv: &[(String, String)]) -> LabelFileInfo {
        let get = |key: &str| kv.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).unwrap_or("");
        let table = |key: &str| get(key).parse::<toml::Table>().unwrap_or_default();
        LabelFileInfo {
            teacher: get(META_TEACHER).to_string(),
            mapping: get(META_MAPPING).to_string(),
            input: get(META_INPUT).to_string(),
            input_fingerprint: get(META_INPUT_FINGERPRINT).to_string(),
            created_at: get(META_CREATED_AT).to_string(),
            rows: get(META_ROWS).parse().unwrap_or(0),
            defaulted: table(META_DEFAULTED)
                .into_iter()
                .filter_map(|(k, v)| v.as_integer().map(|n| (k, n as u64)))
                .collect(),
            targets: table(META_TARGETS)
                .into_iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_string())))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips() {
        let info = LabelFileInfo {
            teacher: "t/1".into(),
            mapping: "abc".into(),
            input: "day-000.parquet".into(),
            input_fingerprint: "0123".into(),
            created_at: "2026-11-28T00:00:00Z".into(),
            rows: 42,
            defaulted: [("video_id".to_string(), 42)].into(),
            targets: [("play".to_string(), "click".to_string())].into(),
        };
        assert_eq!(LabelFileInfo::from_metadata(&info.to_metadata()), info);
    }

    #[test]
    fn label_files_mirror_partition_names() {
        let dir = Path::new("/s/t/1/fp");
        assert_eq!(label_path(dir, "day-000.parquet"), Path::new("/s/t/1/fp/day-000.parquet"));
        assert_eq!(label_path(dir, "d=1/part.csv"), Path::new("/s/t/1/fp/d=1/part.parquet"));
    }
}
