//! `convoflow`: the command line of SPEC §6.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use convoflow_connectors::clickhouse::{clickhouse_query, ClickHouseConfig, ClickHouseStore};
use convoflow_connectors::file::normalize_files;
use convoflow_events::{rfc3339_to_ms, Tenants};
use convoflow_fixtures::{generate, tenant_profiles, tenants_json, GeneratorConfig};
use convoflow_pipeline::bench_ingest::{run_bench, BenchOptions};
use convoflow_pipeline::replay::{now_ms, read_inputs, replay, thousands, ReplayOptions};
use convoflow_pipeline::scaled::{run_scaled, ScaledOptions};
use convoflow_pipeline::serve::config::{Overrides, ServeConfig};
use convoflow_pipeline::serve::run_serve;
use convoflow_queries::{format_batches, OutputFormat, SqlEngine};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

/// The dataflow allocates and frees many small strings; mimalloc does that far faster than glibc.
/// (`--features system-allocator` leaves it out, for heap profilers that hook malloc.)
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Transparent huge pages off for the process, unless `MIMALLOC_ALLOW_THP` says otherwise: mimalloc
/// asks for them on its large allocations, and faulting in zeroed 2 MiB pages made `replay` 1.3–2×
/// slower on the machine of BENCHMARKS.md ("Huge pages"), with no run faster.
#[allow(unsafe_code)] // no safe wrapper for prctl in std or libc
fn without_huge_pages() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: PR_SET_THP_DISABLE sets a flag of this process; it reads no memory.
        let refused = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0;
        if refused {
            eprintln!("note: cannot turn transparent huge pages off: {}", std::io::Error::last_os_error());
        }
    }
}

#[derive(Parser)]
#[command(name = "convoflow", version, about = "Live analytics for WhatsApp business messaging")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API, the bus, the dataflow and the store in one process (SPEC §7).
    /// With no flags: the embedded deployment on 127.0.0.1:8080, data in ./data.
    Serve {
        /// TOML config file (see the README); flags and environment variables win over it.
        #[arg(long, env = "CONVOFLOW_CONFIG")]
        config: Option<PathBuf>,
        /// Data directory: the local log, the Parquet tables, the generated admin key.
        #[arg(long, env = "CONVOFLOW_DATA")]
        data: Option<PathBuf>,
        /// Address to listen on (port 0 picks a free one; the chosen address is printed).
        #[arg(long, env = "CONVOFLOW_LISTEN")]
        listen: Option<String>,
        /// NATS JetStream as the bus instead of the local log.
        #[arg(long, env = "CONVOFLOW_NATS", value_name = "URL")]
        nats: Option<String>,
        /// ClickHouse as the store instead of the embedded one.
        #[arg(long, env = "CONVOFLOW_CLICKHOUSE", value_name = "URL")]
        clickhouse: Option<String>,
        /// Tenants file (JSON): time zones, phone_number_ids, funnels.
        #[arg(long, env = "CONVOFLOW_TENANTS")]
        tenants: Option<PathBuf>,
        /// Dataflow worker threads (default: the machine's cores).
        #[arg(long)]
        workers: Option<usize>,
        /// Feed generated traffic (about 2,000 events a second) so the dashboard moves.
        #[arg(long)]
        demo: bool,
    },
    /// Load-test a running `convoflow serve`: post generated traffic to /v1/events while reading the
    /// feed; print the sustained ingest rate and the 2xx-to-feed latency.
    BenchIngest {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// An admin API key (the generated traffic spans several tenants).
        #[arg(long, env = "CONVOFLOW_ADMIN_KEY")]
        key: String,
        /// Events per second to offer; 0 = as fast as the server answers.
        #[arg(long, default_value_t = 0)]
        rate: u64,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Events per request.
        #[arg(long, default_value_t = 500)]
        batch: usize,
        /// Requests in flight.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// Add the events of NDJSON files to the store and rebuild every table.
    Replay {
        /// NDJSON files of canonical events.
        #[arg(long = "input", required_unless_present = "from_nats", num_args = 1..)]
        inputs: Vec<PathBuf>,
        /// Input format: canonical (one event per line) or whatsapp (one webhook POST body per
        /// line; --tenants maps phone_number_id to tenant).
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
        /// Save the operator state every this many events through the dataflow (stored ones
        /// re-fed, then the input's), so what the replay has touched leaves memory; and at the
        /// end, always.
        #[arg(long, default_value_t = convoflow_connectors::embedded::ParquetSink::STATE_EVERY)]
        state_every: u64,
        /// Publish the input to NATS JetStream (stream CONVOFLOW_EVENTS) and consume it from there.
        #[arg(long, value_name = "URL")]
        nats: Option<String>,
        /// Write the tables to ClickHouse (HTTP interface; the URL's path names the database,
        /// default `convoflow`) instead of the embedded store. Needs --nats.
        #[arg(long, value_name = "URL")]
        clickhouse: Option<String>,
        /// Rebuild the tables from the JetStream stream instead of input files.
        #[arg(long)]
        from_nats: bool,
        /// With --from-nats: only messages published at or after this instant (RFC 3339).
        #[arg(long, value_name = "RFC3339", requires = "from_nats")]
        since: Option<String>,
    },
    /// Run a read-only SQL query over the tables.
    Sql {
        /// Data directory of the embedded store.
        #[arg(long, default_value = "./data", conflicts_with = "clickhouse")]
        data: PathBuf,
        /// Query ClickHouse instead (HTTP interface URL; its path names the database).
        #[arg(long, value_name = "URL")]
        clickhouse: Option<String>,
        /// Output format: table, csv or json.
        #[arg(long, default_value = "table")]
        format: OutputFormat,
        /// The query.
        query: String,
    },
    /// Write a deterministic, realistic data set (and its tenants file beside it).
    Generate {
        /// Lines to write, duplicates and a few invalid lines included. Beyond 4 Mi events the
        /// file is sorted in runs in the temporary directory (TMPDIR), about 1/7 of its size.
        #[arg(long)]
        events: u64,
        /// The same seed gives the same bytes.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Number of tenants.
        #[arg(long, default_value_t = 4)]
        tenants: usize,
        /// The NDJSON file to write (may be a named pipe); the tenants file is written first,
        /// beside it, as `<out without .ndjson>.tenants.json`.
        #[arg(long)]
        out: PathBuf,
        /// Output format: canonical.
        #[arg(long, default_value = "canonical")]
        format: String,
    },
}

