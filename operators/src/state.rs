//! Persisted operator state (issue 13): every keyed operator's per-key state, saved by each worker
//! beside the tables, and looked up key by key when an epoch touches a key, instead of re-feeding
//! every stored event or decoding every saved key before the first epoch.
//!
//! A worker's operators register their [`Keyed`] maps with its [`Registry`] while the dataflow is
//! built (the registry is set for the build only, see [`building`]). Each operator's keys on each
//! worker are one file, `<operator>.<worker>.state`: entries sorted by `(route, key bytes)`, then a
//! sparse index (every [`INDEX_EVERY`]th entry's route and offset), then a footer (format, tag,
//! the workers that saved it). Opening a file reads only its index; a key is found by a binary
//! search of the index and a scan of at most [`INDEX_EVERY`] entries, read with one `pread`.
//!
//! Held in memory are only the keys an epoch touched since the last save.
//! [`crate::Driver::save`] has each worker merge those keys with the file it loaded from into
//! a new file: entries of keys it did not touch are copied as bytes, not decoded. The new file is
//! then what the worker looks keys up in, and the keys in memory are dropped.
//!
//! A state saved by as many workers is looked up in the worker's own file; saved by another
//! number, a key is looked up in the file its route chose then (`route % saved_workers`, as
//! timely's exchange does), and a save merges the keys of every old file that now route here.
//!
//! A resumed dataflow either gives, at epoch 0, every row its saved keys derive (for a sink that
//! holds its tables in memory and was given none: `Resume::Rows`) by scanning the files, or gives
//! nothing and only the changes of later epochs (`Resume::Changes`: a store that keeps its derived
//! tables). With rows, each operator ignores what reaches it at epoch 0: that is what the
//! operators before it restored, and its own saved state has it folded in already.

use rustc_hash::FxHashMap;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::fs::File;
use std::hash::Hash;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Bumped whenever any operator's state type, or the file layout, changes: a state of another
/// format is not loaded.
pub const STATE_FORMAT: u32 = 3;

/// Every this many entries, the index records one (its route and offset).
pub const INDEX_EVERY: usize = 32;

/// The last bytes of every state file.
const MAGIC: &[u8; 8] = b"CFSTATE3";

/// An entry's head: route (8 bytes), key length (4), value length (4).
const HEAD: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: cannot decode operator state: {source}")]
    Decode { path: PathBuf, source: bincode::Error },
    #[error("cannot encode the state of operator {operator}: {source}")]
    Encode { operator: String, source: bincode::Error },
    #[error("{path}: not a whole state file of this build ({what})")]
    Torn { path: PathBuf, what: &'static str },
    #[error("{path}: format {found}, this build reads {STATE_FORMAT}")]
    Format { path: PathBuf, found: u32 },
    #[error("{path}: saved with tag `{found}`, expected `{expected}`")]
    Tag { path: PathBuf, found: String, expected: String },
    #[error("{path}: saved by {found} workers, as its first file says {expected}")]
    Workers { path: PathBuf, found: usize, expected: usize },
}

/// How a dataflow built from a saved state starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// Epoch 0 gives every row the saved keys derive (the sink was given none).
    Rows,
    /// Epoch 0 gives nothing; later epochs give only their changes (the sink holds its tables).
    Changes,
}

/// A state file's footer.
#[derive(Serialize, Deserialize)]
struct Footer {
    format: u32,
    /// What the state belongs to (its tables' generation, the tenants configuration, the hashes).
    tag: String,
    operator: String,
    workers: usize,
    entries: u64,
    /// Where the index starts; the entries end there.
    index_at: u64,
}

pub fn state_path(dir: &Path, operator: &str, worker: usize) -> PathBuf {
    dir.join(format!("{operator}.{worker}.state"))
}

/// One saved state file, open for lookups and scans.
struct StateFile {
    path: PathBuf,
    file: File,
    /// `(route, offset)` of every [`INDEX_EVERY`]th entry.
    index: Vec<(u64, u64)>,
    entries_end: u64,
    workers: usize,
}

