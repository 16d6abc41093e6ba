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
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Bumped whenever any operator's state type, or the file layout, changes: a state of another
/// format is not loaded.
pub const STATE_FORMAT: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: cannot decode operator state: {source}")]
    Decode { path: PathBuf, source: bincode::Error },
    #[error("cannot encode the state of operator {operator}: {source}")]
    Encode { operator: String, source: bincode::Error },
    #[error("{path}: format {found}, this build reads {STATE_FORMAT}")]
    Format { path: PathBuf, found: u32 },
    #[error("{path}: saved with tag `{found}`, expected `{expected}`")]
    Tag { path: PathBuf, found: String, expected: String },
    #[error("{path}: saved by {found} workers, as its first file says {expected}")]
    Workers { path: PathBuf, found: usize, expected: usize },
    #[error("{path}: holds operator {found} where this build has {expected}")]
    Operator { path: PathBuf, found: String, expected: String },
}

/// What one worker's file starts with; then come `operators` sections, each the operator's name
/// and its state, encoded straight to the file in the order the dataflow builds its operators
/// (so a load decodes each straight from the file into the operator being built).
#[derive(Serialize, Deserialize)]
struct Header {
    format: u32,
    /// What the state belongs to (its tables' generation, the tenants configuration).
    tag: String,
    workers: usize,
    operators: usize,
}

pub fn worker_path(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("worker-{index}.bin"))
}

/// Writes this worker's file (fsynced; the driver renames the directory into place), each
/// operator's state encoded straight into the file.
pub(crate) fn save_worker(
    registry: &Registry,
    dir: &Path,
    tag: &str,
    index: usize,
    workers: usize,
) -> Result<(), StateError> {
    let path = worker_path(dir, index);
    let file = std::fs::File::create(&path).map_err(|source| StateError::Io { path: path.clone(), source })?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let header = Header { format: STATE_FORMAT, tag: tag.to_owned(), workers, operators: registry.operators.len() };
    bincode::serialize_into(&mut out, &header).map_err(encode("header"))?;
    for (name, operator) in &registry.operators {
        bincode::serialize_into(&mut out, name).map_err(encode(name))?;
        operator.save(&mut out).map_err(encode(name))?;
    }
    let file = out.into_inner().map_err(|error| StateError::Io { path: path.clone(), source: error.into_error() })?;
    file.sync_all().map_err(|source| StateError::Io { path, source })
}

fn encode(operator: &str) -> impl FnOnce(bincode::Error) -> StateError + '_ {
    move |source| StateError::Encode { operator: operator.to_owned(), source }
}

/// One saved worker file, read section by section.
struct WorkerFile {
    path: PathBuf,
    input: BufReader<File>,
    workers: usize,
    sections: usize,
}

impl WorkerFile {
    fn open(path: PathBuf, tag: &str) -> Result<Self, StateError> {
        let file = File::open(&path).map_err(|source| StateError::Io { path: path.clone(), source })?;
        let mut input = BufReader::with_capacity(1 << 20, file);
        let header: Header = bincode::deserialize_from(&mut input)
            .map_err(|source| StateError::Decode { path: path.clone(), source })?;
        if header.format != STATE_FORMAT {
            return Err(StateError::Format { path, found: header.format });
        }
        if header.tag != tag {
            return Err(StateError::Tag { path, found: header.tag, expected: tag.to_owned() });
        }
        Ok(WorkerFile { path, input, workers: header.workers, sections: header.operators })
    }

    fn decode(&self) -> impl FnOnce(bincode::Error) -> StateError + '_ {
        |source| StateError::Decode { path: self.path.clone(), source }
    }

    /// The next section, which must be operator `name`'s.
    fn next<M: DeserializeOwned>(&mut self, name: &str) -> Result<M, StateError> {
        if self.sections == 0 {
            return Err(StateError::Operator {
                path: self.path.clone(),
                found: "nothing".to_owned(),
                expected: name.to_owned(),
            });
        }
        self.sections -= 1;
        let found: String = bincode::deserialize_from(&mut self.input).map_err(self.decode())?;
        if found != name {
            return Err(StateError::Operator { path: self.path.clone(), found, expected: name.to_owned() });
        }
        bincode::deserialize_from(&mut self.input).map_err(self.decode())
    }

    /// Every section was taken and nothing follows the last.
    fn end(mut self) -> Result<(), StateError> {
        if self.sections > 0 {
            let found = bincode::deserialize_from::<_, String>(&mut self.input).unwrap_or_default();
            return Err(StateError::Operator { path: self.path, found, expected: "no more operators".to_owned() });
        }
        let mut rest = Vec::new();
        self.input.read_to_end(&mut rest).map_err(|source| StateError::Io { path: self.path.clone(), source })?;
        if !rest.is_empty() {
            let trailing = Box::new(bincode::ErrorKind::Custom(format!("{} bytes after the last section", rest.len())));
            return Err(StateError::Decode { path: self.path, source: trailing });
        }
        Ok(())
    }
}

