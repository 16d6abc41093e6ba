//! Persisted operator state (`convoflow_operators::state`): a dataflow resumed from saved state
//! and then given new input ends with the same tables as one re-fed every stored event and given
//! the same input, on one or two workers, saved and resumed with the same or another worker count,
//! resumed with every row at epoch 0 or with only the changes, and saved again after resuming (the
//! new files merge the touched keys into the loaded ones). State that is torn, of another tag or
//! missing is refused, never half loaded.

mod support;

use convoflow_events::{parse_event, Event, Tenants};
use convoflow_fixtures::{generate, tenant_profiles, tenants_json, GeneratorConfig};
use convoflow_operators::{Driver, Resume, TableSet};
use std::sync::Arc;
use support::*;

const EPOCH: usize = 700;

/// Generated traffic (duplicates, late arrivals, statuses before sends, three tenants with
/// funnels and attribution) and its tenants.
fn traffic(lines: u64) -> (Vec<Event>, Tenants) {
    let config = GeneratorConfig { events: lines, seed: 13, tenants: 3 };
    let mut ndjson = Vec::new();
    generate(&config, &mut ndjson).expect("generate");
    let events = ndjson.split(|byte| *byte == b'\n').filter_map(|line| parse_event(line).ok()).collect();
    let tenants = Tenants::from_json(&tenants_json(&tenant_profiles(3))).expect("tenants");
    (events, tenants)
}

/// Feeds `events` in epochs (positions from `first`) and adds what they change to `tables`.
fn feed(driver: &mut Driver, events: &[Event], first: u64, tables: &mut TableSet) -> u64 {
    let mut duplicates = 0;
    for (n, chunk) in events.chunks(EPOCH).enumerate() {
        let base = first + (n * EPOCH) as u64;
        let epoch = chunk.iter().enumerate().map(|(i, event)| (base + i as u64, Box::new(event.clone()))).collect();
        driver.submit(epoch, 0).expect("submit");
        let output = driver.next_output().expect("epoch");
        duplicates += output.duplicates;
        tables.merge(output.tables);
    }
    tables.consolidate();
    duplicates
}

fn assert_same(left: &TableSet, right: &TableSet, what: &str) {
    for table in tables() {
        let (a, b) = (table_rows(left, table), table_rows(right, table));
        assert!(a == b, "{what}: table {table} differs ({} rows against {})", a.len(), b.len());
    }
}

#[test]
fn resumed_state_and_new_input_equal_re_feeding_everything() {
    let (events, tenants) = traffic(12_000);
    let tenants = Arc::new(tenants);
    let split = events.len() * 2 / 3;
    // The new input holds later and late events, and redelivers part of what is stored.
    let (stored, mut new) = (events[..split].to_vec(), events[split..].to_vec());
    new.extend(stored[split / 2..split / 2 + 500].iter().cloned());
    let stored_end = 1 + stored.len() as u64;

    for (saved_by, resumed_by) in [(1, 1), (2, 2), (1, 2), (2, 1)] {
        let mut refed = TableSet::default();
        let mut driver = Driver::start(resumed_by, tenants.clone()).expect("start");
        feed(&mut driver, &stored, 1, &mut refed);
        let refed_duplicates = feed(&mut driver, &new, stored_end, &mut refed);
        driver.shutdown().expect("shutdown");

        let dir = tempfile::tempdir().expect("temp dir");
        let state = dir.path().join("state");
        let mut before = TableSet::default();
        let mut driver = Driver::start(saved_by, tenants.clone()).expect("start");
        feed(&mut driver, &stored, 1, &mut before);
        driver.save(&state, "tag-1").expect("save");
        driver.shutdown().expect("shutdown");

        let what = format!("saved by {saved_by} workers, resumed by {resumed_by}");
        let (mut driver, restored) =
            Driver::resume(resumed_by, tenants.clone(), &state, "tag-1", Resume::Rows).expect("resume");
        let mut resumed = restored.tables;
        assert!(resumed.events.is_empty(), "{what}: the events are the store's, not the state's");
        resumed.consolidate();
        resumed.events = before.events.clone();
        assert_same(&resumed, &before, &format!("{what}, as restored"));
        let resumed_duplicates = feed(&mut driver, &new, stored_end, &mut resumed);
        driver.shutdown().expect("shutdown");
        assert_eq!(resumed.negative_rows(), 0, "{what}");
        assert_eq!(resumed_duplicates, refed_duplicates, "{what}: redelivered events are known as duplicates");
        assert_same(&resumed, &refed, &format!("{what}, after the new input"));

        // Resumed with only the changes: the stored tables plus them are the re-fed tables. Then
        // saved again (the touched keys merged into the files it loaded) and resumed with rows.
        let (mut driver, restored) =
            Driver::resume(resumed_by, tenants.clone(), &state, "tag-1", Resume::Changes).expect("resume");
        assert!(restored.tables.counts().iter().all(|(_, rows)| *rows == 0), "{what}: no rows at epoch 0");
        let mut changed = before.clone();
        feed(&mut driver, &new, stored_end, &mut changed);
        assert_eq!(changed.negative_rows(), 0, "{what}");
        assert_same(&changed, &refed, &format!("{what}, stored tables plus the changes"));
        driver.save(&state, "tag-2").expect("save after resuming");
        driver.shutdown().expect("shutdown");
        let (driver, restored) =
            Driver::resume(saved_by, tenants.clone(), &state, "tag-2", Resume::Rows).expect("resume the merged state");
        let mut merged = restored.tables;
        merged.consolidate();
        merged.events = refed.events.clone();
        driver.shutdown().expect("shutdown");
        assert_same(&merged, &refed, &format!("{what}, saved again after resuming, resumed by {saved_by}"));
    }
}

