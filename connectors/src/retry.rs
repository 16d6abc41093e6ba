//! Retrying calls to a service that may be away for a while (NATS restarting, ClickHouse down).

use std::future::Future;
use std::time::Duration;

/// Exponential backoff from 100 ms to 5 s.
pub struct Backoff {
    delay: Duration,
}

impl Backoff {
    pub fn new() -> Self {
        Backoff { delay: Duration::from_millis(100) }
    }

    pub async fn wait(&mut self) {
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(Duration::from_secs(5));
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

/// Retries `call` with backoff for up to `limit`; then returns its last error.
pub async fn retry_for<T, E, F, Fut>(what: &str, limit: Duration, mut call: F) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    let mut backoff = Backoff::new();
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(error) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(%error, what, "call failed; retrying");
                backoff.wait().await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Retries `call` with backoff until it succeeds: while a sink is away the pipeline waits,
/// acknowledges nothing, and catches up when it is back.
pub async fn until_done<T, E, F, Fut>(what: &str, mut call: F) -> T
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = Backoff::new();
    loop {
        match call().await {
            Ok(value) => return value,
            Err(error) => {
                tracing::warn!(%error, what, "call failed; retrying");
                backoff.wait().await;
            }
        }
    }
}
