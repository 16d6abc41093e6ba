//! Ingest onto JetStream: a request's batches are published per tenant (split into messages of
//! at most half a MiB), and the request is answered once the server acknowledged every message.

use super::JetStreamBus;
use crate::wire::split_batch;
use convoflow_api::{AppendError, BoxFuture, Bus, TenantBatch};
use std::sync::Arc;
use std::time::Duration;

/// How long a request waits for JetStream before it is answered 503 (its events may still land;
/// a retry is absorbed as duplicates).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// NATS's default largest message (`max_payload`); a longer event line cannot be published.
const MAX_MESSAGE_BYTES: usize = 1 << 20;

pub struct StreamBus {
    pub bus: Arc<JetStreamBus>,
}

impl Bus for StreamBus {
    fn append(&self, batches: Vec<TenantBatch>) -> BoxFuture<'_, Result<(), AppendError>> {
        Box::pin(async move {
            let messages: Vec<_> = batches.iter().flat_map(|batch| split_batch(&batch.tenant, &batch.body)).collect();
            if messages.is_empty() {
                return Ok(());
            }
            if let Some(message) = messages.iter().find(|message| message.body.len() > MAX_MESSAGE_BYTES) {
                return Err(AppendError::TooLarge(format!(
                    "an event of {} bytes is more than a NATS message takes ({MAX_MESSAGE_BYTES} bytes)",
                    message.body.len()
                )));
            }
            match tokio::time::timeout(PUBLISH_TIMEOUT, self.bus.publish(&messages)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(error)) => Err(AppendError::Unavailable(error.to_string())),
                Err(_) => Err(AppendError::Unavailable(format!(
                    "NATS JetStream did not acknowledge the events within {} s; retry (repeated events are answered as duplicates)",
                    PUBLISH_TIMEOUT.as_secs()
                ))),
            }
        })
    }
}
