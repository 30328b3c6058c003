//! The sidecar's integration tests: the demo world, training, labelling, publishing and teacher
//! search through the library and the real `retort` binary, and the documentation's examples.
//! One test binary for all of them, so the suite links the trainer once instead of once per file.

#[path = "../common/mod.rs"]
mod common;

mod demo_world;
mod docs;
mod examples;
mod label;
mod publish;
mod student;
mod teacher_search;
mod training_data;
mod vocabulary;
