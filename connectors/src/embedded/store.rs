//! The embedded store: one Parquet file per table under `<data>/tables/`.
//!
//! A write replaces every table. Each file is written beside its final name and fsynced; then the
//! files are renamed into place, so a reader sees the old or the new file, never a torn one.
//! `events` is renamed first: it is the source of truth the next replay rebuilds all derived
//! tables from, so a crash between renames heals on the next replay.
//!
//! `<data>/tables/generation` names the operator state (`<data>/state`, saved by a replay before
//! its tables, or by `serve` just before a snapshot takes its tables) that these tables were
//! derived with. Every write removes it before renaming any file; a writer that saved state
//! writes it again after its last rename. So state is used only with the very events it derived,
//! and a crash half-way makes the next start re-feed the stored events instead.

use convoflow_operators::{RejectedRow, TableSet};
use convoflow_schema::schema;
use convoflow_schema::{rejected_from_batch, table_batches, Rows, TableBatches};
use datafusion::arrow::array::{BooleanArray, UInt32Array};
use datafusion::arrow::compute::{filter_record_batch, take_record_batch};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::errors::ParquetError;
use datafusion::parquet::file::properties::{WriterProperties, DEFAULT_MAX_ROW_GROUP_ROW_COUNT};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data dir {path} is in use by another convoflow process (replay or serve); stop it first")]
    Locked { path: String },
    #[error("{path}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}")]
    Parquet { path: String, source: ParquetError },
    #[error("{path}")]
    Arrow { path: String, source: ArrowError },
}

pub struct EmbeddedStore {
    dir: PathBuf,
}

