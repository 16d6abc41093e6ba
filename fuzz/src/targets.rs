//! The four targets and the properties each checks (see the crate doc).

use crate::mutate;
use crate::Target;
use convoflow_api::{ApiError, SqlRuntime};
use convoflow_events::{normalize_webhook, parse_event, Event, Tenants};
use convoflow_fixtures::{generate, GeneratorConfig, Rng};
use convoflow_operators::Driver;
use convoflow_queries::{
    query_runtime, report_sql, scope_to_tenant, Dialect, Report, ReportParams, ScopeError, SqlEngine,
};
use convoflow_schema::{schema, table_batches, Rows, TABLES};
use datafusion::sql::sqlparser::ast::{Query, Select, SelectItem, SetExpr, TableFactor, Visit, Visitor};
use datafusion::sql::sqlparser::dialect::ClickHouseDialect;
use datafusion::sql::sqlparser::parser::Parser;
use serde_json::Value;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

/// Lines of generated traffic (valid events, duplicates and the generator's invalid lines).
fn traffic(lines: u64) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let config = GeneratorConfig { events: lines, seed: 11, tenants: 3 };
    // Writing to a Vec cannot fail.
    let _ = generate(&config, &mut out);
    out.split(|b| *b == b'\n').filter(|line| !line.is_empty()).map(<[u8]>::to_vec).collect()
}

/// JSON inputs and their parsed values (donors of subtrees for the mutations).
struct JsonCorpus {
    inputs: Vec<Vec<u8>>,
    values: Vec<Value>,
}

impl JsonCorpus {
    fn new(inputs: Vec<Vec<u8>>) -> Self {
        let values = inputs.iter().filter_map(|input| serde_json::from_slice(input).ok()).collect();
        JsonCorpus { inputs, values }
    }

    /// An entry mutated: as JSON most of the time, then sometimes as bytes.
    fn mutated(&self, rng: &mut Rng) -> Vec<u8> {
        let entry = rng.pick(&self.inputs);
        let mut input = match serde_json::from_slice::<Value>(entry) {
            Ok(mut value) if rng.chance(0.8) => {
                for _ in 0..=rng.below(3) {
                    mutate::json(rng, &mut value, &self.values);
                }
                mutate::json_text(rng, &value)
            }
            _ => entry.clone(),
        };
        if rng.chance(0.3) {
            mutate::bytes(rng, &mut input, &self.inputs);
        }
        input
    }
}

/// An accepted event must survive being written back and read again.
fn round_trip(event: &Event) -> Result<(), String> {
    let text = event.to_json();
    match parse_event(text.as_bytes()) {
        Ok(again) if again == *event => Ok(()),
        Ok(again) => Err(format!("written back as {text}, it reads as another event: {again:?}")),
        Err(error) => Err(format!("written back as {text}, it is refused: {error}")),
    }
}

/// The canonical parser (SPEC §2).
pub struct Canonical(JsonCorpus);

impl Default for Canonical {
    fn default() -> Self {
        Canonical(JsonCorpus::new(traffic(3_000)))
    }
}

impl Target for Canonical {
    fn name(&self) -> &'static str {
        "canonical"
    }

    fn input(&mut self, rng: &mut Rng) -> Vec<u8> {
        self.0.mutated(rng)
    }

    fn check(&mut self, input: &[u8]) -> Result<String, String> {
        match parse_event(input) {
            Ok(event) => round_trip(&event).map(|()| "accepted".to_owned()),
            Err(error) if error.field.is_empty() || error.problem.is_empty() => {
                Err(format!("a rejection that names no field or problem: {error:?}"))
            }
            Err(error) => Ok(format!("rejected {}", error.field)),
        }
    }
}

/// The webhook bodies of `fixtures/webhooks`, Meta's shapes.
const WEBHOOKS: &[&str] = &[
    include_str!("../../fixtures/webhooks/batch.json"),
    include_str!("../../fixtures/webhooks/bsuid_only.json"),
    include_str!("../../fixtures/webhooks/failed_status.json"),
    include_str!("../../fixtures/webhooks/group.json"),
    include_str!("../../fixtures/webhooks/inbound_text.json"),
    include_str!("../../fixtures/webhooks/inbound_text_redelivered.json"),
    include_str!("../../fixtures/webhooks/interactive.json"),
    include_str!("../../fixtures/webhooks/malformed.json"),
    include_str!("../../fixtures/webhooks/reaction_and_removal.json"),
    include_str!("../../fixtures/webhooks/referral.json"),
    include_str!("../../fixtures/webhooks/status_lifecycle.json"),
    include_str!("../../fixtures/webhooks/value_error.json"),
];

