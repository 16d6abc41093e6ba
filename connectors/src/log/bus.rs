//! Ingest onto the local log: one request's batches become one record, durable together or not
//! at all, answered once the group commit that holds it is fsynced.

use super::{LocalLog, LogError};
use convoflow_api::{AppendError, BoxFuture, Bus, TenantBatch};
use std::sync::Arc;

pub struct LogBus {
    pub log: Arc<LocalLog>,
}

impl Bus for LogBus {
    fn append(&self, batches: Vec<TenantBatch>) -> BoxFuture<'_, Result<(), AppendError>> {
        Box::pin(async move {
            let payload: Vec<u8> = batches.into_iter().flat_map(|batch| batch.body).collect();
            if payload.is_empty() {
                return Ok(());
            }
            self.log.append(payload).await.map(|_| ()).map_err(|error| match error {
                LogError::TooLarge(_) => AppendError::TooLarge(error.to_string()),
                other => AppendError::Unavailable(other.to_string()),
            })
        })
    }
}
