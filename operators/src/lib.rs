//! Timely dataflow operators that turn canonical events into updates `(row, diff)` of the SPEC §5
//! tables. Every operator is incremental: an event touches only the keys it belongs to, and a late
//! event corrects earlier rows by retracting them (diff −1) and inserting their replacements.

pub mod attribution;
pub mod contacts;
pub mod cycles;
pub mod dataflow;
pub mod dedup;
pub mod driver;
pub mod funnel;
pub mod message_status;
pub mod messages;
mod ordered;
pub mod reactions;
pub mod reduce;
pub mod responses;
pub mod retention;
pub mod rows;
pub mod session_health;
mod split;
mod stash;
pub mod state;
pub mod table;
pub mod tables;
pub mod thread;
pub mod volume;

pub use driver::{conflict_reason, Driver, DriverError, EpochOutput};
pub use rows::*;
pub use state::Resume;
pub use table::{Cells, Column, Kind, Table};
pub use tables::{Collection, TableSet, Update, Visit, DERIVED_TABLES};
