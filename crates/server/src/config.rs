//! Server configuration: one struct, with defaults that work with no file at all. Values come
//! from, highest first: command-line flags, `RETORT_*` environment variables, the TOML file
//! named by `--config`, and the defaults below.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::admission::budget::BudgetRules;
use crate::admission::degrade::{DegradationRules, Step};
use crate::rollout::Policy;
use crate::rollout::registry::RolloutSettings;
use crate::rollout::watch::CanaryRules;
use retort_model::engine::EngineKind;

/// Every setting. The file is one flat table (each key is also a flag and a `RETORT_*`
/// variable of the same name), read into sections, one per part of the server, as `--help`
/// groups them. Each section's `Default` is the one place its defaults are written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    #[serde(flatten)]
    pub server: ServerSection,
    #[serde(flatten)]
    pub admission: AdmissionSection,
    #[serde(flatten)]
    pub rollout: RolloutSection,
    #[serde(flatten)]
    pub admin: AdminSection,
    #[serde(flatten)]
    pub impressions: ImpressionsSection,
    /// Per-model overrides (file only: `[models.<name>]`).
    pub models: BTreeMap<String, ModelSettings>,
    /// Deprecated: `[models.<name>] policy`. Still read, and moved there with a warning.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub model_policies: BTreeMap<String, Policy>,
    /// Deprecated: `[models.<name>] budget_ms`. Still read, and moved there with a warning.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub model_budgets_ms: BTreeMap<String, f64>,
    /// Keys of the file that no section reads: refused by [`Config::parse`], naming them.
    /// (Sections are flattened, which serde's `deny_unknown_fields` does not support.)
    #[serde(flatten, skip_serializing)]
    unknown: BTreeMap<String, toml::Value>,
    /// Deprecated settings [`Config::fold_deprecated`] moved, for a warning.
    #[serde(skip)]
    pub deprecated: Vec<String>,
    /// Test hooks only: the named models' inference sleeps this long first.
    #[cfg(feature = "test-hooks")]
    #[serde(skip)]
    pub test_inference_delays: BTreeMap<String, retort_model::InferenceDelay>,
}

/// The listener, its connections and the requests it accepts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerSection {
    /// Address to listen on. Loopback unless told otherwise.
    pub listen: SocketAddr,
    /// Most client connections open at once; 0 sizes it to the file descriptor limit (raised
    /// to its hard limit at start). At the limit, the oldest idle connection is closed for a
    /// new one; a new one is refused only when every connection has a request in flight.
    pub max_connections: usize,
    /// A request's headers (and, on a keep-alive connection, the next request's first bytes)
    /// must arrive within this many milliseconds, or the connection is closed.
    pub header_read_timeout_ms: u64,
    /// A request's body must arrive within this many milliseconds of its headers (408).
    pub body_read_timeout_ms: u64,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Most candidates accepted in one request.
    pub max_candidates: usize,
    /// Candidates an answer lists when the request sets no `top_k`: the best this many.
    pub default_top_k: usize,
    /// After a shutdown signal, how long in-flight requests get to finish, in milliseconds.
    pub drain_timeout_ms: u64,
    /// Log format: `text` or `json`.
    pub log_format: LogFormat,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_connections: 0,
            header_read_timeout_ms: 30_000,
            body_read_timeout_ms: 10_000,
            max_body_bytes: 2 * 1024 * 1024,
            max_candidates: 2000,
            default_top_k: 100,
            drain_timeout_ms: 30_000,
            log_format: LogFormat::Text,
        }
    }
}

/// The inference pool and what a request may have of it: budgets, the degradation ladder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdmissionSection {
    /// Inference threads; 0 means one per core.
    pub inference_threads: usize,
    /// Whether a request's inference may run on the thread that decoded it when no inference
    /// thread is busy and nothing waits: `auto` does so when the server has one core.
    pub inline_inference: InlineInference,
    /// Requests that may wait for an inference thread before new ones are refused with 429.
    pub queue_capacity: usize,
    /// Latency budget of a request that sets none, in milliseconds (none: no deadline).
    pub default_budget_ms: Option<f64>,
    /// The largest budget a request may ask for; larger ones are cut to it.
    pub max_budget_ms: f64,
    /// What a request gets when the full answer cannot make its deadline (file only:
    /// `[degradation]`).
    pub degradation: DegradationRules,
}

impl Default for AdmissionSection {
    fn default() -> Self {
        AdmissionSection {
            inference_threads: 0,
            inline_inference: InlineInference::Auto,
            queue_capacity: 1024,
            default_budget_ms: None,
            max_budget_ms: BudgetRules::default().max_ms,
            degradation: DegradationRules::default(),
        }
    }
}

