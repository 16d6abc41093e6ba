//! The embedded store under `<data>/tables/`: each derived table as parts by month, `rejected` as
//! one file, and `events` as segments that are only appended to (`convoflow_schema::files`).
//!
//! A write replaces every derived table it is given and adds one segment of the events it was
//! given; a resumed replay's write replaces only the parts its changes fall in. Each file is
//! written beside its final name and fsynced; then the files are renamed into place (and parts
//! left empty removed), so a reader sees the old or the new file, never a torn one. The new `events` segment is
//! renamed first: `events` is the source of truth the next replay rebuilds all derived tables
//! from, so a crash between renames heals on the next replay.
//!
//! `<data>/tables/generation` names the operator state (`<data>/state`, saved by a replay before
//! its tables, or by `serve` just before a snapshot takes its tables) that these tables were
//! derived with. Every write removes it before renaming any file; a writer that saved state
//! writes it again after its last rename. So state is used only with the very events it derived,
//! and a crash half-way makes the next start re-feed the stored events instead.

use convoflow_operators::{RejectedRow, TableSet};
use convoflow_schema::files::{
    event_segments, events_dir, part_path, row_parts, table_files, table_parts, whole_table_path, Segment,
};
use convoflow_schema::{rejected_from_batch, table_batches, Rows, TableBatches};
use convoflow_schema::{schema, DERIVED_TABLES as DERIVED};
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
use std::collections::{BTreeMap, HashMap};
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
    /// Opens (creating if needed) the store in `data_dir`. A store from before `events` segments
    /// has its `events.parquet` moved to segment `0-0`; what a crash left over from a write or a
    /// merge of segments is removed.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let dir = data_dir.join("tables");
        let events = events_dir(&dir);
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| StoreError::Io { path, source }
        };
        std::fs::create_dir_all(&events).map_err(io(&events))?;
        let store = EmbeddedStore { dir };
        let legacy = store.dir.join("events.parquet");
        if legacy.is_file() {
            std::fs::rename(&legacy, events.join(Segment::name(0, 0))).map_err(io(&legacy))?;
            store.sync_dir()?;
        }
        remove_partials(&events)?;
        // And what a merge left over.
        store.live_segments()?;
        for table in DERIVED {
            store.split_whole_table(table)?;
        }
        Ok(store)
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
        let parts = DERIVED.iter().map(|table| self.dir.join(table)).filter(|dir| dir.is_dir());
        for dir in [self.dir.clone(), events_dir(&self.dir)].into_iter().chain(parts) {
            File::open(&dir)
                .and_then(|dir| dir.sync_all())
                .map_err(|source| StoreError::Io { path: dir.display().to_string(), source })?;
        }
        Ok(())
    }

    /// A table's place, as errors name it.
    fn shown(&self, table: &str) -> String {
        self.dir.join(table).display().to_string()
    }

    /// A derived table kept whole (by a store from before parts) is written as parts, which
    /// replace it once they are all in place; partial files a crash left are removed.
    fn split_whole_table(&self, table: &str) -> Result<(), StoreError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| StoreError::Io { path, source }
        };
        remove_partials(&self.dir.join(table))?;
        let whole = whole_table_path(&self.dir, table);
        if !whole.is_file() {
            return Ok(());
        }
        let batches: Vec<RecordBatch> = read_file(&whole)?.collect::<Result<_, _>>()?;
        for file in self.write_parts(table, &batches)? {
            file.install()?;
        }
        std::fs::remove_file(&whole).map_err(io(&whole))?;
        self.sync_dir()
    }

    /// The `events` segments, in order.
    fn segments(&self) -> Result<Vec<Segment>, StoreError> {
        Ok(self.listed_segments()?.0)
    }

    /// The `events` segments, in order, after removing what a merge left over (the writer's part
    /// of [`EmbeddedStore::segments`]: at open, and before merging).
    fn live_segments(&self) -> Result<Vec<Segment>, StoreError> {
        let (live, stale) = self.listed_segments()?;
        remove_files(stale)?;
        Ok(live)
    }

    fn listed_segments(&self) -> Result<(Vec<Segment>, Vec<PathBuf>), StoreError> {
        event_segments(&self.dir)
            .map_err(|source| StoreError::Io { path: events_dir(&self.dir).display().to_string(), source })
    }

    /// Every file of `table` read whole.
    fn read_table(&self, table: &str) -> Result<Vec<RecordBatch>, StoreError> {
        let files =
            table_files(&self.dir, table).map_err(|source| StoreError::Io { path: self.shown(table), source })?;
        let mut batches = Vec::new();
        for file in files {
            for batch in read_file(&file)? {
                batches.push(batch?);
            }
        }
        Ok(batches)
    }

    fn load<R>(
        &self,
        table: &str,
        convert: fn(&RecordBatch) -> Result<Vec<R>, ArrowError>,
    ) -> Result<Vec<R>, StoreError> {
        let mut rows = Vec::new();
        for batch in self.read_table(table)? {
            let converted = convert(&batch).map_err(|source| StoreError::Arrow { path: self.shown(table), source })?;
            rows.extend(converted);
        }
        Ok(rows)
    }

    /// The files of the `events` table, in order, and how many events they hold (from their
    /// footers): read only if they are needed ([`read_events`]).
    pub fn event_files(&self) -> Result<(Vec<PathBuf>, u64), StoreError> {
        let mut rows = 0;
        let mut paths = Vec::new();
        for segment in self.segments()? {
            rows += file_rows(&segment.path)?;
            paths.push(segment.path);
        }
        Ok((paths, rows))
    }

    /// Every accepted event in the store, as the `events` table's batches (of 64 k rows).
    pub fn load_events(&self) -> Result<Vec<RecordBatch>, StoreError> {
        read_events(self.event_files()?.0).collect()
    }

    /// Every derived table's stored batches, read one thread per table.
    pub fn read_derived(&self) -> Result<Vec<(&'static str, Vec<RecordBatch>)>, StoreError> {
        on_threads(DERIVED, |table| Ok((*table, self.read_table(table)?))).into_iter().collect()
    }

    /// Every rejection in the store.
    pub fn load_rejected(&self) -> Result<Vec<RejectedRow>, StoreError> {
        self.load("rejected", rejected_from_batch)
    }

    /// Starts the next `events` segment, appended to as events come.
    pub fn events_writer(&self) -> Result<TableWriter, StoreError> {
        let next = self.segments()?.last().map_or(1, |segment| segment.last + 1);
        TableWriter::create(events_dir(&self.dir).join(Segment::name(next, next)), "events", TableWriter::ROW_GROUP)
    }

    /// Adds `events` as a segment (what it was given, then `tables.events`) and replaces the
    /// derived tables with `tables` and `rejected`.
    pub fn write(&self, events: TableWriter, tables: &TableSet, rejected: &[RejectedRow]) -> Result<(), StoreError> {
        let (events, batches) = self.split_events(events, tables, rejected, Rows::Contents)?;
        let mut files: Vec<Written> = events.into_iter().collect();
        files.extend(self.encode(&batches)?);
        self.install_files(files)
    }

    /// Every table of `tables` as batches: `events` appended to `events` (its segment then
    /// finished, and returned unless it holds none), the others (`rejected` first) returned as
    /// batches.
    fn split_events(
        &self,
        mut events: TableWriter,
        tables: &TableSet,
        rejected: &[RejectedRow],
        rows: Rows,
    ) -> Result<(Option<Written>, Vec<TableBatches>), StoreError> {
        let mut batches = table_batches(tables, rejected, rows)
            .map_err(|source| StoreError::Arrow { path: self.dir.display().to_string(), source })?;
        if let Some(at) = batches.iter().position(|table| table.table == "events") {
            for batch in &batches.remove(at).batches {
                events.append(batch)?;
            }
        }
        Ok((events.finish()?, batches))
    }

    /// Applies a resumed replay's changes to the stored derived tables, adds `events` as a
    /// segment and replaces `rejected` with `rejected`; returns each derived table's rows after.
    /// A part the changes leave alone keeps its file. Each changed one is read, its retracted
    /// rows taken out and its inserted rows added after ([`apply_changes`]), one thread per table.
    pub fn write_changes(
        &self,
        events: TableWriter,
        changes: &TableSet,
        rejected: &[RejectedRow],
    ) -> Result<Vec<(&'static str, usize)>, StoreError> {
        let (events, mut batches) = self.split_events(events, changes, rejected, Rows::Updates)?;
        let mut files: Vec<Written> = events.into_iter().collect();
        if let Some(at) = batches.iter().position(|table| table.table == "rejected") {
            files.extend(self.encode(&[batches.remove(at)])?);
        }
        let written = on_threads(&batches, |changed| self.change_parts(changed));
        let mut counts = Vec::new();
        for (changed, result) in batches.iter().zip(written) {
            let (changed_files, rows) = result?;
            files.extend(changed_files);
            counts.push((changed.table, rows));
        }
        self.install_files(files)?;
        Ok(counts)
    }

    /// Writes (beside their places) the tables named in `batches`, `events`' batches as a new
    /// segment; [`EmbeddedStore::install`] then puts them in place. The files are encoded
    /// concurrently, one thread per table.
    pub fn prepare(&self, batches: &[TableBatches]) -> Result<Prepared, StoreError> {
        let files = on_threads(batches, |table| {
            if table.table != "events" {
                return self.write_table(table.table, &table.batches);
            }
            let mut events = self.events_writer()?;
            for batch in &table.batches {
                events.append(batch)?;
            }
            Ok(events.finish()?.into_iter().collect())
        });
        let mut prepared = Vec::new();
        for table in files {
            prepared.extend(table?);
        }
        Ok(Prepared(prepared))
    }

    /// Each table's partial file, encoded one thread per table.
    fn encode(&self, batches: &[TableBatches]) -> Result<Vec<Written>, StoreError> {
        let mut written = Vec::new();
        for table in on_threads(batches, |table| self.write_table(table.table, &table.batches)) {
            written.extend(table?);
        }
        Ok(written)
    }

    /// Renames prepared files into place, in the order their tables were given (SPEC order puts
    /// `events` first).
    pub fn install(&self, prepared: Prepared) -> Result<(), StoreError> {
        self.install_files(prepared.0)
    }

    /// Renames the written files into place, in order.
    fn install_files(&self, files: Vec<Written>) -> Result<(), StoreError> {
        // From the first rename on, the tables are no longer those the saved state derived.
        match std::fs::remove_file(self.generation_path()) {
            Ok(()) => self.sync_dir()?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(StoreError::Io { path: self.generation_path().display().to_string(), source }),
        }
        for file in files {
            file.install()?;
        }
        self.sync_dir()
    }

    /// Writes and fsyncs a table's next files beside their places: a derived table's parts (and
    /// which parts it no longer has), `rejected` whole.
    fn write_table(&self, table: &str, batches: &[RecordBatch]) -> Result<Vec<Written>, StoreError> {
        if DERIVED.contains(&table) {
            return self.write_parts(table, batches);
        }
        Ok(vec![write_file(whole_table_path(&self.dir, table), table, batches)?])
    }

    /// A derived table's rows as its parts' next files; the parts it had and has no rows for are
    /// removed.
    fn write_parts(&self, table: &str, batches: &[RecordBatch]) -> Result<Vec<Written>, StoreError> {
        let mut parts: BTreeMap<String, Vec<RecordBatch>> = BTreeMap::new();
        for batch in batches {
            for (part, rows) in
                row_parts(batch).map_err(|source| StoreError::Arrow { path: self.shown(table), source })?
            {
                let rows = take_record_batch(batch, &UInt32Array::from(rows))
                    .map_err(|source| StoreError::Arrow { path: self.shown(table), source })?;
                parts.entry(part).or_default().push(rows);
            }
        }
        let mut written: Vec<Written> = self
            .stored_parts(table)?
            .into_iter()
            .filter(|(part, _)| !parts.contains_key(part))
            .map(|(_, path)| Written::Removed(path))
            .collect();
        for (part, batches) in parts {
            written.push(self.write_part(table, &part, &batches)?);
        }
        Ok(written)
    }

    fn stored_parts(&self, table: &str) -> Result<BTreeMap<String, PathBuf>, StoreError> {
        table_parts(&self.dir, table).map_err(|source| StoreError::Io { path: self.shown(table), source })
    }

    fn write_part(&self, table: &str, part: &str, batches: &[RecordBatch]) -> Result<Written, StoreError> {
        let dir = self.dir.join(table);
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io { path: dir.display().to_string(), source })?;
        write_file(part_path(&self.dir, table, part), table, batches)
    }

    /// One derived table's changes as the next files of the parts they fall in (a part left
    /// without rows is removed), and the table's rows after.
    fn change_parts(&self, changed: &TableBatches) -> Result<(Vec<Written>, usize), StoreError> {
        let arrow = |source| StoreError::Arrow { path: self.shown(changed.table), source };
        let stored = self.stored_parts(changed.table)?;
        let mut rows = 0;
        for path in stored.values() {
            rows += file_rows(path)? as usize;
        }
        let mut written = Vec::new();
        for (part, changes) in split_changes(changed, row_parts).map_err(arrow)? {
            let batches: Vec<RecordBatch> = match stored.get(&part) {
                Some(path) => read_file(path)?.collect::<Result<_, _>>()?,
                None => Vec::new(),
            };
            let before: usize = batches.iter().map(RecordBatch::num_rows).sum();
            let after = apply_changes(batches, &changes).map_err(arrow)?;
            let after_rows: usize = after.iter().map(RecordBatch::num_rows).sum();
            rows = rows + after_rows - before;
            match (after_rows, stored.get(&part)) {
                (0, Some(path)) => written.push(Written::Removed(path.clone())),
                (0, None) => {}
                _ => written.push(self.write_part(changed.table, &part, &after)?),
            }
        }
        Ok((written, rows))
    }

    /// Merges the last `events` segments while the one before the last is no more than twice as
    /// large as the last and the two together hold at most [`MERGED_SEGMENT_ROWS`] events. So a
    /// store has few segments (about one per doubling, plus one per 4 M events) and each event is
    /// rewritten a few times at most, while a replay of one late event into a large store rewrites
    /// nothing. The tables' contents stay the same, so the operator state stays theirs. What a
    /// merge replaces is left over (no longer read, see `convoflow_schema::files`) until the next
    /// merge or open removes it, so a query that listed those files just before can still read
    /// them. Returns how many merges were made.
    pub fn merge_events(&self) -> Result<usize, StoreError> {
        let mut segments = Vec::new();
        for segment in self.live_segments()? {
            let rows = file_rows(&segment.path)?;
            segments.push((segment, rows));
        }
        let mut merges = 0;
        while let [.., (before, before_rows), (last, last_rows)] = segments.as_slice() {
            if *before_rows > 2 * *last_rows || before_rows + last_rows > MERGED_SEGMENT_ROWS {
                break;
            }
            let path = events_dir(&self.dir).join(Segment::name(before.first, last.last));
            let mut writer = TableWriter::create(path.clone(), "events", TableWriter::ROW_GROUP)?;
            for batch in read_events(vec![before.path.clone(), last.path.clone()]) {
                writer.append(&batch?)?;
            }
            let rows = writer.rows() as u64;
            if let Some(written) = writer.finish()? {
                written.install()?;
            }
            self.sync_dir()?;
            let merged = Segment { first: before.first, last: last.last, path };
            segments.truncate(segments.len() - 2);
            segments.push((merged, rows));
            merges += 1;
        }
        Ok(merges)
    }
}

