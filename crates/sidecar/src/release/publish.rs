//! Publishing a trained student: the gate that keeps a worse model from replacing the serving
//! one, and the notice that asks a running server to load what was published.
//!
//! The gate scores the version being served (the newest published version of the model's
//! name) on the new model's holdout, through its own package (its manifest's features, its ONNX
//! graph, tract), so both are judged on the same rows. It compares one metric, averaged over the
//! tasks both models serve, and refuses when the new model is worse by more than the tolerance.

use serde::{Deserialize, Serialize};

use crate::eval::holdout::TaskMetrics;

/// The holdout metric the gate compares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateMetric {
    /// Ranking across the holdout: what serving needs most.
    #[default]
    Auc,
    /// Ranking within requests.
    Gauc,
    /// Calibration and ranking; lower is better.
    LogLoss,
}

impl GateMetric {
    fn of(self, m: &TaskMetrics) -> Option<f64> {
        match self {
            GateMetric::Auc => m.auc,
            GateMetric::Gauc => m.gauc,
            GateMetric::LogLoss => m.log_loss,
        }
    }

    fn higher_is_better(self) -> bool {
        !matches!(self, GateMetric::LogLoss)
    }

    fn name(self) -> &'static str {
        match self {
            GateMetric::Auc => "AUC",
            GateMetric::Gauc => "GAUC",
            GateMetric::LogLoss => "log loss",
        }
    }
}

/// `[publish]` of a training config: the gate, and what the published manifest declares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublishConfig {
    pub metric: GateMetric,
    /// How much worse (in the metric's units, averaged over tasks) the new model may be and
    /// still be published: retraining on new data moves holdout metrics by noise alone.
    pub tolerance: f64,
    /// The model (by name, served from the same directory) that stands in for this one when a
    /// request's latency budget cannot afford it: recorded as `[model] fallback`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

impl Default for PublishConfig {
    fn default() -> Self {
        PublishConfig { metric: GateMetric::Auc, tolerance: 0.0, fallback: None }
    }
}

/// The serving version, scored on the new model's holdout.
#[derive(Debug, Clone)]
pub struct Baseline {
    /// `name/version`.
    pub version: String,
    /// Its metrics, or why it could not be scored.
    pub metrics: Result<Vec<TaskMetrics>, String>,
}

/// What the gate decided, with the comparison behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct GateReport {
    /// Per task both models serve: (task, new, serving).
    pub tasks: Vec<(String, f64, f64)>,
    pub metric: GateMetric,
    /// `name/version` of the serving model, when there is one.
    pub against: Option<String>,
    /// `None` when the new model may be published, else why not.
    pub refusal: Option<String>,
}

impl GateReport {
    pub fn passed(&self) -> bool {
        self.refusal.is_none()
    }

    /// A Markdown table of the comparison and the verdict.
    pub fn render(&self) -> String {
        let Some(against) = &self.against else {
            return match &self.refusal {
                None => "publish gate: no version is serving yet; nothing to compare against\n".into(),
                Some(r) => format!("publish gate: refused: {r}\n"),
            };
        };
        let mut s = format!(
            "publish gate: against {against} on the same holdout ({})\n\n| task | new | serving | Δ |\n| --- | ---: | ---: | ---: |\n",
            self.metric.name()
        );
        for (task, new, old) in &self.tasks {
            s += &format!("| {task} | {new:.4} | {old:.4} | {:+.4} |\n", new - old);
        }
        s += &match &self.refusal {
            None => "\npassed\n".to_string(),
            Some(r) => format!("\nrefused: {r}\n"),
        };
        s
    }
}

/// The first holdout metric of `metrics` that is not a finite number, as a refusal: a model
/// whose outputs are NaN somewhere must never serve, whatever it is compared with.
fn non_finite(metrics: &[TaskMetrics]) -> Option<String> {
    metrics.iter().find_map(|m| {
        [("AUC", m.auc), ("log loss", m.log_loss), ("GAUC", m.gauc), ("NDCG@10", m.ndcg_10), ("ECE", m.ece)]
            .into_iter()
            .find_map(|(name, v)| v.filter(|v| !v.is_finite()).map(|v| (name, v)))
            .map(|(name, v)| {
                format!("task `{}` has a holdout {name} of {v}: the model's outputs are not finite", m.task)
            })
    })
}

