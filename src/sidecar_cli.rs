//! The distillation sidecar's verbs of the `retort` binary: labelling, training, comparing,
//! the teacher search, the quickstart and the demo world. Built with the `sidecar` cargo
//! feature (on by default); a server-only build (`--no-default-features`) has none of them and
//! links no candle, arrow or parquet.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use retort_model::engine::EngineKind;
use retort_model::{package, scaffold};
use retort_server::config::{Config, LogFormat, ServeArgs};
use retort_sidecar::data::catalog::{self, CatalogSource};
use retort_sidecar::data::dataset::Dataset;
use retort_sidecar::data::demo::{self, DemoConfig, Domain};
use retort_sidecar::data::mapping::Mapping;
use retort_sidecar::data::spec::DataSpec;
use retort_sidecar::experiments::compare;
use retort_sidecar::join::config::Join;
use retort_sidecar::join::run::{Dirs, Joiner};
use retort_sidecar::label::labeller::{LabelOptions, Labeller, Shard};
use retort_sidecar::release::cycle::{Cycle, CycleArgs, Round};
use retort_sidecar::release::run::RunConfig;

use crate::{init_tracing, serve_until_signal};

// Parsed once per process: the size of the largest verb (quickstart carries every serve
// setting) costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a teacher over a dataset of examples and write its logits to the label store.
    Label {
        /// Dataset directory (Parquet or CSV partitions).
        #[arg(long)]
        data: PathBuf,
        /// Feature spec of the dataset [default: <data>/features.toml]
        #[arg(long)]
        spec: Option<PathBuf>,
        /// Teacher model package directory (`<name>/<version>` with model.onnx and manifest.toml).
        #[arg(long)]
        teacher: PathBuf,
        /// Mapping from the dataset's columns to the teacher's features.
        #[arg(long)]
        mapping: PathBuf,
        /// Label store root.
        #[arg(long, default_value = "data/labels")]
        store: PathBuf,
        /// Label only this shard of the partitions, `i/n`.
        #[arg(long, default_value = "0/1")]
        shard: Shard,
        #[arg(long, default_value = "tract")]
        engine: EngineKind,
        /// Rows per inference call.
        #[arg(long, default_value_t = 2048)]
        batch_size: usize,
        /// Inference threads, 0 for one per core.
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Keep watching the dataset directory and label partitions as they land.
        #[arg(long)]
        follow: bool,
        /// With --follow: how often to look for new partitions, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        poll_ms: u64,
    },
    /// Join the server's impression log with the feedback users sent into examples, one row per
    /// shown candidate, each partition once its attribution window has closed (docs/loop.md).
    Examples {
        /// The join's config: the feature spec to write, the window, the events of each task.
        #[arg(long)]
        config: PathBuf,
        /// The server's `impressions_dir`.
        #[arg(long)]
        impressions: PathBuf,
        /// The server's `feedback_dir`.
        #[arg(long)]
        feedback: PathBuf,
        /// The catalogs the server read (item features come from the version that served).
        #[arg(long, default_value = "catalogs")]
        catalogs: PathBuf,
        /// The examples dataset to write (with its features.toml).
        #[arg(long)]
        out: PathBuf,
        /// Keep running: join partitions as their windows close, until ctrl-c or SIGTERM.
        #[arg(long)]
        follow: bool,
        /// With --follow: how often to look for partitions to join, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        poll_ms: u64,
    },
    /// Train a model (a student, or a teacher) from a config file, evaluate it on a time
    /// holdout, and publish it as a model package.
    Train {
        #[command(flatten)]
        cycle: CycleArgs,
        /// Keep running: train, gate and publish again each time new partitions (and their
        /// teacher labels) land, until ctrl-c or SIGTERM.
        #[arg(long)]
        follow: bool,
        /// With --follow: how often to look for new partitions, in milliseconds.
        #[arg(long, default_value_t = 5000)]
        poll_ms: u64,
    },
    /// Compare a control student with its distilled twins (direct, aux) over paired seeds, on a
    /// time holdout, in the shape of Paper A's table.
    Distill {
        /// Dataset directory (Parquet or CSV partitions).
        #[arg(long)]
        data: PathBuf,
        /// Feature spec of the dataset [default: <data>/features.toml]
        #[arg(long)]
        spec: Option<PathBuf>,
        /// Teacher labels (a label store directory).
        #[arg(long)]
        labels: PathBuf,
        /// Training config; its [distill.tasks] name the tasks to distil (modes set per variant).
        #[arg(long)]
        config: PathBuf,
        /// Paired seeds to run (1..=N).
        #[arg(long, default_value_t = 3)]
        seeds: u64,
        /// Write report.md, report.json and report.svg here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Search teacher configurations for the one whose labels make the student best, within a
    /// wall-clock budget (successive halving over cheap proxies), and write the ranked report
    /// and the winner's teacher config.
    TeacherSearch {
        /// The source product's examples (teachers train on them).
        #[arg(long)]
        source: PathBuf,
        /// Feature spec of the source [default: <source>/features.toml]
        #[arg(long)]
        source_spec: Option<PathBuf>,
        /// The target product's examples (students train on them, labelled by each teacher).
        #[arg(long)]
        target: PathBuf,
        /// Feature spec of the target [default: <target>/features.toml]
        #[arg(long)]
        target_spec: Option<PathBuf>,
        /// Mapping from the target's columns to the teachers' features.
        #[arg(long)]
        mapping: PathBuf,
        /// Search file: [search] schedule and budget, [space] candidates, [student] proxy config.
        #[arg(long)]
        config: PathBuf,
        /// Working directory for teachers and labels (a rerun reuses them).
        #[arg(long, default_value = "data/teacher-search")]
        work: PathBuf,
        /// Write report.md, report.json, report.svg, teacher.toml and student.toml here
        /// [default: <work>/report, or <work>/sweep with --sweep]
        #[arg(long)]
        out: Option<PathBuf>,
        /// Override [search] budget_s: wall-clock seconds for the search.
        #[arg(long)]
        budget_s: Option<f64>,
        /// Brute force instead: every point of the space, each teacher trained for its whole
        /// schedule, every student measured on the holdout (the reference a search is judged by).
        #[arg(long)]
        sweep: bool,
    },
    /// The whole loop on the demo world: generate it, train a teacher on the source product,
    /// label the target zero-shot, compare control/direct/aux over paired seeds, publish the aux
    /// student and the demo tracks as a catalog, and (with --serve) serve them.
    Quickstart {
        /// Working directory for the world, the teacher and the labels (reused when rerun).
        #[arg(long, default_value = "data/quickstart")]
        work: PathBuf,
        #[arg(long, default_value = scaffold::DEFAULT_NAME)]
        name: String,
        /// Version to publish [default: one past the newest numeric version of the model]
        #[arg(long)]
        version: Option<String>,
        /// Paired seeds of the comparison.
        #[arg(long, default_value_t = 3)]
        seeds: u64,
        /// Then serve the models directory, exactly as `retort serve` with the flags below
        /// (and their RETORT_* variables, the admin token among them) would.
        #[arg(long)]
        serve: bool,
        /// The server's settings; `--models` is also where the student is published, and
        /// `--catalogs` where the catalog is.
        #[command(flatten)]
        server: ServeArgs,
    },
    /// Build a catalog package from an item table (one row per item, Parquet or CSV): the
    /// server looks candidates up in it, so a request may send ids alone.
    Catalog {
        /// The item table: a .parquet or .csv file, or a directory of them.
        #[arg(long)]
        items: PathBuf,
        /// Feature spec whose item features are the catalog's columns (`docs/data.md`).
        #[arg(long)]
        spec: PathBuf,
        /// The column holding each item's id.
        #[arg(long)]
        id_column: String,
        /// Catalogs directory the server reads (`<catalogs>/<name>/<version>/`).
        #[arg(long, default_value = "catalogs")]
        catalogs: PathBuf,
        /// Catalog name.
        #[arg(long)]
        name: String,
        /// Version to publish [default: one past the newest]
        #[arg(long, conflicts_with = "base")]
        version: Option<String>,
        /// Publish the table as a delta (new and changed items) over this published version:
        /// the server applies it to that version in memory, reading only the delta.
        #[arg(long)]
        base: Option<String>,
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

/// A stand-in teacher for `retort init-model --spec`: the two-tower model over the dataset's
/// features and tasks, logits out, seeded random weights.
pub fn stand_in_teacher(
    spec: &std::path::Path,
    name: &str,
    version: &str,
    seed: u64,
) -> anyhow::Result<(retort_model::manifest::Manifest, Vec<u8>)> {
    let spec_path = spec;
    let spec = DataSpec::from_path(spec)?;
    let arch = spec.two_tower(true);
    if let Some(f) = arch.unbuilt_vocabularies().next() {
        anyhow::bail!(
            "{}: feature `{f}` builds its vocabulary from training rows, and a stand-in teacher \
             has none; train one with `retort train`, or give the feature `buckets` for the stand-in",
            spec_path.display()
        );
    }
    let objective: Vec<(&str, f64)> = spec
        .tasks
        .iter()
        .filter(|t| t.kind == retort_model::manifest::HeadKind::Binary)
        .take(1)
        .map(|t| (t.name.as_str(), 1.0))
        .collect();
    Ok(scaffold::random_package(name, version, seed, &arch, &objective))
}

pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Examples { config, impressions, feedback, catalogs, out, follow, poll_ms } => {
            init_tracing(LogFormat::Text);
            let join = Join::from_path(&config)?;
            let dirs = Dirs { impressions, feedback, catalogs, out };
            let mut joiner = Joiner::open(join, dirs.clone())?;
            if follow {
                let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                stop_on_signal(stop.clone());
                println!("following {} (ctrl-c to stop)", dirs.impressions.display());
                joiner.follow(std::time::Duration::from_millis(poll_ms), &stop, print_pass)?;
            } else {
                let pass = joiner.pass(retort_sidecar::join::run::now_ms())?;
                print_pass(&pass);
                println!(
                    "{} partition(s) joined, {} already joined, {} waiting for their window to close; examples: {}",
                    pass.joined.len(),
                    pass.already,
                    pass.waiting,
                    dirs.out.display()
                );
                if !pass.failed.is_empty() {
                    anyhow::bail!("{} partition(s) could not be joined (the others were)", pass.failed.len());
                }
            }
            Ok(())
        }
        Command::Label {
            data,
            spec,
            teacher,
            mapping,
            store,
            shard,
            engine,
            batch_size,
            threads,
            follow,
            poll_ms,
        } => {
            init_tracing(LogFormat::Text);
            let spec = DataSpec::from_path(&spec.unwrap_or_else(|| data.join("features.toml")))?;
            let mapping = Mapping::from_path(&mapping)?;
            let options = LabelOptions { shard, batch_size, threads, progress: !follow };
            let labeller = Labeller::new(&teacher, engine, mapping, spec, &store, options)?;
            let report = if follow {
                let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                stop_on_signal(stop.clone());
                println!("following {} (ctrl-c to stop)", data.display());
                labeller.follow(
                    &data,
                    std::time::Duration::from_millis(poll_ms),
                    &stop,
                    |name, rows, lag| {
                        println!("labelled {name}: {rows} rows, {:.1} s after it landed", lag.as_secs_f64());
                    },
                )?
            } else {
                labeller.label_dataset(&Dataset::open(&data)?)?
            };
            println!(
                "labelled {} partitions ({} rows) in {:.2} s ({:.0} rows/s); {} already labelled",
                report.labelled.len(),
                report.rows,
                report.elapsed.as_secs_f64(),
                report.rows as f64 / report.elapsed.as_secs_f64().max(1e-9),
                report.already.len()
            );
            if !report.defaulted.is_empty() {
                print!("{}", report.defaulted_table());
            }
            println!("labels: {}", report.store.display());
            for path in &report.removed_temporaries {
                println!("removed {}, left by an interrupted run", path.display());
            }
            if !report.failed.is_empty() {
                for (partition, why) in &report.failed {
                    eprintln!("not labelled: {partition}: {why}");
                }
                anyhow::bail!("{} partition(s) could not be labelled (the others were)", report.failed.len());
            }
            Ok(())
        }
        Command::Train { cycle: args, follow, poll_ms } => {
            init_tracing(LogFormat::Text);
            let spec = DataSpec::from_path(
                &args.spec.clone().unwrap_or_else(|| args.data_dir.join("features.toml")),
            )?;
            let config = match &args.config {
                Some(path) => RunConfig::from_path(path)?,
                None => RunConfig::default(),
            };
            let cycle = Cycle { args, spec, config, admin_token: std::env::var("RETORT_ADMIN_TOKEN").ok() };
            if !follow {
                let round = cycle.run_once()?;
                print_round(&round);
                return match (&round.published, &round.gate.refusal) {
                    (None, Some(why)) => {
                        Err(anyhow::anyhow!("not published: {why} (--force publishes anyway)"))
                    }
                    _ => Ok(()),
                };
            }
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            stop_on_signal(stop.clone());
            cycle.follow(std::time::Duration::from_millis(poll_ms), &stop, |new, round| {
                println!("--- new partitions: {}", new.iter().cloned().collect::<Vec<_>>().join(", "));
                match round {
                    Ok(round) => print_round(&round),
                    Err(e) => println!("round failed: {e}"),
                }
            })?;
            Ok(())
        }
        Command::Distill { data, spec, labels, config, seeds, out } => {
            init_tracing(LogFormat::Text);
            let spec = DataSpec::from_path(&spec.unwrap_or_else(|| data.join("features.toml")))?;
            let config = RunConfig::from_path(&config)?;
            let seeds: Vec<u64> = (1..=seeds.max(1)).collect();
            let comparison = compare::compare(&data, &spec, &labels, &config, &seeds)?;
            let table = comparison.markdown();
            print!("{table}");
            if let Some(out) = out {
                std::fs::create_dir_all(&out)?;
                std::fs::write(out.join("report.md"), &table)?;
                std::fs::write(out.join("report.json"), serde_json::to_string_pretty(&comparison)?)?;
                std::fs::write(out.join("report.svg"), comparison.svg())?;
                println!("wrote {}", out.display());
            }
            Ok(())
        }
        Command::TeacherSearch {
            source,
            source_spec,
            target,
            target_spec,
            mapping,
            config,
            work,
            out,
            budget_s,
            sweep,
        } => {
            use retort_sidecar::search::{report as search_report, teacher as teacher_search};
            init_tracing(LogFormat::Text);
            let source_spec =
                DataSpec::from_path(&source_spec.unwrap_or_else(|| source.join("features.toml")))?;
            let target_spec =
                DataSpec::from_path(&target_spec.unwrap_or_else(|| target.join("features.toml")))?;
            let mapping = Mapping::from_path(&mapping)?;
            let mut file = teacher_search::SearchFile::from_path(&config)?;
            if let Some(b) = budget_s {
                file.search.budget_s = b;
            }
            let inputs = teacher_search::Inputs {
                source: &source,
                source_spec: &source_spec,
                target: &target,
                target_spec: &target_spec,
                mapping: &mapping,
                work: &work,
            };
            let started = std::time::Instant::now();
            let report = teacher_search::search(inputs, &file, sweep)?;
            print!("{}", report.markdown());
            let out = out.unwrap_or_else(|| work.join(if sweep { "sweep" } else { "report" }));
            let written = search_report::write(&report, &file.student, &out)
                .with_context(|| format!("writing the report into {}", out.display()))?;
            println!(
                "\nwrote {} files into {} ({:.0} s in all)",
                written.len(),
                out.display(),
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::Quickstart { work, name, version, seeds, serve, server } => {
            init_tracing(LogFormat::Text);
            // Where the server will look: its flag, else its file, else the default.
            let file = server.config.as_deref().map(Config::from_file).transpose()?.unwrap_or_default();
            let models_dir = server.rollout.models_dir.clone().unwrap_or(file.rollout.models_dir);
            let catalogs_dir = server.rollout.catalogs_dir.clone().unwrap_or(file.rollout.catalogs_dir);
            let version = match version {
                Some(v) => v,
                None => package::next_version(&models_dir, &name),
            };
            let started = std::time::Instant::now();
            let done = retort_sidecar::experiments::quickstart::run(
                &work,
                &models_dir,
                &name,
                &version,
                &DemoConfig::default(),
                seeds,
                &mut |step| println!("{step}"),
            )?;
            // The demo world's tracks as a catalog, so that the served student takes candidates
            // by id.
            let demo = work.join("demo");
            let spec = DataSpec::from_path(&demo.join("target/features.toml"))?;
            let items = demo.join("items/target.parquet");
            let source = CatalogSource { items: &items, spec: &spec, id_column: "track_id" };
            let (catalog, _) = catalog::publish(&source, &catalogs_dir, "music", None)?;
            print!("\n{}", done.comparison.markdown());
            println!(
                "\npublished {} with its fallback {} and the catalog {} in {:.0} s (teacher {}, labels {})",
                done.published.display(),
                done.fallback.display(),
                catalog.dir().display(),
                started.elapsed().as_secs_f64(),
                done.teacher.display(),
                done.labels.display()
            );
            if serve {
                let mut server = server;
                server.rollout.models_dir = Some(models_dir);
                server.rollout.catalogs_dir = Some(catalogs_dir);
                let config = Config::resolve(&server)?;
                println!(
                    "serving {} on http://{} (ctrl-c to stop)",
                    config.rollout.models_dir.display(),
                    config.server.listen
                );
                serve_until_signal(config)?;
            }
            Ok(())
        }
        Command::Catalog { items, spec, id_column, catalogs, name, version, base } => {
            let spec = DataSpec::from_path(&spec)?;
            let started = std::time::Instant::now();
            let source = CatalogSource { items: &items, spec: &spec, id_column: &id_column };
            if let Some(base) = base {
                let (dir, composed) = catalog::publish_delta(&source, &catalogs, &name, &base)?;
                println!(
                    "published {} over {base}: {} items in all, in {:.2} s",
                    dir.display(),
                    composed.len(),
                    started.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            let (published, catalog) = catalog::publish(&source, &catalogs, &name, version.as_deref())?;
            let what = match published {
                catalog::Published::New(_) => "published",
                catalog::Published::Unchanged(_) => "unchanged (the newest version holds these items)",
            };
            println!(
                "{what} {}: {} items, {} columns, in {:.2} s",
                published.dir().display(),
                catalog.len(),
                catalog.columns().count(),
                started.elapsed().as_secs_f64()
            );
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

/// Sets `stop` on ctrl-c or SIGTERM, from a small runtime of its own.
/// One line per partition joined, and what did not count.
fn print_pass(pass: &retort_sidecar::join::run::Pass) {
    for j in &pass.joined {
        let labels: Vec<String> = j.labels.iter().map(|(task, sum)| format!("{task} {sum}")).collect();
        let e = &j.events;
        println!(
            "joined {} -> {}: {} rows ({} of repeated answers dropped), labels: {}; events: {} attributed, \
             {} late, {} early, {} duplicates, {} unmapped, {} for items not shown",
            j.impressions,
            j.examples,
            j.rows,
            j.repeated,
            labels.join(", "),
            e.attributed,
            e.late,
            e.early,
            e.duplicates,
            e.unmapped,
            e.unshown
        );
        for u in &j.unfit {
            eprintln!(
                "  feature `{}`: {} value(s) its kind does not take, written as missing (first: {})",
                u.feature, u.rows, u.example
            );
        }
    }
    if pass.unknown > 0 {
        println!(
            "{} event(s) name requests no impression partition holds (not sampled, or unknown), e.g. {}",
            pass.unknown,
            pass.unknown_ids.join(", ")
        );
    }
    for (partition, why) in &pass.failed {
        eprintln!("not joined: {partition}: {why}");
    }
}

fn stop_on_signal(stop: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        rt.block_on(retort_server::shutdown::signal());
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
}

/// candle's CPU kernels read `RAYON_NUM_THREADS` on every matrix product. Unset, candle works
/// the thread count out again on each call (reading `/proc/cpuinfo`), and with two threads it
/// splits the student's and the teacher's small matrices at a loss: one thread trains 1.6x
/// (student) and 1.2x (teacher) faster on two cores (BENCHMARKS.md). Serving does not use candle.
pub fn one_kernel_thread_unless_told() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // SAFETY: the first thing `main` does, before any other thread exists.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", "1") };
    }
}

/// What `retort train` prints about one round: training, holdout metrics, the gate, and where
/// the package went.
fn print_round(round: &Round) {
    let t = &round.trained;
    println!(
        "trained on {} rows ({} without a teacher label), held out {}, in {:.1} s \
         ({:.0} examples/s in training steps); epoch losses {:?}",
        t.rows_train,
        t.rows_without_teacher,
        t.rows_holdout,
        round.seconds,
        t.log.examples_per_second(),
        t.log.train_losses.iter().map(|l| (l * 1e4).round() / 1e4).collect::<Vec<_>>()
    );
    if let Some(note) = t.manifest.provenance.notes.get("warm_start") {
        println!("warm start: {note}");
    }
    println!(
        "| task | AUC | log loss | GAUC | NDCG@10 | ECE | distance to truth |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for m in &t.metrics {
        let f = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.4}"));
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            m.task,
            f(m.auc),
            f(m.log_loss),
            f(m.gauc),
            f(m.ndcg_10),
            f(m.ece),
            f(m.truth_mae)
        );
    }
    for w in &t.warnings {
        println!("warning: {w}");
    }
    print!("\n{}", round.gate.render());
    match &round.published {
        Some(package::Written::Unchanged(dir)) => {
            println!("not published again: identical to {} (same graph and manifest)", dir.display())
        }
        Some(package::Written::New(dir)) if !round.gate.passed() => {
            println!("publishing anyway (--force): published {}", dir.display())
        }
        Some(package::Written::New(dir)) => println!("published {}", dir.display()),
        None => println!("not published"),
    }
    if let Some(answer) = &round.notified {
        println!("notified: {answer}");
    }
}
