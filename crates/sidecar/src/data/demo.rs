//! The demo world (`retort demo-data`): a seeded simulation of two products that share users.
//!
//! Users have a latent taste vector that both products see. The **source** product ("video")
//! has ~100x the traffic of the **target** ("music"); each has its own items, ids and features,
//! except a content embedding that both compute with the same content model (a noisy projection
//! of an item's latent vector). Each request shows a slate of items; feedback comes from the
//! user–item affinity, the position in the slate and noise:
//!
//! - target: `play`, then given a play `skip`, `long_listen` (if not skipped) and `like`;
//! - source: `click`, then `watch_long`, `like`, and `continue_watching` after a long watch.
//!
//! `skip` has no source counterpart. The true probability of every label is written beside it
//! (`p_<task>`), so evaluation can say how close a model gets to the truth. Every partition (one
//! per domain and day) is generated from its own seed, so a rerun resumes where it stopped and
//! the same seed gives the same bytes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow_array::builder::{
    Float32Builder, Float64Builder, Int32Builder, Int64Builder, ListBuilder, StringBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use serde::{Deserialize, Serialize};

use crate::data::mapping::{Mapping, Source};
use crate::data::parquet_io::{self, WriteError};
use crate::data::spec::{DataSpec, KeyColumns, Task};
use retort_model::manifest::{FeatureColumn, FeatureKind, HeadKind, Side};
use retort_model::rng::SplitMix64;

/// Width of the latent taste space and of the shared content embedding.
pub const LATENT: usize = 8;
/// 2026-01-01T00:00:00Z: day 0 of the demo world.
pub const EPOCH: i64 = 1_767_225_600;

const COUNTRIES: [&str; 12] = ["SE", "US", "GB", "DE", "FR", "BR", "JP", "IN", "MX", "ES", "IT", "NL"];
const DEVICES: [&str; 3] = ["mobile", "desktop", "tv"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoConfig {
    pub seed: u64,
    pub users: usize,
    pub days: usize,
    /// Target requests over the whole window.
    pub target_requests: usize,
    /// Source requests per target request.
    pub source_ratio: usize,
    /// Items shown per request.
    pub slate: usize,
    pub tracks: usize,
    pub artists: usize,
    pub videos: usize,
    pub channels: usize,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            seed: 7,
            users: 2000,
            days: 7,
            target_requests: 2000,
            source_ratio: 100,
            slate: 10,
            tracks: 3000,
            artists: 300,
            videos: 30000,
            channels: 2000,
        }
    }
}

