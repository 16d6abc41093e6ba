//! Read-only SQL over the SPEC §5 tables in the embedded store.
//!
//! Only queries run: the statement is parsed first and anything but a `SELECT`-style query, an
//! `EXPLAIN` of one or a `DESCRIBE` of a table is refused with a message naming the statement, and DataFusion's own
//! DDL/DML/statement switches are off as a second guard. Queries are held to the limits of
//! `guards` (text, nesting, function output, shared memory pool, result size).

use crate::guards::{bounded_context, check_nesting, check_text, collect_bounded, Collected, LimitError};
use convoflow_schema::{schema, TABLES};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::execution::context::{SQLOptions, SessionContext};
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::prelude::SessionConfig;
use datafusion::prelude::{col, lit, ParquetReadOptions};
use datafusion::sql::sqlparser::ast::Statement;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("SQL is read-only: {0} statements are refused; run a SELECT query")]
    ReadOnly(String),
    #[error("run one SQL statement at a time (got {0})")]
    MultipleStatements(usize),
    #[error("SQL syntax error: {0}")]
    Syntax(String),
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// DataFusion's message already carries its causes, so it is not chained as a source.
    #[error("{0}")]
    DataFusion(DataFusionError),
}

impl From<DataFusionError> for QueryError {
    fn from(error: DataFusionError) -> Self {
        QueryError::DataFusion(error)
    }
}

pub struct SqlEngine {
    context: SessionContext,
}

impl SqlEngine {
    /// Registers every table of the store in `data_dir`; a table never written is empty.
    pub async fn open(data_dir: &Path) -> Result<Self, QueryError> {
        // The command line's own process: its queries may take the machine's memory, as before.
        let context = bounded_context(SessionConfig::new(), Arc::new(RuntimeEnv::default()));
        let tables_dir = data_dir.join("tables");
        for &table in TABLES {
            let Some(table_schema) = schema(table) else { continue };
            let files = convoflow_schema::files::table_files(&tables_dir, table).map_err(|source| {
                QueryError::DataFusion(DataFusionError::IoError(std::io::Error::new(
                    source.kind(),
                    format!("{}: {source}", tables_dir.display()),
                )))
            })?;
            if files.is_empty() {
                context.register_table(table, Arc::new(MemTable::try_new(table_schema, vec![vec![]])?))?;
            } else {
                let files: Vec<String> = files.iter().map(|path| path.to_string_lossy().into_owned()).collect();
                let options = ParquetReadOptions::default().schema(&table_schema);
                context.register_table(table, context.read_parquet(files, options).await?.into_view())?;
            }
        }
        Ok(SqlEngine { context })
    }

    /// Registers in-memory tables: each named table gets its batches, every other table of
    /// SPEC §5 is empty. The batches must have the table's schema (as the store builds them).
    /// Queries share `runtime`'s memory pool (`guards::query_runtime`): one (a cross join, say)
    /// must fail rather than take the process down.
    pub fn over_batches(tables: Vec<(&str, Vec<RecordBatch>)>, runtime: Arc<RuntimeEnv>) -> Result<Self, QueryError> {
        let context = bounded_context(SessionConfig::new(), runtime);
        let mut given: std::collections::HashMap<&str, Vec<RecordBatch>> = tables.into_iter().collect();
        for &table in TABLES {
            let Some(table_schema) = schema(table) else { continue };
            let batches = given.remove(table).unwrap_or_default();
            context.register_table(table, Arc::new(MemTable::try_new(table_schema, vec![batches])?))?;
        }
        Ok(SqlEngine { context })
    }

    /// Registers `table` as its Parquet `files` followed by `batches` (which must have the
    /// table's schema), only the rows of `tenant` when one is given: a query of the table sees
    /// no other rows, the filter is part of the table.
    pub async fn with_files(
        self,
        table: &str,
        files: Vec<PathBuf>,
        batches: Vec<RecordBatch>,
        tenant: Option<&str>,
    ) -> Result<Self, QueryError> {
        let Some(table_schema) = schema(table) else { return Ok(self) };
        let context = &self.context;
        let mut frame = context.read_table(Arc::new(MemTable::try_new(table_schema.clone(), vec![batches])?))?;
        if !files.is_empty() {
            let files: Vec<String> = files.iter().map(|path| path.to_string_lossy().into_owned()).collect();
            let options = ParquetReadOptions::default().schema(&table_schema);
            frame = context.read_parquet(files, options).await?.union(frame)?;
        }
        if let Some(tenant) = tenant {
            frame = frame.filter(col("tenant_id").eq(lit(tenant)))?;
        }
        context.deregister_table(table)?;
        context.register_table(table, frame.into_view())?;
        Ok(self)
    }

