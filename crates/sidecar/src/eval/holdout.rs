//! A model's metrics on held-out rows: of a student just trained (from its outputs) and of a
//! published package (run through the package itself, as the server would), in one shape, so
//! the publish gate and every report compare like with like.

use std::path::Path;

use serde::Serialize;

use crate::data::dataset::Dataset;
use crate::data::spec::DataSpec;
use crate::eval::metrics::auc;
use crate::train::fit::{TrainError, TrainingData};
use retort_model::Model;
use retort_model::engine::EngineKind;
use retort_model::manifest::HeadKind;

/// Holdout metrics of one task.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TaskMetrics {
    pub task: String,
    pub auc: Option<f64>,
    pub log_loss: Option<f64>,
    /// AUC within requests, weighted by request size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gauc: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ndcg_10: Option<f64>,
    /// Expected calibration error over 10 bins.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ece: Option<f64>,
    /// Mean absolute distance to the true probability (simulated data only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truth_mae: Option<f64>,
}

/// The metrics of outputs `out` (per head, one logit or value per row of `rows`) against the
/// labels of `data`, whose label `h` belongs to `heads[h]`.
pub fn metrics_of(
    out: &[Vec<f32>],
    data: &TrainingData,
    rows: &[usize],
    heads: &[(String, HeadKind)],
) -> Vec<TaskMetrics> {
    let groups = crate::eval::metrics::by_request(rows.iter().map(|&r| data.request_ids[r].as_str()));
    heads
        .iter()
        .enumerate()
        .map(|(h, (name, kind))| {
            let labels: Vec<f32> = rows.iter().map(|&r| data.labels[h][r]).collect();
            let binary = *kind == HeadKind::Binary;
            let log_loss = binary.then(|| {
                out[h]
                    .iter()
                    .zip(&labels)
                    .map(|(&z, &y)| {
                        let z = z as f64;
                        z.max(0.0) - z * y as f64 + (-z.abs()).exp().ln_1p()
                    })
                    .sum::<f64>()
                    / labels.len().max(1) as f64
            });
            let truth: Option<Vec<f32>> =
                data.truth.get(h).and_then(|t| t.as_ref()).map(|t| rows.iter().map(|&r| t[r]).collect());
            TaskMetrics {
                task: name.clone(),
                auc: if binary { auc(&out[h], &labels) } else { None },
                log_loss,
                gauc: if binary { crate::eval::metrics::gauc(&out[h], &labels, &groups) } else { None },
                ndcg_10: crate::eval::metrics::ndcg_at(10, &out[h], &labels, &groups),
                ece: if binary { crate::eval::metrics::ece(&out[h], &labels) } else { None },
                truth_mae: truth
                    .filter(|_| binary)
                    .and_then(|t| crate::eval::metrics::truth_mae(&out[h], &t)),
            }
        })
        .collect()
}

/// `name/version` of the package in `dir` (`<models>/<name>/<version>`).
pub fn package_label(dir: &Path) -> String {
    let part = |p: Option<&Path>| {
        p.and_then(Path::file_name).map_or("?".into(), |n| n.to_string_lossy().into_owned())
    };
    format!("{}/{}", part(dir.parent()), part(Some(dir)))
}

/// Scores the package in `dir` on the rows of `dataset` from `cutoff` on, through the package
/// itself (its features and graph), for each of its serving heads that is a task of `spec`.
pub fn evaluate_package(
    dir: &Path,
    dataset: &Dataset,
    spec: &DataSpec,
    cutoff: i64,
) -> Result<Vec<TaskMetrics>, TrainError> {
    let package = |e: &dyn std::fmt::Display| TrainError::Config(format!("{}: {e}", dir.display()));
    let model = Model::load_per_row(dir, EngineKind::Tract).map_err(|e| package(&e))?;
    let heads: Vec<(usize, String, HeadKind)> = model
        .serving_heads()
        .filter(|(_, name)| spec.task(name).is_some())
        .map(|(i, name)| (i, name.to_string(), model.manifest.heads[i].kind))
        .collect();
    if heads.is_empty() {
        return Err(package(&"none of its serving heads is a task of this data"));
    }
    let tasks: Vec<String> = heads.iter().map(|(_, n, _)| n.clone()).collect();
    let data = TrainingData::load_for(dataset, spec, &model.manifest.features, &tasks)?;
    let (_, holdout) = data.split_at(cutoff);
    let mut out = vec![Vec::with_capacity(holdout.len()); heads.len()];
    for chunk in holdout.chunks(2048) {
        let values = model.infer_logits(data.subset(chunk)).map_err(|e| package(&e))?;
        for (k, (i, _, _)) in heads.iter().enumerate() {
            out[k].extend_from_slice(values.head(*i));
        }
    }
    let kinds: Vec<(String, HeadKind)> = heads.into_iter().map(|(_, n, k)| (n, k)).collect();
    Ok(metrics_of(&out, &data, &holdout, &kinds))
}
