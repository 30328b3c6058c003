//! The model manifest (`manifest.toml`): what a student needs from a request, what it answers, and
//! how its heads combine into one ranking score. Format: `docs/model-package.md`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::vocabulary::{self, Vocab, Vocabulary, VocabularyRule};

/// Everything the server needs to know about a model package besides its ONNX graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub model: ModelInfo,
    pub features: Vec<Feature>,
    pub heads: Vec<Head>,
    /// Default objective: head name → weight. Heads not named weigh 0.
    pub objective: BTreeMap<String, f64>,
    #[serde(default)]
    pub provenance: Provenance,
    #[serde(default)]
    pub golden: Golden,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_tower: Option<ItemTower>,
}

/// The part of the graph that depends on item features alone, named so that the server can
/// compute it once per catalog item instead of once per candidate of every request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemTower {
    /// The graph tensor, `[batch, width]` floats, that ends the item tower: computed from item
    /// inputs alone, and the only way the graph's outputs depend on item inputs.
    pub output: String,
    pub width: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// How context inputs are fed: one row per request, broadcast inside the graph (`once`), or
    /// the context row repeated for every candidate (`per_candidate`), for graphs that do not
    /// broadcast.
    #[serde(default)]
    pub context_rows: ContextRows,
    /// Declares that each candidate's outputs depend only on its own item features and the
    /// context (no operation across candidates, such as a softmax over the list). The server
    /// may then pad and split batches, which lets engines run precompiled fixed-size plans.
    #[serde(default)]
    pub independent_candidates: bool,
    /// A smaller model (by name, in the same models directory) that can stand in for this one
    /// when a request's latency budget cannot afford it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContextRows {
    #[default]
    Once,
    PerCandidate,
}

/// Whether a feature is sent once per request or once per candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Context,
    Item,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Context => "context",
            Side::Item => "item",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawFeature", into = "RawFeature")]
pub struct Feature {
    pub name: String,
    pub side: Side,
    /// The ONNX graph input this feature is written into. Several features may share an input:
    /// they are concatenated along its last axis in manifest order.
    pub input: String,
    pub kind: FeatureKind,
}

/// How a raw request value becomes tensor values.
#[derive(Debug, Clone, PartialEq)]
pub enum FeatureKind {
    /// A string or integer id, hashed into `buckets` or numbered by a vocabulary (row 0 is
    /// "missing or unknown" either way); the graph looks it up in an embedding table. Feeds an
    /// int64 input, one column.
    Categorical {
        /// Rows of the table. With a vocabulary, its size + 1 (0 while it is still to be built).
        buckets: u64,
        /// Value used when the request omits the feature; without one, row 0.
        default: Option<String>,
        /// Ids numbered by a vocabulary instead of hashed.
        vocabulary: Option<Vocab>,
    },
    /// A number, fed as `(x - mean) / std`. Feeds a float input, one column.
    Number {
        mean: f64,
        std: f64,
        /// Raw value used when the request omits the feature (normalised like any other).
        default: f64,
    },
    /// A fixed-length list of numbers, fed as is. Feeds a float input, `dim` columns.
    Vector {
        dim: usize,
        /// Used when the request omits the feature; zeros when absent.
        default: Option<Vec<f64>>,
    },
}

/// The TOML shape of a feature: one flat table whose `kind` says which keys apply.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeature {
    name: String,
    side: Side,
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    input: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    buckets: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mean: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    std: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dim: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    default: Option<toml::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vocabulary: Option<toml::Value>,
}

impl TryFrom<RawFeature> for Feature {
    type Error = String;

    fn try_from(raw: RawFeature) -> Result<Self, String> {
        let input = raw.input.clone().ok_or_else(|| format!("feature `{}`: missing `input`", raw.name))?;
        let column = FeatureColumn::try_from(raw)?;
        Ok(Feature { name: column.name, side: column.side, input, kind: column.kind })
    }
}

impl From<Feature> for RawFeature {
    fn from(f: Feature) -> RawFeature {
        let input = f.input.clone();
        let mut raw = RawFeature::from(FeatureColumn { name: f.name, side: f.side, kind: f.kind });
        raw.input = Some(input);
        raw
    }
}

/// A feature as a dataset declares it (`docs/data.md`): a column, its side and its kind, the same
/// kinds a manifest uses, without the ONNX input a model feeds it to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawFeature", into = "RawFeature")]
pub struct FeatureColumn {
    pub name: String,
    pub side: Side,
    pub kind: FeatureKind,
}

