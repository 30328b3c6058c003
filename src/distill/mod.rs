//! The distillation sidecar: examples, the demo world, teacher labelling and the shared label
//! store. The server never calls into this module; the model package is the only thing the two
//! share.
//!
//! # Layout
//! - [`spec`]: the feature spec of a dataset (`features.toml`).
//! - [`dataset`]: datasets of Parquet/CSV partitions, read and checked against a spec.
//! - [`parallel`]: independent trainings side by side, one per core.
//! - [`parquet_io`]: writing Parquet files atomically.
//! - [`demo`]: the seeded two-domain demo world.
//! - [`mapping`]: how a teacher's inputs are built from another product's examples.
//! - [`label`]: `retort label`, running a teacher over a dataset into the label store.
//! - [`store`]: the label store's layout and metadata.
//! - [`student`]: the two-tower student in candle, initialised and exported as the ONNX writer's.
//! - [`kd`]: distillation modes (none, direct, aux, aux-new) and each head's loss.
//! - [`losses`]: stable BCE on logits, MSE, tempered distillation loss.
//! - [`adamw`]: AdamW fused into one in-place pass per parameter, with a savable state.
//! - [`checkpoint`]: weights and optimiser state beside a package, for warm starts.
//! - [`train`]: training data in memory, the AdamW minibatch loop, AUC.
//! - [`metrics`]: AUC, GAUC, NDCG@10, calibration, distance to the truth.
//! - [`run`]: `retort train`: config file, time holdout, evaluation, publishing.
//! - [`publish`]: the publish gate against the serving version, and notifying a server.
//! - [`quickstart`]: `retort quickstart`, the whole loop on the demo world.
//! - [`cycle`]: `retort train`'s train → gate → publish → notify round, and `--follow`.
//! - [`compare`]: `retort distill`: control against distilled twins over paired seeds.
//! - [`halving`]: successive halving within a budget, the teacher search's schedule.
//! - [`search_space`]: the teacher search's space and the candidates drawn from it.
//! - [`search_report`]: the teacher search's ranked table, plot and disagreement counts.
//! - [`teacher_search`]: `retort teacher-search`, the objective and the winner's measurement.

pub mod adamw;
pub mod checkpoint;
pub mod compare;
pub mod cycle;
pub mod dataset;
pub mod demo;
pub mod halving;
pub mod kd;
pub mod label;
pub mod losses;
pub mod mapping;
pub mod metrics;
pub mod parallel;
pub mod parquet_io;
pub mod publish;
pub mod quickstart;
pub mod run;
pub mod search_report;
pub mod search_space;
pub mod spec;
pub mod store;
pub mod student;
pub mod teacher_search;
pub mod train;