impl DemoConfig {
    /// Multiplies traffic (requests) by `scale`, keeping the catalogues: `--scale 100` gives a
    /// target domain of millions of rows for benchmarks.
    pub fn scaled(mut self, scale: usize) -> DemoConfig {
        self.target_requests *= scale.max(1);
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Domain {
    Target,
    Source,
}

impl Domain {
    pub fn as_str(self) -> &'static str {
        match self {
            Domain::Target => "target",
            Domain::Source => "source",
        }
    }

    pub(crate) fn tag(self) -> i64 {
        match self {
            Domain::Target => 1,
            Domain::Source => 2,
        }
    }
}

impl std::fmt::Display for Domain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

struct User {
    id: String,
    country: usize,
    device: usize,
    age_days: f64,
    taste: [f64; LATENT],
}

struct Item {
    id: String,
    group: String,
    family: String,
    latent: [f64; LATENT],
    bias: f64,
    duration_s: f64,
    popularity: f64,
    content: [f32; LATENT],
}

/// Users, catalogues and the shared content model: everything fixed by the seed alone.
pub struct World {
    config: DemoConfig,
    users: Vec<User>,
    /// Cumulative activity weights for sampling users.
    user_cdf: Vec<f64>,
    tracks: Vec<Item>,
    track_cdf: Vec<f64>,
    videos: Vec<Item>,
    video_cdf: Vec<f64>,
}

fn gaussian(rng: &mut SplitMix64) -> f64 {
    // Box–Muller; one value per call keeps the stream simple to reason about.
    let u1 = rng.next_f64().max(1e-300);
    let u2 = rng.next_f64();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn vector(rng: &mut SplitMix64, scale: f64) -> [f64; LATENT] {
    std::array::from_fn(|_| scale * gaussian(rng))
}

fn add(a: &[f64; LATENT], b: &[f64; LATENT]) -> [f64; LATENT] {
    std::array::from_fn(|i| a[i] + b[i])
}

fn dot(a: &[f64; LATENT], b: &[f64; LATENT]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn cdf(weights: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut acc = 0.0;
    weights
        .map(|w| {
            acc += w;
            acc
        })
        .collect()
}

fn sample(cdf: &[f64], rng: &mut SplitMix64) -> usize {
    let x = rng.next_f64() * cdf.last().copied().unwrap_or(0.0);
    cdf.partition_point(|&c| c <= x).min(cdf.len() - 1)
}

impl World {
    pub fn new(config: DemoConfig) -> World {
        let mut rng = SplitMix64::new(config.seed);
        let countries: Vec<[f64; LATENT]> = (0..COUNTRIES.len()).map(|_| vector(&mut rng, 0.5)).collect();
        let country_cdf = cdf((0..COUNTRIES.len()).map(|k| 1.0 / (1.0 + k as f64)));
        let users: Vec<User> = (0..config.users)
            .map(|u| {
                let country = sample(&country_cdf, &mut rng);
                let device = sample(&[0.6, 0.9, 1.0], &mut rng);
                User {
                    id: format!("u{u}"),
                    country,
                    device,
                    age_days: rng.uniform(1.0, 2000.0).floor(),
                    taste: add(&countries[country], &vector(&mut rng, 0.8)),
                }
            })
            .collect();
        let user_cdf = cdf(users.iter().map(|_| (0.8 * gaussian(&mut rng)).exp()));
        // The content model both products use: a fixed random projection of the latent space.
        let projection: Vec<[f64; LATENT]> = (0..LATENT).map(|_| vector(&mut rng, 0.35)).collect();
        let content = |latent: &[f64; LATENT], rng: &mut SplitMix64| -> [f32; LATENT] {
            std::array::from_fn(|i| (dot(&projection[i], latent) + 0.25 * gaussian(rng)) as f32)
        };

        // Music: genres → artists → tracks.
        let genres: Vec<[f64; LATENT]> = (0..16).map(|_| vector(&mut rng, 0.6)).collect();
        let artists: Vec<(usize, [f64; LATENT])> = (0..config.artists)
            .map(|_| {
                let g = rng.below(genres.len() as u64) as usize;
                (g, add(&genres[g], &vector(&mut rng, 0.4)))
            })
            .collect();
        let artist_cdf = cdf((0..config.artists).map(|a| 1.0 / (1.0 + a as f64).powf(0.8)));
        let tracks: Vec<Item> = (0..config.tracks)
            .map(|t| {
                let a = sample(&artist_cdf, &mut rng);
                let latent = add(&artists[a].1, &vector(&mut rng, 0.3));
                let popularity = rng.next_f64();
                Item {
                    id: format!("t{t}"),
                    group: format!("a{a}"),
                    family: format!("g{}", artists[a].0),
                    bias: 0.3 * gaussian(&mut rng) + 0.8 * (popularity - 0.5),
                    duration_s: (210.0 + 50.0 * gaussian(&mut rng)).clamp(60.0, 600.0).round(),
                    popularity,
                    content: content(&latent, &mut rng),
                    latent,
                }
            })
            .collect();
        let track_cdf = cdf(tracks.iter().map(|t| 0.2 + t.popularity.powi(3)));

        // Video: categories → channels → videos.
        let categories: Vec<[f64; LATENT]> = (0..20).map(|_| vector(&mut rng, 0.6)).collect();
        let channels: Vec<(usize, [f64; LATENT])> = (0..config.channels)
            .map(|_| {
                let c = rng.below(categories.len() as u64) as usize;
                (c, add(&categories[c], &vector(&mut rng, 0.4)))
            })
            .collect();
        let channel_cdf = cdf((0..config.channels).map(|c| 1.0 / (1.0 + c as f64).powf(0.7)));
        let videos: Vec<Item> = (0..config.videos)
            .map(|v| {
                let c = sample(&channel_cdf, &mut rng);
                let latent = add(&channels[c].1, &vector(&mut rng, 0.3));
                let popularity = rng.next_f64();
                Item {
                    id: format!("v{v}"),
                    group: format!("c{c}"),
                    family: format!("k{}", channels[c].0),
                    bias: 0.3 * gaussian(&mut rng) + 1.0 * (popularity - 0.5),
                    duration_s: (400.0 * (0.7 * gaussian(&mut rng)).exp()).clamp(20.0, 7200.0).round(),
                    popularity,
                    content: content(&latent, &mut rng),
                    latent,
                }
            })
            .collect();
        let video_cdf = cdf(videos.iter().map(|v| 0.2 + v.popularity.powi(3)));
        World { config, users, user_cdf, tracks, track_cdf, videos, video_cdf }
    }

    pub fn config(&self) -> &DemoConfig {
        &self.config
    }

    fn requests(&self, domain: Domain, day: usize) -> usize {
        let total = match domain {
            Domain::Target => self.config.target_requests,
            Domain::Source => self.config.target_requests * self.config.source_ratio,
        };
        // Spread the remainder over the first days so the total is exact.
        total / self.config.days + usize::from(day < total % self.config.days)
    }

    /// One day of one domain as a record batch.
    pub fn partition(&self, domain: Domain, day: usize) -> RecordBatch {
        let mut rng =
            SplitMix64::new(self.config.seed ^ (domain.tag() as u64) << 56 ^ (day as u64 + 1) << 40);
        let (items, item_cdf) = match domain {
            Domain::Target => (&self.tracks, &self.track_cdf),
            Domain::Source => (&self.videos, &self.video_cdf),
        };
        let tasks = tasks(domain);
        let mut b = Builders::new(tasks.len());
        let mut row_in_day: i64 = 0;
        for r in 0..self.requests(domain, day) {
            let user = &self.users[sample(&self.user_cdf, &mut rng)];
            let ts = EPOCH + (day as i64) * 86_400 + rng.below(86_400) as i64;
            let request_id = (domain.tag() << 48) | ((day as i64) << 32) | r as i64;
            let slate = self.slate(user, items, item_cdf, &mut rng);
            for (pos, &i) in slate.iter().enumerate() {
                let item = &items[i];
                let affinity = dot(&user.taste, &item.latent) + item.bias;
                let (truth, labels) = feedback(domain, affinity, pos, user, item, &mut rng);
                b.example_id.append_value((domain.tag() << 48) | ((day as i64) << 32) | row_in_day);
                row_in_day += 1;
                b.request_id.append_value(request_id);
                b.ts.append_value(ts);
                b.position.append_value(pos as i32);
                b.user_id.append_value(&user.id);
                b.country.append_value(COUNTRIES[user.country]);
                b.device.append_value(DEVICES[user.device]);
                b.hour.append_value((ts % 86_400) / 3_600);
                b.account_age_days.append_value(user.age_days);
                b.item_id.append_value(&item.id);
                b.group.append_value(&item.group);
                b.family.append_value(&item.family);
                b.duration_s.append_value(item.duration_s);
                b.popularity.append_value(item.popularity);
                b.content.values().append_slice(&item.content);
                b.content.append(true);
                for (k, (p, y)) in truth.iter().zip(labels).enumerate() {
                    b.truth[k].append_value(*p as f32);
                    b.labels[k].append_value(y as i32);
                }
            }
        }
        b.finish(domain, &tasks)
    }

    /// The domain's item table: one row per item, its item columns only (`items/<domain>.parquet`,
    /// what `retort catalog` builds a catalog from).
    pub fn items(&self, domain: Domain) -> RecordBatch {
        let items = match domain {
            Domain::Target => &self.tracks,
            Domain::Source => &self.videos,
        };
        let mut id = StringBuilder::new();
        let mut group = StringBuilder::new();
        let mut family = StringBuilder::new();
        let mut duration = Float64Builder::new();
        let mut popularity = Float64Builder::new();
        let mut content =
            ListBuilder::new(Float32Builder::new()).with_field(Field::new("item", DataType::Float32, false));
        for item in items {
            id.append_value(&item.id);
            group.append_value(&item.group);
            family.append_value(&item.family);
            duration.append_value(item.duration_s);
            popularity.append_value(item.popularity);
            content.values().append_slice(&item.content);
            content.append(true);
        }
        let names = item_columns(domain);
        let list = DataType::List(Arc::new(Field::new("item", DataType::Float32, false)));
        let types =
            [DataType::Utf8, DataType::Utf8, DataType::Utf8, DataType::Float64, DataType::Float64, list];
        let fields: Vec<Field> = names.iter().zip(types).map(|(n, t)| Field::new(*n, t, false)).collect();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(id.finish()),
            Arc::new(group.finish()),
            Arc::new(family.finish()),
            Arc::new(duration.finish()),
            Arc::new(popularity.finish()),
            Arc::new(content.finish()),
        ];
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
            .expect("the demo item schema matches its columns. This is a bug.")
    }

    /// A slate: mostly popular items, some the user would like, no repeats.
    fn slate(&self, user: &User, items: &[Item], item_cdf: &[f64], rng: &mut SplitMix64) -> Vec<usize> {
        let size = self.config.slate.min(items.len());
        let mut slate: Vec<usize> = Vec::with_capacity(size);
        let mut attempts = 0;
        while slate.len() < size && attempts < size * 50 {
            attempts += 1;
            let pick = if rng.next_f64() < 0.7 {
                sample(item_cdf, rng)
            } else {
                // Personalised retrieval: the best of a few random items for this user.
                (0..20)
                    .map(|_| rng.below(items.len() as u64) as usize)
                    .max_by(|&a, &b| {
                        dot(&user.taste, &items[a].latent).total_cmp(&dot(&user.taste, &items[b].latent))
                    })
                    .expect("20 picks")
            };
            if !slate.contains(&pick) {
                slate.push(pick);
            }
        }
        slate
    }
}

/// Tasks per domain, in column order.
pub fn tasks(domain: Domain) -> Vec<&'static str> {
    match domain {
        Domain::Target => vec!["play", "skip", "long_listen", "like"],
        Domain::Source => vec!["click", "watch_long", "like", "continue_watching"],
    }
}

/// True probabilities and sampled labels for one shown item, in `tasks(domain)` order.
fn feedback(
    domain: Domain,
    s: f64,
    pos: usize,
    user: &User,
    item: &Item,
    rng: &mut SplitMix64,
) -> ([f64; 4], [bool; 4]) {
    let mut bern = |p: f64| rng.next_f64() < p;
    match domain {
        Domain::Target => {
            let examined = 1.0 / (1.0 + 0.15 * pos as f64);
            let desktop = if user.device == 1 { 0.3 } else { 0.0 };
            let p_play = examined * sigmoid(1.2 * s - 0.5 + desktop);
            let q_skip = sigmoid(-1.2 * s + 0.2 + (item.duration_s - 210.0) / 120.0);
            let q_long = sigmoid(1.0 * s + 0.2 - (item.duration_s - 210.0) / 200.0);
            let q_like = sigmoid(1.5 * s - 2.5);
            let play = bern(p_play);
            let skip = play && bern(q_skip);
            let long = play && !skip && bern(q_long);
            let like = play && bern(q_like);
            let truth = [p_play, p_play * q_skip, p_play * (1.0 - q_skip) * q_long, p_play * q_like];
            (truth, [play, skip, long, like])
        }
        Domain::Source => {
            let examined = 1.0 / (1.0 + 0.3 * pos as f64);
            let tv = if user.device == 2 { 0.4 } else { 0.0 };
            let p_click = examined * sigmoid(1.0 * s - 1.0 + tv);
            let q_long = sigmoid(1.2 * s - 0.3 - (item.duration_s - 400.0) / 600.0);
            let q_like = sigmoid(1.3 * s - 2.8);
            let q_continue = sigmoid(0.8 * s - 0.5);
            let click = bern(p_click);
            let long = click && bern(q_long);
            let like = click && bern(q_like);
            let cont = long && bern(q_continue);
            let truth = [p_click, p_click * q_long, p_click * q_like, p_click * q_long * q_continue];
            (truth, [click, long, like, cont])
        }
    }
}

/// Column names of the item features, per domain.
fn item_columns(domain: Domain) -> [&'static str; 6] {
    match domain {
        Domain::Target => ["track_id", "artist_id", "genre", "duration_s", "popularity", "track_embedding"],
        Domain::Source => {
            ["video_id", "channel_id", "category", "duration_s", "popularity", "content_embedding"]
        }
    }
}

struct Builders {
    example_id: Int64Builder,
    request_id: Int64Builder,
    ts: Int64Builder,
    position: Int32Builder,
    user_id: StringBuilder,
    country: StringBuilder,
    device: StringBuilder,
    hour: Int64Builder,
    account_age_days: Float64Builder,
    item_id: StringBuilder,
    group: StringBuilder,
    family: StringBuilder,
    duration_s: Float64Builder,
    popularity: Float64Builder,
    content: ListBuilder<Float32Builder>,
    labels: Vec<Int32Builder>,
    truth: Vec<Float32Builder>,
}

impl Builders {
    fn new(tasks: usize) -> Builders {
        Builders {
            example_id: Int64Builder::new(),
            request_id: Int64Builder::new(),
            ts: Int64Builder::new(),
            position: Int32Builder::new(),
            user_id: StringBuilder::new(),
            country: StringBuilder::new(),
            device: StringBuilder::new(),
            hour: Int64Builder::new(),
            account_age_days: Float64Builder::new(),
            item_id: StringBuilder::new(),
            group: StringBuilder::new(),
            family: StringBuilder::new(),
            duration_s: Float64Builder::new(),
            popularity: Float64Builder::new(),
            content: ListBuilder::new(Float32Builder::new()).with_field(Field::new(
                "item",
                DataType::Float32,
                false,
            )),
            labels: (0..tasks).map(|_| Int32Builder::new()).collect(),
            truth: (0..tasks).map(|_| Float32Builder::new()).collect(),
        }
    }

