//! Persisted operator state (issue 13): every keyed operator's per-key state, saved by each worker
//! beside the tables, and looked up key by key when an epoch touches a key, instead of re-feeding
//! every stored event or decoding every saved key before the first epoch.
//!
//! A worker's operators register their [`Keyed`] maps with its [`Registry`] while the dataflow is
//! built (the registry is set for the build only, see [`building`]). Each operator's keys on each
//! worker are a few runs, `<operator>.<worker>.<number>.state`, listed oldest first in the
//! worker's manifest `runs.<worker>` with the tag the state belongs to. A run holds entries
//! sorted by `(route, key bytes)`, then a sparse index (the route and offset of an entry every
//! [`INDEX_EVERY`] entries or [`INDEX_BYTES`] bytes, whichever comes first), then a footer
//! (format, operator, workers, entries). Opening a run reads only its index; a key is found in
//! the newest run that has it, each by a binary search of the index and a scan of one block (at
//! most [`INDEX_EVERY`] entries, or about [`INDEX_BYTES`] and one entry), read with one `pread`.
//!
//! Held in memory are only the keys an epoch touched since the last save. A save
//! ([`crate::Driver::save`]) writes those keys as one new run; the runs from before are put in the
//! new directory as they are (hard links), and the last [`MERGE_RUNS`] runs are merged into one
//! while the oldest of them has at most twice the entries of the newest (an LSM tree's
//! size-tiered merging). So a save writes about what changed since the last one, each entry is
//! rewritten about log4(saves) times, and an operator has a few runs (at most three of about
//! each size). The new runs are then what the worker looks keys up in, and the keys
//! in memory are dropped.
//!
//! A state saved by as many workers is looked up in the worker's own runs; saved by another
//! number, a key is looked up in the runs of the worker its route chose then
//! (`route % saved_workers`, as timely's exchange does), and the next save writes every old key
//! that now routes here into one run.
//!
//! A resumed dataflow either gives, at epoch 0, every row its saved keys derive (for a sink that
//! holds its tables in memory and was given none: `Resume::Rows`) by scanning the runs, or gives
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
pub const STATE_FORMAT: u32 = 6;

/// Every this many entries, the index records one (its route and offset)...
pub const INDEX_EVERY: usize = 32;

/// ... or sooner, at the first entry this many bytes past the last one it records: a lookup
/// reads a block of a few KiB however large the entries are.
pub const INDEX_BYTES: u64 = 4096;

/// How many runs, of about one size, a save merges into one.
pub const MERGE_RUNS: usize = 4;

/// The last bytes of every run and manifest.
const MAGIC: &[u8; 8] = b"CFSTATE6";

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
    operator: String,
    workers: usize,
    entries: u64,
    /// Where the index starts; the entries end there.
    index_at: u64,
    /// Where the Bloom filter starts; the index ends there, and the filter at the footer.
    bloom_at: u64,
}

/// Bits of a run's Bloom filter per entry: a lookup of a key the run does not hold reads nothing
/// from it in about 99 cases of 100.
const BLOOM_BITS: u64 = 10;

/// The salts of a block's eight words (Parquet's split block Bloom filter).
const SALT: [u32; 8] =
    [0x47b6_137b, 0x4497_4d91, 0x8824_ad5b, 0xa2b7_289d, 0x7054_95c7, 0x2df1_424b, 0x9efc_4947, 0x5c6b_fb31];

/// One block of a filter: 256 bits, in one cache line.
#[derive(Clone, Copy, Default)]
#[repr(align(32))]
struct Block([u32; 8]);

/// A run's Bloom filter over its entries' route and key bytes, split in blocks as Parquet's is: a
/// key sets one bit in each word of the one block its hash chooses, so a lookup touches one
/// cache line, where seven bits anywhere in a filter of many megabytes cost up to seven cache
/// misses a run (most of a lookup's time at 30 M events, BENCHMARKS.md). Most lookups of a later
/// input are of keys no run holds (every new event's identity, every new message): without a
/// filter each would read a block of every run.
struct Bloom {
    blocks: Vec<Block>,
}

impl Bloom {
    fn sized(entries: u64) -> Self {
        Bloom { blocks: vec![Block::default(); (entries * BLOOM_BITS).div_ceil(256).max(1) as usize] }
    }

    /// The block `(route, key)` chooses, and the bit it sets in each word.
    fn bits(&self, route: u64, key: &[u8]) -> (usize, [u32; 8]) {
        let hash = hash(route, key);
        let block = ((hash >> 32) * self.blocks.len() as u64) >> 32;
        (block as usize, SALT.map(|salt| 1 << ((hash as u32).wrapping_mul(salt) >> 27)))
    }

