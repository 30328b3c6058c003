//! The `retort` command line: `serve` and the model tools.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use retort::config::{Config, LogFormat, ServeArgs};
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
    }
}