/// Compares the new model's holdout metrics with the serving version's.
pub fn gate(new: &[TaskMetrics], baseline: Option<&Baseline>, config: &PublishConfig) -> GateReport {
    let metric = config.metric;
    if let Some(bad) = non_finite(new) {
        let against = baseline.map(|b| b.version.clone());
        return GateReport { tasks: Vec::new(), metric, against, refusal: Some(bad) };
    }
    let Some(baseline) = baseline else {
        return GateReport { tasks: Vec::new(), metric, against: None, refusal: None };
    };
    let report =
        |tasks, refusal| GateReport { tasks, metric, against: Some(baseline.version.clone()), refusal };
    let old = match &baseline.metrics {
        Ok(m) => m,
        Err(e) => return report(Vec::new(), Some(format!("the serving version could not be scored: {e}"))),
    };
    let tasks: Vec<(String, f64, f64)> = new
        .iter()
        .filter_map(|n| {
            let o = old.iter().find(|o| o.task == n.task)?;
            Some((n.task.clone(), metric.of(n)?, metric.of(o)?))
        })
        .collect();
    if tasks.is_empty() {
        return report(tasks, Some(format!("the two models share no task with a holdout {}", metric.name())));
    }
    let mean = |f: fn(&(String, f64, f64)) -> f64| tasks.iter().map(f).sum::<f64>() / tasks.len() as f64;
    let (new_mean, old_mean) = (mean(|t| t.1), mean(|t| t.2));
    let shortfall = if metric.higher_is_better() { old_mean - new_mean } else { new_mean - old_mean };
    let refusal = (shortfall > config.tolerance).then(|| {
        format!(
            "mean holdout {} over {} task(s) is {new_mean:.4} against the serving version's {old_mean:.4}, \
             worse by {shortfall:.4} (tolerance {})",
            metric.name(),
            tasks.len(),
            config.tolerance
        )
    });
    report(tasks, refusal)
}

/// Why a running server could not be told about a new version.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("--notify {url}: {reason}")]
    Url { url: String, reason: String },
    #[error("--notify: cannot reach {authority}: {reason}")]
    Connect { authority: String, reason: String },
    #[error("--notify: the server answered {status}: {body}")]
    Refused { status: u16, body: String },
}

