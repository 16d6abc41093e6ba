//! NDJSON files as the runtime's source, which ends with the last file. Each read takes the next
//! [`BATCH_LINES`] lines per worker, in file order, and parses them on `workers` threads (each its
//! own byte range, ending on a line boundary); a line that fails to parse becomes a `rejected`
//! row naming the file and line, and the rest go on. Events carry their file and line as input
//! position, so the first copy of an event in the input wins, whatever the worker count.

use crate::connector::{Batch, Read, RuntimeError, Source};
use convoflow_events::{parse_event, split_lines};
use convoflow_operators::RejectedRow;
use std::time::Duration;

mod whatsapp;

pub use whatsapp::{normalize_files, Normalized};

/// Lines per worker per read, and so per epoch.
const BATCH_LINES: usize = 16 * 1024;

/// Bytes read from an input at a time.
const READ_BYTES: usize = 1 << 20;

/// An input and its name (as `rejected.source` shows it). A file is read as its lines are
/// needed, one read's worth at a time, not held whole: the 1 M-event file is 206 MB.
pub struct InputFile {
    pub name: String,
    reader: Box<dyn std::io::Read + Send>,
    /// Bytes read beyond the lines already taken.
    pending: Vec<u8>,
    ended: bool,
}

impl InputFile {
    pub fn from_bytes(name: impl Into<String>, bytes: Vec<u8>) -> Self {
        InputFile { name: name.into(), reader: Box::new(std::io::empty()), pending: bytes, ended: true }
    }

    pub fn open(name: impl Into<String>, path: &std::path::Path) -> std::io::Result<Self> {
        let file = std::fs::File::open(path)?;
        Ok(InputFile { name: name.into(), reader: Box::new(file), pending: Vec::new(), ended: false })
    }

    /// Everything not yet taken, at once (a webhook file is normalized whole).
    pub fn take_rest(&mut self) -> std::io::Result<Vec<u8>> {
        self.reader.read_to_end(&mut self.pending)?;
        self.ended = true;
        Ok(std::mem::take(&mut self.pending))
    }

    /// The next `lines` whole lines, fewer at the end (where the last line may lack its newline);
    /// empty once everything is taken.
    fn take_lines(&mut self, lines: usize) -> std::io::Result<Vec<u8>> {
        let mut counted = memchr::memchr_iter(b'\n', &self.pending).count();
        while counted < lines && !self.ended {
            let start = self.pending.len();
            let mut piece = std::io::Read::take(&mut self.reader, READ_BYTES as u64);
            let read = std::io::Read::read_to_end(&mut piece, &mut self.pending)?;
            self.ended = read == 0;
            counted += memchr::memchr_iter(b'\n', &self.pending[start..]).count();
        }
        let rest = self.pending.split_off(after_lines(&self.pending, 0, lines));
        Ok(std::mem::replace(&mut self.pending, rest))
    }
}

/// Input position of a line: files in command-line order, then line numbers; stored events are 0.
fn position(file: usize, line: u64) -> u64 {
    ((file as u64 + 1) << 40) | line
}

pub struct FileSource {
    files: Vec<InputFile>,
    workers: usize,
    received_at: i64,
    /// Where the next read starts: a file and the number of its next line.
    file: usize,
    line: u64,
    reads: u64,
}

impl FileSource {
    pub fn new(files: Vec<InputFile>, workers: usize, received_at: i64) -> Self {
        FileSource { files, workers: workers.max(1), received_at, file: 0, line: 1, reads: 0 }
    }
}

/// Parses `bytes` (whole lines, the first numbered `first_line`) of file `file`.
fn parse_range(name: &str, file: usize, bytes: &[u8], first_line: u64, received_at: i64) -> Batch {
    let mut batch = Batch::default();
    for line in split_lines(bytes, first_line) {
        match parse_event(line.bytes) {
            Ok(event) => batch.events.push((position(file, line.number), Box::new(event))),
            Err(error) => batch.rejected.push(RejectedRow::new(
                error.tenant_id.as_deref(),
                received_at,
                error.to_string(),
                line.bytes,
                format!("{name}:{}", line.number),
            )),
        }
    }
    batch
}

/// The end of `bytes[start..]` after `lines` newlines (or the end of `bytes`).
fn after_lines(bytes: &[u8], start: usize, lines: usize) -> usize {
    memchr::memchr_iter(b'\n', &bytes[start..]).nth(lines.saturating_sub(1)).map_or(bytes.len(), |at| start + at + 1)
}

impl Source for FileSource {
    fn input_id(&self) -> Option<&str> {
        None
    }