/// Which model versions serve: where packages are found and how a new one is loaded, warmed,
/// judged and promoted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RolloutSection {
    /// Directory of model packages: `<name>/<version>/{model.onnx, manifest.toml}`.
    pub models_dir: PathBuf,
    /// Directory of catalog packages, `<name>/<version>/{catalog.toml, items.bin}` (written by
    /// `retort catalog`); none there, or no directory, means candidates carry their features.
    pub catalogs_dir: PathBuf,
    /// Inference engine.
    pub engine: EngineKind,
    /// The largest `model.onnx` the server loads, in bytes; a larger one is refused before it
    /// is read.
    pub max_model_bytes: u64,
    /// Model used when a request names none (needed only when several models are served).
    pub default_model: Option<String>,
    /// How often to look for new versions in the models directory, in milliseconds (0: never;
    /// versions then arrive only through the admin API).
    pub poll_interval_ms: u64,
    /// What a new version does once loaded, validated and warm: `auto` promotes it, `manual`
    /// waits for an operator.
    pub rollout_policy: Policy,
    /// When a canary is retired as failed (file only: `[canary]`).
    pub canary: CanaryRules,
    /// A new version whose median time on the replayed warm-up requests exceeds this multiple
    /// of the serving version's on the same requests is refused.
    pub warmup_latency_factor: f64,
    /// Keep the recent requests used for warm-up in `<models>/.warmup/` across restarts
    /// (request bodies as clients sent them, user ids included; files readable by the server's
    /// user only).
    pub persist_warmup: bool,
    /// Bytes of recent request bodies kept per model for warm-up (at most 64 bodies); 0 keeps
    /// none, and new versions then warm on their golden examples only.
    pub warmup_max_bytes: usize,
}

impl Default for RolloutSection {
    fn default() -> Self {
        RolloutSection {
            models_dir: PathBuf::from("models"),
            catalogs_dir: PathBuf::from("catalogs"),
            engine: EngineKind::Tract,
            max_model_bytes: 512 * 1024 * 1024,
            default_model: None,
            poll_interval_ms: 10_000,
            rollout_policy: Policy::Auto,
            canary: CanaryRules::default(),
            warmup_latency_factor: 3.0,
            persist_warmup: true,
            warmup_max_bytes: crate::rollout::warmup::DEFAULT_MAX_BYTES,
        }
    }
}

/// Who may call the admin API (`/v1/models...`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdminSection {
    /// Bearer token the admin API requires. Without one the admin API refuses every call,
    /// unless `admin_open_on_loopback` is set.
    pub admin_token: Option<String>,
    /// With no admin token: open the admin API to anyone who can reach the server, allowed
    /// only when it listens on a loopback address (a developer's machine, a sidecar's pod).
    pub admin_open_on_loopback: bool,
}

/// The impression log: one row per candidate an answer showed, for training on what was served
/// (`docs/loop.md`). Off unless a directory is given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImpressionsSection {
    /// Directory of impression partitions (`dt=<day>/impressions-….parquet`); none logs nothing.
    pub impressions_dir: Option<PathBuf>,
    /// Directory of feedback partitions, written by `POST /v1/feedback`; none turns it off.
    pub feedback_dir: Option<PathBuf>,
    /// Share of requests logged, chosen by a hash of the request id (a request id is always
    /// logged or never); `[models.<name>] impression_sample` overrides it per model.
    pub impression_sample: f64,
    /// Candidates logged per answer, from the top; 0 logs every candidate the answer lists.
    pub impression_log_top: usize,
    /// Rows (shown candidates) waiting for the log's writer before new answers are dropped
    /// (and counted): what bounds the queue's memory.
    pub impression_queue_rows: u64,
    /// A partition is completed at this many rows…
    pub impression_rotate_rows: u64,
    /// …or this many seconds after its first row, whichever comes first.
    pub impression_rotate_secs: u64,
}

impl Default for ImpressionsSection {
    fn default() -> Self {
        ImpressionsSection {
            impressions_dir: None,
            feedback_dir: None,
            impression_sample: 1.0,
            impression_log_top: 0,
            impression_queue_rows: 262_144,
            impression_rotate_rows: 1_000_000,
            impression_rotate_secs: 60,
        }
    }
}

/// One model's overrides of the server-wide settings (`[models.<name>]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSettings {
    /// Overrides `rollout_policy`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<Policy>,
    /// Overrides `default_budget_ms`, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_ms: Option<f64>,
    /// Overrides `[degradation] ladder`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ladder: Option<Vec<Step>>,
    /// The catalog its candidates are looked up in, by name; without one, the catalog keyed by
    /// one of its item features, when exactly one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catalog: Option<String>,
    /// Overrides `impression_sample`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub impression_sample: Option<f64>,
}

