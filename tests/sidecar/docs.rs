//! The documentation runs: every TOML block in README.md and docs/ parses as the file it shows
//! (with every key known), every `retort` command names a verb and flags that exist, the
//! blocks marked `<!-- test: run -->` run as written, and the README's sample response is what
//! the shipped model answers. See: issue 14 (11).

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use retort_model::manifest::Manifest;
use retort_server::config::Config;
use retort_sidecar::data::mapping::Mapping;
use retort_sidecar::data::spec::DataSpec;
use retort_sidecar::join::config::JoinConfig;
use retort_sidecar::release::run::RunConfig;
use retort_sidecar::search::teacher::SearchFile;

const BIN: &str = env!("CARGO_BIN_EXE_retort");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md, loadtest/README.md and every page of docs/.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![root().join("README.md"), root().join("loadtest/README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// A fenced block: its page, the line it starts on, its language, the marker comment on the
/// line before the fence (if any) and its text.
struct Block {
    page: PathBuf,
    line: usize,
    lang: String,
    marker: Option<String>,
    text: String,
}

impl Block {
    fn place(&self) -> String {
        format!("{}:{}", self.page.strip_prefix(root()).unwrap_or(&self.page).display(), self.line)
    }
}

fn blocks(page: &Path) -> Vec<Block> {
    let text = std::fs::read_to_string(page).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if let Some(lang) = lines[i].strip_prefix("```").filter(|l| !l.is_empty()) {
            let marker = i
                .checked_sub(1)
                .map(|j| lines[j].trim())
                .and_then(|l| l.strip_prefix("<!-- test:"))
                .and_then(|l| l.strip_suffix("-->"))
                .map(|l| l.trim().to_string());
            let start = i + 1;
            let mut end = start;
            while end < lines.len() && !lines[end].starts_with("```") {
                end += 1;
            }
            out.push(Block {
                page: page.to_path_buf(),
                line: start,
                lang: lang.trim().to_string(),
                marker,
                text: lines[start..end].join("\n") + "\n",
            });
            i = end;
        }
        i += 1;
    }
    out
}

fn all_blocks(lang: &str) -> Vec<Block> {
    pages().iter().flat_map(|p| blocks(p)).filter(|b| b.lang == lang).collect()
}

/// Which file a TOML text is, by parsing it as each: `None` when none takes it, with why.
fn parses_as(text: &str) -> Result<&'static str, String> {
    let mut why = Vec::new();
    macro_rules! attempt {
        ($name:literal, $t:ty) => {
            match toml::from_str::<$t>(text) {
                Ok(_) => return Ok($name),
                Err(e) => why.push(format!("as {}: {}", $name, e.message())),
            }
        };
    }
    // Through `Config::parse`: the sections are flattened, so `toml::from_str` alone would
    // take an unknown key without a word.
    match Config::parse(text, "the block") {
        Ok(_) => return Ok("a server config"),
        Err(e) => why.push(format!("as a server config: {e}")),
    }
    attempt!("a training config", RunConfig);
    attempt!("a feature spec", DataSpec);
    attempt!("a mapping", Mapping);
    attempt!("a manifest", Manifest);
    attempt!("a teacher-search file", SearchFile);
    attempt!("a join config", JoinConfig);
    Err(why.join("; "))
}

#[test]
fn every_toml_block_and_shipped_config_parses_as_what_it_shows() {
    let mut failures = Vec::new();
    let blocks = all_blocks("toml");
    assert!(blocks.len() >= 7, "found only {} TOML blocks", blocks.len());
    for b in &blocks {
        if let Err(why) = parses_as(&b.text) {
            failures.push(format!("{}: {why}", b.place()));
        }
    }
    for entry in std::fs::read_dir(root().join("docs/configs")).unwrap() {
        let path = entry.unwrap().path();
        if let Err(why) = parses_as(&std::fs::read_to_string(&path).unwrap()) {
            failures.push(format!("{}: {why}", path.display()));
        }
    }
    assert!(failures.is_empty(), "TOML in the docs that retort does not read:\n{}", failures.join("\n"));
}