/// One entry as stored: its route, key bytes and value bytes.
struct Entry {
    route: u64,
    key: Vec<u8>,
    value: Vec<u8>,
}

impl Entry {
    fn order(&self) -> (u64, &[u8]) {
        (self.route, &self.key)
    }
}

impl StateFile {
    fn open(path: PathBuf, tag: &str, operator: &str) -> Result<Self, StateError> {
        let io = |source| StateError::Io { path: path.clone(), source };
        let file = File::open(&path).map_err(io)?;
        let length = file.metadata().map_err(io)?.len();
        let torn = |what| StateError::Torn { path: path.clone(), what };
        if length < 16 {
            return Err(torn("too short"));
        }
        let mut tail = [0u8; 16];
        file.read_exact_at(&mut tail, length - 16).map_err(io)?;
        if &tail[8..] != MAGIC {
            return Err(torn("no end marker"));
        }
        let footer_length = u64::from_le_bytes(tail[..8].try_into().unwrap_or_default());
        let footer_at = length.checked_sub(16 + footer_length).ok_or_else(|| torn("footer length"))?;
        let mut bytes = vec![0u8; footer_length as usize];
        file.read_exact_at(&mut bytes, footer_at).map_err(io)?;
        let footer: Footer =
            bincode::deserialize(&bytes).map_err(|source| StateError::Decode { path: path.clone(), source })?;
        if footer.format != STATE_FORMAT {
            return Err(StateError::Format { path, found: footer.format });
        }
        if footer.tag != tag {
            return Err(StateError::Tag { path, found: footer.tag, expected: tag.to_owned() });
        }
        if footer.operator != operator
            || footer.index_at > footer_at
            || !(footer_at - footer.index_at).is_multiple_of(16)
        {
            return Err(torn("footer"));
        }
        let mut raw = vec![0u8; (footer_at - footer.index_at) as usize];
        file.read_exact_at(&mut raw, footer.index_at).map_err(io)?;
        let index = raw
            .chunks_exact(16)
            .map(|pair| {
                let (route, offset) = pair.split_at(8);
                (
                    u64::from_le_bytes(route.try_into().unwrap_or_default()),
                    u64::from_le_bytes(offset.try_into().unwrap_or_default()),
                )
            })
            .collect();
        Ok(StateFile { path, file, index, entries_end: footer.index_at, workers: footer.workers })
    }

    fn io(&self) -> impl FnOnce(std::io::Error) -> StateError + '_ {
        |source| StateError::Io { path: self.path.clone(), source }
    }

    /// The value bytes saved for `key` (encoded), whose route is `route`.
    fn get(&self, route: u64, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        // The last indexed entry before `route`: equal routes may start before an indexed one.
        let at = self.index.partition_point(|&(indexed, _)| indexed < route);
        let Some(&(_, start)) = self.index.get(at.saturating_sub(1)) else { return Ok(None) };
        // The first indexed entry past `route`: every entry from there on is past it too.
        let past = self.index.partition_point(|&(indexed, _)| indexed <= route);
        let end = self.index.get(past).map_or(self.entries_end, |&(_, offset)| offset);
        let mut block = vec![0u8; (end - start) as usize];
        self.file.read_exact_at(&mut block, start).map_err(self.io())?;
        let mut rest = &block[..];
        while rest.len() >= HEAD {
            let (found, key_length, value_length) = head(rest);
            let (key_end, value_end) = (HEAD + key_length, HEAD + key_length + value_length);
            if rest.len() < value_end {
                break;
            }
            match found.cmp(&route) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal if &rest[HEAD..key_end] == key => {
                    return Ok(Some(rest[key_end..value_end].to_vec()));
                }
                std::cmp::Ordering::Equal => {}
                std::cmp::Ordering::Greater => return Ok(None),
            }
            rest = &rest[value_end..];
        }
        Ok(None)
    }

    /// Every entry, in order.
    fn scan(&self) -> Scan<'_> {
        let entries = Positioned { file: &self.file, at: 0, end: self.entries_end };
        Scan { file: self, input: BufReader::with_capacity(1 << 20, entries) }
    }
}