/// Where a request's inference runs when the pool is idle. On one core the inference thread and
/// the async worker take turns on the same CPU anyway: handing each request over costs two
/// context switches and the cache the encoder just warmed. With more cores the hand-over lets
/// decoding overlap inference, so the pool always runs it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum InlineInference {
    /// Inline when the process may use one core only (its CPU affinity or cgroup quota).
    #[default]
    Auto,
    /// Inline whenever the pool is idle.
    On,
    /// Always through the pool.
    Off,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `retort serve` flags, in the sections of [`Config`]. Each overrides the file and the
/// default when given; `--help` shows each default from [`Config::default`]
/// ([`show_defaults`]), so none is written twice.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (flags and environment win over it).
    #[arg(long, env = "RETORT_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub server: ServerFlags,
    #[command(flatten)]
    pub admission: AdmissionFlags,
    #[command(flatten)]
    pub rollout: RolloutFlags,
    #[command(flatten)]
    pub admin: AdminFlags,
    #[command(flatten)]
    pub impressions: ImpressionFlags,
}

/// Flags of [`ServerSection`].
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Server")]
pub struct ServerFlags {
    /// Address to listen on
    #[arg(long, env = "RETORT_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Most client connections open at once, 0 for as many as the file descriptor limit allows
    #[arg(long, env = "RETORT_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Milliseconds a request's headers (or a keep-alive connection's next request) may take
    #[arg(long, env = "RETORT_HEADER_READ_TIMEOUT_MS")]
    pub header_read_timeout_ms: Option<u64>,
    /// Milliseconds a request's body may take after its headers
    #[arg(long, env = "RETORT_BODY_READ_TIMEOUT_MS")]
    pub body_read_timeout_ms: Option<u64>,
    /// Largest request body in bytes
    #[arg(long, env = "RETORT_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Most candidates per request
    #[arg(long, env = "RETORT_MAX_CANDIDATES")]
    pub max_candidates: Option<usize>,
    /// Candidates an answer lists when the request sets no `top_k` (the best this many)
    #[arg(long, env = "RETORT_DEFAULT_TOP_K")]
    pub default_top_k: Option<usize>,
    /// Milliseconds in-flight requests get to finish after a shutdown signal
    #[arg(long, env = "RETORT_DRAIN_TIMEOUT_MS")]
    pub drain_timeout_ms: Option<u64>,
    /// Log format
    #[arg(long, env = "RETORT_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
}

/// Flags of [`AdmissionSection`].
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Admission")]
pub struct AdmissionFlags {
    /// Inference threads, 0 for one per core
    #[arg(long, env = "RETORT_INFERENCE_THREADS")]
    pub inference_threads: Option<usize>,
    /// Run a request's inference on its own thread when the pool is idle (auto: on one core)
    #[arg(long, env = "RETORT_INLINE_INFERENCE")]
    pub inline_inference: Option<InlineInference>,
    /// Requests that may wait for an inference thread
    #[arg(long, env = "RETORT_QUEUE_CAPACITY")]
    pub queue_capacity: Option<usize>,
    /// Latency budget of a request that sets none, in milliseconds [default: none, no deadline]
    #[arg(long, env = "RETORT_DEFAULT_BUDGET_MS")]
    pub default_budget_ms: Option<f64>,
    /// The largest budget a request may ask for, in milliseconds
    #[arg(long, env = "RETORT_MAX_BUDGET_MS")]
    pub max_budget_ms: Option<f64>,
}

/// Flags of [`RolloutSection`].
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Rollout")]
pub struct RolloutFlags {
    /// Directory of model packages
    #[arg(long = "models", env = "RETORT_MODELS")]
    pub models_dir: Option<PathBuf>,
    /// Directory of catalog packages (item features by item id)
    #[arg(long = "catalogs", env = "RETORT_CATALOGS")]
    pub catalogs_dir: Option<PathBuf>,
    /// Inference engine
    #[arg(long, env = "RETORT_ENGINE")]
    pub engine: Option<EngineKind>,
    /// Largest model.onnx the server loads, in bytes
    #[arg(long, env = "RETORT_MAX_MODEL_BYTES")]
    pub max_model_bytes: Option<u64>,
    /// Model used when a request names none
    #[arg(long, env = "RETORT_DEFAULT_MODEL")]
    pub default_model: Option<String>,
    /// How often to look for new model versions, in milliseconds; 0 never
    #[arg(long, env = "RETORT_POLL_INTERVAL_MS")]
    pub poll_interval_ms: Option<u64>,
    /// What a new version does once validated: auto (promote) or manual
    #[arg(long, env = "RETORT_ROLLOUT_POLICY")]
    pub rollout_policy: Option<Policy>,
    /// Refuse a new version this many times slower than the serving one on recent requests
    #[arg(long, env = "RETORT_WARMUP_LATENCY_FACTOR")]
    pub warmup_latency_factor: Option<f64>,
    /// Keep recent requests for warm-up in <models>/.warmup/ across restarts: true or false
    #[arg(long, env = "RETORT_PERSIST_WARMUP")]
    pub persist_warmup: Option<bool>,
    /// Bytes of recent request bodies kept per model for warm-up, 0 for none
    #[arg(long, env = "RETORT_WARMUP_MAX_BYTES")]
    pub warmup_max_bytes: Option<usize>,
}

