//! The candle student: it learns from the demo world, and its ONNX export computes what candle
//! computes.

use std::path::Path;

use candle_core::Device;
use retort_model::Model;
use retort_model::engine::EngineKind;
use retort_model::manifest::ContextRows;
use retort_model::scaffold;
use retort_sidecar::data::dataset::Dataset;
use retort_sidecar::data::demo::{self, DemoConfig, Domain, EPOCH};
use retort_sidecar::data::spec::DataSpec;
use retort_sidecar::eval::metrics::auc;
use retort_sidecar::train::fit::{TrainConfig, TrainingData, predict, train};
use retort_sidecar::train::student::Student;

#[test]
fn a_student_learns_the_demo_world_and_exports_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let config = DemoConfig {
        users: 400,
        days: 5,
        target_requests: 3000,
        tracks: 400,
        artists: 40,
        ..DemoConfig::default()
    };
    let (target, spec) = target_world(dir.path(), &config);
    let arch = spec.two_tower(false);
    let data = TrainingData::load(&Dataset::open(&target).unwrap(), &spec, &arch).unwrap();
    assert_eq!(data.rows(), 30_000);
    let (fit, holdout) = data.split_at(EPOCH + 4 * 86_400);
    assert_eq!((fit.len(), holdout.len()), (24_000, 6_000));

    let student = Student::new(&arch, 3, &Device::Cpu).unwrap();
    let play = 0;
    let before =
        auc(&predict(&student, &data, &holdout).unwrap()[play], &holdout_labels(&data, &holdout, play))
            .unwrap();
    let losses = train(&student, &data, &fit, &TrainConfig { epochs: 3, ..TrainConfig::default() }).unwrap();
    assert!(losses.windows(2).all(|w| w[1] < w[0]), "training loss falls every epoch: {losses:?}");
    let predicted = predict(&student, &data, &holdout).unwrap();
    let after = auc(&predicted[play], &holdout_labels(&data, &holdout, play)).unwrap();
    eprintln!("holdout play AUC {before:.3} -> {after:.3}, epoch losses {losses:?}");
    assert!(after > 0.6 && after > before + 0.05, "holdout play AUC {before:.3} -> {after:.3}");

    // Same seed, same start: a second student begins exactly where the first did.
    let twin = Student::new(&arch, 3, &Device::Cpu).unwrap();
    let fresh = Student::new(&arch, 3, &Device::Cpu).unwrap();
    assert_eq!(twin.weights().unwrap(), fresh.weights().unwrap());

    // Export and run the graph in tract on the same rows: the same probabilities.
    let weights = student.weights().unwrap();
    let (mut manifest, graph) = scaffold::package(
        "student",
        "1",
        &arch,
        &weights,
        &[("play", 1.0)],
        "test student",
        "tests/sidecar/student.rs",
        scaffold::golden_for(&arch.features),
    );
    manifest.model.context_rows = ContextRows::PerCandidate;
    let model = Model::from_parts(manifest, &graph, Path::new("student.onnx"), EngineKind::Tract).unwrap();
    model.check_golden().unwrap();
    let sample: Vec<usize> = holdout.iter().copied().step_by(7).collect();
    let exported = model.infer(data.subset(&sample)).unwrap();
    let candle = predict(&student, &data, &sample).unwrap();
    let mut worst = 0f32;
    for (h, logits) in candle.iter().enumerate() {
        for (i, z) in logits.iter().enumerate() {
            worst = worst.max((1.0 / (1.0 + (-z).exp()) - exported.head(h)[i]).abs());
        }
    }
    assert!(worst <= 1e-5, "candle and tract differ by {worst}");

    // And ONNX Runtime, where it is available (CI sets ORT_DYLIB_PATH).
    if cfg!(feature = "ort") && std::env::var_os("ORT_DYLIB_PATH").is_some() {
        let ort =
            Model::from_parts(model.manifest.clone(), &graph, Path::new("student.onnx"), EngineKind::Ort)
                .unwrap();
        let by_ort = ort.infer(data.subset(&sample)).unwrap();
        let d = by_ort.values.iter().zip(&exported.values).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(d <= 1e-5, "ort and tract differ by {d}");
    } else {
        eprintln!("ort parity skipped: build with --features ort and set ORT_DYLIB_PATH");
    }
}

fn holdout_labels(data: &TrainingData, rows: &[usize], head: usize) -> Vec<f32> {
    rows.iter().map(|&r| data.labels[head][r]).collect()
}