    fn insert(&mut self, route: u64, key: &[u8]) {
        let (block, bits) = self.bits(route, key);
        let words = &mut self.blocks[block].0;
        words.iter_mut().zip(bits).for_each(|(word, bit)| *word |= bit);
    }

    fn may_hold(&self, route: u64, key: &[u8]) -> bool {
        let (block, bits) = self.bits(route, key);
        self.blocks[block].0.iter().zip(bits).all(|(word, bit)| word & bit != 0)
    }
}

/// The hash of `(route, key)`, defined here (FNV-1a of the key, then SplitMix64's finalizer) so
/// that it is the same in every build that reads this format.
fn hash(route: u64, key: &[u8]) -> u64 {
    let fnv =
        key.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, &byte| (hash ^ byte as u64).wrapping_mul(0x100_0000_01b3));
    mix(route ^ fnv.rotate_left(29))
}

/// SplitMix64's finalizer.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// One saved state file (a run), open for lookups and scans.
struct StateFile {
    path: PathBuf,
    file: File,
    /// How many entries it holds.
    entries: u64,
    /// `(route, offset)` of the entries that start a block (see [`INDEX_EVERY`]).
    index: Vec<(u64, u64)>,
    bloom: Bloom,
    entries_end: u64,
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
    /// Opens a run its worker's manifest lists (which carries the tag the state is checked by).
    fn open(path: PathBuf, operator: &str) -> Result<Self, StateError> {
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
        if footer.operator != operator
            || footer.index_at > footer.bloom_at
            || footer.bloom_at >= footer_at
            || !(footer.bloom_at - footer.index_at).is_multiple_of(16)
            || !(footer_at - footer.bloom_at).is_multiple_of(32)
        {
            return Err(torn("footer"));
        }
        let mut raw = vec![0u8; (footer_at - footer.index_at) as usize];
        file.read_exact_at(&mut raw, footer.index_at).map_err(io)?;
        let (raw, bloom) = raw.split_at((footer.bloom_at - footer.index_at) as usize);
        let word = |bytes: &[u8], at: usize| bytes.get(4 * at..4 * at + 4).and_then(|b| b.try_into().ok());
        let block = |bytes: &[u8]| Block(std::array::from_fn(|at| word(bytes, at).map_or(0, u32::from_le_bytes)));
        let bloom = Bloom { blocks: bloom.chunks_exact(32).map(block).collect() };
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
        Ok(StateFile { path, file, entries: footer.entries, index, bloom, entries_end: footer.index_at })
    }

    fn io(&self) -> impl FnOnce(std::io::Error) -> StateError + '_ {
        |source| StateError::Io { path: self.path.clone(), source }
    }

    /// The value bytes saved for `key` (encoded), whose route is `route`.
    fn get(&self, route: u64, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        if !self.bloom.may_hold(route, key) {
            return Ok(None);
        }
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
    /// Entries written since the last one the index records.
    unindexed: usize,
    bloom: Bloom,
}