/// The WhatsApp webhook normalizer (SPEC §3).
pub struct WhatsApp(JsonCorpus);

impl Default for WhatsApp {
    fn default() -> Self {
        WhatsApp(JsonCorpus::new(WEBHOOKS.iter().map(|body| body.as_bytes().to_vec()).collect()))
    }
}

/// The tenant owning a business number: `acme` owns every number not ending in 9.
fn owner(number: &str) -> Option<String> {
    (!number.ends_with('9')).then(|| "acme".to_owned())
}

impl Target for WhatsApp {
    fn name(&self) -> &'static str {
        "whatsapp"
    }

    fn input(&mut self, rng: &mut Rng) -> Vec<u8> {
        self.0.mutated(rng)
    }

    fn check(&mut self, input: &[u8]) -> Result<String, String> {
        let batch = match normalize_webhook(input, &owner) {
            Ok(batch) => batch,
            Err(error) => {
                let message = error.to_string();
                return if message.is_empty() {
                    Err(format!("an error with no message: {error:?}"))
                } else {
                    Ok(format!("refused {}", message.split(':').next().unwrap_or_default()))
                };
            }
        };
        let mut events = 0;
        for item in &batch.items {
            match item {
                Ok(event) if event.tenant_id != "acme" => {
                    return Err(format!("an event for tenant `{}`, who owns no number", event.tenant_id))
                }
                Ok(event) => {
                    round_trip(event)?;
                    events += 1;
                }
                Err(rejected) if rejected.reason.is_empty() => {
                    return Err("an item rejected without a reason".to_owned())
                }
                Err(_) => {}
            }
        }
        Ok(if events > 0 {
            "events".to_owned()
        } else if batch.items.is_empty() {
            "nothing".to_owned()
        } else {
            "rejected items".to_owned()
        })
    }
}

/// Queries users send (every report in both dialects) and attacks tried on the scoper and the
/// SQL endpoint.
fn sql_corpus(dialect: Dialect) -> Vec<Vec<u8>> {
    let params = ReportParams::new("acme");
    let mut corpus: Vec<String> = Report::ALL.iter().map(|report| report_sql(*report, &params, dialect)).collect();
    corpus.extend(
        [
            "SELECT count(*) FROM events",
            "SELECT * FROM responses r JOIN contacts c ON r.contact_id = c.contact_id WHERE r.tenant_id = 'beta'",
            "SELECT tenant_id, count(*) FROM events GROUP BY tenant_id ORDER BY 2 DESC LIMIT 5",
            "SELECT event_id FROM events WHERE contact_id IN (SELECT contact_id FROM contacts)",
            "SELECT * FROM (SELECT * FROM events) AS e UNION ALL SELECT * FROM events",
            "SELECT a.event_id, b.event_id FROM events a CROSS JOIN events b",
            "SELECT repeat('x', 100000000) FROM range(50)",
            "SELECT * FROM system.tables",
            "SELECT * FROM events, system.one",
            "SELECT * FROM \"events\" WHERE 1 = 1 -- AND tenant_id = 'acme'",
            "SELECT 'a\\' FROM system.one --' FROM events",
            "SELECT * FROM events WHERE tenant_id IN ('acme', 'beta')",
            "SELECT string_agg(event_id, ',') FROM events",
            "SELECT lpad('x', 2000000000)",
            "SELECT 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1",
        ]
        .map(str::to_owned),
    );
    corpus.into_iter().map(String::into_bytes).collect()
}

/// The ClickHouse tenant scoper.
pub struct Scoper {
    corpus: Vec<Vec<u8>>,
}

impl Default for Scoper {
    fn default() -> Self {
        Scoper { corpus: sql_corpus(Dialect::ClickHouse { datetime64: true }) }
    }
}

const DATABASE: &str = "cf";

/// Finds reads that are not the tenant's guard: `(SELECT * FROM cf.<table> WHERE tenant_id =
/// 'acme')`, with nothing else in that `SELECT`.
struct Guarded {
    problem: Option<String>,
}