#[test]
fn auxiliary_heads_share_their_task_tower_and_stay_out_of_the_export() {
    use retort_model::manifest::HeadKind;
    use retort_model::two_tower::HeadSpec;
    let dir = tempfile::tempdir().unwrap();
    let config = DemoConfig {
        users: 50,
        days: 1,
        target_requests: 40,
        tracks: 60,
        artists: 10,
        ..DemoConfig::default()
    };
    let (target, spec) = target_world(dir.path(), &config);
    let mut arch = spec.two_tower(false);
    arch.task_hidden = vec![16, 8];
    arch.heads.push(HeadSpec { name: "play_aux".into(), kind: HeadKind::Binary, tower: 0, serving: false });
    arch.validate().unwrap();
    let data = TrainingData::load(&Dataset::open(&target).unwrap(), &spec, &spec.two_tower(false)).unwrap();
    let student = Student::new(&arch, 5, &Device::Cpu).unwrap();
    let rows: Vec<usize> = (0..data.rows()).collect();
    let candle = predict(&student, &data, &rows).unwrap();
    assert_eq!(candle.len(), 5, "four tasks and the auxiliary head");
    assert_ne!(candle[0], candle[4], "the auxiliary head has its own output layer");

    let weights = student.weights().unwrap();
    assert_eq!(weights.task_towers.len(), 4);
    let (mut manifest, graph) = scaffold::package(
        "aux",
        "1",
        &arch,
        &weights,
        &[("play", 1.0)],
        "test",
        "tests/sidecar/student.rs",
        scaffold::golden_for(&arch.features),
    );
    let heads: Vec<&str> = manifest.heads.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(heads, ["play", "skip", "long_listen", "like"]);
    manifest.model.context_rows = ContextRows::PerCandidate;
    let model = Model::from_parts(manifest, &graph, Path::new("aux.onnx"), EngineKind::Tract).unwrap();
    let exported = model.infer(data.subset(&rows)).unwrap();
    for (h, logits) in candle.iter().take(4).enumerate() {
        for (i, z) in logits.iter().enumerate() {
            let p = 1.0 / (1.0 + (-z).exp());
            assert!((p - exported.head(h)[i]).abs() <= 1e-5, "head {h} row {i}");
        }
    }
    // The graph itself has no output for the auxiliary head.
    let proto: tract_onnx::pb::ModelProto = prost::Message::decode(&graph[..]).unwrap();
    let outputs: Vec<String> = proto.graph.unwrap().output.into_iter().map(|o| o.name).collect();
    assert_eq!(outputs, ["play", "skip", "long_listen", "like"]);
}

#[test]
fn distilled_students_join_teacher_labels_by_example_id() {
    use retort_sidecar::train::fit::train_plan;
    use retort_sidecar::train::kd::{DistillConfig, Plan};
    let dir = tempfile::tempdir().unwrap();
    let config = DemoConfig {
        users: 200,
        days: 3,
        target_requests: 600,
        tracks: 200,
        artists: 20,
        ..DemoConfig::default()
    };
    let (target, spec) = target_world(dir.path(), &config);
    let labeller = label_with_stand_in_teacher(dir.path(), &spec, &target);
    // One partition's labels are lost: its rows train their hard heads only.
    std::fs::remove_file(labeller.dir().join("day-002.parquet")).unwrap();

    let base = spec.two_tower(false);
    let mut data = TrainingData::load(&Dataset::open(&target).unwrap(), &spec, &base).unwrap();
    let kd: DistillConfig = toml::from_str(
        "[tasks.play]\nmode = \"aux\"\n[tasks.long_listen]\nmode = \"direct\"\n[[new_heads]]\nname = \"cont\"\nteacher = \"continue_watching\"\ntower_of = \"long_listen\"\n",
    )
    .unwrap();
    let plan = Plan::new(&base, &kd).unwrap();
    // Targets resolve through the mapping (play -> click) or name a teacher head directly.
    let unlabelled = data.attach_teacher(labeller.dir(), &plan.teacher_labels).unwrap();
    assert_eq!(unlabelled, 2000, "the rows of the lost partition");
    let rows: Vec<usize> = (0..data.rows()).collect();
    let labelled = rows.iter().find(|&&r| !data.teacher[0][r].is_nan()).copied().unwrap();
    assert!(data.teacher.iter().all(|t| t[labelled].is_finite()));

    let student = Student::new(&plan.arch, 4, &Device::Cpu).unwrap();
    let losses =
        train_plan(&student, &data, &rows, &TrainConfig { epochs: 2, ..TrainConfig::default() }, &plan)
            .unwrap();
    assert!(losses.iter().all(|l| l.is_finite()) && losses[1] < losses[0], "{losses:?}");
    assert_eq!(predict(&student, &data, &rows[..5]).unwrap().len(), 6, "4 tasks + aux + new head");

    // A control run needs no store at all.
    let control = Plan::new(&base, &DistillConfig::default()).unwrap();
    assert!(!control.uses_teacher());
    let plain = TrainingData::load(&Dataset::open(&target).unwrap(), &spec, &base).unwrap();
    let student = Student::new(&control.arch, 4, &Device::Cpu).unwrap();
    train_plan(&student, &plain, &rows, &TrainConfig { epochs: 1, ..TrainConfig::default() }, &control)
        .unwrap();
}