impl StateWriter {
    /// A run at `path` of at most `entries` entries (which sizes its Bloom filter).
    fn create(path: PathBuf, entries: u64) -> Result<Self, StateError> {
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
            unindexed: 0,
            bloom: Bloom::sized(entries),
        })
    }

    fn push(&mut self, route: u64, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        let block_start = self.index.last().map(|&(_, at)| at);
        if block_start.is_none_or(|at| self.unindexed == INDEX_EVERY || self.written - at >= INDEX_BYTES) {
            self.index.push((route, self.written));
            self.unindexed = 0;
        }
        self.unindexed += 1;
        self.bloom.insert(route, key);
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

    fn finish(mut self, operator: &str, workers: usize) -> Result<PathBuf, StateError> {
        let footer = Footer {
            format: STATE_FORMAT,
            operator: operator.to_owned(),
            workers,
            entries: self.entries,
            index_at: self.written,
            bloom_at: self.written + 16 * self.index.len() as u64,
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
        for word in self.bloom.blocks.iter().flat_map(|block| block.0) {
            self.out.write_all(&word.to_le_bytes()).map_err(io)?;
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

/// The saved runs one worker looks an operator's keys up in.
struct Backing {
    /// By the worker that saved them, each one's runs oldest first; only this worker's own when
    /// saved by as many workers.
    files: Vec<Vec<StateFile>>,
    /// How many workers saved them.
    saved_by: usize,
    /// Whether `files` is every saved worker's (saved by another number of workers).
    all: bool,
}

impl Backing {
    fn open(dir: &Path, tag: &str, operator: &str, index: usize, workers: usize) -> Result<Self, StateError> {
        let runs = |manifest: &Manifest| -> Result<Vec<StateFile>, StateError> {
            manifest
                .runs(operator)
                .ok_or_else(|| StateError::Torn { path: manifest_path(dir, index), what: "an operator's runs" })?
                .iter()
                .map(|name| StateFile::open(dir.join(name), operator))
                .collect()
        };
        if let Ok(own) = Manifest::read(dir, index, tag) {
            if own.workers == workers {
                return Ok(Backing { files: vec![runs(&own)?], saved_by: workers, all: false });
            }
        }
        let first = Manifest::read(dir, 0, tag)?;
        let saved_by = first.workers;
        let mut files = vec![runs(&first)?];
        for other in 1..saved_by {
            let manifest = Manifest::read(dir, other, tag)?;
            if manifest.workers != saved_by {
                let path = manifest_path(dir, other);
                return Err(StateError::Workers { path, found: manifest.workers, expected: saved_by });
            }
            files.push(runs(&manifest)?);
        }
        Ok(Backing { files, saved_by, all: true })
    }

    /// The runs a key of `route` may be in, oldest first.
    fn runs_for(&self, route: u64) -> &[StateFile] {
        let at = if self.all { (route % self.saved_by as u64) as usize } else { 0 };
        self.files.get(at).map_or(&[], Vec::as_slice)
    }

    /// [`Backing::entries`], each key and value decoded; stops at the first that is not read.
    fn each_decoded<K: DeserializeOwned, V: DeserializeOwned>(
        &self,
        index: usize,
        workers: usize,
        mut each: impl FnMut(K, V),
    ) -> Result<(), StateError> {
        for entry in self.entries(index, workers) {
            let entry = entry?;
            let decode = |source| StateError::Decode { path: self.first_path(), source };
            each(
                bincode::deserialize(&entry.key).map_err(decode)?,
                bincode::deserialize(&entry.value).map_err(decode)?,
            );
        }
        Ok(())
    }

    fn first_path(&self) -> PathBuf {
        self.files.iter().flatten().next().map(|file| file.path.clone()).unwrap_or_default()
    }

    /// Every saved entry that routes to worker `index` of `workers`, in `(route, key)` order; a
    /// key in several runs comes once, from the newest.
    fn entries(&self, index: usize, workers: usize) -> Merged<'_> {
        let all = self.all;
        let heads = self
            .files
            .iter()
            .flat_map(|runs| runs.iter().enumerate())
            .map(|(rank, file)| {
                let keep = move |entry: &Result<Entry, StateError>| {
                    !all || entry.as_ref().map_or(true, |entry| entry.route % workers as u64 == index as u64)
                };
                Head::new(Box::new(file.scan().filter(keep)), rank)
            })
            .collect();
        Merged { heads }
    }
}

/// A sorted sequence of entries with its next one taken out; of two with the same key, the one of
/// the higher rank (the newer run) is kept.
struct Head<'a> {
    next: Option<Result<Entry, StateError>>,
    rest: Box<dyn Iterator<Item = Result<Entry, StateError>> + 'a>,
    rank: usize,
}

impl<'a> Head<'a> {
    fn new(mut rest: Box<dyn Iterator<Item = Result<Entry, StateError>> + 'a>, rank: usize) -> Self {
        Head { next: rest.next(), rest, rank }
    }
}

/// The entries of several sorted runs, as one sorted sequence with each key once.
struct Merged<'a> {
    heads: Vec<Head<'a>>,
}

impl<'a> Merged<'a> {
    /// Every entry of `runs` (oldest first), each key once with its newest value.
    fn of(runs: &'a [StateFile]) -> Self {
        Merged { heads: runs.iter().enumerate().map(|(rank, file)| Head::new(Box::new(file.scan()), rank)).collect() }
    }
}

impl Iterator for Merged<'_> {
    type Item = Result<Entry, StateError>;
    fn next(&mut self) -> Option<Self::Item> {
        let mut least: Option<usize> = None;
        for (at, head) in self.heads.iter().enumerate() {
            let best = least.map(|best| &self.heads[best]);
            match (&head.next, best.and_then(|best| best.next.as_ref().map(|next| (next, best.rank)))) {
                (None, _) => {}
                (Some(Err(_)), _) => {
                    least = Some(at);
                    break;
                }
                (Some(Ok(_)), None) => least = Some(at),
                (Some(Ok(entry)), Some((Ok(best), rank))) => {
                    let order = entry.order().cmp(&best.order());
                    if order.is_lt() || (order.is_eq() && head.rank > rank) {
                        least = Some(at);
                    }
                }
                (Some(Ok(_)), Some(_)) => {}
            }
        }
        let head = &mut self.heads[least?];
        let taken = std::mem::replace(&mut head.next, head.rest.next());
        // The same key in older runs is left out.
        if let Some(Ok(entry)) = &taken {
            for head in &mut self.heads {
                while head
                    .next
                    .as_ref()
                    .is_some_and(|next| next.as_ref().is_ok_and(|next| next.order() == entry.order()))
                {
                    head.next = head.rest.next();
                }
            }
        }
        taken
    }
}

