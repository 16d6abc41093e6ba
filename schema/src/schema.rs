//! Arrow schemas of the tables, derived from each row type's `table!` declaration: one place for
//! the Parquet writer, the SQL reader and the ClickHouse DDL.

use convoflow_events::Event;
use convoflow_operators::{for_each_table, Column, Kind, RejectedRow, Table};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use std::sync::Arc;

macro_rules! registry {
    ($($table:ident: $row:ty => $variant:ident),+ $(,)?) => {
        /// Every table of the stores, in SPEC order.
        pub const TABLES: &[&str] = &["events", "rejected", $(stringify!($table)),+];

        /// The tables derived from `events` by the dataflow, in SPEC order.
        pub const DERIVED_TABLES: &[&str] = &[$(stringify!($table)),+];

        /// A table's declared columns, or `None` for a name that is not a table.
        pub fn columns(table: &str) -> Option<&'static [Column]> {
            match table {
                "events" => Some(Event::COLUMNS),
                "rejected" => Some(RejectedRow::COLUMNS),
                $(stringify!($table) => Some(<$row as Table>::COLUMNS),)+
                _ => None,
            }
        }
    };
}

for_each_table!(registry);

/// The Arrow type of a column kind.
pub fn data_type(kind: Kind) -> DataType {
    match kind {
        Kind::Text => DataType::Utf8,
        Kind::Instant => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        Kind::Int64 => DataType::Int64,
        Kind::Int32 => DataType::Int32,
        Kind::Float64 => DataType::Float64,
        Kind::Date => DataType::Date32,
        Kind::Boolean => DataType::Boolean,
    }
}

/// The Arrow schema of declared columns.
pub fn schema_of(columns: &[Column]) -> SchemaRef {
    let fields: Vec<Field> =
        columns.iter().map(|column| Field::new(column.name, data_type(column.kind), column.nullable)).collect();
    Arc::new(Schema::new(fields))
}

/// The schema of a table, or `None` for a name that is not a table.
pub fn schema(table: &str) -> Option<SchemaRef> {
    columns(table).map(schema_of)
}