fn head(bytes: &[u8]) -> (u64, usize, usize) {
    let route = bytes.get(0..8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes);
    let key = bytes.get(8..12).and_then(|b| b.try_into().ok()).map_or(0, u32::from_le_bytes);
    let value = bytes.get(12..16).and_then(|b| b.try_into().ok()).map_or(0, u32::from_le_bytes);
    (route, key as usize, value as usize)
}

/// A file's bytes `at..end` read with `pread`: scans never share the file's cursor (two scans of
/// one file, one after another, both start at its first entry).
struct Positioned<'a> {
    file: &'a File,
    at: u64,
    end: u64,
}

impl Read for Positioned<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let wanted = buffer.len().min(self.end.saturating_sub(self.at) as usize);
        let read = self.file.read_at(&mut buffer[..wanted], self.at)?;
        self.at += read as u64;
        Ok(read)
    }
}

struct Scan<'a> {
    file: &'a StateFile,
    input: BufReader<Positioned<'a>>,
}

impl Iterator for Scan<'_> {
    type Item = Result<Entry, StateError>;
    fn next(&mut self) -> Option<Self::Item> {
        let mut bytes = [0u8; HEAD];
        match self.input.read_exact(&mut bytes) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return None,
            Err(error) => return Some(Err(self.file.io()(error))),
        }
        let (route, key_length, value_length) = head(&bytes);
        let mut key = vec![0u8; key_length];
        let mut value = vec![0u8; value_length];
        let read = self.input.read_exact(&mut key).and_then(|()| self.input.read_exact(&mut value));
        Some(read.map(|()| Entry { route, key, value }).map_err(self.file.io()))
    }
}

/// Writes one state file: entries in order, then the index and footer (fsynced).
struct StateWriter {
    path: PathBuf,
    out: BufWriter<File>,
    written: u64,
    entries: u64,
    index: Vec<(u64, u64)>,
}

impl StateWriter {
    fn create(path: PathBuf) -> Result<Self, StateError> {
        // A file already there may be the one being merged from (saved again into the same
        // directory): unlinked, it lives on for its reader, where truncating it would not.
        match std::fs::remove_file(&path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(StateError::Io { path, source: error });
            }
            _ => {}
        }
        let file = File::create(&path).map_err(|source| StateError::Io { path: path.clone(), source })?;
        Ok(StateWriter {
            path,
            out: BufWriter::with_capacity(1 << 20, file),
            written: 0,
            entries: 0,
            index: Vec::new(),
        })
    }

    fn push(&mut self, route: u64, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        if self.entries.is_multiple_of(INDEX_EVERY as u64) {
            self.index.push((route, self.written));
        }
        let mut head = [0u8; HEAD];
        head[..8].copy_from_slice(&route.to_le_bytes());
        head[8..12].copy_from_slice(&(key.len() as u32).to_le_bytes());
        head[12..].copy_from_slice(&(value.len() as u32).to_le_bytes());
        let write =
            self.out.write_all(&head).and_then(|()| self.out.write_all(key)).and_then(|()| self.out.write_all(value));
        write.map_err(|source| StateError::Io { path: self.path.clone(), source })?;
        self.written += (HEAD + key.len() + value.len()) as u64;
        self.entries += 1;
        Ok(())
    }

    fn finish(mut self, tag: &str, operator: &str, workers: usize) -> Result<PathBuf, StateError> {
        let footer = Footer {
            format: STATE_FORMAT,
            tag: tag.to_owned(),
            operator: operator.to_owned(),
            workers,
            entries: self.entries,
            index_at: self.written,
        };
        let footer = bincode::serialize(&footer)
            .map_err(|source| StateError::Encode { operator: operator.to_owned(), source })?;
        let io = |source| StateError::Io { path: self.path.clone(), source };
        for &(route, offset) in &self.index {
            self.out
                .write_all(&route.to_le_bytes())
                .and_then(|()| self.out.write_all(&offset.to_le_bytes()))
                .map_err(io)?;
        }
        self.out.write_all(&footer).map_err(io)?;
        self.out.write_all(&(footer.len() as u64).to_le_bytes()).map_err(io)?;
        self.out.write_all(MAGIC).map_err(io)?;
        let file = self
            .out
            .into_inner()
            .map_err(|error| StateError::Io { path: self.path.clone(), source: error.into_error() })?;
        file.sync_all().map_err(|source| StateError::Io { path: self.path.clone(), source })?;
        Ok(self.path)
    }
}

