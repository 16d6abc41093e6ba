//! Golden tests (the Arroyo pattern): every directory under `golden/` holds `input.ndjson`, an
//! optional `tenants.json`, and `<table>.expected.ndjson` rows worked out by hand from the SPEC.
//! Each case runs in order on one worker, then reversed with every event duplicated, one event
//! per epoch, on two workers; the rows must match the expected ones, order-insensitively.

mod support;

use convoflow_events::Tenants;
use std::path::Path;
use support::*;

fn check_case(dir: &Path) -> Vec<String> {
    let input = std::fs::read_to_string(dir.join("input.ndjson")).expect("input.ndjson");
    let tenants_path = dir.join("tenants.json");
    let tenants =
        || if tenants_path.exists() { Tenants::load(&tenants_path).expect("tenants") } else { Tenants::default() };
    let events = parse_all(&input);

    let in_order = run_batches(vec![events.clone()], tenants(), 1);
    let shuffled: Vec<Vec<_>> = events.iter().rev().flat_map(|e| [vec![e.clone()], vec![e.clone()]]).collect();
    let reversed = run_batches(shuffled, tenants(), 2);
    assert_eq!(reversed.duplicates, events.len() as u64, "{}: every copy is a duplicate", dir.display());

    let mut failures = Vec::new();
    for table in tables() {
        let expected_path = dir.join(format!("{table}.expected.ndjson"));
        let Ok(expected_text) = std::fs::read_to_string(&expected_path) else { continue };
        let mut expected: Vec<serde_json::Value> = expected_text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}", expected_path.display())))
            .collect();
        expected.sort_by_key(|row| row.to_string());
        for (label, output) in [("in order, 1 worker", &in_order), ("reversed+duplicated, 2 workers", &reversed)] {
            let actual = table_rows(&output.tables, table);
            if actual != expected {
                failures.push(format!(
                    "{} {table} ({label}):\n  expected:\n    {}\n  actual:\n    {}",
                    dir.display(),
                    expected.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("\n    "),
                    actual.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("\n    "),
                ));
            }
        }
    }
    failures
}

#[test]
fn golden_cases_match_hand_worked_rows() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden");
    let mut cases: Vec<_> =
        std::fs::read_dir(&root).expect("golden dir").map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    cases.sort();
    assert!(cases.len() >= 4, "golden cases present");
    let failures: Vec<String> = cases.iter().flat_map(|case| check_case(case)).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
