//! Where the embedded store keeps each table under `<data>/tables/`: each derived table as parts
//! `<table>/<part>.parquet` by month ([`row_parts`]), `rejected` as `rejected.parquet`, and
//! `events` as segments `events/<first>-<last>.parquet` that are only ever appended (one per
//! replay or snapshot that stored new events) and now and then merged.
//!
//! A derived table's part is the month of the row's first instant or date that is set: a replay
//! of later events rewrites the parts of the months its changes fall in, not the whole table. A
//! store from before parts has `<table>.parquet`, which is the whole table until the store moves
//! it into parts.
//!
//! A segment's name is the range of segment numbers it holds: a new one is `n-n` (one past the
//! highest so far), a merge of `a-b` and `c-d` is `a-d`. A merge is renamed into place before the
//! segments it replaces are removed, so after a crash between the two a segment whose range lies
//! inside another's is left over: it is not part of the table ([`event_segments`] leaves it out,
//! and the store removes it when it next opens). A store written before segments has
//! `events.parquet`, which is segment `0-0`.

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::{DataType, Date32Type, TimeUnit, TimestampMillisecondType};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use std::collections::BTreeMap;
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
    let whole = whole_table_path(tables_dir, table);
    if whole.is_file() {
        return Ok(vec![whole]);
    }
    Ok(table_parts(tables_dir, table)?.into_values().collect())
}

/// `<table>.parquet`: the file of a table kept whole (`rejected`, and derived tables before parts).
pub fn whole_table_path(tables_dir: &Path, table: &str) -> PathBuf {
    tables_dir.join(format!("{table}.parquet"))
}

/// The file of one part of a derived table.
pub fn part_path(tables_dir: &Path, table: &str, part: &str) -> PathBuf {
    tables_dir.join(table).join(format!("{part}.parquet"))
}

/// A derived table's parts by name (months in order, then `undated`), with their files.
pub fn table_parts(tables_dir: &Path, table: &str) -> std::io::Result<BTreeMap<String, PathBuf>> {
    let mut parts = BTreeMap::new();
    match std::fs::read_dir(tables_dir.join(table)) {
        Ok(entries) => {
            for entry in entries {
                let path = entry?.path();
                if let Some(part) = path.file_name().and_then(|name| name.to_str()?.strip_suffix(".parquet")) {
                    parts.insert(part.to_owned(), path.clone());
                }
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    Ok(parts)
}

/// Each part a batch's rows belong in, with those rows: the month (`YYYY-MM`, UTC) of the row's
/// first instant or date column that is set, in column order; `undated` if none is. It follows
/// from the row's content alone, so a retracted row is found in the part it was written to.
pub fn row_parts(batch: &RecordBatch) -> Result<Vec<(String, Vec<u32>)>, ArrowError> {
    enum Dated<'a> {
        Millis(&'a dyn Array, &'a [i64]),
        Days(&'a dyn Array, &'a [i32]),
    }
    let dated: Vec<Dated> = batch
        .columns()
        .iter()
        .filter_map(|column: &ArrayRef| match column.data_type() {
            DataType::Timestamp(TimeUnit::Millisecond, _) => {
                Some(Dated::Millis(column.as_ref(), column.as_primitive::<TimestampMillisecondType>().values()))
            }
            DataType::Date32 => Some(Dated::Days(column.as_ref(), column.as_primitive::<Date32Type>().values())),
            _ => None,
        })
        .collect();
    let mut parts: BTreeMap<Option<(i64, u32)>, Vec<u32>> = BTreeMap::new();
    for row in 0..batch.num_rows() {
        let days = dated.iter().find_map(|column| match column {
            Dated::Millis(array, values) => array.is_valid(row).then(|| values[row].div_euclid(86_400_000)),
            Dated::Days(array, values) => array.is_valid(row).then(|| i64::from(values[row])),
        });
        parts.entry(days.map(month_of)).or_default().push(row as u32);
    }
    let mut named: Vec<(String, Vec<u32>)> = parts
        .into_iter()
        .map(|(month, rows)| (month.map_or_else(|| "undated".to_owned(), |(y, m)| format!("{y:04}-{m:02}")), rows))
        .collect();
    named.sort();
    Ok(named)
}

/// The year and month of a day since 1970-01-01 (the proleptic Gregorian calendar; Howard
/// Hinnant's `civil_from_days`).
fn month_of(days: i64) -> (i64, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted = (5 * day_of_year + 2) / 153;
    let month = if shifted < 10 { shifted + 3 } else { shifted - 9 } as u32;
    (year_of_era + era * 400 + i64::from(month <= 2), month)
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
    fn rows_go_to_the_month_of_their_first_instant_or_date_that_is_set() {
        use datafusion::arrow::array::{Date32Array, StringArray, TimestampMillisecondArray};
        use std::sync::Arc;
        assert_eq!(month_of(0), (1970, 1));
        assert_eq!(month_of(-1), (1969, 12));
        assert_eq!(month_of(19_782), (2024, 2)); // 2024-02-29
        assert_eq!(month_of(19_783), (2024, 3));
        let ms = |day: i64| day * 86_400_000 + 3_600_000;
        let batch = RecordBatch::try_from_iter(vec![
            ("tenant_id", Arc::new(StringArray::from(vec!["t"; 4])) as ArrayRef),
            ("sent_ts", Arc::new(TimestampMillisecondArray::from(vec![Some(ms(19_782)), None, None, Some(ms(-1))]))),
            ("on", Arc::new(Date32Array::from(vec![Some(0), Some(19_783), None, None]))),
        ])
        .expect("batch");
        let parts = row_parts(&batch).expect("parts");
        let names: Vec<(&str, Vec<u32>)> = parts.iter().map(|(part, rows)| (part.as_str(), rows.clone())).collect();
        assert_eq!(names, vec![("1969-12", vec![3]), ("2024-02", vec![0]), ("2024-03", vec![1]), ("undated", vec![2])]);
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