/// Asks the retort server at `base_url` (`http://host:port`) to load `name/version` from its
/// models directory (`POST /v1/models/{name}/versions/{version}/load`), which it validates,
/// warms and promotes. `token` is the server's admin token. Returns the server's JSON answer.
pub fn notify(
    base_url: &str,
    name: &str,
    version: &str,
    token: Option<&str>,
) -> Result<serde_json::Value, NotifyError> {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;

    let url = format!("{}/v1/models/{name}/versions/{version}/load", base_url.trim_end_matches('/'));
    let bad = |reason: &str| NotifyError::Url { url: base_url.to_string(), reason: reason.to_string() };
    let uri: hyper::Uri = url.parse().map_err(|e: hyper::http::uri::InvalidUri| bad(&e.to_string()))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad("only http:// URLs are supported (a server on the same host or pod)"));
    }
    let authority = uri.authority().ok_or_else(|| bad("no host"))?.clone();
    let address = format!("{}:{}", authority.host(), authority.port_u16().unwrap_or(80));
    let connect = |reason: String| NotifyError::Connect { authority: authority.to_string(), reason };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| connect(e.to_string()))?;
    runtime.block_on(async {
        let timeout = std::time::Duration::from_secs(120);
        let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&address))
            .await
            .map_err(|_| connect("timed out".into()))?
            .map_err(|e| connect(e.to_string()))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| connect(e.to_string()))?;
        tokio::spawn(connection);
        let mut request = hyper::Request::post(uri.clone()).header(hyper::header::HOST, authority.as_str());
        if let Some(token) = token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Full::new(Bytes::new())).map_err(|e| bad(&e.to_string()))?;
        // Loading compiles and warms the model: give it time, but not forever.
        let response = tokio::time::timeout(timeout, sender.send_request(request))
            .await
            .map_err(|_| connect("no answer within 120 s".into()))?
            .map_err(|e| connect(e.to_string()))?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| connect(e.to_string()))?.to_bytes();
        let text = String::from_utf8_lossy(&body).into_owned();
        if !status.is_success() {
            return Err(NotifyError::Refused { status: status.as_u16(), body: text });
        }
        serde_json::from_str(&text)
            .map_err(|e| NotifyError::Refused { status: status.as_u16(), body: e.to_string() })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(task: &str, auc: f64, log_loss: f64) -> TaskMetrics {
        TaskMetrics {
            task: task.into(),
            auc: Some(auc),
            log_loss: Some(log_loss),
            gauc: None,
            ndcg_10: None,
            ece: None,
            truth_mae: None,
        }
    }

    fn serving(metrics: Vec<TaskMetrics>) -> Baseline {
        Baseline { version: "music-ranker/3".into(), metrics: Ok(metrics) }
    }

    #[test]
    fn refuses_a_worse_mean_over_shared_tasks_and_passes_within_tolerance() {
        let new = [m("play", 0.70, 0.60), m("like", 0.64, 0.50), m("only_new", 0.99, 0.1)];
        let old = serving(vec![m("play", 0.72, 0.61), m("like", 0.64, 0.52), m("only_old", 0.5, 0.7)]);
        let strict = gate(&new, Some(&old), &PublishConfig::default());
        assert_eq!(strict.tasks.len(), 2, "only shared tasks count");
        let why = strict.refusal.as_deref().expect("AUC is worse by 0.01");
        assert!(why.contains("0.6700") && why.contains("0.6800") && why.contains("0.0100"), "{why}");
        assert!(strict.render().contains("| play | 0.7000 | 0.7200 | -0.0200 |"));

        let lenient = gate(&new, Some(&old), &PublishConfig { tolerance: 0.02, ..Default::default() });
        assert!(lenient.passed());

        // Lower log loss is better: the new model wins on it.
        let by_log_loss =
            gate(&new, Some(&old), &PublishConfig { metric: GateMetric::LogLoss, ..Default::default() });
        assert!(by_log_loss.passed(), "{:?}", by_log_loss.refusal);
    }

    // See: issue 14 (7): NaN training was published.
    #[test]
    fn refuses_non_finite_metrics_with_or_without_a_serving_version() {
        let new = [m("play", 0.7, 0.6), m("like", 0.6, f64::NAN)];
        for baseline in [None, Some(serving(vec![m("play", 0.6, 0.7)]))] {
            let r = gate(&new, baseline.as_ref(), &PublishConfig { tolerance: 1.0, ..Default::default() });
            let why = r.refusal.as_deref().expect("NaN log loss");
            assert!(why.contains("`like`") && why.contains("log loss") && why.contains("NaN"), "{why}");
            assert!(r.render().contains("refused"), "{}", r.render());
        }
    }

    #[test]
    fn passes_with_no_serving_version_and_refuses_when_it_cannot_compare() {
        let new = [m("play", 0.7, 0.6)];
        assert!(gate(&new, None, &PublishConfig::default()).passed());
        let broken =
            Baseline { version: "music-ranker/3".into(), metrics: Err("model.onnx: truncated".into()) };
        let r = gate(&new, Some(&broken), &PublishConfig::default());
        assert!(r.refusal.unwrap().contains("truncated"));
        let disjoint = serving(vec![m("skip", 0.6, 0.3)]);
        assert!(
            gate(&new, Some(&disjoint), &PublishConfig::default()).refusal.unwrap().contains("share no task")
        );
    }
}
