//! Reading the TOML files retort is configured with (manifests, specs, mappings, configs), with
//! errors that name the file.

use std::path::Path;

use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum TomlFileError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    /// One line, and never the file's text: the file may not be what it claims (a manifest
    /// linked to a secret), and log lines should stay lines.
    #[error("{path}, line {line}, column {column}: {message}")]
    Parse { path: String, line: usize, column: usize, message: String },
}

/// Reads and parses `path`.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<T, TomlFileError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| TomlFileError::Read { path: path.display().to_string(), source })?;
    parse(&text, &path.display().to_string())
}

/// Parses `text`, naming it `origin` in errors.
pub fn parse<T: DeserializeOwned>(text: &str, origin: &str) -> Result<T, TomlFileError> {
    toml::from_str(text).map_err(|e| {
        let at = e.span().map_or(0, |s| s.start).min(text.len());
        let before = &text[..at];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        TomlFileError::Parse {
            path: origin.to_string(),
            line,
            column,
            message: e.message().split_whitespace().collect::<Vec<_>>().join(" "),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Small {
        name: String,
    }

    // See: issue 14 (H): a manifest linked to another file echoed that file's first line.
    #[test]
    fn a_parse_error_is_one_line_with_its_place_and_never_the_text() {
        let err =
            parse::<Small>("root:x:0:0:root:/root:/bin/bash\n", "manifest.toml").unwrap_err().to_string();
        assert!(err.starts_with("manifest.toml, line 1, column"), "{err}");
        assert!(!err.contains("root:x") && !err.contains('\n'), "{err}");
        let err = parse::<Small>("\nname = 3\n", "m.toml").unwrap_err().to_string();
        assert!(err.starts_with("m.toml, line 2, column 8"), "{err}");
    }
}
