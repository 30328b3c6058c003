//! Request bodies: from a template (a rank request as JSON, its candidates repeated or cut to
//! the count asked for), or generated from a model package's `manifest.toml`, with values of
//! each feature's kind. A phase cycles through a few dozen distinct bodies so that no cache on
//! the server sees one request over and over.

use std::path::Path;

use hyper::body::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::Error;

/// What every generated request carries besides its candidates.
#[derive(Debug, Clone, Default)]
pub struct Shape {
    pub candidates: usize,
    /// Names the model (`model`), or leaves it to the server's default.
    pub model: Option<String>,
    /// `budget_ms` in the body.
    pub budget_ms: Option<f64>,
    /// Give every candidate a `prior` (for truncated answers).
    pub priors: bool,
    pub top_k: Option<usize>,
    /// Send candidates as ids alone, drawn from these (a catalog's: [`catalog_ids`]), instead
    /// of with generated item features.
    pub ids: Option<Vec<String>>,
}

/// The parts of `manifest.toml` (docs/model-package.md) that say what a request must carry.
#[derive(Debug, Deserialize)]
struct Manifest {
    model: ModelSection,
    features: Vec<Feature>,
}

#[derive(Debug, Deserialize)]
struct ModelSection {
    name: String,
}

#[derive(Debug, Deserialize)]
struct Feature {
    name: String,
    side: String,
    kind: String,
    buckets: Option<u64>,
    mean: Option<f64>,
    std: Option<f64>,
    dim: Option<usize>,
}

/// `count` distinct requests for the model whose manifest is `path`.
pub fn from_manifest(path: &Path, shape: &Shape, count: usize, seed: u64) -> Result<Vec<Bytes>, Error> {
    let bad = |message: String| Error::Input { path: path.display().to_string(), message };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let manifest: Manifest = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if let Some(f) =
        manifest.features.iter().find(|f| !matches!(f.kind.as_str(), "categorical" | "number" | "vector"))
    {
        return Err(bad(format!("feature `{}` has a kind the generator does not know: {}", f.name, f.kind)));
    }
    let mut rng = Rng(seed ^ 0x9e37_79b9_7f4a_7c15);
    let model = shape.model.clone().unwrap_or(manifest.model.name);
    Ok((0..count.max(1))
        .map(|_| {
            let context = features(&manifest.features, "context", &mut rng);
            let picked = shape.ids.as_deref().map(|ids| distinct(ids, shape.candidates, &mut rng));
            let candidates: Vec<Value> = (0..shape.candidates)
                .map(|i| {
                    if let Some(picked) = &picked {
                        return json!(picked[i]);
                    }
                    let mut c = json!({"id": format!("c{i}"), "features": features(&manifest.features, "item", &mut rng)});
                    if shape.priors {
                        c["prior"] = json!(rng.unit());
                    }
                    c
                })
                .collect();
            body(json!({"model": model, "context": context, "candidates": candidates}), shape)
        })
        .collect())
}

/// `n` distinct ids of `ids` (all of them, repeated, when it has fewer), the first ones more
/// often, as popular items are.
fn distinct<'a>(ids: &'a [String], n: usize, rng: &mut Rng) -> Vec<&'a str> {
    if ids.len() <= n {
        return ids.iter().cycle().take(n).map(String::as_str).collect();
    }
    let mut seen = std::collections::HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    // Bounded: past 100 draws per id wanted, take the rest in order.
    for _ in 0..n * 100 {
        if out.len() == n {
            break;
        }
        let k = ((rng.unit().powi(2) * ids.len() as f64) as usize).min(ids.len() - 1);
        if seen.insert(k) {
            out.push(ids[k].as_str());
        }
    }
    out.extend(
        ids.iter()
            .enumerate()
            .filter(|(k, _)| !seen.contains(k))
            .map(|(_, id)| id.as_str())
            .take(n - out.len()),
    );
    out
}

/// The item ids of the whole catalog version in `dir` (`<catalogs>/<name>/<version>/`, laid
/// out as docs/catalog.md says): `catalog.toml`'s item count, then `items.bin`'s ids.
pub fn catalog_ids(dir: &Path) -> Result<Vec<String>, Error> {
    let bad = |message: String| Error::Input { path: dir.display().to_string(), message };
    let text = std::fs::read_to_string(dir.join("catalog.toml")).map_err(|e| bad(e.to_string()))?;
    let manifest: toml::Table = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let about =
        manifest.get("catalog").and_then(|c| c.as_table()).ok_or_else(|| bad("no [catalog]".into()))?;
    if about.contains_key("base") {
        return Err(bad("a delta holds only its own items: give a whole version".into()));
    }
    let items =
        about.get("items").and_then(|v| v.as_integer()).ok_or_else(|| bad("no `items` count".into()))?;
    let bytes = std::fs::read(dir.join("items.bin")).map_err(|e| bad(e.to_string()))?;
    let items = items as usize;
    let offsets_end = 8 + 4 * (items + 1);
    if bytes.len() < offsets_end || &bytes[..5] != b"RTCAT" {
        return Err(bad("items.bin is not a retort catalog".into()));
    }
    let offset = |i: usize| u32::from_le_bytes(bytes[8 + 4 * i..12 + 4 * i].try_into().unwrap()) as usize;
    let text = bytes
        .get(offsets_end..offsets_end + offset(items))
        .ok_or_else(|| bad("items.bin is cut short".into()))?;
    let text = std::str::from_utf8(text).map_err(|e| bad(e.to_string()))?;
    (0..items)
        .map(|i| {
            text.get(offset(i)..offset(i + 1)).map(str::to_string).ok_or_else(|| bad("bad id offsets".into()))
        })
        .collect()
}

