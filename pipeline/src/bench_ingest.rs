//! `convoflow bench-ingest`: a load generator for a running `convoflow serve`. It posts generated
//! traffic to `POST /v1/events` (at a target rate, or as fast as the server takes it) while
//! reading `GET /v1/feed?tables=events`, and reports the sustained ingest rate and the latency from
//! each batch's 2xx to its events' changes on the feed.

use crate::replay::thousands;
use convoflow_fixtures::{generate, GeneratorConfig};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Http(String),
    #[error("cannot generate traffic: {0}")]
    Generate(#[from] std::io::Error),
}

pub struct BenchOptions {
    pub url: String,
    pub key: String,
    /// Events per second to offer; 0 = as fast as the server answers.
    pub rate: u64,
    pub seconds: u64,
    pub batch: usize,
    pub concurrency: usize,
    pub seed: u64,
}

#[derive(Debug, Default)]
pub struct BenchReport {
    pub sent: u64,
    /// Events of requests the server refused (non-2xx).
    pub refused: u64,
    pub accepted: u64,
    pub seconds: f64,
    pub latencies_ms: Vec<f64>,
}

/// When an event was acknowledged, or seen on the feed, whichever came first; the other side
/// completes the sample.
#[derive(Default)]
struct Timeline {
    acked: HashMap<String, Instant>,
    seen: HashMap<String, Instant>,
    latencies_ms: Vec<f64>,
}

impl Timeline {
    fn ack(&mut self, ids: Vec<String>, at: Instant) {
        for id in ids {
            match self.seen.remove(&id) {
                // The change beat the 2xx to the client: no measurable delay.
                Some(_) => self.latencies_ms.push(0.0),
                None => {
                    self.acked.insert(id, at);
                }
            }
        }
    }

    fn seen(&mut self, id: String, at: Instant) {
        match self.acked.remove(&id) {
            Some(acked) => self.latencies_ms.push(at.saturating_duration_since(acked).as_secs_f64() * 1000.0),
            None => {
                self.seen.insert(id, at);
            }
        }
    }
}

fn event_id(line: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    value.get("event_id")?.as_str().map(str::to_owned)
}

/// Generated lines with event ids made unique to this run, so every run's events are new.
fn traffic(events: u64, seed: u64) -> Result<Vec<String>, BenchError> {
    let mut bytes = Vec::new();
    generate(&GeneratorConfig { events, seed, tenants: 4 }, &mut bytes)?;
    let run = format!("\"event_id\":\"b{}-", crate::replay::now_ms());
    let text = String::from_utf8_lossy(&bytes);
    // Invalid lines are left out: the benchmark measures the accepted path.
    Ok(text
        .lines()
        .filter(|line| line.contains("\"event_id\":\""))
        .map(|line| line.replacen("\"event_id\":\"", &run, 1))
        .collect())
}

