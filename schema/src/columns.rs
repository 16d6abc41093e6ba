//! Reading Arrow columns by name, to load stored tables back.

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int64Array, StringArray, TimestampMillisecondArray,
};
use datafusion::arrow::datatypes::{Float64Type, Int64Type, TimestampMillisecondType};
use datafusion::arrow::record_batch::RecordBatch;

/// Typed access to a batch's columns by name, for loading stored tables back.
pub struct Columns<'a> {
    pub batch: &'a RecordBatch,
}

impl<'a> Columns<'a> {
    fn column(&self, name: &str) -> Option<&'a ArrayRef> {
        self.batch.column_by_name(name)
    }

    pub fn text(&self, name: &str) -> Option<&'a StringArray> {
        self.column(name)?.as_string_opt::<i32>()
    }

    pub fn instant(&self, name: &str) -> Option<&'a TimestampMillisecondArray> {
        self.column(name)?.as_primitive_opt::<TimestampMillisecondType>()
    }

    pub fn int64(&self, name: &str) -> Option<&'a Int64Array> {
        self.column(name)?.as_primitive_opt::<Int64Type>()
    }

    pub fn float64(&self, name: &str) -> Option<&'a Float64Array> {
        self.column(name)?.as_primitive_opt::<Float64Type>()
    }
}

pub fn opt_str(array: &StringArray, row: usize) -> Option<&str> {
    (!array.is_null(row)).then(|| array.value(row))
}

pub fn opt_i64<T: datafusion::arrow::datatypes::ArrowPrimitiveType<Native = i64>>(
    array: &datafusion::arrow::array::PrimitiveArray<T>,
    row: usize,
) -> Option<i64> {
    (!array.is_null(row)).then(|| array.value(row))
}