/// Exclusive use of a data dir by one writing process (`replay` or `serve`), held until dropped.
/// Readers (`convoflow sql`) need none: files are replaced by rename.
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    pub fn acquire(data_dir: &Path) -> Result<Self, StoreError> {
        let path = data_dir.join("LOCK");
        let io = |source| StoreError::Io { path: path.display().to_string(), source };
        std::fs::create_dir_all(data_dir).map_err(io)?;
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io)?;
        match file.try_lock() {
            Ok(()) => Ok(DataDirLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked { path: data_dir.display().to_string() }),
            Err(std::fs::TryLockError::Error(source)) => Err(io(source)),
        }
    }
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let dir = data_dir.join("tables");
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io { path: dir.display().to_string(), source })?;
        Ok(EmbeddedStore { dir })
    }

    /// Where a replay saves operator state.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.with_file_name("state")
    }

    fn generation_path(&self) -> PathBuf {
        self.dir.join("generation")
    }

    /// The operator state generation the tables were derived with, if they were written with one.
    pub fn generation(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.generation_path()).ok()?;
        Some(text.trim().to_owned()).filter(|generation| !generation.is_empty())
    }

    /// A name no earlier state of a store has had: the time in ns and the process id.
    pub fn new_generation() -> String {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |t| t.as_nanos());
        format!("{nanos:x}-{}", std::process::id())
    }

    /// Records that the tables as they are now were derived with operator state `generation`.
    pub fn set_generation(&self, generation: &str) -> Result<(), StoreError> {
        let path = self.generation_path();
        let partial = path.with_extension("partial");
        let io = |source| StoreError::Io { path: path.display().to_string(), source };
        std::fs::write(&partial, generation).map_err(io)?;
        File::open(&partial).and_then(|file| file.sync_all()).map_err(io)?;
        std::fs::rename(&partial, &path).map_err(io)?;
        self.sync_dir()
    }

    fn sync_dir(&self) -> Result<(), StoreError> {
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|source| StoreError::Io { path: self.dir.display().to_string(), source })
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

    fn load<R>(
        &self,
        table: &str,
        convert: fn(&RecordBatch) -> Result<Vec<R>, ArrowError>,
    ) -> Result<Vec<R>, StoreError> {
        let mut rows = Vec::new();
        for batch in self.read_table(table)? {
            let converted = convert(&batch)
                .map_err(|source| StoreError::Arrow { path: self.table_path(table).display().to_string(), source })?;
            rows.extend(converted);
        }
        Ok(rows)
    }

    /// Every accepted event in the store, as the `events` table's batches (of 64 k rows).
    pub fn load_events(&self) -> Result<Vec<RecordBatch>, StoreError> {
        let path = || self.table_path("events").display().to_string();
        let Some(schema) = schema("events") else { return Ok(Vec::new()) };
        // Under the declared schema (the file's may differ in metadata), as every writer expects.
        self.read_table("events")?
            .into_iter()
            .map(|batch| RecordBatch::try_new(schema.clone(), batch.columns().to_vec()))
            .collect::<Result<_, _>>()
            .map_err(|source| StoreError::Arrow { path: path(), source })
    }

    /// Every rejection in the store.
    pub fn load_rejected(&self) -> Result<Vec<RejectedRow>, StoreError> {
        self.load("rejected", rejected_from_batch)
    }

    /// Starts the `events` table of the next write, appended to as events come.
    pub fn events_writer(&self) -> Result<TableWriter, StoreError> {
        self.partial_writer("events", TableWriter::ROW_GROUP)
    }

    /// Replaces every table: `events` with what `events` was given followed by `tables.events`,
    /// the derived tables with `tables` and `rejected`.
    pub fn write(&self, events: TableWriter, tables: &TableSet, rejected: &[RejectedRow]) -> Result<(), StoreError> {
        let (events, batches) = self.split_events(events, tables, rejected, Rows::Contents)?;
        let mut partials = vec![("events", events)];
        partials.extend(self.encode(&batches)?);
        self.install(partials)
    }

    /// Every table of `tables` as batches: `events` appended to `events` (its partial file then
    /// finished, and returned), the others (`rejected` first) returned as batches.
    fn split_events(
        &self,
        mut events: TableWriter,
        tables: &TableSet,
        rejected: &[RejectedRow],
        rows: Rows,
    ) -> Result<(PathBuf, Vec<TableBatches>), StoreError> {
        let mut batches = table_batches(tables, rejected, rows)
            .map_err(|source| StoreError::Arrow { path: self.dir.display().to_string(), source })?;
        if let Some(at) = batches.iter().position(|table| table.table == "events") {
            for batch in &batches.remove(at).batches {
                events.append(batch)?;
            }
        }
        Ok((events.finish()?, batches))
    }

    /// Applies a resumed replay's changes to the stored derived tables, replaces `events` with what
    /// `events` was given and `rejected` with `rejected`; returns each derived table's rows after.
    /// A table the changes leave alone keeps its file. Each changed one is read, its retracted
    /// rows taken out and its inserted rows added after ([`apply_changes`]), one thread per table.
    pub fn write_changes(
        &self,
        events: TableWriter,
        changes: &TableSet,
        rejected: &[RejectedRow],
    ) -> Result<Vec<(&'static str, usize)>, StoreError> {
        let (events, mut batches) = self.split_events(events, changes, rejected, Rows::Updates)?;
        let mut partials = vec![("events", events)];
        if let Some(at) = batches.iter().position(|table| table.table == "rejected") {
            partials.extend(self.encode(&[batches.remove(at)])?);
        }
        let written = on_threads(&batches, |changed| {
            if changed.diffs.is_empty() {
                return Ok((None, self.stored_rows(changed.table)?));
            }
            let stored = self.read_table(changed.table)?;
            let after = apply_changes(stored, changed).map_err(|source| StoreError::Arrow {
                path: self.table_path(changed.table).display().to_string(),
                source,
            })?;
            let rows = after.iter().map(RecordBatch::num_rows).sum();
            Ok((Some(self.write_partial(changed.table, &after)?), rows))
        });
        let mut counts = Vec::new();
        for (changed, result) in batches.iter().zip(written) {
            let (partial, rows): (Option<PathBuf>, usize) = result?;
            partials.extend(partial.map(|partial| (changed.table, partial)));
            counts.push((changed.table, rows));
        }
        self.install(partials)?;
        Ok(counts)
    }

    /// Rows in a stored table's file, from its footer.
    fn stored_rows(&self, table: &str) -> Result<usize, StoreError> {
        let path = self.table_path(table);
        let shown = || path.display().to_string();
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(source) => return Err(StoreError::Io { path: shown(), source }),
        };
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|source| StoreError::Parquet { path: shown(), source })?;
        Ok(builder.metadata().file_metadata().num_rows().max(0) as usize)
    }

    /// Replaces the tables named in `batches`. The files are encoded concurrently (one thread per
    /// table), then renamed into place in the given order (SPEC order puts `events` first).
    pub fn write_batches(&self, batches: &[TableBatches]) -> Result<(), StoreError> {
        let partials = self.encode(batches)?;
        self.install(partials)
    }

    /// Each table's partial file, encoded one thread per table.
    fn encode(&self, batches: &[TableBatches]) -> Result<Vec<(&'static str, PathBuf)>, StoreError> {
        on_threads(batches, |table| Ok((table.table, self.write_partial(table.table, &table.batches)?)))
            .into_iter()
            .collect()
    }

    /// Renames the partial files into place, in order.
    fn install(&self, partials: Vec<(&'static str, PathBuf)>) -> Result<(), StoreError> {
        // From the first rename on, the tables are no longer those the saved state derived.
        match std::fs::remove_file(self.generation_path()) {
            Ok(()) => self.sync_dir()?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(StoreError::Io { path: self.generation_path().display().to_string(), source }),
        }
        for (table, partial) in partials {
            let path = self.table_path(table);
            std::fs::rename(&partial, &path)
                .map_err(|source| StoreError::Io { path: path.display().to_string(), source })?;
        }
        self.sync_dir()
    }

    /// A writer of `<table>.parquet.partial`, with row groups of at most `row_group` rows.
    fn partial_writer(&self, table: &str, row_group: usize) -> Result<TableWriter, StoreError> {
        let partial = self.table_path(table).with_extension("parquet.partial");
        let schema = schema(table).ok_or_else(|| StoreError::Arrow {
            path: partial.display().to_string(),
            source: ArrowError::SchemaError(format!("no table {table}")),
        })?;
        let properties = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(row_group))
            .build();
        let file =
            File::create(&partial).map_err(|source| StoreError::Io { path: partial.display().to_string(), source })?;
        let writer = ArrowWriter::try_new(file, schema, Some(properties))
            .map_err(|source| StoreError::Parquet { path: partial.display().to_string(), source })?;
        Ok(TableWriter { partial, writer, rows: 0 })
    }

    /// Writes and fsyncs `<table>.parquet.partial`, returning its path.
    fn write_partial(&self, table: &str, batches: &[RecordBatch]) -> Result<PathBuf, StoreError> {
        let mut writer = self.partial_writer(table, DEFAULT_MAX_ROW_GROUP_ROW_COUNT)?;
        for batch in batches {
            writer.append(batch)?;
        }
        writer.finish()
    }
}

