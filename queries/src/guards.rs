//! What keeps one SQL request from taking the server down (the hardening issue): every query is
//! checked before DataFusion plans it, and every function call is checked before it runs.
//!
//! - **Text**: at most `SQL_MAX_BYTES` of SQL, and special forms (`CAST(`, `FLOOR(`,
//!   `POSITION(`, …) nested at most `MAX_SPECIAL_FORM_NESTING` deep, checked on the tokens before
//!   anything parses it (`check_text`): the parser's work grows exponentially with them.
//! - **Nesting**: expressions at most `MAX_EXPRESSION_DEPTH` deep and at most
//!   `MAX_SET_OPERATIONS` `UNION`/`INTERSECT`/`EXCEPT` in one statement. A left-deep chain such as
//!   `1+1+…+1` parses in a loop but every later pass (planning, optimizing, dropping the tree)
//!   recurses through it; past these limits the query is refused with a message, and DataFusion's
//!   `recursive_protection` plus the query threads' large stacks cover what is inside them.
//! - **Function output**: a scalar function may make at most `FUNCTION_OUTPUT_BYTES` in one call
//!   (one batch). The bound is worked out from the arguments before the call: `repeat`, `lpad`,
//!   `rpad`, `replace`, `regexp_replace`, `array_repeat`, `array_resize`, `range` and
//!   `generate_series` by what they multiply, every other function by the size of its inputs.
//!   `a || b` on strings is planned as the same bounded `concat` (NULL if either side is NULL,
//!   as `||` is). So `repeat('x', 1000000000)` is an error, not a gigabyte. The wrapper also
//!   mends two DataFusion panics the fuzzer found (negative pad lengths, calls on empty batches).
//! - **Operators**: joins, sorts and groups take memory from one pool shared by every query
//!   (`query_runtime`), without spilling; a query that needs more fails with "Resources exhausted".
//! - **Results**: `collect_bounded` puts the row cap into the plan as a `LIMIT` and stops once the
//!   rows collected hold more than the byte cap, so nothing piles up before it is cut.

use datafusion::arrow::array::{make_array, new_empty_array, Array, ArrayRef, AsArray};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::compute::cast;
use datafusion::arrow::compute::kernels::length::length;
use datafusion::arrow::datatypes::{DataType, Int64Type, IntervalMonthDayNanoType, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DataFusionError, Result as DfResult, ScalarValue};
use datafusion::config::ConfigOptions;
use datafusion::dataframe::DataFrame;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::GreedyMemoryPool;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::ExprSchemable;
use datafusion::logical_expr::{
    BinaryExpr, ColumnarValue, Documentation, Expr, LogicalPlan, Operator, ReturnFieldArgs, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature,
};
use datafusion::optimizer::{Analyzer, AnalyzerRule};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, Query, SetExpr, Visit, Visitor};
use datafusion::sql::sqlparser::dialect::Dialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use futures::StreamExt;
use std::ops::ControlFlow;
use std::sync::Arc;

/// Longest SQL text taken.
pub const SQL_MAX_BYTES: usize = 64 * 1024;
/// Deepest nesting of expressions in one statement.
pub const MAX_EXPRESSION_DEPTH: usize = 256;
/// Most `UNION`/`INTERSECT`/`EXCEPT` in one statement.
pub const MAX_SET_OPERATIONS: usize = 256;
/// Most bytes one function call may produce.
pub const FUNCTION_OUTPUT_BYTES: u64 = 16 << 20;

/// Why a query was refused before or while it ran for being too costly.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("the SQL is {0} bytes; the limit is {SQL_MAX_BYTES}")]
    TooLong(usize),
    #[error(
        "the query nests expressions more than {MAX_EXPRESSION_DEPTH} deep; write long lists of alternatives as `x IN (…)` and long sums as fewer terms"
    )]
    TooDeep,
    #[error("the query has more than {MAX_SET_OPERATIONS} UNION, INTERSECT or EXCEPT operations")]
    TooManySetOperations,
    #[error(
        "special forms (CAST, FLOOR, CEIL, POSITION, SUBSTRING, TRIM, EXTRACT, ARRAY, …) nest more than {MAX_SPECIAL_FORM_NESTING} deep inside each other; compute inner parts in a subquery"
    )]
    TooManySpecialForms,
}