/// Flags of [`AdminSection`].
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Admin API")]
pub struct AdminFlags {
    /// Bearer token for the admin API (the environment keeps it out of `ps`)
    #[arg(long, env = "RETORT_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Open the admin API without a token; refused unless listening on loopback
    #[arg(long, env = "RETORT_ADMIN_OPEN_ON_LOOPBACK")]
    pub admin_open_on_loopback: bool,
}

/// Flags of [`ImpressionsSection`].
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Serving logs")]
pub struct ImpressionFlags {
    /// Directory to log impressions in (one row per shown candidate) [default: none, no log]
    #[arg(long, env = "RETORT_IMPRESSIONS_DIR")]
    pub impressions_dir: Option<PathBuf>,
    /// Directory to log feedback in (POST /v1/feedback) [default: none, the endpoint is off]
    #[arg(long, env = "RETORT_FEEDBACK_DIR")]
    pub feedback_dir: Option<PathBuf>,
    /// Share of requests logged, 0 to 1, by a hash of the request id
    #[arg(long, env = "RETORT_IMPRESSION_SAMPLE")]
    pub impression_sample: Option<f64>,
    /// Candidates logged per answer from the top, 0 for all it lists
    #[arg(long, env = "RETORT_IMPRESSION_LOG_TOP")]
    pub impression_log_top: Option<usize>,
    /// Rows waiting for the log writer before new answers are dropped
    #[arg(long, env = "RETORT_IMPRESSION_QUEUE_ROWS")]
    pub impression_queue_rows: Option<u64>,
    /// Rows after which a partition is completed
    #[arg(long, env = "RETORT_IMPRESSION_ROTATE_ROWS")]
    pub impression_rotate_rows: Option<u64>,
    /// Seconds after its first row a partition is completed
    #[arg(long, env = "RETORT_IMPRESSION_ROTATE_SECS")]
    pub impression_rotate_secs: Option<u64>,
}

/// Appends `[default: …]` to the help of every flag in `command` that sets a setting, read off
/// [`Config::default`]. Apply it to each command that flattens [`ServeArgs`].
pub fn show_defaults(command: clap::Command) -> clap::Command {
    let defaults = toml::Table::try_from(Config::default()).expect("the defaults serialise");
    let shown: BTreeMap<String, String> = defaults
        .into_iter()
        .filter(|(key, _)| !FILE_ONLY.contains(&key.as_str()))
        .map(|(key, value)| {
            let value = match value {
                toml::Value::String(s) => s,
                v => v.to_string(),
            };
            (flag_of(&key), value)
        })
        .collect();
    // `mut_args`, not `mut_arg`, which moves the argument to the end and so reorders the
    // sections of `--help`.
    command.mut_args(|arg| match arg.get_long().and_then(|flag| shown.get(flag)) {
        Some(default) => {
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            arg.help(format!("{help} [default: {default}]"))
        }
        None => arg,
    })
}

/// The flag that sets a setting: its name with dashes (`models_dir` is `--models`).
fn flag_of(key: &str) -> String {
    match key {
        "models_dir" => "models".to_string(),
        "catalogs_dir" => "catalogs".to_string(),
        _ => key.replace('_', "-"),
    }
}

/// Moves each model's value of the deprecated table `[old]` to `[models.<name>] key` (its
/// `slot`), noting the move in `moved`; refuses a model set both ways.
fn fold<T>(
    models: &mut BTreeMap<String, ModelSettings>,
    moved: &mut Vec<String>,
    old: &str,
    key: &str,
    values: BTreeMap<String, T>,
    slot: fn(&mut ModelSettings) -> &mut Option<T>,
) -> Result<(), ConfigError> {
    for (name, value) in values {
        if slot(models.entry(name.clone()).or_default()).replace(value).is_some() {
            return Err(ConfigError::Invalid(format!(
                "model `{name}` is set in both [{old}] and [models.{name}] {key}; keep one"
            )));
        }
        moved.push(format!("[{old}] is deprecated: write `{key}` under [models.{name}]"));
    }
    Ok(())
}

/// The settings that are tables, set in the TOML file only (per-model overrides, canary rules,
/// degradation ladders); every other setting also has a flag and a `RETORT_*` variable.
pub const FILE_ONLY: &[&str] = &["models", "canary", "degradation"];