/// `work` on each item, one thread per item; the results in the items' order (a panic goes on
/// in the caller).
fn on_threads<T: Sync, R: Send>(items: &[T], work: impl Fn(&T) -> R + Sync) -> Vec<R> {
    std::thread::scope(|scope| {
        let work = &work;
        let threads: Vec<_> = items.iter().map(|item| scope.spawn(move || work(item))).collect();
        threads
            .into_iter()
            .map(|thread| thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    })
}

/// `stored` with `changes` applied: every row with a negative diff is taken out of the stored
/// rows (as many times as its diff), every row with a positive diff is added after them (as many
/// times). Rows are matched by their whole content (Arrow's row format). A retracted row missing
/// from `stored` means the saved state and the stored table disagree, which is an error.
pub fn apply_changes(stored: Vec<RecordBatch>, changes: &TableBatches) -> Result<Vec<RecordBatch>, ArrowError> {
    let Some(schema) = schema(changes.table) else {
        return Err(ArrowError::SchemaError(format!("no table {}", changes.table)));
    };
    let converter =
        RowConverter::new(schema.fields().iter().map(|field| SortField::new(field.data_type().clone())).collect())?;
    let mut retracted: HashMap<Vec<u8>, i64> = HashMap::new();
    let mut after = Vec::with_capacity(stored.len() + changes.batches.len());
    let mut inserted = Vec::new();
    let mut diffs = changes.diffs.iter();
    for batch in &changes.batches {
        let rows = converter.convert_columns(batch.columns())?;
        let mut take = Vec::new();
        for (at, row) in rows.iter().enumerate() {
            match diffs.next().copied().unwrap_or(0) {
                diff if diff < 0 => *retracted.entry(row.as_ref().to_vec()).or_default() -= diff,
                diff => take.extend(std::iter::repeat_n(at as u32, diff as usize)),
            }
        }
        if !take.is_empty() {
            inserted.push(take_record_batch(batch, &UInt32Array::from(take))?);
        }
    }
    let mut left = retracted.values().sum::<i64>();
    for batch in stored {
        let batch = RecordBatch::try_new(schema.clone(), batch.columns().to_vec())?;
        if left == 0 {
            after.push(batch);
            continue;
        }
        let rows = converter.convert_columns(batch.columns())?;
        let keep: BooleanArray = rows
            .iter()
            .map(|row| match retracted.get_mut(row.as_ref()) {
                Some(count) if *count > 0 => {
                    *count -= 1;
                    left -= 1;
                    Some(false)
                }
                _ => Some(true),
            })
            .collect();
        after.push(filter_record_batch(&batch, &keep)?);
    }
    if left > 0 {
        return Err(ArrowError::InvalidArgumentError(format!(
            "{left} rows of table {} that the saved operator state derived are not in the stored table: the state and the \
             tables disagree; remove the data dir's `state` folder to rebuild both from the stored events",
            changes.table
        )));
    }
    after.extend(inserted);
    after.retain(|batch| batch.num_rows() > 0);
    Ok(after)
}

/// A table's next file being written (`events`, for a replay): each appended batch is encoded at
/// once, and only the row group being filled is held (encoded), so a replay holds none of its
/// events as rows.
pub struct TableWriter {
    partial: PathBuf,
    writer: ArrowWriter<File>,
    rows: usize,
}

impl TableWriter {
    /// Rows per row group: 1/8 of Parquet's default, so what is held while filling one stays
    /// small, and DataFusion still reads whole pages of 64 k-row batches.
    const ROW_GROUP: usize = 128 * 1024;

    pub fn append(&mut self, batch: &RecordBatch) -> Result<(), StoreError> {
        self.writer
            .write(batch)
            .map_err(|source| StoreError::Parquet { path: self.partial.display().to_string(), source })?;
        self.rows += batch.num_rows();
        Ok(())
    }

    /// Rows appended so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Closes and fsyncs the file, returning its path.
    fn finish(self) -> Result<PathBuf, StoreError> {
        let path = self.partial.display().to_string();
        let file = self.writer.into_inner().map_err(|source| StoreError::Parquet { path: path.clone(), source })?;
        file.sync_all().map_err(|source| StoreError::Io { path, source })?;
        Ok(self.partial)
    }
}
