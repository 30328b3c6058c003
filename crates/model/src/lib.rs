//! retort's model package (`<name>/<version>/{model.onnx, manifest.toml}`) and everything that
//! turns a request into head values: the request's wire format, manifest, encoder, engines, and
//! the ONNX writer students are exported with.
//!
//! This crate is the only contract between the distillation sidecar, which writes packages, and
//! the server, which serves them: it depends on neither an HTTP stack nor a trainer.
//!
//! # Layout
//! - [`request`]: the JSON body of `POST /v1/rank`, decoded without copying strings.
//! - [`manifest`]: the `manifest.toml` format and its validation.
//! - [`encode`]: request features → input tensors (context once, candidates as one batch).
//! - [`vocabulary`]: a categorical feature's ids numbered by a vocabulary, beside hashing.
//! - [`engine`]: the `Engine` trait and the tract / ort engines.
//! - [`onnx`]: a small ONNX graph writer.
//! - [`two_tower`]: the student architecture retort exports, with a reference forward pass.
//! - [`package`]: finding, reading and atomically writing packages.
//! - [`catalog`]: item features by item id, and catalog packages on disk.
//! - [`ids`]: distinct ids in one string arena with the index that finds their rows (catalogs,
//!   vocabularies).
//! - [`item_tower`]: serving a model as its item tower and its ranker, the tower's outputs
//!   computed once per catalog item.
//! - [`scaffold`]: the seeded-random default model shipped in `models/`.
//! - [`toml_file`]: reading TOML files with errors that name them.
//! - [`timestamp`]: UTC times as text, written and parsed.
//! - [`rng`]: the seeded generator behind reproducible weights and test data.

use std::path::{Path, PathBuf};

pub mod catalog;
pub mod encode;
pub mod engine;
mod ids;
pub mod item_tower;
pub mod manifest;
pub mod onnx;
pub mod package;
pub mod request;
pub mod rng;
pub mod scaffold;
pub mod timestamp;
pub mod toml_file;
pub mod two_tower;
pub mod vocabulary;

use encode::{EncodeError, Encoded, Encoder, FeatureSource, Location, Towered};
use engine::{Engine, EngineError, EngineKind, GraphIo, Output};
use item_tower::{ItemVectors, Tower};
use manifest::{ContextRows, GoldenExample, HeadKind, Manifest, ManifestError, Transform};

/// A loaded, validated model: manifest, encoder and engine. Immutable; shared across threads.
pub struct Model {
    pub manifest: Manifest,
    /// Where the package was loaded from.
    pub dir: PathBuf,
    encoder: Encoder,
    /// The whole graph. A model served with its item tower apart still runs it for an encoding
    /// without any known tower output (every candidate carrying its features): one run, not two.
    engine: Box<dyn Engine>,
    /// The two parts, for a model served with its item tower apart.
    tower: Option<Tower>,
    /// Distinct graph outputs the heads read, in the order the engine returns them.
    outputs: Vec<String>,
    heads: Vec<HeadPlan>,
    default_objective: Vec<f32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scale {
    Value,
    Logit,
}

#[derive(Debug, Clone)]
struct HeadPlan {
    output: usize,
    column: usize,
    transform: Transform,
}

/// Head values for a batch of candidates, laid out head-major: all rows of head 0, then head 1.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadValues {
    pub rows: usize,
    pub values: Vec<f32>,
}

impl HeadValues {
    pub fn head(&self, head: usize) -> &[f32] {
        &self.values[head * self.rows..(head + 1) * self.rows]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{dir} holds the manifest of {declared}; a package lives in <name>/<version>/")]
    Misplaced { dir: String, declared: String },
    #[error("{model}: golden example {example}: {problem}")]
    Golden { model: String, example: usize, problem: String },
}

/// A failure while running a validated request through the model: the model's fault, not the
/// caller's.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("output `{output}` has shape {shape:?}; head `{head}` needs [{rows}] or [{rows}, >{column}]")]
    OutputShape { output: String, head: String, shape: Vec<usize>, rows: usize, column: usize },
    #[error("head `{head}` is not finite for candidate {candidate}")]
    NonFinite { head: String, candidate: usize },
}