#[test]
fn train_publishes_a_package_the_server_loads_with_its_metrics() {
    use retort_sidecar::release::run::{self, RunConfig};
    let dir = tempfile::tempdir().unwrap();
    let config = small_world();
    let (target, spec) = target_world(dir.path(), &config);
    let run: RunConfig =
        toml::from_str("[train]\nepochs = 1\n[objective]\nplay = 1.0\nskip = -0.5\n").unwrap();
    let trained = run::train_model(&run::TrainJob::new(&target, &spec, &run, "music-student", "7")).unwrap();
    assert_eq!((trained.rows_train, trained.rows_holdout), (2000, 1000));
    let written = run::publish(&dir.path().join("models"), &trained).unwrap();
    let dir_out = written.dir();
    let model = Model::load(dir_out, EngineKind::Tract).unwrap();
    let m = &model.manifest;
    assert_eq!((m.model.name.as_str(), m.model.version.as_str()), ("music-student", "7"));
    assert!(
        m.provenance.metrics.contains_key("play_auc") && m.provenance.metrics.contains_key("like_log_loss"),
        "{:?}",
        m.provenance.metrics
    );
    assert!(m.provenance.data_window.starts_with("2026-01-01..2026-01-03"), "{}", m.provenance.data_window);
    for metric in ["play_gauc", "play_ndcg_10", "play_ece", "play_truth_mae"] {
        let v = m.provenance.metrics.get(metric).copied();
        assert!(v.is_some_and(|v| (0.0..=1.0).contains(&v)), "{metric}: {v:?}");
    }
    assert_eq!(m.objective.get("skip"), Some(&-0.5));
    // A config that distils needs labels.
    let kd: RunConfig = toml::from_str("[distill.tasks.play]\nmode = \"aux\"\n").unwrap();
    let err = run::train_model(&run::TrainJob::new(&target, &spec, &kd, "x", "1")).err().unwrap().to_string();
    assert!(err.contains("--labels"), "{err}");
}

#[test]
fn a_distilled_twin_starts_from_the_controls_weights() {
    use retort_sidecar::train::kd::{DistillConfig, Plan};
    let spec = demo::spec(Domain::Target);
    let mut base = spec.two_tower(false);
    base.task_hidden = vec![8];
    let control = Plan::new(&base, &DistillConfig::default()).unwrap();
    let kd: DistillConfig = toml::from_str("[tasks.like]\nmode = \"aux\"\n").unwrap();
    let twin = Plan::new(&base, &kd).unwrap();
    let (a, b) = (control.arch.random_weights(9), twin.arch.random_weights(9));
    assert_eq!(a.context_embeddings, b.context_embeddings);
    assert_eq!(
        (&a.join_context, &a.join_item, &a.interaction_layers),
        (&b.join_context, &b.join_item, &b.interaction_layers)
    );
    assert_eq!(a.task_towers, b.task_towers);
    assert_eq!(a.heads[..], b.heads[..4], "served heads start alike; the twin adds one");
    assert_eq!(b.heads.len(), 5);
}