/// How deep special forms may nest in each other.
pub const MAX_SPECIAL_FORM_NESTING: usize = 10;

/// Words that open a special form when followed by `(` or `[`. When such a form does not parse,
/// sqlparser (0.62) tries the word again as a plain function call, so the work doubles or
/// triples with each level of them nested in a query that fails deep inside: 20 × `position(` ran
/// for hours. The list is the keywords of `Parser::parse_expr_prefix_by_reserved_word`.
const SPECIAL_FORMS: &[Keyword] = &[
    Keyword::ARRAY,
    Keyword::BOX,
    Keyword::CASE,
    Keyword::CAST,
    Keyword::CEIL,
    Keyword::CIRCLE,
    Keyword::CONVERT,
    Keyword::EXISTS,
    Keyword::EXTRACT,
    Keyword::FLOOR,
    Keyword::INTERVAL,
    Keyword::LAMBDA,
    Keyword::LINE,
    Keyword::LSEG,
    Keyword::MAP,
    Keyword::MATCH,
    Keyword::NOT,
    Keyword::OVERLAY,
    Keyword::PATH,
    Keyword::POINT,
    Keyword::POLYGON,
    Keyword::POSITION,
    Keyword::PRIOR,
    Keyword::SAFE_CAST,
    Keyword::STRUCT,
    Keyword::SUBSTR,
    Keyword::SUBSTRING,
    Keyword::TRIM,
    Keyword::TRY_CAST,
    Keyword::TRY_CONVERT,
    Keyword::CURRENT_DATE,
    Keyword::CURRENT_TIME,
    Keyword::CURRENT_TIMESTAMP,
    Keyword::LOCALTIME,
    Keyword::LOCALTIMESTAMP,
];

/// Checks SQL text before it is parsed (by us or by DataFusion): at most `SQL_MAX_BYTES`, and
/// special forms nested at most `MAX_SPECIAL_FORM_NESTING` deep (see [`SPECIAL_FORMS`]), counted
/// on `dialect`'s tokens, which take linear time.
pub fn check_text(sql: &str, dialect: &dyn Dialect) -> Result<(), LimitError> {
    if sql.len() > SQL_MAX_BYTES {
        return Err(LimitError::TooLong(sql.len()));
    }
    // Text that does not tokenize fails the parser at once too.
    let Ok(tokens) = Tokenizer::new(dialect, sql).tokenize() else { return Ok(()) };
    let mut open: Vec<bool> = Vec::new();
    let (mut special, mut previous): (usize, Option<&Token>) = (0, None);
    for token in &tokens {
        match token {
            Token::Whitespace(_) => continue,
            Token::LParen | Token::LBracket => {
                let form = matches!(previous, Some(Token::Word(word)) if SPECIAL_FORMS.contains(&word.keyword));
                special += usize::from(form);
                open.push(form);
                if special > MAX_SPECIAL_FORM_NESTING {
                    return Err(LimitError::TooManySpecialForms);
                }
            }
            Token::RParen | Token::RBracket => {
                special = special.saturating_sub(usize::from(open.pop().unwrap_or(false)))
            }
            _ => {}
        }
        previous = Some(token);
    }
    Ok(())
}