/// Removes the `.partial` files a crash left in `dir` (none if there is no `dir`).
fn remove_partials(dir: &Path) -> Result<(), StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(StoreError::Io { path: dir.display().to_string(), source }),
    };
    let partials = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|extension| extension == "partial"));
    remove_files(partials.collect())
}

fn remove_files(paths: Vec<PathBuf>) -> Result<(), StoreError> {
    for path in paths {
        std::fs::remove_file(&path).map_err(|source| StoreError::Io { path: path.display().to_string(), source })?;
    }
    Ok(())
}

/// Segments are merged up to this many events (4 Mi); larger ones stay as they are.
pub const MERGED_SEGMENT_ROWS: u64 = 4 << 20;

/// `batches` of `table` written and fsynced beside `path`, to be renamed there.
fn write_file(path: PathBuf, table: &str, batches: &[RecordBatch]) -> Result<Written, StoreError> {
    let mut writer = TableWriter::create(path, table, DEFAULT_MAX_ROW_GROUP_ROW_COUNT)?;
    for batch in batches {
        writer.append(batch)?;
    }
    writer.finish_table()
}

/// Rows in a Parquet file, from its footer (0 for a file that is not there).
fn file_rows(path: &Path) -> Result<u64, StoreError> {
    Ok(open_parquet(path)?.map_or(0, |builder| builder.metadata().file_metadata().num_rows().max(0) as u64))
}

