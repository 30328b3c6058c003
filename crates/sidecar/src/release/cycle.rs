//! `retort train`'s whole cycle: train (from scratch, or continuing the serving version's
//! checkpoint), evaluate, pass the publish gate, publish, and notify a server; and `--follow`,
//! which runs that cycle again each time new partitions (and, for a distilled student, their
//! teacher labels) land: the continuous training loop of Paper B.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::data::dataset::Dataset;
use crate::data::spec::DataSpec;
use crate::label::store;
use crate::release::publish::{self, GateReport};
use crate::release::run::{self, RunConfig, TrainJob, Trained};
use crate::train::fit::TrainError;
use retort_model::package;

/// What `retort train` is told on its command line: one struct, read by clap and kept by the
/// cycle, so no field is copied from one to the other.
#[derive(Debug, Clone, clap::Args)]
pub struct CycleArgs {
    /// Dataset directory (Parquet or CSV partitions).
    #[arg(long = "data")]
    pub data_dir: PathBuf,
    /// Feature spec of the dataset [default: <data>/features.toml]
    #[arg(long)]
    pub spec: Option<PathBuf>,
    /// Training config (TOML: [model], [train], [distill], [objective]); defaults without.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Teacher labels (a label store directory) for a config that distils.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Directory of model packages to publish into.
    #[arg(long = "models", visible_alias = "publish", default_value = "models")]
    pub models_dir: PathBuf,
    /// Name of the model to publish.
    #[arg(long)]
    pub name: String,
    /// Version to publish [default: one past the newest numeric version of the model]
    #[arg(long)]
    pub version: Option<String>,
    /// Publish even when the gate finds the new model worse than the serving version.
    #[arg(long)]
    pub force: bool,
    /// After publishing, ask the retort server at this URL (`http://host:port`) to load and
    /// serve the new version; its admin token comes from RETORT_ADMIN_TOKEN.
    #[arg(long, value_name = "URL")]
    pub notify: Option<String>,
    /// Continue from the newest published version's checkpoint (weights and optimiser
    /// state), training only on examples newer than it has seen.
    #[arg(long)]
    pub warm_start: bool,
}

/// What a cycle trains and where it publishes.
#[derive(Debug, Clone)]
pub struct Cycle {
    pub args: CycleArgs,
    /// The spec `args.spec` names, read.
    pub spec: DataSpec,
    /// The config `args.config` names, read (or the defaults).
    pub config: RunConfig,
    /// For `--notify`.
    pub admin_token: Option<String>,
}

/// How one cycle ended.
pub struct Round {
    pub trained: Trained,
    pub gate: GateReport,
    pub seconds: f64,
    /// Where the package went, unless the gate refused it.
    pub published: Option<package::Written>,
    /// The server's answer to `--notify`.
    pub notified: Option<serde_json::Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error("published {published}, but {source}")]
    Notify { published: String, source: publish::NotifyError },
}

impl Cycle {
    /// Trains, gates, publishes and notifies once. A refusal by the gate is not an error: the
    /// round says so and publishes nothing.
    pub fn run_once(&self) -> Result<Round, CycleError> {
        let started = Instant::now();
        let version = self
            .args
            .version
            .clone()
            .unwrap_or_else(|| package::next_version(&self.args.models_dir, &self.args.name));
        // The version being served: the newest one published under this name.
        let serving = package::latest(&self.args.models_dir)
            .ok()
            .and_then(|mut l| l.remove(&self.args.name))
            .map(|p| p.dir);
        let warm = match (&serving, self.args.warm_start) {
            (Some(dir), true) => Some(dir.as_path()),
            _ => None,
        };
        let job = TrainJob::new(&self.args.data_dir, &self.spec, &self.config, &self.args.name, &version)
            .labels(self.args.labels.as_deref())
            .baseline(serving.as_deref())
            .warm_start(warm);
        let trained = run::train_model(&job)?;
        let gate = publish::gate(&trained.metrics, trained.baseline.as_ref(), &self.config.publish);
        let seconds = started.elapsed().as_secs_f64();
        if !gate.passed() && !self.args.force {
            return Ok(Round { trained, gate, seconds, published: None, notified: None });
        }
        let written = run::publish(&self.args.models_dir, &trained)?;
        let dir = written.dir().to_path_buf();
        let notified = match &self.args.notify {
            None => None,
            Some(_) if matches!(written, package::Written::Unchanged(_)) => None,
            Some(url) => Some(
                publish::notify(url, &self.args.name, &version, self.admin_token.as_deref())
                    .map_err(|source| CycleError::Notify { published: dir.display().to_string(), source })?,
            ),
        };
        Ok(Round { trained, gate, seconds, published: Some(written), notified })
    }

    /// Partitions of the data whose teacher labels (when the config distils) are in place.
    fn ready_partitions(&self) -> Result<BTreeSet<String>, TrainError> {
        let dataset = Dataset::open(&self.args.data_dir)?;
        let distils = !self.config.distill.tasks.is_empty() || !self.config.distill.new_heads.is_empty();
        Ok(dataset
            .partitions
            .iter()
            .filter(|p| match (&self.args.labels, distils) {
                (Some(labels), true) => store::label_path(labels, &p.name).is_file(),
                _ => true,
            })
            .map(|p| p.name.clone())
            .collect())
    }

    /// Runs a cycle now, then again each time new ready partitions appear, until `stop`.
    /// `on_round` hears of every round (or its error: a later round's failure, such as a bad
    /// partition, is reported and the loop waits for the data to change).
    pub fn follow(
        &self,
        poll: Duration,
        stop: &AtomicBool,
        mut on_round: impl FnMut(&BTreeSet<String>, Result<Round, CycleError>),
    ) -> Result<(), CycleError> {
        if self.args.version.is_some() {
            return Err(TrainError::Config(
                "--follow publishes a new version each round; drop --version".into(),
            )
            .into());
        }
        let mut done: Option<BTreeSet<String>> = None;
        while !stop.load(Ordering::Relaxed) {
            let ready = self.ready_partitions()?;
            if done.as_ref() != Some(&ready) && !ready.is_empty() {
                let new: BTreeSet<String> = match &done {
                    Some(d) => ready.difference(d).cloned().collect(),
                    None => ready.clone(),
                };
                let round = self.run_once();
                // A warm start with nothing new is waiting, not failing.
                let waiting = matches!(&round, Err(CycleError::Train(TrainError::Config(m))) if m.starts_with("nothing to train on"));
                if !waiting {
                    on_round(&new, round);
                }
                done = Some(ready);
            }
            crate::progress::sleep_unless_stopped(poll, stop);
        }
        Ok(())
    }
}
