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
    std::fs::write(
        &lenient,
        "[train]\nepochs = 1\nlearning_rate = 0.00001\nseed = 2\n[publish]\ntolerance = 0.5\n",
    )
    .unwrap();
    let passed =
        retort(&["train", "--data", &data, "--config", &s(&lenient), "--models", &s(&models), "--name", "m"]);
    assert!(passed.status.success(), "{}", text(&passed));
    assert!(text(&passed).contains("against m/2") && text(&passed).contains("passed"), "{}", text(&passed));
    assert!(models.join("m/3").is_dir());

    // See: issue 14 (6). The same training again is the same package: not a new version.
    let again =
        retort(&["train", "--data", &data, "--config", &s(&lenient), "--models", &s(&models), "--name", "m"]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(text(&again).contains("not published again: identical to"), "{}", text(&again));
    assert!(!models.join("m/4").exists());
}

/// A demo world of `days` days, and a stream directory holding its spec and its first `first`
/// partitions (more are added as the test goes).
fn stream_world(root: &Path, days: u32, first: usize) -> (std::path::PathBuf, std::path::PathBuf) {
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let world = root.join("world");
    let out = retort(&[
        "demo-data",
        "--out",
        &s(&world),
        "--domains",
        "target",
        "--users",
        "300",
        "--target-requests",
        "700",
        "--days",
        &days.to_string(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let stream = root.join("stream");
    std::fs::create_dir_all(&stream).unwrap();
    std::fs::copy(world.join("target/features.toml"), stream.join("features.toml")).unwrap();
    for d in 0..first {
        land(&world, &stream, d);
    }
    (world, stream)
}

/// Day `d`'s partition arrives in the stream, written aside and renamed as a producer would.
fn land(world: &Path, stream: &Path, d: usize) {
    let name = format!("day-{d:03}.parquet");
    std::fs::copy(world.join("target").join(&name), stream.join(format!(".{name}.tmp"))).unwrap();
    std::fs::rename(stream.join(format!(".{name}.tmp")), stream.join(&name)).unwrap();
}

fn checkpoint(dir: &Path) -> retort_sidecar::train::checkpoint::Checkpoint {
    retort_sidecar::train::checkpoint::Checkpoint::read(
        &dir.join(retort_sidecar::train::checkpoint::CHECKPOINT),
    )
    .unwrap()
}

#[test]
fn a_warm_start_continues_the_checkpoint_on_newer_rows_only() {
    let tmp = tempfile::tempdir().unwrap();
    let (world, stream) = stream_world(tmp.path(), 5, 3);
    let models = tmp.path().join("models");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let train = |extra: &[&str]| {
        let mut args =
            vec!["train", "--data", stream.to_str().unwrap(), "--models", models.to_str().unwrap()];
        args.extend(["--name", "m"]);
        args.extend(extra);
        retort(&args)
    };
    assert!(train(&[]).status.success());
    let first = checkpoint(&models.join("m/1"));
    // Trained on days 0 and 1 (day 2 held out): up to the end of day 1.
    let day = |d: i64| retort_sidecar::data::demo::EPOCH + d * 86_400;
    assert!(first.trained_through >= day(1) && first.trained_through < day(2), "{}", first.trained_through);

    // No new partition: nothing to train on.
    let idle = train(&["--warm-start"]);
    assert!(!idle.status.success() && text(&idle).contains("nothing to train on"), "{}", text(&idle));

    land(&world, &stream, 3);
    let warm = train(&["--warm-start", "--force"]);
    let said = text(&warm);
    assert!(warm.status.success(), "{said}");
    assert!(said.contains("warm start: continued from m/1"), "{said}");
    let second = checkpoint(&models.join("m/2"));
    // Only day 2 (the old holdout) was new; the optimiser went on counting its steps.
    assert!(second.trained_through >= day(2) && second.trained_through < day(3));
    let rows: usize = said
        .lines()
        .find_map(|l| l.strip_prefix("trained on "))
        .and_then(|l| l.split(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    let steps_per_epoch = rows.div_ceil(512) as u64;
    assert_eq!(
        second.optimizer.step,
        first.optimizer.step + 3 * steps_per_epoch,
        "3 epochs over {rows} rows"
    );
    assert_ne!(second.params, first.params);
    let manifest = std::fs::read_to_string(models.join("m/2/manifest.toml")).unwrap();
    assert!(manifest.contains("continued from m/1"), "{manifest}");

    // A different architecture cannot continue this checkpoint.
    let wider = tmp.path().join("wider.toml");
    std::fs::write(&wider, "[model]\nembedding_dim = 8\n").unwrap();
    land(&world, &stream, 4);
    let refused = train(&["--warm-start", "--config", &s(&wider)]);
    assert!(text(&refused).contains("another architecture"), "{}", text(&refused));
}

#[test]
fn follow_trains_and_publishes_as_partitions_land() {
    use std::io::{BufRead, BufReader};
    use std::time::{Duration, Instant};
    let tmp = tempfile::tempdir().unwrap();
    let (world, stream) = stream_world(tmp.path(), 5, 3);
    let models = tmp.path().join("models");
    // Every round publishes: this test is about the loop, not the gate.
    let config = tmp.path().join("lenient.toml");
    std::fs::write(&config, "[publish]\ntolerance = 1.0\n").unwrap();
    let mut child = Command::new(BIN)
        .args(["train", "--data", stream.to_str().unwrap(), "--models", models.to_str().unwrap()])
        .args(["--name", "m", "--follow", "--warm-start", "--poll-ms", "100"])
        .args(["--config", config.to_str().unwrap()])
        .env("RUST_BACKTRACE", "0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let wait_for = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                let hit = line.contains(what);
                seen.push(line);
                if hit {
                    return seen;
                }
            }
        }
        panic!("no `{what}` within 60 s: {seen:#?}");
    };
    // The first round trains from scratch on what is there.
    wait_for("published");
    assert!(models.join("m/1").is_dir());
    land(&world, &stream, 3);
    let round = wait_for("published");
    assert!(round.iter().any(|l| l.contains("new partitions: day-003.parquet")), "{round:#?}");
    assert!(round.iter().any(|l| l.contains("warm start: continued from m/1")), "{round:#?}");
    land(&world, &stream, 4);
    let round = wait_for("published");
    assert!(round.iter().any(|l| l.contains("continued from m/2")), "{round:#?}");
    assert!(models.join("m/3").is_dir());

    let kill = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "retort train --follow did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}
