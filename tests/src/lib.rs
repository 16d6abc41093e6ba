//! Helpers for end-to-end tests: the `convoflow` binary, the real services (started by
//! `scripts/services.sh`; their addresses from `CONVOFLOW_TEST_NATS` and
//! `CONVOFLOW_TEST_CLICKHOUSE`), per-test names on them, and tables read back from either store
//! as sorted rows of text, so the two deployments can be compared row for row.

use convoflow_connectors::clickhouse::{decode as decode_row_binary, ClickHouseConfig, ClickHouseStore};
use convoflow_schema::{schema, TABLES};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The binary built beside this test (`target/<profile>/convoflow`).
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    dir.join("convoflow")
}

const NATS: &str = "CONVOFLOW_TEST_NATS";
const CLICKHOUSE: &str = "CONVOFLOW_TEST_CLICKHOUSE";
/// Set by `scripts/test.sh`, so that in CI a test that needs the services fails instead of
/// skipping when their addresses are missing.
const REQUIRE: &str = "CONVOFLOW_TEST_REQUIRE_SERVICES";

/// Whether NATS and ClickHouse are there for `test`. Plain `cargo test` on a machine without them
/// skips the test with a notice on stderr (written past the test harness's capture, so it shows);
/// `scripts/test.sh` starts the services and sets their addresses and [`REQUIRE`].
pub fn services_for(test: &str) -> bool {
    if std::env::var_os(NATS).is_some() && std::env::var_os(CLICKHOUSE).is_some() {
        return true;
    }
    assert!(std::env::var_os(REQUIRE).is_none(), "{test} needs {NATS} and {CLICKHOUSE}, and {REQUIRE} is set");
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "skipped {test}: it needs NATS and ClickHouse. Run `bash scripts/test.sh`, or `bash scripts/services.sh \
         start` and set {NATS}=nats://127.0.0.1:4222 {CLICKHOUSE}=http://127.0.0.1:8123"
    );
    false
}

/// NATS's address; call [`services_for`] first.
pub fn nats_url() -> String {
    std::env::var(NATS).expect("services_for checked it is set")
}

/// ClickHouse's HTTP address; call [`services_for`] first.
pub fn clickhouse_url() -> String {
    std::env::var(CLICKHOUSE).expect("services_for checked it is set")
}

/// A test's own stream, subjects, consumer and database, so tests share the servers safely.
pub struct Names {
    pub tag: String,
}

impl Names {
    pub fn new(test: &str) -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        Names { tag: format!("{test}_{}_{}", std::process::id(), nanos % 1_000_000_000) }
    }

    pub fn database_url(&self, base: &str) -> String {
        format!("{}/cf_{}", base.trim_end_matches('/'), self.tag)
    }

    /// A `convoflow` command with this test's JetStream names in its environment.
    pub fn command(&self) -> Command {
        let mut command = Command::new(binary());
        command
            .env("CONVOFLOW_NATS_STREAM", format!("CF_{}", self.tag.to_uppercase()))
            .env("CONVOFLOW_NATS_SUBJECT_PREFIX", format!("cf.{}", self.tag))
            .env("CONVOFLOW_NATS_CONSUMER", format!("cf_{}", self.tag))
            .env("CONVOFLOW_LOG", "warn");
        command
    }
}

/// Runs a command and fails the test with its output unless it exits 0.
pub fn succeed(command: &mut Command) -> Output {
    let output = command.output().expect("run convoflow");
    assert!(
        output.status.success(),
        "{command:?} failed: {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Generates `events` lines (seed fixed) into `dir/input.ndjson`; returns it and its tenants file.
pub fn generate(dir: &Path, events: u64) -> (PathBuf, PathBuf) {
    let input = dir.join("input.ndjson");
    succeed(
        Command::new(binary()).args(["generate", "--events", &events.to_string(), "--seed", "11", "--out"]).arg(&input),
    );
    let tenants = input.with_extension("tenants.json");
    (input, tenants)
}

/// Every table as sorted rows of text; `rejected` without `received_at` (the time of the run).
pub type Tables = BTreeMap<String, Vec<String>>;

fn rows_of(batches: &[RecordBatch], table: &str) -> Vec<String> {
    let mut rows = Vec::new();
    for batch in batches {
        for row in 0..batch.num_rows() {
            let fields: Vec<String> = batch
                .schema()
                .fields()
                .iter()
                .zip(batch.columns())
                .filter(|(field, _)| !(table == "rejected" && field.name() == "received_at"))
                .map(|(_, column)| {
                    if column.is_null(row) {
                        "∅".to_owned()
                    } else {
                        array_value_to_string(column, row).expect("display")
                    }
                })
                .collect();
            rows.push(fields.join("|"));
        }
    }
    rows.sort();
    rows
}

pub fn embedded_tables(data_dir: &Path) -> Tables {
    TABLES
        .iter()
        .map(|table| {
            let files = convoflow_schema::files::table_files(&data_dir.join("tables"), table).expect("list the tables");
            assert!(!files.is_empty() || *table == "events", "no table {table} in {}", data_dir.display());
            let mut batches: Vec<RecordBatch> = Vec::new();
            for path in files {
                let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                let reader = ParquetRecordBatchReaderBuilder::try_new(file).expect("parquet").build().expect("reader");
                batches.extend(reader.map(|batch| batch.expect("batch")));
            }
            (table.to_string(), rows_of(&batches, table))
        })
        .collect()
}

pub fn clickhouse_tables(database_url: &str) -> Tables {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let config = ClickHouseConfig::parse(database_url).expect("url");
        let store = ClickHouseStore::connect(&config).await.expect("connect to ClickHouse");
        let mut tables = Tables::new();
        for table in TABLES {
            let schema = schema(table).expect("table");
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            let sql = format!("SELECT {} FROM {}.{table}", names.join(", "), config.database);
            let bytes = store.fetch(&sql, "RowBinary", "read a table").await.expect("select");
            let batches = decode_row_binary(schema, &bytes).expect("decode");
            tables.insert(table.to_string(), rows_of(&batches, table));
        }
        tables
    })
}

/// Epochs committed so far in the database at `database_url` (0 before its tables exist).
pub fn committed_epochs(database_url: &str) -> u64 {
    // Plain HTTP (curl), so polling never races the pipeline's CREATE statements.
    let config = ClickHouseConfig::parse(database_url).expect("url");
    let output = Command::new("curl")
        .args(["-s", "--data-binary", &format!("SELECT count() FROM {}.commits", config.database), &config.url])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&output.stdout).trim().parse().unwrap_or(0)
}

/// Waits until more than `after` epochs are committed, or `child` exits; true if it still runs.
pub fn wait_for_commit(database_url: &str, after: u64, child: &mut std::process::Child) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while std::time::Instant::now() < deadline {
        if child.try_wait().expect("poll").is_some() {
            return false;
        }
        if committed_epochs(database_url) > after {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("no epoch committed within 2 minutes");
}

/// Asserts two table sets are equal, naming the first table and row that differ.
pub fn assert_same_tables(expected: &Tables, actual: &Tables, context: &str) {
    for (table, rows) in expected {
        let other = actual.get(table).unwrap_or_else(|| panic!("{context}: table {table} missing"));
        if rows != other {
            let missing: Vec<&String> = rows.iter().filter(|r| !other.contains(r)).take(3).collect();
            let extra: Vec<&String> = other.iter().filter(|r| !rows.contains(r)).take(3).collect();
            panic!(
                "{context}: table {table} differs: expected {} rows, got {}; missing {missing:?}; extra {extra:?}",
                rows.len(),
                other.len()
            );
        }
    }
}
