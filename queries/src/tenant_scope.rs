//! Tenant isolation for SQL that runs on ClickHouse, which (18.16) has no row policies.
//!
//! The query is parsed, and every table it reads — in `FROM` or `JOIN`, in subqueries anywhere,
//! in `IN (SELECT …)` — must be one of the SPEC §5 tables; each is replaced by a subquery that
//! holds only the tenant's rows (keeping the name or alias, so column references still resolve).
//! Whatever else a query could read through is refused: other tables (the `_log` tables behind
//! the views, `system.*`), table functions, functions that read tables or dictionaries by name,
//! `WITH` clauses, and `SETTINGS`/`FORMAT` clauses (they would lift the server-side limits). A
//! query the parser cannot read is refused too: safe rather than clever. This is the approach of
//! PostHog's HogQL, which adds its `team_id` guard to every table it resolves.
//!
//! The query's text is kept as written and only the table names are replaced, at the places the
//! parser found them: printing the parsed query back would change it (the parser upper-cases type
//! names, which ClickHouse reads case-sensitively, and loses how literals were escaped).

use datafusion::sql::sqlparser::ast::{
    Expr, ObjectName, Query, SetExpr, Spanned, Statement, TableFactor, Visit, Visitor,
};
use datafusion::sql::sqlparser::dialect::ClickHouseDialect;
use datafusion::sql::sqlparser::parser::{Parser, ParserOptions};
use datafusion::sql::sqlparser::tokenizer::{Location, Span, Token, Tokenizer, Whitespace};
use std::ops::ControlFlow;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScopeError {
    #[error("cannot read the query: {0}")]
    Parse(String),
    #[error("send one SELECT query")]
    NotOneQuery,
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Limit(#[from] crate::guards::LimitError),
}

/// Whether a function (name lower-cased) can read a table or dictionary by name: `dictGet*`,
/// `joinGet`, `hasColumnInTable`, and the functional forms of `IN` (`in`, `notIn`, `globalIn`,
/// `nullIn`, …), whose right side may name a table.
fn reads_tables(function: &str) -> bool {
    let rest = function.strip_prefix("global").unwrap_or(function);
    let rest = rest.strip_prefix("not").unwrap_or(rest);
    let rest = rest.strip_prefix("null").unwrap_or(rest);
    function.starts_with("dict")
        || function.starts_with("joinget")
        || function == "hascolumnintable"
        || rest == "in"
        || rest == "inignoreset"
}

/// The query's text is kept, so the parser must read it exactly as ClickHouse will. Only tokens
/// both read alike pass: words (a quoted one without backslashes, which ClickHouse would read as
/// escapes), numbers, single-quoted strings, operators and plain whitespace. Comments are refused
/// (ClickHouse also ends a line at `//` and does not nest `/* */`), as are other string forms.
fn check_tokens(sql: &str) -> Result<(), ScopeError> {
    let dialect = ClickHouseDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .with_unescape(false)
        .tokenize()
        .map_err(|error| ScopeError::Parse(error.to_string()))?;
    let refuse = |what: &str| Err(ScopeError::Refused(format!("{what} are not allowed in a tenant's query")));
    for (index, token) in tokens.iter().enumerate() {
        match token {
            Token::Whitespace(Whitespace::Space | Whitespace::Newline | Whitespace::Tab) => {}
            Token::Whitespace(_) => return refuse("comments"),
            Token::Word(word) if word.quote_style.is_none() => {}
            Token::Word(word) if matches!(word.quote_style, Some('"' | '`')) && !word.value.contains('\\') => {}
            Token::Word(_) => return refuse("quoted names with backslashes"),
            Token::Div if matches!(tokens.get(index + 1), Some(Token::Div)) => return refuse("`//` comments"),
            Token::Number(..)
            | Token::SingleQuotedString(_)
            | Token::Comma
            | Token::SemiColon
            | Token::Period
            | Token::LParen
            | Token::RParen
            | Token::LBracket
            | Token::RBracket
            | Token::Eq
            | Token::DoubleEq
            | Token::Neq
            | Token::Lt
            | Token::Gt
            | Token::LtEq
            | Token::GtEq
            | Token::Plus
            | Token::Minus
            | Token::Mul
            | Token::Div
            | Token::Mod
            | Token::StringConcat
            | Token::Arrow
            | Token::Colon
            | Token::DoubleColon
            | Token::Question
            | Token::EOF => {}
            other => return Err(ScopeError::Refused(format!("`{other}` is not allowed in a tenant's query"))),
        }
    }
    Ok(())
}

/// `sql` reading only `tenant`'s rows of `tables` in `database`.
pub fn scope_to_tenant(sql: &str, tenant: &str, database: &str, tables: &[&str]) -> Result<String, ScopeError> {
    crate::guards::check_text(sql, &ClickHouseDialect {})?;
    check_tokens(sql)?;
    let query = parse_query(sql)?;
    crate::guards::check_nesting(&query)?;
    let mut scoper = Scoper { database, tables, reads: Vec::new(), refusal: None };
    if let ControlFlow::Break(()) = query.visit(&mut scoper) {
        return Err(ScopeError::Refused(scoper.refusal.unwrap_or_default()));
    }
    let offsets = char_offsets(sql);
    let mut reads = Vec::with_capacity(scoper.reads.len());
    for read in scoper.reads {
        let start = offsets.byte(read.span.start);
        let end = offsets.byte(read.span.end);
        match (start, end) {
            (Some(start), Some(end)) if start < end => reads.push((start, end, read)),
            _ => return Err(ScopeError::Refused(format!("cannot place table `{}` in the query", read.table))),
        }
    }
    // From the back, so earlier offsets stay valid.
    reads.sort_by_key(|(start, _, _)| std::cmp::Reverse(*start));
    let mut out = sql.to_owned();
    for (start, end, read) in reads {
        let rows =
            format!("(SELECT * FROM {database}.{} WHERE tenant_id = {})", read.table, crate::clickhouse_string(tenant));
        let mut replacement = if read.aliased { rows } else { format!("{rows} AS {}", read.table) };
        // `FROM "events"WHERE` must not become `… AS eventsWHERE`.
        let joins_word = |c: char| c.is_alphanumeric() || matches!(c, '_' | '"' | '`');
        if sql[end..].starts_with(joins_word) {
            replacement.push(' ');
        }
        if sql[..start].ends_with(joins_word) {
            replacement.insert(0, ' ');
        }
        out.replace_range(start..end, &replacement);
    }
    Ok(out)
}

fn parse_query(sql: &str) -> Result<Box<Query>, ScopeError> {
    let dialect = ClickHouseDialect {};
    let mut statements = Parser::new(&dialect)
        .with_options(ParserOptions::new().with_unescape(false))
        .try_with_sql(sql)
        .and_then(|mut parser| parser.parse_statements())
        .map_err(|error| ScopeError::Parse(error.to_string()))?;
    match (statements.pop(), statements.is_empty()) {
        (Some(Statement::Query(query)), true) => Ok(query),
        _ => Err(ScopeError::NotOneQuery),
    }
}

/// Byte offsets of the parser's (line, column) locations, counted the way its tokenizer counts.
struct CharOffsets(std::collections::HashMap<(u64, u64), usize>);

fn char_offsets(sql: &str) -> CharOffsets {
    let mut map = std::collections::HashMap::with_capacity(sql.len() + 1);
    let (mut line, mut column) = (1u64, 1u64);
    for (offset, c) in sql.char_indices() {
        map.insert((line, column), offset);
        if c == '\n' {
            (line, column) = (line + 1, 1);
        } else {
            column += 1;
        }
    }
    map.insert((line, column), sql.len());
    CharOffsets(map)
}

impl CharOffsets {
    fn byte(&self, location: Location) -> Option<usize> {
        self.0.get(&(location.line, location.column)).copied()
    }
}

/// A SPEC table read in FROM or JOIN.
struct Read {
    table: String,
    span: Span,
    aliased: bool,
}

struct Scoper<'a> {
    database: &'a str,
    tables: &'a [&'a str],
    reads: Vec<Read>,
    refusal: Option<String>,
}

