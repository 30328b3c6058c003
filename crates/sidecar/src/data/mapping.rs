//! Cross-domain feature and task mapping (`mapping.toml`): how the labeller builds a teacher's
//! inputs from another product's examples, and which teacher heads become which distillation
//! targets. A teacher feature the student's data cannot provide takes the teacher's own default,
//! and the labeller reports how often that happened (Paper A saw up to 40% of the teacher's
//! features missing on the target surface).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use retort_model::encode::fnv1a64;
use retort_model::manifest::Manifest;

/// Where one teacher feature comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Source {
    /// A column of the examples.
    Column(String),
    /// The same value on every row.
    Constant(toml::Value),
    /// Nothing: the teacher's default for a missing value (`default = true`).
    Default(bool),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// Teacher feature → its source. Every teacher feature must be listed, so that a defaulted
    /// feature is a decision, not an oversight.
    pub features: BTreeMap<String, Source>,
    /// Distillation target name → teacher head.
    #[serde(default)]
    pub targets: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error(transparent)]
    File(#[from] retort_model::toml_file::TomlFileError),
    #[error("mapping for teacher {teacher}: {problem}")]
    Invalid { teacher: String, problem: String },
}

impl Mapping {
    pub fn from_path(path: &Path) -> Result<Mapping, MappingError> {
        Ok(retort_model::toml_file::read(path)?)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a mapping always serialises to TOML. This is a bug.")
    }

    /// Checks the mapping against the teacher: every teacher feature covered, nothing unknown,
    /// targets naming real heads, `default` only ever `true`.
    pub fn check(&self, teacher: &Manifest) -> Result<(), MappingError> {
        let invalid = |problem: String| MappingError::Invalid { teacher: teacher.id(), problem };
        let uncovered: Vec<&str> = teacher
            .features
            .iter()
            .filter(|f| !self.features.contains_key(&f.name))
            .map(|f| f.name.as_str())
            .collect();
        if !uncovered.is_empty() {
            return Err(invalid(format!(
                "teacher inputs not covered: {} (map each to a column, a constant, or `default = true`)",
                uncovered.join(", ")
            )));
        }
        for (name, source) in &self.features {
            if teacher.feature(name).is_none() {
                return Err(invalid(format!("maps `{name}`, which is not a teacher feature")));
            }
            if *source == Source::Default(false) {
                return Err(invalid(format!(
                    "`{name}`: `default = false` means nothing; give a column or a constant"
                )));
            }
        }
        for (target, head) in &self.targets {
            if !teacher.heads.iter().any(|h| &h.name == head) {
                return Err(invalid(format!(
                    "target `{target}` reads head `{head}`, which the teacher does not have"
                )));
            }
        }
        Ok(())
    }

    /// The part of the mapping `teacher` reads: the features it has and the targets whose head
    /// it has (a teacher trained without some source features or tasks).
    pub fn for_teacher(&self, teacher: &Manifest) -> Mapping {
        Mapping {
            features: self
                .features
                .iter()
                .filter(|(name, _)| teacher.feature(name).is_some())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            targets: self
                .targets
                .iter()
                .filter(|(_, head)| teacher.heads.iter().any(|h| &h.name == *head))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// A short stable digest of the mapping: labels made under another mapping are other labels.
    pub fn fingerprint(&self) -> String {
        format!("{:016x}", fnv1a64(self.to_toml().as_bytes()))
    }

    /// Columns of the examples the mapping reads, each once.
    pub fn columns(&self) -> Vec<&str> {
        let mut columns: Vec<&str> = self
            .features
            .values()
            .filter_map(|s| match s {
                Source::Column(c) => Some(c.as_str()),
                _ => None,
            })
            .collect();
        columns.sort();
        columns.dedup();
        columns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_kind_of_source() {
        let m: Mapping = toml::from_str(
            r#"
[features]
user_id = { column = "user_id" }
category = { constant = "music" }
video_id = { default = true }

[targets]
play = "click"
"#,
        )
        .unwrap();
        assert_eq!(m.features["user_id"], Source::Column("user_id".into()));
        assert_eq!(m.features["category"], Source::Constant(toml::Value::String("music".into())));
        assert_eq!(m.features["video_id"], Source::Default(true));
        assert_eq!(m.columns(), ["user_id"]);
        let back: Mapping = toml::from_str(&m.to_toml()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.fingerprint(), m.fingerprint());
        let mut other = m.clone();
        other.targets.insert("like".into(), "like".into());
        assert_ne!(other.fingerprint(), m.fingerprint());
        let err = toml::from_str::<Mapping>("[features]\nx = { colum = \"y\" }\n").unwrap_err().to_string();
        assert!(err.contains("colum"), "{err}");
    }
}