    /// Runs one read-only query and returns all its rows.
    pub async fn query(&self, sql: &str) -> Result<Vec<RecordBatch>, QueryError> {
        Ok(self.query_limited(sql, usize::MAX, usize::MAX).await?.batches)
    }

    /// Runs one read-only query, returning at most `max_rows` rows and failing once they would
    /// take more than `max_bytes`. Planning and walking the query recurse: call this on a thread
    /// with a large stack (the API's query threads).
    pub async fn query_limited(&self, sql: &str, max_rows: usize, max_bytes: usize) -> Result<Collected, QueryError> {
        check_read_only(sql)?;
        let options = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
        let frame = self.context.sql_with_options(sql, options).await?;
        Ok(collect_bounded(frame, max_rows, max_bytes).await?)
    }
}

fn check_read_only(sql: &str) -> Result<(), QueryError> {
    check_text(sql, &GenericDialect {})?;
    let statements = Parser::parse_sql(&GenericDialect {}, sql).map_err(|e| QueryError::Syntax(e.to_string()))?;
    if statements.len() != 1 {
        return Err(QueryError::MultipleStatements(statements.len()));
    }
    check_nesting(&statements[0])?;
    match &statements[0] {
        Statement::Query(_) | Statement::ExplainTable { .. } => Ok(()),
        Statement::Explain { statement, .. } if matches!(**statement, Statement::Query(_)) => Ok(()),
        other => {
            let text = other.to_string();
            let keyword: String = text.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
            Err(QueryError::ReadOnly(format!("`{keyword}`")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An engine over `tables`, with a 64 MiB pool.
    fn engine_over(tables: Vec<(&str, Vec<RecordBatch>)>) -> SqlEngine {
        SqlEngine::over_batches(tables, crate::guards::query_runtime(64 << 20).expect("runtime")).expect("engine")
    }

    /// A result's cells, row by row, as the pretty table prints them.
    fn cells(batches: &[RecordBatch]) -> Vec<Vec<String>> {
        let table = datafusion::arrow::util::pretty::pretty_format_batches(batches).expect("format").to_string();
        let rows = table.lines().skip(3).filter(|line| line.starts_with('|'));
        rows.map(|line| line.trim_matches('|').split('|').map(|cell| cell.trim().to_owned()).collect()).collect()
    }

    #[tokio::test]
    async fn string_concatenation_keeps_its_meaning_through_the_bounded_concat() {
        let engine = engine_over(vec![]);
        let first_row = |batches: Vec<RecordBatch>| cells(&batches).remove(0);
        let values = engine.query("SELECT 'a' || 'b', 1 || 'x', 'a' || 'b' || 'c'").await.expect("query");
        assert_eq!(first_row(values), vec!["ab", "1x", "abc"]);
        let nulls =
            engine.query("SELECT (NULL || 'x') IS NULL, ('x' || CAST(NULL AS VARCHAR)) IS NULL").await.expect("query");
        assert_eq!(first_row(nulls), vec!["true", "true"], "either side NULL makes NULL, as `||` does");
        let column = "SELECT count(*), count(c || 'x'), max(c || 'x') FROM (VALUES ('a'), (NULL)) AS t(c)";
        assert_eq!(
            first_row(engine.query(column).await.expect("query")),
            vec!["2", "1", "ax"],
            "a NULL row stays NULL"
        );
        let refused = engine.query("SELECT repeat('x', 100000000)").await.expect_err("over the function limit");
        assert!(refused.to_string().contains("repeat() would make"), "{refused}");
    }

    /// Found by the scoper fuzz target: sqlparser retries a failed special form (`POSITION(… IN
    /// …)`, `FLOOR(… TO …)`, `CAST`, …) as a plain function call, so each nested level that fails
    /// doubles or triples the work: 20 bytes of `position(` kept a query thread busy for hours.
    #[tokio::test]
    async fn nested_special_forms_are_refused_before_parsing() {
        let engine = engine_over(vec![]);
        for shape in ["position(", "floor((", "CAST(", "substring("] {
            let sql = format!("SELECT {}1", shape.repeat(40));
            let refused = engine.query(&sql).await.expect_err("refused");
            assert!(refused.to_string().contains("nest more than"), "{shape}: {refused}");
        }
        let fine = "SELECT CAST(floor(CAST(1.5 AS DOUBLE)) AS BIGINT) AS n, position('b' IN 'abc') AS p, substring('abc' FROM 2) AS s";
        engine.query(fine).await.expect("a few nested special forms are fine");
    }

    /// Found by the SQL fuzz target: DataFusion's grouped top-k aggregation (`GROUP BY x ORDER BY
    /// x LIMIT n`, and every query gets a LIMIT) panicked (`unreachable`) on NaN group keys.
    #[tokio::test]
    async fn grouping_and_ordering_nan_keys_under_a_limit() {
        let engine = engine_over(vec![]);
        let sql = "SELECT x / y AS k FROM (SELECT CAST(a AS DOUBLE) AS x, CAST(b AS DOUBLE) AS y FROM (VALUES (0, 0), (-0.0, 0), (1, 0), (-1, 0), (2, 1), (3, 1), (4, 1), (5, 1), ('NaN', 1), ('-NaN', 1), ('inf', 0), (6, 1), (7, 1)) AS v(a, b)) AS t GROUP BY 1 ORDER BY 1 DESC";
        let collected = engine.query_limited(sql, 2, 1 << 20).await.unwrap_or_else(|error| panic!("{sql}: {error}"));
        assert!(collected.truncated);
    }

    /// Found by the SQL fuzz target: DataFusion's `lpad`/`rpad` over a column of lengths panicked
    /// (`capacity overflow`) on a negative one; for a literal it gives `''`, as PostgreSQL does.
    #[tokio::test]
    async fn padding_to_a_negative_length_gives_an_empty_text() {
        let engine = engine_over(vec![]);
        for pad in ["lpad('a', n)", "rpad('a', n, 'xy')", "rpad('a', n, 'xy' || CAST(-n AS VARCHAR))"] {
            let sql = format!("SELECT coalesce(CAST(length({pad}) AS VARCHAR), 'null') AS len FROM (VALUES (-5), (2), (NULL)) AS t(n) ORDER BY n NULLS LAST");
            let batches = engine.query(&sql).await.unwrap_or_else(|error| panic!("{sql}: {error}"));
            assert_eq!(cells(&batches), [["0"], ["2"], ["null"]], "{sql}: negative is '', NULL stays NULL");
        }
        // A negative literal length with a column of fills.
        let sql = "SELECT CAST(sum(length(rpad('a', -9223372036854775808, f))) AS VARCHAR) AS n FROM (VALUES ('x'), ('y')) AS t(f)";
        let batches = engine.query(sql).await.unwrap_or_else(|error| panic!("{sql}: {error}"));
        assert_eq!(cells(&batches), [["0"]]);
    }

    /// Found by the SQL fuzz target: over an empty table DataFusion calls a function on an empty
    /// batch, and its `to_char` then read the first format of the empty column (a panic).
    #[tokio::test]
    async fn a_function_called_on_no_rows_makes_no_rows() {
        use convoflow_operators::{RejectedRow, TableSet};
        let engine = |reasons: &[&str]| {
            let rows: Vec<RejectedRow> = reasons
                .iter()
                .map(|reason| RejectedRow::new(Some("t"), 0, (*reason).to_owned(), b"", String::new()))
                .collect();
            let tables = convoflow_schema::table_batches(&TableSet::default(), &rows, convoflow_schema::Rows::Contents)
                .expect("batches");
            let tables = tables.into_iter().map(|table| (table.table, table.batches)).collect();
            engine_over(tables)
        };
        let sql = "SELECT CASE WHEN reason = '%Y' THEN to_char(TIMESTAMP '2026-02-02 09:00:00', reason) ELSE 'b' END AS c FROM rejected";
        let empty = engine(&[]).query(sql).await.unwrap_or_else(|error| panic!("{sql}: {error}"));
        assert_eq!(empty.iter().map(RecordBatch::num_rows).sum::<usize>(), 0);
        let two = cells(&engine(&["a", "%Y"]).query(sql).await.expect("query")).concat();
        assert!(
            two.iter().any(|c| c.starts_with("2026")) && two.contains(&"b".to_owned()),
            "over rows it still runs: {two:?}"
        );
    }

    #[test]
    fn only_queries_pass_the_read_only_check() {
        assert!(check_read_only("SELECT 1").is_ok());
        assert!(check_read_only("WITH x AS (SELECT 1) SELECT * FROM x").is_ok());
        assert!(check_read_only("EXPLAIN SELECT 1").is_ok());
        assert!(check_read_only("DESCRIBE events").is_ok());
        for refused in [
            "DROP TABLE events",
            "INSERT INTO events VALUES (1)",
            "CREATE TABLE x AS SELECT 1",
            "COPY events TO '/tmp/x.csv'",
            "SET datafusion.execution.batch_size = 1",
            "DELETE FROM events",
        ] {
            let error = check_read_only(refused).unwrap_err();
            assert!(matches!(error, QueryError::ReadOnly(_)), "{refused}: {error}");
        }
        assert!(matches!(check_read_only("SELECT 1; DROP TABLE events"), Err(QueryError::MultipleStatements(2))));
    }
}
