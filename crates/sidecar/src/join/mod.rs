//! `retort examples`: the server's impression log joined with the feedback users sent, into
//! examples a student trains on (one row per shown candidate, each task's label from the events
//! the join's config maps to it). An impression partition is joined once its attribution window
//! has closed, into one examples partition of the same name, so a rerun resumes where the last
//! one stopped and never writes a row twice. Format and rules: `docs/loop.md`.
//!
//! # Layout
//! - [`config`]: the join's config file: the feature spec to write, the window, the tasks.
//! - [`attribute`]: which events count for which impression, and what was late or repeated.
//! - [`rows`]: logged impressions back to feature columns, as the server read them.
//! - [`run`]: one pass over the logs, and `--follow`.

pub mod attribute;
pub mod config;
pub mod rows;
pub mod run;
