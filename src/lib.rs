//! retort: a low-latency ranking server for small student models, with the distillation that
//! makes those students built in.
//!
//! # Layout
//! - [`config`]: the server's configuration (flags, environment, TOML file, defaults).
//! - [`serve`]: the HTTP API (`POST /v1/rank`, health, readiness, metrics), the inference pool.
//! - [`rollout`]: model versions and their states, hot swaps, the directory watcher, canaries.
//! - [`shutdown`]: the ctrl-c / SIGTERM signal.
//! - [`allocator`]: jemalloc, with zeroed allocations zeroed by writing.
//!
//! The model package (manifest + ONNX), the request's wire format and encoding, the inference
//! engines and the ONNX writer are the `retort-model` crate.
//!
//! The server never links training code paths at request time; the model package is the only
//! contract between the distillation sidecar and the server.

pub mod allocator;
pub mod config;
pub mod rollout;
pub mod serve;
pub mod shutdown;

/// jemalloc for everything that links retort (the server, its tests and benches). With glibc's
/// allocator, a retired version's memory came back only by forcing every allocation over
/// 128 KiB into its own mapping, which made each inference map, fault in and unmap its
/// intermediate buffers (+70% inference time); jemalloc reuses those buffers and hands freed
/// memory back when asked (BENCHMARKS.md, "Rollout: memory"). Zeroed allocations are zeroed
/// by writing (see [`allocator`]).
#[global_allocator]
static ALLOCATOR: allocator::Allocator = allocator::Allocator;
