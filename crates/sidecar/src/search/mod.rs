//! `retort teacher-search`: the teacher whose labels make the student best, within a budget.
//!
//! # Layout
//! - [`space`]: the search space and the candidates drawn from it.
//! - [`halving`]: successive halving within a budget, the search's schedule.
//! - [`teacher`]: the objective, the search itself and the winner's measurement.
//! - [`report`]: the ranked table, plot and disagreement counts.

pub mod halving;
pub mod report;
pub mod space;
pub mod teacher;
