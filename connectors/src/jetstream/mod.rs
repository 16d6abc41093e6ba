//! The scaled bus: NATS JetStream stream `CONVOFLOW_EVENTS` on subjects `convoflow.events.<tenant>`
//! (file storage, 2-minute duplicate window).
//!
//! Producers publish NDJSON batches of one tenant's events per message, with a `Nats-Msg-Id` that
//! is a hash of the batch, so a retried or repeated publish is dropped by the server. Consumers
//! pull; the durable one acknowledges a message only after the sink committed what it caused.

mod bus;
mod pull;
mod source;

pub use bus::StreamBus;
pub use pull::{ConsumerSource, Publishing};
pub use source::StreamSource;

use crate::retry::{retry_for, Backoff};
use crate::wire::OutgoingBatch;
use async_nats::jetstream::{self, consumer, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum JetStreamError {
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("JetStream: cannot {what}: {reason}")]
    Request { what: String, reason: String },
    #[error("{0}")]
    Config(String),
}

/// Which server, stream and consumer; the stream and subjects are SPEC §1's names, the durable
/// consumer is named after the store it feeds. The stream, subject prefix and consumer can be
/// changed (`CONVOFLOW_NATS_STREAM`, `CONVOFLOW_NATS_SUBJECT_PREFIX`, `CONVOFLOW_NATS_CONSUMER`)
/// so that several deployments or tests can share one server.
#[derive(Clone, Debug)]
pub struct JetStreamConfig {
    pub url: String,
    pub stream: String,
    pub subject_prefix: String,
    pub consumer: String,
}

pub const DEFAULT_STREAM: &str = "CONVOFLOW_EVENTS";
pub const DEFAULT_SUBJECT_PREFIX: &str = "convoflow.events";
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long a delivered message may stay unacknowledged before the server redelivers it.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// Publishes awaiting their acknowledgement at once.
const PUBLISH_WINDOW: usize = 64;
/// Longest wait for one fetch's messages.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Tries per acknowledgement (with backoff, about 3 s in all).
const ACK_ATTEMPTS: u32 = 6;

impl JetStreamConfig {
    pub fn from_url(url: &str, default_consumer: &str) -> Self {
        let setting = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
        JetStreamConfig {
            url: url.to_owned(),
            stream: setting("CONVOFLOW_NATS_STREAM", DEFAULT_STREAM),
            subject_prefix: setting("CONVOFLOW_NATS_SUBJECT_PREFIX", DEFAULT_SUBJECT_PREFIX),
            consumer: setting("CONVOFLOW_NATS_CONSUMER", default_consumer),
        }
    }

    /// `convoflow.events.<tenant>`, with characters NATS gives meaning to (`.`, `*`, `>`,
    /// whitespace) replaced by `_`; the event itself carries the exact tenant id.
    pub fn subject(&self, tenant: &str) -> String {
        let token: String =
            tenant.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
        format!("{}.{}", self.subject_prefix, if token.is_empty() { "_" } else { &token })
    }
}

pub struct JetStreamBus {
    config: JetStreamConfig,
    context: jetstream::Context,
    stream: stream::Stream,
}

/// What a publish did.
#[derive(Clone, Copy, Debug, Default)]
pub struct PublishStats {
    pub messages: u64,
    pub events: u64,
    /// Messages the server already had (same `Nats-Msg-Id` within the duplicate window).
    pub duplicate_messages: u64,
    pub retries: u64,
}

impl PublishStats {
    pub fn add(&mut self, other: PublishStats) {
        self.messages += other.messages;
        self.events += other.events;
        self.duplicate_messages += other.duplicate_messages;
        self.retries += other.retries;
    }
}

/// A delivered message: its stream sequence and NDJSON body; `ack` once committed.
pub struct Delivery {
    pub sequence: u64,
    pub payload: Bytes,
    message: Option<jetstream::Message>,
}

impl Delivery {
    /// Acknowledges the message and waits for the server to confirm, retrying for a few seconds
    /// (the server may be restarting). If it still fails the message comes again later and is
    /// absorbed as duplicates.
    pub async fn ack(self) {
        let Some(message) = self.message else { return };
        let mut backoff = Backoff::new();
        for attempt in 1..=ACK_ATTEMPTS {
            match message.double_ack().await {
                Ok(()) => return,
                Err(error) if attempt == ACK_ATTEMPTS => {
                    tracing::warn!(sequence = self.sequence, %error, "ack failed; the message will be redelivered");
                }
                Err(_) => backoff.wait().await,
            }
        }
    }
}

