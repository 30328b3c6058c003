//! Warm-up on real traffic: the server keeps the most recent rank requests of each model and
//! replays them to a new version before it may serve, which sizes its buffers for real request
//! shapes, checks its outputs on real inputs, and times it against the serving version on the
//! same requests. The ring is written to `<models>/.warmup/<model>.jsonl` on shutdown and read at
//! start, so a restarted server warms new versions on yesterday's traffic.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use axum::body::Bytes;

use retort_model::manifest::{HeadKind, Transform};
use retort_model::request;
use retort_model::{Model, ScoreError};

/// Requests kept per model, at most.
pub const CAPACITY: usize = 64;
/// Bytes of request bodies kept per model by default, at most.
pub const DEFAULT_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Where the rings are kept, inside the models directory (hidden: never read as a package).
pub const DIR: &str = ".warmup";

/// The recent requests of each model, bounded in count ([`CAPACITY`]) and in bytes: bodies
/// come from any client, and 64 of the largest accepted would otherwise hold 128 MiB.
pub struct WarmupRing {
    rings: Mutex<BTreeMap<String, Ring>>,
    max_bytes: usize,
}

#[derive(Default)]
struct Ring {
    bodies: VecDeque<Bytes>,
    bytes: usize,
}

impl Default for WarmupRing {
    fn default() -> Self {
        WarmupRing::new(DEFAULT_MAX_BYTES)
    }
}

impl WarmupRing {
    /// A ring keeping at most `max_bytes` of bodies per model (0 keeps none).
    pub fn new(max_bytes: usize) -> WarmupRing {
        WarmupRing { rings: Mutex::new(BTreeMap::new()), max_bytes }
    }

    /// Keeps `body`, a request `model` answered, dropping the oldest beyond [`CAPACITY`] or the
    /// byte bound. A body larger than the whole bound is not kept.
    pub fn record(&self, model: &str, body: Bytes) {
        if body.len() > self.max_bytes {
            return;
        }
        let mut rings = self.rings.lock().expect("not poisoned");
        let ring = rings.entry(model.to_string()).or_default();
        ring.bytes += body.len();
        ring.bodies.push_back(body);
        while ring.bodies.len() > CAPACITY || ring.bytes > self.max_bytes {
            let oldest = ring.bodies.pop_front().expect("over a bound, so not empty");
            ring.bytes -= oldest.len();
        }
    }

    pub fn requests(&self, model: &str) -> Vec<Bytes> {
        self.rings
            .lock()
            .expect("not poisoned")
            .get(model)
            .map(|r| r.bodies.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Writes every ring to `<models_dir>/.warmup/<model>.jsonl` (aside, then renamed).
    pub fn save(&self, models_dir: &Path) -> std::io::Result<()> {
        let dir = models_dir.join(DIR);
        std::fs::create_dir_all(&dir)?;
        for (model, ring) in self.rings.lock().expect("not poisoned").iter() {
            let mut text = Vec::new();
            for body in &ring.bodies {
                // One request per line: a JSON body has no raw newline outside strings, and
                // none inside them (JSON escapes it).
                text.extend(body.iter().filter(|&&b| b != b'\n' && b != b'\r'));
                text.push(b'\n');
            }
            let path = dir.join(format!("{model}.jsonl"));
            let tmp = dir.join(format!(".{model}.jsonl.tmp"));
            write_private(&tmp, &text)?;
            std::fs::rename(&tmp, &path)?;
        }
        Ok(())
    }

    /// Reads the rings [`WarmupRing::save`] wrote, keeping at most `max_bytes` per model; a
    /// missing directory is an empty ring.
    pub fn load(models_dir: &Path, max_bytes: usize) -> WarmupRing {
        let ring = WarmupRing::new(max_bytes);
        let Ok(entries) = std::fs::read_dir(models_dir.join(DIR)) else { return ring };
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(model) =
                path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".jsonl"))
            else {
                continue;
            };
            if model.starts_with('.') {
                continue;
            }
            // A file far over the bound was not written by this server: not worth reading.
            let size = entry.metadata().map_or(u64::MAX, |m| m.len());
            if size > 2 * max_bytes as u64 + 64 * 1024 {
                continue;
            }
            if let Ok(text) = std::fs::read(&path) {
                for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                    ring.record(model, Bytes::copy_from_slice(line));
                }
            }
        }
        ring
    }
}