/// A bad objective in a request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ObjectiveError {
    #[error("objective names unknown head `{0}`")]
    UnknownHead(String),
    #[error("objective weighs head `{0}`, which is not a serving head")]
    NotServing(String),
    #[error("objective weight of head `{0}` is not a finite 32-bit number (at most about 3.4e38)")]
    NonFinite(String),
    #[error(
        "objective weight of head `{head}` makes candidate {candidate}'s combined score overflow; use smaller weights"
    )]
    Overflow { head: String, candidate: usize },
}

/// A failure scoring candidates whole ([`Model::score`]), by the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error(transparent)]
    Objective(#[from] ObjectiveError),
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error(transparent)]
    Infer(#[from] InferError),
}

/// The catalog a model reads candidates' items from, with the item-tower outputs of its items
/// when the model has an item tower and they were computed for this catalog.
#[derive(Clone, Copy)]
pub struct ItemSource<'a> {
    pub catalog: &'a catalog::Catalog,
    pub vectors: Option<&'a ItemVectors>,
}

impl<'a> ItemSource<'a> {
    /// The catalog alone: every candidate's item inputs encoded from it.
    pub fn catalog(catalog: &'a catalog::Catalog) -> ItemSource<'a> {
        ItemSource { catalog, vectors: None }
    }
}

/// Candidates scored whole: every head's values, the combined score, and the engine's time.
#[derive(Debug, Clone)]
pub struct Scored {
    pub values: HeadValues,
    pub scores: Vec<f32>,
    /// Time in [`Model::infer`] alone.
    pub inference: std::time::Duration,
}

/// Inference runs started through [`Model::delay_inference`]'s engine wrapper since the process started
/// (test hooks only).
#[cfg(feature = "test-hooks")]
pub static DELAYED_RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How long a slowed model sleeps before each run (test hooks only).
#[cfg(feature = "test-hooks")]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct InferenceDelay {
    pub fixed: std::time::Duration,
    pub per_candidate: std::time::Duration,
}

/// An engine that sleeps before each run: integration tests of budgets and cancellation need a
/// model slower than any real one (test hooks only).
#[cfg(feature = "test-hooks")]
struct Delayed {
    inner: Box<dyn Engine>,
    delay: InferenceDelay,
}

#[cfg(feature = "test-hooks")]
impl Engine for Delayed {
    fn kind(&self) -> EngineKind {
        self.inner.kind()
    }

    fn run(&self, inputs: Vec<encode::Tensor>) -> Result<Vec<Output>, EngineError> {
        let rows = inputs.iter().map(|t| t.shape[0]).max().unwrap_or(0) as u32;
        // Counted as it starts, so a test can tell that the one thread is now busy.
        DELAYED_RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::thread::sleep(self.delay.fixed + self.delay.per_candidate * rows);
        self.inner.run(inputs)
    }
}

impl Model {
    /// Makes every inference sleep first (test hooks only).
    #[cfg(feature = "test-hooks")]
    pub fn delay_inference(&mut self, delay: InferenceDelay) {
        fn slow(engine: &mut Box<dyn Engine>, delay: InferenceDelay) {
            let inner = std::mem::replace(engine, Box::new(Nothing));
            *engine = Box::new(Delayed { inner, delay });
        }
        slow(&mut self.engine, delay);
        if let Some(tower) = &mut self.tower {
            slow(&mut tower.ranker, delay);
        }
    }

    /// Loads the package in `dir`, and checks that it reproduces its golden examples. A model
    /// whose manifest names its item tower is served in two parts cut there.
    pub fn load(dir: &Path, engine: EngineKind) -> Result<Model, LoadError> {
        Model::load_with(dir, engine, None)
    }

