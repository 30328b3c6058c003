//! The `retort` command line: `serve` and the model tools.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use retort::config::{Config, LogFormat, ServeArgs};
use retort::distill::demo::{self, DemoConfig, Domain};
use retort::model::{package, scaffold};

/// A low-latency ranking server for small student models, with built-in distillation.
#[derive(Debug, Parser)]
#[command(name = "retort", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the newest version of every model package in the models directory.
    Serve(ServeArgs),
    /// Write the default music-ranking model package with seeded random (untrained) weights.
    InitModel {
        /// Directory of model packages to write into.
        #[arg(long = "models", default_value = "models")]
        models_dir: PathBuf,
        #[arg(long, default_value = scaffold::DEFAULT_NAME)]
        name: String,
        #[arg(long, default_value = scaffold::DEFAULT_VERSION)]
        version: String,
        /// Seed of the random weights: the same seed writes the same bytes.
        #[arg(long, default_value_t = scaffold::DEFAULT_SEED)]
        seed: u64,
    },
    /// Generate the two-domain demo world (source "video", target "music") as Parquet.
    DemoData {
        /// Directory to write into (`world.toml`, `source/`, `target/`).
        #[arg(long, default_value = "data/demo")]
        out: PathBuf,
        /// World seed: the same seed writes the same data.
        #[arg(long, default_value_t = DemoConfig::default().seed)]
        seed: u64,
        /// Multiply traffic by this factor (100 gives a target domain of about 2M rows).
        #[arg(long, default_value_t = 1)]
        scale: usize,
        /// Users in the world.
        #[arg(long, default_value_t = DemoConfig::default().users)]
        users: usize,
        /// Days of traffic (one partition per domain and day).
        #[arg(long, default_value_t = DemoConfig::default().days)]
        days: usize,
        /// Target-domain requests over all days, before scaling.
        #[arg(long, default_value_t = DemoConfig::default().target_requests)]
        target_requests: usize,
        /// Source requests per target request.
        #[arg(long, default_value_t = DemoConfig::default().source_ratio)]
        source_ratio: usize,
        /// Domains to write.
        #[arg(long, value_delimiter = ',', default_values_t = [Domain::Target, Domain::Source])]
        domains: Vec<Domain>,
    },
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let config = Config::resolve(&args)?;
            init_tracing(config.log_format);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("retort-io")
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(async {
                let listener = retort::serve::bind(&config).await?;
                let app = retort::serve::App::new(config);
                retort::serve::serve(listener, app, retort::shutdown::signal()).await
            })?;
            Ok(())
        }
        Command::InitModel { models_dir, name, version, seed } => {
            init_tracing(LogFormat::Text);
            let (manifest, graph) = scaffold::seeded_package(&name, &version, seed);
            let dir = package::write(&models_dir, &manifest, &graph)?;
            println!("wrote {}", dir.display());
            Ok(())
        }
        Command::DemoData { out, seed, scale, users, days, target_requests, source_ratio, domains } => {
            init_tracing(LogFormat::Text);
            let config =
                DemoConfig { seed, users, days, target_requests, source_ratio, ..DemoConfig::default() }
                    .scaled(scale);
            let started = std::time::Instant::now();
            let done = demo::generate(&out, &config, &domains)?;
            println!(
                "{}: wrote {} partitions ({} rows), kept {} already there, in {:.1} s",
                out.display(),
                done.written.len(),
                done.rows,
                done.kept.len(),
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
    }
}