/// The requests hold what clients sent (user ids among it): readable by this user only.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(bytes)
}

/// Replays `requests` to `model`, their candidates over `items` as requests read them: every
/// output must be finite, and a probability where the head says so. Returns the median time
/// per request, or why the model failed.
pub fn replay(
    model: &Model,
    items: Option<retort_model::ItemSource<'_>>,
    requests: &[Bytes],
) -> Result<Option<Duration>, String> {
    let mut times = Vec::new();
    for (k, body) in requests.iter().enumerate() {
        // Requests the serving version answered but this one cannot encode (say, a feature's
        // type changed) are the validation's business, not the warm-up's: skip them.
        let Ok(req) = request::decode(body) else { continue };
        let values = match model.score_request(&req, items) {
            Ok(scored) => {
                times.push(scored.inference);
                scored.values
            }
            Err(ScoreError::Infer(e)) => return Err(format!("warm-up request {k}: {e}")),
            Err(ScoreError::Encode(_) | ScoreError::Objective(_)) => continue,
        };
        for (h, head) in model.manifest.heads.iter().enumerate() {
            let probability = head.kind == HeadKind::Binary && head.transform == Transform::None;
            if let Some(v) =
                values.head(h).iter().find(|v| !v.is_finite() || (probability && !(0.0..=1.0).contains(*v)))
            {
                return Err(format!("warm-up request {k}: head `{}` gave {v}", head.name));
            }
        }
    }
    times.sort();
    Ok(times.get(times.len() / 2).copied())
}

/// Runs the golden examples at a few batch sizes so the engine has sized its buffers before
/// the first real request pays for it.
pub fn warm_up(model: &Model) {
    for example in &model.manifest.golden.examples {
        for copies in [1usize, 16, 128] {
            let mut wide = example.clone();
            let base = example.candidates.clone();
            wide.candidates = base.iter().cycle().take(base.len() * copies).cloned().collect();
            let _ = model.run_example(&wide);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_requests_and_survives_a_restart() {
        let ring = WarmupRing::default();
        for i in 0..CAPACITY + 5 {
            ring.record("m", Bytes::from(format!("{{\"n\": {i}}}")));
        }
        ring.record("other", Bytes::from_static(b"{\n\"x\": 1}"));
        let kept = ring.requests("m");
        assert_eq!(kept.len(), CAPACITY);
        assert_eq!(kept[0], Bytes::from("{\"n\": 5}"));
        let dir = tempfile::tempdir().unwrap();
        ring.save(dir.path()).unwrap();
        let back = WarmupRing::load(dir.path(), DEFAULT_MAX_BYTES);
        assert_eq!(back.requests("m"), kept);
        assert_eq!(back.requests("other"), [Bytes::from_static(b"{\"x\": 1}")]);
        assert!(WarmupRing::load(&dir.path().join("none"), DEFAULT_MAX_BYTES).requests("m").is_empty());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(DIR).join("m.jsonl")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    // See: issue 14 (I): 64 bodies of up to 2 MiB each were kept per model.
    #[test]
    fn keeps_at_most_its_bytes_per_model() {
        let ring = WarmupRing::new(1000);
        ring.record("m", Bytes::from(vec![b'x'; 1001]));
        assert!(ring.requests("m").is_empty(), "a body over the whole bound is not kept");
        for i in 0..10u8 {
            ring.record("m", Bytes::from(vec![i; 300]));
        }
        let kept = ring.requests("m");
        assert_eq!(kept.iter().map(|b| b[0]).collect::<Vec<_>>(), [7, 8, 9], "the newest that fit");
        let none = WarmupRing::new(0);
        none.record("m", Bytes::from_static(b"{}"));
        assert!(none.requests("m").is_empty());
    }
}