    fn finish(mut self, domain: Domain, tasks: &[&str]) -> RecordBatch {
        let [item_id, group, family, duration, popularity, content] = item_columns(domain);
        let mut fields = vec![
            Field::new("example_id", DataType::Int64, false),
            Field::new("request_id", DataType::Int64, false),
            Field::new("ts", DataType::Int64, false),
            Field::new("position", DataType::Int32, false),
            Field::new("user_id", DataType::Utf8, false),
            Field::new("country", DataType::Utf8, false),
            Field::new("device", DataType::Utf8, false),
            Field::new("hour", DataType::Int64, false),
            Field::new("account_age_days", DataType::Float64, false),
            Field::new(item_id, DataType::Utf8, false),
            Field::new(group, DataType::Utf8, false),
            Field::new(family, DataType::Utf8, false),
            Field::new(duration, DataType::Float64, false),
            Field::new(popularity, DataType::Float64, false),
            Field::new(
                content,
                DataType::List(Arc::new(Field::new("item", DataType::Float32, false))),
                false,
            ),
        ];
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.example_id.finish()),
            Arc::new(self.request_id.finish()),
            Arc::new(self.ts.finish()),
            Arc::new(self.position.finish()),
            Arc::new(self.user_id.finish()),
            Arc::new(self.country.finish()),
            Arc::new(self.device.finish()),
            Arc::new(self.hour.finish()),
            Arc::new(self.account_age_days.finish()),
            Arc::new(self.item_id.finish()),
            Arc::new(self.group.finish()),
            Arc::new(self.family.finish()),
            Arc::new(self.duration_s.finish()),
            Arc::new(self.popularity.finish()),
            Arc::new(self.content.finish()),
        ];
        for (k, task) in tasks.iter().enumerate() {
            fields.push(Field::new(*task, DataType::Int32, false));
            columns.push(Arc::new(self.labels[k].finish()));
        }
        for (k, task) in tasks.iter().enumerate() {
            fields.push(Field::new(format!("p_{task}"), DataType::Float32, false));
            columns.push(Arc::new(self.truth[k].finish()));
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
            .expect("the demo schema matches its columns. This is a bug.")
    }
}