/// Tables still read but moved into `[models.<name>]` ([`Config::fold_deprecated`]).
pub const DEPRECATED: &[&str] = &["model_policies", "model_budgets_ms"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file: {0}")]
    File(#[from] retort_model::toml_file::TomlFileError),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads a TOML file; the deprecated per-model tables are moved into `[models.<name>]`,
    /// each move logged as a warning (once logging is up: see [`Config::deprecations`]).
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            ConfigError::File(retort_model::toml_file::TomlFileError::Read {
                path: path.display().to_string(),
                source,
            })
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses a configuration file's `text`, naming it `origin` in errors: a key no setting
    /// has, or a value of the wrong type, is refused with its key (and line).
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        use retort_model::toml_file::parse;
        let mut config: Config = parse(text, origin).map_err(|flattened| {
            // serde's flatten reports a wrong type without its key or line; the section
            // holding the key, parsed on its own, reports both.
            let alone = parse::<ServerSection>(text, origin)
                .err()
                .or_else(|| parse::<AdmissionSection>(text, origin).err())
                .or_else(|| parse::<RolloutSection>(text, origin).err())
                .or_else(|| parse::<AdminSection>(text, origin).err())
                .or_else(|| parse::<ImpressionsSection>(text, origin).err());
            alone.unwrap_or(flattened)
        })?;
        if !config.unknown.is_empty() {
            let keys: Vec<&str> = config.unknown.keys().map(String::as_str).collect();
            return Err(ConfigError::Invalid(format!(
                "{origin}: unknown setting{} `{}` (the settings are listed by `retort serve --help`)",
                if keys.len() == 1 { "" } else { "s" },
                keys.join("`, `")
            )));
        }
        config.fold_deprecated()?;
        Ok(config)
    }

    /// The defaults, serving the model packages in `models_dir`.
    pub fn serving(models_dir: impl Into<PathBuf>) -> Config {
        let mut config = Config::default();
        config.rollout.models_dir = models_dir.into();
        config
    }

    /// Moves `[model_policies]`, `[model_budgets_ms]` and `[degradation.models]` into
    /// `[models.<name>]`, so that no operator's file breaks; a model set both ways is refused,
    /// since one of the two would silently lose.
    pub fn fold_deprecated(&mut self) -> Result<(), ConfigError> {
        let policies = std::mem::take(&mut self.model_policies);
        let budgets = std::mem::take(&mut self.model_budgets_ms);
        let ladders = std::mem::take(&mut self.admission.degradation.models);
        let mut moved = Vec::new();
        fold(&mut self.models, &mut moved, "model_policies", "policy", policies, |m| &mut m.policy)?;
        fold(&mut self.models, &mut moved, "model_budgets_ms", "budget_ms", budgets, |m| &mut m.budget_ms)?;
        fold(&mut self.models, &mut moved, "degradation.models", "ladder", ladders, |m| &mut m.ladder)?;
        self.deprecated.extend(moved);
        Ok(())
    }

    /// What the file said in a deprecated way, for the server to warn about once it logs.
    pub fn deprecations(&self) -> &[String] {
        &self.deprecated
    }

    /// The degradation ladders, each model's own from `[models.<name>] ladder`.
    pub fn degradation_rules(&self) -> DegradationRules {
        let mut rules = self.admission.degradation.clone();
        rules.models = self.models.iter().filter_map(|(n, m)| Some((n.clone(), m.ladder.clone()?))).collect();
        rules
    }

    /// Layers flags (and their environment variables) over the file, over the defaults.
    pub fn resolve(args: &ServeArgs) -> Result<Config, ConfigError> {
        let mut c = match &args.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        // `$section.$field = flag` for each flag given; `some` for settings that are optional.
        macro_rules! over {
            ($section:ident: $($field:ident),* $(; some $opt:ident)*) => {
                $( if let Some(v) = &args.$section.$field { c.$section.$field = v.clone(); } )*
                $( if let Some(v) = &args.$section.$opt { c.$section.$opt = Some(v.clone()); } )*
            };
        }
        over!(server: listen, max_connections, header_read_timeout_ms, body_read_timeout_ms, max_body_bytes,
            max_candidates, default_top_k, drain_timeout_ms, log_format);
        over!(admission: inference_threads, inline_inference, queue_capacity, max_budget_ms; some default_budget_ms);
        over!(rollout: models_dir, catalogs_dir, engine, max_model_bytes, poll_interval_ms, rollout_policy,
            warmup_latency_factor, persist_warmup, warmup_max_bytes; some default_model);
        over!(admin: ; some admin_token);
        over!(impressions: impression_sample, impression_log_top, impression_queue_rows, impression_rotate_rows,
            impression_rotate_secs; some impressions_dir; some feedback_dir);
        c.admin.admin_open_on_loopback |= args.admin.admin_open_on_loopback;
        c.validate()?;
        if !c.rollout.models_dir.is_dir() {
            return Err(ConfigError::Invalid(format!(
                "the models directory {} does not exist (set it with --models)",
                c.rollout.models_dir.display()
            )));
        }
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        let Config { server, admission, admin, impressions, .. } = self;
        if admission.queue_capacity == 0 {
            return bad("queue_capacity must be at least 1");
        }
        if server.max_body_bytes == 0 || server.max_candidates == 0 {
            return bad("max_body_bytes and max_candidates must be at least 1");
        }
        if server.header_read_timeout_ms == 0 || server.body_read_timeout_ms == 0 {
            return bad("header_read_timeout_ms and body_read_timeout_ms must be at least 1");
        }
        let budgets = admission
            .default_budget_ms
            .iter()
            .chain(self.models.values().filter_map(|m| m.budget_ms.as_ref()));
        if let Some(b) = budgets.chain([&admission.max_budget_ms]).find(|b| !(b.is_finite() && **b > 0.0)) {
            return bad(&format!("budgets must be positive milliseconds, not {b}"));
        }
        let margin = admission.degradation.margin_ms;
        if !(margin.is_finite() && margin >= 0.0) {
            return bad(&format!("degradation.margin_ms must be zero or more, not {margin}"));
        }
        let samples = [("impression_sample".to_string(), impressions.impression_sample)].into_iter().chain(
            self.models
                .iter()
                .filter_map(|(n, m)| Some((format!("[models.{n}] impression_sample"), m.impression_sample?))),
        );
        for (key, p) in samples {
            if !(0.0..=1.0).contains(&p) {
                return bad(&format!("{key} must be a share of requests from 0 to 1, not {p}"));
            }
        }
        if impressions.impression_queue_rows == 0
            || impressions.impression_rotate_rows == 0
            || impressions.impression_rotate_secs == 0
        {
            return bad(
                "impression_queue_rows, impression_rotate_rows and impression_rotate_secs must be at least 1",
            );
        }
        if admin.admin_token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return bad("admin_token is empty; set a real token or leave it unset");
        }
        if admin.admin_open_on_loopback && admin.admin_token.is_none() && !server.listen.ip().is_loopback() {
            return bad(&format!(
                "admin_open_on_loopback needs a loopback listen address, not {}; set an admin token",
                server.listen
            ));
        }
        Ok(())
    }

    /// Every model name the settings mention, with the setting: a name no served model has
    /// is most likely a typo, and its setting silently does nothing.
    pub fn named_models(&self) -> Vec<(&'static str, String)> {
        let mut names: Vec<(&'static str, String)> = Vec::new();
        names.extend(self.rollout.default_model.iter().map(|n| ("default_model", n.clone())));
        names.extend(self.models.keys().map(|n| ("models", n.clone())));
        names
    }

    /// The budget rules every request is resolved by.
    pub fn budgets(&self) -> BudgetRules {
        BudgetRules {
            default_ms: self.admission.default_budget_ms,
            per_model: self.models.iter().filter_map(|(n, m)| Some((n.clone(), m.budget_ms?))).collect(),
            max_ms: self.admission.max_budget_ms,
        }
    }

    /// The rollout's share of the settings: its section with the per-model policies.
    pub fn rollout_settings(&self) -> RolloutSettings {
        let r = &self.rollout;
        RolloutSettings {
            models_dir: r.models_dir.clone(),
            catalogs_dir: r.catalogs_dir.clone(),
            catalogs: self.models.iter().filter_map(|(n, m)| Some((n.clone(), m.catalog.clone()?))).collect(),
            engine: r.engine,
            max_model_bytes: r.max_model_bytes,
            default_model: r.default_model.clone(),
            policy: r.rollout_policy,
            policies: self.models.iter().filter_map(|(n, m)| Some((n.clone(), m.policy?))).collect(),
            latency_factor: r.warmup_latency_factor,
            persist_warmup: r.persist_warmup,
            warmup_max_bytes: r.warmup_max_bytes,
            named_models: self.named_models(),
            #[cfg(feature = "test-hooks")]
            inference_delays: self.test_inference_delays.clone(),
        }
    }

    /// Inference threads to start: the configured number, or one per core.
    /// How the impression and feedback logs write into `dir`: the same queue bound and rotation.
    pub fn log_settings(&self, dir: &Path) -> retort_log::Settings {
        let c = &self.impressions;
        retort_log::Settings {
            dir: dir.to_path_buf(),
            queue_rows: c.impression_queue_rows,
            rotate_rows: c.impression_rotate_rows,
            rotate_after: std::time::Duration::from_secs(c.impression_rotate_secs),
        }
    }

    pub fn threads(&self) -> usize {
        match self.admission.inference_threads {
            0 => cores(),
            n => n,
        }
    }

    /// Whether an idle pool lets a request run its inference on its own thread.
    pub fn inline(&self) -> bool {
        match self.admission.inline_inference {
            InlineInference::Auto => cores() == 1,
            InlineInference::On => true,
            InlineInference::Off => false,
        }
    }
}

