//! `retort train` publishes through a gate: a new version worse than the serving one on the same
//! holdout is refused (and not written) unless `--force`.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_retort");

fn retort(args: &[&str]) -> Output {
    Command::new(BIN).args(args).env("RUST_BACKTRACE", "0").output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn metric(manifest: &Path, key: &str) -> f64 {
    let m: toml::Value = toml::from_str(&std::fs::read_to_string(manifest).unwrap()).unwrap();
    m["provenance"]["metrics"][key].as_float().unwrap()
}

#[test]
fn a_worse_student_is_refused_unless_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let (world, models) = (tmp.path().join("world"), tmp.path().join("models"));
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let out = retort(&[
        "demo-data",
        "--out",
        &s(&world),
        "--domains",
        "target",
        "--users",
        "300",
        "--target-requests",
        "600",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let data = s(&world.join("target"));

    let first = retort(&["train", "--data", &data, "--models", &s(&models), "--name", "m"]);
    assert!(first.status.success(), "{}", text(&first));
    assert!(text(&first).contains("no version is serving yet"), "{}", text(&first));

    // Barely trained: worse than version 1 on the same holdout.
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "[train]\nepochs = 1\nlearning_rate = 0.00001\n").unwrap();
    let refused =
        retort(&["train", "--data", &data, "--config", &s(&bad), "--models", &s(&models), "--name", "m"]);
    let said = text(&refused);
    assert!(!refused.status.success(), "{said}");
    assert!(
        said.contains("against m/1") && said.contains("not published") && said.contains("--force"),
        "{said}"
    );
    assert!(!models.join("m/2").exists(), "a refused version is not written");
    // The gate scored version 1 through its package on the same holdout rows it was evaluated on.
    let play = said.lines().find(|l| l.starts_with("| play | ") && l.matches('|').count() == 5).unwrap();
    let serving: f64 = play.split('|').nth(3).unwrap().trim().parse().unwrap();
    assert!((serving - metric(&models.join("m/1/manifest.toml"), "play_auc")).abs() < 1e-3, "{play}");

    let forced = retort(&[
        "train",
        "--data",
        &data,
        "--config",
        &s(&bad),
        "--models",
        &s(&models),
        "--name",
        "m",
        "--force",
    ]);
    assert!(forced.status.success(), "{}", text(&forced));
    assert!(models.join("m/2/manifest.toml").is_file());

    // A tolerance wide enough lets the next one through; it is judged against version 2 now.
    let lenient = tmp.path().join("lenient.toml");
    std::fs::write(&lenient, "[train]\nepochs = 1\nlearning_rate = 0.00001\n[publish]\ntolerance = 0.5\n")
        .unwrap();
    let passed =
        retort(&["train", "--data", &data, "--config", &s(&lenient), "--models", &s(&models), "--name", "m"]);
    assert!(passed.status.success(), "{}", text(&passed));
    assert!(text(&passed).contains("against m/2") && text(&passed).contains("passed"), "{}", text(&passed));
    assert!(models.join("m/3").is_dir());
}