impl Guarded {
    fn is_guard(select: &Select) -> bool {
        let [only] = select.from.as_slice() else { return false };
        let TableFactor::Table { name, args: None, .. } = &only.relation else { return false };
        let named = TABLES.iter().any(|table| name.to_string() == format!("{DATABASE}.{table}"));
        named
            && only.joins.is_empty()
            && matches!(select.projection.as_slice(), [SelectItem::Wildcard(_)])
            && select.selection.as_ref().is_some_and(|filter| filter.to_string() == "tenant_id = 'acme'")
            && select.prewhere.is_none()
            && select.having.is_none()
    }

    fn check_set(&mut self, body: &SetExpr) {
        match body {
            SetExpr::Select(select) => self.check_select(select),
            SetExpr::SetOperation { left, right, .. } => {
                self.check_set(left);
                self.check_set(right);
            }
            // Visited as queries of their own.
            SetExpr::Query(_) | SetExpr::Values(_) => {}
            other => self.problem = Some(format!("reads through `{other}`")),
        }
    }

    fn check_select(&mut self, select: &Select) {
        let guard = Self::is_guard(select);
        for from in &select.from {
            self.check_factor(&from.relation, guard);
            for join in &from.joins {
                self.check_factor(&join.relation, false);
            }
        }
    }

    fn check_factor(&mut self, factor: &TableFactor, guard: bool) {
        match factor {
            TableFactor::Table { .. } if guard => {}
            TableFactor::Derived { .. } => {}
            TableFactor::NestedJoin { table_with_joins, .. } => {
                self.check_factor(&table_with_joins.relation, false);
                for join in &table_with_joins.joins {
                    self.check_factor(&join.relation, false);
                }
            }
            other => self.problem = Some(format!("reads `{other}` outside the tenant's guard")),
        }
    }
}

impl Visitor for Guarded {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if query.with.is_some() {
            self.problem = Some("a WITH clause".to_owned());
        }
        self.check_set(&query.body);
        if self.problem.is_some() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

impl Target for Scoper {
    fn name(&self) -> &'static str {
        "scoper"
    }

    fn input(&mut self, rng: &mut Rng) -> Vec<u8> {
        let mut text = rng.pick(&self.corpus).clone();
        mutate::sql(rng, &mut text, &self.corpus);
        text
    }

    fn check(&mut self, input: &[u8]) -> Result<String, String> {
        let sql = String::from_utf8_lossy(input);
        let scoped = match scope_to_tenant(&sql, "acme", DATABASE, TABLES) {
            Ok(scoped) => scoped,
            Err(ScopeError::Parse(_)) => return Ok("unreadable".to_owned()),
            Err(ScopeError::Refused(why)) => {
                return Ok(format!("refused {}", why.split('`').next().unwrap_or_default()))
            }
            Err(other) => return Ok(format!("refused {other}")),
        };
        let statements = Parser::parse_sql(&ClickHouseDialect {}, &scoped)
            .map_err(|error| format!("the scoped query does not parse ({error}): {scoped}"))?;
        let mut guarded = Guarded { problem: None };
        let _ = statements.visit(&mut guarded);
        match guarded.problem {
            Some(problem) => Err(format!("{problem}: {scoped}")),
            None => Ok("scoped".to_owned()),
        }
    }
}

/// The SQL endpoint on the embedded store: the guarded engine over tables derived from
/// generated traffic, run by the same query runtime as `/v1/sql`.
pub struct Sql {
    corpus: Vec<Vec<u8>>,
    engine: Arc<SqlEngine>,
    queries: SqlRuntime,
    driver: tokio::runtime::Runtime,
}

/// The server's defaults (`Limits`): rows, result bytes and the query pool.
const MAX_ROWS: usize = 10_000;
const MAX_RESULT_BYTES: usize = 64 << 20;
const MEMORY_BYTES: usize = 256 << 20;