#[test]
fn distill_compares_paired_variants_and_reports_the_teacher() {
    use retort_sidecar::experiments::compare;
    use retort_sidecar::release::run::RunConfig;
    let dir = tempfile::tempdir().unwrap();
    let config = small_world();
    let (target, spec) = target_world(dir.path(), &config);
    let labeller = label_with_stand_in_teacher(dir.path(), &spec, &target);
    let run: RunConfig =
        toml::from_str("[train]\nepochs = 1\n[distill.tasks.play]\n[distill.tasks.like]\n").unwrap();
    let c = compare::compare(&target, &spec, labeller.dir(), &run, &[1, 2]).unwrap();
    assert_eq!(c.runs.len(), 6);
    // See: issue 14 (10): every task the store has a teacher label for, distilled or not.
    assert_eq!(c.teacher_auc.keys().collect::<Vec<_>>(), ["like", "long_listen", "play"]);
    for variant in compare::VARIANTS {
        assert_eq!(c.aucs(variant, "play").len(), 2, "{variant}");
    }
    let table = c.markdown();
    let rows =
        table.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| task") && !l.starts_with("| ---"));
    assert_eq!(rows.count(), 16, "four tables (AUC, log loss, GAUC, NDCG@10) of four tasks: {table}");
    assert!(table.contains("Holdout log loss (lower is better)"), "{table}");
    assert!(table.contains("| skip (not distilled) | – |"), "{table}");
    assert!(
        table.contains(&format!("| long_listen (not distilled) | {:.4} |", c.teacher_auc["long_listen"])),
        "{table}"
    );
    // Tuning: every variant gets the same grid, judged on the last training day.
    let tuned: RunConfig = toml::from_str(
        "[train]\nepochs = 1\n[distill.tasks.play]\n[tune]\nlearning_rates = [0.001, 0.01]\nweight_decays = [0.0001]\n",
    )
    .unwrap();
    let t = compare::compare(&target, &spec, labeller.dir(), &tuned, &[1]).unwrap();
    assert_eq!(t.chosen.len(), 3);
    assert!(t.chosen.iter().all(|c| c.validation_auc.is_some() && [0.001, 0.01].contains(&c.learning_rate)));
    assert!(t.markdown().contains("| control | "), "{}", t.markdown());
    assert_eq!((t.epochs, t.control_validation_losses.len()), (1, 0), "no patience: train.epochs");

    // Early stopping: the control's validation loss chooses every variant's epochs.
    let stopping: RunConfig =
        toml::from_str("[train]\nepochs = 5\npatience = 1\nlearning_rate = 0.05\n[distill.tasks.play]\n")
            .unwrap();
    let e = compare::compare(&target, &spec, labeller.dir(), &stopping, &[1]).unwrap();
    let losses = &e.control_validation_losses;
    assert!(!losses.is_empty() && losses.len() <= 5, "{losses:?}");
    let best = (0..losses.len()).min_by(|&a, &b| losses[a].total_cmp(&losses[b])).unwrap();
    assert_eq!(e.epochs, best + 1, "{losses:?}");
    assert!(
        e.markdown().contains(&format!("Every variant trained {} epoch(s)", e.epochs)),
        "{}",
        e.markdown()
    );
    assert!(e.chosen.iter().all(|c| c.epochs == e.epochs), "one rule for every variant");

    // Epochs searched by the grid, per variant like the learning rate.
    let by_epochs: RunConfig =
        toml::from_str("[train]\nepochs = 1\n[distill.tasks.play]\n[tune]\nepochs = [1, 3]\n").unwrap();
    let g = compare::compare(&target, &spec, labeller.dir(), &by_epochs, &[1]).unwrap();
    assert!(
        g.chosen.iter().all(|c| [1, 3].contains(&c.epochs) && c.validation_auc.is_some()),
        "{:?}",
        g.chosen
    );
    assert!(g.markdown().contains("| variant | learning rate | weight decay | epochs |"), "{}", g.markdown());
    let both: RunConfig =
        toml::from_str("[train]\npatience = 1\n[distill.tasks.play]\n[tune]\nepochs = [1, 3]\n").unwrap();
    let err = compare::compare(&target, &spec, labeller.dir(), &both, &[1]).err().unwrap().to_string();
    assert!(err.contains("train.patience and tune.epochs"), "{err}");

    // A comparison without tasks to distil is refused with what to add.
    let err = compare::compare(&target, &spec, labeller.dir(), &RunConfig::default(), &[1])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("[distill.tasks]"), "{err}");
}

