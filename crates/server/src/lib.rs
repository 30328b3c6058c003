//! retort's ranking server: `POST /v1/rank` within a per-request latency budget, over model
//! versions rolled in and out while serving.
//!
//! Its layers depend one way, each only on those before it:
//! `retort-model` ← [`admission`] ← [`rollout`] ← [`config`] ← [`http`]. [`config`] gathers
//! the lower layers' settings; [`http`] starts every layer from it. A test (`tests/layers.rs`)
//! refuses an import that points the other way.
//!
//! # Layout
//! - [`admission`]: budgets, the degradation ladder, cost models, the inference pool.
//! - [`rollout`]: model versions and their states, routes, hot swaps, the watcher, canaries.
//! - [`http`]: the HTTP API (rank, admin, health, readiness, metrics) and its connections.
//! - [`config`]: the server's configuration (flags, environment, TOML file, defaults).
//! - [`histogram`]: the one histogram, lock-free, read as quantiles and exported to Prometheus.
//! - [`shutdown`]: the ctrl-c / SIGTERM signal.
//! - [`allocator`]: jemalloc, with zeroed allocations zeroed by writing.

pub mod admission;
pub mod allocator;
pub mod config;
pub mod histogram;
pub mod http;
pub mod rollout;
pub mod shutdown;
