//! Counters for `/metrics` (Prometheus text format 0.0.4). The process updates them; the API
//! renders them. Plain atomics: a handful of numbers needs no metrics library.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds (seconds) of the epoch latency histogram.
const EPOCH_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

#[derive(Default)]
pub struct Telemetry {
    /// Events accepted at ingest (HTTP and webhooks).
    pub events_in: AtomicU64,
    pub duplicates: AtomicU64,
    pub rejected: AtomicU64,
    /// Webhook items that give no event (system, edit, revoke messages, value-level errors).
    pub webhook_skipped: AtomicU64,
    /// Events applied to the tables by the dataflow.
    pub events_processed: AtomicU64,
    pub epochs: AtomicU64,
    /// Bytes (local log) or messages (JetStream) durable on the bus and not yet in the tables.
    pub lag: AtomicU64,
    pub feed_subscribers: AtomicU64,
    epoch_buckets: [AtomicU64; EPOCH_BUCKETS.len()],
    epoch_count: AtomicU64,
    epoch_micros: AtomicU64,
}

impl Telemetry {
    /// Records how long one epoch took from the bus to the tables.
    pub fn observe_epoch(&self, seconds: f64) {
        for (bucket, bound) in self.epoch_buckets.iter().zip(EPOCH_BUCKETS) {
            if seconds <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.epoch_count.fetch_add(1, Ordering::Relaxed);
        self.epoch_micros.fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let counters = [
            ("convoflow_events_in_total", "Events accepted at ingest.", &self.events_in),
            ("convoflow_duplicates_total", "Events answered as duplicates.", &self.duplicates),
            ("convoflow_rejected_total", "Inputs rejected (they land in the rejected table).", &self.rejected),
            ("convoflow_webhook_items_skipped_total", "Webhook items that give no event.", &self.webhook_skipped),
            ("convoflow_events_processed_total", "Events the dataflow applied to the tables.", &self.events_processed),
            ("convoflow_epochs_total", "Epochs completed by the dataflow.", &self.epochs),
        ];
        for (name, help, value) in counters {
            let _ =
                writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", value.load(Ordering::Relaxed));
        }
        let gauges = [
            (
                "convoflow_lag",
                "Input durable on the bus and not yet in the tables (log bytes or stream messages).",
                &self.lag,
            ),
            ("convoflow_feed_subscribers", "Open live feed connections.", &self.feed_subscribers),
        ];
        for (name, help, value) in gauges {
            let _ =
                writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}", value.load(Ordering::Relaxed));
        }
        let name = "convoflow_epoch_latency_seconds";
        let _ = writeln!(out, "# HELP {name} Time from reading an epoch off the bus to its changes in the tables.\n# TYPE {name} histogram");
        for (bucket, bound) in self.epoch_buckets.iter().zip(EPOCH_BUCKETS) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {}", bucket.load(Ordering::Relaxed));
        }
        let count = self.epoch_count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.epoch_micros.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {count}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_is_cumulative_and_counts_every_epoch() {
        let telemetry = Telemetry::default();
        telemetry.observe_epoch(0.003);
        telemetry.observe_epoch(0.2);
        telemetry.events_in.fetch_add(7, Ordering::Relaxed);
        let text = telemetry.render();
        assert!(text.contains("convoflow_events_in_total 7\n"), "{text}");
        assert!(text.contains("convoflow_epoch_latency_seconds_bucket{le=\"0.005\"} 1\n"), "{text}");
        assert!(text.contains("convoflow_epoch_latency_seconds_bucket{le=\"0.25\"} 2\n"), "{text}");
        assert!(text.contains("convoflow_epoch_latency_seconds_bucket{le=\"+Inf\"} 2\n"), "{text}");
        assert!(text.contains("convoflow_epoch_latency_seconds_count 2\n"), "{text}");
    }
}
