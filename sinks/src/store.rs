//! The embedded store: one Parquet file per table under `<data>/tables/`.
//!
//! A write replaces every table. Each file is written beside its final name, fsynced, then renamed
//! into place, so a reader sees the old or the new file, never a torn one. `events` goes first:
//! it is the source of truth the next replay rebuilds all derived tables from, so a crash
//! between files heals on the next replay.

use crate::convert::{events_from_batch, rejected_from_batch, table_batches};
use crate::schema::schema;
use convoflow_events::Event;
use convoflow_operators::{RejectedRow, TableSet};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::errors::ParquetError;
use datafusion::parquet::file::properties::WriterProperties;
use std::fs::File;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: {source}")]
    Parquet { path: String, source: ParquetError },
    #[error("{path}: {source}")]
    Arrow { path: String, source: ArrowError },
}

pub struct EmbeddedStore {
    dir: PathBuf,
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let dir = data_dir.join("tables");
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io { path: dir.display().to_string(), source })?;
        Ok(EmbeddedStore { dir })
    }

    pub fn table_path(&self, table: &str) -> PathBuf {
        self.dir.join(format!("{table}.parquet"))
    }

    fn read_table(&self, table: &str) -> Result<Vec<RecordBatch>, StoreError> {
        let path = self.table_path(table);
        let shown = || path.display().to_string();
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(StoreError::Io { path: shown(), source }),
        };
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|builder| builder.with_batch_size(64 * 1024).build())
            .map_err(|source| StoreError::Parquet { path: shown(), source })?;
        reader.collect::<Result<Vec<_>, _>>().map_err(|source| StoreError::Arrow { path: shown(), source })
    }

    /// Every accepted event in the store.
    pub fn load_events(&self) -> Result<Vec<Event>, StoreError> {
        let path = self.table_path("events").display().to_string();
        let mut events = Vec::new();
        for batch in self.read_table("events")? {
            events.extend(events_from_batch(&batch).map_err(|source| StoreError::Arrow { path: path.clone(), source })?);
        }
        Ok(events)
    }

    /// Every rejection in the store.
    pub fn load_rejected(&self) -> Result<Vec<RejectedRow>, StoreError> {
        let path = self.table_path("rejected").display().to_string();
        let mut rows = Vec::new();
        for batch in self.read_table("rejected")? {
            rows.extend(rejected_from_batch(&batch).map_err(|source| StoreError::Arrow { path: path.clone(), source })?);
        }
        Ok(rows)
    }

    /// Replaces every table with `tables` and `rejected`.
    pub fn write(&self, tables: &TableSet, rejected: &[RejectedRow]) -> Result<(), StoreError> {
        let batches = table_batches(tables, rejected)
            .map_err(|source| StoreError::Arrow { path: self.dir.display().to_string(), source })?;
        for (table, table_batches) in batches {
            self.write_table(table, &table_batches)?;
        }
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|source| StoreError::Io { path: self.dir.display().to_string(), source })
    }

    fn write_table(&self, table: &str, batches: &[RecordBatch]) -> Result<(), StoreError> {
        let path = self.table_path(table);
        let partial = path.with_extension("parquet.partial");
        let shown = || partial.display().to_string();
        let io = |source| StoreError::Io { path: partial.display().to_string(), source };
        let parquet = |source| StoreError::Parquet { path: partial.display().to_string(), source };
        let schema = schema(table).ok_or_else(|| StoreError::Arrow {
            path: shown(),
            source: ArrowError::SchemaError(format!("no table {table}")),
        })?;
        let properties = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
        let file = File::create(&partial).map_err(io)?;
        let mut writer = ArrowWriter::try_new(file, schema, Some(properties)).map_err(parquet)?;
        for batch in batches {
            writer.write(batch).map_err(parquet)?;
        }
        let file = writer.into_inner().map_err(parquet)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&partial, &path).map_err(|source| StoreError::Io { path: path.display().to_string(), source })
    }
}
