//! Where the embedded store keeps each table under `<data>/tables/`: one `<table>.parquet` per
//! derived table, and `events` as segments `events/<first>-<last>.parquet` that are only ever
//! appended (one per replay or snapshot that stored new events) and now and then merged.
//!
//! A segment's name is the range of segment numbers it holds: a new one is `n-n` (one past the
//! highest so far), a merge of `a-b` and `c-d` is `a-d`. A merge is renamed into place before the
//! segments it replaces are removed, so after a crash between the two a segment whose range lies
//! inside another's is left over: it is not part of the table ([`event_segments`] leaves it out,
//! and the store removes it when it next opens). A store written before segments has
//! `events.parquet`, which is segment `0-0`.

use std::path::{Path, PathBuf};

/// One file of the `events` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub first: u64,
    pub last: u64,
    pub path: PathBuf,
}

impl Segment {
    /// The file name of segments `first..=last`.
    pub fn name(first: u64, last: u64) -> String {
        format!("{first:010}-{last:010}.parquet")
    }

    fn parse(path: PathBuf) -> Option<Segment> {
        let name = path.file_name()?.to_str()?.strip_suffix(".parquet")?;
        let (first, last) = name.split_once('-')?;
        let (first, last) = (first.parse().ok()?, last.parse().ok()?);
        (first <= last).then_some(Segment { first, last, path })
    }

    fn holds(&self, other: &Segment) -> bool {
        self.first <= other.first && other.last <= self.last && (self.first, self.last) != (other.first, other.last)
    }
}

/// Where `events`' segments are.
pub fn events_dir(tables_dir: &Path) -> PathBuf {
    tables_dir.join("events")
}

/// The `events` table's segments in order, and the files left over from a merge (see the module
/// doc). A store without any has none; one written before segments has its one file.
pub fn event_segments(tables_dir: &Path) -> std::io::Result<(Vec<Segment>, Vec<PathBuf>)> {
    let mut found = Vec::new();
    let legacy = tables_dir.join("events.parquet");
    if legacy.is_file() {
        found.push(Segment { first: 0, last: 0, path: legacy });
    }
    match std::fs::read_dir(events_dir(tables_dir)) {
        Ok(entries) => {
            for entry in entries {
                found.extend(Segment::parse(entry?.path()));
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let (live, stale): (Vec<Segment>, Vec<Segment>) =
        found.iter().cloned().partition(|segment| !found.iter().any(|other| other.holds(segment)));
    let mut live = live;
    live.sort_by_key(|segment| segment.first);
    Ok((live, stale.into_iter().map(|segment| segment.path).collect()))
}

/// The Parquet files that hold `table` in the store whose tables are in `tables_dir` (none for a
/// table never written).
pub fn table_files(tables_dir: &Path, table: &str) -> std::io::Result<Vec<PathBuf>> {
    if table == "events" {
        return Ok(event_segments(tables_dir)?.0.into_iter().map(|segment| segment.path).collect());
    }
    let path = tables_dir.join(format!("{table}.parquet"));
    Ok(if path.is_file() { vec![path] } else { Vec::new() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_held_by_a_merge_are_left_over_and_the_rest_come_in_order() {
        let dir = tempfile::tempdir().expect("temp dir");
        let events = events_dir(dir.path());
        std::fs::create_dir_all(&events).expect("dir");
        for (first, last) in [(3, 3), (1, 2), (1, 1), (4, 4), (2, 2)] {
            std::fs::write(events.join(Segment::name(first, last)), b"").expect("write");
        }
        std::fs::write(events.join("0000000005-0000000005.parquet.partial"), b"").expect("write");
        let (live, stale) = event_segments(dir.path()).expect("list");
        let ranges: Vec<(u64, u64)> = live.iter().map(|segment| (segment.first, segment.last)).collect();
        assert_eq!(ranges, vec![(1, 2), (3, 3), (4, 4)]);
        let mut stale: Vec<String> =
            stale.iter().map(|path| path.file_name().unwrap().to_string_lossy().into_owned()).collect();
        stale.sort();
        assert_eq!(stale, vec![Segment::name(1, 1), Segment::name(2, 2)]);
        assert_eq!(table_files(dir.path(), "events").expect("files").len(), 3);
        assert!(table_files(dir.path(), "responses").expect("files").is_empty());
    }

    #[test]
    fn a_store_from_before_segments_has_its_events_file_as_segment_zero() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("events.parquet"), b"").expect("write");
        let (live, stale) = event_segments(dir.path()).expect("list");
        assert_eq!(live, vec![Segment { first: 0, last: 0, path: dir.path().join("events.parquet") }]);
        assert!(stale.is_empty());
    }
}
