//! The read side: read-only SQL over the embedded store's tables with DataFusion.

mod format;
mod sql;

pub use format::{format_batches, OutputFormat};
pub use sql::{QueryError, SqlEngine};