impl Sql {
    pub fn new() -> anyhow::Result<Self> {
        let events: Vec<_> = traffic(600)
            .iter()
            .filter_map(|line| parse_event(line).ok())
            .enumerate()
            .map(|(i, event)| (i as u64, Box::new(event)))
            .collect();
        let mut driver = Driver::start(1, Arc::new(Tenants::default()))?;
        driver.submit(events, 0)?;
        let output = driver.next_output()?;
        driver.shutdown()?;
        let tables = table_batches(&output.tables, &output.rejected, Rows::Contents)?
            .into_iter()
            .map(|table| (table.table, table.batches))
            .collect();
        let engine = Arc::new(SqlEngine::over_batches(tables, query_runtime(MEMORY_BYTES)?)?);
        let driver = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(Sql { corpus: sql_corpus(Dialect::DataFusion), engine, queries: SqlRuntime::new(1, 1, 1)?, driver })
    }
}

/// The types the query generator builds expressions of.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ty {
    Int,
    Float,
    Text,
    Bool,
    Time,
    List,
}

const ALL_TYPES: [Ty; 6] = [Ty::Int, Ty::Float, Ty::Text, Ty::Bool, Ty::Time, Ty::List];

fn ty_of(data_type: &datafusion::arrow::datatypes::DataType) -> Option<Ty> {
    use datafusion::arrow::datatypes::DataType as D;
    Some(match data_type {
        D::Int8 | D::Int16 | D::Int32 | D::Int64 | D::UInt8 | D::UInt16 | D::UInt32 | D::UInt64 | D::Date32 => Ty::Int,
        D::Float32 | D::Float64 => Ty::Float,
        D::Utf8 | D::LargeUtf8 | D::Utf8View => Ty::Text,
        D::Boolean => Ty::Bool,
        D::Timestamp(..) => Ty::Time,
        D::List(_) | D::LargeList(_) => Ty::List,
        _ => return None,
    })
}

/// Functions by result type: name and argument types. The ones the guards bound are here, with
/// the everyday ones around them.
const FUNCTIONS: &[(Ty, &str, &[Ty])] = {
    use Ty::*;
    &[
        (Text, "upper", &[Text]),
        (Text, "repeat", &[Text, Int]),
        (Text, "lpad", &[Text, Int]),
        (Text, "rpad", &[Text, Int, Text]),
        (Text, "replace", &[Text, Text, Text]),
        (Text, "regexp_replace", &[Text, Text, Text]),
        (Text, "concat", &[Text, Text]),
        (Text, "concat_ws", &[Text, Text, Text]),
        (Text, "substr", &[Text, Int, Int]),
        (Text, "trim", &[Text]),
        (Text, "split_part", &[Text, Text, Int]),
        (Text, "left", &[Text, Int]),
        (Text, "reverse", &[Text]),
        (Text, "to_hex", &[Int]),
        (Text, "initcap", &[Text]),
        (Text, "chr", &[Int]),
        (Text, "translate", &[Text, Text, Text]),
        (Text, "array_to_string", &[List, Text]),
        (Text, "to_char", &[Time, Text]),
        (Text, "encode", &[Text, Text]),
        (Text, "overlay", &[Text, Text]),
        (Int, "length", &[Text]),
        (Int, "strpos", &[Text, Text]),
        (Int, "abs", &[Int]),
        (Int, "levenshtein", &[Text, Text]),
        (Int, "array_length", &[List]),
        (Int, "cardinality", &[List]),
        (Int, "find_in_set", &[Text, Text]),
        (Int, "gcd", &[Int, Int]),
        (Int, "factorial", &[Int]),
        (Float, "power", &[Float, Float]),
        (Float, "ln", &[Float]),
        (Float, "exp", &[Float]),
        (Float, "round", &[Float, Int]),
        (Float, "sqrt", &[Float]),
        (Float, "date_part", &[Text, Time]),
        (Float, "random", &[]),
        (Bool, "starts_with", &[Text, Text]),
        (Bool, "regexp_like", &[Text, Text]),
        (Time, "date_trunc", &[Text, Time]),
        (Time, "to_timestamp", &[Int]),
        (Time, "to_timestamp", &[Text]),
        (Time, "from_unixtime", &[Int]),
        (Time, "now", &[]),
        (List, "make_array", &[Int, Int]),
        (List, "array_repeat", &[Int, Int]),
        (List, "range", &[Int]),
        (List, "range", &[Int, Int, Int]),
        (List, "generate_series", &[Int, Int]),
        (List, "array_append", &[List, Int]),
        (List, "array_concat", &[List, List]),
        (List, "array_resize", &[List, Int, Int]),
        (List, "array_slice", &[List, Int, Int]),
        (List, "array_remove", &[List, Int]),
        (List, "array_distinct", &[List]),
        (List, "array_sort", &[List]),
    ]
};

