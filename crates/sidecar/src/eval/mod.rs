//! Evaluation: how good a trained model is on data it did not learn from.
//!
//! # Layout
//! - [`metrics`]: AUC, GAUC, NDCG@10, calibration, distance to the truth.
//! - [`holdout`]: a trained model's or a package's metrics on held-out rows.

pub mod holdout;
pub mod metrics;