/// Each `retort <verb> --flag …` (or `cargo run … -- <verb> …`) in a shell block, with the line
/// continuations joined: (verb, flags).
fn commands(text: &str) -> Vec<(String, Vec<String>)> {
    let joined = text.replace("\\\n", " ");
    let mut out = Vec::new();
    for line in joined.lines() {
        let line = line.split(" #").next().unwrap_or("").trim();
        for part in line.split(['&', ';', '|']) {
            let words: Vec<&str> = part.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "retort" || w.ends_with("/retort"));
            let at = at.or_else(|| {
                (words.first() == Some(&"cargo")).then(|| words.iter().position(|w| *w == "--"))?
            });
            let Some(at) = at else { continue };
            let Some(verb) = words.get(at + 1).filter(|v| !v.starts_with('-')) else { continue };
            let flags = words[at + 2..]
                .iter()
                .map(|w| w.trim_start_matches('['))
                .filter(|w| w.starts_with("--"))
                .map(|w| w.split(['=', ']']).next().unwrap().to_string())
                .collect();
            out.push((verb.to_string(), flags));
        }
    }
    out
}

#[test]
fn every_retort_command_in_the_docs_names_a_verb_and_flags_that_exist() {
    let mut failures = Vec::new();
    let mut seen = 0;
    for b in all_blocks("sh") {
        for (verb, flags) in commands(&b.text) {
            seen += 1;
            let help = Command::new(BIN).args([verb.as_str(), "--help"]).output().unwrap();
            if !help.status.success() {
                failures.push(format!("{}: `retort {verb}` is not a verb", b.place()));
                continue;
            }
            let help = String::from_utf8_lossy(&help.stdout);
            for flag in flags {
                if !help.contains(&format!("{flag} ")) && !help.contains(&format!("{flag}\n")) {
                    failures.push(format!("{}: `retort {verb}` has no {flag}", b.place()));
                }
            }
        }
    }
    assert!(seen >= 15, "found only {seen} commands");
    assert!(failures.is_empty(), "commands in the docs that would fail:\n{}", failures.join("\n"));
}

