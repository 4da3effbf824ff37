//! The `deliveries` table: every verified webhook delivery, stored before it is acted on, written
//! in batches by one task.

use std::time::Instant;

use sqlx::any::AnyRow;
use sqlx::pool::PoolConnection;
use sqlx::{Acquire, Any, AnyConnection, AnyPool, Connection, Row};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use super::{MAX_HISTORY, Store, now_ms};
use crate::model::millis;

/// A webhook delivery as stored, without its payload.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Delivery {
    pub id: String,
    pub project: String,
    pub event: String,
    #[serde(with = "millis")]
    pub received: OffsetDateTime,
    /// What was done with it (JSON: the answer's message and build ids); null until processed.
    pub outcome: Option<serde_json::Value>,
}

/// A write waiting for the writer task, with where to send whether it changed a row.
pub(super) type QueuedWrite = (DeliveryWrite, oneshot::Sender<anyhow::Result<bool>>);

/// Starts the task that commits delivery writes; returns where to queue them.
pub(super) fn start_writer(pool: AnyPool) -> mpsc::Sender<QueuedWrite> {
    let (writes, queue) = mpsc::channel(4 * MAX_BATCH);
    tokio::spawn(write_deliveries(pool, queue));
    writes
}

/// Most delivery writes committed in one transaction.
const MAX_BATCH: usize = 256;
/// The writer keeps its connection between batches; one idle for longer is pinged before its next
/// batch, so that a connection lost meanwhile (PostgreSQL restarted) is replaced before a delivery
/// is refused on it. Back-to-back batches skip the ping: a round trip each (docs/benchmarks.md,
/// "Intake").
const PING_AFTER_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

pub(super) enum DeliveryWrite {
    Record { id: String, project: String, event: String, headers: String, payload: Vec<u8>, outcome: Option<String> },
    Outcome { project: String, id: String, outcome: String },
}

/// Commits delivery writes in batches: whatever queued up while the previous batch committed.
async fn write_deliveries(pool: AnyPool, mut writes: mpsc::Receiver<QueuedWrite>) {
    let mut held: Option<PoolConnection<Any>> = None;
    let mut last_used = Instant::now();
    while let Some(first) = writes.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match writes.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        let mut results = vec![false; batch.len()];
        let committed = async {
            if let Some(connection) = held.as_mut().filter(|_| last_used.elapsed() > PING_AFTER_IDLE)
                && connection.ping().await.is_err()
            {
                held = None;
            }
            let connection = match &mut held {
                Some(connection) => connection,
                None => held.insert(pool.acquire().await?),
            };
            // One statement commits by itself (the common case: a batch of new deliveries);
            // several are one transaction.
            let outcomes = batch.iter().filter(|(write, _)| matches!(write, DeliveryWrite::Outcome { .. })).count();
            let statements = outcomes + usize::from(outcomes < batch.len());
            if statements == 1 {
                apply(&batch, &mut results, connection).await
            } else {
                let mut tx = connection.begin().await?;
                apply(&batch, &mut results, &mut tx).await?;
                tx.commit().await
            }
        }
        .await;
        last_used = Instant::now();
        if committed.is_err() {
            // Back to the pool, which checks it before it is used again.
            held = None;
        }
        for (index, (_, done)) in batch.into_iter().enumerate() {
            let result = match &committed {
                Ok(()) => Ok(results[index]),
                Err(e) => Err(anyhow::anyhow!("cannot store the delivery: {e}")),
            };
            let _ = done.send(result);
        }
    }
}

/// Runs the statements of a batch of delivery writes on `connection`, noting in `results` which
/// changed a row.
async fn apply(batch: &[QueuedWrite], results: &mut [bool], connection: &mut AnyConnection) -> Result<(), sqlx::Error> {
    // Records go in one statement (the common case: many deliveries at once), then
    // outcomes one by one. A record whose id is stored already inserts nothing.
    let records: Vec<usize> =
        (0..batch.len()).filter(|&i| matches!(batch[i].0, DeliveryWrite::Record { .. })).collect();
    if !records.is_empty() {
        // `$N` placeholders written here: sqlx's QueryBuilder writes `?` for `Any`, which
        // PostgreSQL does not take.
        const COLUMNS: usize = 7;
        let rows = (0..records.len())
            .map(|row| {
                let first = row * COLUMNS + 1;
                let places = (first..first + COLUMNS).map(|n| format!("${n}")).collect::<Vec<_>>();
                format!("({})", places.join(", "))
            })
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "INSERT INTO deliveries (id, project, event, received, headers, payload, outcome) VALUES {rows}
                 ON CONFLICT (project, id) DO NOTHING RETURNING project, id"
        );
        let mut insert = sqlx::query_as(sqlx::AssertSqlSafe(sql));
        for &i in &records {
            let DeliveryWrite::Record { id, project, event, headers, payload, outcome } = &batch[i].0 else {
                unreachable!("records only")
            };
            insert = insert
                .bind(id.as_str())
                .bind(project.as_str())
                .bind(event.as_str())
                .bind(now_ms())
                .bind(headers.as_str())
                .bind(payload.as_slice())
                .bind(outcome.as_deref());
        }
        let inserted: Vec<(String, String)> = insert.fetch_all(&mut *connection).await?;
        for &i in &records {
            let DeliveryWrite::Record { id, project, .. } = &batch[i].0 else { unreachable!("records only") };
            // The first record of a (project, id) in the batch is the one that was inserted.
            let first = records.iter().find(|&&j| {
                matches!(&batch[j].0, DeliveryWrite::Record { id: other, project: its, .. }
                        if other == id && its == project)
            });
            results[i] = inserted.iter().any(|(p, d)| p == project && d == id) && first == Some(&i);
        }
    }
    for (i, (write, _)) in batch.iter().enumerate() {
        if let DeliveryWrite::Outcome { project, id, outcome } = write {
            let updated = sqlx::query("UPDATE deliveries SET outcome = $1 WHERE project = $2 AND id = $3")
                .bind(outcome)
                .bind(project)
                .bind(id)
                .execute(&mut *connection)
                .await?;
            results[i] = updated.rows_affected() == 1;
        }
    }
    Ok(())
}

