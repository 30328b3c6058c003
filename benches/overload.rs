//! The overload scenario's speed targets (`tests/common/overload.rs`): at three times capacity
//! the admitted requests keep their budget at p99, the shed ones are refused in under 10 ms at
//! p99, and full answers are back within a second of the overload ending. Load-shaped claims
//! need a quiet machine, so they live here, not in `cargo test`:
//!
//! ```sh
//! cargo bench --bench overload
//! ```

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::overload::{self, BUDGET_MS, p99};

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let report = runtime.block_on(overload::run());
    report.print();
    let admitted_p99 = p99(report.admitted().iter().map(|s| s.latency).collect());
    let shed_p99 = p99(report.shed().iter().map(|s| s.latency).collect());
    let mut missed = Vec::new();
    if admitted_p99 > Duration::from_secs_f64((BUDGET_MS + 5.0) / 1e3) {
        missed.push(format!("admitted p99 {admitted_p99:?} over the {BUDGET_MS} ms budget (+5 ms)"));
    }
    if shed_p99 >= Duration::from_millis(10) {
        missed.push(format!("shedding took {shed_p99:?} at p99 (target: under 10 ms)"));
    }
    if report.recovered_within() >= Duration::from_secs(1) {
        missed.push(format!(
            "still degrading {:?} after the overload (target: under 1 s)",
            report.recovered_within()
        ));
    }
    if !missed.is_empty() {
        eprintln!("missed:\n  {}", missed.join("\n  "));
        std::process::exit(1);
    }
    eprintln!("every target met");
}
