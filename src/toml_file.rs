//! Reading the TOML files retort is configured with (manifests, specs, mappings, configs), with
//! errors that name the file.

use std::path::Path;

use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum TomlFileError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse { path: String, source: Box<toml::de::Error> },
}

/// Reads and parses `path`.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<T, TomlFileError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| TomlFileError::Read { path: path.display().to_string(), source })?;
    toml::from_str(&text)
        .map_err(|source| TomlFileError::Parse { path: path.display().to_string(), source: Box::new(source) })
}
