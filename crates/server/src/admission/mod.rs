//! Admission: whether a request gets the full answer, a degraded one or none, decided from its
//! budget, the inference queue and each version's measured cost; and the inference threads.
//!
//! # Layout
//! - [`budget`]: a request's latency budget, resolved by one rule, and its deadline.
//! - [`pool`]: the inference thread pool and its bounded queue.
//! - [`cost`]: each version's live cost model (fixed + per candidate).
//! - [`degrade`]: the degradation ladder: fallback, truncation, shedding.
//! - [`lag`]: the probe that measures how long requests wait for the async workers.

pub mod budget;
pub mod cost;
pub mod degrade;
pub mod lag;
pub mod pool;
