//! Fuzzing on stable Rust, for the inputs anyone with a key (or Meta) controls: the canonical
//! event parser, the WhatsApp webhook normalizer, the ClickHouse tenant scoper and the SQL
//! endpoint (hardening issue).
//!
//! cargo-fuzz needs a nightly compiler, which this project does not use; `bolero`'s stable engine
//! is a random driver too, with more machinery than these targets need. So the driver is ours
//! and small: each case starts from a seed corpus of real inputs (generated traffic, the webhook
//! fixtures, report queries and known attacks) and applies a few random mutations, some aware of
//! the input's structure (JSON values and keys, SQL tokens), some of raw bytes. A case is run
//! under `catch_unwind` and checked against properties, not only for not panicking:
//!
//! - **canonical**: an accepted line's event, written back as JSON, parses to the same event; a
//!   rejected one names a field and a problem.
//! - **whatsapp**: every event the normalizer makes is itself a valid canonical event (it parses
//!   back to itself) and belongs to the tenant owning its number; rejected items say why.
//! - **scoper**: a query it lets through still parses, and every table it reads is read only
//!   inside the `(SELECT * FROM db.table WHERE tenant_id = '…')` guard of the caller's tenant.
//! - **sql**: a query ends within its time limit with rows or an error, through the same guarded
//!   engine and query runtime as `/v1/sql`; a panic caught by that runtime (a 500) is a finding.
//!
//! The same seed gives the same cases. `cargo test -p convoflow-fuzz` runs a fixed budget;
//! `scripts/fuzz.sh` runs millions (FUZZING.md).

pub mod mutate;
pub mod targets;

use convoflow_fixtures::Rng;
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A fuzz target: makes inputs and checks what the code under test does with them.
pub trait Target {
    fn name(&self) -> &'static str;
    /// One input, from the corpus and `rng`.
    fn input(&mut self, rng: &mut Rng) -> Vec<u8>;
    /// Runs the code under test on `input`: `Ok(outcome)` names the kind of result (to count
    /// them), `Err(problem)` a property that does not hold.
    fn check(&mut self, input: &[u8]) -> Result<String, String>;
}

/// A case whose check failed or panicked.
#[derive(Debug)]
pub struct Finding {
    pub case: u64,
    pub input: Vec<u8>,
    pub problem: String,
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Report {
    pub target: &'static str,
    pub cases: u64,
    pub seconds: f64,
    /// Outcomes and how often each came.
    pub outcomes: BTreeMap<String, u64>,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn summary(&self) -> String {
        let mut outcomes: Vec<(&String, &u64)> = self.outcomes.iter().collect();
        outcomes.sort_by(|a, b| b.1.cmp(a.1));
        let top: Vec<String> = outcomes.iter().take(6).map(|(outcome, n)| format!("{outcome} {n}")).collect();
        format!(
            "{}: {} cases in {:.1} s ({:.0}/s), {} distinct outcomes, {} findings; most common: {}",
            self.target,
            self.cases,
            self.seconds,
            self.cases as f64 / self.seconds.max(1e-9),
            self.outcomes.len(),
            self.findings.len(),
            top.join(", ")
        )
    }
}

/// Outcomes are counted by their first words: the rest (values, positions) would make each one
/// distinct.
fn outcome_class(outcome: &str) -> String {
    outcome.chars().take(60).collect()
}

/// The case being checked, for the watchdog.
type Running = Arc<Mutex<Option<(u64, Instant, Vec<u8>)>>>;

/// Watches for a case that runs longer than `limit` (a hang: a check stuck in a loop cannot be
/// stopped from outside): writes its input to `hang_file`, says so, and ends the process.
fn watchdog(target: &'static str, running: Running, done: Arc<AtomicBool>, limit: Duration, hang_file: PathBuf) {
    std::thread::spawn(move || {
        while !done.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
            let guard = running.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some((case, started, input)) = guard.as_ref().filter(|(_, started, _)| started.elapsed() > limit) {
                let written = std::fs::write(&hang_file, input);
                eprintln!(
                    "{target}: case {case} has run for {:?}, more than {limit:?}: a hang; its input is in {} ({written:?})",
                    started.elapsed(),
                    hang_file.display()
                );
                std::process::exit(3);
            }
        }
    });
}

/// Runs `cases` cases of `target` from `seed`; stops early after `max_findings` findings. A case
/// running longer than `hang_limit` ends the process after writing its input to `hang_file`.
pub fn run(
    target: &mut dyn Target,
    seed: u64,
    cases: u64,
    max_findings: usize,
    hang_limit: Duration,
    hang_file: PathBuf,
) -> Report {
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let mut report = Report { target: target.name(), ..Report::default() };
    let running: Running = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    watchdog(target.name(), running.clone(), done.clone(), hang_limit, hang_file);
    let set_running =
        |now: Option<(u64, Instant, Vec<u8>)>| *running.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = now;
    for case in 0..cases {
        let input = target.input(&mut rng);
        set_running(Some((case, Instant::now(), input.clone())));
        let result = catch_unwind(AssertUnwindSafe(|| target.check(&input)));
        set_running(None);
        report.cases += 1;
        let problem = match result {
            Ok(Ok(outcome)) => {
                *report.outcomes.entry(outcome_class(&outcome)).or_default() += 1;
                continue;
            }
            Ok(Err(problem)) => problem,
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()));
                format!("panicked: {}", message.unwrap_or_default())
            }
        };
        report.findings.push(Finding { case, input, problem });
        if report.findings.len() >= max_findings {
            break;
        }
    }
    done.store(true, Ordering::Relaxed);
    report.seconds = started.elapsed().as_secs_f64();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A target with a planted bug: the driver must find it, and report what it found.
    struct Planted;

    impl Target for Planted {
        fn name(&self) -> &'static str {
            "planted"
        }
        fn input(&mut self, rng: &mut Rng) -> Vec<u8> {
            let mut bytes = b"{\"a\":1}".to_vec();
            mutate::bytes(rng, &mut bytes, &[]);
            bytes
        }
        fn check(&mut self, input: &[u8]) -> Result<String, String> {
            if input.contains(&0) {
                panic!("a NUL byte");
            }
            if input.len() > 12 {
                return Err("too long".to_owned());
            }
            Ok("fine".to_owned())
        }
    }

    #[test]
    fn the_driver_finds_planted_panics_and_broken_properties() {
        let hang = std::env::temp_dir().join("planted.hang");
        let report = run(&mut Planted, 7, 20_000, usize::MAX, Duration::from_secs(60), hang.clone());
        assert!(
            report.findings.iter().any(|f| f.problem == "panicked: a NUL byte" && f.input.contains(&0)),
            "{}",
            report.summary()
        );
        assert!(report.findings.iter().any(|f| f.problem == "too long"), "{}", report.summary());
        assert!(report.outcomes["fine"] > 0);
        let again = run(&mut Planted, 7, 20_000, usize::MAX, Duration::from_secs(60), hang);
        assert_eq!(again.findings.len(), report.findings.len(), "a seed gives the same cases");
    }
}
