//! Whole experiments a user runs to see what distillation buys.
//!
//! # Layout
//! - [`compare`]: `retort distill`: control against distilled twins over paired seeds.
//! - [`quickstart`]: `retort quickstart`, the whole loop on the demo world.

pub mod compare;
pub mod quickstart;