/// A Parquet file's reader, before it reads anything; `None` for a file that is not there.
fn open_parquet(path: &Path) -> Result<Option<ParquetRecordBatchReaderBuilder<File>>, StoreError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StoreError::Io { path: path.display().to_string(), source }),
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|source| StoreError::Parquet { path: path.display().to_string(), source })?;
    Ok(Some(builder))
}

/// A Parquet file's batches (of 64 k rows) as they are read; none for a file that is not there.
fn read_file(path: &Path) -> Result<Box<dyn Iterator<Item = Result<RecordBatch, StoreError>> + Send>, StoreError> {
    let shown = path.display().to_string();
    let Some(builder) = open_parquet(path)? else { return Ok(Box::new(std::iter::empty())) };
    let reader = builder
        .with_batch_size(64 * 1024)
        .build()
        .map_err(|source| StoreError::Parquet { path: shown.clone(), source })?;
    Ok(Box::new(reader.map(move |batch| batch.map_err(|source| StoreError::Arrow { path: shown.clone(), source }))))
}

/// The batches of `events` files, read one after another as they are needed, under the declared
/// schema (a file's may differ in metadata), as every writer expects.
pub fn read_events(paths: Vec<PathBuf>) -> impl Iterator<Item = Result<RecordBatch, StoreError>> + Send {
    let schema = schema("events");
    paths.into_iter().flat_map(move |path| {
        let schema = schema.clone();
        let shown = path.display().to_string();
        let batches = match read_file(&path) {
            Ok(batches) => batches,
            Err(error) => Box::new(std::iter::once(Err(error))),
        };
        batches.map(move |batch| {
            let batch = batch?;
            match &schema {
                Some(schema) => RecordBatch::try_new(schema.clone(), batch.columns().to_vec())
                    .map_err(|source| StoreError::Arrow { path: shown.clone(), source }),
                None => Ok(batch),
            }
        })
    })
}