/// Writes `older` and `newer` (each sorted, each key once) into `writer` as one sorted run; a
/// key in both gets `newer`'s value.
fn merge_into(
    writer: &mut StateWriter,
    older: impl Iterator<Item = Result<Entry, StateError>>,
    newer: impl Iterator<Item = Result<Entry, StateError>>,
) -> Result<(), StateError> {
    let mut older = older.peekable();
    for entry in newer {
        let entry = entry?;
        while let Some(next) = older.next_if(|next| next.as_ref().map_or(true, |next| next.order() <= entry.order())) {
            let next = next?;
            if next.order() < entry.order() {
                writer.push(next.route, &next.key, &next.value)?;
            }
        }
        writer.push(entry.route, &entry.key, &entry.value)?;
    }
    for entry in older {
        let entry = entry?;
        writer.push(entry.route, &entry.key, &entry.value)?;
    }
    Ok(())
}

/// Puts a run into `dir` under its name: a hard link of the file where it is now (`home`), or,
/// when that is not the same file any more (removed, another state's), a copy of its bytes.
fn place(file: &StateFile, home: Option<&Path>, dir: &Path) -> Result<PathBuf, StateError> {
    use std::os::unix::fs::MetadataExt;
    let name = file.path.file_name().unwrap_or_default();
    let target = dir.join(name);
    let io = |source| StateError::Io { path: target.clone(), source };
    let open = file.file.metadata().map_err(io)?;
    let same = |path: &Path| {
        std::fs::metadata(path).is_ok_and(|placed| (placed.dev(), placed.ino()) == (open.dev(), open.ino()))
    };
    if same(&target) {
        return Ok(target);
    }
    match std::fs::remove_file(&target) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(io(error)),
        _ => {}
    }
    if let Some(home) = home {
        if std::fs::hard_link(home.join(name), &target).is_ok() {
            if same(&target) {
                return Ok(target);
            }
            std::fs::remove_file(&target).map_err(io)?;
        }
    }
    let mut out = File::create(&target).map_err(io)?;
    std::io::copy(&mut Positioned { file: &file.file, at: 0, end: open.len() }, &mut out).map_err(io)?;
    out.sync_all().map_err(io)?;
    Ok(target)
}

/// A run's file name: `<operator>.<worker>.<number>.state`.
fn run_name(operator: &str, worker: usize, number: u64) -> String {
    format!("{operator}.{worker}.{number}.state")
}

fn run_number(file: &StateFile) -> u64 {
    let name = file.path.file_name().and_then(|name| name.to_str()).unwrap_or_default();
    name.trim_end_matches(".state").rsplit('.').next().and_then(|number| number.parse().ok()).unwrap_or(0)
}

/// A worker's manifest: `runs.<worker>`.
fn manifest_path(dir: &Path, worker: usize) -> PathBuf {
    dir.join(format!("runs.{worker}"))
}

/// What a worker saved: the tag it was saved with and, per operator, its runs oldest first.
#[derive(Serialize, Deserialize)]
struct Manifest {
    format: u32,
    /// What the state belongs to (its tables' generation, the tenants configuration, the hashes).
    tag: String,
    workers: usize,
    operators: Vec<(String, Vec<String>)>,
}

impl Manifest {
    fn runs(&self, operator: &str) -> Option<&Vec<String>> {
        self.operators.iter().find(|(name, _)| name == operator).map(|(_, runs)| runs)
    }

