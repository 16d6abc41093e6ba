//! The embedded deployment's bus: a durable append-only log in `<data>/log/events.log`.
//!
//! A record is `[u32 LE length][u32 LE CRC-32 of the payload][payload]`; the payload is NDJSON
//! (canonical events, and rejections as `RejectedRow::to_bus_line` writes them). An append returns only
//! after the record is written and `fdatasync`ed, so an acknowledged event survives `kill -9`.
//! Appends from concurrent requests are grouped: one writer thread writes everything waiting and
//! syncs once for all of it (group commit).
//!
//! A record's position is its byte offset. On open, the log is checked from the start: a torn or
//! corrupt tail (a crash mid-append, never acknowledged) is cut off, so appends continue after
//! the last whole record.
//!
//! Ingest appends through [`LogBus`]; the runtime reads through [`LogSource`].

mod bus;
mod source;

pub use bus::LogBus;
pub use source::LogSource;

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use tokio::sync::{oneshot, watch};

const HEADER_BYTES: u64 = 8;
/// Upper bound of one record's payload; a longer length in a header means a corrupt header.
pub const MAX_RECORD_BYTES: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("event log {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("event log: a record of {0} bytes is over the {MAX_RECORD_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("event log: the writer stopped")]
    Closed,
}

/// One record read back: its position and payload.
pub struct LogRecord {
    pub offset: u64,
    pub payload: Vec<u8>,
}

struct Append {
    payload: Vec<u8>,
    done: oneshot::Sender<Result<u64, LogError>>,
}

/// The writing side; cheap to share (`Arc`). Dropping it stops the writer thread.
pub struct LocalLog {
    path: PathBuf,
    /// Names this log (kept in `log/id`), for stores that record how far into it they reach.
    id: String,
    appends: mpsc::Sender<Append>,
    durable_end: watch::Receiver<u64>,
}