#[test]
fn the_blocks_marked_to_run_run_as_written() {
    let runnable: Vec<Block> =
        all_blocks("sh").into_iter().filter(|b| b.marker.as_deref() == Some("run")).collect();
    assert!(!runnable.is_empty(), "no block is marked `<!-- test: run -->`");
    // `retort` is the binary under test; the blocks run from a scratch checkout-like directory.
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    for b in runnable {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("bash")
            .args(["-euo", "pipefail", "-c", &b.text])
            .current_dir(dir.path())
            .env("PATH", &path)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} failed:\n{}\n{}",
            b.place(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The README's rank request (the JSON in its `curl` block) and its sample response.
fn readme_example() -> (serde_json::Value, serde_json::Value) {
    let readme = blocks(&root().join("README.md"));
    let curl = readme.iter().find(|b| b.lang == "sh" && b.text.contains("/v1/rank")).expect("a curl example");
    let body = curl.text.split("-d '").nth(1).and_then(|t| t.split('\'').next()).expect("a -d '…' body");
    let response = readme.iter().find(|b| b.lang == "json").expect("a sample response");
    (serde_json::from_str(body).unwrap(), serde_json::from_str(&response.text).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_sample_response_is_what_the_shipped_model_answers() {
    let (request, sample) = readme_example();
    let mut config = Config::serving(common::shipped_models());
    config.rollout.persist_warmup = false;
    let server = common::TestServer::start(config).await;
    let r = server.rank(&request).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let got = r.json();
    for key in ["request_id", "model", "version", "degraded"] {
        assert_eq!(got[key], sample[key], "`{key}`");
    }
    let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&got), keys(&sample), "the response's fields");
    assert_eq!(keys(&got["timing_us"]), keys(&sample["timing_us"]), "the timing stages");
    let (items, shown) = (got["items"].as_array().unwrap(), sample["items"].as_array().unwrap());
    assert_eq!(items.len(), shown.len());
    let close = |a: &serde_json::Value, b: &serde_json::Value| {
        (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 0.0015
    };
    for (item, shown) in items.iter().zip(shown) {
        assert_eq!(item["id"], shown["id"]);
        assert!(close(&item["score"], &shown["score"]), "README shows {shown}, the model answers {item}");
        assert_eq!(keys(&item["heads"]), keys(&shown["heads"]));
        for head in keys(&shown["heads"]) {
            assert!(
                close(&item["heads"][&head], &shown["heads"][&head]),
                "README shows {shown}, the model answers {item}"
            );
        }
    }
    server.stop().await.unwrap();
}

#[test]
fn command_extraction_reads_continuations_placeholders_and_cargo_run() {
    let text = "retort train --data DATA [--config run.toml] \\\n    --models m   # a comment --not-a-flag\n\
                cargo run --release -- quickstart [--models models] [--serve]\n\
                retort label --data a --follow & retort train --name x\n";
    let got = commands(text);
    assert_eq!(got[0], ("train".to_string(), vec!["--data".into(), "--config".into(), "--models".into()]));
    assert_eq!(got[1], ("quickstart".to_string(), vec!["--models".into(), "--serve".into()]));
    assert_eq!(got[2].0, "label");
    assert_eq!(got[3], ("train".to_string(), vec!["--name".into()]));
}

/// Every file that declares modules (each crate's `lib.rs`, each `mod.rs`) opens with a
/// `# Layout` map listing exactly the modules it declares. See: issue 15 (7).
#[test]
fn every_module_map_lists_exactly_its_modules() {
    let mut failures = Vec::new();
    let mut files = Vec::new();
    let mut dirs = vec![root().join("src")];
    for krate in std::fs::read_dir(root().join("crates")).unwrap() {
        dirs.push(krate.unwrap().path().join("src"));
    }
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.file_name().is_some_and(|n| n == "lib.rs" || n == "mod.rs") {
                files.push(path);
            }
        }
    }
    assert!(files.len() >= 14, "found only {files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let declared: std::collections::BTreeSet<String> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("pub mod ").or_else(|| l.trim().strip_prefix("mod ")))
            .filter_map(|l| l.strip_suffix(';'))
            .map(str::to_string)
            .collect();
        if declared.is_empty() {
            continue;
        }
        let Some(map) = text.split("# Layout").nth(1) else {
            failures.push(format!("{}: no `# Layout` map", file.display()));
            continue;
        };
        let listed: std::collections::BTreeSet<String> = map
            .lines()
            .skip(1)
            .take_while(|l| l.starts_with("//!"))
            .filter_map(|l| l.split("- [`").nth(1))
            .filter_map(|l| l.split('`').next())
            .map(str::to_string)
            .collect();
        for m in declared.difference(&listed) {
            failures.push(format!("{}: module `{m}` is not in the map", file.display()));
        }
        for m in listed.difference(&declared) {
            failures.push(format!("{}: the map lists `{m}`, which is not a module", file.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every source path the documents name (`crates/...`, `src/....rs`) exists, so a moved file
/// cannot leave a document pointing at nothing. See: issue 15.
#[test]
fn every_source_path_the_documents_name_exists() {
    let mut documents =
        vec![root().join("README.md"), root().join("BENCHMARKS.md"), root().join("loadtest/README.md")];
    for entry in std::fs::read_dir(root().join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            documents.push(path);
        }
    }
    let mut failures = Vec::new();
    let mut checked = 0;
    for document in documents {
        let text = std::fs::read_to_string(&document).unwrap();
        for word in text.split(|c: char| c.is_whitespace() || "`()[],;:'\"".contains(c)) {
            let word = word.trim_end_matches('.');
            let named = word.starts_with("crates/") || (word.starts_with("src/") && word.ends_with(".rs"));
            if !named {
                continue;
            }
            checked += 1;
            if !root().join(word).exists() {
                failures.push(format!("{}: {word}", document.display()));
            }
        }
    }
    assert!(checked >= 20, "only {checked} paths found");
    assert!(failures.is_empty(), "named but missing:\n{}", failures.join("\n"));
}
