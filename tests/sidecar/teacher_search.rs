//! `retort teacher-search` end to end on a small demo world: successive halving over real
//! teachers and proxy students, training shared along trajectories, labels computed once per
//! teacher, a rerun that reuses everything, the winner's holdout measurement and its files.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use retort_sidecar::data::demo::{self, DemoConfig, Domain};
use retort_sidecar::data::mapping::Mapping;
use retort_sidecar::data::spec::DataSpec;
use retort_sidecar::release::run::RunConfig;
use retort_sidecar::search::report as search_report;
use retort_sidecar::search::teacher::{Inputs, SearchFile, SearchReport, search};
use retort_sidecar::train::fit::TrainError;
use retort_sidecar::train::kd::Mode;

const SEARCH: &str = r#"
[search]
budget_s = 600
eta = 2
rungs = 2
proxy_seeds = 2
final_seeds = 3
teacher_batch_size = 256

[space]
embedding_dim = [8, 16]
towers = [[32]]
interaction = [[32]]
mask_probability = [0.0, 0.3]
left_out_features = [[], ["video_id", "channel_id", "category"]]
source_tasks = [[], ["click", "like"]]
epochs = [1, 2]
distilled_heads = [["play"], ["play", "like"]]
candidates = 6
seed = 3

[student.train]
epochs = 2

[student.tune]
learning_rates = [0.003, 0.01]
weight_decays = [0.0001]

[student.distill]
temperature = 2.0
[student.distill.tasks.play]
mode = "aux"
beta = 0.5
loss = "tempered"
"#;

struct World {
    _dir: tempfile::TempDir,
    root: PathBuf,
    source_spec: DataSpec,
    target_spec: DataSpec,
    mapping: Mapping,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let config = DemoConfig {
        users: 200,
        days: 4,
        target_requests: 400,
        source_ratio: 10,
        tracks: 300,
        artists: 30,
        videos: 2000,
        channels: 200,
        ..DemoConfig::default()
    };
    demo::generate(&root, &config, &[Domain::Target, Domain::Source]).unwrap();
    World {
        source_spec: DataSpec::from_path(&root.join("source/features.toml")).unwrap(),
        target_spec: DataSpec::from_path(&root.join("target/features.toml")).unwrap(),
        mapping: Mapping::from_path(&root.join("mapping.toml")).unwrap(),
        root,
        _dir: dir,
    }
}

fn run(w: &World, file: &SearchFile, work: &Path, sweep: bool) -> SearchReport {
    try_run(w, file, work, sweep).unwrap()
}

fn try_run(w: &World, file: &SearchFile, work: &Path, sweep: bool) -> Result<SearchReport, TrainError> {
    let source = w.root.join("source");
    let target = w.root.join("target");
    let inputs = Inputs {
        source: &source,
        source_spec: &w.source_spec,
        target: &target,
        target_spec: &w.target_spec,
        mapping: &w.mapping,
        work,
    };
    search(inputs, file, sweep)
}

/// Every teacher package under `work/teachers`, as `name/step`.
fn packages(work: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for t in std::fs::read_dir(work.join("teachers")).unwrap().flatten() {
        for step in std::fs::read_dir(t.path()).unwrap().flatten() {
            let name = step.file_name().to_string_lossy().to_string();
            if !name.starts_with('.') {
                out.insert(format!("{}/{name}", t.file_name().to_string_lossy()));
            }
        }
    }
    out
}