#[test]
fn early_stopping_keeps_the_best_epochs_weights() {
    use retort_sidecar::train::fit::{train_validated, validation_loss};
    use retort_sidecar::train::kd::{DistillConfig, Plan};
    let dir = tempfile::tempdir().unwrap();
    let config = DemoConfig {
        users: 100,
        days: 3,
        target_requests: 600,
        tracks: 100,
        artists: 10,
        ..DemoConfig::default()
    };
    let (target, spec) = target_world(dir.path(), &config);
    let base = spec.two_tower(false);
    let data = TrainingData::load(&Dataset::open(&target).unwrap(), &spec, &base).unwrap();
    let (fit, validation) = data.split_at(EPOCH + 2 * 86_400);
    let plan = Plan::new(&base, &DistillConfig::default()).unwrap();
    let student = Student::new(&plan.arch, 2, &Device::Cpu).unwrap();
    // A learning rate high enough to overfit a small world within a few epochs.
    let train = TrainConfig { epochs: 12, learning_rate: 0.03, patience: 1, ..TrainConfig::default() };
    let log = train_validated(&student, &data, &fit, &validation, &train, &plan).unwrap();
    assert_eq!(log.train_losses.len(), log.validation_losses.len());
    let best = log.validation_losses.iter().copied().fold(f64::INFINITY, f64::min);
    assert_eq!(log.validation_losses[log.best_epoch], best);
    assert!(log.validation_losses.len() < 12, "stopped early: {:?}", log.validation_losses);
    let now = validation_loss(&student, &data, &validation).unwrap();
    assert!((now - best).abs() < 1e-9, "restored the best epoch: {now} vs {best}");
}

#[test]
fn quickstart_runs_the_whole_loop_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let world = DemoConfig {
        users: 100,
        days: 3,
        target_requests: 300,
        source_ratio: 5,
        tracks: 100,
        artists: 10,
        videos: 500,
        channels: 50,
        ..DemoConfig::default()
    };
    let mut said = Vec::new();
    let done = retort_sidecar::experiments::quickstart::run(
        &dir.path().join("work"),
        &dir.path().join("models"),
        "music-ranker",
        "5",
        &world,
        1,
        &mut |s| said.push(s.to_string()),
    )
    .unwrap();
    assert_eq!(said.len(), 5, "{said:?}");
    assert_eq!(done.comparison.runs.len(), 3);
    let model = Model::load(&done.published, EngineKind::Tract).unwrap();
    assert!(model.manifest.provenance.trained_by.starts_with("retort quickstart"));
    assert!(
        model.manifest.provenance.teacher.starts_with("video-teacher/1"),
        "{}",
        model.manifest.provenance.teacher
    );
    // The tiny fallback: declared by the student, the same serving heads, far cheaper.
    assert_eq!(model.manifest.model.fallback.as_deref(), Some("music-ranker-fallback"));
    let tiny = Model::load(&done.fallback, EngineKind::Tract).unwrap();
    assert_eq!(tiny.name(), "music-ranker-fallback");
    assert_eq!(
        tiny.serving_heads().map(|(_, h)| h.to_string()).collect::<Vec<_>>(),
        ["play", "skip", "long_listen", "like"]
    );
    let cost = |m: &Model| -> u64 {
        let note = &m.manifest.provenance.notes["multiply_adds"];
        note.split(", ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap()
    };
    assert!(cost(&model) >= 10 * cost(&tiny), "per candidate: {} against {}", cost(&model), cost(&tiny));

    // A rerun reuses the world, the teacher and the labels.
    let mut again = Vec::new();
    retort_sidecar::experiments::quickstart::run(
        &dir.path().join("work"),
        &dir.path().join("models"),
        "music-ranker",
        "6",
        &world,
        1,
        &mut |s| again.push(s.to_string()),
    )
    .unwrap();
    assert!(again[1].contains("reusing"), "{again:?}");
}

/// A demo world small enough to train on in a moment: 3 days, 100 users, 300 requests.
pub(crate) fn small_world() -> DemoConfig {
    DemoConfig {
        users: 100,
        days: 3,
        target_requests: 300,
        tracks: 100,
        artists: 10,
        ..DemoConfig::default()
    }
}

/// A demo world's target domain under `dir`: its directory and spec.
pub(crate) fn target_world(dir: &Path, config: &DemoConfig) -> (std::path::PathBuf, DataSpec) {
    demo::generate(dir, config, &[Domain::Target]).unwrap();
    let target = dir.join("target");
    let spec = DataSpec::from_path(&target.join("features.toml")).unwrap();
    (target, spec)
}

/// A stand-in teacher over the source features, labelling the target through the demo mapping.
fn label_with_stand_in_teacher(
    dir: &Path,
    spec: &DataSpec,
    target: &Path,
) -> retort_sidecar::label::labeller::Labeller {
    use retort_sidecar::label::labeller::{LabelOptions, Labeller};
    let teacher_arch = demo::spec(Domain::Source).two_tower(true);
    let (manifest, graph) = scaffold::random_package("teacher", "1", 8, &teacher_arch, &[("click", 1.0)]);
    retort_model::package::write(&dir.join("models"), &manifest, &graph).unwrap();
    let labeller = Labeller::new(
        &dir.join("models/teacher/1"),
        EngineKind::Tract,
        demo::mapping(),
        spec.clone(),
        &dir.join("labels"),
        LabelOptions { progress: false, ..LabelOptions::default() },
    )
    .unwrap();
    labeller.label_dataset(&Dataset::open(target).unwrap()).unwrap();
    labeller
}

