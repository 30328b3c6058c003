//! The default model shipped in `models/`: a music-ranking student with the serving
//! architecture and seeded random weights, so the server has something real to load before the
//! distillation sidecar has trained anything. `retort init-model` writes it.

use std::collections::BTreeMap;
use std::path::Path;

use super::Model;
use super::engine::EngineKind;
use super::manifest::{
    ContextRows, Feature, FeatureKind, Golden, GoldenCandidate, GoldenExample, Head, HeadKind, Manifest,
    ModelInfo, Provenance, Side, Transform,
};
use super::onnx;
use super::two_tower::{HeadSpec, Layers, TwoTower, TwoTowerWeights};

pub const DEFAULT_NAME: &str = "music-ranker";
pub const DEFAULT_VERSION: &str = "1";
pub const DEFAULT_SEED: u64 = 20261128;

fn feature(name: &str, side: Side, kind: FeatureKind) -> Feature {
    let input = TwoTower::input_for(side, &kind).to_string();
    Feature { name: name.to_string(), side, input, kind }
}

fn categorical(buckets: u64) -> FeatureKind {
    FeatureKind::Categorical { buckets, default: None, vocabulary: None }
}

/// The music app's features: who is listening, when and where; and what the track is.
pub fn music_features() -> Vec<Feature> {
    use Side::{Context, Item};
    vec![
        feature("user_id", Context, categorical(5000)),
        feature("country", Context, categorical(256)),
        feature(
            "device",
            Context,
            FeatureKind::Categorical { buckets: 16, default: Some("mobile".into()), vocabulary: None },
        ),
        feature("hour", Context, categorical(25)),
        feature("account_age_days", Context, FeatureKind::Number { mean: 400.0, std: 300.0, default: 400.0 }),
        feature("track_id", Item, categorical(10000)),
        feature("artist_id", Item, categorical(2000)),
        feature("genre", Item, categorical(64)),
        feature("duration_s", Item, FeatureKind::Number { mean: 210.0, std: 60.0, default: 210.0 }),
        feature("popularity", Item, FeatureKind::Number { mean: 0.5, std: 0.25, default: 0.5 }),
        feature("track_embedding", Item, FeatureKind::Vector { dim: 8, default: None }),
    ]
}

pub fn music_architecture() -> TwoTower {
    let heads = ["play", "like", "skip", "long_listen"]
        .iter()
        .enumerate()
        .map(|(i, h)| HeadSpec::serving(h, HeadKind::Binary, i))
        .collect();
    TwoTower::new(music_features(), Layers::default(), heads, false)
}

/// Golden requests covering every feature kind, missing features and integer ids.
fn golden_requests() -> Vec<GoldenExample> {
    let table = |text: &str| -> BTreeMap<String, toml::Value> {
        toml::from_str(text).expect("golden request tables are valid TOML. This is a bug.")
    };
    let candidate = |id: &str, features: &str| GoldenCandidate {
        id: id.to_string(),
        features: table(features),
        expected: BTreeMap::new(),
    };
    vec![
        GoldenExample {
            context: table(
                "user_id = \"u42\"\ncountry = \"SE\"\ndevice = \"desktop\"\nhour = 21\naccount_age_days = 730",
            ),
            candidates: vec![
                candidate(
                    "t1",
                    "track_id = \"t1\"\nartist_id = \"a9\"\ngenre = \"jazz\"\nduration_s = 201.0\npopularity = 0.8\ntrack_embedding = [0.1, -0.2, 0.3, 0.0, 0.5, -0.1, 0.2, 0.05]",
                ),
                candidate(
                    "t2",
                    "track_id = \"t2\"\nartist_id = \"a3\"\ngenre = \"rock\"\nduration_s = 340.0\npopularity = 0.1\ntrack_embedding = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]",
                ),
                candidate("t3", "track_id = 3\nartist_id = 9\nduration_s = 95"),
            ],
        },
        GoldenExample {
            context: table("user_id = 7"),
            candidates: vec![candidate("t4", "track_id = \"t4\""), candidate("t5", "")],
        },
    ]
}

/// A complete package: manifest (with golden values computed by the tract engine) and graph.
pub fn seeded_package(name: &str, version: &str, seed: u64) -> (Manifest, Vec<u8>) {
    let objective = [("play", 1.0), ("like", 0.5), ("skip", -1.0), ("long_listen", 0.5)];
    let description = "Music ranking student with seeded random weights (not trained): a placeholder \
                       until the distillation sidecar publishes a trained one.";
    package_with_weights(
        name,
        version,
        seed,
        &music_architecture(),
        &objective,
        description,
        golden_requests(),
    )
}

