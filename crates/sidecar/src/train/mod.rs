//! Training a student (or a teacher) in candle, with distillation heads beside the served ones.
//!
//! # Layout
//! - [`student`]: the two-tower student in candle, initialised and exported as the ONNX writer's.
//! - [`kd`]: distillation modes (none, direct, aux, aux-new) and each head's loss.
//! - [`linear`]: a dense layer with its bias and ReLU fused, forward and backward.
//! - [`losses`]: stable BCE on logits, MSE, tempered distillation loss.
//! - [`adamw`]: AdamW fused into one in-place pass per parameter, lazy (by rows) for embedding
//!   tables, with a savable state.
//! - [`dropout`]: dropout with masks drawn from the run's seed, per row and layer.
//! - [`checkpoint`]: weights and optimiser state beside a package, for warm starts.
//! - [`step`]: one minibatch's forward and backward pass, split by rows over threads.
//! - [`fit`]: training data in memory and the AdamW minibatch loop.
//! - [`parallel`]: independent trainings side by side, one per core.

pub mod adamw;
pub mod checkpoint;
pub mod dropout;
pub mod fit;
pub mod kd;
pub mod linear;
pub mod losses;
pub mod parallel;
pub mod step;
pub mod student;