/// The template request in `path`, its candidates repeated (or cut) to `shape.candidates`
/// unless that is 0; `budget_ms`, `top_k` and `model` from `shape` override the template's.
pub fn from_template(path: &Path, shape: &Shape) -> Result<Vec<Bytes>, Error> {
    let bad = |message: String| Error::Input { path: path.display().to_string(), message };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let mut request: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let given =
        request["candidates"].as_array().cloned().ok_or_else(|| bad("no `candidates` array".into()))?;
    if given.is_empty() {
        return Err(bad("`candidates` is empty".into()));
    }
    if shape.candidates > 0 {
        let candidates: Vec<Value> = given
            .iter()
            .cycle()
            .take(shape.candidates)
            .enumerate()
            .map(|(i, c)| {
                let mut c = c.clone();
                c["id"] = json!(format!("c{i}"));
                c
            })
            .collect();
        request["candidates"] = Value::Array(candidates);
    }
    if let Some(model) = &shape.model {
        request["model"] = json!(model);
    }
    Ok(vec![body(request, shape)])
}

fn body(mut request: Value, shape: &Shape) -> Bytes {
    if let Some(b) = shape.budget_ms {
        request["budget_ms"] = json!(b);
    }
    if let Some(k) = shape.top_k {
        request["top_k"] = json!(k);
    }
    Bytes::from(serde_json::to_vec(&request).expect("a JSON value serialises"))
}

fn features(all: &[Feature], side: &str, rng: &mut Rng) -> Map<String, Value> {
    all.iter()
        .filter(|f| f.side == side)
        .map(|f| {
            let value = match f.kind.as_str() {
                // Ids skewed towards the small ones, as popularity is.
                "categorical" => {
                    let buckets = f.buckets.unwrap_or(1000).max(2);
                    json!(format!("{}-{}", f.name, (rng.unit().powi(3) * buckets as f64) as u64))
                }
                "number" => {
                    json!(round(
                        f.mean.unwrap_or(0.0) + f.std.unwrap_or(1.0) * (rng.unit() * 2.0 - 1.0) * 1.7
                    ))
                }
                _ => json!(
                    (0..f.dim.unwrap_or(1)).map(|_| round(rng.unit() * 2.0 - 1.0)).collect::<Vec<f64>>()
                ),
            };
            (f.name.clone(), value)
        })
        .collect()
}

/// Four decimals, as a client sends a measurement; seventeen digits would make the body half
/// digits nobody sends.
fn round(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

/// SplitMix64: reproducible request bodies and arrival times from a seed.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"
[model]
name = "m"
version = "1"

[[features]]
name = "user_id"
side = "context"
kind = "categorical"
input = "context_ids"
buckets = 100

[[features]]
name = "duration_s"
side = "item"
kind = "number"
input = "item_dense"
mean = 210.0
std = 60.0

[[features]]
name = "emb"
side = "item"
kind = "vector"
input = "item_dense"
dim = 3
"#;

    #[test]
    fn generates_every_feature_of_its_side_and_kind() {
        let dir = std::env::temp_dir().join(format!("loadtest-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("manifest.toml");
        std::fs::write(&path, MANIFEST).unwrap();
        let shape = Shape { candidates: 5, budget_ms: Some(25.0), priors: true, ..Shape::default() };
        let bodies = from_manifest(&path, &shape, 3, 1).unwrap();
        let ids = catalog_ids(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../catalogs/music/1")).unwrap();
        assert_eq!((ids.len(), ids[0].as_str(), ids[2999].as_str()), (3000, "t0", "t2999"));
        let by_id = Shape { ids: Some(ids), ..shape.clone() };
        for body in from_manifest(&path, &by_id, 3, 1).unwrap() {
            let v: Value = serde_json::from_slice(&body).unwrap();
            let sent: Vec<&str> =
                v["candidates"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
            let unique: std::collections::HashSet<&&str> = sent.iter().collect();
            assert_eq!((sent.len(), unique.len()), (shape.candidates, shape.candidates), "distinct ids");
        }
        assert_eq!(bodies.len(), 3);
        assert_ne!(bodies[0], bodies[1], "distinct requests");
        let r: Value = serde_json::from_slice(&bodies[0]).unwrap();
        assert_eq!((r["model"].as_str(), r["budget_ms"].as_f64()), (Some("m"), Some(25.0)));
        assert!(r["context"]["user_id"].as_str().unwrap().starts_with("user_id-"));
        let c = &r["candidates"].as_array().unwrap()[4];
        assert_eq!(c["id"], "c4");
        assert!(c["features"]["duration_s"].is_f64() && c["prior"].is_f64());
        assert_eq!(c["features"]["emb"].as_array().unwrap().len(), 3);
        assert!(c["features"].get("user_id").is_none(), "context features stay in the context");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_template_is_stretched_to_the_candidate_count() {
        let dir = std::env::temp_dir().join(format!("loadtest-template-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("request.json");
        std::fs::write(&path, r#"{"context": {}, "candidates": [{"id": "a"}, {"id": "b"}], "top_k": 3}"#)
            .unwrap();
        let bodies = from_template(&path, &Shape { candidates: 5, ..Shape::default() }).unwrap();
        let r: Value = serde_json::from_slice(&bodies[0]).unwrap();
        assert_eq!(r["candidates"].as_array().unwrap().len(), 5);
        assert_eq!((r["candidates"][4]["id"].as_str(), r["top_k"].as_u64()), (Some("c4"), Some(3)));
        std::fs::write(&path, r#"{"context": {}}"#).unwrap();
        assert!(from_template(&path, &Shape::default()).unwrap_err().to_string().contains("candidates"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