/// The feature spec of one domain's examples.
pub fn spec(domain: Domain) -> DataSpec {
    use FeatureKind::{Categorical, Number, Vector};
    let cat = |buckets| Categorical { buckets, default: None, vocabulary: None };
    let column = |name: &str, side, kind| FeatureColumn { name: name.to_string(), side, kind };
    let [item_id, group, family, duration, popularity, content] = item_columns(domain);
    let (items, groups, duration_mean, duration_std) = match domain {
        Domain::Target => (10_000, 2_000, 210.0, 60.0),
        Domain::Source => (50_000, 5_000, 400.0, 300.0),
    };
    DataSpec {
        columns: KeyColumns::default(),
        features: vec![
            column("user_id", Side::Context, cat(5000)),
            column("country", Side::Context, cat(256)),
            column("device", Side::Context, cat(16)),
            column("hour", Side::Context, cat(25)),
            column("account_age_days", Side::Context, Number { mean: 1000.0, std: 577.0, default: 1000.0 }),
            column(item_id, Side::Item, cat(items)),
            column(group, Side::Item, cat(groups)),
            column(family, Side::Item, cat(64)),
            column(
                duration,
                Side::Item,
                Number { mean: duration_mean, std: duration_std, default: duration_mean },
            ),
            column(popularity, Side::Item, Number { mean: 0.5, std: 0.29, default: 0.5 }),
            column(content, Side::Item, Vector { dim: LATENT, default: None }),
        ],
        tasks: tasks(domain)
            .into_iter()
            .map(|t| Task {
                name: t.to_string(),
                kind: HeadKind::Binary,
                column: None,
                truth: Some(format!("p_{t}")),
            })
            .collect(),
    }
}