/// Checks the nesting of a statement (or query). Runs on a query thread: walking the tree recurses
/// too.
pub fn check_nesting(statement: &impl Visit) -> Result<(), LimitError> {
    struct Depth {
        depth: usize,
        set_operations: usize,
    }
    impl Visitor for Depth {
        type Break = LimitError;
        fn pre_visit_expr(&mut self, _expr: &SqlExpr) -> ControlFlow<LimitError> {
            self.depth += 1;
            if self.depth > MAX_EXPRESSION_DEPTH {
                return ControlFlow::Break(LimitError::TooDeep);
            }
            ControlFlow::Continue(())
        }
        fn post_visit_expr(&mut self, _expr: &SqlExpr) -> ControlFlow<LimitError> {
            self.depth -= 1;
            ControlFlow::Continue(())
        }
        fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<LimitError> {
            // Counted before the visitor descends into a long chain of them.
            self.set_operations +=
                set_operations(&query.body, MAX_SET_OPERATIONS + 1 - self.set_operations.min(MAX_SET_OPERATIONS));
            if self.set_operations > MAX_SET_OPERATIONS {
                return ControlFlow::Break(LimitError::TooManySetOperations);
            }
            ControlFlow::Continue(())
        }
    }
    match statement.visit(&mut Depth { depth: 0, set_operations: 0 }) {
        ControlFlow::Break(error) => Err(error),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// The set operations directly in `body` (not in nested queries), counting no further than `stop`.
fn set_operations(body: &SetExpr, stop: usize) -> usize {
    let mut count = 0;
    let mut pending = vec![body];
    while let Some(expr) = pending.pop() {
        if let SetExpr::SetOperation { left, right, .. } = expr {
            count += 1;
            if count >= stop {
                break;
            }
            pending.push(left);
            pending.push(right);
        }
    }
    count
}

/// The runtime every query shares: one memory pool of `memory_bytes`, no spilling to disk.
pub fn query_runtime(memory_bytes: usize) -> DfResult<Arc<RuntimeEnv>> {
    RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(GreedyMemoryPool::new(memory_bytes)))
        .with_disk_manager_builder(DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled))
        .build_arc()
}

/// A session whose every scalar function checks its output bound first, which plans string
/// `||` as the bounded `concat`, and which runs on `runtime`.
pub fn bounded_context(mut config: SessionConfig, runtime: Arc<RuntimeEnv>) -> SessionContext {
    // DataFusion 55's grouped top-k aggregation (`GROUP BY x ORDER BY x LIMIT n`; every query gets
    // a LIMIT) panics on NaN group keys (found by fuzzing); without it the group is aggregated
    // whole, within the memory pool, then sorted.
    config.options_mut().optimizer.enable_topk_aggregation = false;
    let strict = Arc::new(ScalarUDF::new_from_impl(StrictConcat { concat: datafusion::functions::string::concat() }));
    let concat = Arc::new(ScalarUDF::new_from_impl(Bounded { inner: strict, bound: Bound::Inputs }));
    // Before type coercion, which then types the rewritten expression like any other.
    let mut rules: Vec<Arc<dyn AnalyzerRule + Send + Sync>> = vec![Arc::new(BoundedConcatOperator { concat })];
    rules.extend(Analyzer::new().rules);
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .with_analyzer_rules(rules)
        .build();
    let context = SessionContext::new_with_state(state);
    let functions = context.state().scalar_functions().clone();
    let mut names: Vec<&String> = functions.keys().collect();
    names.sort();
    for name in names {
        let function = &functions[name];
        if function.name() == name.as_str() {
            // Aliases come along with their function.
            context.register_udf(ScalarUDF::new_from_impl(Bounded { inner: function.clone(), bound: Bound::of(name) }));
        }
    }
    context
}

/// How a function's output size follows from its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Bound {
    /// No more than its inputs (most functions).
    Inputs,
    /// `repeat(text, n)`
    Repeat,
    /// `lpad`/`rpad(text, n[, fill])`: n characters of up to 4 bytes.
    Pad,
    /// `replace(text, from, to)`
    Replace,
    /// `regexp_replace(text, pattern, replacement[, flags])`
    RegexpReplace,
    /// `array_repeat(element, n)`
    ArrayRepeat,
    /// `array_resize(array, n[, value])`
    ArrayResize,
    /// `range`/`generate_series([start,] stop[, step])`
    Series,
}

impl Bound {
    fn of(name: &str) -> Bound {
        match name {
            "repeat" => Bound::Repeat,
            "lpad" | "rpad" => Bound::Pad,
            "replace" => Bound::Replace,
            "regexp_replace" => Bound::RegexpReplace,
            "array_repeat" => Bound::ArrayRepeat,
            "array_resize" => Bound::ArrayResize,
            "range" | "generate_series" => Bound::Series,
            _ => Bound::Inputs,
        }
    }

