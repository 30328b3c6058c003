//! The examples a student or teacher learns from, and where they come from.
//!
//! # Layout
//! - [`spec`]: the feature spec of a dataset (`features.toml`).
//! - [`dataset`]: datasets of Parquet/CSV partitions, read and checked against a spec.
//! - [`parquet_io`]: writing Parquet files atomically.
//! - [`demo`]: the seeded two-domain demo world.
//! - [`mapping`]: how a teacher's inputs are built from another product's examples.
//! - [`catalog`]: catalog packages built from item tables (`retort catalog`).

pub mod catalog;
pub mod dataset;
pub mod demo;
pub mod mapping;
pub mod parquet_io;
pub mod spec;