impl JetStreamBus {
    /// Connects (retrying while the server is away) and creates the stream if it is missing.
    pub async fn connect(config: JetStreamConfig) -> Result<Self, JetStreamError> {
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .connect(&config.url)
            .await
            .map_err(|error| JetStreamError::Connect { url: config.url.clone(), reason: error.to_string() })?;
        let context = jetstream::new(client);
        let stream_config = stream::Config {
            name: config.stream.clone(),
            subjects: vec![format!("{}.>", config.subject_prefix)],
            storage: stream::StorageType::File,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        };
        let stream = retry("create the stream", || context.get_or_create_stream(stream_config.clone())).await?;
        Ok(JetStreamBus { config, context, stream })
    }

    pub fn config(&self) -> &JetStreamConfig {
        &self.config
    }

    /// Publishes every batch until the server has acknowledged it, retrying with backoff; a batch
    /// the server already has counts as a duplicate.
    pub async fn publish(&self, batches: &[OutgoingBatch]) -> Result<PublishStats, JetStreamError> {
        let mut stats = PublishStats::default();
        for window in batches.chunks(PUBLISH_WINDOW) {
            let mut pending: Vec<&OutgoingBatch> = window.iter().collect();
            let mut backoff = Backoff::new();
            while !pending.is_empty() {
                let mut acks = Vec::with_capacity(pending.len());
                let mut failed = Vec::new();
                for batch in pending {
                    let mut headers = HeaderMap::new();
                    headers.insert("Nats-Msg-Id", batch.id.as_str());
                    match self
                        .context
                        .publish_with_headers(self.config.subject(&batch.tenant), headers, batch.body.clone())
                        .await
                    {
                        Ok(ack) => acks.push((batch, ack)),
                        Err(error) => {
                            tracing::warn!(%error, "publish failed; retrying");
                            failed.push(batch);
                        }
                    }
                }
                for (batch, ack) in acks {
                    match ack.await {
                        Ok(ack) => {
                            stats.messages += 1;
                            stats.events += batch.events;
                            stats.duplicate_messages += ack.duplicate as u64;
                        }
                        Err(error) => {
                            tracing::warn!(%error, "publish not acknowledged; retrying");
                            failed.push(batch);
                        }
                    }
                }
                if !failed.is_empty() {
                    stats.retries += failed.len() as u64;
                    backoff.wait().await;
                }
                pending = failed;
            }
        }
        Ok(stats)
    }

    /// The durable consumer. If a previous process left messages delivered but unacknowledged (it
    /// died), the consumer is recreated from the acknowledgement floor, so they come again now
    /// instead of after the ack wait.
    pub async fn durable_consumer(&self) -> Result<Consumer, JetStreamError> {
        let name = self.config.consumer.clone();
        let mut deliver_policy = consumer::DeliverPolicy::All;
        if let Ok(mut existing) = self.stream.get_consumer::<consumer::pull::Config>(&name).await {
            let info = existing
                .info()
                .await
                .map_err(|error| JetStreamError::Request {
                    what: "read the consumer".into(),
                    reason: error.to_string(),
                })?
                .clone();
            if info.num_ack_pending == 0 {
                return Ok(Consumer { inner: existing, acks: true });
            }
            tracing::info!(consumer = %name, unacked = info.num_ack_pending, from = info.ack_floor.stream_sequence + 1, "redelivering unacknowledged messages");
            deliver_policy =
                consumer::DeliverPolicy::ByStartSequence { start_sequence: info.ack_floor.stream_sequence + 1 };
            retry("recreate the consumer", || self.stream.delete_consumer(&name)).await?;
        }
        let config = consumer::pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: format!("{}.>", self.config.subject_prefix),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            max_ack_pending: -1,
            deliver_policy,
            ..Default::default()
        };
        let inner = retry("create the consumer", || self.stream.create_consumer(config.clone())).await?;
        Ok(Consumer { inner, acks: true })
    }

    /// Every message after stream sequence `after`, in order and without acknowledgements, for a
    /// reader that keeps its place itself (`serve` records it with its store). An ordered
    /// consumer recreates itself when a message goes missing or the server restarts.
    pub async fn ordered_after(&self, after: u64) -> Result<consumer::pull::Ordered, JetStreamError> {
        let config = consumer::pull::OrderedConfig {
            filter_subject: format!("{}.>", self.config.subject_prefix),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: after + 1 },
            ..Default::default()
        };
        let consumer = retry("create an ordered consumer", || self.stream.create_consumer(config.clone())).await?;
        consumer.messages().await.map_err(|error| JetStreamError::Request {
            what: "read from the ordered consumer".to_owned(),
            reason: error.to_string(),
        })
    }

    /// When the stream was created (ms): a stream deleted and made again starts its sequences
    /// over, so positions in it are only meaningful with this.
    pub fn created_ms(&self) -> i64 {
        self.stream.cached_info().created.timestamp_millis()
    }

    /// The sequence of the stream's last message (0 when empty).
    pub async fn last_sequence(&self) -> Result<u64, JetStreamError> {
        Ok(retry("read the stream", || self.stream.get_info()).await?.state.last_sequence)
    }

    /// A throwaway consumer of every message published at or after `since_ms` (all when `None`),
    /// without acknowledgements: for rebuilding tables from the stream.
    pub async fn replay_consumer(&self, since_ms: Option<i64>) -> Result<Consumer, JetStreamError> {
        let deliver_policy = match since_ms {
            None => consumer::DeliverPolicy::All,
            Some(ms) => {
                let start_time = chrono::DateTime::from_timestamp_millis(ms)
                    .ok_or_else(|| JetStreamError::Config(format!("--since {ms} ms is out of range")))?;
                consumer::DeliverPolicy::ByStartTime { start_time }
            }
        };
        let config = consumer::pull::Config {
            filter_subject: format!("{}.>", self.config.subject_prefix),
            ack_policy: consumer::AckPolicy::None,
            deliver_policy,
            inactive_threshold: Duration::from_secs(300),
            ..Default::default()
        };
        let inner = retry("create a replay consumer", || self.stream.create_consumer(config.clone())).await?;
        Ok(Consumer { inner, acks: false })
    }
}