    /// The most bytes a call with `args` can produce.
    fn bytes(self, args: &[ColumnarValue], rows: usize) -> DfResult<u128> {
        let rows = if args.iter().any(|a| matches!(a, ColumnarValue::Array(_))) { rows } else { 1 };
        let size = |i: usize| args.get(i).map_or(Ok(vec![0; rows]), |a| sizes(a, rows));
        let number = |i: usize| args.get(i).map_or(Ok(vec![0; rows]), |a| numbers(a, rows));
        let sum = |values: Vec<u128>| values.into_iter().sum::<u128>();
        Ok(match self {
            Bound::Inputs => args.iter().map(|a| total_size(a, rows)).sum::<DfResult<u128>>()?,
            Bound::Repeat => sum(zip(&size(0)?, &number(1)?, |len, n| len * n)),
            Bound::Pad => sum(number(1)?.iter().map(|n| n * 4 + 4).collect()),
            Bound::Replace => {
                let (text, from, to) = (size(0)?, size(1)?, size(2)?);
                sum((0..rows).map(|i| text[i] + text[i] / from[i].max(1) * to[i]).collect())
            }
            Bound::RegexpReplace => {
                // Each of at most len+1 matches becomes the replacement, whose `$…` references
                // expand to at most the whole text each.
                let (text, replacement) = (size(0)?, replacement_sizes(&args[2], rows)?);
                sum((0..rows)
                    .map(|i| text[i] + (text[i] + 1) * (replacement[i].0 + replacement[i].1 * text[i]))
                    .collect())
            }
            Bound::ArrayRepeat => sum(zip(&size(0)?, &number(1)?, |len, n| (len + 8) * n)),
            Bound::ArrayResize => {
                let fill = if args.len() > 2 { size(2)? } else { vec![8; rows] };
                sum(zip(&fill, &number(1)?, |len, n| (len + 8) * n)) + sum(size(0)?)
            }
            Bound::Series => 16 * series_elements(args, rows)?,
        })
    }
}

fn zip(a: &[u128], b: &[u128], f: impl Fn(u128, u128) -> u128) -> Vec<u128> {
    a.iter().zip(b).map(|(x, y)| f(*x, *y)).collect()
}

/// The bytes of all of `arg`'s values over `rows` rows. Every call of most functions comes here,
/// so the common types are summed without a value per row.
fn total_size(arg: &ColumnarValue, rows: usize) -> DfResult<u128> {
    let array = match arg {
        ColumnarValue::Scalar(value) => return Ok(scalar_size(value) * rows as u128),
        ColumnarValue::Array(array) => array,
    };
    let span = |first: i64, last: i64| (last - first).max(0) as u128;
    Ok(match array.data_type() {
        DataType::Utf8 => {
            let offsets = array.as_string::<i32>().value_offsets();
            span(offsets[0].into(), offsets[offsets.len() - 1].into())
        }
        DataType::LargeUtf8 => {
            let offsets = array.as_string::<i64>().value_offsets();
            span(offsets[0], offsets[offsets.len() - 1])
        }
        DataType::Utf8View => array.as_string_view().views().iter().map(|view| u128::from(*view as u32)).sum(),
        other if other.is_primitive() => (other.primitive_width().unwrap_or(8) * array.len()) as u128,
        _ => sizes(arg, rows)?.iter().sum(),
    })
}

/// The bytes of a scalar's value: a text's or binary's own bytes, anything else's size in memory.
fn scalar_size(value: &ScalarValue) -> u128 {
    match value {
        ScalarValue::Utf8(text) | ScalarValue::LargeUtf8(text) | ScalarValue::Utf8View(text) => {
            text.as_ref().map_or(0, String::len) as u128
        }
        ScalarValue::Binary(bytes) | ScalarValue::LargeBinary(bytes) | ScalarValue::BinaryView(bytes) => {
            bytes.as_ref().map_or(0, Vec::len) as u128
        }
        other => other.size() as u128,
    }
}