/// Opens what worker `index` of `workers` loads from `dir`: its own file when the state was saved
/// by as many workers, else every file (each operator then keeps its own keys).
fn open_worker(dir: &Path, tag: &str, index: usize, workers: usize) -> Result<Loading, StateError> {
    if let Ok(own) = WorkerFile::open(worker_path(dir, index), tag) {
        if own.workers == workers {
            return Ok(Loading { files: vec![own], filter: false, index, workers });
        }
    }
    // Saved by another number of workers (this one may have had no file): read them all.
    let first = WorkerFile::open(worker_path(dir, 0), tag)?;
    let saved_by = first.workers;
    let mut files = vec![first];
    for other in 1..saved_by {
        let file = WorkerFile::open(worker_path(dir, other), tag)?;
        if file.workers != saved_by {
            return Err(StateError::Workers { path: file.path, found: file.workers, expected: saved_by });
        }
        files.push(file);
    }
    Ok(Loading { files, filter: true, index, workers })
}

/// The files a worker's operators load from while its dataflow is built.
pub(crate) struct Loading {
    files: Vec<WorkerFile>,
    /// The files hold other workers' keys too.
    filter: bool,
    index: usize,
    workers: usize,
}

/// An operator's state, shared between the operator and its worker's registry.
trait Saved {
    fn save(&self, out: &mut dyn Write) -> Result<(), bincode::Error>;
}

/// The operators of one worker's dataflow, and what they are to load.
#[derive(Default)]
pub struct Registry {
    operators: Vec<(String, Box<dyn Saved>)>,
    loading: Option<Loading>,
    restoring: bool,
    /// Why the state could not be loaded (the first reason).
    error: Option<StateError>,
}

impl Registry {
    /// What worker `index` of `workers` is built with, to resume from `dir`.
    pub(crate) fn load(dir: &Path, tag: &str, index: usize, workers: usize) -> Self {
        match open_worker(dir, tag, index, workers) {
            Ok(loading) => Registry { operators: Vec::new(), loading: Some(loading), restoring: true, error: None },
            Err(error) => Registry { operators: Vec::new(), loading: None, restoring: false, error: Some(error) },
        }
    }

    /// Whether the dataflow was built from a saved state (its epoch 0 then gives the restored rows).
    pub fn restoring(&self) -> bool {
        self.restoring
    }

    /// Once the dataflow is built: every saved section must have been taken.
    pub(crate) fn loaded(&mut self) {
        if let Some(loading) = self.loading.take() {
            for file in loading.files {
                if let Err(error) = file.end() {
                    self.error.get_or_insert(error);
                }
            }
        }
    }

    /// Why the state could not be loaded, if it could not.
    pub(crate) fn take_error(&mut self) -> Option<StateError> {
        self.error.take()
    }
}

impl<T: Serialize> Saved for Rc<RefCell<T>> {
    fn save(&self, out: &mut dyn Write) -> Result<(), bincode::Error> {
        bincode::serialize_into(out, &*self.borrow())
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
        let Some(loading) = registry.loading.as_mut() else { return registry.restoring };
        let (index, workers) = (loading.index as u64, loading.workers as u64);
        let filter = loading.filter;
        for file in &mut loading.files {
            match file.next::<M>(name) {
                Ok(saved) if filter => state.borrow_mut().absorb(saved, |key| route(key) % workers == index),
                Ok(saved) => state.borrow_mut().absorb_all(saved),
                Err(error) => {
                    registry.error.get_or_insert(error);
                    registry.loading = None;
                    break;
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
    /// Adds all of `other`'s entries (taking `other` whole when empty).
    fn absorb_all(&mut self, other: Self);
}

impl<K: std::hash::Hash + Eq, V> Entries for rustc_hash::FxHashMap<K, V> {
    type Key = K;
    fn absorb(&mut self, other: Self, keep: impl Fn(&K) -> bool) {
        self.extend(other.into_iter().filter(|(key, _)| keep(key)));
    }
    fn absorb_all(&mut self, other: Self) {
        if self.is_empty() {
            *self = other;
        } else {
            self.extend(other);
        }
    }
}
