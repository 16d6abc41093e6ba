//! The fuzz targets for a fixed budget, on every test run (`scripts/test.sh`): the same seed, so
//! the same cases, each time. `scripts/fuzz.sh` runs millions with fresh seeds.

use convoflow_fuzz::targets::{Canonical, Scoper, Sql, WhatsApp};
use convoflow_fuzz::{run, Target};
use std::time::Duration;

fn fuzz(target: &mut dyn Target, cases: u64) {
    let hang = std::env::temp_dir().join(format!("convoflow-fuzz-{}.hang", target.name()));
    let report = run(target, 20261127, cases, 5, Duration::from_secs(60), hang);
    eprintln!("{}", report.summary());
    let shown: Vec<String> = report
        .findings
        .iter()
        .map(|finding| {
            let input: String = String::from_utf8_lossy(&finding.input).chars().take(400).collect();
            format!(
                "case {}: {}\n  input: {input}",
                finding.case,
                finding.problem.chars().take(600).collect::<String>()
            )
        })
        .collect();
    assert!(report.findings.is_empty(), "{}\n{}", report.summary(), shown.join("\n"));
    assert!(report.outcomes.len() > 3, "the cases reach more than a few outcomes: {:?}", report.outcomes);
}

#[test]
fn canonical_parser() {
    fuzz(&mut Canonical::default(), 50_000);
}

#[test]
fn whatsapp_normalizer() {
    fuzz(&mut WhatsApp::default(), 10_000);
}

#[test]
fn clickhouse_tenant_scoper() {
    fuzz(&mut Scoper::default(), 50_000);
}

#[test]
fn sql_endpoint() {
    fuzz(&mut Sql::new().expect("the SQL target starts"), 2_000);
}