#[test]
fn multiply_adds_count_the_dense_layers_with_the_context_once() {
    use retort_sidecar::release::run::RunConfig;
    let spec = demo::spec(Domain::Target);
    let student = RunConfig::default().architecture(&spec).unwrap();
    // Context once: (4 ids·16 + 1)·64 + 64·32 + join 32·64 = 8256. Per candidate: item
    // (3·16 + 2 + 8)·64 + 64·32 + join 32·64 = 7808, interaction 64·32 and four heads 32·1 on
    // it (no task towers by default): 9984.
    assert_eq!(student.macs(1), 8256 + 9984);
    assert_eq!(student.macs(500), 8256 + 500 * 9984);
    // The quickstart teacher costs over 50x the student per labelled example.
    let teacher: RunConfig = toml::from_str(retort_sidecar::experiments::quickstart::TEACHER_CONFIG).unwrap();
    let teacher = teacher.architecture(&demo::spec(Domain::Source)).unwrap();
    let ratio = teacher.macs(1) as f64 / student.macs(1) as f64;
    eprintln!("teacher/student multiply-adds per labelled example: {ratio:.1}");
    assert!(ratio >= 50.0, "teacher/student multiply-adds {ratio:.1}");
}

#[test]
fn a_mixture_of_experts_student_learns_and_exports_exactly() {
    use retort_sidecar::release::run::RunConfig;
    let dir = tempfile::tempdir().unwrap();
    let config = DemoConfig {
        users: 300,
        days: 4,
        target_requests: 1500,
        tracks: 300,
        artists: 30,
        ..DemoConfig::default()
    };
    let (target, spec) = target_world(dir.path(), &config);
    let run: RunConfig = toml::from_str("[model]\nexperts = 3\ninteraction_hidden = [32, 24, 16]\n").unwrap();
    let arch = run.architecture(&spec).unwrap();
    assert_eq!(arch.experts, 3);
    let data = TrainingData::load(&Dataset::open(&target).unwrap(), &spec, &arch).unwrap();
    let (fit, holdout) = data.split_at(EPOCH + 3 * 86_400);
    let student = Student::new(&arch, 5, &Device::Cpu).unwrap();
    let weights = student.weights().unwrap();
    assert_eq!((weights.experts.len(), weights.gates.len()), (3, 4));
    assert!(weights.interaction_layers.is_empty());
    let losses = train(&student, &data, &fit, &TrainConfig { epochs: 2, ..TrainConfig::default() }).unwrap();
    assert!(losses[1] < losses[0], "{losses:?}");
    // The gates learned something: they moved from their initial weights.
    assert_ne!(student.weights().unwrap().gates, weights.gates);

    // candle, the plain-Rust reference, tract (and ort) agree on the exported graph.
    let weights = student.weights().unwrap();
    let (mut manifest, graph) = scaffold::package(
        "moe",
        "1",
        &arch,
        &weights,
        &[("play", 1.0)],
        "test MMoE student",
        "tests/sidecar/student.rs",
        scaffold::golden_for(&arch.features),
    );
    // As served (context once), the golden examples reproduce the reference forward pass.
    let served =
        Model::from_parts(manifest.clone(), &graph, Path::new("moe.onnx"), EngineKind::Tract).unwrap();
    assert_eq!(served.manifest.model.context_rows, ContextRows::Once);
    served.check_golden().unwrap();
    manifest.model.context_rows = ContextRows::PerCandidate;
    let sample: Vec<usize> = holdout.iter().copied().step_by(11).collect();
    let candle = predict(&student, &data, &sample).unwrap();
    // The reference runs one request (its context once): each sampled row on its own.
    let reference: Vec<Vec<f32>> = {
        let per_row: Vec<Vec<Vec<f32>>> = sample
            .iter()
            .map(|&r| arch.reference_forward(&weights, data.encoder.inputs(), &data.subset(&[r])))
            .collect();
        (0..arch.heads.len()).map(|h| per_row.iter().map(|row| row[h][0]).collect()).collect()
    };
    let engines: Vec<EngineKind> = if cfg!(feature = "ort") && std::env::var_os("ORT_DYLIB_PATH").is_some() {
        vec![EngineKind::Tract, EngineKind::Ort]
    } else {
        vec![EngineKind::Tract]
    };
    for engine in engines {
        let model = Model::from_parts(manifest.clone(), &graph, Path::new("moe.onnx"), engine).unwrap();
        model.check_golden().unwrap();
        let exported = model.infer(data.subset(&sample)).unwrap();
        let mut worst = 0f32;
        for (h, logits) in candle.iter().enumerate() {
            for (i, z) in logits.iter().enumerate() {
                let p = 1.0 / (1.0 + (-z).exp());
                worst = worst.max((p - exported.head(h)[i]).abs()).max((p - reference[h][i]).abs());
            }
        }
        assert!(worst <= 1e-5, "{engine}: candle, reference and the export differ by {worst}");
    }
}

