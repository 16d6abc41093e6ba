//! The scaled deployment against real NATS JetStream and ClickHouse servers: parity with the
//! embedded path, crashes, re-publishing, and outages of either service.

use convoflow_e2e::*;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The tables of an uninterrupted embedded replay of `input`: what every scaled run must equal.
fn reference(dir: &Path, input: &Path, tenants: &Path) -> Tables {
    let data = dir.join("reference");
    succeed(
        Command::new(binary())
            .args(["replay", "--input"])
            .arg(input)
            .arg("--tenants")
            .arg(tenants)
            .arg("--data")
            .arg(&data),
    );
    embedded_tables(&data)
}

fn scaled_replay(names: &Names, input: &Path, tenants: &Path, nats: &str, clickhouse: &str) -> Command {
    let mut command = names.command();
    command.args(["replay", "--input"]).arg(input).arg("--tenants").arg(tenants).args([
        "--nats",
        nats,
        "--clickhouse",
        clickhouse,
    ]);
    // Epochs of ~8 messages (~8,000 events): many commits, so crashes and outages land between them.
    command.env("CONVOFLOW_EPOCH_MESSAGES", "8");
    command
}

#[test]
fn jetstream_and_clickhouse_give_the_embedded_rows_and_republishing_changes_nothing() {
    if !services_for("jetstream_and_clickhouse_give_the_embedded_rows_and_republishing_changes_nothing") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, tenants) = generate(dir.path(), 30_000);
    let expected = reference(dir.path(), &input, &tenants);
    assert!(expected.values().all(|rows| !rows.is_empty()), "every table has rows");

    let names = Names::new("parity");
    let database = names.database_url(&clickhouse_url());
    let first = succeed(&mut scaled_replay(&names, &input, &tenants, &nats_url(), &database));
    let first_text = String::from_utf8_lossy(&first.stdout).into_owned();
    assert!(first_text.contains("published 30,000 lines"), "{first_text}");
    let after_first = clickhouse_tables(&database);
    assert_same_tables(&expected, &after_first, "JetStream + ClickHouse vs embedded");

    // The same file again: the server drops every message as a duplicate, nothing is consumed
    // anew, and no table changes.
    let second = succeed(&mut scaled_replay(&names, &input, &tenants, &nats_url(), &database));
    let second_text = String::from_utf8_lossy(&second.stdout);
    let messages = first_text.split(" messages, ").next().and_then(|s| s.rsplit(": ").next()).unwrap_or("?").to_owned();
    assert!(second_text.contains(&format!("{messages} messages, {messages} already on the stream")), "{second_text}");
    assert_same_tables(&expected, &clickhouse_tables(&database), "after re-publishing");

    // Rebuilding from the stream into a fresh embedded store gives the same rows again.
    let rebuilt = dir.path().join("rebuilt");
    succeed(
        names
            .command()
            .args(["replay", "--from-nats", "--since", "2000-01-01T00:00:00Z", "--nats", &nats_url(), "--tenants"])
            .arg(&tenants)
            .arg("--data")
            .arg(&rebuilt),
    );
    let mut rebuilt_tables = embedded_tables(&rebuilt);
    let mut expected_without_parse_errors = expected.clone();
    // Invalid lines never reach the stream, so a rebuild from it has no parse rejections.
    for tables in [&mut rebuilt_tables, &mut expected_without_parse_errors] {
        tables.remove("rejected");
    }
    assert_same_tables(&expected_without_parse_errors, &rebuilt_tables, "rebuilt from the stream");

    // Rebuilding from the stream into a fresh ClickHouse database gives them too.
    let rebuilt_database = format!("{database}_rebuilt");
    succeed(
        names
            .command()
            .args(["replay", "--from-nats", "--nats", &nats_url(), "--clickhouse", &rebuilt_database, "--tenants"])
            .arg(&tenants),
    );
    let mut rebuilt_in_clickhouse = clickhouse_tables(&rebuilt_database);
    rebuilt_in_clickhouse.remove("rejected");
    assert_same_tables(
        &expected_without_parse_errors,
        &rebuilt_in_clickhouse,
        "rebuilt from the stream into ClickHouse",
    );

    // A second durable consumer feeding the embedded store sees the same stream: the same rows,
    // with the publisher's rejections carried over.
    let through_nats = dir.path().join("through-nats");
    succeed(
        names
            .command()
            .env("CONVOFLOW_NATS_CONSUMER", format!("cf_{}_embedded", names.tag))
            .args(["replay", "--input"])
            .arg(&input)
            .args(["--nats", &nats_url(), "--tenants"])
            .arg(&tenants)
            .arg("--data")
            .arg(&through_nats),
    );
    assert_same_tables(&expected, &embedded_tables(&through_nats), "JetStream + embedded store vs embedded");

    // Analysts read ClickHouse through the same command, read-only.
    let counted = succeed(Command::new(binary()).args([
        "sql",
        "--clickhouse",
        &database,
        "--format",
        "csv",
        "SELECT count() AS n FROM responses",
    ]));
    let expected_count = expected["responses"].len().to_string();
    assert_eq!(String::from_utf8_lossy(&counted.stdout).lines().nth(1), Some(expected_count.as_str()));
    let refused =
        Command::new(binary()).args(["sql", "--clickhouse", &database, "DROP TABLE events_log"]).output().expect("run");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("readonly"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

/// A deterministic sequence of pauses in `range_ms`, so a failing run can be repeated.
fn pauses(seed: u64, count: usize, range_ms: (u64, u64)) -> Vec<Duration> {
    let mut state = seed;
    (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            Duration::from_millis(range_ms.0 + state % (range_ms.1 - range_ms.0))
        })
        .collect()
}

