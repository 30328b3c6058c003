//! The feature spec of a dataset (`features.toml`): which columns identify an example, which are
//! context or item features of which kind, and which are task labels. Format: `docs/data.md`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use retort_model::manifest::{Feature, FeatureColumn, HeadKind, Side};
use retort_model::two_tower::{HeadSpec, Layers, TwoTower};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    #[serde(default)]
    pub columns: KeyColumns,
    pub features: Vec<FeatureColumn>,
    #[serde(default)]
    pub tasks: Vec<Task>,
}

/// The columns every example has, by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeyColumns {
    /// Unique per example (string or integer).
    pub example_id: String,
    /// Groups the candidates shown in one request (string or integer).
    pub request_id: String,
    /// Event time, integer seconds since the Unix epoch.
    pub ts: String,
    /// Who the request was for (string or integer; often also a context feature): optional,
    /// it lets `retort distill` report the users with no training rows apart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl Default for KeyColumns {
    fn default() -> Self {
        KeyColumns {
            example_id: "example_id".into(),
            request_id: "request_id".into(),
            ts: "ts".into(),
            user: None,
        }
    }
}

/// A task: a label column, binary (0/1) or regression (a real value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    pub name: String,
    pub kind: HeadKind,
    /// The label column; defaults to the task's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// A column with the true probability (or expected value) behind the label, where the data
    /// comes from a simulation that knows it (the demo world).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truth: Option<String>,
}

impl Task {
    pub fn column(&self) -> &str {
        self.column.as_deref().unwrap_or(&self.name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error(transparent)]
    File(#[from] retort_model::toml_file::TomlFileError),
    #[error("{path}: {problem}")]
    Invalid { path: String, problem: String },
}

impl DataSpec {
    pub fn from_path(path: &Path) -> Result<DataSpec, SpecError> {
        let spec: DataSpec = retort_model::toml_file::read(path)?;
        spec.validate()
            .map_err(|problem| SpecError::Invalid { path: path.display().to_string(), problem })?;
        Ok(spec)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a data spec always serialises to TOML. This is a bug.")
    }

    /// Every column is used once: no feature, task or key column shares a name (the user column
    /// may be a feature's, never another key's or a task's).
    pub fn validate(&self) -> Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        let keys = [&self.columns.example_id, &self.columns.request_id, &self.columns.ts];
        let features = self.features.iter().map(|f| &f.name);
        let tasks = self
            .tasks
            .iter()
            .flat_map(|t| std::iter::once(t.column.as_ref().unwrap_or(&t.name)).chain(t.truth.as_ref()));
        for column in keys.into_iter().chain(tasks.clone()).chain(features) {
            if !seen.insert(column.as_str()) {
                return Err(format!("column `{column}` is declared twice"));
            }
        }
        if let Some(user) = &self.columns.user {
            let keys = [&self.columns.example_id, &self.columns.request_id, &self.columns.ts];
            if keys.into_iter().chain(tasks).any(|c| c == user) {
                return Err(format!(
                    "column `{user}` is declared twice: the user column is a key or task column too"
                ));
            }
        }
        Ok(())
    }

    pub fn features_on(&self, side: Side) -> impl Iterator<Item = &FeatureColumn> {
        self.features.iter().filter(move |f| f.side == side)
    }

    pub fn task(&self, name: &str) -> Option<&Task> {
        self.tasks.iter().find(|t| t.name == name)
    }

    /// The two-tower architecture over these features with default layer sizes, one task tower
    /// and serving head per task; binary heads output logits when `logit_outputs` (teachers).
    pub fn two_tower(&self, logit_outputs: bool) -> TwoTower {
        let features = self
            .features
            .iter()
            .map(|f| Feature {
                name: f.name.clone(),
                side: f.side,
                input: TwoTower::input_for(f.side, &f.kind).to_string(),
                kind: f.kind.clone(),
            })
            .collect();
        let heads =
            self.tasks.iter().enumerate().map(|(i, t)| HeadSpec::serving(&t.name, t.kind, i)).collect();
        TwoTower::new(features, Layers::default(), heads, logit_outputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_default_key_columns_and_rejects_reuse() {
        let text = r#"
[[features]]
name = "user_id"
side = "context"
kind = "categorical"
buckets = 100

[[tasks]]
name = "play"
kind = "binary"
truth = "p_play"
"#;
        let spec: DataSpec = toml::from_str(text).unwrap();
        spec.validate().unwrap();
        assert_eq!(spec.columns.example_id, "example_id");
        assert_eq!(spec.tasks[0].column(), "play");
        let back: DataSpec = toml::from_str(&spec.to_toml()).unwrap();
        assert_eq!(back, spec);

        let mut bad = spec.clone();
        bad.tasks[0].truth = Some("user_id".into());
        assert!(bad.validate().unwrap_err().contains("`user_id`"));

        // The user column may be a feature's, never a key's or a task's.
        let mut by_user = spec.clone();
        by_user.columns.user = Some("user_id".into());
        by_user.validate().unwrap();
        let back: DataSpec = toml::from_str(&by_user.to_toml()).unwrap();
        assert_eq!(back.columns.user.as_deref(), Some("user_id"));
        for taken in ["ts", "play", "p_play"] {
            by_user.columns.user = Some(taken.into());
            let err = by_user.validate().unwrap_err();
            assert!(err.contains(&format!("`{taken}`")) && err.contains("user column"), "{err}");
        }
    }
}