/// The saved files one worker looks an operator's keys up in.
struct Backing {
    /// By the worker that saved them; only this worker's own when saved by as many workers.
    files: Vec<StateFile>,
    /// How many workers saved them.
    saved_by: usize,
    /// Whether `files` is every saved file (saved by another number of workers).
    all: bool,
}

impl Backing {
    fn open(dir: &Path, tag: &str, operator: &str, index: usize, workers: usize) -> Result<Self, StateError> {
        if let Ok(own) = StateFile::open(state_path(dir, operator, index), tag, operator) {
            if own.workers == workers {
                return Ok(Backing { files: vec![own], saved_by: workers, all: false });
            }
        }
        let first = StateFile::open(state_path(dir, operator, 0), tag, operator)?;
        let saved_by = first.workers;
        let mut files = vec![first];
        for other in 1..saved_by {
            let file = StateFile::open(state_path(dir, operator, other), tag, operator)?;
            if file.workers != saved_by {
                return Err(StateError::Workers { path: file.path, found: file.workers, expected: saved_by });
            }
            files.push(file);
        }
        Ok(Backing { files, saved_by, all: true })
    }

    fn file_for(&self, route: u64) -> Option<&StateFile> {
        if self.all {
            self.files.get((route % self.saved_by as u64) as usize)
        } else {
            self.files.first()
        }
    }

    /// Every saved entry that routes to worker `index` of `workers`, in `(route, key)` order.
    fn entries(&self, index: usize, workers: usize) -> Merged<'_> {
        let all = self.all;
        let heads = self
            .files
            .iter()
            .map(|file| {
                let keep = move |entry: &Result<Entry, StateError>| {
                    !all || entry.as_ref().map_or(true, |entry| entry.route % workers as u64 == index as u64)
                };
                let mut rest: Box<dyn Iterator<Item = Result<Entry, StateError>> + '_> =
                    Box::new(file.scan().filter(keep));
                Head { next: rest.next(), rest }
            })
            .collect();
        Merged { heads }
    }
}

/// A sorted sequence of entries with its next one taken out.
struct Head<'a> {
    next: Option<Result<Entry, StateError>>,
    rest: Box<dyn Iterator<Item = Result<Entry, StateError>> + 'a>,
}

/// The entries of several sorted files, as one sorted sequence.
struct Merged<'a> {
    heads: Vec<Head<'a>>,
}

impl Iterator for Merged<'_> {
    type Item = Result<Entry, StateError>;
    fn next(&mut self) -> Option<Self::Item> {
        let mut least: Option<usize> = None;
        for (at, head) in self.heads.iter().enumerate() {
            match (&head.next, least.and_then(|best| self.heads[best].next.as_ref())) {
                (None, _) => {}
                (Some(Err(_)), _) => {
                    least = Some(at);
                    break;
                }
                (Some(Ok(_)), None) => least = Some(at),
                (Some(Ok(entry)), Some(Ok(best))) if entry.order() < best.order() => least = Some(at),
                (Some(Ok(_)), Some(_)) => {}
            }
        }
        let head = &mut self.heads[least?];
        std::mem::replace(&mut head.next, head.rest.next())
    }
}

/// An operator's keyed state: the keys touched since the last save in memory (each one is saved
/// by the next save, which then drops them), the rest in the saved files (see the module doc).
pub(crate) struct Keyed<K, V> {
    memory: FxHashMap<K, V>,
    backing: Option<Backing>,
    route: fn(&K) -> u64,
    /// A saved key that could not be read; reported by the driver after the epoch.
    error: Option<StateError>,
}

impl<K: Hash + Eq + Clone + Serialize + DeserializeOwned, V: Serialize + DeserializeOwned> Keyed<K, V> {
    pub fn new(route: fn(&K) -> u64) -> Self {
        Keyed { memory: FxHashMap::default(), backing: None, route, error: None }
    }