    fn read(dir: &Path, worker: usize, tag: &str) -> Result<Self, StateError> {
        let path = manifest_path(dir, worker);
        let bytes = std::fs::read(&path).map_err(|source| StateError::Io { path: path.clone(), source })?;
        let torn = |what| StateError::Torn { path: path.clone(), what };
        let body = bytes.strip_suffix(MAGIC).ok_or_else(|| torn("no end marker"))?;
        let manifest: Manifest =
            bincode::deserialize(body).map_err(|source| StateError::Decode { path: path.clone(), source })?;
        if manifest.format != STATE_FORMAT {
            return Err(StateError::Format { path, found: manifest.format });
        }
        if manifest.tag != tag {
            return Err(StateError::Tag { path, found: manifest.tag, expected: tag.to_owned() });
        }
        Ok(manifest)
    }

    fn write(&self, dir: &Path, worker: usize) -> Result<(), StateError> {
        let path = manifest_path(dir, worker);
        let mut bytes = bincode::serialize(self)
            .map_err(|source| StateError::Encode { operator: "manifest".to_owned(), source })?;
        bytes.extend_from_slice(MAGIC);
        let io = |source| StateError::Io { path: path.clone(), source };
        let mut file = File::create(&path).map_err(io)?;
        file.write_all(&bytes).and_then(|()| file.sync_all()).map_err(io)
    }
}

/// An operator's keyed state: the keys touched since the last save in memory (each one is saved
/// by the next save, which then drops them), the rest in the saved runs (see the module doc).
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

    /// The key's value, from memory or else the saved runs, or a new one; and whether it had
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
        if let Err(error) = backing.each_decoded(index, workers, |key: K, value: V| each(&key, &value)) {
            self.error.get_or_insert(error);
        }
    }
}

/// The value saved for `key`, if any: from the newest run that has it. A run that cannot be read
/// is recorded in `error`.
fn saved<K: Serialize, V: DeserializeOwned>(
    backing: Option<&Backing>,
    route: fn(&K) -> u64,
    error: &mut Option<StateError>,
    key: &K,
) -> Option<V> {
    let backing = backing?;
    let route = route(key);
    let runs = backing.runs_for(route);
    let found = bincode::serialize(key)
        .map_err(|source| StateError::Encode { operator: backing.first_path().display().to_string(), source })
        .and_then(|bytes| {
            for file in runs.iter().rev() {
                if let Some(value) = file.get(route, &bytes)? {
                    return bincode::deserialize(&value)
                        .map(Some)
                        .map_err(|source| StateError::Decode { path: file.path.clone(), source });
                }
            }
            Ok(None)
        });
    found.unwrap_or_else(|failed| {
        error.get_or_insert(failed);
        None
    })
}

/// An operator's state as its worker's registry sees it.
trait Persisted {
    fn save(
        &mut self,
        dir: &Path,
        home: Option<&Path>,
        name: &str,
        index: usize,
        workers: usize,
    ) -> Result<Vec<String>, StateError>;
    fn take_error(&mut self) -> Option<StateError>;
}

