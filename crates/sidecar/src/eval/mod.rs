//! Evaluation: how good a trained model is on data it did not learn from.
//!
//! # Layout
//! - [`metrics`]: AUC, GAUC, NDCG@10, calibration, distance to the truth.

pub mod metrics;
