//! Teacher labels, computed once and shared by every student (Paper B's label store).
//!
//! # Layout
//! - [`labeller`]: `retort label`, running a teacher over a dataset into the label store.
//! - [`store`]: the label store's layout and metadata.

pub mod labeller;
pub mod store;