/// How a teacher trained on the source domain reads target examples: shared user features and
/// the shared content embedding map across, video ids and categories do not exist for tracks.
pub fn mapping() -> Mapping {
    let column = |c: &str| Source::Column(c.to_string());
    let mut features = std::collections::BTreeMap::new();
    for shared in ["user_id", "country", "device", "hour", "account_age_days", "duration_s", "popularity"] {
        features.insert(shared.to_string(), column(shared));
    }
    features.insert("content_embedding".into(), column("track_embedding"));
    for missing in ["video_id", "channel_id", "category"] {
        features.insert(missing.to_string(), Source::Default(true));
    }
    let targets = [("play", "click"), ("long_listen", "watch_long"), ("like", "like")]
        .iter()
        .map(|(t, h)| (t.to_string(), h.to_string()))
        .collect();
    Mapping { features, targets }
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path} holds a different demo world (another seed or size); choose another directory")]
    Different { path: String },
}

/// What `generate` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Generated {
    pub written: Vec<PathBuf>,
    pub kept: Vec<PathBuf>,
    pub rows: usize,
}

/// Writes the world under `out`: `world.toml`, per domain `features.toml` and one Parquet
/// partition per day, and each domain's item table in `items/<domain>.parquet`. Partitions already there (from an interrupted run of the same world) are
/// kept, not rewritten.
pub fn generate(out: &Path, config: &DemoConfig, domains: &[Domain]) -> Result<Generated, DemoError> {
    let io = |p: &Path| {
        let p = p.display().to_string();
        move |source| DemoError::Io { path: p, source }
    };
    std::fs::create_dir_all(out).map_err(io(out))?;
    let world_file = out.join("world.toml");
    let world_toml = toml::to_string(config).expect("the demo config serialises. This is a bug.");
    match std::fs::read_to_string(&world_file) {
        Ok(existing) if existing != world_toml => {
            return Err(DemoError::Different { path: out.display().to_string() });
        }
        Ok(_) => {}
        Err(_) => parquet_io::write_text(&world_file, &world_toml).map_err(io(&world_file))?,
    }
    let mapping_file = out.join("mapping.toml");
    parquet_io::write_text(&mapping_file, &mapping().to_toml()).map_err(io(&mapping_file))?;
    let world = World::new(config.clone());
    let mut jobs = Vec::new();
    for &domain in domains {
        let dir = out.join(domain.as_str());
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let spec_file = dir.join("features.toml");
        parquet_io::write_text(&spec_file, &spec(domain).to_toml()).map_err(io(&spec_file))?;
        // Beside the examples, not among them: a dataset directory's files are its partitions.
        let items_file = out.join("items").join(format!("{}.parquet", domain.as_str()));
        if !items_file.exists() {
            std::fs::create_dir_all(out.join("items")).map_err(io(out))?;
            let batch = world.items(domain);
            parquet_io::write_atomic(&items_file, batch.schema(), &[batch], &[])?;
        }
        for day in 0..config.days {
            jobs.push((domain, day, dir.join(format!("day-{day:03}.parquet"))));
        }
    }
    let next = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(jobs.len().max(1));
    let results: Vec<Result<(PathBuf, Option<usize>), DemoError>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((domain, day, path)) = jobs.get(i) else { break };
                        if path.exists() {
                            done.push(Ok((path.clone(), None)));
                            continue;
                        }
                        let batch = world.partition(*domain, *day);
                        let rows = batch.num_rows();
                        let meta = [("retort.demo.seed".to_string(), config.seed.to_string())];
                        done.push(
                            parquet_io::write_atomic(path, batch.schema(), &[batch], &meta)
                                .map(|_| (path.clone(), Some(rows)))
                                .map_err(DemoError::from),
                        );
                    }
                    done
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().expect("a demo worker panicked. This is a bug.")).collect()
    });
    let mut generated = Generated::default();
    for r in results {
        match r? {
            (path, Some(rows)) => {
                generated.rows += rows;
                generated.written.push(path);
            }
            (path, None) => generated.kept.push(path),
        }
    }
    generated.written.sort();
    generated.kept.sort();
    Ok(generated)
}