    /// Loads a package to run on rows that each carry their own context (labelling, evaluation):
    /// context inputs take one row per example instead of one per request, and the graph runs
    /// whole.
    pub fn load_per_row(dir: &Path, engine: EngineKind) -> Result<Model, LoadError> {
        Model::load_with(dir, engine, Some(ContextRows::PerCandidate))
    }

    fn load_with(
        dir: &Path,
        engine: EngineKind,
        context_rows: Option<ContextRows>,
    ) -> Result<Model, LoadError> {
        let mut manifest = Manifest::from_path(&dir.join(package::MANIFEST))?;
        let version = dir.file_name().and_then(|v| v.to_str());
        let name = dir.parent().and_then(Path::file_name).and_then(|n| n.to_str());
        if (name, version) != (Some(&manifest.model.name[..]), Some(&manifest.model.version[..])) {
            return Err(LoadError::Misplaced { dir: dir.display().to_string(), declared: manifest.id() });
        }
        if let Some(rows) = context_rows {
            manifest.model.context_rows = rows;
            // Rows with their own context run the graph whole: no catalog, no tower apart.
            manifest.item_tower = None;
        }
        let graph_path = dir.join(package::GRAPH);
        let graph = std::fs::read(&graph_path)
            .map_err(|source| LoadError::Read { path: graph_path.display().to_string(), source })?;
        let model = Model::from_parts(manifest, &graph, &graph_path, engine)?;
        model.check_golden()?;
        Ok(Model { dir: dir.to_path_buf(), ..model })
    }

    /// Builds a model from a validated manifest and graph bytes, without the golden check (which
    /// [`Model::load`] adds); `origin` names the graph in errors.
    pub fn from_parts(
        manifest: Manifest,
        graph: &[u8],
        origin: &Path,
        kind: EngineKind,
    ) -> Result<Model, LoadError> {
        manifest.validate()?;
        let encoder = Encoder::new(&manifest);
        let mut outputs: Vec<String> = Vec::new();
        let heads = manifest
            .heads
            .iter()
            .map(|h| {
                let output = outputs.iter().position(|o| *o == h.output).unwrap_or_else(|| {
                    outputs.push(h.output.clone());
                    outputs.len() - 1
                });
                HeadPlan { output, column: h.column, transform: h.transform }
            })
            .collect();
        let io = GraphIo {
            inputs: encoder.inputs(),
            context_once: encoder.context_rows() == ContextRows::Once,
            candidates_independent: manifest.model.independent_candidates,
            outputs: &outputs,
        };
        let engine = engine::load(kind, graph, origin, &io)?;
        let tower = match &manifest.item_tower {
            None => None,
            Some(spec) => Some(Tower::load(&manifest, spec, &encoder, graph, origin, kind, &outputs)?),
        };
        let default_objective = manifest
            .heads
            .iter()
            .map(|h| manifest.objective.get(&h.name).copied().unwrap_or(0.0) as f32)
            .collect();
        Ok(Model {
            dir: origin.parent().map(Path::to_path_buf).unwrap_or_default(),
            manifest,
            encoder,
            engine,
            tower,
            outputs,
            heads,
            default_objective,
        })
    }

    /// The item tower, for a model served with it apart.
    pub fn tower(&self) -> Option<&Tower> {
        self.tower.as_ref()
    }

    pub fn name(&self) -> &str {
        &self.manifest.model.name
    }

    pub fn version(&self) -> &str {
        &self.manifest.model.version
    }

    pub fn engine_kind(&self) -> EngineKind {
        self.engine.kind()
    }

