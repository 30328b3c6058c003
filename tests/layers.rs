//! The crates and layers depend one way. Cargo already refuses a crate that uses one it does
//! not depend on; these tests refuse the dependencies that would let a wrong edge compile, and
//! the imports that point up a layer inside the server. See: issue 15.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The names in a crate's `[dependencies]` (not its dev-dependencies).
fn dependencies(krate: &str) -> Vec<String> {
    let text = std::fs::read_to_string(root().join("crates").join(krate).join("Cargo.toml")).unwrap();
    let manifest: toml::Table = toml::from_str(&text).unwrap();
    manifest["dependencies"].as_table().unwrap().keys().cloned().collect()
}

fn refuses(krate: &str, forbidden: &[&str]) {
    let deps = dependencies(krate);
    assert!(!deps.is_empty(), "{krate} has no [dependencies]");
    let wrong: Vec<&String> = deps.iter().filter(|d| forbidden.iter().any(|f| d.starts_with(f))).collect();
    assert!(wrong.is_empty(), "{krate} depends on {wrong:?}");
}

#[test]
fn the_model_package_depends_on_neither_an_http_stack_nor_a_trainer() {
    refuses("model", &["axum", "hyper", "tokio", "candle", "arrow", "parquet", "retort-"]);
}

#[test]
fn the_server_does_not_link_the_trainer() {
    // Arrow and Parquet reach it through retort-log only: the impression log's format is the
    // log crate's alone.
    refuses("server", &["candle", "arrow", "parquet", "retort-sidecar"]);
}

#[test]
fn the_log_crate_depends_on_neither_an_http_stack_nor_a_trainer() {
    refuses("log", &["axum", "hyper", "tokio", "candle", "retort-server", "retort-sidecar"]);
}

#[test]
fn the_sidecar_reaches_the_server_only_through_model_packages_and_http() {
    refuses("sidecar", &["retort-server", "axum"]);
}

/// Every `.rs` file under `dir`, with its text up to its tests (`#[cfg(test)]`), which may
/// build what they need from any layer.
fn sources(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                let code = text.split("#[cfg(test)]").next().unwrap().to_string();
                out.push((path, code));
            }
        }
    }
    out
}

/// The server's layers, lowest first: each may use those before it, never those after.
/// `config` gathers every lower layer's settings; `http` starts them all from it.
const LAYERS: &[&str] = &["admission", "rollout", "config", "http"];

/// The sidecar's folders, lowest first: data is read by the labeller, whose files the trainer
/// reads; evaluation scores what training made; a release trains, evaluates and publishes;
/// experiments compare releases; the teacher search runs experiments. (`progress` serves all.)
const SIDECAR_LAYERS: &[&str] =
    &["data", "join", "label", "train", "eval", "release", "experiments", "search"];

/// The lines of `code` (a file of `layer`) that use a layer above it.
fn upward_imports(layer: &str, code: &str) -> Vec<String> {
    upward_in(LAYERS, layer, code)
}

fn upward_in(layers: &[&str], layer: &str, code: &str) -> Vec<String> {
    let at = layers.iter().position(|l| *l == layer).unwrap();
    let above: Vec<String> = layers[at + 1..].iter().map(|l| format!("crate::{l}")).collect();
    code.lines()
        .enumerate()
        .filter_map(|(n, line)| {
            let edge =
                above.iter().find(|a| line.contains(&format!("{a}::")) || line.contains(&format!("{a};")))?;
            Some(format!("{}: {layer} uses {edge}", n + 1))
        })
        .collect()
}

#[test]
fn no_server_module_imports_from_a_layer_above_it() {
    let src = root().join("crates/server/src");
    let mut failures = Vec::new();
    for layer in LAYERS {
        let dir = src.join(layer);
        let files = if dir.is_dir() { sources(&dir) } else { sources_of(&src.join(format!("{layer}.rs"))) };
        assert!(!files.is_empty(), "no sources in {layer}");
        for (path, code) in files {
            failures
                .extend(upward_imports(layer, &code).into_iter().map(|f| format!("{}:{f}", path.display())));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn no_sidecar_folder_imports_from_one_above_it() {
    let src = root().join("crates/sidecar/src");
    let mut failures = Vec::new();
    for layer in SIDECAR_LAYERS {
        let files = sources(&src.join(layer));
        assert!(!files.is_empty(), "no sources in {layer}");
        for (path, code) in files {
            let found = upward_in(SIDECAR_LAYERS, layer, &code);
            failures.extend(found.into_iter().map(|f| format!("{}:{f}", path.display())));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn sources_of(file: &Path) -> Vec<(PathBuf, String)> {
    let text = std::fs::read_to_string(file).unwrap();
    vec![(file.to_path_buf(), text.split("#[cfg(test)]").next().unwrap().to_string())]
}

#[test]
fn the_layer_check_sees_an_upward_import_and_allows_a_downward_one() {
    let code =
        "use crate::admission::pool::InferencePool;\nuse crate::http::error::ApiError;\nuse crate::config;\n";
    assert_eq!(
        upward_imports("rollout", code),
        ["2: rollout uses crate::http", "3: rollout uses crate::config"]
    );
    assert!(upward_imports("http", code).is_empty());
    assert_eq!(upward_imports("admission", "x(crate::rollout::Routes)").len(), 1);
}