/// The byte size of each row's value of `arg`.
fn sizes(arg: &ColumnarValue, rows: usize) -> DfResult<Vec<u128>> {
    match arg {
        ColumnarValue::Scalar(value) => Ok(vec![scalar_size(value); rows]),
        ColumnarValue::Array(array) => match array.data_type() {
            DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView => {
                let lengths = cast(&length(array)?, &DataType::Int64)?;
                Ok(lengths.as_primitive::<Int64Type>().iter().map(|l| l.unwrap_or(0).max(0) as u128).collect())
            }
            other if other.is_primitive() => Ok(vec![other.primitive_width().unwrap_or(8) as u128; array.len()]),
            _ => (0..array.len()).map(|i| ScalarValue::try_from_array(array, i).map(|v| v.size() as u128)).collect(),
        },
    }
}

/// Each row's value of an integer argument; NULL and negative count as 0.
fn numbers(arg: &ColumnarValue, rows: usize) -> DfResult<Vec<u128>> {
    let array = arg.to_array(match arg {
        ColumnarValue::Scalar(_) => 1,
        ColumnarValue::Array(_) => rows,
    })?;
    let array = cast(&array, &DataType::Int64)?;
    let values: Vec<u128> = array.as_primitive::<Int64Type>().iter().map(|v| v.unwrap_or(0).max(0) as u128).collect();
    Ok(match arg {
        ColumnarValue::Scalar(_) => vec![values.first().copied().unwrap_or(0); rows],
        ColumnarValue::Array(_) => values,
    })
}

/// For each row of a replacement text: its length and how many `$` references it has.
fn replacement_sizes(arg: &ColumnarValue, rows: usize) -> DfResult<Vec<(u128, u128)>> {
    let one = |text: Option<&str>| text.map_or((0, 0), |t| (t.len() as u128, t.matches('$').count() as u128));
    match arg {
        ColumnarValue::Scalar(value) => {
            let text = value.cast_to(&DataType::Utf8)?;
            let ScalarValue::Utf8(text) = text else { return Ok(vec![(0, 0); rows]) };
            Ok(vec![one(text.as_deref()); rows])
        }
        ColumnarValue::Array(array) => {
            let texts = cast(array, &DataType::LargeUtf8)?;
            Ok(texts.as_string::<i64>().iter().map(one).collect())
        }
    }
}

/// How many elements `range`/`generate_series` make over every row.
fn series_elements(args: &[ColumnarValue], rows: usize) -> DfResult<u128> {
    let (start, stop, step) = match args {
        [stop] => (None, stop, None),
        [start, stop] => (Some(start), stop, None),
        [start, stop, step, ..] => (Some(start), stop, Some(step)),
        [] => return Ok(0),
    };
    let points = |arg: &ColumnarValue| -> DfResult<Vec<Option<i128>>> {
        let array = arg.to_array(rows)?;
        let array = match array.data_type() {
            DataType::Date32 | DataType::Date64 | DataType::Timestamp(_, _) => {
                cast(&cast(&array, &DataType::Timestamp(TimeUnit::Nanosecond, None))?, &DataType::Int64)?
            }
            _ => cast(&array, &DataType::Int64)?,
        };
        Ok(array.as_primitive::<Int64Type>().iter().map(|v| v.map(i128::from)).collect())
    };
    let stops = points(stop)?;
    let starts = match start {
        Some(start) => points(start)?,
        None => vec![Some(0); stops.len()],
    };
    let steps: Vec<i128> = match step {
        None => vec![1; stops.len()],
        Some(step) => {
            let array = step.to_array(rows)?;
            if matches!(array.data_type(), DataType::Interval(_)) {
                // The smallest a step can be: a month counts 28 days.
                let array =
                    cast(&array, &DataType::Interval(datafusion::arrow::datatypes::IntervalUnit::MonthDayNano))?;
                let day = 86_400_000_000_000i128;
                array
                    .as_primitive::<IntervalMonthDayNanoType>()
                    .iter()
                    .map(|v| {
                        v.map_or(1, |v| {
                            (i128::from(v.months) * 28 * day + i128::from(v.days) * day + i128::from(v.nanoseconds))
                                .abs()
                        })
                    })
                    .collect()
            } else {
                cast(&array, &DataType::Int64)?
                    .as_primitive::<Int64Type>()
                    .iter()
                    .map(|v| v.map_or(1, |v| i128::from(v).abs()))
                    .collect()
            }
        }
    };
    let mut total: u128 = 0;
    for ((start, stop), step) in starts.iter().zip(&stops).zip(&steps) {
        if let (Some(start), Some(stop)) = (start, stop) {
            total = total.saturating_add(((stop - start).unsigned_abs() / (*step).max(1) as u128) + 1);
        }
    }
    Ok(total)
}