impl LocalLog {
    /// Opens (creating) the log in `data_dir/log`, cutting off a torn tail.
    pub fn open(data_dir: &Path) -> Result<Self, LogError> {
        let dir = data_dir.join("log");
        let path = dir.join("events.log");
        let io = |source| LogError::Io { path: path.display().to_string(), source };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let mut file = OpenOptions::new().create(true).read(true).append(true).open(&path).map_err(io)?;
        let end = valid_end(&mut file).map_err(io)?;
        let id = log_id(&dir).map_err(io)?;
        // A new file's name must survive a power loss too.
        File::open(&dir).and_then(|d| d.sync_all()).map_err(io)?;
        let length = file.metadata().map_err(io)?.len();
        if end < length {
            tracing::warn!(path = %path.display(), valid_bytes = end, cut_bytes = length - end, "event log: cutting off a torn tail");
            file.set_len(end).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        let (appends, receiver) = mpsc::channel();
        let (durable, durable_end) = watch::channel(end);
        let writer_path = path.clone();
        std::thread::Builder::new()
            .name("convoflow-log-writer".to_owned())
            .spawn(move || write_loop(file, writer_path, end, receiver, durable))
            .map_err(io)?;
        Ok(LocalLog { path, id, appends, durable_end })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record and waits until it is on disk; returns its offset.
    pub async fn append(&self, payload: Vec<u8>) -> Result<u64, LogError> {
        if payload.len() > MAX_RECORD_BYTES {
            return Err(LogError::TooLarge(payload.len()));
        }
        let (done, result) = oneshot::channel();
        self.appends.send(Append { payload, done }).map_err(|_| LogError::Closed)?;
        result.await.map_err(|_| LogError::Closed)?
    }

    /// The end of what is durable; changes after every group commit.
    pub fn durable_end(&self) -> watch::Receiver<u64> {
        self.durable_end.clone()
    }

    /// A reader of the records from `offset` on.
    pub fn reader(&self, offset: u64) -> Result<LogReader, LogError> {
        let file =
            File::open(&self.path).map_err(|source| LogError::Io { path: self.path.display().to_string(), source })?;
        Ok(LogReader { file, path: self.path.clone(), offset })
    }
}

fn write_loop(
    mut file: File,
    path: PathBuf,
    mut end: u64,
    appends: mpsc::Receiver<Append>,
    durable: watch::Sender<u64>,
) {
    // Set when a failed write could not be cut off: appending after unknown bytes would put
    // records where readers cannot find them, so every later append fails instead.
    let mut broken: Option<String> = None;
    while let Ok(first) = appends.recv() {
        let mut group = vec![first];
        group.extend(appends.try_iter());
        if let Some(problem) = &broken {
            for append in group {
                let source = std::io::Error::other(problem.clone());
                let _ = append.done.send(Err(LogError::Io { path: path.display().to_string(), source }));
            }
            continue;
        }
        let mut buffer = Vec::with_capacity(group.iter().map(|a| a.payload.len() + HEADER_BYTES as usize).sum());
        let mut offsets = Vec::with_capacity(group.len());
        for append in &group {
            offsets.push(end + buffer.len() as u64);
            buffer.extend_from_slice(&(append.payload.len() as u32).to_le_bytes());
            buffer.extend_from_slice(&crc32fast::hash(&append.payload).to_le_bytes());
            buffer.extend_from_slice(&append.payload);
        }
        let written = file.write_all(&buffer).and_then(|()| file.sync_data());
        match written {
            Ok(()) => {
                end += buffer.len() as u64;
                durable.send_replace(end);
                for (append, offset) in group.into_iter().zip(offsets) {
                    let _ = append.done.send(Ok(offset));
                }
            }
            Err(error) => {
                // Whatever part of the group reached the file is not acknowledged; cut it off so the
                // next group starts at a record boundary.
                tracing::error!(path = %path.display(), %error, "event log: append failed");
                if let Err(cut) = file.set_len(end) {
                    tracing::error!(path = %path.display(), error = %cut, "event log: cannot cut off the failed append; refusing further appends");
                    broken = Some(format!("a failed append could not be cut off ({cut}); restart convoflow"));
                }
                for append in group {
                    let source = std::io::Error::new(error.kind(), error.to_string());
                    let _ = append.done.send(Err(LogError::Io { path: path.display().to_string(), source }));
                }
            }
        }
    }
}

/// The offset after the last whole, intact record.
fn valid_end(file: &mut File) -> std::io::Result<u64> {
    let length = file.metadata()?.len();
    file.seek(SeekFrom::Start(0))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, &*file);
    let mut offset = 0u64;
    let mut payload = Vec::new();
    loop {
        let mut header = [0u8; HEADER_BYTES as usize];
        if offset + HEADER_BYTES > length || reader.read_exact(&mut header).is_err() {
            return Ok(offset);
        }
        let (size, crc) = split_header(&header);
        if size > MAX_RECORD_BYTES || offset + HEADER_BYTES + size as u64 > length {
            return Ok(offset);
        }
        payload.resize(size, 0);
        if reader.read_exact(&mut payload).is_err() || crc32fast::hash(&payload) != crc {
            return Ok(offset);
        }
        offset += HEADER_BYTES + size as u64;
    }
}

fn split_header(header: &[u8; HEADER_BYTES as usize]) -> (usize, u32) {
    let size = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    (size, crc)
}

/// `bytes` random bytes as hex.
pub fn random_hex(bytes: usize) -> std::io::Result<String> {
    let mut random = vec![0u8; bytes];
    File::open("/dev/urandom")?.read_exact(&mut random)?;
    Ok(random.iter().map(|b| format!("{b:02x}")).collect())
}

/// The log's id, made when the log is: a new log (the old one deleted) gets a new id, so no store
/// mistakes its offsets for the old one's.
fn log_id(dir: &Path) -> std::io::Result<String> {
    let path = dir.join("id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        if !id.trim().is_empty() {
            return Ok(id.trim().to_owned());
        }
    }
    let id = random_hex(8)?;
    let file = File::create(&path)?;
    (&file).write_all(id.as_bytes())?;
    file.sync_all()?;
    File::open(dir)?.sync_all()?;
    Ok(id)
}

/// Reads records in order; only up to an end the caller knows to be durable.
pub struct LogReader {
    file: File,
    path: PathBuf,
    offset: u64,
}

