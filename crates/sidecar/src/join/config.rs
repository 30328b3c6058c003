//! The join's config file (`join.toml`): which feature spec the examples are written in, the
//! attribution window, and the events behind each task's label.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::spec::{DataSpec, Task};
use retort_model::manifest::HeadKind;

/// Columns the join writes besides the spec's: a spec may not use these names.
pub const OWN_COLUMNS: &[&str] = &["position", "served_model", "served_version", "sample_rate", "score"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinConfig {
    /// The feature spec whose key and feature columns the examples have (its tasks are
    /// replaced by this file's); relative to the config file.
    pub spec: PathBuf,
    /// How long after an impression its feedback counts, in seconds (by the time the server
    /// received it).
    #[serde(default = "default_window_secs")]
    pub window_secs: u64,
    /// How long a received event may take to land in a complete feedback partition, in
    /// seconds: a partition is joined `window_secs + lag_secs` after its last impression. At
    /// least the servers' `impression_rotate_secs`.
    #[serde(default = "default_lag_secs")]
    pub lag_secs: u64,
    pub tasks: Vec<JoinTask>,
}

fn default_window_secs() -> u64 {
    1800
}

fn default_lag_secs() -> u64 {
    120
}

/// A task and the event types that make its label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinTask {
    pub name: String,
    /// `binary`: 1 when any of its events came within the window, else 0. `regression`: the
    /// sum of their values (an event without a value counts 1), 0 without any.
    pub kind: HeadKind,
    pub events: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] retort_model::toml_file::TomlFileError),
    #[error(transparent)]
    Spec(#[from] crate::data::spec::SpecError),
    #[error("{path}: {problem}")]
    Invalid { path: String, problem: String },
}

/// A config read and checked, with the spec it names.
#[derive(Debug, Clone)]
pub struct Join {
    pub config: JoinConfig,
    /// The spec the examples are written in: the named spec's columns and features, the
    /// config's tasks.
    pub spec: DataSpec,
}

impl Join {
    pub fn from_path(path: &Path) -> Result<Join, ConfigError> {
        let config: JoinConfig = retort_model::toml_file::read(path)?;
        let spec_path = path.parent().unwrap_or(Path::new(".")).join(&config.spec);
        let named = DataSpec::from_path(&spec_path)?;
        Join::new(config, named)
            .map_err(|problem| ConfigError::Invalid { path: path.display().to_string(), problem })
    }

    pub fn new(config: JoinConfig, named: DataSpec) -> Result<Join, String> {
        if config.tasks.is_empty() {
            return Err("no [[tasks]]: a join needs at least one task to label".into());
        }
        if config.window_secs == 0 {
            return Err("window_secs is 0: no event could count".into());
        }
        let mut events = std::collections::HashMap::new();
        for task in &config.tasks {
            if task.events.is_empty() {
                return Err(format!("task `{}` names no events", task.name));
            }
            for event in &task.events {
                // One event may make the labels of several tasks, but each once.
                if events.insert(event.as_str(), task.name.as_str()) == Some(task.name.as_str()) {
                    return Err(format!("task `{}` names event `{event}` twice", task.name));
                }
            }
        }
        let columns = [&named.columns.example_id, &named.columns.request_id, &named.columns.ts];
        let used = columns
            .into_iter()
            .chain(named.features.iter().map(|f| &f.name))
            .chain(config.tasks.iter().map(|t| &t.name));
        let taken = used.into_iter().find(|c| OWN_COLUMNS.contains(&c.as_str())).cloned();
        if let Some(taken) = taken {
            return Err(format!(
                "column `{taken}` is one the join writes itself ({}); rename it in the spec or the tasks",
                OWN_COLUMNS.join(", ")
            ));
        }
        let spec = DataSpec {
            columns: named.columns.clone(),
            features: named.features.clone(),
            tasks: config
                .tasks
                .iter()
                .map(|t| Task { name: t.name.clone(), kind: t.kind, column: None, truth: None })
                .collect(),
        };
        spec.validate()?;
        Ok(Join { config, spec })
    }

    pub fn window_ms(&self) -> i64 {
        (self.config.window_secs as i64).saturating_mul(1000)
    }

    pub fn lag_ms(&self) -> i64 {
        (self.config.lag_secs as i64).saturating_mul(1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> DataSpec {
        toml::from_str(
            r#"
[[features]]
name = "user_id"
side = "context"
kind = "categorical"
buckets = 100

[[tasks]]
name = "old"
kind = "binary"
"#,
        )
        .unwrap()
    }

    fn config(text: &str) -> JoinConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn the_examples_spec_has_the_named_features_and_the_joins_tasks() {
        let c = config(
            r#"
spec = "features.toml"
[[tasks]]
name = "play"
kind = "binary"
events = ["play", "complete"]
"#,
        );
        let join = Join::new(c, spec()).unwrap();
        assert_eq!(join.config.window_secs, 1800);
        assert_eq!(join.lag_ms(), 120_000);
        assert_eq!(join.spec.features[0].name, "user_id");
        assert_eq!(join.spec.tasks.len(), 1);
        assert_eq!(join.spec.tasks[0].name, "play");
        assert!(join.spec.tasks[0].truth.is_none());
    }

    #[test]
    fn bad_configs_are_refused_naming_the_problem() {
        let cases = [
            ("spec = \"f\"\ntasks = []", "no [[tasks]]"),
            (
                "spec = \"f\"\nwindow_secs = 0\n[[tasks]]\nname = \"p\"\nkind = \"binary\"\nevents = [\"a\"]",
                "window_secs",
            ),
            (
                "spec = \"f\"\n[[tasks]]\nname = \"p\"\nkind = \"binary\"\nevents = []",
                "task `p` names no events",
            ),
            (
                "spec = \"f\"\n[[tasks]]\nname = \"p\"\nkind = \"binary\"\nevents = [\"a\", \"a\"]",
                "event `a` twice",
            ),
            (
                "spec = \"f\"\n[[tasks]]\nname = \"position\"\nkind = \"binary\"\nevents = [\"a\"]",
                "`position`",
            ),
            ("spec = \"f\"\n[[tasks]]\nname = \"user_id\"\nkind = \"binary\"\nevents = [\"a\"]", "`user_id`"),
        ];
        for (text, wanted) in cases {
            let err = Join::new(config(text), spec()).unwrap_err();
            assert!(err.contains(wanted), "{text}: {err}");
        }
    }
}