    /// What runs the model's graph: the engine's name, or `native` where the `tract` engine runs
    /// it on retort's own interpreter (the ranker's when its item tower is apart).
    pub fn interpreter(&self) -> &'static str {
        self.tower.as_ref().map_or(self.engine.interpreter(), |t| t.ranker.interpreter())
    }

    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    /// Validates and encodes a request's features.
    pub fn encode<C, I>(&self, context: &C, candidates: &[I]) -> Result<Encoded, EncodeError>
    where
        C: FeatureSource + ?Sized,
        I: FeatureSource,
    {
        self.encoder.encode(context, candidates)
    }

    /// For a model served with its item tower apart, an encoding of every input with its item
    /// inputs moved to the tower's part, so that inference runs the tower on every row and then
    /// the ranker, as for a request whose candidates all miss the catalog. (An encoding of
    /// every input runs the whole graph.) What load and tests check the two parts with.
    pub fn apart(&self, encoded: Encoded) -> Encoded {
        match &self.tower {
            Some(tower) => tower.separate(&self.encoder, encoded),
            None => encoded,
        }
    }

    /// Encodes candidates looked up in a catalog ([`catalog::look_up`]). With an item tower and
    /// `vectors` computed for that catalog, a candidate found there that gives no item feature
    /// of its own takes its item's tower output as computed, and is not encoded at all.
    pub fn encode_found<C: FeatureSource + ?Sized>(
        &self,
        context: &C,
        found: &catalog::Lookup<'_, '_>,
        vectors: Option<&ItemVectors>,
    ) -> Result<Encoded, EncodeError> {
        let vectors = vectors.filter(|v| found.catalog.is_some_and(|c| v.is_for(c)));
        let (Some(tower), Some(vectors)) = (&self.tower, vectors) else {
            return self.encode(context, &found.sources);
        };
        let rows = found.sources.len();
        let width = tower.width;
        // Rows the tower computes stay zero here until the ranker's inputs are assembled.
        let mut known = Vec::with_capacity(rows * width);
        let mut towered = Vec::new();
        let mut lacking = vec![0u32; self.manifest.features.len()];
        for (row, source) in found.sources.iter().enumerate() {
            let overrides =
                || !source.request.features.0.is_empty() && self.encoder.gives_item_features(source.request);
            match source.item {
                Some(item) if !overrides() => {
                    let (values, missing) = vectors.of(&item);
                    known.extend_from_slice(values);
                    self.encoder.count_missing_items(missing, &mut lacking);
                }
                _ => {
                    known.resize(known.len() + width, 0.0);
                    towered.push(row);
                }
            }
        }
        if towered.len() == rows {
            // No tower output known (every candidate carries item features, or is missing):
            // the whole graph in one run.
            return self.encode(context, &found.sources);
        }
        let sources: Vec<_> = towered.iter().map(|&row| &found.sources[row]).collect();
        let mut encoded = self.encoder.encode(context, &sources).map_err(|mut e| {
            if let Location::Candidate(k) = e.location {
                e.location = Location::Candidate(towered[k]);
            }
            e
        })?;
        let items = item_tower::take_item_inputs(&self.encoder, &mut encoded);
        for (m, n) in encoded.missing.iter_mut().zip(lacking) {
            *m += n;
        }
        encoded.rows = rows;
        encoded.tower = Some(Towered { width, vectors: known, rows: towered, items });
        Ok(encoded)
    }

    /// Runs the graph and extracts every head's value per candidate.
    pub fn infer(&self, encoded: Encoded) -> Result<HeadValues, InferError> {
        self.run(encoded, Scale::Value)
    }

    /// Like [`Model::infer`], but binary heads come back as logits: the raw output when the
    /// graph yields logits (`transform = "sigmoid"`), else the log-odds of its probability
    /// (clamped to ±16.6, the log-odds of 1e-7 from certainty). What a teacher's labels store.
    pub fn infer_logits(&self, encoded: Encoded) -> Result<HeadValues, InferError> {
        self.run(encoded, Scale::Logit)
    }

    fn run(&self, encoded: Encoded, scale: Scale) -> Result<HeadValues, InferError> {
        let rows = encoded.rows;
        if rows == 0 {
            return Ok(HeadValues { rows, values: Vec::new() });
        }
        let outputs = match &self.tower {
            Some(tower) if encoded.tower.is_some() => tower.rank(encoded)?,
            // An encoding of every input (the encoder's own, a trainer's): the whole graph.
            _ => self.engine.run(encoded.tensors)?,
        };
        let mut values = Vec::with_capacity(rows * self.heads.len());
        for (plan, head) in self.heads.iter().zip(&self.manifest.heads) {
            let out: &Output = &outputs[plan.output];
            let stride = match out.shape.as_slice() {
                [r] if *r == rows && plan.column == 0 => 1,
                [r, k] if *r == rows && plan.column < *k => *k,
                _ => {
                    return Err(InferError::OutputShape {
                        output: head.output.clone(),
                        head: head.name.clone(),
                        shape: out.shape.clone(),
                        rows,
                        column: plan.column,
                    });
                }
            };
            for row in 0..rows {
                let raw = out.data[row * stride + plan.column];
                let v = match (scale, head.kind, plan.transform) {
                    (Scale::Value, _, Transform::None) | (Scale::Logit, _, Transform::Sigmoid) => raw,
                    (Scale::Value, _, Transform::Sigmoid) => 1.0 / (1.0 + (-raw).exp()),
                    (Scale::Logit, HeadKind::Regression, Transform::None) => raw,
                    (Scale::Logit, HeadKind::Binary, Transform::None) => {
                        let p = raw.clamp(1e-7, 1.0 - 1e-7) as f64;
                        (p / (1.0 - p)).ln() as f32
                    }
                };
                if !v.is_finite() {
                    return Err(InferError::NonFinite { head: head.name.clone(), candidate: row });
                }
                values.push(v);
            }
        }
        Ok(HeadValues { rows, values })
    }

    /// Per-head weights: the manifest's default objective, or the caller's, which replaces it
    /// whole (heads it does not name weigh 0).
    pub fn objective<'a>(
        &self,
        custom: Option<impl IntoIterator<Item = (&'a str, f64)>>,
    ) -> Result<Vec<f32>, ObjectiveError> {
        let Some(custom) = custom else {
            return Ok(self.default_objective.clone());
        };
        let mut weights = vec![0.0f32; self.heads.len()];
        for (name, weight) in custom {
            let ix = self
                .manifest
                .heads
                .iter()
                .position(|h| h.name == name)
                .ok_or_else(|| ObjectiveError::UnknownHead(name.to_string()))?;
            if !self.manifest.heads[ix].serving {
                return Err(ObjectiveError::NotServing(name.to_string()));
            }
            // Scores are f32: a weight past its range (1e39, say) would make every score null.
            let weight = weight as f32;
            if !weight.is_finite() {
                return Err(ObjectiveError::NonFinite(name.to_string()));
            }
            weights[ix] = weight;
        }
        Ok(weights)
    }

    /// One score per candidate: `Σ weight_h · value_h`.
    pub fn combine(&self, values: &HeadValues, weights: &[f32]) -> Result<Vec<f32>, ObjectiveError> {
        let mut scores = vec![0.0f32; values.rows];
        for (h, &w) in weights.iter().enumerate() {
            if w != 0.0 {
                for (s, v) in scores.iter_mut().zip(values.head(h)) {
                    *s += w * v;
                }
            }
        }
        // Head values are finite (inference checks), so only the weights can overflow a score.
        if let Some(candidate) = scores.iter().position(|s| !s.is_finite()) {
            let heaviest = (0..weights.len()).max_by(|&a, &b| weights[a].abs().total_cmp(&weights[b].abs()));
            let head = heaviest.map_or_else(String::new, |h| self.manifest.heads[h].name.clone());
            return Err(ObjectiveError::Overflow { head, candidate });
        }
        Ok(scores)
    }

    /// Scores candidates in one go, the steps in the order every caller takes them: the
    /// objective checked (before any inference is spent), features encoded, the graph run,
    /// heads combined. The rank path takes the same steps itself, to run inference on the pool
    /// between them and cut it to the deadline.
    pub fn score<'a, C, I>(
        &self,
        context: &C,
        candidates: &[I],
        objective: Option<impl IntoIterator<Item = (&'a str, f64)>>,
    ) -> Result<Scored, ScoreError>
    where
        C: FeatureSource + ?Sized,
        I: FeatureSource,
    {
        let weights = self.objective(objective)?;
        let encoded = self.encode(context, candidates)?;
        self.score_encoded(encoded, &weights)
    }

    fn score_encoded(&self, encoded: Encoded, weights: &[f32]) -> Result<Scored, ScoreError> {
        let started = std::time::Instant::now();
        let values = self.infer(encoded)?;
        let inference = started.elapsed();
        let scores = self.combine(&values, weights)?;
        Ok(Scored { values, scores, inference })
    }

    /// [`Model::score`] of a decoded rank request: its context, its candidates (over their
    /// items in `items`' catalog, when there is one) and its objective.
    pub fn score_request(
        &self,
        req: &request::RankRequest<'_>,
        items: Option<ItemSource<'_>>,
    ) -> Result<Scored, ScoreError> {
        let weights = self.objective(req.objective())?;
        let vectors = items.and_then(|i| i.vectors);
        let found = catalog::look_up(items.map(|i| i.catalog), &req.candidates, vectors);
        let encoded = self.encode_found(&req.context, &found, vectors)?;
        self.score_encoded(encoded, &weights)
    }

    /// Runs one golden example and returns its head values.
    pub fn run_example(&self, example: &GoldenExample) -> Result<HeadValues, String> {
        self.infer(self.encode_example(example)?).map_err(|e| e.to_string())
    }

    /// [`Model::run_example`] through the item tower and the ranker, for a model served with
    /// its tower apart.
    pub fn run_example_apart(&self, example: &GoldenExample) -> Result<HeadValues, String> {
        self.infer(self.apart(self.encode_example(example)?)).map_err(|e| e.to_string())
    }

    fn encode_example(&self, example: &GoldenExample) -> Result<Encoded, String> {
        let candidates: Vec<_> = example.candidates.iter().map(|c| c.features.clone()).collect();
        self.encode(&example.context, &candidates).map_err(|e| e.to_string())
    }

    /// Checks every golden example reproduces within the manifest's tolerance.
    pub fn check_golden(&self) -> Result<(), LoadError> {
        let tolerance = self.manifest.golden.tolerance;
        for (ix, example) in self.manifest.golden.examples.iter().enumerate() {
            let golden =
                |problem: String| LoadError::Golden { model: self.manifest.id(), example: ix, problem };
            let mut runs = vec![self.run_example(example).map_err(golden)?];
            if self.tower.is_some() {
                runs.push(self.run_example_apart(example).map_err(golden)?);
            }
            let candidates = example.candidates.iter().enumerate();
            for (values, (c, candidate)) in runs.iter().flat_map(|v| candidates.clone().map(move |c| (v, c)))
            {
                for (head, expected) in &candidate.expected {
                    let h = self
                        .manifest
                        .heads
                        .iter()
                        .position(|x| &x.name == head)
                        .ok_or_else(|| golden(format!("expects unknown head `{head}`")))?;
                    let got = values.head(h)[c] as f64;
                    if (got - expected).abs() > tolerance * (1.0 + expected.abs()) {
                        return Err(golden(format!(
                            "candidate {c} (`{}`), head `{head}`: expected {expected}, got {got} \
                             (tolerance {tolerance})",
                            candidate.id
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Indices of the heads returned to callers, in manifest order.
    pub fn serving_heads(&self) -> impl Iterator<Item = (usize, &str)> {
        self.manifest.heads.iter().enumerate().filter(|(_, h)| h.serving).map(|(i, h)| (i, h.name.as_str()))
    }

    /// Graph outputs read, for diagnostics.
    pub fn outputs(&self) -> &[String] {
        &self.outputs
    }
}

/// A placeholder engine, only ever seen for the instant [`Model::delay_inference`] swaps.
#[cfg(feature = "test-hooks")]
struct Nothing;

#[cfg(feature = "test-hooks")]
impl Engine for Nothing {
    fn kind(&self) -> EngineKind {
        EngineKind::Tract
    }

    fn run(&self, _: Vec<encode::Tensor>) -> Result<Vec<Output>, EngineError> {
        Ok(Vec::new())
    }
}