const SQL_TYPES: &[(Ty, &str)] = &[
    (Ty::Int, "BIGINT"),
    (Ty::Int, "TINYINT"),
    (Ty::Float, "DOUBLE"),
    (Ty::Text, "VARCHAR"),
    (Ty::Bool, "BOOLEAN"),
    (Ty::Time, "TIMESTAMP"),
    (Ty::Float, "DECIMAL(38, 10)"),
];

fn literal(rng: &mut Rng, ty: Ty) -> String {
    let pick = |rng: &mut Rng, options: &[&str]| (*rng.pick(options)).to_owned();
    match ty {
        Ty::Int => match rng.below(6) {
            0 => pick(rng, &["9223372036854775807", "-9223372036854775808", "0", "NULL", "2147483648"]),
            1 => rng.between(0, 3_000_000_000).to_string(),
            _ => rng.between(-5, 100).to_string(),
        },
        Ty::Float => pick(rng, &["0.5", "1e308", "-1e308", "0.0", "'NaN'::DOUBLE", "'inf'::DOUBLE", "NULL", "3.25"]),
        Ty::Text => match rng.below(5) {
            0 => format!("'{}'", "x".repeat(rng.below(5_000) as usize)),
            _ => pick(
                rng,
                &[
                    "''",
                    "'%'",
                    "'(a|b)*c'",
                    "'é👍'",
                    "'day'",
                    "'hour'",
                    "',' ",
                    "'base64'",
                    "'2026-02-02T09:00:00Z'",
                    "'g'",
                    "NULL",
                ],
            ),
        },
        Ty::Bool => pick(rng, &["true", "false", "NULL"]),
        Ty::Time => pick(rng, &["TIMESTAMP '2026-02-02 09:00:00'", "now()", "to_timestamp(0)", "NULL"]),
        Ty::List => pick(rng, &["[1, 2, 3]", "[]", "make_array(NULL)", "NULL"]),
    }
}

fn expression(rng: &mut Rng, columns: &[(String, Ty)], ty: Ty, depth: u32) -> String {
    if depth == 0 || rng.chance(0.25) {
        let matching: Vec<&String> = columns.iter().filter(|(_, t)| *t == ty).map(|(name, _)| name).collect();
        return if !matching.is_empty() && rng.chance(0.6) { (*rng.pick(&matching)).clone() } else { literal(rng, ty) };
    }
    let sub = |rng: &mut Rng, ty: Ty| expression(rng, columns, ty, depth - 1);
    match rng.below(8) {
        0..=3 => {
            let candidates: Vec<&(Ty, &str, &[Ty])> = FUNCTIONS.iter().filter(|(result, _, _)| *result == ty).collect();
            if candidates.is_empty() {
                return literal(rng, ty);
            }
            let (_, name, args) = **rng.pick(&candidates);
            let args: Vec<String> = args.iter().map(|arg| sub(rng, *arg)).collect();
            format!("{name}({})", args.join(", "))
        }
        4 => {
            let (from, cast) = *rng.pick(SQL_TYPES);
            let inner_ty = if rng.chance(0.7) { from } else { *rng.pick(&ALL_TYPES) };
            let inner = sub(rng, inner_ty);
            format!("CAST({inner} AS {cast})")
        }
        5 => {
            let (when, then, other) = (sub(rng, Ty::Bool), sub(rng, ty), sub(rng, ty));
            format!("CASE WHEN {when} THEN {then} ELSE {other} END")
        }
        6 => {
            let (a, b) = (sub(rng, ty), sub(rng, ty));
            format!("{}({a}, {b})", rng.pick(&["coalesce", "nullif", "greatest"]))
        }
        _ => match ty {
            Ty::Int | Ty::Float => {
                let (a, b) = (sub(rng, ty), sub(rng, ty));
                format!("({a} {} {b})", rng.pick(&["+", "-", "*", "/", "%"]))
            }
            Ty::Text => {
                let (a, b) = (sub(rng, ty), sub(rng, ty));
                format!("({a} || {b})")
            }
            Ty::Bool => {
                let operand = *rng.pick(&[Ty::Int, Ty::Text, Ty::Time, Ty::Float]);
                let (a, b) = (sub(rng, operand), sub(rng, operand));
                let op = if operand == Ty::Text && rng.chance(0.3) {
                    "LIKE"
                } else {
                    *rng.pick(&["=", "<>", "<", ">=", "IS DISTINCT FROM"])
                };
                format!("({a} {op} {b})")
            }
            Ty::Time => format!("({} + INTERVAL '1 day')", sub(rng, ty)),
            Ty::List => format!("array_concat({}, {})", sub(rng, ty), sub(rng, ty)),
        },
    }
}