    /// The key's value if it is in memory (an epoch touched it).
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.memory.get_mut(key)
    }

    /// The key's value, from memory or else the saved files, or a new one; and whether it had
    /// one. Kept in memory (to be saved): the caller may change it.
    pub fn entry(&mut self, key: &K, new: impl FnOnce() -> V) -> (&mut V, bool) {
        match self.memory.entry(key.clone()) {
            std::collections::hash_map::Entry::Occupied(occupied) => (occupied.into_mut(), true),
            std::collections::hash_map::Entry::Vacant(vacant) => {
                let saved = saved(self.backing.as_ref(), self.route, &mut self.error, key);
                let existed = saved.is_some();
                (vacant.insert(saved.unwrap_or_else(new)), existed)
            }
        }
    }

    /// The key's value without keeping it in memory (for values that never change once set).
    pub fn get(&mut self, key: &K) -> Option<V>
    where
        V: Clone,
    {
        match self.memory.get(key) {
            Some(value) => Some(value.clone()),
            None => saved(self.backing.as_ref(), self.route, &mut self.error, key),
        }
    }

    /// Sets the key's value (to be saved).
    pub fn insert(&mut self, key: K, value: V) {
        self.memory.insert(key, value);
    }

    /// Every saved key of this worker with its value, decoded (for [`Resume::Rows`]).
    pub fn each_saved(&mut self, index: usize, workers: usize, mut each: impl FnMut(&K, &V)) {
        let Some(backing) = self.backing.as_ref() else { return };
        let mut failed = None;
        for entry in backing.entries(index, workers) {
            let decoded = entry.and_then(|entry| {
                let path = || backing.files[0].path.clone();
                let key: K =
                    bincode::deserialize(&entry.key).map_err(|source| StateError::Decode { path: path(), source })?;
                let value: V =
                    bincode::deserialize(&entry.value).map_err(|source| StateError::Decode { path: path(), source })?;
                Ok((key, value))
            });
            match decoded {
                Ok((key, value)) => each(&key, &value),
                Err(error) => {
                    failed = Some(error);
                    break;
                }
            }
        }
        if let Some(error) = failed {
            self.error.get_or_insert(error);
        }
    }

    /// Writes this worker's file of operator `name` into `dir`: its keys in memory merged with the
    /// saved ones it loaded from. Then looks keys up in the new file and drops those in memory.
    fn save(&mut self, dir: &Path, tag: &str, name: &str, index: usize, workers: usize) -> Result<(), StateError> {
        let encode = |source| StateError::Encode { operator: name.to_owned(), source };
        let route = self.route;
        let mut touched: Vec<(u64, &K, &V)> = self.memory.iter().map(|(key, value)| (route(key), key, value)).collect();
        // By route, then (rarely needed) by the key's bytes, as the files are ordered.
        touched.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0).then_with(|| {
                bincode::serialize(a.1).unwrap_or_default().cmp(&bincode::serialize(b.1).unwrap_or_default())
            })
        });
        let mut writer = StateWriter::create(state_path(dir, name, index))?;
        let mut saved = match &self.backing {
            Some(backing) => backing.entries(index, workers).peekable(),
            None => Merged { heads: Vec::new() }.peekable(),
        };
        let (mut key_bytes, mut value_bytes) = (Vec::new(), Vec::new());
        for (route, key, value) in touched {
            key_bytes.clear();
            bincode::serialize_into(&mut key_bytes, key).map_err(encode)?;
            // Saved entries before this key go as they are; one for the same key is replaced.
            while let Some(next) = saved.peek() {
                let order = match next {
                    Ok(entry) => entry.order().cmp(&(route, &key_bytes[..])),
                    Err(_) => std::cmp::Ordering::Less,
                };
                if order == std::cmp::Ordering::Greater {
                    break;
                }
                let entry = saved
                    .next()
                    .unwrap_or_else(|| Err(StateError::Torn { path: writer.path.clone(), what: "merge" }))?;
                if order == std::cmp::Ordering::Less {
                    writer.push(entry.route, &entry.key, &entry.value)?;
                }
            }
            value_bytes.clear();
            bincode::serialize_into(&mut value_bytes, value).map_err(encode)?;
            writer.push(route, &key_bytes, &value_bytes)?;
        }
        for entry in saved {
            let entry = entry?;
            writer.push(entry.route, &entry.key, &entry.value)?;
        }
        let path = writer.finish(tag, name, workers)?;
        let file = StateFile::open(path, tag, name)?;
        self.backing = Some(Backing { files: vec![file], saved_by: workers, all: false });
        self.memory = FxHashMap::default();
        Ok(())
    }
}

