//! The convoflow process: sources, the dataflow runtime and the commands of the `convoflow` binary.

pub mod bench_ingest;
pub mod bus;
pub mod replay;
pub mod retry;
pub mod runtime;
pub mod scaled;
pub mod serve;
pub mod source;
pub mod whatsapp_input;