/// `lengths` with negative values as 0. DataFusion's `lpad`/`rpad` over columns sizes its buffer
/// from the lengths and panics (`capacity overflow`) on a negative one, while over literals a
/// negative length gives `''`, as in PostgreSQL; 0 gives `''` in both.
fn no_negatives(lengths: &ArrayRef) -> DfResult<ArrayRef> {
    let as_i64 = cast(lengths, &DataType::Int64)?;
    let clamped: ArrayRef = Arc::new(as_i64.as_primitive::<Int64Type>().unary::<_, Int64Type>(|v| v.max(0)));
    Ok(cast(&clamped, lengths.data_type())?)
}

/// A scalar function that refuses a call whose output could exceed `FUNCTION_OUTPUT_BYTES`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Bounded {
    inner: Arc<ScalarUDF>,
    bound: Bound,
}

impl Bounded {
    fn check(&self, args: &ScalarFunctionArgs) -> DfResult<()> {
        let bytes = self.bound.bytes(&args.args, args.number_rows)?;
        if bytes > u128::from(FUNCTION_OUTPUT_BYTES) {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "{}() would make up to {bytes} bytes in one call; the limit is {FUNCTION_OUTPUT_BYTES}",
                self.inner.name()
            )));
        }
        Ok(())
    }
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }
    fn schema_name(&self, args: &[Expr]) -> DfResult<String> {
        self.inner.inner().schema_name(args)
    }
    fn signature(&self) -> &Signature {
        self.inner.signature()
    }
    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        self.inner.inner().return_type(arg_types)
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<datafusion::arrow::datatypes::FieldRef> {
        self.inner.inner().return_field_from_args(args)
    }
    fn is_strict(&self) -> bool {
        self.inner.inner().is_strict()
    }
    fn invoke_with_args(&self, mut args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        self.check(&args)?;
        // Over an empty batch some functions read their first row anyway (`to_char` panics): no
        // rows in, no rows out.
        if args.number_rows == 0 && args.args.iter().any(|arg| matches!(arg, ColumnarValue::Array(_))) {
            return Ok(ColumnarValue::Array(new_empty_array(args.return_field.data_type())));
        }
        if self.bound == Bound::Pad {
            match args.args.get_mut(1) {
                Some(ColumnarValue::Array(lengths)) => *lengths = no_negatives(lengths)?,
                Some(ColumnarValue::Scalar(length)) => {
                    *length = ScalarValue::try_from_array(&no_negatives(&length.to_array()?)?, 0)?
                }
                None => {}
            }
        }
        self.inner.invoke_with_args(args)
    }
    fn simplify(
        &self,
        args: Vec<Expr>,
        info: &datafusion::logical_expr::simplify::SimplifyContext,
    ) -> DfResult<datafusion::logical_expr::simplify::ExprSimplifyResult> {
        self.inner.inner().simplify(args, info)
    }
    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }
    fn conditional_arguments<'a>(&self, args: &'a [Expr]) -> Option<(Vec<&'a Expr>, Vec<&'a Expr>)> {
        self.inner.inner().conditional_arguments(args)
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        self.inner.inner().coerce_types(arg_types)
    }
    fn output_ordering(
        &self,
        inputs: &[datafusion::logical_expr::sort_properties::ExprProperties],
    ) -> DfResult<datafusion::logical_expr::sort_properties::SortProperties> {
        self.inner.inner().output_ordering(inputs)
    }
    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