impl<K: Hash + Eq + Clone + Serialize + DeserializeOwned, V: Serialize + DeserializeOwned> Persisted for Keyed<K, V> {
    /// Writes this worker's runs of operator `name` into `dir` and returns their names, oldest
    /// first. Saved by as many workers, the runs it looks keys up in are put there as they are
    /// (linked from `home`, where they are now), its keys in memory are one new run, and the
    /// last [`MERGE_RUNS`] runs are merged into one while the oldest of them holds at most twice
    /// the entries of the newest: so a save writes about what changed since the last, and an
    /// operator has a few runs (at most three of about each size). Saved by another number of
    /// workers, every saved key that routes here and the keys in memory are one run. Then looks
    /// keys up in the runs in `dir` and drops those in memory.
    fn save(
        &mut self,
        dir: &Path,
        home: Option<&Path>,
        name: &str,
        index: usize,
        workers: usize,
    ) -> Result<Vec<String>, StateError> {
        let encode = |source| StateError::Encode { operator: name.to_owned(), source };
        let route = self.route;
        let mut touched: Vec<(u64, &K, &V)> = self.memory.iter().map(|(key, value)| (route(key), key, value)).collect();
        // By route, then (rarely needed) by the key's bytes, as the runs are ordered.
        touched.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0).then_with(|| {
                bincode::serialize(a.1).unwrap_or_default().cmp(&bincode::serialize(b.1).unwrap_or_default())
            })
        });
        let touched = touched.into_iter().map(|(route, key, value)| {
            let key = bincode::serialize(key).map_err(encode)?;
            let value = bincode::serialize(value).map_err(encode)?;
            Ok(Entry { route, key, value })
        });
        // The worker goes on reading its current runs until the new ones are all written: a save
        // that fails part-way leaves its state as it was.
        let kept: &[StateFile] = match &self.backing {
            Some(backing) if !backing.all => backing.files.first().map_or(&[], Vec::as_slice),
            other => {
                // No runs to keep: every saved key that routes here goes into the new run.
                let saved = other.iter().flat_map(|backing| backing.files.iter().flatten()).map(|file| file.entries);
                let entries = saved.sum::<u64>() + self.memory.len() as u64;
                let mut writer = StateWriter::create(dir.join(run_name(name, index, 0)), entries)?;
                match other {
                    Some(backing) => merge_into(&mut writer, backing.entries(index, workers), touched)?,
                    None => merge_into(&mut writer, std::iter::empty(), touched)?,
                }
                let file = StateFile::open(writer.finish(name, workers)?, name)?;
                self.backing = Some(Backing { files: vec![vec![file]], saved_by: workers, all: false });
                self.memory = FxHashMap::default();
                return Ok(vec![run_name(name, index, 0)]);
            }
        };
        let mut next = kept.iter().map(run_number).max().map_or(0, |number| number + 1);
        let mut runs = Vec::with_capacity(kept.len() + 1);
        for file in kept {
            runs.push(StateFile::open(place(file, home, dir)?, name)?);
        }
        if !self.memory.is_empty() {
            let mut writer = StateWriter::create(dir.join(run_name(name, index, next)), self.memory.len() as u64)?;
            next += 1;
            merge_into(&mut writer, std::iter::empty(), touched)?;
            runs.push(StateFile::open(writer.finish(name, workers)?, name)?);
        }
        while runs.len() >= MERGE_RUNS {
            let last = &runs[runs.len() - MERGE_RUNS..];
            if last[0].entries > 2 * last[MERGE_RUNS - 1].entries {
                break;
            }
            let entries = last.iter().map(|file| file.entries).sum();
            let mut writer = StateWriter::create(dir.join(run_name(name, index, next)), entries)?;
            next += 1;
            merge_into(&mut writer, std::iter::empty(), Merged::of(last))?;
            let merged = StateFile::open(writer.finish(name, workers)?, name)?;
            for file in runs.drain(runs.len() - MERGE_RUNS..) {
                std::fs::remove_file(&file.path)
                    .map_err(|source| StateError::Io { path: file.path.clone(), source })?;
            }
            runs.push(merged);
        }
        let names = runs.iter().map(|file| file.path.file_name().unwrap_or_default().to_string_lossy().into_owned());
        let names = names.collect();
        self.backing = Some(Backing { files: vec![runs], saved_by: workers, all: false });
        self.memory = FxHashMap::default();
        Ok(names)
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
    /// Where the runs its operators look keys up in are (loaded from, or last saved to).
    home: Option<PathBuf>,
    index: usize,
    workers: usize,
    /// Why the state could not be loaded (the first reason).
    error: Option<StateError>,
}

impl Registry {
    /// What worker `index` of `workers` is built with when it starts with no state.
    pub(crate) fn fresh(index: usize, workers: usize) -> Self {
        Registry { operators: Vec::new(), loading: None, home: None, index, workers, error: None }
    }

    /// What worker `index` of `workers` is built with, to resume from `dir`.
    pub(crate) fn load(dir: &Path, tag: &str, resume: Resume, index: usize, workers: usize) -> Self {
        let loading = Loading { dir: dir.to_owned(), tag: tag.to_owned(), resume };
        Registry { loading: Some(loading), home: Some(dir.to_owned()), ..Self::fresh(index, workers) }
    }

    /// Why the state could not be loaded, or a saved key read, if so.
    pub(crate) fn take_error(&mut self) -> Option<StateError> {
        if let Some(error) = self.error.take() {
            return Some(error);
        }
        self.operators.iter().find_map(|(_, operator)| operator.borrow_mut().take_error())
    }

    /// Writes this worker's runs of every operator into `dir`, then its manifest. `home` is where
    /// `dir` will be once every worker has saved (the caller renames it there).
    pub(crate) fn save(&mut self, dir: &Path, home: &Path, tag: &str) -> Result<(), StateError> {
        let mut operators = Vec::with_capacity(self.operators.len());
        for (name, operator) in &self.operators {
            let runs = operator.borrow_mut().save(dir, self.home.as_deref(), name, self.index, self.workers)?;
            operators.push((name.clone(), runs));
        }
        let manifest = Manifest { format: STATE_FORMAT, tag: tag.to_owned(), workers: self.workers, operators };
        manifest.write(dir, self.index)?;
        self.home = Some(home.to_owned());
        Ok(())
    }
}