impl Store {
    /// Stores a delivery before it is acted on (or with its `outcome`, when there is nothing to
    /// do); false when its id was stored before (a redelivery).
    /// Returns once the delivery is committed.
    pub async fn record_delivery(
        &self,
        id: &str,
        project: &str,
        event: &str,
        headers: &str,
        payload: &[u8],
        outcome: Option<&serde_json::Value>,
    ) -> anyhow::Result<bool> {
        let write = DeliveryWrite::Record {
            id: id.to_string(),
            project: project.to_string(),
            event: event.to_string(),
            headers: headers.to_string(),
            payload: payload.to_vec(),
            outcome: outcome.map(ToString::to_string),
        };
        self.write_delivery(write).await
    }

    /// Records what was done with delivery `id` of `project`; returns once committed.
    pub async fn set_delivery_outcome(
        &self,
        project: &str,
        id: &str,
        outcome: &serde_json::Value,
    ) -> anyhow::Result<()> {
        let write =
            DeliveryWrite::Outcome { project: project.to_string(), id: id.to_string(), outcome: outcome.to_string() };
        self.write_delivery(write).await.map(drop)
    }

    async fn write_delivery(&self, write: DeliveryWrite) -> anyhow::Result<bool> {
        let (done, result) = oneshot::channel();
        self.delivery_writes.send((write, done)).await.map_err(|_| anyhow::anyhow!("the delivery writer stopped"))?;
        result.await.map_err(|_| anyhow::anyhow!("the delivery writer stopped"))?
    }

    /// Deliveries, newest first.
    pub async fn deliveries(&self, limit: i64) -> anyhow::Result<Vec<Delivery>> {
        let rows = sqlx::query(
            "SELECT id, project, event, received, outcome FROM deliveries ORDER BY received DESC, rowid DESC LIMIT $1",
        )
        .bind(limit.clamp(1, MAX_HISTORY))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(to_delivery).collect()
    }

    /// Delivery `id` of `project`, with its payload.
    pub async fn delivery(&self, project: &str, id: &str) -> anyhow::Result<Option<(Delivery, Vec<u8>)>> {
        let row = sqlx::query(
            "SELECT id, project, event, received, outcome, payload FROM deliveries WHERE project = $1 AND id = $2",
        )
        .bind(project)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| Ok((to_delivery(&row)?, row.try_get("payload")?))).transpose()
    }

    /// The projects that stored a delivery with this id (usually one).
    pub async fn projects_of_delivery(&self, id: &str) -> anyhow::Result<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT project FROM deliveries WHERE id = $1 ORDER BY project")
            .bind(id)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Deliveries stored but never acted on (the process died in between), oldest first, as
    /// (project, id).
    pub async fn unprocessed_deliveries(&self) -> anyhow::Result<Vec<(String, String)>> {
        Ok(sqlx::query_as("SELECT project, id FROM deliveries WHERE outcome IS NULL ORDER BY received, rowid")
            .fetch_all(&self.pool)
            .await?)
    }

    /// Forgets the deliveries acted on that were received before `before` (ms, when set) or
    /// are beyond the newest `max_count` (when set).
    pub(super) async fn prune_deliveries(&self, before: Option<i64>, max_count: Option<i64>) -> anyhow::Result<()> {
        sqlx::query(
            "DELETE FROM deliveries WHERE outcome IS NOT NULL
               AND (($1 IS NOT NULL AND received < $1)
                 OR ($2 IS NOT NULL AND rowid NOT IN
                       (SELECT rowid FROM deliveries WHERE outcome IS NOT NULL
                        ORDER BY received DESC, rowid DESC LIMIT $2)))",
        )
        .bind(before)
        .bind(max_count)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

fn to_delivery(row: &AnyRow) -> anyhow::Result<Delivery> {
    let outcome: Option<String> = row.try_get("outcome")?;
    Ok(Delivery {
        id: row.try_get("id")?,
        project: row.try_get("project")?,
        event: row.try_get("event")?,
        received: millis::from_ms(row.try_get("received")?),
        outcome: outcome.and_then(|o| serde_json::from_str(&o).ok()),
    })
}
