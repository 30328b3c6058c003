//! An open-loop load generator for retort's ranking API (`POST /v1/rank`), and for any server
//! that speaks it.
//!
//! Requests leave at fixed intended times (constant spacing or Poisson arrivals) whatever the
//! server does, and each one's latency is measured from its intended send time: a server that
//! stalls cannot slow the load down and hide its stall (coordinated omission). Runs are bounded
//! by a request count and a duration, and only ever target a loopback address.
//!
//! # Layout
//! - [`target`]: the server's address, checked to be loopback.
//! - [`requests`]: request bodies, from a template or generated from a model's manifest.
//! - [`driver`]: sends one phase of load and records every request's fate.
//! - [`report`]: percentiles, rates, statuses, degraded modes and versions of a phase.
//! - [`plot`]: the latency distributions as SVG.
//! - [`scenario`]: steady, find-max, swap and overload.

pub mod driver;
pub mod plot;
pub mod report;
pub mod requests;
pub mod scenario;
pub mod target;

/// What can stop a load test before it reports.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Target(String),
    #[error("{path}: {message}")]
    Input { path: String, message: String },
    #[error("admin call {call} failed: {message}")]
    Admin { call: String, message: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}