impl TryFrom<RawFeature> for FeatureColumn {
    type Error = String;

    fn try_from(raw: RawFeature) -> Result<Self, String> {
        let name = &raw.name;
        let only = |key: &str, present: bool, kind: &str| {
            if present {
                Err(format!("feature `{name}`: `{key}` does not apply to a {kind} feature"))
            } else {
                Ok(())
            }
        };
        let kind = match raw.kind.as_str() {
            "categorical" => {
                only("mean", raw.mean.is_some(), "categorical")?;
                only("std", raw.std.is_some(), "categorical")?;
                only("dim", raw.dim.is_some(), "categorical")?;
                let vocabulary = match raw.vocabulary {
                    None => None,
                    Some(toml::Value::String(file)) => Some(Vocab::File(vocabulary_file(name, file)?)),
                    Some(rule @ toml::Value::Table(_)) => {
                        let rule: VocabularyRule =
                            rule.try_into().map_err(|e| format!("feature `{name}`: vocabulary: {e}"))?;
                        rule.validate().map_err(|e| format!("feature `{name}`: {e}"))?;
                        Some(Vocab::Build(rule))
                    }
                    Some(other) => {
                        return Err(format!(
                            "feature `{name}`: vocabulary must be a file (a manifest's) or a table \
                             {{ min_count, max_size }} (a data spec's), not {}",
                            other.type_str()
                        ));
                    }
                };
                let buckets = match (&vocabulary, raw.buckets) {
                    (Some(Vocab::Build(_)), Some(_)) => {
                        return Err(format!(
                            "feature `{name}`: `buckets` follows from the vocabulary built (its size \
                             + 1); drop it"
                        ));
                    }
                    // Known once the file is read.
                    (Some(_), buckets) => buckets.unwrap_or(0),
                    (None, Some(buckets)) => buckets,
                    (None, None) => {
                        return Err(format!(
                            "feature `{name}`: a categorical feature needs `buckets` or a `vocabulary`"
                        ));
                    }
                };
                let default = match raw.default {
                    None => None,
                    Some(toml::Value::String(s)) => Some(s),
                    Some(toml::Value::Integer(i)) => Some(i.to_string()),
                    Some(other) => {
                        return Err(format!(
                            "feature `{name}`: default must be a string or an integer, not {}",
                            other.type_str()
                        ));
                    }
                };
                FeatureKind::Categorical { buckets, default, vocabulary }
            }
            "number" => {
                only("buckets", raw.buckets.is_some(), "number")?;
                only("vocabulary", raw.vocabulary.is_some(), "number")?;
                only("dim", raw.dim.is_some(), "number")?;
                let default = match raw.default {
                    None => 0.0,
                    Some(v) => toml_number(&v)
                        .ok_or_else(|| format!("feature `{name}`: default must be a number"))?,
                };
                FeatureKind::Number { mean: raw.mean.unwrap_or(0.0), std: raw.std.unwrap_or(1.0), default }
            }
            "vector" => {
                only("buckets", raw.buckets.is_some(), "vector")?;
                only("vocabulary", raw.vocabulary.is_some(), "vector")?;
                only("mean", raw.mean.is_some(), "vector")?;
                only("std", raw.std.is_some(), "vector")?;
                let dim = raw.dim.ok_or_else(|| format!("feature `{name}`: a vector feature needs `dim`"))?;
                let default = match raw.default {
                    None => None,
                    Some(toml::Value::Array(items)) => {
                        Some(
                            items.iter().map(toml_number).collect::<Option<Vec<f64>>>().ok_or_else(|| {
                                format!("feature `{name}`: default must be a list of numbers")
                            })?,
                        )
                    }
                    Some(_) => return Err(format!("feature `{name}`: default must be a list of numbers")),
                };
                FeatureKind::Vector { dim, default }
            }
            other => {
                return Err(format!(
                    "feature `{name}`: unknown kind `{other}` (expected categorical, number or vector)"
                ));
            }
        };
        Ok(FeatureColumn { name: raw.name, side: raw.side, kind })
    }
}