#[test]
fn killing_the_consumer_at_random_points_loses_and_doubles_nothing() {
    if !services_for("killing_the_consumer_at_random_points_loses_and_doubles_nothing") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, tenants) = generate(dir.path(), 100_000);
    let expected = reference(dir.path(), &input, &tenants);
    let names = Names::new("crash");
    let database = names.database_url(&clickhouse_url());
    let mut kills = 0;
    for pause in pauses(0x5eed, 5, (0, 150)) {
        let mut child = spawn_one_message_epochs(scaled_replay(&names, &input, &tenants, &nats_url(), &database), None);
        // Kill while it consumes: after it committed one more epoch, plus a random pause, so
        // kills land before, during and after commits and acknowledgements.
        if wait_for_commit(&database, committed_epochs(&database), &mut child) {
            std::thread::sleep(pause);
            if child.try_wait().expect("poll").is_none() {
                child.kill().expect("kill -9"); // SIGKILL: no cleanup runs
                kills += 1;
            }
        }
        child.wait().expect("reap");
    }
    assert!(kills >= 3, "the pipeline should have been killed mid-run most times (killed {kills} of 5)");
    assert_ne!(clickhouse_tables(&database)["events"], expected["events"], "the kills should have interrupted the run");
    succeed(&mut scaled_replay(&names, &input, &tenants, &nats_url(), &database));
    assert_same_tables(&expected, &clickhouse_tables(&database), &format!("after {kills} kills and a restart"));
}

/// The consumer saves its operator state into ClickHouse and a restart resumes it, re-feeding only
/// the events committed after it: a run to the end of half the input, a run of all of it killed
/// after more commits, and a last run give the tables of one uninterrupted replay.
#[test]
fn a_restarted_consumer_resumes_the_state_saved_in_clickhouse() {
    if !services_for("a_restarted_consumer_resumes_the_state_saved_in_clickhouse") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, tenants) = generate(dir.path(), 60_000);
    let expected = reference(dir.path(), &input, &tenants);
    let text = std::fs::read_to_string(&input).expect("input");
    let lines: Vec<&str> = text.lines().collect();
    // Named as the whole input: a rejection names its file and line.
    std::fs::create_dir_all(dir.path().join("half")).expect("half dir");
    let half = dir.path().join("half").join("input.ndjson");
    std::fs::write(&half, lines[..lines.len() / 2].join("\n") + "\n").expect("half");
    let names = Names::new("resume");
    let database = names.database_url(&clickhouse_url());
    let first = succeed(&mut scaled_replay(&names, &half, &tenants, &nats_url(), &database));
    let first = String::from_utf8_lossy(&first.stdout).into_owned();
    assert!(first.contains("0 committed events re-fed"), "a fresh database has no state: {first}");

    let mut child = spawn_one_message_epochs(scaled_replay(&names, &input, &tenants, &nats_url(), &database), None);
    let before = committed_epochs(&database);
    assert!(wait_for_commit(&database, before + 2, &mut child), "the second run commits epochs");
    child.kill().expect("kill -9");
    child.wait().expect("reap");

    let last = succeed(&mut scaled_replay(&names, &input, &tenants, &nats_url(), &database));
    let last = String::from_utf8_lossy(&last.stdout).into_owned();
    assert!(last.contains("the saved operator state resumed (and "), "{last}");
    assert!(!last.contains("(and 0 events"), "the epochs after the state are re-fed: {last}");
    assert_same_tables(&expected, &clickhouse_tables(&database), "resumed after a kill");
}