/// Files written beside their places, to be renamed there ([`EmbeddedStore::install`]).
pub struct Prepared(Vec<Written>);

/// A file written and fsynced beside its place, to be renamed there; or a part to remove.
enum Written {
    File { partial: PathBuf, path: PathBuf },
    Removed(PathBuf),
}

impl Written {
    fn install(self) -> Result<(), StoreError> {
        match self {
            Written::File { partial, path } => std::fs::rename(&partial, &path)
                .map_err(|source| StoreError::Io { path: path.display().to_string(), source }),
            Written::Removed(path) => match std::fs::remove_file(&path) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    Err(StoreError::Io { path: path.display().to_string(), source: error })
                }
                _ => Ok(()),
            },
        }
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

/// `changes` split into groups of rows by `group` (each batch's groups, named, with their rows),
/// each group's rows with their diffs, by name.
pub fn split_changes(
    changes: &TableBatches,
    group: impl Fn(&RecordBatch) -> Result<Vec<(String, Vec<u32>)>, ArrowError>,
) -> Result<BTreeMap<String, TableBatches>, ArrowError> {
    let mut groups: BTreeMap<String, TableBatches> = BTreeMap::new();
    let mut at = 0;
    for batch in &changes.batches {
        for (name, rows) in group(batch)? {
            let part = groups.entry(name).or_insert_with(|| TableBatches {
                table: changes.table,
                batches: Vec::new(),
                diffs: Vec::new(),
            });
            part.diffs.extend(rows.iter().map(|&row| changes.diffs[at + row as usize]));
            part.batches.push(take_record_batch(batch, &UInt32Array::from(rows))?);
        }
        at += batch.num_rows();
    }
    Ok(groups)
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

/// A table's next file being written beside its place (an `events` segment, for a replay): each
/// appended batch is encoded at once, and only the row group being filled is held (encoded), so a
/// replay holds none of its events as rows.
pub struct TableWriter {
    partial: PathBuf,
    path: PathBuf,
    writer: ArrowWriter<File>,
    rows: usize,
}

impl TableWriter {
    /// Rows per row group: 1/8 of Parquet's default, so what is held while filling one stays
    /// small, and DataFusion still reads whole pages of 64 k-row batches.
    const ROW_GROUP: usize = 128 * 1024;

    /// A writer of `table` to `<path>.partial`, with row groups of at most `row_group` rows.
    fn create(path: PathBuf, table: &str, row_group: usize) -> Result<Self, StoreError> {
        let mut partial = path.clone().into_os_string();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
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
        Ok(TableWriter { partial, path, writer, rows: 0 })
    }

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

    /// Closes and fsyncs the file, to be renamed into place.
    fn finish_table(self) -> Result<Written, StoreError> {
        let path = self.partial.display().to_string();
        let file = self.writer.into_inner().map_err(|source| StoreError::Parquet { path: path.clone(), source })?;
        file.sync_all().map_err(|source| StoreError::Io { path, source })?;
        Ok(Written::File { partial: self.partial, path: self.path })
    }

    /// As [`TableWriter::finish_table`], for an `events` segment: one that holds no events is
    /// removed instead (a replay of only duplicates adds no segment).
    fn finish(self) -> Result<Option<Written>, StoreError> {
        if self.rows > 0 {
            return self.finish_table().map(Some);
        }
        let partial = self.partial.clone();
        drop(self.writer);
        std::fs::remove_file(&partial)
            .map_err(|source| StoreError::Io { path: partial.display().to_string(), source })?;
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use convoflow_events::{parse_event, Event};
    use convoflow_schema::{batches, events_from_batch};

    /// Adds a segment of events `ids` to the store, as a replay or snapshot does.
    fn add_segment(store: &EmbeddedStore, ids: std::ops::Range<u32>) {
        let events: Vec<Event> = ids
            .map(|n| {
                let line = format!(
                    r#"{{"event_id":"e{n}","tenant_id":"t","ts":{n},"type":"touch","contact_id":"c","channel":"ad"}}"#
                );
                parse_event(line.as_bytes()).expect("event")
            })
            .collect();
        let mut writer = store.events_writer().expect("writer");
        for batch in batches::<Event, _>(&events).expect("batches") {
            writer.append(&batch).expect("append");
        }
        store.install_files(writer.finish().expect("finish").into_iter().collect()).expect("install");
    }

    fn stored_ids(store: &EmbeddedStore) -> Vec<String> {
        let batches = store.load_events().expect("load");
        batches
            .iter()
            .flat_map(|batch| events_from_batch(batch).expect("events"))
            .map(|event| event.event_id.to_string())
            .collect()
    }

    fn ranges(store: &EmbeddedStore) -> Vec<(u64, u64)> {
        store.segments().expect("segments").iter().map(|segment| (segment.first, segment.last)).collect()
    }

    fn ids(range: std::ops::Range<u32>) -> Vec<String> {
        range.map(|n| format!("e{n}")).collect()
    }

    #[test]
    fn events_are_appended_as_segments_and_merged_only_while_the_one_before_is_at_most_twice_the_last() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        add_segment(&store, 0..10);
        add_segment(&store, 10..11);
        assert_eq!(store.merge_events().expect("merge"), 0, "10 events before 1: a late event rewrites nothing");
        assert_eq!(ranges(&store), vec![(1, 1), (2, 2)]);
        add_segment(&store, 11..12);
        assert_eq!(store.merge_events().expect("merge"), 1);
        assert_eq!(ranges(&store), vec![(1, 1), (2, 3)]);
        add_segment(&store, 12..17);
        assert_eq!(store.merge_events().expect("merge"), 2, "2 then 10 are at most twice what follows them");
        assert_eq!(ranges(&store), vec![(1, 4)]);
        assert_eq!(stored_ids(&store), ids(0..17));
        assert_eq!(store.merge_events().expect("merge"), 0);
        let names: Vec<String> = std::fs::read_dir(events_dir(&store.dir))
            .expect("dir")
            .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![Segment::name(1, 4)], "merged segments are removed by the next merge");
    }

    #[test]
    fn segments_left_beside_their_merge_are_not_read_and_are_removed_at_open() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        add_segment(&store, 0..3);
        add_segment(&store, 3..5);
        let events = events_dir(&store.dir);
        assert_eq!(store.merge_events().expect("merge"), 1);
        // What a merge replaced is left until the next merge or open (as after a crash there).
        for name in [Segment::name(1, 1), Segment::name(2, 2)] {
            assert!(events.join(&name).exists(), "{name} is left over");
        }
        std::fs::write(events.join("0000000003-0000000003.parquet.partial"), b"torn").expect("torn");
        assert_eq!(stored_ids(&store), ids(0..5), "the leftovers are not part of the table");
        let store = EmbeddedStore::open(dir.path()).expect("open again");
        assert_eq!(std::fs::read_dir(&events).expect("dir").count(), 1, "only the merge is left");
        assert_eq!(stored_ids(&store), ids(0..5));
        add_segment(&store, 5..6);
        assert_eq!(ranges(&store), vec![(1, 2), (3, 3)]);
    }

    #[test]
    fn a_store_from_before_segments_keeps_its_events_as_the_first_segment() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        add_segment(&store, 0..4);
        let tables = dir.path().join("tables");
        std::fs::rename(events_dir(&tables).join(Segment::name(1, 1)), tables.join("events.parquet"))
            .expect("as before");
        std::fs::remove_dir(events_dir(&tables)).expect("no segments");
        let store = EmbeddedStore::open(dir.path()).expect("open the old store");
        assert!(!tables.join("events.parquet").exists());
        assert_eq!(ranges(&store), vec![(0, 0)]);
        add_segment(&store, 4..6);
        assert_eq!(ranges(&store), vec![(0, 0), (1, 1)]);
        assert_eq!(stored_ids(&store), ids(0..6));
    }

    fn contact(id: &str, first_seen_ts: i64, messages: i64) -> convoflow_operators::ContactRow {
        convoflow_operators::ContactRow {
            tenant_id: "t".into(),
            contact_id: id.into(),
            first_seen_ts,
            first_inbound_ts: None,
            last_inbound_ts: None,
            inbound_messages: messages,
            cohort_week: None,
        }
    }

    fn contacts(updates: Vec<(convoflow_operators::ContactRow, i64)>) -> TableSet {
        TableSet { contacts: convoflow_operators::Collection { updates }, ..TableSet::default() }
    }

    fn stored_contacts(store: &EmbeddedStore) -> Vec<(String, i64)> {
        let mut rows: Vec<(String, i64)> = store
            .read_table("contacts")
            .expect("read")
            .iter()
            .flat_map(|batch| {
                use datafusion::arrow::array::AsArray;
                let ids = batch.column_by_name("contact_id").expect("column").as_string::<i32>();
                let counts = batch
                    .column_by_name("inbound_messages")
                    .expect("column")
                    .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
                ids.iter().flatten().map(str::to_owned).zip(counts.values().to_vec()).collect::<Vec<_>>()
            })
            .collect();
        rows.sort();
        rows
    }

    fn inode(path: &Path) -> u64 {
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).expect("part"))
    }

    /// A derived table is parts by month; changes rewrite only the parts they fall in, a part left
    /// without rows is removed, and a store from before parts has its table moved into parts.
    #[test]
    fn changes_rewrite_only_the_parts_of_their_months() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        let (january, march) = (1_767_225_600_000, 1_772_323_200_000); // 2026-01-01, 2026-03-01
        let first =
            contacts(vec![(contact("a", january, 1), 1), (contact("b", march, 1), 1), (contact("c", march, 1), 1)]);
        store.write(store.events_writer().expect("writer"), &first, &[]).expect("write");
        let part = |name: &str| part_path(&store.dir, "contacts", name);
        assert!(part("2026-01").is_file() && part("2026-03").is_file());
        let (january_file, march_file) = (inode(&part("2026-01")), inode(&part("2026-03")));

        let change = contacts(vec![(contact("b", march, 1), -1), (contact("b", march, 2), 1)]);
        let counts = store.write_changes(store.events_writer().expect("writer"), &change, &[]).expect("write");
        assert!(counts.contains(&("contacts", 3)), "{counts:?}");
        assert_eq!(inode(&part("2026-01")), january_file, "January is not rewritten");
        assert_ne!(inode(&part("2026-03")), march_file, "March is");
        assert_eq!(stored_contacts(&store), vec![("a".into(), 1), ("b".into(), 2), ("c".into(), 1)]);

        let gone = contacts(vec![(contact("a", january, 1), -1)]);
        store.write_changes(store.events_writer().expect("writer"), &gone, &[]).expect("write");
        assert!(!part("2026-01").exists(), "a part without rows is removed");
        assert_eq!(table_files(&store.dir, "contacts").expect("files"), vec![part("2026-03")]);

        // A store from before parts: its whole table becomes parts when it is opened.
        let whole = whole_table_path(&store.dir, "contacts");
        let batches = store.read_table("contacts").expect("read");
        let mut writer = TableWriter::create(whole.clone(), "contacts", 1024).expect("writer");
        for batch in &batches {
            writer.append(batch).expect("append");
        }
        writer.finish_table().expect("finish").install().expect("install");
        std::fs::remove_dir_all(store.dir.join("contacts")).expect("remove the parts");
        assert_eq!(table_files(&store.dir, "contacts").expect("files"), vec![whole.clone()]);
        let store = EmbeddedStore::open(dir.path()).expect("open");
        assert!(!whole.exists());
        assert_eq!(table_files(&store.dir, "contacts").expect("files"), vec![part("2026-03")]);
        assert_eq!(stored_contacts(&store), vec![("b".into(), 2), ("c".into(), 1)]);
    }
}
