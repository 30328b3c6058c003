//! The server's integration tests: a real server on a loopback port, a real HTTP client. One
//! test binary for all of them, so the suite links once instead of once per file. Tests that
//! measure the process itself (its memory, its latency under load, its connection limits) stay
//! binaries of their own, so that nothing else runs beside them.

#[path = "../common/mod.rs"]
mod common;

mod admin;
mod catalog;
mod engines;
mod feedback;
mod fuzz_decode;
mod impressions;
mod rank_api;
mod rollout;
