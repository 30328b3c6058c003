//! `retort train` on data a user got wrong: every fault refused with its file, row and column,
//! quickly, and nothing published from it. See: issue 14 (A, F, 7, 8).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_retort");
const DAY0: i64 = 1_773_100_800; // 2026-03-10

const SPEC: &str = r#"
[[features]]
name = "user_id"
side = "context"
kind = "categorical"
buckets = 64

[[features]]
name = "emb"
side = "item"
kind = "vector"
dim = 3

[[tasks]]
name = "play"
kind = "binary"

[[tasks]]
name = "dwell"
kind = "regression"
"#;

/// One CSV row's label cells, by day and row within the day.
type Labels = dyn Fn(usize, usize) -> (String, String);

/// Three days of `rows_per_day` (the last day `last_day_rows`), vectors as `;`-separated text.
fn world(dir: &Path, rows_per_day: usize, last_day_rows: usize, labels: &Labels) -> PathBuf {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("features.toml"), SPEC).unwrap();
    for day in 0..3 {
        let mut csv = String::from("example_id,request_id,ts,user_id,emb,play,dwell\n");
        let rows = if day == 2 { last_day_rows } else { rows_per_day };
        for i in 0..rows {
            let user = i % 17;
            let taste = (user % 3) as f64 - 1.0;
            let (play, dwell) = labels(day, i);
            csv += &format!(
                "d{day}-{i},r{day}-{},{},u{user},{taste};{:.2};0.5,{play},{dwell}\n",
                i / 10,
                DAY0 + day as i64 * 86_400 + i as i64,
                (i % 5) as f64 / 5.0
            );
        }
        std::fs::write(data.join(format!("day-{day:03}.csv")), csv).unwrap();
    }
    data
}

fn clean(_: usize, i: usize) -> (String, String) {
    (((i % 17).is_multiple_of(3) as u8).to_string(), format!("{}", (i % 7) as f64 / 7.0))
}

/// `retort train` on `data`, killed (and the test failed) if it runs past a minute.
fn train(dir: &Path, data: &Path, config: &str) -> Output {
    let config_path = dir.join("train.toml");
    std::fs::write(&config_path, config).unwrap();
    let models = dir.join("models");
    let mut child = Command::new(BIN)
        .args(["train", "--name", "m", "--data"])
        .arg(data)
        .arg("--config")
        .arg(&config_path)
        .arg("--models")
        .arg(&models)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("retort train still running after 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn published(dir: &Path) -> bool {
    dir.join("models/m/1/manifest.toml").exists()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const CONFIG: &str = "[train]\nepochs = 2\nbatch_size = 64\nmin_holdout_rows = 50\n";

#[test]
fn clean_csv_with_text_vectors_trains_and_publishes() {
    let dir = tempfile::tempdir().unwrap();
    let data = world(dir.path(), 300, 300, &clean);
    let out = train(dir.path(), &data, CONFIG);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(published(dir.path()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("held out 300"), "{stdout}");
}

#[test]
fn a_nan_label_is_refused_naming_file_row_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let nan = |day: usize, i: usize| {
        let (play, dwell) = clean(day, i);
        if (day, i) == (1, 217) { ("NaN".into(), dwell) } else { (play, dwell) }
    };
    let data = world(dir.path(), 300, 300, &nan);
    let out = train(dir.path(), &data, CONFIG);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("day-001.csv") && err.contains("row 217") && err.contains("`play`"), "{err}");
    assert!(err.contains("NaN"), "{err}");
    assert!(!published(dir.path()));
}

#[test]
fn a_binary_label_out_of_range_is_refused() {
    for bad in ["7", "-3"] {
        let dir = tempfile::tempdir().unwrap();
        let labels = |day: usize, i: usize| {
            if (day, i) == (0, 5) { (bad.to_string(), "0".into()) } else { clean(day, i) }
        };
        let data = world(dir.path(), 300, 300, &labels);
        let out = train(dir.path(), &data, CONFIG);
        assert!(!out.status.success(), "label {bad} trained");
        let err = stderr(&out);
        assert!(err.contains("day-000.csv") && err.contains("row 5") && err.contains("binary"), "{err}");
    }
}

#[test]
fn a_bad_vector_cell_names_its_row() {
    let dir = tempfile::tempdir().unwrap();
    let data = world(dir.path(), 300, 300, &clean);
    let path = data.join("day-001.csv");
    let text = std::fs::read_to_string(&path).unwrap().replacen(";0.5,", ";x,", 1);
    std::fs::write(&path, text).unwrap();
    let out = train(dir.path(), &data, CONFIG);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("day-001.csv") && err.contains("`emb`") && err.contains("row 0"), "{err}");
}

#[test]
fn a_tiny_holdout_is_refused_unless_given_explicitly() {
    let dir = tempfile::tempdir().unwrap();
    let data = world(dir.path(), 300, 5, &clean);
    let out = train(dir.path(), &data, "[train]\nepochs = 1\n");
    assert!(!out.status.success(), "trained on a 5-row holdout");
    let err = stderr(&out);
    assert!(err.contains("5 row(s)") && err.contains("min_holdout_rows"), "{err}");
    assert!(!published(dir.path()));

    // The holdout from the second day on: 305 rows.
    let out = train(dir.path(), &data, "[train]\nepochs = 1\nholdout_from = \"2026-03-11\"\n");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("held out 305"));
}

#[test]
fn a_task_with_one_class_in_the_holdout_is_said() {
    let dir = tempfile::tempdir().unwrap();
    let labels = |day: usize, i: usize| if day == 2 { ("0".into(), "0.5".into()) } else { clean(day, i) };
    let data = world(dir.path(), 300, 300, &labels);
    let out = train(dir.path(), &data, CONFIG);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("warning: task `play` has only negatives in the 300 holdout rows"), "{stdout}");
}

#[test]
fn a_diverging_loss_stops_training_naming_the_head() {
    let dir = tempfile::tempdir().unwrap();
    // Finite in f32, but its square is not.
    let labels =
        |day: usize, i: usize| if (day, i) == (0, 3) { ("1".into(), "3e38".into()) } else { clean(day, i) };
    let data = world(dir.path(), 300, 300, &labels);
    let out = train(dir.path(), &data, CONFIG);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("diverged") && err.contains("`dwell`") && err.contains("step"), "{err}");
    assert!(!published(dir.path()));
}