/// The value saved for `key`, if any; a file that cannot be read is recorded in `error`.
fn saved<K: Serialize, V: DeserializeOwned>(
    backing: Option<&Backing>,
    route: fn(&K) -> u64,
    error: &mut Option<StateError>,
    key: &K,
) -> Option<V> {
    let backing = backing?;
    let route = route(key);
    let file = backing.file_for(route)?;
    let found = bincode::serialize(key)
        .map_err(|source| StateError::Encode { operator: file.path.display().to_string(), source })
        .and_then(|bytes| file.get(route, &bytes))
        .and_then(|value| match value {
            Some(bytes) => bincode::deserialize(&bytes)
                .map(Some)
                .map_err(|source| StateError::Decode { path: file.path.clone(), source }),
            None => Ok(None),
        });
    found.unwrap_or_else(|failed| {
        error.get_or_insert(failed);
        None
    })
}

/// An operator's state as its worker's registry sees it.
trait Persisted {
    fn save(&mut self, dir: &Path, tag: &str, name: &str, index: usize, workers: usize) -> Result<(), StateError>;
    fn take_error(&mut self) -> Option<StateError>;
}

impl<K: Hash + Eq + Clone + Serialize + DeserializeOwned, V: Serialize + DeserializeOwned> Persisted for Keyed<K, V> {
    fn save(&mut self, dir: &Path, tag: &str, name: &str, index: usize, workers: usize) -> Result<(), StateError> {
        Keyed::save(self, dir, tag, name, index, workers)
    }
    fn take_error(&mut self) -> Option<StateError> {
        self.error.take()
    }
}

/// Where a worker's operators resume from.
struct Loading {
    dir: PathBuf,
    tag: String,
    resume: Resume,
}

/// The operators of one worker's dataflow, and what they resume from.
pub struct Registry {
    operators: Vec<(String, Rc<RefCell<dyn Persisted>>)>,
    loading: Option<Loading>,
    index: usize,
    workers: usize,
    /// Why the state could not be loaded (the first reason).
    error: Option<StateError>,
}

impl Registry {
    /// What worker `index` of `workers` is built with when it starts with no state.
    pub(crate) fn fresh(index: usize, workers: usize) -> Self {
        Registry { operators: Vec::new(), loading: None, index, workers, error: None }
    }

    /// What worker `index` of `workers` is built with, to resume from `dir`.
    pub(crate) fn load(dir: &Path, tag: &str, resume: Resume, index: usize, workers: usize) -> Self {
        let loading = Loading { dir: dir.to_owned(), tag: tag.to_owned(), resume };
        Registry { loading: Some(loading), ..Self::fresh(index, workers) }
    }

    /// Why the state could not be loaded, or a saved key read, if so.
    pub(crate) fn take_error(&mut self) -> Option<StateError> {
        if let Some(error) = self.error.take() {
            return Some(error);
        }
        self.operators.iter().find_map(|(_, operator)| operator.borrow_mut().take_error())
    }

    /// Writes this worker's file of every operator into `dir`.
    pub(crate) fn save(&self, dir: &Path, tag: &str) -> Result<(), StateError> {
        for (name, operator) in &self.operators {
            operator.borrow_mut().save(dir, tag, name, self.index, self.workers)?;
        }
        Ok(())
    }
}

thread_local! {
    static BUILDING: RefCell<Option<Rc<RefCell<Registry>>>> = const { RefCell::new(None) };
}