const AGGREGATES: &[(&str, Ty)] = &[
    ("count", Ty::Text),
    ("sum", Ty::Int),
    ("avg", Ty::Float),
    ("min", Ty::Text),
    ("max", Ty::Time),
    ("array_agg", Ty::Int),
    ("median", Ty::Float),
    ("approx_distinct", Ty::Text),
    ("stddev", Ty::Float),
];

/// A random query over one table, sometimes joined with another.
fn query(rng: &mut Rng) -> String {
    let table = *rng.pick(TABLES);
    let columns: Vec<(String, Ty)> = schema(table)
        .map(|schema| {
            schema
                .fields()
                .iter()
                .filter_map(|field| ty_of(field.data_type()).map(|ty| (format!("t.{}", field.name()), ty)))
                .collect()
        })
        .unwrap_or_default();
    let aggregate = rng.chance(0.3);
    let mut items = Vec::new();
    let mut groups = Vec::new();
    for i in 0..=rng.below(3) {
        if aggregate && i > 0 {
            if rng.chance(0.2) {
                items.push(format!("string_agg({}, ',') AS c{i}", expression(rng, &columns, Ty::Text, 2)));
            } else {
                let (name, ty) = *rng.pick(AGGREGATES);
                items.push(format!("{name}({}) AS c{i}", expression(rng, &columns, ty, 2)));
            }
        } else {
            let ty = *rng.pick(&ALL_TYPES);
            items.push(format!("{} AS c{i}", expression(rng, &columns, ty, 4)));
            groups.push((i + 1).to_string());
        }
    }
    let mut sql = format!("SELECT {} FROM {table} AS t", items.join(", "));
    if rng.chance(0.15) {
        sql.push_str(&format!(" JOIN {} AS o ON t.tenant_id = o.tenant_id", rng.pick(TABLES)));
    }
    if rng.chance(0.4) {
        sql.push_str(&format!(" WHERE {}", expression(rng, &columns, Ty::Bool, 3)));
    }
    if aggregate && !groups.is_empty() {
        sql.push_str(&format!(" GROUP BY {}", groups.join(", ")));
    }
    if rng.chance(0.3) {
        sql.push_str(" ORDER BY 1 DESC");
    }
    if rng.chance(0.3) {
        sql.push_str(&format!(" LIMIT {}", rng.below(5_000)));
    }
    sql
}

impl Target for Sql {
    fn name(&self) -> &'static str {
        "sql"
    }

    fn input(&mut self, rng: &mut Rng) -> Vec<u8> {
        if rng.chance(0.7) {
            return query(rng).into_bytes();
        }
        let mut text = rng.pick(&self.corpus).clone();
        mutate::sql(rng, &mut text, &self.corpus);
        text
    }

    fn check(&mut self, input: &[u8]) -> Result<String, String> {
        let sql = String::from_utf8_lossy(input).into_owned();
        let engine = self.engine.clone();
        let query = async move {
            engine
                .query_limited(&sql, MAX_ROWS, MAX_RESULT_BYTES)
                .await
                .map_err(|error| ApiError::bad_request("bad_query", error.to_string()))
        };
        match self.driver.block_on(self.queries.run("fuzz", Duration::from_secs(3), query)) {
            Ok(collected) => Ok(if collected.truncated { "rows, truncated" } else { "rows" }.to_owned()),
            Err(error) if error.status.is_server_error() => {
                Err(format!("{} {}: {}", error.status, error.code, error.message))
            }
            Err(error) => Ok(format!("{} {}", error.code, error.message.split([':', '(']).next().unwrap_or_default())),
        }
    }
}
