//! The convoflow process: the runtime loop and the commands of the `convoflow` binary (serve,
//! replay, bench-ingest); sources and sinks are `convoflow_connectors`.

pub mod bench_ingest;
pub mod replay;
pub mod runtime;
pub mod scaled;
pub mod serve;