/// Runs `build` with `registry` as the one its operators register with. Dataflows built without
/// one (the operator tests) have nothing persisted.
pub fn building<T>(registry: &Rc<RefCell<Registry>>, build: impl FnOnce() -> T) -> T {
    BUILDING.with(|current| *current.borrow_mut() = Some(registry.clone()));
    let built = build();
    BUILDING.with(|current| *current.borrow_mut() = None);
    built
}

/// What an operator being built resumes with.
pub(crate) struct Registered {
    /// Epoch 0 gives the rows of the saved keys, and what reaches the operator then is ignored.
    pub rows: bool,
    /// This worker's index and the number of workers.
    pub index: usize,
    pub workers: usize,
}

/// For an operator being built: registers its state under `name` and opens the saved files it
/// looks keys up in, if the dataflow resumes.
pub(crate) fn register<K, V>(name: &str, state: &Rc<RefCell<Keyed<K, V>>>) -> Registered
where
    K: Hash + Eq + Clone + Serialize + DeserializeOwned + 'static,
    V: Serialize + DeserializeOwned + 'static,
{
    BUILDING.with(|current| {
        let Some(registry) = current.borrow().clone() else { return Registered { rows: false, index: 0, workers: 1 } };
        let mut registry = registry.borrow_mut();
        let registry = &mut *registry;
        registry.operators.push((name.to_owned(), state.clone()));
        let (index, workers) = (registry.index, registry.workers);
        let Some(loading) = registry.loading.as_ref() else { return Registered { rows: false, index, workers } };
        match Backing::open(&loading.dir, &loading.tag, name, index, workers) {
            Ok(backing) => state.borrow_mut().backing = Some(backing),
            Err(error) => {
                registry.error.get_or_insert(error);
            }
        }
        Registered { rows: loading.resume == Resume::Rows, index, workers }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three keys per route, so equal routes span index entries and blocks.
    fn shared_route(key: &u32) -> u64 {
        u64::from(*key / 3)
    }

    #[test]
    fn keys_are_found_after_a_save_and_a_merge_keeps_untouched_ones() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut keyed: Keyed<u32, String> = Keyed::new(shared_route);
        for key in (0..1000).step_by(2) {
            keyed.insert(key, format!("v{key}"));
        }
        keyed.save(dir.path(), "t", "Op", 0, 1).expect("save");
        assert!(keyed.memory.is_empty(), "saved keys leave memory");
        for key in 0..1000 {
            let expected = (key % 2 == 0).then(|| format!("v{key}"));
            assert_eq!(keyed.get(&key), expected, "key {key}");
        }
        // Change some saved keys, add new ones; untouched saved keys are copied over (into the
        // same directory: the file merged from is replaced, not truncated under its reader).
        for key in (0..1000).step_by(10) {
            let (value, existed) = keyed.entry(&key, String::new);
            assert!(existed, "key {key} was saved");
            value.push('!');
        }
        keyed.insert(1001, "new".to_owned());
        keyed.save(dir.path(), "t", "Op", 0, 1).expect("save again");
        for key in 0..1002 {
            let expected = match key {
                1001 => Some("new".to_owned()),
                _ if key % 10 == 0 && key < 1000 => Some(format!("v{key}!")),
                _ if key % 2 == 0 && key < 1000 => Some(format!("v{key}")),
                _ => None,
            };
            assert_eq!(keyed.get(&key), expected, "key {key}");
        }
        assert!(keyed.error.is_none());
        // Scanned twice (rows at epoch 0, then a save merging from it): both see every entry.
        let mut rows = 0;
        keyed.each_saved(0, 1, |_, _| rows += 1);
        let mut again = 0;
        keyed.each_saved(0, 1, |_, _| again += 1);
        assert_eq!((rows, again), (501, 501));
        assert!(keyed.error.is_none());
        let refused = StateFile::open(state_path(dir.path(), "Op", 0), "other", "Op").err().map(|e| e.to_string());
        assert!(refused.is_some_and(|error| error.contains("`t`")), "another tag is refused");
    }
}