#[test]
fn training_can_count_in_steps_instead_of_epochs() {
    use retort_sidecar::train::fit::train_resuming;
    let (_dir, arch, data, plan) = small_training();
    let rows: Vec<usize> = (0..data.rows()).collect();
    let batches_per_epoch = rows.len().div_ceil(256);
    // More steps than one epoch holds: the second epoch is cut short.
    let steps = batches_per_epoch + 2;
    let student = Student::new(&arch, 1, &Device::Cpu).unwrap();
    let train = TrainConfig { batch_size: 256, epochs: 99, steps, ..TrainConfig::default() };
    let (log, state) = train_resuming(&student, &data, &rows, &[], &train, &plan, None).unwrap();
    assert_eq!(state.step, steps as u64);
    assert_eq!(log.train_losses.len(), 2);
    assert_eq!(log.examples, rows.len() + 2 * 256);
}

#[test]
fn a_run_continued_from_its_own_checkpoint_matches_an_uninterrupted_one() {
    use retort_sidecar::train::fit::train_resuming;
    let (_dir, arch, data, plan) = small_training();
    let rows: Vec<usize> = (0..data.rows()).collect();
    let per_epoch = rows.len().div_ceil(256);
    // Masking on, so the continued run must mask each batch as the whole run did; the cut
    // falls inside the second epoch.
    let whole = TrainConfig {
        batch_size: 256,
        steps: 2 * per_epoch + 1,
        mask_probability: 0.3,
        ..TrainConfig::default()
    };
    let cut = per_epoch + 3;

    let uninterrupted = Student::new(&arch, 5, &Device::Cpu).unwrap();
    train_resuming(&uninterrupted, &data, &rows, &[], &whole, &plan, None).unwrap();

    let continued = Student::new(&arch, 5, &Device::Cpu).unwrap();
    let first = TrainConfig { steps: cut, ..whole.clone() };
    let (_, state) = train_resuming(&continued, &data, &rows, &[], &first, &plan, None).unwrap();
    assert_eq!(state.step, cut as u64);
    let rest = TrainConfig { start_step: cut, ..whole.clone() };
    let (log, state) = train_resuming(&continued, &data, &rows, &[], &rest, &plan, Some(state)).unwrap();
    assert_eq!(state.step, whole.steps as u64);
    assert_eq!(
        log.examples,
        rows.len() - (cut - per_epoch) * 256 + 256,
        "only the steps after the cut train"
    );

    let a = uninterrupted.weights().unwrap();
    let b = continued.weights().unwrap();
    assert!(a == b, "the continued run's weights differ from the uninterrupted run's");
    let restarted = Student::new(&arch, 5, &Device::Cpu).unwrap();
    train_resuming(&restarted, &data, &rows, &[], &TrainConfig { seed: 6, ..whole }, &plan, None).unwrap();
    assert!(a != restarted.weights().unwrap(), "another seed trains other weights: the check can fail");
}

