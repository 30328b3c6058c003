//! retort's serving logs: what the server showed (impressions) and what users did
//! (feedback), written as Parquet partitions that `retort examples` joins into training rows.
//! The server writes them and the sidecar reads them; this crate is the contract between the
//! two, as `retort-model` is for model packages.
//!
//! # Layout
//! - [`writer`]: the bounded queue and the thread that writes and rotates partitions.
//! - [`partition`]: where partitions land, how a complete one is told from a half-written one,
//!   and what each footer says.
//! - [`impression`]: the impression record, its columns, and reading them back.
//! - [`feedback`]: the feedback record (events about shown items), likewise.

pub mod feedback;
pub mod impression;
pub mod partition;
pub mod writer;

pub use feedback::{Event, Feedback};
pub use impression::{Impression, Shown};
pub use writer::{Counters, Log, Record, Settings};