/// Cores this process may use: its CPU affinity and cgroup quota count.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_listen_on_loopback_and_serve_models() {
        let c = Config::default();
        assert!(c.server.listen.ip().is_loopback());
        assert_eq!(c.rollout.models_dir, PathBuf::from("models"));
        assert_eq!((c.server.max_body_bytes, c.server.max_candidates), (2 * 1024 * 1024, 2000));
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("retort.toml");
        std::fs::write(&path, "max_candidates = 10\nqueue_capacity = 7\n").unwrap();
        let args = ServeArgs {
            config: Some(path),
            admission: AdmissionFlags { queue_capacity: Some(3), ..Default::default() },
            rollout: RolloutFlags { models_dir: Some(dir.path().to_path_buf()), ..Default::default() },
            ..Default::default()
        };
        let c = Config::resolve(&args).unwrap();
        assert_eq!(c.server.max_candidates, 10);
        assert_eq!(c.admission.queue_capacity, 3);
        assert_eq!(c.server.max_body_bytes, Config::default().server.max_body_bytes);
    }

    #[test]
    fn an_open_admin_api_needs_loopback_and_a_token_must_not_be_blank() {
        let mut open = Config::default();
        open.admin.admin_open_on_loopback = true;
        assert!(open.validate().is_ok());
        let mut exposed = open.clone();
        exposed.server.listen = "0.0.0.0:8080".parse().unwrap();
        assert!(exposed.validate().unwrap_err().to_string().contains("0.0.0.0:8080"));
        let mut with_token = exposed;
        with_token.admin.admin_token = Some("t".into());
        assert!(with_token.validate().is_ok());
        let mut blank = Config::default();
        blank.admin.admin_token = Some("  ".into());
        assert!(blank.validate().unwrap_err().to_string().contains("admin_token"));
    }

    #[test]
    fn degradation_ladders_come_from_the_file_per_model() {
        use crate::admission::degrade::Step;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("retort.toml");
        std::fs::write(
            &path,
            "[degradation]\nmargin_ms = 3.5\n[degradation.models]\nmusic-ranker = [\"truncate\", \"shed\"]\n",
        )
        .unwrap();
        // The deprecated table, then the per-model one: the same ladders.
        let c = Config::from_file(&path).unwrap();
        assert_eq!(c.deprecations().len(), 1, "{:?}", c.deprecations());
        std::fs::write(
            &path,
            "[degradation]\nmargin_ms = 3.5\n[models.music-ranker]\nladder = [\"truncate\", \"shed\"]\n",
        )
        .unwrap();
        let new = Config::from_file(&path).unwrap();
        assert!(new.deprecations().is_empty());
        for c in [c, new] {
            let rules = c.degradation_rules();
            assert_eq!(rules.ladder("music-ranker"), [Step::Truncate, Step::Shed]);
            assert_eq!(rules.ladder("other"), [Step::Fallback, Step::Truncate, Step::Shed]);
            assert_eq!(rules.margin(), std::time::Duration::from_micros(3500));
        }
        // Set both ways, one would silently lose: refused.
        std::fs::write(&path, "[degradation.models]\nm = [\"shed\"]\n[models.m]\nladder = [\"truncate\"]\n")
            .unwrap();
        let err = Config::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("[degradation.models]") && err.contains("[models.m]"), "{err}");
        std::fs::write(&path, "[degradation]\nladder = [\"retry\"]\n").unwrap();
        let err = Config::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("retry"), "{err}");
    }

    // See: issue 14 (12): the README said every setting had a flag, and `--help` restated
    // defaults by hand.
    #[test]
    fn every_setting_but_the_tables_has_a_flag_showing_the_real_default() {
        use clap::Args;
        let written = ServeArgs::augment_args(clap::Command::new("serve"));
        let command = show_defaults(ServeArgs::augment_args(clap::Command::new("serve")));
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        for (key, value) in &defaults {
            if FILE_ONLY.contains(&key.as_str()) {
                assert!(value.is_table(), "`{key}` is file-only, so it must be a table");
                continue;
            }
            let flag = flag_of(key);
            let help = |c: &clap::Command| {
                let arg = c.get_arguments().find(|a| a.get_long() == Some(flag.as_str()));
                let arg = arg.unwrap_or_else(|| panic!("setting `{key}` has no --{flag}"));
                arg.get_help().map(|h| h.to_string()).unwrap_or_default()
            };
            assert!(!help(&written).contains("[default:"), "--{flag} writes its default by hand");
            let real = match value {
                toml::Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            assert!(help(&command).ends_with(&format!("[default: {real}]")), "--{flag}: {}", help(&command));
        }
        for table in FILE_ONLY {
            assert!(defaults.contains_key(*table), "`{table}` is not a setting");
        }
        for table in DEPRECATED {
            assert!(!defaults.contains_key(*table), "`{table}` is written out though deprecated");
        }
    }

    /// Each section's settings are the flags under its heading of `--help`, in the order of
    /// the sections.
    #[test]
    fn the_flags_of_each_section_are_under_its_heading() {
        use clap::Args;
        let command = show_defaults(ServeArgs::augment_args(clap::Command::new("serve")));
        let config = Config::default();
        let sections = [
            ("Server", toml::Table::try_from(&config.server).unwrap()),
            ("Admission", toml::Table::try_from(&config.admission).unwrap()),
            ("Rollout", toml::Table::try_from(&config.rollout).unwrap()),
            ("Admin API", toml::Table::try_from(&config.admin).unwrap()),
            ("Serving logs", toml::Table::try_from(&config.impressions).unwrap()),
        ];
        for (heading, settings) in &sections {
            for key in settings.keys().filter(|k| !FILE_ONLY.contains(&k.as_str())) {
                let flag = flag_of(key);
                let arg = command.get_arguments().find(|a| a.get_long() == Some(flag.as_str())).unwrap();
                assert_eq!(arg.get_help_heading(), Some(*heading), "--{flag}");
            }
        }
        let mut headings: Vec<&str> = command.get_arguments().filter_map(|a| a.get_help_heading()).collect();
        headings.dedup();
        assert_eq!(headings, sections.map(|(h, _)| h));
    }

    #[test]
    fn inline_inference_is_on_off_or_decided_by_the_cores() {
        for (file, expected) in [("on", Some(true)), ("off", Some(false)), ("auto", None)] {
            let c = Config::parse(&format!("inline_inference = \"{file}\""), "retort.toml").unwrap();
            assert_eq!(c.inline(), expected.unwrap_or(cores() == 1), "{file}");
        }
        let wrong = Config::parse("inline_inference = \"sometimes\"", "retort.toml").unwrap_err().to_string();
        assert!(wrong.contains("line 1") && wrong.contains("`sometimes`"), "{wrong}");
    }

    #[test]
    fn a_flag_of_every_section_overrides_the_file() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Serve {
            #[command(flatten)]
            args: ServeArgs,
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("retort.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:1\"\ndefault_model = \"a\"\nadmin_token = \"file\"\n")
            .unwrap();
        let models = dir.path().to_str().unwrap();
        let argv = [
            "serve",
            "--config",
            path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:9",
            "--queue-capacity",
            "3",
            "--default-budget-ms",
            "5",
            "--models",
            models,
            "--default-model",
            "b",
            "--admin-token",
            "flag",
            "--impressions-dir",
            "/var/log/retort",
        ];
        let c = Config::resolve(&Serve::try_parse_from(argv).unwrap().args).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:9".parse().unwrap());
        assert_eq!((c.admission.queue_capacity, c.admission.default_budget_ms), (3, Some(5.0)));
        assert_eq!(
            (c.rollout.models_dir.as_path(), c.rollout.default_model.as_deref()),
            (dir.path(), Some("b"))
        );
        assert_eq!(c.admin.admin_token.as_deref(), Some("flag"));
        assert_eq!(c.impressions.impressions_dir.as_deref(), Some(Path::new("/var/log/retort")));
    }

    #[test]
    fn impression_samples_are_shares_and_rotation_is_positive() {
        for (text, named) in [
            ("impression_sample = 1.5", "impression_sample must be a share"),
            ("[models.m]\nimpression_sample = -0.1", "[models.m] impression_sample must be a share"),
            ("impression_rotate_secs = 0", "impression_rotate_secs"),
            ("impression_queue_rows = 0", "impression_queue_rows"),
        ] {
            let err = Config::parse(text, "retort.toml").and_then(|c| c.validate()).unwrap_err().to_string();
            assert!(err.contains(named), "{text}: {err}");
        }
        let c = Config::parse("impressions_dir = \"logs\"\nimpression_sample = 0.1", "retort.toml").unwrap();
        assert!(c.validate().is_ok());
    }

    // Sections are flattened into one table, and serde's flatten reports a wrong type with
    // no place in the file: the error must still give its line.
    #[test]
    fn a_value_of_the_wrong_type_is_an_error_giving_its_line() {
        for (text, line) in [
            ("listen = \"127.0.0.1:1\"\nqueue_capacity = \"three\"\n", 2),
            ("\n\nlisten = 5\n", 3),
            ("[canary]\nmin_requests = \"x\"\n", 2),
            ("admin_open_on_loopback = 1\n", 1),
            ("\nimpression_sample = \"all\"\n", 2),
        ] {
            let err = Config::parse(text, "retort.toml").unwrap_err().to_string();
            assert!(err.contains(&format!("retort.toml, line {line}, column")), "{text:?}: {err}");
        }
        let err = Config::parse("queue_capacity = 3\nmax_candidate = 10\nlisen = 1\n", "retort.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`lisen`, `max_candidate`"), "{err}");
    }

    #[test]
    fn a_misspelt_file_key_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("retort.toml");
        std::fs::write(&path, "max_candidate = 10\n").unwrap();
        let err = Config::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("max_candidate"), "{err}");
    }
}