/// Plans `a || b` on strings as the bounded `StrictConcat(a, b)`: the same result, bounded.
#[derive(Debug)]
struct BoundedConcatOperator {
    concat: Arc<ScalarUDF>,
}

impl AnalyzerRule for BoundedConcatOperator {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> DfResult<LogicalPlan> {
        plan.transform_up_with_subqueries(|plan| {
            let schema = plan.schema().clone();
            plan.map_expressions(|expr| {
                expr.transform_up(|expr| match expr {
                    Expr::BinaryExpr(BinaryExpr { left, op: Operator::StringConcat, right })
                        if left.get_type(&schema).is_ok_and(|t| !t.is_nested())
                            && right.get_type(&schema).is_ok_and(|t| !t.is_nested()) =>
                    {
                        Ok(Transformed::yes(Expr::ScalarFunction(ScalarFunction::new_udf(
                            self.concat.clone(),
                            vec![*left, *right],
                        ))))
                    }
                    other => Ok(Transformed::no(other)),
                })
            })
        })
        .map(|transformed| transformed.data)
    }

    fn name(&self) -> &str {
        "bounded_concat_operator"
    }
}

/// `concat` as `||` means it: NULL where any argument is NULL (`concat` skips NULLs).
#[derive(Debug, PartialEq, Eq, Hash)]
struct StrictConcat {
    concat: Arc<ScalarUDF>,
}

impl ScalarUDFImpl for StrictConcat {
    fn name(&self) -> &str {
        "strict_concat"
    }
    fn signature(&self) -> &Signature {
        self.concat.signature()
    }
    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        self.concat.inner().return_type(arg_types)
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        self.concat.inner().coerce_types(arg_types)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        if args.args.iter().any(|a| matches!(a, ColumnarValue::Scalar(value) if value.is_null())) {
            return Ok(ColumnarValue::Scalar(ScalarValue::try_from(args.return_type())?));
        }
        let nulls = args.args.iter().fold(None, |nulls, arg| match arg {
            ColumnarValue::Array(array) => NullBuffer::union(nulls.as_ref(), array.logical_nulls().as_ref()),
            ColumnarValue::Scalar(_) => nulls,
        });
        match (self.concat.invoke_with_args(args)?, nulls) {
            (ColumnarValue::Array(array), Some(nulls)) => {
                let nulls = NullBuffer::union(Some(&nulls), array.nulls());
                Ok(ColumnarValue::Array(make_array(array.to_data().into_builder().nulls(nulls).build()?)))
            }
            (output, _) => Ok(output),
        }
    }
}

/// A query's result, cut at `max_rows` rows.
pub struct Collected {
    pub batches: Vec<RecordBatch>,
    /// More rows were there.
    pub truncated: bool,
}

/// Runs `frame` with `LIMIT max_rows + 1` in its plan, streaming, and fails once the rows
/// collected take more than `max_bytes`.
pub async fn collect_bounded(frame: DataFrame, max_rows: usize, max_bytes: usize) -> DfResult<Collected> {
    let schema = Arc::new(frame.schema().as_arrow().clone());
    // One row past the cap tells that there were more (DataFusion's LIMIT is at most i64::MAX).
    let frame = if max_rows < i64::MAX as usize { frame.limit(0, Some(max_rows + 1))? } else { frame };
    let mut stream = frame.execute_stream().await?;
    let (mut batches, mut bytes) = (Vec::new(), 0usize);
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        bytes += batch.get_array_memory_size();
        if bytes > max_bytes {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "the result is over the {max_bytes}-byte limit; select fewer rows or columns, or aggregate"
            )));
        }
        batches.push(batch);
    }
    let mut collected = Collected::cut(batches, max_rows);
    if collected.batches.is_empty() {
        // Keep the columns of an empty result, so CSV still gets its header line.
        collected.batches.push(RecordBatch::new_empty(schema));
    }
    Ok(collected)
}