/// A package of the two-tower architecture with seeded random weights, for any features and
/// heads (e.g. a stand-in teacher over a dataset's spec). Golden examples are made up from the
/// features' kinds.
pub fn random_package(
    name: &str,
    version: &str,
    seed: u64,
    arch: &TwoTower,
    objective: &[(&str, f64)],
) -> (Manifest, Vec<u8>) {
    let description = "Two-tower model with seeded random weights (not trained).";
    package_with_weights(name, version, seed, arch, objective, description, synthetic_golden(&arch.features))
}

/// Golden requests made up from the features' kinds (see [`random_package`]).
pub fn golden_for(features: &[Feature]) -> Vec<GoldenExample> {
    synthetic_golden(features)
}

/// One example of three candidates with values of the right kind, and one with nothing at all.
fn synthetic_golden(features: &[Feature]) -> Vec<GoldenExample> {
    let value = |kind: &FeatureKind, i: usize| -> Option<toml::Value> {
        Some(match kind {
            FeatureKind::Categorical { .. } => toml::Value::String(format!("x{i}")),
            FeatureKind::Number { mean, std, .. } => toml::Value::Float(mean + std * (i as f64 - 1.0)),
            FeatureKind::Vector { dim, .. } => {
                toml::Value::Array((0..*dim).map(|k| toml::Value::Float(0.1 * (i + k) as f64)).collect())
            }
        })
    };
    let table = |side: Side, i: usize| -> BTreeMap<String, toml::Value> {
        features
            .iter()
            .filter(|f| f.side == side)
            .filter_map(|f| value(&f.kind, i).map(|v| (f.name.clone(), v)))
            .collect()
    };
    let candidate =
        |i: usize, features| GoldenCandidate { id: format!("c{i}"), features, expected: BTreeMap::new() };
    vec![
        GoldenExample {
            context: table(Side::Context, 0),
            candidates: (0..3).map(|i| candidate(i, table(Side::Item, i))).collect(),
        },
        GoldenExample { context: BTreeMap::new(), candidates: vec![candidate(9, BTreeMap::new())] },
    ]
}

fn package_with_weights(
    name: &str,
    version: &str,
    seed: u64,
    arch: &TwoTower,
    objective: &[(&str, f64)],
    description: &str,
    golden: Vec<GoldenExample>,
) -> (Manifest, Vec<u8>) {
    arch.validate().expect("the architecture is valid. This is a bug.");
    let weights = arch.random_weights(seed);
    let trained_by = format!("retort init-model --seed {seed} (random weights, untrained)");
    package(name, version, arch, &weights, objective, description, &trained_by, golden)
}

/// A complete package for given weights: the ONNX graph, and a manifest whose golden examples
/// hold the values the graph computes for `golden`'s requests.
#[allow(clippy::too_many_arguments)]
pub fn package(
    name: &str,
    version: &str,
    arch: &TwoTower,
    weights: &TwoTowerWeights,
    objective: &[(&str, f64)],
    description: &str,
    trained_by: &str,
    golden: Vec<GoldenExample>,
) -> (Manifest, Vec<u8>) {
    let graph = onnx::to_bytes(&arch.to_onnx(weights, name));
    let transform = if arch.logit_outputs { Transform::Sigmoid } else { Transform::None };
    let mut manifest = Manifest {
        model: ModelInfo {
            name: name.to_string(),
            version: version.to_string(),
            description: description.to_string(),
            context_rows: ContextRows::Once,
            // The two-tower graph is row-wise after the context broadcast.
            independent_candidates: true,
            fallback: None,
        },
        features: arch.features.clone(),
        // The graph exports serving heads only; auxiliary heads stay with the trainer.
        heads: arch
            .heads
            .iter()
            .filter(|h| h.serving)
            .map(|h| Head {
                name: h.name.clone(),
                kind: h.kind,
                serving: true,
                output: h.name.clone(),
                column: 0,
                transform: if h.kind == HeadKind::Binary { transform } else { Transform::None },
            })
            .collect(),
        objective: objective.iter().map(|(h, w)| (h.to_string(), *w)).collect(),
        provenance: Provenance { trained_by: trained_by.to_string(), ..Default::default() },
        golden: Golden { tolerance: 1e-4, examples: golden },
        item_tower: Some(arch.item_tower()),
    };
    // The golden values are the whole graph's: a server that runs the item tower apart must
    // reproduce them to load the package.
    let whole = Manifest { item_tower: None, ..manifest.clone() };
    let model = Model::from_parts(whole, &graph, Path::new("<generated>"), EngineKind::Tract)
        .expect("the generated graph loads. This is a bug.");
    for example in &mut manifest.golden.examples {
        let values = model.run_example(example).expect("golden requests are valid. This is a bug.");
        for (c, candidate) in example.candidates.iter_mut().enumerate() {
            for (h, head) in manifest.heads.iter().enumerate() {
                // Stored rounded to f32 precision so the manifest stays readable.
                let v = values.head(h)[c];
                candidate.expected.insert(head.name.clone(), format!("{v}").parse().unwrap_or(v as f64));
            }
        }
    }
    (manifest, graph)
}
