//! Every report gives the same figures on ClickHouse as on the embedded store, for the same
//! events: the two dialects of `report_sql` mean the same thing.

use convoflow_connectors::clickhouse::{clickhouse_dialect, clickhouse_query, ClickHouseConfig, ClickHouseStore};
use convoflow_e2e::*;
use convoflow_events::{parse_date32, rfc3339_to_ms, Tenants};
use convoflow_queries::{
    format_batches, report_sql, scope_to_tenant, Dialect, OutputFormat, Report, ReportParams, SqlEngine,
};
use convoflow_schema::TABLES;
use std::process::Command;

/// A CSV result as rows of canonical cells: numbers rounded to 6 decimals, instants as epoch ms
/// (ClickHouse 18.16 stores them as numbers), null as `∅` (ClickHouse writes `\N`, Arrow nothing).
fn canonical(csv: &str) -> (String, Vec<Vec<String>>) {
    let mut lines = csv.lines();
    let header = lines.next().unwrap_or_default().replace('"', "");
    let mut rows: Vec<Vec<String>> = lines
        .filter(|line| !line.is_empty())
        .map(|line| {
            line.split(',')
                .map(|cell| {
                    let cell = cell.trim_matches('"');
                    if cell.is_empty() || cell == "\\N" {
                        "∅".to_owned()
                    } else if let Ok(number) = cell.parse::<f64>() {
                        format!("{}", (number * 1e6).round() / 1e6)
                    } else if let Some(ms) = rfc3339_to_ms(cell) {
                        ms.to_string()
                    } else {
                        cell.to_owned()
                    }
                })
                .collect()
        })
        .collect();
    rows.sort();
    (header, rows)
}

#[test]
fn every_report_agrees_between_the_embedded_store_and_clickhouse() {
    if !services_for("every_report_agrees_between_the_embedded_store_and_clickhouse") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, tenants_path) = generate(dir.path(), 30_000);
    let data = dir.path().join("embedded");
    succeed(
        Command::new(binary())
            .args(["replay", "--input"])
            .arg(&input)
            .arg("--tenants")
            .arg(&tenants_path)
            .arg("--data")
            .arg(&data),
    );
    let names = Names::new("reports");
    let database = names.database_url(&clickhouse_url());
    succeed(names.command().args(["replay", "--input"]).arg(&input).arg("--tenants").arg(&tenants_path).args([
        "--nats",
        &nats_url(),
        "--clickhouse",
        &database,
    ]));
    let tenants = Tenants::load(&tenants_path).expect("tenants");

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let engine = SqlEngine::open(&data).await.expect("embedded SQL");
        let store =
            ClickHouseStore::connect(&ClickHouseConfig::parse(&database).expect("url")).await.expect("ClickHouse");
        // acme_retail has the default funnel; kolkata_foods configures its own funnels, lookback
        // and half-life, in a +05:30 zone.
        for tenant in ["acme_retail", "kolkata_foods"] {
            let params = ReportParams {
                timezone: tenants.timezone(tenant),
                funnels: tenants.funnels(tenant).to_vec(),
                from: parse_date32("2025-12-15"),
                to: parse_date32("2026-02-28"),
                ..ReportParams::new(tenant)
            };
            for report in Report::ALL {
                let embedded_sql = report_sql(report, &params, Dialect::DataFusion);
                let batches = engine
                    .query(&embedded_sql)
                    .await
                    .unwrap_or_else(|e| panic!("{}: {e}\n{embedded_sql}", report.name()));
                let embedded = canonical(&format_batches(&batches, OutputFormat::Csv).expect("csv"));
                // As the API runs it for a tenant key: every table read replaced by the tenant's rows.
                let report_text = report_sql(report, &params, clickhouse_dialect(&store));
                let clickhouse_sql = scope_to_tenant(&report_text, tenant, &store.config().database, TABLES)
                    .unwrap_or_else(|e| panic!("{} cannot be scoped to a tenant: {e}\n{report_text}", report.name()));
                let clickhouse =
                    clickhouse_query(&store, &clickhouse_sql, OutputFormat::Csv).await.unwrap_or_else(|e| {
                        panic!("{} on ClickHouse {}: {e:?}\n{clickhouse_sql}", report.name(), store.version())
                    });
                let clickhouse = canonical(&clickhouse);
                assert!(!embedded.1.is_empty(), "{tenant} {}: the generated data gives the report rows", report.name());
                assert_eq!(embedded, clickhouse, "{tenant} {}", report.name());
            }
        }
    });
}
