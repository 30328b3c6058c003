//! Rolling model versions in and out while serving: every version the server has seen and its
//! state, the staged load that brings a new version up off the serving path, and the
//! operations that change what serves (promote, canary, shadow, rollback), each one atomic
//! swap of the routing table, [`routes::Routes`].
//!
//! A version moves through
//! `loading → staged → (shadow | canary) → serving → previous → retired`, or ends `failed`
//! with the reason. `previous` is the last known-good version, kept loaded so that a rollback
//! is one swap; the version before it is retired and its memory is freed once the last request
//! that started on it finishes.
//!
//! # Layout
//! - [`routes`]: the served models, their routes, and how a request picks a version.
//! - [`shadow`]: scoring a share of requests with a shadow version, and the agreement found.
//! - [`events`]: what the rollout did, counted for Prometheus.
//! - [`items`]: the item catalogs candidates are looked up in, and which one each model reads.
//! - [`memory`]: handing retired versions' memory back to the system.
//! - [`stats`]: per-version request counts and latency quantiles.
//! - [`registry`]: the versions, their states and the operations.
//! - [`warmup`]: warming a new version: its golden examples at a few batch sizes, then recent
//!   requests (kept per model) replayed to it.
//! - [`watch`]: the models-directory poller and the canary judge.

pub mod events;
pub mod items;
pub mod memory;
pub mod registry;
pub mod routes;
pub mod shadow;
pub mod stats;
pub mod warmup;
pub mod watch;

pub use registry::{Policy, Rollout, RolloutError, State, VersionInfo};

pub use routes::Routes;