impl Scoper<'_> {
    fn refuse(&mut self, why: String) -> ControlFlow<()> {
        self.refusal = Some(why);
        ControlFlow::Break(())
    }

    /// The SPEC table `name` stands for: `t` or `<database>.t`.
    fn table_of(&self, name: &ObjectName) -> Option<&str> {
        let parts: Vec<String> =
            name.0.iter().map(|part| part.as_ident().map_or_else(String::new, |ident| ident.value.clone())).collect();
        let table = match parts.as_slice() {
            [table] => table,
            [database, table] if database == self.database => table,
            _ => return None,
        };
        self.tables.iter().copied().find(|known| *known == table)
    }
}

impl Visitor for Scoper<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if query.with.is_some() {
            return self.refuse("WITH clauses are not supported for tenant keys; use a subquery".to_owned());
        }
        if query.settings.is_some() || query.format_clause.is_some() {
            return self
                .refuse("SETTINGS and FORMAT clauses are not allowed; choose the format with `format`".to_owned());
        }
        if !only_selects(&query.body) {
            return self.refuse("only SELECT queries are allowed".to_owned());
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        match factor {
            TableFactor::Table { args: Some(_), name, .. } => {
                self.refuse(format!("table function `{name}` is not allowed"))
            }
            TableFactor::Table { name, alias, .. } => {
                if let Some(table) = self.table_of(name) {
                    let read = Read { table: table.to_owned(), span: name.span(), aliased: alias.is_some() };
                    self.reads.push(read);
                }
                ControlFlow::Continue(())
            }
            TableFactor::Derived { .. } | TableFactor::NestedJoin { .. } => ControlFlow::Continue(()),
            other => self.refuse(format!("`{other}` is not allowed in FROM")),
        }
    }

    /// Every name read as a relation, wherever it occurs, must be a SPEC table read in FROM or
    /// JOIN (and so replaced).
    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
        if self.table_of(relation).is_none() {
            return self.refuse(format!("unknown table `{relation}` (readable: {})", self.tables.join(", ")));
        }
        let span = relation.span();
        if !self.reads.iter().any(|read| read.span == span) {
            return self.refuse(format!("table `{relation}` may only be read in FROM or JOIN"));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        match expr {
            Expr::Function(function) => {
                let name: Vec<String> = function
                    .name
                    .0
                    .iter()
                    .map(|part| part.as_ident().map_or_else(String::new, |ident| ident.value.to_ascii_lowercase()))
                    .collect();
                if reads_tables(&name.join(".")) {
                    return self.refuse(format!("function `{}` is not allowed", function.name));
                }
            }
            // ClickHouse reads `x IN (t)` and `x IN ((t))` as membership in table `t`.
            Expr::InList { list, .. }
                if list
                    .iter()
                    .any(|item| matches!(unnested(item), Expr::Identifier(_) | Expr::CompoundIdentifier(_))) =>
            {
                return self.refuse("`IN (name)` is not allowed; write `IN (SELECT column FROM table)`".to_owned());
            }
            Expr::Position { .. } => {
                return self.refuse("`POSITION(… IN …)` is not allowed; use position(haystack, needle)".to_owned())
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

/// The expression inside any number of parentheses.
fn unnested(mut expr: &Expr) -> &Expr {
    while let Expr::Nested(inner) = expr {
        expr = inner;
    }
    expr
}

/// SELECTs, parenthesized queries and set operations of them (`TABLE t` is refused anywhere).
fn only_selects(body: &SetExpr) -> bool {
    match body {
        SetExpr::Select(_) | SetExpr::Query(_) | SetExpr::Values(_) => true,
        SetExpr::SetOperation { left, right, .. } => only_selects(left) && only_selects(right),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLES: &[&str] = &["events", "responses", "contacts", "rejected"];

    fn scoped(sql: &str) -> Result<String, ScopeError> {
        scope_to_tenant(sql, "acme", "convoflow", TABLES)
    }

    #[test]
    fn nested_special_forms_are_refused_before_parsing() {
        let refused = scoped(&format!("SELECT {}1 FROM events", "position(".repeat(40)));
        assert!(matches!(refused, Err(ScopeError::Limit(_))), "{refused:?}");
    }

    #[test]
    fn every_table_read_becomes_the_tenants_rows() {
        let out = scoped("SELECT count() FROM responses r JOIN contacts USING (tenant_id, contact_id) WHERE r.agent_id IN (SELECT agent_id FROM convoflow.responses)").expect("scoped");
        let rows = |table: &str| format!("(SELECT * FROM convoflow.{table} WHERE tenant_id = 'acme')");
        assert_eq!(
            out,
            format!(
                "SELECT count() FROM {} r JOIN {} AS contacts USING (tenant_id, contact_id) WHERE r.agent_id IN (SELECT agent_id FROM {} AS responses)",
                rows("responses"),
                rows("contacts"),
                rows("responses")
            )
        );
    }

    #[test]
    fn the_rest_of_the_query_is_kept_as_written() {
        let sql = "SELECT CAST(x AS Nullable(Float64)), 'é\\'s', \"emoji\"\n  FROM \"events\" AS e\n  WHERE type = 'touch' AND contact_id <> 'ünïcode'\r\n";
        let out = scoped(sql).expect("scoped");
        assert_eq!(out, sql.replace("\"events\"", "(SELECT * FROM convoflow.events WHERE tenant_id = 'acme')"));
    }

    #[test]
    fn a_replaced_name_stays_apart_from_the_next_word() {
        let out = scoped("SELECT * FROM \"events\"WHERE 1").expect("scoped");
        assert_eq!(out, "SELECT * FROM (SELECT * FROM convoflow.events WHERE tenant_id = 'acme') AS events WHERE 1");
    }

    #[test]
    fn tenant_names_are_escaped() {
        let out = scope_to_tenant("SELECT * FROM events", r"o'brien\", "convoflow", TABLES).expect("scoped");
        assert!(out.contains(r"tenant_id = 'o\'brien\\'"), "{out}");
    }

    #[test]
    fn every_report_can_be_scoped() {
        let dialect = crate::Dialect::ClickHouse { datetime64: false };
        for report in crate::Report::ALL {
            let sql = crate::report_sql(report, &crate::ReportParams::new("acme"), dialect);
            let scoped = scope_to_tenant(&sql, "acme", "convoflow", convoflow_schema::TABLES);
            assert!(scoped.is_ok(), "{}: {scoped:?}\n{sql}", report.name());
        }
    }

    #[test]
    fn everything_else_is_refused() {
        for sql in [
            "SELECT * FROM responses_log",
            "SELECT * FROM system.tables",
            "SELECT * FROM other.responses",
            "SELECT * FROM url('http://x', CSV, 'a String')",
            "SELECT * FROM numbers(10)",
            "SELECT joinGet('j', 'v', 1)",
            "SELECT dictGetString('d', 'v', toUInt64(1))",
            "WITH x AS (SELECT * FROM events) SELECT * FROM x",
            "SELECT * FROM events SETTINGS max_execution_time = 1000",
            "SELECT * FROM events FORMAT TabSeparated",
            "SELECT 1; SELECT 2",
            // Where ClickHouse's lexer and the parser's would disagree: comments, backslashes in
            // quoted names, `IN` a table.
            "SELECT 1 //*\n, * FROM responses_log\n-- */ 2",
            "SELECT 1 AS \"\\\",'\", * FROM responses_log -- '",
            "SELECT 1 AS `\\`,'`, * FROM responses_log -- '",
            "SELECT 1 /* /* */, * FROM responses_log -- */",
            "SELECT 1 -- comment",
            "SELECT count() FROM events WHERE ('beta', 1) IN (retention)",
            "SELECT count() FROM events WHERE contact_id IN (convoflow.contacts)",
            "SELECT count() FROM events WHERE 0 IN ((system.one))",
            "SELECT count() FROM events WHERE 1 NOT IN (((contacts)))",
            "SELECT POSITION('a' IN contacts) FROM events",
            "SELECT notIn(contact_id, contacts) FROM events",
            "SELECT \"globalIn\"(contact_id, contacts) FROM events",
            "SELECT \"dictGet\"('d', 'v', toUInt64(1))",
            "SELECT 1 UNION ALL TABLE events",
            "SELECT $$x$$",
            "DROP TABLE events",
            "INSERT INTO rejected VALUES ('x')",
            "SELECT * FROM events WHERE",
        ] {
            assert!(scoped(sql).is_err(), "{sql} was let through: {:?}", scoped(sql));
        }
        assert!(scoped("SELECT 1 UNION ALL SELECT count() FROM events").expect("scoped").contains("'acme'"));
    }
}
