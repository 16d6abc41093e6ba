//! `convoflow serve --demo`: generated traffic (the `generate` data set) fed live through the
//! same admission path as `POST /v1/events`, so the dashboard and the feed move.

use convoflow_api::{ApiState, Intake};
use convoflow_events::{now_ms, parse_event, split_lines};
use convoflow_fixtures::{generate, tenant_profiles, tenants_json, GeneratorConfig};
use convoflow_operators::RejectedRow;
use std::sync::Arc;
use std::time::Duration;

pub const DEMO_TENANTS: usize = 4;
const DEMO_EVENTS: u64 = 600_000;
/// Lines per tick; ten ticks a second.
const LINES_PER_TICK: usize = 200;

/// The tenants of the generated data (time zones, funnels), for a demo without a tenants file.
pub fn demo_tenants_json() -> String {
    tenants_json(&tenant_profiles(DEMO_TENANTS))
}

/// Feeds the generated lines at about 2,000 a second until they run out.
pub async fn feed(state: Arc<ApiState>, seed: u64) {
    let mut lines = Vec::new();
    let config = GeneratorConfig { events: DEMO_EVENTS, seed, tenants: DEMO_TENANTS };
    if let Err(error) = generate(&config, &mut lines) {
        tracing::error!(%error, "demo: cannot generate traffic");
        return;
    }
    while !state.is_ready() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tracing::info!(lines = DEMO_EVENTS, "demo: feeding generated traffic, about 2,000 events a second");
    let all: Vec<(u64, &[u8])> = split_lines(&lines, 1).map(|line| (line.number, line.bytes)).collect();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for chunk in all.chunks(LINES_PER_TICK) {
        tick.tick().await;
        let received_at = now_ms();
        let mut admission = Intake::default();
        for (number, bytes) in chunk {
            let source = || format!("demo:{number}");
            match parse_event(bytes) {
                Ok(event) => {
                    admission.event(&state.seen, &event, received_at, source);
                }
                Err(error) => admission.reject(RejectedRow::new(
                    error.tenant_id.as_deref(),
                    received_at,
                    error.to_string(),
                    bytes,
                    source(),
                )),
            }
        }
        if let Err(error) = admission.commit(&state).await {
            tracing::warn!(error = %error.message, "demo: a batch could not be stored; stopping the demo traffic");
            return;
        }
    }
    tracing::info!("demo: all generated traffic fed");
}
