//! Test support: running the dataflow over events and rendering rows as JSON with SPEC column
//! names, RFC 3339 instants and ISO dates, so expected rows can be written by hand.
#![allow(dead_code)]

use chrono::{TimeZone, Utc};
use convoflow_events::{date32_to_string, parse_event, Event, Tenants};
use convoflow_operators::{Cells, Collection, Column, Driver, RejectedRow, Table, TableSet, Visit, DERIVED_TABLES};
use serde_json::Value;
use std::sync::Arc;

pub fn ts(ms: i64) -> Value {
    Utc.timestamp_millis_opt(ms).single().map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()).into()
}

/// Floats rounded to 9 decimals, so hand-worked weights like 1/3 can be written down.
fn real(value: f64) -> Value {
    let rounded = (value * 1e9).round() / 1e9;
    serde_json::Number::from_f64(rounded).map_or(Value::Null, Value::Number)
}

/// One row as a JSON object keyed by column name, built from the table's declaration.
struct JsonRow<'c> {
    columns: std::slice::Iter<'c, Column>,
    row: serde_json::Map<String, Value>,
}

impl JsonRow<'_> {
    fn put<T>(&mut self, value: Option<T>, render: impl FnOnce(T) -> Value) {
        let column = self.columns.next().expect("a cell per declared column");
        self.row.insert(column.name.to_owned(), value.map_or(Value::Null, render));
    }
}

impl Cells for JsonRow<'_> {
    fn text(&mut self, value: Option<&str>) {
        self.put(value, Value::from);
    }
    fn instant(&mut self, value: Option<i64>) {
        self.put(value, ts);
    }
    fn int64(&mut self, value: Option<i64>) {
        self.put(value, Value::from);
    }
    fn int32(&mut self, value: Option<i32>) {
        self.put(value, Value::from);
    }
    fn float64(&mut self, value: Option<f64>) {
        self.put(value, real);
    }
    fn date(&mut self, value: Option<i32>) {
        self.put(value, |days| date32_to_string(days).into());
    }
    fn boolean(&mut self, value: Option<bool>) {
        self.put(value, Value::from);
    }
}

/// Renders the derived table named `table`.
struct Render<'t> {
    table: &'t str,
    rows: Option<Vec<Value>>,
}

impl Visit for Render<'_> {
    fn visit<R: Table + Ord>(&mut self, collection: &Collection<R>) {
        if R::NAME != self.table {
            return;
        }
        let rendered = collection.rows().map(|row| {
            let mut json = JsonRow { columns: R::COLUMNS.iter(), row: serde_json::Map::new() };
            row.cells(&mut json);
            Value::Object(json.row)
        });
        self.rows = Some(rendered.collect());
    }
}

/// The rows of one table, rendered and sorted.
pub fn table_rows(tables: &TableSet, table: &str) -> Vec<Value> {
    let mut rows: Vec<Value> = if table == "events" {
        tables.events.iter().map(|e| serde_json::from_str(&e.to_json()).expect("an event's JSON")).collect()
    } else {
        let mut render = Render { table, rows: None };
        tables.visit(&mut render);
        render.rows.unwrap_or_else(|| panic!("unknown table {table}"))
    };
    rows.sort_by_key(|row| row.to_string());
    rows
}

/// `events` and every derived table, in SPEC order.
pub fn tables() -> Vec<&'static str> {
    std::iter::once("events").chain(DERIVED_TABLES.iter().copied()).collect()
}

pub fn parse_all(ndjson: &str) -> Vec<Event> {
    ndjson
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| parse_event(l.as_bytes()).unwrap_or_else(|e| panic!("bad golden input {l}: {e}")))
        .collect()
}

/// What a test run of the dataflow produced.
#[derive(Default)]
pub struct RunOutput {
    pub tables: TableSet,
    pub rejected: Vec<RejectedRow>,
    pub duplicates: u64,
}

/// Runs the dataflow on `workers` workers, as the runtime does: `workers` batches at a time make
/// one epoch, spread over the workers, so copies and out-of-order events meet within an epoch and
/// across epochs. Positions follow arrival order, as a file's line numbers would.
pub fn run_batches(batches: Vec<Vec<Event>>, tenants: Tenants, workers: usize) -> RunOutput {
    let mut driver = Driver::start(workers, Arc::new(tenants)).expect("the dataflow starts");
    let mut output = RunOutput::default();
    let mut position = 0u64;
    for round in batches.chunks(workers.max(1)) {
        let epoch: Vec<(u64, Box<Event>)> = round
            .iter()
            .flatten()
            .map(|event| {
                position += 1;
                (position, Box::new(event.clone()))
            })
            .collect();
        driver.submit(epoch, 0).expect("submit an epoch");
        let epoch = driver.next_output().expect("the epoch finishes");
        output.tables.merge(epoch.tables);
        output.rejected.extend(epoch.rejected);
        output.duplicates += epoch.duplicates;
    }
    driver.shutdown().expect("the dataflow stops");
    output.tables.consolidate();
    output
}
