//! `GET /v1/feed`: the live change feed (server-sent events). Every change the dataflow makes to
//! a chosen table is one SSE `change` event whose data is `{"table", "row", "diff", "epoch"}`,
//! filtered to the caller's tenant. `?tables=responses,message_volume` chooses tables (default:
//! all); an admin key sees every tenant or the one named by `?tenant=`.
//!
//! Epochs are published in chunks of about `FEED_CHUNK_BYTES`, and the feed holds the last
//! `FEED_CAPACITY` chunks: however many subscribers stall, it holds at most
//! `FEED_CAPACITY × FEED_CHUNK_BYTES` (plus one row over per chunk). A subscriber that falls
//! further behind gets a `lagged` event naming how many chunks it missed, and its feed ends: it
//! should re-read the tables and subscribe again (the feed has no replay).
//!
//! Epochs are rendered to JSON by a [`FeedPublisher`] on a thread of its own, not on the
//! dataflow's: the runtime hands over what it stored and goes on with the next epoch.

use crate::auth::{authenticate, url_query_value};
use crate::error::ApiError;
use crate::state::{ApiState, Scope};
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use convoflow_operators::{RejectedRow, TableSet};
use convoflow_schema::{table_batches, Rows, TABLES};
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::json::writer::{JsonArray, LineDelimited, WriterBuilder};
use datafusion::arrow::record_batch::RecordBatch;
use futures::{Stream, StreamExt};
use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use tokio::sync::broadcast;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;

/// Chunks the feed holds for slow subscribers.
pub const FEED_CAPACITY: usize = 1024;
/// An epoch's changes are published in chunks of about this many bytes.
pub const FEED_CHUNK_BYTES: usize = 256 << 10;

/// One change, ready to send.
pub struct FeedChange {
    pub tenant_id: String,
    pub table: &'static str,
    /// `{"table":…,"row":…,"diff":…,"epoch":…}`
    pub data: String,
}

/// The changes of one epoch.
pub struct FeedEpoch {
    pub epoch: u64,
    pub changes: Vec<FeedChange>,
}

