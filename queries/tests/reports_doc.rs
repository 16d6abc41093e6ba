//! docs/REPORTS.md is generated from `report_sql`, so the SQL it documents is the SQL the
//! reports run. Run with `CONVOFLOW_BLESS=1` to rewrite it after changing a report.

use convoflow_events::parse_date32;
use convoflow_queries::{report_sql, Dialect, Report, ReportParams};
use std::path::Path;

/// Line breaks before the main clauses: whitespace only, so the SQL is unchanged.
fn readable(sql: &str) -> String {
    let mut out = sql.to_owned();
    for clause in [" UNION ALL ", " FROM (", " FROM ", " WHERE ", " GROUP BY ", " ORDER BY ", " CROSS JOIN "] {
        out = out.replace(clause, &format!("\n{}", clause.trim_start()));
    }
    out
}

fn document() -> String {
    let params = ReportParams {
        from: parse_date32("2026-01-01"),
        to: parse_date32("2026-01-31"),
        ..ReportParams::new("acme_retail")
    };
    let mut doc = String::from(
        "# Reports\n\n\
         Generated from `queries/src/reports.rs` by `queries/tests/reports_doc.rs`; do not edit by hand.\n\n\
         Each report is one read-only query over the SPEC §5 tables. The API serves them by name; the same\n\
         SQL runs through `convoflow sql` (embedded store) or `convoflow sql --clickhouse URL`. Shown for\n\
         tenant `acme_retail` (time zone UTC, the default funnel) and local dates 2026-01-01 … 2026-01-31:\n\
         instant columns are compared with the epoch milliseconds at which those local days begin, date\n\
         columns with the dates. Rates are rounded to 4 decimals, credited sums to 6; durations are ms;\n\
         percentiles interpolate between the two nearest values (`percentile_cont`; on ClickHouse 18.16,\n\
         which has no such function, spelled out the same way on the sorted values).\n\n\
         ```sh\n\
         convoflow sql --format table \"$(cat report.sql)\"\n\
         ```\n",
    );
    for report in Report::ALL {
        doc.push_str(&format!(
            "\n## {}\n\n{}\n\nEmbedded store (DataFusion):\n\n```sql\n{}\n```\n\n",
            report.name(),
            report.description(),
            readable(&report_sql(report, &params, Dialect::DataFusion))
        ));
        doc.push_str(&format!(
            "ClickHouse 18.16 (instants stored as UInt64 ms):\n\n```sql\n{}\n```\n",
            readable(&report_sql(report, &params, Dialect::ClickHouse { datetime64: false }))
        ));
    }
    doc
}

#[test]
fn docs_reports_md_is_the_generated_sql() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/REPORTS.md");
    let generated = document();
    if std::env::var_os("CONVOFLOW_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write docs/REPORTS.md");
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == generated,
        "docs/REPORTS.md is out of date: run CONVOFLOW_BLESS=1 cargo test --workspace --test reports_doc"
    );
}
