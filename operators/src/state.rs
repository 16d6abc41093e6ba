//! Persisted operator state (issue 13): every keyed operator's per-key state, saved by each worker
//! beside the tables and loaded instead of re-feeding every stored event.
//!
//! A worker's operators register with its [`Registry`] while the dataflow is built (the registry
//! is set for the build only, see [`building`]); [`crate::Driver::save`] has each worker write
//! `worker-<i>.bin`, one section per operator, and [`crate::Driver::resume`] builds the dataflow
//! with those sections loaded. Only the fold state is written: what a key emitted is derived again
//! from it on load (`derive` is a function of the state alone), so the two cannot disagree.
//!
//! A saved state holds keys as routed among the workers that saved it. Loaded with as many workers,
//! each reads its own file; with another count, each reads every file and keeps the keys the
//! exchange now routes to it (`route(key) % workers`, as timely's exchange does).
//!
//! On load the driver runs one empty epoch (0): each restored operator gives the rows its keys
//! derive at that epoch, so the epoch's output is every derived table as the state has it, and
//! ignores what reaches it at epoch 0, which is what the operators before it restored (and it
//! restored too).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Bumped whenever any operator's state type changes: a state of another format is not loaded.
pub const STATE_FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: cannot decode operator state: {source}")]
    Decode { path: PathBuf, source: bincode::Error },
    #[error("cannot encode the state of operator {operator}: {source}")]
    Encode { operator: String, source: bincode::Error },
    #[error("the saved state of operator {operator} cannot be decoded: {source}")]
    Section { operator: String, source: bincode::Error },
    #[error("{path}: format {found}, this build reads {STATE_FORMAT}")]
    Format { path: PathBuf, found: u32 },
    #[error("{path}: saved with tag `{found}`, expected `{expected}`")]
    Tag { path: PathBuf, found: String, expected: String },
}

/// What one worker's file starts with; then come `operators` sections of `(name, state)`, each
/// the operator's state encoded by itself.
#[derive(Serialize, Deserialize)]
struct Header {
    format: u32,
    /// What the state belongs to (its tables' generation, the tenants configuration).
    tag: String,
    workers: usize,
    operators: usize,
}

struct WorkerFile {
    workers: usize,
    operators: Vec<(String, Vec<u8>)>,
}

pub fn worker_path(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("worker-{index}.bin"))
}

/// Writes this worker's file (fsynced; the driver renames the directory into place), one
/// operator's encoded state in memory at a time.
pub(crate) fn save_worker(
    registry: &Registry,
    dir: &Path,
    tag: &str,
    index: usize,
    workers: usize,
) -> Result<(), StateError> {
    let path = worker_path(dir, index);
    let file = std::fs::File::create(&path).map_err(|source| StateError::Io { path: path.clone(), source })?;
    let mut out = std::io::BufWriter::new(file);
    let header = Header { format: STATE_FORMAT, tag: tag.to_owned(), workers, operators: registry.operators.len() };
    bincode::serialize_into(&mut out, &header).map_err(encode("header"))?;
    for (name, operator) in &registry.operators {
        let bytes = operator.save().map_err(encode(name))?;
        bincode::serialize_into(&mut out, &(name, bytes)).map_err(encode(name))?;
    }
    let file = out.into_inner().map_err(|error| StateError::Io { path: path.clone(), source: error.into_error() })?;
    file.sync_all().map_err(|source| StateError::Io { path, source })
}

/// Reads what worker `index` of `workers` loads from `dir`: its own file when the state was saved
/// by as many workers, else every file (each operator then keeps its own keys).
fn load_worker(dir: &Path, tag: &str, index: usize, workers: usize) -> Result<Loaded, StateError> {
    let own = read_worker_file(&worker_path(dir, index), tag);
    let (files, filter) = match own {
        Ok(file) if file.workers == workers => (vec![file], false),
        // Saved by another number of workers (this one may have had no file): read them all.
        _ => {
            let first = read_worker_file(&worker_path(dir, 0), tag)?;
            let mut files = Vec::with_capacity(first.workers);
            let saved_by = first.workers;
            files.push(first);
            for other in 1..saved_by {
                files.push(read_worker_file(&worker_path(dir, other), tag)?);
            }
            (files, true)
        }
    };
    let mut sections: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for file in files {
        for (name, bytes) in file.operators {
            sections.entry(name).or_default().push(bytes);
        }
    }
    Ok(Loaded { sections, filter, index, workers })
}

fn encode(operator: &str) -> impl FnOnce(bincode::Error) -> StateError + '_ {
    move |source| StateError::Encode { operator: operator.to_owned(), source }
}