/// Renders an epoch's updates (consolidated) and new rejections as feed changes, in chunks of
/// about `FEED_CHUNK_BYTES`.
pub fn feed_epoch(epoch: u64, tables: &TableSet, rejected: &[RejectedRow]) -> Result<Vec<FeedEpoch>, ArrowError> {
    let mut chunks = Vec::new();
    let (mut changes, mut bytes) = (Vec::new(), 0);
    for table in table_batches(tables, rejected, Rows::Updates)? {
        let mut diffs = table.diffs.iter();
        for batch in &table.batches {
            let rows = json_rows(batch)?;
            let tenants = batch.column_by_name("tenant_id").and_then(|c| c.as_string_opt::<i32>().cloned());
            for (index, row) in rows.into_iter().enumerate() {
                let diff = diffs.next().copied().unwrap_or(1);
                let tenant_id =
                    tenants.as_ref().filter(|t| !t.is_null(index)).map_or("", |t| t.value(index)).to_owned();
                let data = format!(r#"{{"table":"{}","row":{row},"diff":{diff},"epoch":{epoch}}}"#, table.table);
                bytes += data.len() + tenant_id.len();
                changes.push(FeedChange { tenant_id, table: table.table, data });
                if bytes >= FEED_CHUNK_BYTES {
                    chunks.push(FeedEpoch { epoch, changes: std::mem::take(&mut changes) });
                    bytes = 0;
                }
            }
        }
    }
    if !changes.is_empty() || chunks.is_empty() {
        chunks.push(FeedEpoch { epoch, changes });
    }
    Ok(chunks)
}

/// Epochs the runtime may hand over before the renderer has taken them; further ahead, it waits.
const RENDER_QUEUE: usize = 2;

struct Stored {
    epoch: u64,
    tables: TableSet,
    rejected: Vec<RejectedRow>,
}

/// Renders stored epochs for the feed on the `convoflow-feed` thread and publishes their chunks,
/// in the order they were handed over. The hand-over holds at most [`RENDER_QUEUE`] epochs: a
/// runtime further ahead waits for the renderer (ingest slows) rather than the feed skipping
/// changes. Dropping it lets the renderer finish what it holds.
pub struct FeedPublisher {
    feed: broadcast::Sender<Arc<FeedEpoch>>,
    queue: Option<mpsc::SyncSender<Stored>>,
    renderer: Option<JoinHandle<()>>,
}

impl FeedPublisher {
    pub fn start(feed: broadcast::Sender<Arc<FeedEpoch>>) -> std::io::Result<FeedPublisher> {
        let (queue, stored) = mpsc::sync_channel::<Stored>(RENDER_QUEUE);
        let publish_to = feed.clone();
        let renderer = std::thread::Builder::new().name("convoflow-feed".to_owned()).spawn(move || {
            for Stored { epoch, tables, rejected } in stored {
                match feed_epoch(epoch, &tables, &rejected) {
                    Ok(chunks) => chunks.into_iter().for_each(|chunk| drop(publish_to.send(Arc::new(chunk)))),
                    Err(error) => tracing::error!(epoch, %error, "an epoch could not be rendered for the feed; subscribers miss its changes"),
                }
            }
        })?;
        Ok(FeedPublisher { feed, queue: Some(queue), renderer: Some(renderer) })
    }

    /// Whether anyone reads the feed now: if not, epochs need not be handed over.
    pub fn has_subscribers(&self) -> bool {
        self.feed.receiver_count() > 0
    }

    /// Hands over an epoch's stored changes to be rendered and published.
    pub fn publish(&self, epoch: u64, tables: TableSet, rejected: Vec<RejectedRow>) {
        if let Some(queue) = &self.queue {
            // The renderer only stops once the queue is dropped.
            let _ = queue.send(Stored { epoch, tables, rejected });
        }
    }
}

impl Drop for FeedPublisher {
    fn drop(&mut self) {
        self.queue.take();
        if let Some(renderer) = self.renderer.take() {
            let _ = renderer.join();
        }
    }
}

/// Each row of `batch` as a JSON object, nulls written out.
pub fn json_rows(batch: &RecordBatch) -> Result<Vec<String>, ArrowError> {
    let mut out = Vec::new();
    {
        let mut writer = WriterBuilder::new().with_explicit_nulls(true).build::<_, LineDelimited>(&mut out);
        writer.write(batch)?;
        writer.finish()?;
    }
    let text = String::from_utf8(out).map_err(|e| ArrowError::JsonError(e.to_string()))?;
    Ok(text.lines().map(str::to_owned).collect())
}

/// All rows of `batches` as one JSON array, nulls written out.
pub fn json_array(batches: &[RecordBatch]) -> Result<Vec<u8>, ArrowError> {
    let mut out = Vec::new();
    {
        let mut writer = WriterBuilder::new().with_explicit_nulls(true).build::<_, JsonArray>(&mut out);
        for batch in batches {
            writer.write(batch)?;
        }
        writer.finish()?;
    }
    if out.is_empty() {
        out.extend_from_slice(b"[]");
    }
    Ok(out)
}

/// Counts open feeds for `/metrics` while alive.
struct Subscribed(Arc<crate::telemetry::Telemetry>);

impl Drop for Subscribed {
    fn drop(&mut self) {
        self.0.feed_subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}

pub async fn get_feed(
    State(state): State<Arc<ApiState>>,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let query = uri.query().unwrap_or("");
    let caller = authenticate(&state, &method, &headers, Some(query))?;
    let tenant = match (&caller.scope, url_query_value(query, "tenant")) {
        (Scope::All, None) => None,
        (_, requested) => Some(caller.tenant(requested.as_deref())?),
    };
    let tables: HashSet<&'static str> = match url_query_value(query, "tables").filter(|t| !t.is_empty()) {
        None => TABLES.iter().copied().collect(),
        Some(list) => list
            .split(',')
            .map(|name| {
                TABLES.iter().copied().find(|t| *t == name.trim()).ok_or_else(|| {
                    ApiError::bad_request(
                        "unknown_table",
                        format!("no table `{name}`; the tables are {}", TABLES.join(", ")),
                    )
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let receiver = state.feed.subscribe();
    state.telemetry.feed_subscribers.fetch_add(1, Ordering::Relaxed);
    let subscribed = Subscribed(state.telemetry.clone());
    let mut chosen: Vec<&str> = tables.iter().copied().collect();
    chosen.sort();
    let hello =
        SseEvent::default().event("ready").data(serde_json::json!({"tables": chosen, "tenant": tenant}).to_string());
    // A subscriber that lagged gets the `lagged` event, then its feed ends.
    let until_lagged = BroadcastStream::new(receiver).scan(false, |lagged, item| {
        let next = (!*lagged).then_some(item);
        *lagged |= matches!(next, Some(Err(BroadcastStreamRecvError::Lagged(_))));
        futures::future::ready(next)
    });
    let changes = until_lagged.flat_map(move |item| {
        let _alive = &subscribed;
        let events: Vec<Result<SseEvent, Infallible>> = match item {
            Ok(epoch) => epoch
                .changes
                .iter()
                .filter(|change| {
                    tables.contains(change.table) && tenant.as_ref().is_none_or(|t| *t == change.tenant_id)
                })
                .map(|change| Ok(SseEvent::default().event("change").data(change.data.clone())))
                .collect(),
            Err(BroadcastStreamRecvError::Lagged(missed)) => {
                vec![Ok(SseEvent::default().event("lagged").data(format!(r#"{{"missed_chunks":{missed}}}"#)))]
            }
        };
        futures::stream::iter(events)
    });
    let mut shutdown = state.shutdown.clone();
    let stopped = async move {
        let _ = shutdown.wait_for(|stopping| *stopping).await;
    };
    let stream = futures::stream::once(async move { Ok(hello) }).chain(changes).take_until(stopped);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
