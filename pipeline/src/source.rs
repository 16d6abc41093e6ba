//! NDJSON files as a dataflow source. Each worker parses its own byte range of every file (ranges
//! end on line boundaries), in batches of lines; a line that fails to parse becomes a `rejected`
//! row naming the file and line, and the rest go on.

use convoflow_events::{parse_event, split_lines, Event};
use convoflow_operators::{RejectedRow, SourceBatch};
use std::sync::Arc;

/// Lines per batch, and so per epoch of one worker.
const BATCH_LINES: usize = 16 * 1024;

pub struct InputFile {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// Input position of a line: files in command-line order, then line numbers; stored events are 0.
fn position(file: usize, line: u64) -> u64 {
    ((file as u64 + 1) << 40) | line
}

/// A worker's share of one file: bytes `start..end`, whose first line is `first_line`.
#[derive(Clone, Copy, Debug)]
struct Range {
    file: usize,
    start: usize,
    end: usize,
    first_line: u64,
}

/// Splits every file into `workers` ranges at newlines; returns the ranges of each worker.
fn partition(files: &[InputFile], workers: usize) -> Vec<Vec<Range>> {
    let mut shares = vec![Vec::new(); workers];
    for (file, input) in files.iter().enumerate() {
        let bytes = &input.bytes;
        let mut start = 0;
        let mut line = 1u64;
        for (worker, share) in shares.iter_mut().enumerate() {
            let target = bytes.len() * (worker + 1) / workers;
            let end = if worker + 1 == workers {
                bytes.len()
            } else {
                memchr::memchr(b'\n', &bytes[target.max(start)..]).map_or(bytes.len(), |i| target.max(start) + i + 1)
            };
            share.push(Range { file, start, end, first_line: line });
            line += memchr::memchr_iter(b'\n', &bytes[start..end]).count() as u64;
            start = end;
        }
    }
    shares
}

/// The batches of one worker: first the stored events it was handed, in the same number of
/// batches on every worker (so all stored events are in epochs before any input and win over
/// conflicting copies), then its input ranges.
pub struct WorkerSource {
    files: Arc<Vec<InputFile>>,
    ranges: Vec<Range>,
    stored: std::collections::VecDeque<Vec<Event>>,
    received_at: i64,
}

impl Iterator for WorkerSource {
    type Item = SourceBatch;

    fn next(&mut self) -> Option<SourceBatch> {
        if let Some(events) = self.stored.pop_front() {
            let events = events.into_iter().map(|event| (0, Box::new(event))).collect();
            return Some(SourceBatch { events, rejected: Vec::new(), lines: 0 });
        }
        let range = self.ranges.first_mut()?;
        let input = &self.files[range.file];
        let bytes = &input.bytes[range.start..range.end];
        let mut batch = SourceBatch { events: Vec::with_capacity(BATCH_LINES), rejected: Vec::new(), lines: 0 };
        let mut consumed = bytes.len();
        let mut lines_seen = 0u64;
        for (count, line) in split_lines(bytes, range.first_line).enumerate() {
            if count == BATCH_LINES {
                consumed = line.bytes.as_ptr() as usize - bytes.as_ptr() as usize;
                lines_seen = line.number - range.first_line;
                break;
            }
            batch.lines += 1;
            match parse_event(line.bytes) {
                Ok(event) => batch.events.push((position(range.file, line.number), Box::new(event))),
                Err(error) => batch.rejected.push(RejectedRow::new(
                    error.tenant_id.as_deref(),
                    self.received_at,
                    error.to_string(),
                    line.bytes,
                    format!("{}:{}", input.name, line.number),
                )),
            }
        }
        if consumed == bytes.len() {
            self.ranges.remove(0);
        } else {
            range.start += consumed;
            range.first_line += lines_seen;
        }
        Some(batch)
    }
}

/// Builds the per-worker sources over `files`, handing each worker a share of `stored`.
pub fn worker_sources(
    files: Vec<InputFile>,
    stored: Vec<Event>,
    workers: usize,
    received_at: i64,
) -> Vec<WorkerSource> {
    let workers = workers.max(1);
    let files = Arc::new(files);
    let stored_epochs = stored.len().div_ceil(workers * BATCH_LINES).max(1);
    let mut stored_batches: Vec<std::collections::VecDeque<Vec<Event>>> =
        (0..workers).map(|_| (0..stored_epochs).map(|_| Vec::new()).collect()).collect();
    for (index, event) in stored.into_iter().enumerate() {
        let (worker, round) = (index % workers, index / workers);
        stored_batches[worker][round / BATCH_LINES].push(event);
    }
    partition(&files, workers)
        .into_iter()
        .zip(stored_batches)
        .map(|(ranges, stored)| WorkerSource { files: files.clone(), ranges, stored, received_at })
        .collect()
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
            let files = vec![InputFile { name: "in.ndjson".into(), bytes: text.clone().into_bytes() }];
            let mut ids = Vec::new();
            let mut rejected = Vec::new();
            for source in worker_sources(files, Vec::new(), workers, 0) {
                for batch in source {
                    ids.extend(batch.events.into_iter().map(|(_, e)| e.event_id));
                    rejected.extend(batch.rejected.into_iter().map(|r| r.source));
                }
            }
            ids.sort();
            assert_eq!(ids, ["e1", "e2", "e3", "e4", "e6", "e7", "e8", "e9"], "workers = {workers}");
            assert_eq!(rejected, ["in.ndjson:6"], "workers = {workers}");
        }
    }

    #[test]
    fn stored_events_fill_the_same_leading_epochs_on_every_worker() {
        let stored: Vec<Event> = (0..2 * BATCH_LINES + 5)
            .map(|i| convoflow_events::parse_event(line(i + 100).as_bytes()).expect("valid"))
            .collect();
        let files = vec![InputFile { name: "in.ndjson".into(), bytes: (line(1) + "\n" + &line(2)).into_bytes() }];
        let sources = worker_sources(files, stored, 2, 0);
        let mut stored_seen = 0;
        for source in sources {
            let batches: Vec<SourceBatch> = source.collect();
            // 2·B + 5 stored events over 2 workers need 2 epochs of B each.
            assert!(batches[..2].iter().all(|b| b.events.iter().all(|(position, _)| *position == 0)));
            assert!(batches[2..].iter().all(|b| b.events.iter().all(|(position, _)| *position > 0)));
            stored_seen += batches[..2].iter().map(|b| b.events.len()).sum::<usize>();
        }
        assert_eq!(stored_seen, 2 * BATCH_LINES + 5);
    }
}