impl From<FeatureColumn> for RawFeature {
    fn from(f: FeatureColumn) -> RawFeature {
        let mut raw = RawFeature {
            name: f.name,
            side: f.side,
            kind: f.kind.name().to_string(),
            input: None,
            buckets: None,
            mean: None,
            std: None,
            dim: None,
            default: None,
            vocabulary: None,
        };
        match f.kind {
            FeatureKind::Categorical { buckets, default, vocabulary } => {
                raw.buckets = (buckets > 0).then_some(buckets);
                raw.default = default.map(toml::Value::String);
                raw.vocabulary = vocabulary.map(|v| match v {
                    Vocab::File(file) => toml::Value::String(file),
                    Vocab::Ids(ids) => toml::Value::String(ids.file().to_string()),
                    Vocab::Build(rule) => toml::Value::try_from(rule)
                        .expect("a vocabulary rule always serialises to TOML. This is a bug."),
                });
            }
            FeatureKind::Number { mean, std, default } => {
                raw.mean = Some(mean);
                raw.std = Some(std);
                raw.default = Some(toml::Value::Float(default));
            }
            FeatureKind::Vector { dim, default } => {
                raw.dim = Some(dim);
                raw.default =
                    default.map(|d| toml::Value::Array(d.into_iter().map(toml::Value::Float).collect()));
            }
        }
        raw
    }
}

/// A manifest's vocabulary file: `vocabularies/<name>`, inside the package.
fn vocabulary_file(feature: &str, file: String) -> Result<String, String> {
    match file.strip_prefix(vocabulary::DIR).and_then(|f| f.strip_prefix('/')) {
        Some(name) if vocabulary::nameable(name) => Ok(file),
        _ => Err(format!(
            "feature `{feature}`: vocabulary `{file}` must be a file of the package's `{}/` directory",
            vocabulary::DIR
        )),
    }
}

/// TOML writes `200` and `200.0` differently; a feature's numbers accept both.
fn toml_number(v: &toml::Value) -> Option<f64> {
    match v {
        toml::Value::Float(x) => Some(*x),
        toml::Value::Integer(i) => Some(*i as f64),
        _ => None,
    }
}

impl FeatureKind {
    /// Columns this feature takes in its input tensor.
    pub fn width(&self) -> usize {
        match self {
            FeatureKind::Categorical { .. } | FeatureKind::Number { .. } => 1,
            FeatureKind::Vector { dim, .. } => *dim,
        }
    }

    pub fn dtype(&self) -> DType {
        match self {
            FeatureKind::Categorical { .. } => DType::I64,
            FeatureKind::Number { .. } | FeatureKind::Vector { .. } => DType::F32,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            FeatureKind::Categorical { .. } => "categorical",
            FeatureKind::Number { .. } => "number",
            FeatureKind::Vector { .. } => "vector",
        }
    }
}

/// Element type of an ONNX input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    I64,
    F32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    pub name: String,
    pub kind: HeadKind,
    /// Serving heads are returned to callers and may carry objective weight; others (auxiliary,
    /// monitoring) are computed by the graph but never answered.
    #[serde(default = "yes")]
    pub serving: bool,
    /// The ONNX output holding this head, shaped `[rows]` or `[rows, k]`.
    pub output: String,
    /// Column of a `[rows, k]` output.
    #[serde(default)]
    pub column: usize,
    /// What the server applies to the output to get the head's value: `none` when the graph
    /// already yields a probability (binary) or the value itself (regression), `sigmoid` when a
    /// binary head's output is a logit.
    #[serde(default)]
    pub transform: Transform,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadKind {
    Binary,
    Regression,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    #[default]
    None,
    Sigmoid,
}

/// Where a model came from: enough to reproduce it and to judge it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub trained_by: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub teacher: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub data_window: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub created_at: String,
    /// Offline metrics by name, e.g. `play_auc = 0.79`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
    /// Anything else worth keeping (distillation config, seeds, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub notes: BTreeMap<String, String>,
}

/// Golden examples: requests with the head values the model must reproduce when loaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Golden {
    /// Allowed absolute difference per head value (plus the same, relative).
    #[serde(default = "default_tolerance")]
    pub tolerance: f64,
    #[serde(default)]
    pub examples: Vec<GoldenExample>,
}

impl Default for Golden {
    fn default() -> Self {
        Golden { tolerance: default_tolerance(), examples: Vec::new() }
    }
}

