//! The `retort` command line: `serve`, `init-model`, and with the `sidecar` feature (on by
//! default) the distillation verbs of [`sidecar_cli`].

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use retort_model::{package, scaffold};
use retort_server::config::{Config, LogFormat, ServeArgs};

#[cfg(feature = "sidecar")]
mod sidecar_cli;

/// jemalloc, for the server and the sidecar alike. With glibc's allocator, a retired version's
/// memory came back only by forcing every allocation over 128 KiB into its own mapping, which
/// made each inference map, fault in and unmap its intermediate buffers (+70% inference time);
/// jemalloc reuses those buffers and hands freed memory back when asked (BENCHMARKS.md,
/// "Rollout: memory"). Zeroed allocations are zeroed by writing (see
/// [`retort_server::allocator`]).
#[global_allocator]
static ALLOCATOR: retort_server::allocator::Allocator = retort_server::allocator::Allocator;

/// A low-latency ranking server for small student models, with built-in distillation.
#[derive(Debug, Parser)]
#[command(name = "retort", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of `serve`'s settings costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
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
        /// Build the model over this dataset's features and tasks instead of the music
        /// features, with logit outputs: a stand-in teacher until one is trained.
        #[arg(long)]
        spec: Option<PathBuf>,
    },
    /// The distillation sidecar's verbs (cargo feature `sidecar`, on by default).
    #[cfg(feature = "sidecar")]
    #[command(flatten)]
    Sidecar(sidecar_cli::Command),
}

pub(crate) fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour for a person at a terminal, never into a log file or a pipe.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> std::process::ExitCode {
    #[cfg(feature = "sidecar")]
    sidecar_cli::one_kernel_thread_unless_told();
    match run(parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The command line, with every server flag's default shown in `--help` from the one place
/// defaults are written ([`Config::default`]).
fn parse() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    let command = Cli::command().mut_subcommand("serve", retort_server::config::show_defaults);
    #[cfg(feature = "sidecar")]
    let command = command.mut_subcommand("quickstart", retort_server::config::show_defaults);
    let matches = command.get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// An error and its causes as one line, each sentence once: most of retort's errors already
/// include their cause's text, which anyhow's report would print again below them.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line += ": ";
        }
        line += &text;
    }
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let config = Config::resolve(&args)?;
            init_tracing(config.server.log_format);
            serve_until_signal(config)
        }
        Command::InitModel { models_dir, name, version, seed, spec } => {
            init_tracing(LogFormat::Text);
            let (manifest, graph) = match spec {
                None => scaffold::seeded_package(&name, &version, seed),
                #[cfg(feature = "sidecar")]
                Some(path) => sidecar_cli::stand_in_teacher(&path, &name, &version, seed)?,
                #[cfg(not(feature = "sidecar"))]
                Some(_) => anyhow::bail!(
                    "--spec reads a dataset's spec, which needs retort built with the sidecar feature"
                ),
            };
            let dir = package::write(&models_dir, &manifest, &graph)?;
            println!("wrote {}", dir.display());
            Ok(())
        }
        #[cfg(feature = "sidecar")]
        Command::Sidecar(command) => sidecar_cli::run(command),
    }
}

/// Serves `config` until ctrl-c or SIGTERM, then drains.
pub(crate) fn serve_until_signal(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("retort-io")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listener = retort_server::http::bind(&config).await?;
        let app = retort_server::http::App::new(config)?;
        retort_server::http::serve(listener, app, retort_server::shutdown::signal()).await
    })?;
    Ok(())
}