pub async fn run_bench(options: BenchOptions) -> Result<BenchReport, BenchError> {
    // At full speed the run ends when the generated lines run out or the time is up.
    let total = if options.rate > 0 { options.rate * options.seconds } else { 1_500_000 };
    let lines = traffic(total, options.seed)?;
    let client = reqwest::Client::new();
    let timeline = Arc::new(Mutex::new(Timeline::default()));

    let feed_url = format!("{}/v1/feed?tables=events&api_key={}", options.url, options.key);
    let feed = client.get(&feed_url).send().await.map_err(|e| BenchError::Http(format!("feed: {e}")))?;
    if !feed.status().is_success() {
        return Err(BenchError::Http(format!("feed: {}", feed.status())));
    }
    let reader = {
        let timeline = timeline.clone();
        tokio::spawn(async move {
            let mut stream = feed.bytes_stream();
            let mut buffer = String::new();
            while let Some(Ok(chunk)) = stream.next().await {
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find("\n\n") {
                    let block: String = buffer.drain(..end + 2).collect();
                    let now = Instant::now();
                    for data in block.lines().filter_map(|line| line.strip_prefix("data:")) {
                        let change: serde_json::Value = match serde_json::from_str(data.trim_start()) {
                            Ok(change) => change,
                            Err(_) => continue,
                        };
                        if let Some(id) = change["row"]["event_id"].as_str() {
                            timeline.lock().unwrap_or_else(|p| p.into_inner()).seen(id.to_owned(), now);
                        }
                    }
                }
            }
        })
    };

    let started = Instant::now();
    let batches: Vec<Vec<String>> = lines.chunks(options.batch.max(1)).map(<[String]>::to_vec).collect();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let batches = Arc::new(batches);
    let deadline = started + Duration::from_secs(options.seconds);
    let mut senders = Vec::new();
    for _ in 0..options.concurrency.max(1) {
        let (client, batches, next, timeline) = (client.clone(), batches.clone(), next.clone(), timeline.clone());
        let (url, key, rate, batch) =
            (format!("{}/v1/events", options.url), options.key.clone(), options.rate, options.batch.max(1));
        senders.push(tokio::spawn(async move {
            let mut sent = 0u64;
            let mut accepted = 0u64;
            let mut refused = 0u64;
            loop {
                let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(lines) = batches.get(index) else { break };
                if Instant::now() >= deadline {
                    break;
                }
                if rate > 0 {
                    // Batch `index` is due at index × batch / rate seconds.
                    let due = started + Duration::from_secs_f64(index as f64 * batch as f64 / rate as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
                let body = lines.join("\n");
                let response = client.post(&url).bearer_auth(&key).body(body).send().await;
                let acked_at = Instant::now();
                match response {
                    Ok(response) if response.status().is_success() => {
                        let answer: serde_json::Value = response.json().await.unwrap_or_default();
                        accepted += answer["accepted"].as_u64().unwrap_or(0);
                        let ids: Vec<String> = lines.iter().filter_map(|line| event_id(line)).collect();
                        timeline.lock().unwrap_or_else(|p| p.into_inner()).ack(ids, acked_at);
                    }
                    Ok(response) => {
                        refused += lines.len() as u64;
                        tracing::warn!(status = %response.status(), "bench: batch refused");
                    }
                    Err(error) => {
                        refused += lines.len() as u64;
                        tracing::warn!(%error, "bench: batch failed");
                    }
                }
                sent += lines.len() as u64;
            }
            (sent, accepted, refused)
        }));
    }
    let mut report = BenchReport::default();
    for sender in senders {
        let (sent, accepted, refused) = sender.await.map_err(|e| BenchError::Http(e.to_string()))?;
        report.sent += sent;
        report.accepted += accepted;
        report.refused += refused;
    }
    report.seconds = started.elapsed().as_secs_f64();
    // Let the feed catch up with the last batches.
    let drain_until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < drain_until && !timeline.lock().unwrap_or_else(|p| p.into_inner()).acked.is_empty() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reader.abort();
    let mut timeline = timeline.lock().unwrap_or_else(|p| p.into_inner());
    report.latencies_ms = std::mem::take(&mut timeline.latencies_ms);
    report.latencies_ms.sort_by(f64::total_cmp);
    Ok(report)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

impl BenchReport {
    pub fn render(&self) -> String {
        let rate = if self.seconds > 0.0 { (self.accepted as f64 / self.seconds) as u64 } else { 0 };
        format!(
            "posted {} events, {} accepted, {} refused, in {:.2} s: {} events/s\nfeed latency after the 2xx ({} events): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms\n",
            thousands(self.sent),
            thousands(self.accepted),
            thousands(self.refused),
            self.seconds,
            thousands(rate),
            thousands(self.latencies_ms.len() as u64),
            percentile(&self.latencies_ms, 0.5),
            percentile(&self.latencies_ms, 0.99),
            self.latencies_ms.last().copied().unwrap_or(f64::NAN),
        )
    }
}