/// Every key operator `operator` saved in `dir` (by any number of workers) with its newest value,
/// decoded: a saved state read outside a dataflow.
pub(crate) fn each_saved_entry<K: DeserializeOwned, V: DeserializeOwned>(
    dir: &Path,
    tag: &str,
    operator: &str,
    mut each: impl FnMut(K, V),
) -> Result<(), StateError> {
    let workers = Manifest::read(dir, 0, tag)?.workers;
    for worker in 0..workers {
        Backing::open(dir, tag, operator, worker, workers)?.each_decoded(worker, workers, &mut each)?;
    }
    Ok(())
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

/// For an operator being built: registers its state under `name` and opens the saved runs it
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

    fn expected(key: u32, changed: &[u32]) -> Option<String> {
        let bangs = changed.iter().filter(|&&every| key.is_multiple_of(every)).count();
        (key.is_multiple_of(2) && key < 1000).then(|| format!("v{key}{}", "!".repeat(bangs)))
    }

    /// Every key put in is held; of keys not put in, about 1 in 100 seems held.
    #[test]
    fn a_bloom_filter_holds_every_key_it_was_given_and_few_others() {
        let mut bloom = Bloom::sized(10_000);
        let key = |n: u64| bincode::serialize(&(n, "contact")).expect("encode");
        for n in 0..10_000 {
            bloom.insert(n / 3, &key(n));
        }
        assert!((0..10_000).all(|n| bloom.may_hold(n / 3, &key(n))));
        let seeming = (10_000..110_000).filter(|&n| bloom.may_hold(n / 3, &key(n))).count();
        assert!(seeming < 2_000, "{seeming} of 100000 absent keys seem held");
        assert!((0..64).all(|n| !Bloom::sized(0).may_hold(n, &key(n))), "an empty run's filter holds nothing");
        // A key sets one bit in each word of one block: a lookup reads one cache line.
        for n in 0..100 {
            let mut one = Bloom::sized(10_000);
            one.insert(n / 3, &key(n));
            let set: Vec<&Block> = one.blocks.iter().filter(|block| block.0 != [0; 8]).collect();
            assert_eq!(set.len(), 1, "key {n} set bits in {} blocks", set.len());
            assert!(set[0].0.iter().all(|word| word.count_ones() == 1), "key {n}: one bit in each word");
        }
        assert_eq!(std::mem::align_of::<Block>(), 32, "a block never straddles two cache lines");
    }

    #[test]
    fn a_save_that_fails_part_way_leaves_the_state_as_it_was() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut keyed: Keyed<u32, String> = Keyed::new(shared_route);
        for key in 0..100 {
            keyed.insert(key, format!("v{key}"));
        }
        keyed.save(dir.path(), None, "Op", 0, 1).expect("save");
        keyed.insert(7, "changed".to_owned());
        let missing = dir.path().join("no-such-dir");
        assert!(keyed.save(&missing, Some(dir.path()), "Op", 0, 1).is_err(), "nowhere to save");
        assert_eq!(keyed.get(&3), Some("v3".to_owned()), "saved keys are still read");
        assert_eq!(keyed.get(&7), Some("changed".to_owned()), "touched keys are still held");
        keyed.save(dir.path(), Some(dir.path()), "Op", 0, 1).expect("save where it can");
        assert_eq!((keyed.get(&3), keyed.get(&7)), (Some("v3".to_owned()), Some("changed".to_owned())));
        assert!(keyed.error.is_none());
    }

    #[test]
    fn keys_are_found_in_the_newest_run_and_four_runs_merge_while_the_oldest_is_at_most_twice_the_newest() {
        let dirs = tempfile::tempdir().expect("temp dir");
        let dir = |n: usize| {
            let dir = dirs.path().join(format!("save-{n}"));
            std::fs::create_dir_all(&dir).expect("dir");
            dir
        };
        let mut keyed: Keyed<u32, String> = Keyed::new(shared_route);
        for key in (0..1000).step_by(2) {
            keyed.insert(key, format!("v{key}"));
        }
        assert_eq!(keyed.save(&dir(0), None, "Op", 0, 1).expect("save"), vec!["Op.0.0.state"]);
        assert!(keyed.memory.is_empty(), "saved keys leave memory");
        for key in 0..1000 {
            assert_eq!(keyed.get(&key), expected(key, &[]), "key {key}");
        }
        // Each save changes some saved keys: 50, then 20, 10 and 25 of the 500.
        let mut changed = Vec::new();
        let mut saves = Vec::new();
        for (n, every) in [20, 50, 100, 40].into_iter().enumerate() {
            for key in (0..1000).step_by(every) {
                let (value, existed) = keyed.entry(&key, String::new);
                assert!(existed, "key {key} was saved");
                value.push('!');
            }
            changed.push(every as u32);
            saves.push(keyed.save(&dir(n + 1), Some(&dir(n)), "Op", 0, 1).expect("save again"));
            for key in 0..1001 {
                assert_eq!(keyed.get(&key), expected(key, &changed), "save {n}, key {key}");
            }
        }
        // 500, 50, 20 and 10 stay four runs (500 is more than twice 10); + 25: the last four are
        // 50, 20, 10 and 25, and merge into one (60 keys).
        let runs: Vec<Vec<&str>> = saves.iter().map(|runs| runs.iter().map(String::as_str).collect()).collect();
        assert_eq!(runs[0], ["Op.0.0.state", "Op.0.1.state"]);
        assert_eq!(runs[1], ["Op.0.0.state", "Op.0.1.state", "Op.0.2.state"]);
        assert_eq!(runs[2], ["Op.0.0.state", "Op.0.1.state", "Op.0.2.state", "Op.0.3.state"]);
        assert_eq!(runs[3], ["Op.0.0.state", "Op.0.5.state"]);
        // The oldest run was put in every directory as it was: linked, not written again.
        use std::os::unix::fs::MetadataExt;
        let inode = |n: usize| std::fs::metadata(dir(n).join("Op.0.0.state")).expect("run").ino();
        assert_eq!((inode(1), inode(2), inode(4)), (inode(0), inode(0), inode(0)));
        let mut left: Vec<String> = std::fs::read_dir(dir(4))
            .expect("dir")
            .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["Op.0.0.state", "Op.0.5.state"], "merged runs are not left in the directory");
        assert!(keyed.error.is_none());
        // Scanned twice (rows at epoch 0, then a save merging from it): both see every key once,
        // with its newest value.
        let mut rows = Vec::new();
        keyed.each_saved(0, 1, |key, value| rows.push((*key, value.clone())));
        let mut again = 0;
        keyed.each_saved(0, 1, |_, _| again += 1);
        assert_eq!((rows.len(), again), (500, 500));
        assert!(rows.iter().all(|(key, value)| Some(value) == expected(*key, &changed).as_ref()));
        let order = |key: &u32| (shared_route(key), key.to_le_bytes());
        assert!(rows.windows(2).all(|pair| order(&pair[0].0) < order(&pair[1].0)), "in order, each key once");
        assert!(keyed.error.is_none());
        // Saved again into the directory it looks keys up in: its runs stay as they are.
        keyed.insert(1001, "new".to_owned());
        keyed.save(&dir(4), Some(&dir(4)), "Op", 0, 1).expect("save in place");
        assert_eq!(keyed.get(&1001), Some("new".to_owned()));
        assert_eq!(keyed.get(&40), expected(40, &changed));
        assert!(keyed.error.is_none());
    }

    /// Small entries start a block every 32; large ones every 4 KiB or so, so a lookup reads a
    /// few KiB whatever the entries' sizes.
    #[test]
    fn a_run_of_small_and_large_entries_indexes_by_count_and_by_bytes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let large = |key: u32| "x".repeat((key * 37 % 9000) as usize);
        let mut keyed: Keyed<u32, String> = Keyed::new(|key| u64::from(*key));
        for key in 0..300 {
            keyed.insert(key, format!("v{key}"));
        }
        for key in 300..600 {
            keyed.insert(key, large(key));
        }
        keyed.save(dir.path(), None, "Op", 0, 1).expect("save");
        let backing = keyed.backing.as_ref().expect("saved");
        let file = &backing.files[0][0];
        let small = file.index.iter().filter(|&&(route, _)| route < 300).count();
        assert_eq!(small, 300usize.div_ceil(INDEX_EVERY), "small entries: one index point every 32");
        assert!(file.index.len() - small >= 100, "large entries: {} index points", file.index.len() - small);
        let ends = file.index.iter().map(|&(_, at)| at).skip(1).chain([file.entries_end]);
        let widest = file.index.iter().zip(ends).map(|(&(_, start), end)| end - start).max().unwrap_or(0);
        assert!(widest < INDEX_BYTES + 9000 + 2 * HEAD as u64, "a block of {widest} bytes");
        for key in 0..600 {
            let value = if key < 300 { format!("v{key}") } else { large(key) };
            assert_eq!(keyed.get(&key), Some(value), "key {key}");
        }
        assert_eq!(keyed.get(&600), None);
        assert!(keyed.error.is_none());
    }
}
