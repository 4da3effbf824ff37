//! Build events from the service to the live websocket servers: in-process (the embedded default)
//! or over Redis pub/sub. Publishing never waits: when the bus cannot keep up, events are dropped,
//! and subscribers catch up from the log files, which are written before their lines are published.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};

use crate::model::{Build, BuildId};

/// The Redis channel every event goes through.
pub const CHANNEL: &str = "autobuilder:events";
/// Events a subscriber may fall behind by before it is told it lagged (and catches up from files).
const SUBSCRIBER_BUFFER: usize = 256;
/// Events waiting for Redis before new ones are dropped.
const PUBLISH_QUEUE: usize = 4096;
/// Longest pause between two attempts to reach Redis.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What the service tells the live servers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Event {
    /// A build (or recipes reload) was queued, started or ended: its whole record.
    Build { build: Box<Build> },
    /// A running build was asked to stop (cancelled, superseded): it is in its stop grace period.
    Stopping { id: BuildId, reason: String },
    /// Lines appended to a build's log: `seq` is the number of the first (1-based), `text` the
    /// lines exactly as in the log file, each ending with a newline; `time` when they arrived
    /// (milliseconds since the Unix epoch; 0 from an older publisher).
    Lines {
        id: BuildId,
        seq: u64,
        text: String,
        #[serde(default)]
        time: u64,
    },
}

/// What a subscriber receives.
#[derive(Debug, Clone)]
pub enum Delivery {
    Event(Arc<Event>),
    /// The subscription to Redis was (re)established: events may have been missed before it.
    Reconnected,
}

/// A handle to publish events and to subscribe to them.
#[derive(Clone)]
pub struct Bus {
    local: broadcast::Sender<Delivery>,
    redis: Option<mpsc::Sender<String>>,
}

impl Bus {
    /// Events go straight to subscribers in this process.
    pub fn in_process() -> Self {
        Self { local: broadcast::channel(SUBSCRIBER_BUFFER).0, redis: None }
    }

    /// Events are published to Redis at `url` (from the service).
    pub fn redis_publisher(url: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)?;
        let (queue, pending) = mpsc::channel(PUBLISH_QUEUE);
        tokio::spawn(publish_to_redis(client, pending));
        Ok(Self { local: broadcast::channel(1).0, redis: Some(queue) })
    }

    /// Events are received from Redis at `url` (in a live server); reconnects forever.
    pub fn redis_subscriber(url: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)?;
        let local = broadcast::channel(SUBSCRIBER_BUFFER).0;
        tokio::spawn(subscribe_to_redis(client, local.clone()));
        Ok(Self { local, redis: None })
    }

    /// Sends `event` without waiting; drops it when nobody listens or the queue is full.
    pub fn publish(&self, event: Event) {
        match &self.redis {
            Some(queue) => {
                let json = serde_json::to_string(&event).expect("events serialise");
                if queue.try_send(json).is_err() {
                    tracing::debug!("Redis publish queue full: event dropped");
                }
            }
            None => {
                let _ = self.local.send(Delivery::Event(Arc::new(event)));
            }
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Delivery> {
        self.local.subscribe()
    }
}

async fn publish_to_redis(client: redis::Client, mut pending: mpsc::Receiver<String>) {
    let mut connection = None;
    let mut retry_at = tokio::time::Instant::now();
    let mut backoff = Duration::from_millis(100);
    while let Some(json) = pending.recv().await {
        if connection.is_none() {
            if tokio::time::Instant::now() < retry_at {
                continue; // Redis is down: drop; the live servers catch up from the log files
            }
            match client.get_multiplexed_async_connection().await {
                Ok(c) => {
                    tracing::info!("connected to Redis: publishing build events");
                    connection = Some(c);
                    backoff = Duration::from_millis(100);
                }
                Err(e) => {
                    tracing::warn!("Redis unreachable, build events dropped for {backoff:?}: {e}");
                    retry_at = tokio::time::Instant::now() + backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            }
        }
        let c = connection.as_mut().expect("connected above");
        let result: redis::RedisResult<i64> = redis::cmd("PUBLISH").arg(CHANNEL).arg(&json).query_async(c).await;
        if let Err(e) = result {
            tracing::warn!("lost Redis while publishing: {e}");
            connection = None;
        }
    }
}

async fn subscribe_to_redis(client: redis::Client, local: broadcast::Sender<Delivery>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => match pubsub.subscribe(CHANNEL).await {
                Ok(()) => {
                    tracing::info!("subscribed to Redis channel {CHANNEL}");
                    backoff = Duration::from_millis(100);
                    let _ = local.send(Delivery::Reconnected);
                    let mut messages = pubsub.on_message();
                    while let Some(message) = messages.next().await {
                        let Ok(payload) = message.get_payload::<String>() else { continue };
                        match serde_json::from_str::<Event>(&payload) {
                            Ok(event) => {
                                let _ = local.send(Delivery::Event(Arc::new(event)));
                            }
                            Err(e) => tracing::warn!("unreadable event on {CHANNEL}: {e}"),
                        }
                    }
                    tracing::warn!("lost the Redis subscription: reconnecting");
                }
                Err(e) => tracing::warn!("cannot subscribe to {CHANNEL}: {e}"),
            },
            Err(e) => tracing::warn!("Redis unreachable, retrying in {backoff:?}: {e}"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
