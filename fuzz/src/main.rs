//! `convoflow-fuzz`: runs the fuzz targets for a number of cases and keeps what it finds.

use anyhow::Context;
use clap::Parser;
use convoflow_fuzz::targets::{Canonical, Scoper, Sql, WhatsApp};
use convoflow_fuzz::{run, Target};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(about = "Fuzz convoflow's parsers, tenant scoper and SQL endpoint (see FUZZING.md)")]
struct Args {
    /// canonical, whatsapp, scoper, sql or all.
    #[arg(long, default_value = "all")]
    target: String,
    /// Cases per target.
    #[arg(long, default_value_t = 100_000)]
    cases: u64,
    /// The same seed gives the same cases.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// A case running longer is a hang: its input is kept and the run ends.
    #[arg(long, default_value_t = 30)]
    hang_seconds: u64,
    /// Run one input (a finding's `.input` file) through the target and print what it gives.
    #[arg(long)]
    replay: Option<PathBuf>,
    /// Where each finding's input and problem are written.
    #[arg(long, default_value = "fuzz/findings")]
    findings: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let names: Vec<&str> = match args.target.as_str() {
        "all" => vec!["canonical", "whatsapp", "scoper", "sql"],
        one => vec![one],
    };
    let mut found = 0;
    for name in names {
        let mut target: Box<dyn Target> = match name {
            "canonical" => Box::new(Canonical::default()),
            "whatsapp" => Box::new(WhatsApp::default()),
            "scoper" => Box::new(Scoper::default()),
            "sql" => Box::new(Sql::new().context("set up the SQL target")?),
            other => anyhow::bail!("no target `{other}`: choose canonical, whatsapp, scoper, sql or all"),
        };
        std::fs::create_dir_all(&args.findings).with_context(|| format!("create {}", args.findings.display()))?;
        let hang_file = args.findings.join(format!("{name}-seed{}-hang.input", args.seed));
        if let Some(path) = &args.replay {
            let input = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
            println!("{name}: {:?}", target.check(&input));
            continue;
        }
        let report =
            run(target.as_mut(), args.seed, args.cases, 100, Duration::from_secs(args.hang_seconds), hang_file);
        println!("{}", report.summary());
        for finding in &report.findings {
            let stem = args.findings.join(format!("{name}-seed{}-case{}", args.seed, finding.case));
            std::fs::write(stem.with_extension("input"), &finding.input)?;
            std::fs::write(stem.with_extension("problem"), &finding.problem)?;
            println!(
                "  finding: case {}: {} (input in {})",
                finding.case,
                finding.problem.chars().take(300).collect::<String>(),
                stem.with_extension("input").display()
            );
        }
        found += report.findings.len();
    }
    if found > 0 {
        anyhow::bail!("{found} findings; each input is kept under {}", args.findings.display());
    }
    Ok(())
}