impl LogReader {
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Whole records from the current offset up to `end`, at most about `max_bytes` of them (at
    /// least one record when any is there).
    pub fn read_until(&mut self, end: u64, max_bytes: usize) -> Result<Vec<LogRecord>, LogError> {
        let io = |source| LogError::Io { path: self.path.display().to_string(), source };
        let mut records = Vec::new();
        let mut taken = 0usize;
        while self.offset + HEADER_BYTES <= end && (records.is_empty() || taken < max_bytes) {
            let mut header = [0u8; HEADER_BYTES as usize];
            self.file.read_exact_at(&mut header, self.offset).map_err(io)?;
            let (size, crc) = split_header(&header);
            let mut payload = vec![0u8; size];
            self.file.read_exact_at(&mut payload, self.offset + HEADER_BYTES).map_err(io)?;
            if crc32fast::hash(&payload) != crc {
                let source = std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("CRC mismatch at offset {}", self.offset),
                );
                return Err(io(source));
            }
            records.push(LogRecord { offset: self.offset, payload });
            self.offset += HEADER_BYTES + size as u64;
            taken += size;
        }
        Ok(records)
    }
}

/// Writes `payload` as the log's bytes would hold it (for tests that build logs by hand).
pub fn encode_record(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + HEADER_BYTES as usize);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_are_read_back_in_order_and_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = LocalLog::open(dir.path()).expect("open");
        let appends: Vec<_> = (0..50).map(|i| log.append(format!("record {i}\n").into_bytes())).collect();
        let offsets: Vec<u64> =
            futures::future::join_all(appends).await.into_iter().map(|r| r.expect("append")).collect();
        let end = *log.durable_end().borrow();
        let mut reader = log.reader(0).expect("reader");
        let records = reader.read_until(end, usize::MAX).expect("read");
        assert_eq!(records.len(), 50);
        assert_eq!(records.iter().map(|r| r.offset).collect::<Vec<_>>(), offsets);
        assert_eq!(records[7].payload, b"record 7\n");
        drop(log);

        let reopened = LocalLog::open(dir.path()).expect("reopen");
        assert_eq!(*reopened.durable_end().borrow(), end);
        let offset = reopened.append(b"after\n".to_vec()).await.expect("append");
        assert_eq!(offset, end);
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_off_and_whole_records_stay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log").join("events.log");
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        let whole = encode_record(b"whole\n");
        let mut torn = encode_record(b"torn record\n");
        torn.truncate(torn.len() - 3);
        let mut corrupt = encode_record(b"corrupt\n");
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0xff;
        for tail in [torn, corrupt] {
            std::fs::write(&path, [whole.clone(), tail].concat()).expect("write");
            let log = LocalLog::open(dir.path()).expect("open");
            assert_eq!(*log.durable_end().borrow(), whole.len() as u64);
            assert_eq!(std::fs::metadata(&path).expect("stat").len(), whole.len() as u64);
            let offset = log.append(b"next\n".to_vec()).await.expect("append");
            let records =
                log.reader(0).expect("reader").read_until(*log.durable_end().borrow(), usize::MAX).expect("read");
            assert_eq!(
                records.iter().map(|r| r.payload.clone()).collect::<Vec<_>>(),
                vec![b"whole\n".to_vec(), b"next\n".to_vec()]
            );
            assert_eq!(offset, whole.len() as u64);
        }
    }

    #[tokio::test]
    async fn reads_stop_at_the_given_end_and_respect_the_byte_budget() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = LocalLog::open(dir.path()).expect("open");
        for i in 0..10 {
            log.append(vec![b'x'; 100 + i]).await.expect("append");
        }
        let end = *log.durable_end().borrow();
        let mut reader = log.reader(0).expect("reader");
        let first = reader.read_until(end, 250).expect("read");
        assert_eq!(first.len(), 3, "stops once the budget is reached");
        let rest = reader.read_until(end, usize::MAX).expect("read");
        assert_eq!(rest.len(), 7);
        assert_eq!(reader.offset(), end);
        assert!(reader.read_until(end, usize::MAX).expect("read").is_empty());
    }
}
