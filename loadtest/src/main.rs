//! Open-loop load generator for retort (to come: see the load-test issue).

fn main() {
    eprintln!("loadtest: not built yet; see the load-test issue");
    std::process::exit(2);
}