#[test]
fn a_small_search_end_to_end() {
    let w = world();
    let work = w.root.join("work");
    let file: SearchFile = toml::from_str(SEARCH).unwrap();
    let report = run(&w, &file, &work, false);

    // Halving with eta 2 over 6 candidates: 6 at rung 0 (half of each teacher's schedule),
    // the best 3 at rung 1 (all of it), within the budget.
    let at = |r: usize| report.evaluations.iter().filter(|e| e.rung == r).count();
    assert_eq!((at(0), at(1)), (6, 3), "{:#?}", report.schedule.trials);
    assert!(report.schedule.spent_s <= file.search.budget_s);
    let rung0: Vec<_> = report.evaluations.iter().filter(|e| e.rung == 0).collect();
    let mut kept: Vec<_> = rung0.iter().map(|e| (e.gain, e.candidate)).collect();
    kept.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let promoted: BTreeSet<usize> =
        report.evaluations.iter().filter(|e| e.rung == 1).map(|e| e.candidate).collect();
    assert_eq!(promoted, kept[..3].iter().map(|k| k.1).collect(), "the best half goes on");
    for e in &report.evaluations {
        let expected = if e.rung == 0 { 0.5 } else { 1.0 };
        assert!((e.teacher_fraction - expected).abs() < 0.01, "{e:?}");
        assert!(e.teacher_zero_shot_auc > 0.3 && e.teacher_zero_shot_auc < 0.9, "{e:?}");
        assert!(e.gain.is_finite() && e.gain_se >= 0.0, "{e:?}");
    }
    let winner = report.winner.expect("a winner");
    let best_top =
        report.evaluations.iter().filter(|e| e.rung == 1).max_by(|a, b| a.gain.total_cmp(&b.gain)).unwrap();
    assert_eq!(winner, best_top.candidate, "the winner is the best of the top rung");

    // One teacher package per trajectory and step, however many candidates used it; a
    // trajectory's longer run continued from its shorter one.
    let used: BTreeSet<String> = report.evaluations.iter().map(|e| e.teacher.clone()).collect();
    assert_eq!(packages(&work), used);
    for (i, a) in report.candidates.iter().enumerate() {
        for (j, b) in report.candidates.iter().enumerate() {
            let teacher = |c: &retort_sidecar::search::space::Candidate| {
                let mut c = c.clone();
                (c.epochs, c.distilled_heads) = (1, Vec::new());
                c
            };
            assert_eq!(
                report.trajectory[i] == report.trajectory[j],
                teacher(a) == teacher(b),
                "candidates share a trajectory exactly when only their epochs or heads differ: {a:?} {b:?}"
            );
        }
    }
    let split = |teacher: &str| {
        let (name, step) = teacher.split_once('/').unwrap();
        (name.to_string(), step.parse::<usize>().unwrap())
    };
    for a in &report.evaluations {
        for b in &report.evaluations {
            let ((ta, sa), (tb, sb)) = (split(&a.teacher), split(&b.teacher));
            if ta == tb && sa < sb {
                assert!(a.teacher_train_s < b.teacher_train_s, "{} continued from {}", b.teacher, a.teacher);
            }
        }
    }
    let label_dirs = std::fs::read_dir(work.join("labels"))
        .unwrap()
        .flatten()
        .map(|t| std::fs::read_dir(t.path()).unwrap().flatten().count());
    assert_eq!(label_dirs.sum::<usize>(), used.len(), "labels computed once per teacher package");

    // The winner on the holdout, against the tuned and the untuned control.
    assert_eq!(report.holdout.len(), 1);
    let h = &report.holdout[0];
    assert_eq!((h.candidate, h.seeds, h.tasks.len()), (winner, 3, 4));
    assert!(h.gain.is_finite() && h.gain_se > 0.0 && h.gain_untuned.is_finite());
    let distilled: Vec<&str> = h.tasks.iter().filter(|t| t.distilled).map(|t| t.task.as_str()).collect();
    assert_eq!(distilled, report.candidates[winner].distilled_heads);

    // The files: the teacher config trains as the winner's teacher, the student distils its heads.
    let out = w.root.join("report");
    let written = search_report::write(&report, &file.student, &out).unwrap();
    assert_eq!(written.len(), 5);
    let teacher = RunConfig::from_path(&out.join("teacher.toml")).unwrap();
    let c = &report.candidates[winner];
    assert_eq!(teacher.model.embedding_dim, c.embedding_dim);
    assert_eq!(teacher.train.epochs, c.epochs);
    assert_eq!(teacher.train.mask_probability, c.mask_probability);
    let student = RunConfig::from_path(&out.join("student.toml")).unwrap();
    let heads: Vec<&String> = student.distill.tasks.keys().collect();
    let mut expected: Vec<&String> = c.distilled_heads.iter().collect();
    expected.sort();
    assert_eq!(heads, expected);
    assert!(student.distill.tasks.values().all(|d| d.mode == Mode::Aux));
    // See: issue 14 (7, 9): the student's own [distill] settings, read back as written.
    assert_eq!(student.distill, file.student.distill.for_heads(&c.distilled_heads));
    assert_eq!((student.distill.temperature, student.distill.tasks["play"].beta), (2.0, 0.5));
    let text = std::fs::read_to_string(out.join("student.toml")).unwrap();
    let comments: Vec<&str> =
        text.lines().take_while(|l| !l.starts_with('[')).filter(|l| !l.is_empty()).collect();
    assert!(comments.iter().all(|l| l.starts_with("# ")), "{text}");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains(&format!("## Winner: candidate {winner}")), "{md}");
    assert!(md.contains("Teacher accuracy against student gain"), "{md}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["winner"], winner);
    assert_eq!(json["disagreement"].as_array().unwrap().len(), 2);
    let svg = std::fs::read_to_string(out.join("report.svg")).unwrap();
    assert_eq!(svg.matches("<circle").count(), 2 * 6, "each candidate in both panels");

    // A rerun reuses every teacher and label and finds the same: nothing is trained twice.
    let before = packages(&work);
    let again = run(&w, &file, &work, false);
    assert_eq!(packages(&work), before);
    let found = |r: &SearchReport| -> Vec<(usize, usize, f64, f64)> {
        let mut v: Vec<_> =
            r.evaluations.iter().map(|e| (e.candidate, e.rung, e.gain, e.teacher_train_s)).collect();
        v.sort_by_key(|e| (e.0, e.1));
        v
    };
    assert_eq!(found(&again), found(&report), "the same teachers, labels and students");
    assert_eq!(again.winner, report.winner);
}

