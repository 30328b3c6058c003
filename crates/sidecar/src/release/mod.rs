//! From a config file to a published model package: `retort train` and its continuous cycle.
//!
//! # Layout
//! - [`run`]: `retort train`: config file, time holdout, evaluation, publishing.
//! - [`publish`]: the publish gate against the serving version, and notifying a server.
//! - [`cycle`]: the train → gate → publish → notify round, and `--follow`.

pub mod cycle;
pub mod publish;
pub mod run;