/// A TCP proxy in front of ClickHouse that can refuse every connection for a while: to the
/// pipeline, exactly an unreachable ClickHouse.
struct Proxy {
    port: u16,
    open: Arc<AtomicBool>,
}

impl Proxy {
    fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let open = Arc::new(AtomicBool::new(true));
        let target = target.to_owned();
        let gate = open.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if !gate.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&target) else { continue };
                for (mut from, mut to) in
                    [(client.try_clone().expect("clone"), server.try_clone().expect("clone")), (server, client)]
                {
                    let gate = gate.clone();
                    std::thread::spawn(move || {
                        let mut buffer = [0u8; 64 * 1024];
                        while let Ok(n) = from.read(&mut buffer) {
                            if n == 0 || !gate.load(Ordering::SeqCst) || to.write_all(&buffer[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Proxy { port, open }
    }

    fn set_open(&self, open: bool) {
        self.open.store(open, Ordering::SeqCst);
    }
}

/// Starts a scaled replay with one message per epoch (many commits to land between), its
/// stderr in `log` if given.
fn spawn_one_message_epochs(mut command: Command, log: Option<&Path>) -> Child {
    let stderr = match log {
        Some(path) => Stdio::from(std::fs::File::create(path).expect("log file")),
        None => Stdio::null(),
    };
    command.env("CONVOFLOW_EPOCH_MESSAGES", "1").stdout(Stdio::null()).stderr(stderr).spawn().expect("spawn")
}

/// Waits up to 5 minutes for the pipeline to exit successfully; returns its log. On timeout
/// kills it; either failure fails the test with the log.
fn finish(child: &mut Child, log: &Path) -> String {
    let limit = Duration::from_secs(300);
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("poll") {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            assert!(status.success(), "pipeline failed: {text}");
            return text;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the pipeline did not finish within {limit:?}; its log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn clickhouse_away_for_a_while_is_waited_for_and_nothing_is_lost() {
    if !services_for("clickhouse_away_for_a_while_is_waited_for_and_nothing_is_lost") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, tenants) = generate(dir.path(), 100_000);
    let expected = reference(dir.path(), &input, &tenants);
    let names = Names::new("chdown");
    let target = clickhouse_url().trim_start_matches("http://").trim_end_matches('/').to_owned();
    let proxy = Proxy::start(&target);
    let database = names.database_url(&format!("http://127.0.0.1:{}", proxy.port));
    let log = dir.path().join("stderr");
    let mut child =
        spawn_one_message_epochs(scaled_replay(&names, &input, &tenants, &nats_url(), &database), Some(&log));
    let direct = names.database_url(&clickhouse_url());
    assert!(wait_for_commit(&direct, 0, &mut child), "the outage must start while the pipeline runs");
    proxy.set_open(false);
    std::thread::sleep(Duration::from_secs(3));
    proxy.set_open(true);
    let log = finish(&mut child, &log);
    assert!(log.contains("retrying"), "the outage should have made the pipeline retry: {log}");
    assert_same_tables(
        &expected,
        &clickhouse_tables(&names.database_url(&clickhouse_url())),
        "after a ClickHouse outage",
    );
}

/// A NATS server of this test's own, so it can be restarted without disturbing other tests.
struct PrivateNats {
    port: u16,
    store: std::path::PathBuf,
    process: Option<Child>,
}

impl PrivateNats {
    fn start(store: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let mut nats = PrivateNats { port, store: store.to_owned(), process: None };
        nats.run();
        nats
    }

    fn run(&mut self) {
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (installed by scripts/services.sh)");
        self.process = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "private nats-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A clean restart's first half: SIGTERM, and wait for the server to exit.
    fn stop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn nats_restarted_mid_run_is_reconnected_to_and_nothing_is_lost() {
    if !services_for("nats_restarted_mid_run_is_reconnected_to_and_nothing_is_lost") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, tenants) = generate(dir.path(), 100_000);
    let expected = reference(dir.path(), &input, &tenants);
    let mut nats = PrivateNats::start(&dir.path().join("nats"));
    let names = Names::new("natsdown");
    let database = names.database_url(&clickhouse_url());
    let log = dir.path().join("stderr");
    let mut child =
        spawn_one_message_epochs(scaled_replay(&names, &input, &tenants, &nats.url(), &database), Some(&log));
    assert!(wait_for_commit(&database, 0, &mut child), "the restart must happen while the pipeline runs");
    nats.stop();
    std::thread::sleep(Duration::from_secs(2));
    nats.run();
    finish(&mut child, &log);
    assert_same_tables(&expected, &clickhouse_tables(&database), "after a NATS restart");
}