impl Collected {
    /// The first `max_rows` rows of `batches`.
    pub fn cut(batches: Vec<RecordBatch>, max_rows: usize) -> Collected {
        let mut left = max_rows;
        let mut truncated = false;
        let mut kept = Vec::with_capacity(batches.len());
        for batch in batches {
            if batch.num_rows() > left {
                truncated = true;
                if left > 0 {
                    kept.push(batch.slice(0, left));
                }
                left = 0;
            } else {
                left -= batch.num_rows();
                kept.push(batch);
            }
        }
        Collected { batches: kept, truncated }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::ast::Statement;
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn parse(sql: &str) -> Statement {
        Parser::parse_sql(&GenericDialect {}, sql).expect("parses").remove(0)
    }

    #[test]
    fn nesting_is_limited_in_expressions_and_set_operations() {
        let terms = |n: usize, op: &str| vec!["1"; n].join(op);
        assert!(check_nesting(&parse(&format!("SELECT {}", terms(200, "+")))).is_ok());
        assert!(matches!(check_nesting(&parse(&format!("SELECT {}", terms(1000, "+")))), Err(LimitError::TooDeep)));
        assert!(matches!(
            check_nesting(&parse(&format!("SELECT 1 WHERE {}", terms(1000, " = 1 AND 1")))),
            Err(LimitError::TooDeep)
        ));
        let unions = |n: usize| vec!["SELECT 1"; n].join(" UNION ALL ");
        assert!(check_nesting(&parse(&unions(100))).is_ok());
        assert!(matches!(check_nesting(&parse(&unions(500))), Err(LimitError::TooManySetOperations)));
    }

    #[test]
    fn results_are_cut_across_batches() {
        use datafusion::arrow::array::Int64Array;
        use datafusion::arrow::datatypes::{Field, Schema};
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let batch = |n: i64| {
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from_iter_values(0..n))]).expect("batch")
        };
        let cut = Collected::cut(vec![batch(3), batch(3)], 4);
        assert!(cut.truncated);
        assert_eq!(cut.batches.iter().map(RecordBatch::num_rows).collect::<Vec<_>>(), vec![3, 1]);
        let all = Collected::cut(vec![batch(3)], 3);
        assert!(!all.truncated);
        assert_eq!(all.batches[0].num_rows(), 3);
    }

    #[test]
    fn bounds_follow_what_functions_multiply() {
        use datafusion::arrow::array::{ArrayRef, StringArray};
        let text = |s: &str| ColumnarValue::Scalar(ScalarValue::Utf8(Some(s.to_owned())));
        let int = |n: i64| ColumnarValue::Scalar(ScalarValue::Int64(Some(n)));
        // A slice counts only its own values, not the buffer it shares.
        let texts: ArrayRef = Arc::new(StringArray::from(vec!["abc"; 1000]));
        assert_eq!(Bound::Inputs.bytes(&[ColumnarValue::Array(texts.slice(10, 5))], 5).expect("bound"), 15);
        let repeat = Bound::Repeat.bytes(&[text("ab"), int(1_000)], 1).expect("bound");
        assert_eq!(repeat, 2_000, "a text counts its bytes, not the ScalarValue around them");
        // 3 MB of output is well within the limit.
        assert!(
            Bound::Repeat.bytes(&[text("abc"), int(1_000_000)], 1).expect("bound") < u128::from(FUNCTION_OUTPUT_BYTES)
        );
        assert!(
            Bound::Series.bytes(&[int(0), int(1_000_000_000)], 1).expect("bound") > u128::from(FUNCTION_OUTPUT_BYTES)
        );
        assert!(Bound::Series.bytes(&[int(0), int(100)], 1).expect("bound") < 10_000);
        assert!(Bound::Pad.bytes(&[text("x"), int(1 << 30)], 1).expect("bound") > u128::from(FUNCTION_OUTPUT_BYTES));
        // A `$0` reference makes every match as long as the text.
        let plain = Bound::RegexpReplace.bytes(&[text(&"x".repeat(1000)), text("."), text("y")], 1).expect("bound");
        let referenced =
            Bound::RegexpReplace.bytes(&[text(&"x".repeat(1000)), text("."), text("$0$0")], 1).expect("bound");
        assert!(plain < 5_000 && referenced > 1_000_000, "{plain} {referenced}");
    }
}
