//! `loadtest`: open-loop load against retort's ranking API on this machine.
//!
//!     loadtest --manifest models/music-ranker/1/manifest.toml --candidates 500 --rate 200 steady
//!     loadtest ... --slo-p99-ms 10 find-max --start 100 --step 1.25
//!     loadtest ... swap --model music-ranker --version 1
//!     loadtest ... --budget-ms 25 overload --capacity 400
//!
//! Prints a table, writes `report.json` and `latency.svg` to `--out`, and exits 1 when the
//! scenario's p99 misses `--slo-p99-ms` (2 on bad arguments or a failed admin call).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use loadtest::driver::{Arrivals, Load};
use loadtest::report::{Summary, table};
use loadtest::requests::{self, Shape};
use loadtest::scenario::{self, FindMax, Plan, Swap};
use loadtest::target::Target;
use loadtest::{Error, plot};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(
    name = "loadtest",
    version,
    about = "Open-loop load generator for retort's ranking API (loopback only)"
)]
struct Args {
    /// The server's base URL; loopback addresses only.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    target: String,
    /// Generate requests for the model whose manifest this is.
    #[arg(long, conflicts_with = "template")]
    manifest: Option<PathBuf>,
    /// Send this rank request (JSON), its candidates repeated or cut to `--candidates`.
    #[arg(long)]
    template: Option<PathBuf>,
    /// With --manifest: send candidates as ids alone, drawn from this catalog version
    /// (`catalogs/<name>/<version>`), as a frontend with a catalog on the server would.
    #[arg(long, requires = "manifest")]
    catalog: Option<PathBuf>,
    /// Candidates per request (0 with a template: as many as it has).
    #[arg(long, default_value_t = 500)]
    candidates: usize,
    /// `model` in every request (default: the manifest's name, or the template's).
    #[arg(long)]
    model: Option<String>,
    /// Requests per second (the starting rate of find-max).
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    #[arg(long, value_enum, default_value_t = Arrivals::Poisson)]
    arrivals: Arrivals,
    /// Seconds per phase.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Most requests per phase.
    #[arg(long, default_value_t = 1_000_000)]
    max_requests: u64,
    /// Seconds of unreported load first.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Latency budget sent with every request (`x-retort-budget-ms`).
    #[arg(long)]
    budget_ms: Option<f64>,
    /// Give every candidate a `prior`.
    #[arg(long)]
    priors: bool,
    #[arg(long)]
    top_k: Option<usize>,
    /// Seconds before an unanswered request counts as failed.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    #[arg(long, default_value_t = 10_000)]
    max_in_flight: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Exit 1 when the scenario's p99 (ms) exceeds this; find-max's SLO.
    #[arg(long)]
    slo_p99_ms: Option<f64>,
    /// Where to write report.json and latency.svg.
    #[arg(long, default_value = "target/loadtest")]
    out: PathBuf,
    /// Names the run in the report (e.g. the server under test).
    #[arg(long, default_value = "retort")]
    label: String,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// One phase at `--rate`.
    Steady,
    /// Rising rates until p99 breaks `--slo-p99-ms`; reports the highest that held.
    FindMax {
        #[arg(long, default_value_t = 1.25)]
        step: f64,
        #[arg(long, default_value_t = 100_000.0)]
        max_rate: f64,
    },
    /// Steady, then the same load while a version is loaded, promoted and rolled back.
    Swap {
        #[arg(long, env = "RETORT_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        #[arg(long)]
        swap_model: String,
        #[arg(long)]
        swap_version: String,
        #[arg(long, default_value_t = 250)]
        every_ms: u64,
    },
    /// `--factor` times `--capacity` (requests/s), with `--budget-ms` on every request.
    Overload {
        #[arg(long)]
        capacity: f64,
        #[arg(long, default_value_t = 3.0)]
        factor: f64,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("loadtest: {e}");
            ExitCode::from(2)
        }
    }
}