    fn read(&mut self, _wait: Duration) -> Result<Read, RuntimeError> {
        let (input, bytes) = loop {
            let Some(input) = self.files.get_mut(self.file) else { return Ok(Read::End) };
            let bytes = input
                .take_lines(BATCH_LINES * self.workers)
                .map_err(|source| RuntimeError::Io { what: format!("cannot read input {}", input.name), source })?;
            if !bytes.is_empty() {
                break (&*input, bytes);
            }
            (self.file, self.line) = (self.file + 1, 1);
        };
        let end = bytes.len();
        // One byte range per worker, split at line ends.
        let mut ranges = Vec::with_capacity(self.workers);
        let (mut start, mut line) = (0, self.line);
        for worker in 0..self.workers {
            let target = end * (worker + 1) / self.workers;
            let stop = if worker + 1 == self.workers {
                end
            } else {
                memchr::memchr(b'\n', &bytes[target.max(start)..end]).map_or(end, |at| target.max(start) + at + 1)
            };
            ranges.push((start, stop, line));
            line += memchr::memchr_iter(b'\n', &bytes[start..stop]).count() as u64;
            start = stop;
        }
        // A last line without its newline is a line too.
        line += u64::from(bytes.last() != Some(&b'\n'));
        let (file, received_at, name, bytes) = (self.file, self.received_at, input.name.as_str(), &bytes);
        let parts: Vec<Batch> = std::thread::scope(|scope| {
            let handles: Vec<_> = ranges
                .iter()
                .map(|&(start, stop, first)| {
                    scope.spawn(move || parse_range(name, file, &bytes[start..stop], first, received_at))
                })
                .collect();
            handles
                .into_iter()
                .map(|handle| handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                .collect()
        });
        let mut batch = Batch { records: (line - self.line), first: position(file, self.line), ..Batch::default() };
        for part in parts {
            batch.events.extend(part.events);
            batch.rejected.extend(part.rejected);
        }
        batch.last = position(file, line);
        self.reads += 1;
        self.line = line;
        Ok(Read::Batch(batch))
    }

    fn position(&self) -> u64 {
        self.reads
    }

    fn end(&mut self) -> Result<u64, RuntimeError> {
        Ok(self.reads)
    }
}

/// Every event and rejection of `source`, read to its end (for tests).
#[cfg(test)]
fn read_all(mut source: FileSource) -> (Vec<convoflow_operators::dedup::Positioned>, Vec<RejectedRow>) {
    let (mut events, mut rejected) = (Vec::new(), Vec::new());
    while let Ok(Read::Batch(batch)) = source.read(Duration::ZERO) {
        events.extend(batch.events);
        rejected.extend(batch.rejected);
    }
    (events, rejected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: usize) -> String {
        format!(r#"{{"event_id":"e{id}","tenant_id":"t","ts":{id},"type":"touch","contact_id":"c","channel":"ad"}}"#)
    }

    #[test]
    fn every_line_is_read_once_with_its_number_whatever_the_worker_count() {
        let mut text = String::new();
        for id in 1..=9 {
            text.push_str(&if id == 5 { "{broken".to_owned() } else { line(id) });
            text.push('\n');
            if id == 3 {
                text.push('\n'); // blank line 4
            }
        }
        for workers in 1..=4 {
            let files = vec![InputFile::from_bytes("in.ndjson", text.clone().into_bytes())];
            let (events, rejected) = read_all(FileSource::new(files, workers, 0));
            let mut ids: Vec<convoflow_events::Text> = events.into_iter().map(|(_, e)| e.event_id).collect();
            ids.sort();
            assert_eq!(ids, ["e1", "e2", "e3", "e4", "e6", "e7", "e8", "e9"], "workers = {workers}");
            let sources: Vec<String> = rejected.into_iter().map(|r| r.source).collect();
            assert_eq!(sources, ["in.ndjson:6"], "workers = {workers}");
        }
    }

    /// A reader that gives at most 7 bytes per read, as a pipe or a slow disk may.
    struct Trickle(std::io::Cursor<Vec<u8>>);

    impl std::io::Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(7);
            self.0.read(&mut buf[..n])
        }
    }

    #[test]
    fn a_file_read_piece_by_piece_gives_the_lines_of_the_whole_file() {
        // Lines cut anywhere by the reads, more lines than one read takes, and a last line
        // without its newline: the same events, rejections and line numbers as the file whole.
        let lines = BATCH_LINES + 3;
        let mut text: String =
            (0..lines).map(|i| if i == 7 { "{broken\n".to_owned() } else { line(i) + "\n" }).collect();
        text.push_str(&line(lines));
        let whole =
            read_all(FileSource::new(vec![InputFile::from_bytes("in.ndjson", text.clone().into_bytes())], 1, 0));
        let trickled = InputFile {
            name: "in.ndjson".into(),
            reader: Box::new(Trickle(std::io::Cursor::new(text.into_bytes()))),
            pending: Vec::new(),
            ended: false,
        };
        let pieces = read_all(FileSource::new(vec![trickled], 2, 0));
        let ids = |(events, _): &(Vec<convoflow_operators::dedup::Positioned>, Vec<RejectedRow>)| {
            events.iter().map(|(position, event)| (*position, event.event_id.clone())).collect::<Vec<_>>()
        };
        assert_eq!(ids(&pieces).len(), lines);
        assert_eq!(ids(&pieces), ids(&whole));
        assert_eq!(pieces.1.iter().map(|r| r.source.as_str()).collect::<Vec<_>>(), ["in.ndjson:8"]);
    }

    #[test]
    fn reads_follow_file_order_so_positions_grow_from_read_to_read() {
        // More lines than one read takes, over two files: every read's positions are above the
        // previous read's, so an earlier copy of an event is always in an earlier epoch.
        let lines = 2 * BATCH_LINES + 5;
        let text: String = (0..lines).map(|i| line(i) + "\n").collect();
        let files = vec![
            InputFile::from_bytes("a.ndjson", text.clone().into_bytes()),
            InputFile::from_bytes("b.ndjson", (line(1) + "\n" + &line(2)).into_bytes()),
        ];
        let mut source = FileSource::new(files, 1, 0);
        let (mut reads, mut seen, mut highest) = (0, 0, 0);
        while let Ok(Read::Batch(batch)) = source.read(Duration::ZERO) {
            let positions: Vec<u64> = batch.events.iter().map(|(position, _)| *position).collect();
            assert!(positions.iter().all(|&position| position > highest), "read {reads}");
            highest = positions.iter().copied().max().unwrap_or(highest);
            seen += positions.len();
            reads += 1;
        }
        assert_eq!(seen, lines + 2);
        assert_eq!(reads, 4, "three reads of a.ndjson (B, B, 5 lines), one of b.ndjson");
    }
}
