//! `retort quickstart`: the whole loop on the demo world. Generate the world, train a teacher on
//! the source product, label the target product zero-shot, compare the control with its
//! distilled twins over paired seeds, then train the auxiliary-head student on all of the
//! target's data and publish it, ready to serve. Every step resumes: data, teacher and labels
//! already in place are reused.

use std::path::{Path, PathBuf};

use crate::data::dataset::Dataset;
use crate::data::demo::{self, DemoConfig, Domain};
use crate::data::spec::DataSpec;
use crate::experiments::compare::{self, Comparison};
use crate::label::labeller::{LabelOptions, Labeller};
use crate::release::run::{self, RunConfig};
use crate::train::fit::TrainError;
use crate::train::kd::Mode;
use retort_model::engine::EngineKind;
use retort_model::package;

/// The teacher: wider and deeper than the student (over 50x its inference cost per candidate),
/// logits out, features masked while training so that it knows what a missing feature means on
/// the target.
pub const TEACHER_CONFIG: &str = r#"
[model]
embedding_dim = 64
context_hidden = [512, 256]
item_hidden = [512, 256]
interaction_hidden = [512, 512, 128]
task_hidden = [64]
logit_outputs = true

[train]
epochs = 1
batch_size = 1024
learning_rate = 0.002
mask_probability = 0.3
"#;

/// The students: the default layers, the three tasks with a teacher counterpart distilled, and
/// the same small search for every variant.
pub const STUDENT_CONFIG: &str = r#"
[train]
epochs = 4

[distill.tasks.play]
[distill.tasks.like]
[distill.tasks.long_listen]

[tune]
learning_rates = [0.001, 0.003, 0.01]
weight_decays = [0.0001, 0.01]

[objective]
play = 1.0
like = 0.5
long_listen = 0.5
skip = -1.0
"#;

/// The fallback student: the same towers, an eighth of the width and no task towers, about 14x
/// fewer multiply-adds per candidate than the student; what the server can afford when a
/// request's budget cannot pay for the student. Trained like the student, through aux heads.
pub const FALLBACK_MODEL: &str = r#"
[model]
embedding_dim = 8
context_hidden = [16]
item_hidden = [16]
interaction_hidden = [16]
task_hidden = []
"#;

pub struct Quickstart {
    pub comparison: Comparison,
    pub published: PathBuf,
    /// The tiny fallback student the published one declares.
    pub fallback: PathBuf,
    pub teacher: PathBuf,
    pub labels: PathBuf,
}

/// Runs the loop under `work`, publishing the student to `models_dir` as `name`/`version`.
pub fn run(
    work: &Path,
    models_dir: &Path,
    name: &str,
    version: &str,
    world: &DemoConfig,
    seeds: u64,
    say: &mut dyn FnMut(&str),
) -> Result<Quickstart, TrainError> {
    let data = work.join("demo");
    say(&format!("1/5 demo world in {}", data.display()));
    demo::generate(&data, world, &[Domain::Target, Domain::Source])
        .map_err(|e| TrainError::Store(e.to_string()))?;
    let target = data.join("target");
    let source = data.join("source");

    let teachers = work.join("models");
    let teacher = teachers.join("video-teacher").join("1");
    if teacher.exists() {
        say(&format!("2/5 teacher: reusing {}", teacher.display()));
    } else {
        say("2/5 training the teacher on the source product (the long step)");
        let spec = DataSpec::from_path(&source.join("features.toml"))?;
        let config: RunConfig =
            toml::from_str(TEACHER_CONFIG).map_err(|e| TrainError::Config(e.to_string()))?;
        let trained = run::train_model(&run::TrainJob::new(&source, &spec, &config, "video-teacher", "1"))?;
        run::publish(&teachers, &trained)?;
    }

    say("3/5 labelling the target product with the teacher, zero-shot");
    let spec = DataSpec::from_path(&target.join("features.toml"))?;
    let labeller = Labeller::new(
        &teacher,
        EngineKind::Tract,
        demo::mapping(),
        spec.clone(),
        &work.join("labels"),
        LabelOptions { progress: false, ..LabelOptions::default() },
    )
    .map_err(|e| TrainError::Store(e.to_string()))?;
    labeller
        .label_dataset(&Dataset::open(&target)?)
        .and_then(crate::label::labeller::LabelReport::complete)
        .map_err(|e| TrainError::Store(e.to_string()))?;
    let labels = labeller.dir().to_path_buf();

    say(&format!("4/5 control against direct and aux, {seeds} paired seed(s), each tuned alike"));
    let config: RunConfig = toml::from_str(STUDENT_CONFIG).map_err(|e| TrainError::Config(e.to_string()))?;
    let seed_list: Vec<u64> = (1..=seeds.max(1)).collect();
    let comparison = compare::compare(&target, &spec, &labels, &config, &seed_list)?;

    say(
        "5/5 training the aux student and its tiny fallback with the chosen hyperparameters, publishing both",
    );
    let mut student = config.clone();
    for d in student.distill.tasks.values_mut() {
        d.mode = Mode::Aux;
    }
    if let Some(aux) = comparison.chosen.iter().find(|c| c.variant == "aux") {
        student.train.learning_rate = aux.learning_rate;
        student.train.weight_decay = aux.weight_decay;
    }
    let fallback_name = format!("{name}-fallback");
    student.publish.fallback = Some(fallback_name.clone());
    let mut tiny = student.clone();
    tiny.model =
        toml::from_str::<RunConfig>(FALLBACK_MODEL).map_err(|e| TrainError::Config(e.to_string()))?.model;
    tiny.publish.fallback = None;
    let fallback_version = package::next_version(models_dir, &fallback_name);
    let mut small = run::train_model(
        &run::TrainJob::new(&target, &spec, &tiny, &fallback_name, &fallback_version).labels(Some(&labels)),
    )?;
    small.manifest.provenance.trained_by =
        format!("retort quickstart (tiny aux fallback, seed {})", tiny.train.seed);
    small.manifest.model.description = format!(
        "Tiny fallback for {name}: the same inputs and heads at a fraction of the cost (retort quickstart)."
    );
    // A rerun trains the same students again: the same packages are not new versions.
    let fallback = package::write_new(models_dir, &small.manifest, &small.graph, |_| Ok(()))
        .map_err(|e| TrainError::Publish(e.to_string()))?
        .dir()
        .to_path_buf();
    let mut trained =
        run::train_model(&run::TrainJob::new(&target, &spec, &student, name, version).labels(Some(&labels)))?;
    trained.manifest.provenance.trained_by =
        format!("retort quickstart (aux student, seed {})", student.train.seed);
    trained.manifest.model.description =
        "Music ranking student distilled from a video teacher on the demo world (retort quickstart).".into();
    let published = package::write_new(models_dir, &trained.manifest, &trained.graph, |_| Ok(()))
        .map_err(|e| TrainError::Publish(e.to_string()))?
        .dir()
        .to_path_buf();
    Ok(Quickstart { comparison, published, fallback, teacher, labels })
}
