//! The `retort` binary as an operator runs it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_retort");

#[test]
fn every_verb_has_help() {
    for verb in [&["--help"][..], &["serve", "--help"], &["init-model", "--help"]] {
        let out = Command::new(BIN).args(verb).output().unwrap();
        assert!(out.status.success(), "{verb:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"), "{verb:?}");
    }
    let serve =
        String::from_utf8(Command::new(BIN).args(["serve", "--help"]).output().unwrap().stdout).unwrap();
    for flag in ["--models", "--listen", "--engine", "--max-candidates", "--max-body-bytes", "--config"] {
        assert!(serve.contains(flag), "serve --help lacks {flag}");
    }
    // See: issue 14 (6): quickstart --serve took none of the server's settings.
    let quickstart =
        String::from_utf8(Command::new(BIN).args(["quickstart", "--help"]).output().unwrap().stdout).unwrap();
    for serve_line in serve.lines().filter(|l| l.trim_start().starts_with("--") || l.contains("[env: ")) {
        assert!(quickstart.contains(serve_line.trim()), "quickstart --help lacks `{}`", serve_line.trim());
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[test]
fn serve_answers_then_exits_cleanly_on_sigterm() {
    let port = free_port();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut ready = false;
    while Instant::now() < deadline {
        if http_get(port, "/readyz").is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
            ready = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ready, "retort serve did not become ready");
    let kill = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "retort serve did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");
    let log: Vec<String> =
        BufReader::new(child.stderr.take().unwrap()).lines().map_while(Result::ok).collect();
    assert!(log.iter().any(|l| l.contains("SIGTERM")), "{log:?}");
}

#[test]
fn serve_fails_fast_on_a_missing_models_directory() {
    let out = Command::new(BIN)
        .args(["serve", "--models", "/nonexistent/retort-models", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/retort-models"), "{err}");
    // See: issue 14 (13): one line per error, each sentence once.
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
}

// See: issue 14 (5, 13): a per-model setting naming no served model is warned about at start,
// and logs written to a pipe carry no colour codes.
#[test]
fn settings_naming_an_unserved_model_are_warned_about_in_plain_logs() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("retort.toml");
    std::fs::write(
        &config,
        "[model_budgets_ms]
music-rankr = 20.0
[degradation.models]
music-ranker = [\"shed\"]
",
    )
    .unwrap();
    let port = free_port();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--config"])
        .arg(&config)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("RUST_LOG", "info")
        .env("RETORT_PERSIST_WARMUP", "false")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !http_get(port, "/readyz").is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
        assert!(Instant::now() < deadline, "retort serve did not become ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    child.wait().unwrap();
    let mut log = String::new();
    child.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    let warnings: Vec<&str> =
        log.lines().filter(|l| l.contains("names a model that is not served")).collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(warnings[0].contains("models") && warnings[0].contains("music-rankr"), "{log}");
    // The old per-model tables still work, with a warning naming the new place.
    let deprecated: Vec<&str> = log.lines().filter(|l| l.contains("is deprecated")).collect();
    assert_eq!(deprecated.len(), 2, "{log}");
    assert!(deprecated.iter().any(|l| l.contains("[models.music-rankr]")), "{log}");
    assert!(!log.contains('\x1b'), "colour codes in a piped log: {log:?}");
}

fn http_post(port: u16, path: &str, body: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// The value of a Prometheus series in a `/metrics` answer (0 when absent).
fn series(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

// See: issue 18 (1): a killed server leaves no half partition and loses at most what it counted
// as in flight.
#[test]
fn a_killed_server_leaves_only_whole_impression_partitions() {
    let port = free_port();
    let logs = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--persist-warmup", "false"])
        .args(["--impressions-dir", logs.path().to_str().unwrap(), "--impression-rotate-secs", "1"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline
        && !http_get(port, "/readyz").is_some_and(|r| r.starts_with("HTTP/1.1 200"))
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let rank = |n: usize| {
        let body = format!(
            r#"{{"request_id": "k{n}", "context": {{"user_id": "u{n}"}}, "candidates": ["t1", "t2", "t3"]}}"#
        );
        let answer = http_post(port, "/v1/rank", &body).expect("the server answers");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    };
    for n in 0..20 {
        rank(n);
    }
    // A partition completes a second after its first row; then more rows open the next.
    let written = || {
        series(
            &http_get(port, "/metrics").unwrap_or_default(),
            "retort_impression_rows_total{fate=\"written\"}",
        )
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && written() < 60 {
        std::thread::sleep(Duration::from_millis(50));
    }
    for n in 20..30 {
        rank(n);
    }
    let metrics = http_get(port, "/metrics").unwrap();
    let queued = series(&metrics, "retort_impression_rows_total{fate=\"offered\"}");
    let written = series(&metrics, "retort_impression_rows_total{fate=\"written\"}");
    assert_eq!(queued, 90, "three rows for each of 30 answers");
    assert!(written >= 60, "the first 20 answers' partitions were complete: {written}");
    Command::new("kill").args(["-KILL", &child.id().to_string()]).status().unwrap();
    child.wait().unwrap();

    let parts = retort_log::partition::list(logs.path(), "impressions").unwrap();
    let rows: Vec<_> = parts.iter().flat_map(|p| retort_log::impression::read(&p.path).unwrap()).collect();
    let found = rows.len() as u64;
    assert!(
        written <= found && found <= queued,
        "{written} written before the kill, {found} found, {queued} queued"
    );
    let ids: std::collections::BTreeSet<&str> = rows.iter().map(|r| r.request_id.as_str()).collect();
    assert!(ids.iter().all(|id| (0..30).any(|n| *id == format!("k{n}"))), "{ids:?}");
    assert!(rows.iter().all(|r| r.context.contains(&format!("\"{}\"", r.request_id.replace('k', "u")))));
    // Whatever the kill left half-written is removed by the next writer, and lists as nothing.
    let log = retort_log::Log::<retort_log::Impression>::start(retort_log::Settings {
        dir: logs.path().to_path_buf(),
        queue_rows: 1,
        rotate_rows: 1,
        rotate_after: Duration::from_secs(1),
    })
    .unwrap();
    log.close();
    let unfinished = walk(logs.path()).into_iter().filter(|p| p.to_string_lossy().ends_with(".tmp")).count();
    assert_eq!(unfinished, 0);
    assert_eq!(retort_log::partition::list(logs.path(), "impressions").unwrap(), parts);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
