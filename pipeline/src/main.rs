//! `convoflow`: the command line of SPEC §6.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use convoflow_events::Tenants;
use convoflow_fixtures::{generate, tenant_profiles, tenants_json, GeneratorConfig};
use convoflow_pipeline::replay::{replay, thousands, ReplayOptions};
use convoflow_queries::{format_batches, OutputFormat, SqlEngine};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

/// The dataflow allocates and frees many small strings; mimalloc does that far faster than glibc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "convoflow", version, about = "Live analytics for WhatsApp business messaging")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Add the events of NDJSON files to the store and rebuild every table.
    Replay {
        /// NDJSON files of canonical events.
        #[arg(long = "input", required = true, num_args = 1..)]
        inputs: Vec<PathBuf>,
        /// Input format: canonical (one event per line).
        #[arg(long, default_value = "canonical")]
        format: String,
        /// Tenants file (JSON): time zones, phone_number_ids, funnels.
        #[arg(long)]
        tenants: Option<PathBuf>,
        /// Data directory of the embedded store.
        #[arg(long, default_value = "./data")]
        data: PathBuf,
        /// Dataflow worker threads (default: the machine's cores).
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Run a read-only SQL query over the tables.
    Sql {
        /// Data directory of the embedded store.
        #[arg(long, default_value = "./data")]
        data: PathBuf,
        /// Output format: table, csv or json.
        #[arg(long, default_value = "table")]
        format: OutputFormat,
        /// The query.
        query: String,
    },
    /// Write a deterministic, realistic data set (and its tenants file beside it).
    Generate {
        /// Lines to write, duplicates and a few invalid lines included.
        #[arg(long)]
        events: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Number of tenants.
        #[arg(long, default_value_t = 4)]
        tenants: usize,
        #[arg(long)]
        out: PathBuf,
        /// Output format: canonical.
        #[arg(long, default_value = "canonical")]
        format: String,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("CONVOFLOW_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    if let Err(error) = run(Cli::parse()) {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

fn check_format(format: &str) -> Result<()> {
    match format {
        "canonical" => Ok(()),
        "whatsapp" => bail!("--format whatsapp is not supported yet: the webhook normalizer comes with `convoflow serve`"),
        other => bail!("unknown --format `{other}` (expected canonical)"),
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Replay { inputs, format, tenants, data, workers } => {
            check_format(&format)?;
            let tenants = match tenants {
                Some(path) => Tenants::load(&path)?,
                None => Tenants::default(),
            };
            let workers = workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let summary = replay(ReplayOptions { inputs, tenants, data_dir: data.clone(), workers })?;
            print!("{}", summary.render(&data));
        }
        Command::Sql { data, format, query } => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let text = runtime.block_on(async {
                let engine = SqlEngine::open(&data).await?;
                let batches = engine.query(&query).await?;
                anyhow::Ok(format_batches(&batches, format)?)
            })?;
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{}", text.trim_end())?;
        }
        Command::Generate { events, seed, tenants, out, format } => {
            check_format(&format)?;
            let started = Instant::now();
            let file = std::fs::File::create(&out).with_context(|| format!("cannot create {}", out.display()))?;
            let mut writer = std::io::BufWriter::with_capacity(1 << 20, file);
            let config = GeneratorConfig { events, seed, tenants };
            let summary = generate(&config, &mut writer)?;
            writer.flush()?;
            let tenants_path = out.with_extension("tenants.json");
            std::fs::write(&tenants_path, tenants_json(&tenant_profiles(tenants)))
                .with_context(|| format!("cannot write {}", tenants_path.display()))?;
            println!(
                "wrote {} lines to {} in {:.2} s: {} unique events, {} duplicate deliveries, {} invalid lines\ntenants: {}\nnext: convoflow replay --input {} --tenants {}",
                thousands(summary.lines),
                out.display(),
                started.elapsed().as_secs_f64(),
                thousands(summary.unique_events),
                thousands(summary.duplicates),
                thousands(summary.invalid),
                tenants_path.display(),
                out.display(),
                tenants_path.display(),
            );
        }
    }
    Ok(())
}
