//! One declaration per table. A row type declares its SPEC columns once, with [`table!`]: each
//! column's name, type, nullability and how to read it from a row. Everything else that knows a
//! table's columns derives from that declaration: the Arrow schema and converters
//! (`convoflow-schema`), the ClickHouse DDL and `RowBinary` encoding and the in-memory tables of
//! `serve` (`convoflow-connectors`) and the test support's JSON rendering. The registry ([`crate::for_each_table`]) lists the
//! derived tables, and from it come `Update`, `TableSet` and the stores' per-table state.

/// A column's type, one per SPEC type: each maps to one Arrow type and one ClickHouse type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Text,
    /// UTC epoch ms.
    Instant,
    Int64,
    Int32,
    Float64,
    /// Days since 1970-01-01.
    Date,
    Boolean,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    pub kind: Kind,
    pub nullable: bool,
}

/// Where a row's cells go, one call per column in declared order, the method named by the
/// column's [`Kind`]. Implemented by the Arrow builders, the test support's JSON, ….
pub trait Cells {
    fn text(&mut self, value: Option<&str>);
    fn instant(&mut self, value: Option<i64>);
    fn int64(&mut self, value: Option<i64>);
    fn int32(&mut self, value: Option<i32>);
    fn float64(&mut self, value: Option<f64>);
    fn date(&mut self, value: Option<i32>);
    fn boolean(&mut self, value: Option<bool>);
}

/// A table: its name, its columns, and a row's cells in column order.
pub trait Table {
    const NAME: &'static str;
    const COLUMNS: &'static [Column];
    fn cells(&self, out: &mut impl Cells);
}

/// Declares a row type's table:
///
/// ```ignore
/// table! { ResponseRow as "responses", |row| {
///     tenant_id: text = row.tenant_id.as_str(),
///     agent_id: text null = row.agent_id.as_deref(),   // nullable: the value is an Option
///     "type": text = row.kind.as_str(),                // a name that is a Rust keyword
/// }}
/// ```
#[macro_export]
macro_rules! table {
    (@kind text) => { $crate::table::Kind::Text };
    (@kind instant) => { $crate::table::Kind::Instant };
    (@kind int64) => { $crate::table::Kind::Int64 };
    (@kind int32) => { $crate::table::Kind::Int32 };
    (@kind float64) => { $crate::table::Kind::Float64 };
    (@kind date) => { $crate::table::Kind::Date };
    (@kind boolean) => { $crate::table::Kind::Boolean };
    (@name $column:ident) => { stringify!($column) };
    (@name $column:literal) => { $column };
    (@nullable) => { false };
    (@nullable null) => { true };
    (@value null $value:expr) => { $value };
    (@value $value:expr) => { Some($value) };
    ($row:ty as $name:literal, |$r:ident| { $($column:tt: $kind:ident $($null:ident)? = $value:expr),+ $(,)? }) => {
        impl $crate::table::Table for $row {
            const NAME: &'static str = $name;
            const COLUMNS: &'static [$crate::table::Column] = &[$($crate::table::Column {
                name: $crate::table!(@name $column),
                kind: $crate::table!(@kind $kind),
                nullable: $crate::table!(@nullable $($null)?),
            }),+];
            fn cells(&self, out: &mut impl $crate::table::Cells) {
                let $r = self;
                $(out.$kind($crate::table!(@value $($null)? $value));)+
            }
        }
    };
}

/// `a == b`, usable in constants (the registry checks each table's name against its field).
pub const fn same_name(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}
