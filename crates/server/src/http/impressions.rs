//! The impression log on the request path: which requests are logged, and the record of what
//! an answer showed. Everything slow (Arrow columns, Parquet, files) happens on the log's own
//! thread (`retort_log::writer`); here a request only copies what it showed into a record and
//! hands it to a bounded queue that never blocks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use retort_log::partition::PartitionError;
use retort_log::{Counters, Impression, Log, Shown};
use retort_model::encode::fnv1a64;
use retort_model::request::RankRequest;
use retort_model::rng::SplitMix64;
use retort_model::{HeadValues, Model};

use crate::config::Config;

pub struct Impressions {
    log: Log<Impression>,
    sample: f64,
    per_model: BTreeMap<String, f64>,
    /// Candidates logged per answer; 0 for all.
    log_top: usize,
}

/// A shown candidate: its index in the request and its row among the scored, `None` for one a
/// degraded answer listed unscored.
pub type Listed = (usize, Option<usize>);

/// What the answer was made of, borrowed from the request path.
pub struct Answered<'a> {
    pub req: &'a RankRequest<'a>,
    pub request_id: &'a str,
    pub arrived: SystemTime,
    pub model: &'a Model,
    pub values: &'a HeadValues,
    pub scores: &'a [f32],
    pub listed: &'a [Listed],
    pub degraded: Option<&'static str>,
    pub catalog: Option<(&'a str, &'a str)>,
}

impl Impressions {
    /// Starts the log when the configuration names a directory.
    pub fn start(config: &Config) -> Result<Option<Impressions>, PartitionError> {
        let c = &config.impressions;
        let Some(dir) = &c.impressions_dir else { return Ok(None) };
        let log = Log::start(config.log_settings(dir))?;
        tracing::info!(dir = %dir.display(), sample = c.impression_sample, "logging impressions");
        Ok(Some(Impressions {
            log,
            sample: c.impression_sample,
            per_model: config
                .models
                .iter()
                .filter_map(|(n, m)| Some((n.clone(), m.impression_sample?)))
                .collect(),
            log_top: c.impression_log_top,
        }))
    }

    /// The share of `model`'s requests logged, when `request_id` is among them.
    fn sampled(&self, model: &str, request_id: &str) -> Option<f64> {
        let rate = self.per_model.get(model).copied().unwrap_or(self.sample);
        // FNV's high bits hardly move with an id's last characters (`r1`, `r2`, …): mixed
        // first, then the top 53 bits against the rate, so a rate of 1 takes every id, 0 none.
        let mixed = SplitMix64::new(fnv1a64(request_id.as_bytes())).next_u64();
        let draw = (mixed >> 11) as f64 / (1u64 << 53) as f64;
        (draw < rate).then_some(rate)
    }

    /// Logs what `a` showed, if its request is sampled. Never blocks: a full queue drops it.
    pub fn record(&self, a: &Answered<'_>) {
        let Some(sample_rate) = self.sampled(a.model.name(), a.request_id) else { return };
        let take = if self.log_top == 0 { a.listed.len() } else { self.log_top.min(a.listed.len()) };
        let serving: Vec<(usize, &str)> = a.model.serving_heads().collect();
        let shown = a.listed[..take]
            .iter()
            .enumerate()
            .map(|(position, &(candidate, row))| {
                let c = &a.req.candidates[candidate];
                Shown {
                    item_id: c.id.text().into_owned(),
                    position: position as u32,
                    score: row.map(|r| a.scores[r]),
                    heads: row.map_or_else(Vec::new, |r| {
                        serving.iter().map(|&(h, _)| a.values.head(h)[r]).collect()
                    }),
                    overrides: (!c.features.0.is_empty()).then(|| json(&c.features)),
                }
            })
            .collect();
        let arrived_ms = retort_model::timestamp::unix_ms(a.arrived);
        self.log.submit(Impression {
            request_id: a.request_id.to_string(),
            arrived_ms,
            model: a.model.name().to_string(),
            version: a.model.version().to_string(),
            catalog: a.catalog.map(|(n, v)| (n.to_string(), v.to_string())),
            context: json(&a.req.context),
            degraded: a.degraded,
            sample_rate,
            heads: serving.iter().map(|&(_, name)| name.to_string()).collect(),
            shown,
        });
    }

    pub fn counters(&self) -> &Arc<Counters> {
        self.log.counters()
    }

    /// Writes what is queued and completes the open partition (graceful shutdown).
    pub fn close(&self) {
        self.log.close();
        let c = self.counters();
        let load = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Acquire);
        tracing::info!(
            written = load(&c.written),
            dropped = load(&c.dropped),
            partitions = load(&c.partitions),
            "impression log closed"
        );
    }
}

fn json(features: &retort_model::request::Features<'_>) -> String {
    serde_json::to_string(features).unwrap_or_else(|_| "{}".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_id_is_always_sampled_the_same_way_at_about_the_rate() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.impressions.impressions_dir = Some(dir.path().to_path_buf());
        config.impressions.impression_sample = 0.25;
        config.models.entry("all".into()).or_default().impression_sample = Some(1.0);
        config.models.entry("none".into()).or_default().impression_sample = Some(0.0);
        let log = Impressions::start(&config).unwrap().unwrap();
        let ids: Vec<String> = (0..4000).map(|i| format!("req-{i}")).collect();
        let taken = ids.iter().filter(|id| log.sampled("m", id).is_some()).count();
        assert!((850..1150).contains(&taken), "{taken} of 4000 at 0.25");
        assert!(ids.iter().all(|id| log.sampled("m", id) == log.sampled("m", id)));
        assert!(ids.iter().all(|id| log.sampled("all", id) == Some(1.0)));
        assert!(ids.iter().all(|id| log.sampled("none", id).is_none()));
        log.close();
    }
}
