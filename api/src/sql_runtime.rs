//! Where `/v1/sql` and `/v1/metrics` queries run: a tokio runtime of their own, apart from the
//! one that takes ingest and answers `/healthz`, on threads of the lowest CPU priority with large
//! stacks (planning recurses through the query). At most `concurrent` queries run at once and at
//! most `per_key` for one API key; a query that panics is answered 500 rather than taking a
//! worker down, and one that runs out of time is aborted, not left running.

use crate::error::ApiError;
use axum::http::StatusCode;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Stack of each query thread.
const STACK_BYTES: usize = 64 << 20;

pub struct SqlRuntime {
    runtime: Option<tokio::runtime::Runtime>,
    running: Arc<Semaphore>,
    per_key: usize,
    by_key: Arc<Mutex<HashMap<String, usize>>>,
}

impl SqlRuntime {
    pub fn new(threads: usize, concurrent: usize, per_key: usize) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .max_blocking_threads(threads.max(1))
            .thread_name("convoflow-sql")
            .thread_stack_size(STACK_BYTES)
            .on_thread_start(lower_priority)
            .enable_all()
            .build()?;
        Ok(SqlRuntime {
            runtime: Some(runtime),
            running: Arc::new(Semaphore::new(concurrent.max(1))),
            per_key: per_key.max(1),
            by_key: Arc::default(),
        })
    }

    /// Runs `query` for `key` on the query threads within `timeout` (waiting for a turn included).
    pub async fn run<T: Send + 'static>(
        &self,
        key: &str,
        timeout: Duration,
        query: impl Future<Output = Result<T, ApiError>> + Send + 'static,
    ) -> Result<T, ApiError> {
        let _turn = KeyTurn::take(&self.by_key, key, self.per_key)?;
        let timed_out = || {
            ApiError::bad_request(
                "query_timeout",
                format!("the query ran longer than the {} s limit", timeout.as_secs_f64()),
            )
        };
        let work = async {
            let _permit = self.running.acquire().await.map_err(|_| ApiError::unavailable("the server is stopping"))?;
            let runtime = self.runtime.as_ref().ok_or_else(|| ApiError::unavailable("the server is stopping"))?;
            let mut task = Aborted(runtime.spawn(query));
            match (&mut task.0).await {
                Ok(result) => result,
                Err(error) if error.is_panic() => {
                    let panic = error.into_panic();
                    let message = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()));
                    Err(ApiError::internal(format!(
                        "the query failed inside convoflow: {}",
                        message.unwrap_or_else(|| "a panic".to_owned())
                    )))
                }
                Err(_) => Err(ApiError::unavailable("the query was cancelled")),
            }
        };
        tokio::time::timeout(timeout, work).await.map_err(|_| timed_out())?
    }
}

impl Drop for SqlRuntime {
    fn drop(&mut self) {
        // Dropped from async code at shutdown, where a blocking drop would panic.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Aborts the task when dropped (on a timeout or a client gone away).
struct Aborted<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for Aborted<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One of a key's concurrent queries, given back when dropped.
struct KeyTurn {
    by_key: Arc<Mutex<HashMap<String, usize>>>,
    key: String,
}

impl KeyTurn {
    fn take(by_key: &Arc<Mutex<HashMap<String, usize>>>, key: &str, limit: usize) -> Result<Self, ApiError> {
        let mut counts = by_key.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = counts.entry(key.to_owned()).or_insert(0);
        if *count >= limit {
            return Err(ApiError {
                retry_after: Some(1),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_queries",
                    format!("this API key already has {limit} queries running; wait for one to finish"),
                )
            });
        }
        *count += 1;
        Ok(KeyTurn { by_key: by_key.clone(), key: key.to_owned() })
    }
}

impl Drop for KeyTurn {
    fn drop(&mut self) {
        let mut counts = self.by_key.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// Gives the calling thread the lowest CPU priority (nice 19), so that queries and snapshots
/// yield to ingest and epochs on a busy machine. Best effort: a refusal is logged.
#[allow(unsafe_code)] // no safe wrapper for a thread's nice value in std or libc
pub fn lower_priority() {
    // SAFETY: gettid and setpriority only read their arguments; `who` is this thread's id.
    let refused = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) } != 0;
    if refused {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower the thread's priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn panics_become_500_and_keys_are_limited() {
        let queries = SqlRuntime::new(1, 4, 1).expect("runtime");
        let panicked = queries
            .run("k", Duration::from_secs(5), async { panic!("boom") as Result<(), ApiError> })
            .await
            .expect_err("panic");
        assert_eq!(panicked.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(panicked.message.contains("boom"), "{}", panicked.message);
        let slow = queries.run("k", Duration::from_secs(5), async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok(1)
        });
        let second = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            queries.run("k", Duration::from_secs(5), async { Ok(2) }).await
        };
        let other = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            queries.run("other", Duration::from_secs(5), async { Ok(3) }).await
        };
        let (slow, second, other) = tokio::join!(slow, second, other);
        assert_eq!(slow.expect("first"), 1);
        assert_eq!(second.expect_err("the key is busy").status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(other.expect("another key"), 3);
        let stopped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stopped.clone();
        let timed_out = queries
            .run("k", Duration::from_millis(100), async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            })
            .await
            .expect_err("times out");
        assert_eq!(timed_out.code, "query_timeout");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!stopped.load(std::sync::atomic::Ordering::SeqCst), "a timed-out query is aborted");
    }
}