#[test]
fn teachers_trained_on_other_source_data_are_not_reused() {
    let w = world();
    let work = w.root.join("work");
    let mut file: SearchFile = toml::from_str(SEARCH).unwrap();
    (file.search.rungs, file.space.candidates) = (1, 2);
    let first = run(&w, &file, &work, false);
    // The same search after the source lost its first day: every teacher is trained anew.
    std::fs::remove_file(w.root.join("source/day-000.parquet")).unwrap();
    let second = run(&w, &file, &work, false);
    assert!(second.rows_source_train < first.rows_source_train);
    for t in &second.trajectory {
        assert!(!first.trajectory.contains(t), "{t} was trained on other data");
    }
    assert_eq!(packages(&work).len(), 2 * first.evaluations.len());
}

/// [`SEARCH`] with one teacher shape: only its epochs and distilled heads vary.
fn narrow_search() -> SearchFile {
    let mut file: SearchFile = toml::from_str(SEARCH).unwrap();
    file.space.embedding_dim = vec![8];
    file.space.mask_probability = vec![0.0];
    file.space.left_out_features = vec![vec![]];
    file.space.source_tasks = vec![vec![]];
    file
}

#[test]
fn a_sweep_evaluates_every_point_with_whole_teachers() {
    let w = world();
    let work = w.root.join("work");
    let file = narrow_search();
    let report = run(&w, &file, &work, true);
    assert_eq!(report.candidates.len(), 4);
    assert_eq!(report.evaluations.len(), 4);
    assert!(report.evaluations.iter().all(|e| e.rung == 0 && (e.teacher_fraction - 1.0).abs() < 1e-9));
    assert_eq!(report.holdout.len(), 4, "every point measured on the holdout");
    // One trajectory: the two-epoch teachers continue the one-epoch teacher.
    assert_eq!(packages(&work).len(), 2);
    let md = report.markdown();
    assert!(md.contains("Brute-force sweep") && md.contains("## Holdout gains"), "{md}");
    // Teacher accuracy against the proxies' gain and against the holdout's, both accuracies.
    let judged: Vec<String> = report.disagreements().iter().map(|d| d.accuracy.clone()).collect();
    assert_eq!(judged.len(), 4, "{judged:?}");
    assert!(judged.iter().any(|j| j.ends_with("against holdout gain")), "{judged:?}");
}

/// With `student.train.patience`, the control's best epoch on the validation days is every
/// proxy student's number of epochs.
#[test]
fn proxy_students_stop_at_the_controls_best_epoch() {
    let w = world();
    let work = w.root.join("work");
    let mut file = narrow_search();
    file.space.epochs = vec![1];
    file.space.distilled_heads = vec![vec!["play".into()]];
    (file.student.train.epochs, file.student.train.patience) = (4, 1);
    let report = run(&w, &file, &work, true);
    assert!((1..=4).contains(&report.control_epochs), "{}", report.control_epochs);
    assert!(!report.evaluations.is_empty());
    assert!(report.evaluations.iter().all(|e| e.epochs == report.control_epochs), "{:?}", report.evaluations);
    assert!(report.markdown().contains(&format!("{} epoch(s))", report.control_epochs)));

    file.student.tune.epochs = vec![1, 2];
    let err = try_run(&w, &file, &w.root.join("work2"), true).err().unwrap().to_string();
    assert!(err.contains("train.patience and tune.epochs"), "{err}");
}

#[test]
fn a_bad_search_file_is_named() {
    let bad = SEARCH.replace("learning_rates = [0.003, 0.01]", "learning_rates = []");
    let file: SearchFile = toml::from_str(&bad).unwrap();
    assert!(file.validate().unwrap_err().contains("student.tune"));
    let bad = SEARCH.replace("eta = 2", "eta = 1");
    assert!(toml::from_str::<SearchFile>(&bad).unwrap().validate().unwrap_err().contains("eta"));
    let bad = SEARCH.replace("[[\"play\"], [\"play\", \"like\"]]", "[[\"play\"], [\"dance\"]]");
    let w = world();
    let file: SearchFile = toml::from_str(&bad).unwrap();
    let work = w.root.join("work");
    let err = try_run(&w, &file, &work, false).unwrap_err().to_string();
    assert!(err.contains("`dance`"), "{err}");
    assert!(!work.join("teachers").exists(), "refused before any teacher trained");
}