pub struct Consumer {
    inner: consumer::PullConsumer,
    acks: bool,
}

impl Consumer {
    /// True once every message is delivered and acknowledged, but for the `held` ones the caller
    /// has yet to acknowledge. (False while the server cannot be asked.)
    pub async fn finished(&mut self, held: usize) -> bool {
        match self.inner.info().await {
            Ok(info) => info.num_pending == 0 && info.num_ack_pending <= held,
            Err(error) => {
                tracing::warn!(%error, "cannot read the consumer; retrying");
                false
            }
        }
    }

    /// Up to `max_messages` messages that are available now (none if there are none); errors
    /// while the server is away are logged and give an empty fetch.
    pub async fn fetch(&self, max_messages: usize) -> Vec<Delivery> {
        use futures::StreamExt;
        let mut batch = match self.inner.fetch().max_messages(max_messages).messages().await {
            Ok(batch) => batch,
            Err(error) => {
                tracing::warn!(%error, "fetch failed");
                return Vec::new();
            }
        };
        let mut deliveries = Vec::new();
        // A pull whose answer was lost (the server restarted) must not wait forever: give up after
        // FETCH_TIMEOUT; whatever it delivered unseen comes again after the ack wait.
        let deadline = tokio::time::Instant::now() + FETCH_TIMEOUT;
        loop {
            let message = match tokio::time::timeout_at(deadline, batch.next()).await {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!("fetch timed out");
                    break;
                }
            };
            match message {
                Ok(message) => {
                    let Ok(info) = message.info() else { continue };
                    let sequence = info.stream_sequence;
                    deliveries.push(Delivery {
                        sequence,
                        payload: message.payload.clone(),
                        message: self.acks.then_some(message),
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "fetch interrupted");
                    break;
                }
            }
        }
        deliveries
    }
}

/// Retries a JetStream API call for up to a minute while the server is unreachable.
async fn retry<T, E, F, Fut>(what: &str, call: F) -> Result<T, JetStreamError>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    retry_for(what, Duration::from_secs(60), call)
        .await
        .map_err(|error| JetStreamError::Request { what: what.to_owned(), reason: error.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_carry_a_safe_tenant_token() {
        let config = JetStreamConfig {
            url: String::new(),
            stream: DEFAULT_STREAM.into(),
            subject_prefix: DEFAULT_SUBJECT_PREFIX.into(),
            consumer: "convoflow".into(),
        };
        assert_eq!(config.subject("acme-1"), "convoflow.events.acme-1");
        assert_eq!(config.subject("a.b *>"), "convoflow.events.a_b___");
        assert_eq!(config.subject(""), "convoflow.events._");
    }
}
