//! retort's distillation sidecar: examples, teacher labels computed once into a shared store,
//! students trained with auxiliary distillation heads, evaluated, gated and published as model
//! packages, and the budgeted search for the best teacher.
//!
//! The server never links this crate; the model package (`retort-model`) is the only thing the
//! two share. Its folders depend one way, each only on those before it:
//! `data ← join ← label ← train ← eval ← release ← experiments ← search` (`progress` serves all;
//! `tests/layers.rs` refuses an upward import).
//!
//! # Layout
//! - [`data`]: datasets and their feature spec, the demo world, cross-domain mappings.
//! - [`join`]: `retort examples`: impression logs joined with feedback into examples.
//! - [`label`]: `retort label` and the label store it writes.
//! - [`train`]: the student in candle, distillation modes and losses, the optimiser, the loop.
//! - [`eval`]: offline ranking metrics on a holdout.
//! - [`release`]: `retort train`: config, holdout, the publish gate, the continuous cycle.
//! - [`search`]: `retort teacher-search`: its space, schedule, objective and report.
//! - [`experiments`]: `retort distill` and `retort quickstart`.
//! - [`progress`]: progress of long steps, on a terminal or in the logs.

pub mod data;
pub mod eval;
pub mod experiments;
pub mod join;
pub mod label;
pub mod progress;
pub mod release;
pub mod search;
pub mod train;