fn read_worker_file(path: &Path, tag: &str) -> Result<WorkerFile, StateError> {
    let bytes = std::fs::read(path).map_err(|source| StateError::Io { path: path.to_owned(), source })?;
    let decode = |source| StateError::Decode { path: path.to_owned(), source };
    let mut input = bytes.as_slice();
    let header: Header = bincode::deserialize_from(&mut input).map_err(decode)?;
    if header.format != STATE_FORMAT {
        return Err(StateError::Format { path: path.to_owned(), found: header.format });
    }
    if header.tag != tag {
        return Err(StateError::Tag { path: path.to_owned(), found: header.tag, expected: tag.to_owned() });
    }
    let operators = (0..header.operators)
        .map(|_| bincode::deserialize_from(&mut input).map_err(decode))
        .collect::<Result<Vec<(String, Vec<u8>)>, _>>()?;
    if !input.is_empty() {
        let trailing = Box::new(bincode::ErrorKind::Custom(format!("{} bytes after the last section", input.len())));
        return Err(decode(trailing));
    }
    Ok(WorkerFile { workers: header.workers, operators })
}

/// The sections a worker loads, before its operators take them.
pub(crate) struct Loaded {
    sections: BTreeMap<String, Vec<Vec<u8>>>,
    /// The sections hold other workers' keys too.
    filter: bool,
    index: usize,
    workers: usize,
}

/// An operator's state, shared between the operator and its worker's registry.
trait Saved {
    fn save(&self) -> Result<Vec<u8>, bincode::Error>;
}

/// The operators of one worker's dataflow, and what they are to load.
#[derive(Default)]
pub struct Registry {
    operators: Vec<(String, Box<dyn Saved>)>,
    loaded: Option<Loaded>,
    /// Why the state could not be loaded (the first reason).
    error: Option<StateError>,
}

impl Registry {
    /// What worker `index` of `workers` is built with, to resume from `dir`.
    pub(crate) fn load(dir: &Path, tag: &str, index: usize, workers: usize) -> Self {
        match load_worker(dir, tag, index, workers) {
            Ok(loaded) => Registry { operators: Vec::new(), loaded: Some(loaded), error: None },
            Err(error) => Registry { operators: Vec::new(), loaded: None, error: Some(error) },
        }
    }

    /// Whether the dataflow was built from a saved state (its epoch 0 then gives the restored rows).
    pub fn restoring(&self) -> bool {
        self.loaded.is_some()
    }

    /// A section no operator could decode.
    pub(crate) fn take_error(&mut self) -> Option<StateError> {
        self.error.take()
    }
}

impl<T: Serialize> Saved for Rc<RefCell<T>> {
    fn save(&self) -> Result<Vec<u8>, bincode::Error> {
        bincode::serialize(&*self.borrow())
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

/// For an operator being built: registers its state (a map of `key → state`) under `name`, and
/// fills it with the keys of the loaded state routed to this worker (`route` as its exchange).
/// Returns whether the dataflow is being restored.
pub(crate) fn register<M>(name: &str, state: &Rc<RefCell<M>>, route: impl Fn(&M::Key) -> u64) -> bool
where
    M: Entries + Serialize + DeserializeOwned + 'static,
{
    BUILDING.with(|current| {
        let Some(registry) = current.borrow().clone() else { return false };
        let mut registry = registry.borrow_mut();
        let registry = &mut *registry;
        registry.operators.push((name.to_owned(), Box::new(state.clone())));
        let Some(loaded) = registry.loaded.as_mut() else { return false };
        for bytes in loaded.sections.remove(name).unwrap_or_default() {
            match bincode::deserialize::<M>(&bytes) {
                Ok(saved) => {
                    let (index, workers) = (loaded.index as u64, loaded.workers as u64);
                    let mine = |key: &M::Key| !loaded.filter || route(key) % workers == index;
                    state.borrow_mut().absorb(saved, mine);
                }
                Err(source) => {
                    registry.error.get_or_insert(StateError::Section { operator: name.to_owned(), source });
                }
            }
        }
        true
    })
}

/// A keyed state map that can take in another one's entries.
pub(crate) trait Entries {
    type Key;
    /// Adds `other`'s entries whose key `keep` accepts.
    fn absorb(&mut self, other: Self, keep: impl Fn(&Self::Key) -> bool);
}

impl<K: std::hash::Hash + Eq, V> Entries for rustc_hash::FxHashMap<K, V> {
    type Key = K;
    fn absorb(&mut self, other: Self, keep: impl Fn(&K) -> bool) {
        self.extend(other.into_iter().filter(|(key, _)| keep(key)));
    }
}
