//! Warm-up on real traffic: the server keeps the most recent rank requests of each model and
//! replays them to a new version before it may serve, which sizes its buffers for real request
//! shapes, checks its outputs on real inputs, and times it against the serving version on the
//! same requests. The ring is written to `<models>/.warmup/<model>.jsonl` on shutdown and read at
//! start, so a restarted server warms new versions on yesterday's traffic.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Bytes;

use crate::model::Model;
use crate::model::manifest::{HeadKind, Transform};
use crate::serve::request;

/// Requests kept per model.
pub const CAPACITY: usize = 64;
/// Where the rings are kept, inside the models directory (hidden: never read as a package).
pub const DIR: &str = ".warmup";

#[derive(Default)]
pub struct WarmupRing {
    rings: Mutex<BTreeMap<String, VecDeque<Bytes>>>,
}

impl WarmupRing {
    /// Keeps `body`, a request `model` answered, dropping the oldest beyond [`CAPACITY`].
    pub fn record(&self, model: &str, body: Bytes) {
        let mut rings = self.rings.lock().expect("not poisoned");
        let ring = rings.entry(model.to_string()).or_default();
        if ring.len() == CAPACITY {
            ring.pop_front();
        }
        ring.push_back(body);
    }

    pub fn requests(&self, model: &str) -> Vec<Bytes> {
        self.rings
            .lock()
            .expect("not poisoned")
            .get(model)
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Writes every ring to `<models_dir>/.warmup/<model>.jsonl` (aside, then renamed).
    pub fn save(&self, models_dir: &Path) -> std::io::Result<()> {
        let dir = models_dir.join(DIR);
        std::fs::create_dir_all(&dir)?;
        for (model, ring) in self.rings.lock().expect("not poisoned").iter() {
            let mut text = Vec::new();
            for body in ring {
                // One request per line: a JSON body has no raw newline outside strings, and
                // none inside them (JSON escapes it).
                text.extend(body.iter().filter(|&&b| b != b'\n' && b != b'\r'));
                text.push(b'\n');
            }
            let path = dir.join(format!("{model}.jsonl"));
            let tmp = dir.join(format!(".{model}.jsonl.tmp"));
            std::fs::write(&tmp, &text)?;
            std::fs::rename(&tmp, &path)?;
        }
        Ok(())
    }

    /// Reads the rings [`WarmupRing::save`] wrote; a missing directory is an empty ring.
    pub fn load(models_dir: &Path) -> WarmupRing {
        let ring = WarmupRing::default();
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
            if let Ok(text) = std::fs::read(&path) {
                for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                    ring.record(model, Bytes::copy_from_slice(line));
                }
            }
        }
        ring
    }
}

/// Replays `requests` to `model`: every output must be finite, and a probability where the
/// head says so. Returns the median time per request, or why the model failed.
pub fn replay(model: &Model, requests: &[Bytes]) -> Result<Option<Duration>, String> {
    let mut times = Vec::new();
    for (k, body) in requests.iter().enumerate() {
        // Requests the serving version answered but this one cannot encode (say, a feature's
        // type changed) are the validation's business, not the warm-up's: skip them.
        let Ok(req) = request::decode(body) else { continue };
        let Ok(encoded) = model.encode(&req.context, &req.candidates) else { continue };
        let started = Instant::now();
        let values = model.infer(encoded).map_err(|e| format!("warm-up request {k}: {e}"))?;
        times.push(started.elapsed());
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
        let back = WarmupRing::load(dir.path());
        assert_eq!(back.requests("m"), kept);
        assert_eq!(back.requests("other"), [Bytes::from_static(b"{\"x\": 1}")]);
        assert!(WarmupRing::load(&dir.path().join("none")).requests("m").is_empty());
    }
}