/// Runs the scenario and reports; `Ok(false)` when it missed the SLO.
async fn run(args: Args) -> Result<bool, Error> {
    let target = Target::parse(&args.target)?;
    let shape = Shape {
        candidates: args.candidates,
        model: args.model.clone(),
        budget_ms: None,
        priors: args.priors,
        top_k: args.top_k,
        ids: args.catalog.as_deref().map(requests::catalog_ids).transpose()?,
    };
    let bodies = match (&args.manifest, &args.template) {
        (Some(m), _) => requests::from_manifest(m, &shape, 64, args.seed)?,
        (None, Some(t)) => requests::from_template(t, &shape)?,
        (None, None) => return Err(Error::Target("give --manifest or --template".into())),
    };
    let plan = Plan {
        target: target.clone(),
        bodies,
        load: Load {
            rate: args.rate,
            arrivals: args.arrivals,
            duration: Duration::from_secs_f64(args.duration),
            max_requests: args.max_requests,
            budget_header_ms: args.budget_ms,
            timeout: Duration::from_secs_f64(args.timeout),
            max_in_flight: args.max_in_flight,
            seed: args.seed,
        },
        warmup: Duration::from_secs_f64(args.warmup),
    };
    let slo = args.slo_p99_ms.map(|ms| Duration::from_secs_f64(ms / 1e3));
    let (name, phases, verdict, ok) = match &args.scenario {
        Scenario::Steady => {
            let phases = scenario::steady(&plan).await;
            let ok = slo.is_none_or(|slo| phases[0].ok_p99() <= slo && phases[0].errors == 0);
            ("steady", phases, json!({}), ok)
        }
        Scenario::FindMax { step, max_rate } => {
            let slo = slo.ok_or_else(|| Error::Target("find-max needs --slo-p99-ms".into()))?;
            let (phases, best) = scenario::find_max(
                &plan,
                FindMax { start: args.rate, step: *step, max: *max_rate, slo_p99: slo },
            )
            .await;
            let ok = best.held.is_some();
            ("find-max", phases, json!(best), ok)
        }
        Scenario::Swap { admin_token, swap_model, swap_version, every_ms } => {
            let swap = Swap {
                admin_token: admin_token.clone(),
                model: swap_model.clone(),
                version: swap_version.clone(),
                every: Duration::from_millis(*every_ms),
            };
            let (phases, result) = scenario::swap(&plan, &swap).await?;
            let ok = phases.iter().all(|p| p.errors == 0)
                && slo.is_none_or(|slo| Duration::from_secs_f64(phases[1].latency_ms.p99 / 1e3) <= slo);
            ("swap", phases, json!(result), ok)
        }
        Scenario::Overload { capacity, factor } => {
            let (phases, result) = scenario::overload(&plan, *capacity, *factor).await;
            let ok = phases[0].errors == 0 && slo.is_none_or(|slo| phases[0].ok_p99() <= slo);
            ("overload", phases, json!(result), ok)
        }
    };
    report(&args, name, &phases, &verdict)?;
    Ok(ok)
}

fn report(args: &Args, scenario: &str, phases: &[Summary], verdict: &serde_json::Value) -> Result<(), Error> {
    println!(
        "{} · {scenario} · {} · {} candidates · {:?} arrivals",
        args.label, args.target, args.candidates, args.arrivals
    );
    print!("{}", table(phases));
    if !verdict.as_object().is_none_or(|o| o.is_empty()) {
        println!("{verdict}");
    }
    std::fs::create_dir_all(&args.out)?;
    let json = json!({
        "label": args.label,
        "scenario": scenario,
        "target": args.target,
        "candidates": args.candidates,
        "arrivals": args.arrivals,
        "budget_ms": args.budget_ms,
        "slo_p99_ms": args.slo_p99_ms,
        "phases": phases,
        "result": verdict,
    });
    let report = args.out.join("report.json");
    std::fs::write(&report, serde_json::to_vec_pretty(&json).expect("a JSON value serialises"))?;
    let svg = args.out.join("latency.svg");
    std::fs::write(&svg, plot::latency_svg(&format!("{} · {scenario}", args.label), phases))?;
    eprintln!("wrote {} and {}", report.display(), svg.display());
    Ok(())
}