/// Masking only `user_id`, always: every row reads its missing-value row, so with tables stepped
/// by the rows a batch read (batches small enough against the tables for that), that row alone
/// of `user_id`'s trains; other features' rows train.
#[test]
fn masking_one_feature_trains_only_its_missing_row() {
    use retort_sidecar::train::fit::train_resuming;
    let (_dir, arch, data, plan) = small_training();
    let rows: Vec<usize> = (0..data.rows()).collect();
    let student = Student::new(&arch, 3, &Device::Cpu).unwrap();
    let before = student.weights().unwrap().context_embeddings;
    let train = TrainConfig {
        batch_size: 64,
        steps: 4,
        mask_features: [("user_id".to_string(), 1.0)].into(),
        ..TrainConfig::default()
    };
    train_resuming(&student, &data, &rows, &[], &train, &plan, None).unwrap();
    let after = student.weights().unwrap().context_embeddings;
    let e = arch.embedding_dim;
    let buckets = match arch.features.iter().find(|f| f.name == "user_id").unwrap().kind {
        retort_model::manifest::FeatureKind::Categorical { buckets, .. } => buckets as usize,
        _ => unreachable!(),
    };
    let row = |w: &[f32], r: usize| w[r * e..(r + 1) * e].to_vec();
    assert_ne!(row(&before, 0), row(&after, 0), "the missing-value row trains");
    assert!((1..buckets).all(|r| row(&before, r) == row(&after, r)), "no other user_id row trains");
    assert!((buckets..after.len() / e).any(|r| row(&before, r) != row(&after, r)), "other features train");

    let unknown = TrainConfig { mask_features: [("no_such".to_string(), 0.5)].into(), ..train.clone() };
    let err = train_resuming(&student, &data, &rows, &[], &unknown, &plan, None).err().unwrap().to_string();
    assert!(err.contains("`no_such`, which is not a feature") && err.contains("user_id"), "{err}");
    let out_of_range = TrainConfig { mask_features: [("user_id".to_string(), 1.5)].into(), ..train };
    let err =
        train_resuming(&student, &data, &rows, &[], &out_of_range, &plan, None).err().unwrap().to_string();
    assert!(err.contains("1.5; it must be in [0, 1]"), "{err}");
}

/// A batch split over threads trains the weights one thread trains, to float rounding.
#[test]
fn a_batch_split_over_threads_trains_the_same_weights() {
    use retort_sidecar::train::fit::train_resuming;
    let (_dir, arch, data, plan) = small_training();
    let rows: Vec<usize> = (0..data.rows()).collect();
    let run = |threads, seed, dropout| {
        let student = Student::new(&arch, seed, &Device::Cpu).unwrap();
        let train = TrainConfig { batch_size: 256, steps: 3, threads, dropout, ..TrainConfig::default() };
        let (log, _) = train_resuming(&student, &data, &rows, &[], &train, &plan, None).unwrap();
        (student.weights().unwrap(), log.train_losses[0])
    };
    let (one, loss_one) = run(1, 4, 0.0);
    let (three, loss_three) = run(3, 4, 0.0);
    assert!((loss_one - loss_three).abs() < 1e-5, "{loss_one} {loss_three}");
    let flat = |w: &retort_model::two_tower::TwoTowerWeights| {
        let mut v = w.context_embeddings.clone();
        v.extend(&w.item_embeddings);
        for d in w.context_layers.iter().chain(&w.item_layers).chain(&w.heads) {
            v.extend(&d.weight);
            v.extend(&d.bias);
        }
        v
    };
    let (a, b) = (flat(&one), flat(&three));
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(worst < 1e-3, "largest difference {worst}");
    let largest = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    let apart = largest(&a, &flat(&run(1, 5, 0.0).0));
    assert!(apart > 100.0 * worst.max(1e-6), "another seed differs by {apart}: the check can fail");

    // Dropout draws its masks per row, so a split batch drops what the whole one does.
    let dropped = flat(&run(1, 4, 0.3).0);
    assert!(largest(&dropped, &flat(&run(3, 4, 0.3).0)) < 1e-3, "dropout split over threads");
    assert!(largest(&dropped, &a) > 100.0 * worst.max(1e-6), "dropout changes what trains");
    let err = {
        let student = Student::new(&arch, 4, &Device::Cpu).unwrap();
        let train = TrainConfig { steps: 1, dropout: 1.0, ..TrainConfig::default() };
        train_resuming(&student, &data, &rows, &[], &train, &plan, None).err().unwrap().to_string()
    };
    assert!(err.contains("dropout is 1; it must be in [0, 1)"), "{err}");
}

/// A small target world's training data for the default architecture, with a plain plan.
fn small_training()
-> (tempfile::TempDir, retort_model::two_tower::TwoTower, TrainingData, retort_sidecar::train::kd::Plan) {
    use retort_sidecar::train::kd::{DistillConfig, Plan};
    let dir = tempfile::tempdir().unwrap();
    let config = DemoConfig {
        users: 100,
        days: 2,
        target_requests: 200,
        tracks: 100,
        artists: 10,
        ..DemoConfig::default()
    };
    let (target, spec) = target_world(dir.path(), &config);
    let arch = spec.two_tower(false);
    let data = TrainingData::load(&Dataset::open(&target).unwrap(), &spec, &arch).unwrap();
    let plan = Plan::new(&arch, &DistillConfig::default()).unwrap();
    (dir, arch, data, plan)
}