#[test]
fn torn_foreign_or_missing_state_is_refused() {
    let (events, tenants) = traffic(2_000);
    let tenants = Arc::new(tenants);
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let mut driver = Driver::start(2, tenants.clone()).expect("start");
    feed(&mut driver, &events, 1, &mut TableSet::default());
    driver.save(&state, "tag-1").expect("save");
    // Saving again replaces the state whole, over a partial directory a crash left.
    std::fs::create_dir_all(dir.path().join("state.partial")).expect("partial dir");
    std::fs::write(dir.path().join("state.partial").join("Dedup.0.0.state"), b"torn").expect("torn file");
    driver.save(&state, "tag-1").expect("save over a partial directory");
    driver.shutdown().expect("shutdown");

    let refused = |tag: &str| {
        Driver::resume(2, tenants.clone(), &state, tag, Resume::Changes).err().map(|error| error.to_string())
    };
    assert!(refused("tag-1").is_none(), "the saved state loads");
    let other = refused("tag-2").expect("another tag is refused");
    assert!(other.contains("tag-1") && other.contains("tag-2"), "{other}");

    let file = state.join("Threads.1.0.state");
    let bytes = std::fs::read(&file).expect("state file");
    std::fs::write(&file, &bytes[..bytes.len() / 2]).expect("tear");
    let torn = refused("tag-1").expect("a torn file is refused");
    assert!(torn.contains("Threads.1.0.state"), "{torn}");
    std::fs::write(&file, &bytes).expect("mend");
    assert!(refused("tag-1").is_none(), "the mended state loads");

    let manifest = state.join("runs.0");
    let bytes = std::fs::read(&manifest).expect("manifest");
    std::fs::write(&manifest, &bytes[..bytes.len() - 1]).expect("tear");
    let torn = refused("tag-1").expect("a torn manifest is refused");
    assert!(torn.contains("runs.0"), "{torn}");

    std::fs::remove_dir_all(&state).expect("remove");
    let missing = refused("tag-1").expect("no state is refused");
    assert!(missing.contains("runs.0"), "{missing}");
}

/// Saved keys sit where this build's hashes routed them: a state whose recorded hashes differ
/// (another build of `rustc-hash`, another `Hash` for strings) is refused, and the events re-fed.
#[test]
fn a_state_saved_by_a_build_that_hashes_otherwise_is_refused() {
    let (events, tenants) = traffic(500);
    let tenants = Arc::new(tenants);
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let mut driver = Driver::start(1, tenants.clone()).expect("start");
    feed(&mut driver, &events, 1, &mut TableSet::default());
    driver.save(&state, "tag-1").expect("save");
    driver.shutdown().expect("shutdown");

    let file = state.join("runs.0");
    let mut bytes = std::fs::read(&file).expect("manifest");
    let marker = b"hashes:";
    let at = bytes.windows(marker.len()).position(|window| window == marker).expect("the header records the hashes");
    let digits = &mut bytes[at + marker.len()..at + marker.len() + 16];
    assert!(digits.iter().all(u8::is_ascii_hexdigit), "16 hex digits follow");
    digits[0] = if digits[0] == b'0' { b'1' } else { b'0' };
    std::fs::write(&file, &bytes).expect("rewrite");
    let refused = Driver::resume(1, tenants, &state, "tag-1", Resume::Changes).err().map(|error| error.to_string());
    let refused = refused.expect("a state of other hashes is refused");
    assert!(refused.contains("hashes:"), "{refused}");
}

/// As `serve` saves with each snapshot: state saved after every few epochs (each save writing
/// the keys touched since the last as a run of its own, beside the earlier runs) resumes, by any
/// number of workers, as the tables of everything fed.
#[test]
fn state_saved_again_and_again_resumes_as_everything_fed() {
    let (events, tenants) = traffic(9_000);
    let tenants = Arc::new(tenants);
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let mut fed = TableSet::default();
    let mut driver = Driver::start(2, tenants.clone()).expect("start");
    let parts: Vec<&[Event]> = events.chunks(events.len() / 6 + 1).collect();
    let mut first = 1;
    for (n, part) in parts.iter().enumerate() {
        feed(&mut driver, part, first, &mut fed);
        first += part.len() as u64;
        driver.save(&state, &format!("tag-{n}")).expect("save");
    }
    driver.shutdown().expect("shutdown");
    let runs = std::fs::read_dir(&state)
        .expect("state dir")
        .filter(|entry| entry.as_ref().is_ok_and(|entry| entry.file_name().to_string_lossy().starts_with("Dedup.0.")))
        .count();
    assert!(runs >= 2, "the last saves wrote new keys as runs of their own, not the whole state again ({runs})");
    let last = format!("tag-{}", parts.len() - 1);
    for resumed_by in [1, 2, 3] {
        let (driver, restored) =
            Driver::resume(resumed_by, tenants.clone(), &state, &last, Resume::Rows).expect("resume");
        driver.shutdown().expect("shutdown");
        let mut resumed = restored.tables;
        resumed.consolidate();
        resumed.events = fed.events.clone();
        assert_same(&resumed, &fed, &format!("resumed by {resumed_by}"));
    }
}