fn main() {
    without_huge_pages();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("CONVOFLOW_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    if let Err(error) = run(Cli::parse()) {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

fn tokio_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum InputFormat {
    Canonical,
    WhatsApp,
}

fn input_format(format: &str) -> Result<InputFormat> {
    match format {
        "canonical" => Ok(InputFormat::Canonical),
        "whatsapp" => Ok(InputFormat::WhatsApp),
        other => bail!("unknown --format `{other}` (expected canonical or whatsapp)"),
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve { config, data, listen, nats, clickhouse, tenants, workers, demo } => {
            let overrides = Overrides {
                config,
                data,
                listen,
                nats,
                clickhouse,
                tenants,
                workers,
                admin_key: std::env::var("CONVOFLOW_ADMIN_KEY").ok(),
                demo,
            };
            let config = ServeConfig::load(overrides)?;
            tokio_runtime()?.block_on(run_serve(config))?;
        }
        Command::Replay { inputs, format, tenants, data, workers, state_every, nats, clickhouse, from_nats, since } => {
            let format = input_format(&format)?;
            let tenants = match tenants {
                Some(path) => Tenants::load(&path)?,
                None => Tenants::default(),
            };
            let workers = workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            if nats.is_none() && !from_nats {
                if clickhouse.is_some() {
                    bail!("--clickhouse needs --nats: events reach ClickHouse through JetStream (convoflow replay --input FILE --nats URL --clickhouse URL)");
                }
                let mut inputs = read_inputs(&inputs)?;
                let mut rejected = Vec::new();
                if format == InputFormat::WhatsApp {
                    let normalized = normalize_files(inputs, &tenants, now_ms())?;
                    println!(
                        "normalized {} webhook bodies into {} events ({} items without an event, {} rejected)",
                        thousands(normalized.bodies),
                        thousands(normalized.events),
                        thousands(normalized.skipped),
                        thousands(normalized.rejected.len() as u64)
                    );
                    inputs = normalized.files;
                    rejected = normalized.rejected;
                }
                let summary =
                    replay(ReplayOptions { inputs, rejected, tenants, data_dir: data.clone(), workers, state_every })?;
                print!("{}", summary.render(&data));
                return Ok(());
            }
            if format == InputFormat::WhatsApp {
                bail!("--format whatsapp works with the embedded store only so far (leave out --nats)");
            }
            let since_ms = since
                .map(|text| {
                    rfc3339_to_ms(&text).with_context(|| format!("--since `{text}` is not an RFC 3339 instant"))
                })
                .transpose()?;
            let clickhouse = clickhouse.map(|url| ClickHouseConfig::parse(&url)).transpose()?;
            let options = ScaledOptions {
                inputs: if from_nats { Vec::new() } else { inputs },
                nats: nats.unwrap_or_else(|| DEFAULT_NATS_URL.to_owned()),
                clickhouse,
                data_dir: data,
                from_nats,
                since_ms,
                tenants,
                workers,
            };
            let summary = tokio_runtime()?.block_on(run_scaled(options))?;
            print!("{}", summary.render());
        }
        Command::BenchIngest { url, key, rate, seconds, batch, concurrency, seed } => {
            let options = BenchOptions { url, key, rate, seconds, batch, concurrency, seed };
            let report = tokio_runtime()?.block_on(run_bench(options))?;
            print!("{}", report.render());
        }
        Command::Sql { data, clickhouse, format, query } => {
            let text = tokio_runtime()?.block_on(async {
                if let Some(url) = clickhouse {
                    let store = ClickHouseStore::connect(&ClickHouseConfig::parse(&url)?).await?;
                    return anyhow::Ok(clickhouse_query(&store, &query, format).await?);
                }
                let engine = SqlEngine::open(&data).await?;
                let batches = engine.query(&query).await?;
                anyhow::Ok(format_batches(&batches, format)?)
            })?;
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{}", text.trim_end())?;
        }
        Command::Generate { events, seed, tenants, out, format } => {
            if input_format(&format)? == InputFormat::WhatsApp {
                bail!("generate --format whatsapp is not supported yet: it writes canonical events");
            }
            let started = Instant::now();
            // The tenants first: a reader of `out` (a pipe, say) can start with them.
            let tenants_path = out.with_extension("tenants.json");
            std::fs::write(&tenants_path, tenants_json(&tenant_profiles(tenants)))
                .with_context(|| format!("cannot write {}", tenants_path.display()))?;
            let file = std::fs::File::create(&out).with_context(|| format!("cannot create {}", out.display()))?;
            let mut writer = std::io::BufWriter::with_capacity(1 << 20, file);
            let config = GeneratorConfig { events, seed, tenants };
            let summary = generate(&config, &mut writer)?;
            writer.flush()?;
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