fn default_tolerance() -> f64 {
    1e-4
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenExample {
    #[serde(default)]
    pub context: BTreeMap<String, toml::Value>,
    pub candidates: Vec<GoldenCandidate>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenCandidate {
    pub id: String,
    #[serde(default)]
    pub features: BTreeMap<String, toml::Value>,
    /// Head name → expected value (after the head's transform).
    pub expected: BTreeMap<String, f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(transparent)]
    File(#[from] crate::toml_file::TomlFileError),
    #[error("manifest of {model}: {problem}")]
    Invalid { model: String, problem: String },
}

impl Manifest {
    /// Reads a manifest and the vocabularies it names (beside it, in the package).
    pub fn from_path(path: &Path) -> Result<Manifest, ManifestError> {
        let mut manifest: Manifest = crate::toml_file::read(path)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        manifest.read_vocabularies(dir)?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Reads every vocabulary named but not read yet from the package directory `dir`, and
    /// sets its feature's `buckets` when the manifest left it out.
    pub fn read_vocabularies(&mut self, dir: &Path) -> Result<(), ManifestError> {
        let model = self.id();
        for f in &mut self.features {
            if let FeatureKind::Categorical { buckets, vocabulary: Some(v), .. } = &mut f.kind
                && let Vocab::File(file) = v
            {
                let read = Vocabulary::read(dir, file).map_err(|problem| ManifestError::Invalid {
                    model: model.clone(),
                    problem: format!("feature `{}`: {problem}", f.name),
                })?;
                if *buckets == 0 {
                    *buckets = read.buckets();
                }
                *v = Vocab::Ids(std::sync::Arc::new(read));
            }
        }
        Ok(())
    }

    /// The vocabularies the package stores, by feature.
    pub fn vocabularies(&self) -> impl Iterator<Item = (&str, &Vocabulary)> {
        self.features.iter().filter_map(|f| match &f.kind {
            FeatureKind::Categorical { vocabulary: Some(Vocab::Ids(v)), .. } => Some((f.name.as_str(), &**v)),
            _ => None,
        })
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a manifest always serialises to TOML. This is a bug.")
    }

    /// Checks what the types cannot: unique names, consistent inputs, known objective heads.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let invalid = |problem: String| ManifestError::Invalid {
            model: format!("{}/{}", self.model.name, self.model.version),
            problem,
        };
        if self.model.name.is_empty() || self.model.version.is_empty() {
            return Err(invalid("model name and version must not be empty".into()));
        }
        for part in [&self.model.name, &self.model.version] {
            if part.contains(['/', '\\']) || part.starts_with('.') {
                return Err(invalid(format!(
                    "`{part}` cannot be a directory name (no slashes, no leading dot)"
                )));
            }
        }
        if let Some(f) = &self.model.fallback
            && (f == &self.model.name || f.is_empty() || f.contains(['/', '\\']) || f.starts_with('.'))
        {
            return Err(invalid(format!("fallback `{f}` must name another model of the models directory")));
        }
        if self.features.is_empty() {
            return Err(invalid("declares no features".into()));
        }
        let mut seen = std::collections::HashSet::new();
        let mut inputs: BTreeMap<&str, (Side, DType, &str)> = BTreeMap::new();
        for f in &self.features {
            if !seen.insert(f.name.as_str()) {
                return Err(invalid(format!("feature `{}` is declared twice", f.name)));
            }
            match &f.kind {
                FeatureKind::Categorical { vocabulary: Some(Vocab::File(file)), .. } => {
                    return Err(invalid(format!(
                        "feature `{}`: vocabulary `{file}` was named but not read (read the manifest \
                         with Manifest::from_path). This is a bug.",
                        f.name
                    )));
                }
                FeatureKind::Categorical { vocabulary: Some(Vocab::Build(_)), .. } => {
                    return Err(invalid(format!(
                        "feature `{}`: a manifest's vocabulary is a file of the package \
                         (`vocabularies/{0}.txt`); a rule to build one belongs in a data spec",
                        f.name
                    )));
                }
                FeatureKind::Categorical { vocabulary: Some(Vocab::Ids(v)), buckets, .. }
                    if *buckets != v.buckets() =>
                {
                    return Err(invalid(format!(
                        "feature `{}`: buckets = {buckets}, but vocabulary `{}` holds {} ids (the \
                         table has one row per id and row 0, so buckets = {})",
                        f.name,
                        v.file(),
                        v.len(),
                        v.buckets()
                    )));
                }
                FeatureKind::Categorical { buckets, .. } if *buckets < 2 => {
                    return Err(invalid(format!(
                        "feature `{}`: a categorical feature needs at least 2 buckets \
                         (bucket 0 is reserved for missing values)",
                        f.name
                    )));
                }
                FeatureKind::Number { mean, std, default }
                    if !(std.is_finite() && *std > 0.0 && mean.is_finite() && default.is_finite()) =>
                {
                    return Err(invalid(format!(
                        "feature `{}`: mean and default must be finite, std finite and > 0",
                        f.name
                    )));
                }
                FeatureKind::Vector { dim: 0, .. } => {
                    return Err(invalid(format!("feature `{}`: dim must be > 0", f.name)));
                }
                FeatureKind::Vector { dim, default: Some(d) }
                    if d.len() != *dim || d.iter().any(|x| !x.is_finite()) =>
                {
                    return Err(invalid(format!(
                        "feature `{}`: default must be {dim} finite numbers",
                        f.name
                    )));
                }
                _ => {}
            }
            let entry = inputs.entry(f.input.as_str()).or_insert((f.side, f.kind.dtype(), &f.name));
            if entry.0 != f.side || entry.1 != f.kind.dtype() {
                return Err(invalid(format!(
                    "features `{}` and `{}` share input `{}` but differ in side or element type \
                     (categorical features feed int64 inputs, numbers and vectors float inputs)",
                    entry.2, f.name, f.input
                )));
            }
        }
        if self.heads.is_empty() {
            return Err(invalid("declares no heads".into()));
        }
        let mut head_names = std::collections::HashSet::new();
        for h in &self.heads {
            if !head_names.insert(h.name.as_str()) {
                return Err(invalid(format!("head `{}` is declared twice", h.name)));
            }
            if h.kind == HeadKind::Regression && h.transform == Transform::Sigmoid {
                return Err(invalid(format!(
                    "head `{}`: a regression head cannot take the sigmoid transform",
                    h.name
                )));
            }
        }
        for (name, weight) in &self.objective {
            match self.heads.iter().find(|h| &h.name == name) {
                None => return Err(invalid(format!("objective names unknown head `{name}`"))),
                Some(h) if !h.serving => {
                    return Err(invalid(format!(
                        "objective weighs head `{name}`, which is not a serving head"
                    )));
                }
                _ if !weight.is_finite() => {
                    return Err(invalid(format!("objective weight of `{name}` is not finite")));
                }
                _ => {}
            }
        }
        if let Some(tower) = &self.item_tower {
            if tower.output.is_empty() || tower.width == 0 {
                return Err(invalid(
                    "item_tower needs the `output` tensor it ends at and its `width` > 0".into(),
                ));
            }
            if !self.features.iter().any(|f| f.side == Side::Item) {
                return Err(invalid("item_tower is declared, but no feature is an item feature".into()));
            }
        }
        if !(self.golden.tolerance.is_finite() && self.golden.tolerance >= 0.0) {
            return Err(invalid("golden tolerance must be a finite number >= 0".into()));
        }
        Ok(())
    }

    pub fn feature(&self, name: &str) -> Option<&Feature> {
        self.features.iter().find(|f| f.name == name)
    }

    /// `name/version`, for messages.
    pub fn id(&self) -> String {
        format!("{}/{}", self.model.name, self.model.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[model]
name = "m"
version = "1"

[[features]]
name = "user_id"
side = "context"
kind = "categorical"
buckets = 100
input = "ctx_ids"

[[features]]
name = "duration_s"
side = "item"
kind = "number"
mean = 200.0
std = 50.0
input = "item_dense"

[[heads]]
name = "play"
kind = "binary"
output = "play"

[objective]
play = 1.0
"#;

    #[test]
    fn minimal_manifest_parses_with_defaults() {
        let m: Manifest = toml::from_str(MINIMAL).unwrap();
        m.validate().unwrap();
        assert_eq!(m.model.context_rows, ContextRows::Once);
        assert!(m.heads[0].serving);
        assert_eq!(m.heads[0].transform, Transform::None);
        assert_eq!(m.golden.tolerance, 1e-4);
        match &m.features[1].kind {
            FeatureKind::Number { mean, std, default } => {
                assert_eq!((*mean, *std, *default), (200.0, 50.0, 0.0))
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn round_trips_through_toml() {
        let m: Manifest = toml::from_str(MINIMAL).unwrap();
        let back: Manifest = toml::from_str(&m.to_toml()).unwrap();
        assert_eq!(m, back);
    }

    fn invalid(patch: impl FnOnce(&mut Manifest)) -> String {
        let mut m: Manifest = toml::from_str(MINIMAL).unwrap();
        patch(&mut m);
        m.validate().unwrap_err().to_string()
    }

    #[test]
    fn rejects_inconsistent_manifests_naming_the_culprit() {
        let e = invalid(|m| m.objective.insert("like".into(), 1.0).map(|_| ()).unwrap_or(()));
        assert!(e.contains("unknown head `like`"), "{e}");
        let e = invalid(|m| m.features[1].input = "ctx_ids".into());
        assert!(e.contains("share input `ctx_ids`"), "{e}");
        let e = invalid(|m| {
            m.features[0].kind = FeatureKind::Categorical { buckets: 1, default: None, vocabulary: None }
        });
        assert!(e.contains("`user_id`") && e.contains("2 buckets"), "{e}");
        let e = invalid(|m| m.heads[0].serving = false);
        assert!(e.contains("not a serving head"), "{e}");
        let e = invalid(|m| m.features.push(m.features[0].clone()));
        assert!(e.contains("declared twice"), "{e}");
        let e = invalid(|m| m.model.version = "../x".into());
        assert!(e.contains("directory name"), "{e}");
    }

    #[test]
    fn a_vocabulary_is_a_package_file_in_a_manifest_and_a_rule_in_a_data_spec() {
        let named = MINIMAL.replace("buckets = 100", "vocabulary = \"vocabularies/user_id.txt\"");
        let m: Manifest = toml::from_str(&named).unwrap();
        let FeatureKind::Categorical { buckets: 0, vocabulary: Some(Vocab::File(f)), .. } =
            &m.features[0].kind
        else {
            panic!("{:?}", m.features[0].kind)
        };
        assert_eq!(f, "vocabularies/user_id.txt");
        // Parsed alone, it is not read yet: validation says so rather than encoding ids to row 0.
        assert!(m.validate().unwrap_err().to_string().contains("named but not read"));
        for outside in ["../user_id.txt", "vocabularies/../x.txt", "vocabularies/.hidden", "user_id.txt"] {
            let text = MINIMAL.replace("buckets = 100", &format!("vocabulary = \"{outside}\""));
            let e = toml::from_str::<Manifest>(&text).unwrap_err().to_string();
            assert!(
                e.contains("must be a file of the package's `vocabularies/` directory"),
                "{outside}: {e}"
            );
        }

        let rule = "[[features]]\nname = \"user_id\"\nside = \"context\"\nkind = \"categorical\"\n\
                    vocabulary = { min_count = 3 }\n";
        #[derive(Deserialize)]
        struct Spec {
            features: Vec<FeatureColumn>,
        }
        let spec: Spec = toml::from_str(rule).unwrap();
        assert_eq!(
            spec.features[0].kind,
            FeatureKind::Categorical {
                buckets: 0,
                default: None,
                vocabulary: Some(Vocab::Build(VocabularyRule { min_count: 3, max_size: None }))
            }
        );
        let back: Spec =
            toml::from_str(&toml::to_string(&RawFeatures { features: spec.features }).unwrap()).unwrap();
        assert!(matches!(
            back.features[0].kind,
            FeatureKind::Categorical { vocabulary: Some(Vocab::Build(_)), .. }
        ));
        let e = toml::from_str::<Spec>(&rule.replace("{ min_count = 3 }", "{ min_count = 3 }\nbuckets = 9"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("`buckets` follows from the vocabulary"), "{e}");
        let e = toml::from_str::<Spec>(&rule.replace("min_count = 3", "min_count = 0"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("min_count must be at least 1"), "{e}");
        let e =
            toml::from_str::<Spec>(&rule.replace("min_count = 3", "min_cnt = 3")).err().unwrap().to_string();
        assert!(e.contains("min_cnt"), "{e}");

        #[derive(Serialize)]
        struct RawFeatures {
            features: Vec<FeatureColumn>,
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let text = MINIMAL.replace("buckets = 100", "buckets = 100\nbukets = 3");
        let err = toml::from_str::<Manifest>(&text).unwrap_err().to_string();
        assert!(err.contains("bukets"), "{err}");
    }
}
