//! The `deliveries` table: every verified webhook delivery, stored before it is acted on, written
//! in batches by one task.

use sqlx::Row;
use sqlx::sqlite::{SqlitePool, SqliteRow};
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
pub(super) fn start_writer(pool: SqlitePool) -> mpsc::Sender<QueuedWrite> {
    let (writes, queue) = mpsc::channel(4 * MAX_BATCH);
    tokio::spawn(write_deliveries(pool, queue));
    writes
}

/// Most delivery writes committed in one transaction.
const MAX_BATCH: usize = 256;

pub(super) enum DeliveryWrite {
    Record { id: String, project: String, event: String, headers: String, payload: Vec<u8>, outcome: Option<String> },
    Outcome { project: String, id: String, outcome: String },
}

/// Commits delivery writes in batches: whatever queued up while the previous batch committed.
async fn write_deliveries(pool: SqlitePool, mut writes: mpsc::Receiver<QueuedWrite>) {
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
            let mut tx = pool.begin().await?;
            // Records go in one statement (the common case: many deliveries at once), then
            // outcomes one by one. A record whose id is stored already inserts nothing.
            let records: Vec<usize> =
                (0..batch.len()).filter(|&i| matches!(batch[i].0, DeliveryWrite::Record { .. })).collect();
            if !records.is_empty() {
                let mut insert = sqlx::QueryBuilder::new(
                    "INSERT INTO deliveries (id, project, event, received, headers, payload, outcome) ",
                );
                insert.push_values(&records, |mut row, &i| {
                    let DeliveryWrite::Record { id, project, event, headers, payload, outcome } = &batch[i].0 else {
                        unreachable!("records only")
                    };
                    row.push_bind(id)
                        .push_bind(project)
                        .push_bind(event)
                        .push_bind(now_ms())
                        .push_bind(headers)
                        .push_bind(payload)
                        .push_bind(outcome);
                });
                insert.push(" ON CONFLICT(project, id) DO NOTHING RETURNING project, id");
                let inserted: Vec<(String, String)> = insert.build_query_as().fetch_all(&mut *tx).await?;
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
                    let updated = sqlx::query("UPDATE deliveries SET outcome = ? WHERE project = ? AND id = ?")
                        .bind(outcome)
                        .bind(project)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    results[i] = updated.rows_affected() == 1;
                }
            }
            tx.commit().await?;
            Ok::<(), sqlx::Error>(())
        }
        .await;
        for (index, (_, done)) in batch.into_iter().enumerate() {
            let result = match &committed {
                Ok(()) => Ok(results[index]),
                Err(e) => Err(anyhow::anyhow!("cannot store the delivery: {e}")),
            };
            let _ = done.send(result);
        }
    }
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
            "SELECT id, project, event, received, outcome FROM deliveries ORDER BY received DESC, rowid DESC LIMIT ?",
        )
        .bind(limit.clamp(1, MAX_HISTORY))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(to_delivery).collect()
    }

    /// Delivery `id` of `project`, with its payload.
    pub async fn delivery(&self, project: &str, id: &str) -> anyhow::Result<Option<(Delivery, Vec<u8>)>> {
        let row = sqlx::query(
            "SELECT id, project, event, received, outcome, payload FROM deliveries WHERE project = ? AND id = ?",
        )
        .bind(project)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| Ok((to_delivery(&row)?, row.try_get("payload")?))).transpose()
    }

    /// The projects that stored a delivery with this id (usually one).
    pub async fn projects_of_delivery(&self, id: &str) -> anyhow::Result<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT project FROM deliveries WHERE id = ? ORDER BY project")
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
               AND ((?1 IS NOT NULL AND received < ?1)
                 OR (?2 IS NOT NULL AND rowid NOT IN
                       (SELECT rowid FROM deliveries WHERE outcome IS NOT NULL
                        ORDER BY received DESC, rowid DESC LIMIT ?2)))",
        )
        .bind(before)
        .bind(max_count)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

fn to_delivery(row: &SqliteRow) -> anyhow::Result<Delivery> {
    let outcome: Option<String> = row.try_get("outcome")?;
    Ok(Delivery {
        id: row.try_get("id")?,
        project: row.try_get("project")?,
        event: row.try_get("event")?,
        received: millis::from_ms(row.try_get("received")?),
        outcome: outcome.and_then(|o| serde_json::from_str(&o).ok()),
    })
}

#[cfg(test)]
mod tests {
    use super::super::Store;

    #[tokio::test(flavor = "multi_thread")]
    async fn concurrent_copies_of_a_delivery_store_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let copies: Vec<_> = (0..50)
            .map(|i| {
                let store = store.clone();
                let id = if i % 2 == 0 { "same".to_string() } else { format!("other-{i}") };
                tokio::spawn(async move {
                    (id.clone(), store.record_delivery(&id, "p", "push", "{}", b"x", None).await.unwrap())
                })
            })
            .collect();
        let mut stored_same = 0;
        for copy in copies {
            let (id, new) = copy.await.unwrap();
            if id == "same" {
                stored_same += usize::from(new);
            } else {
                assert!(new, "{id} is new");
            }
        }
        assert_eq!(stored_same, 1, "exactly one copy is new");
        assert_eq!(store.deliveries(100).await.unwrap().len(), 26);
    }

    #[tokio::test]
    async fn deliveries_are_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        assert!(store.record_delivery("d1", "p", "push", "{}", b"payload", None).await.unwrap());
        assert!(!store.record_delivery("d1", "p", "push", "{}", b"other", None).await.unwrap());
        assert_eq!(store.unprocessed_deliveries().await.unwrap(), vec![("p".to_string(), "d1".to_string())]);
        store.set_delivery_outcome("p", "d1", &serde_json::json!({"message": "done"})).await.unwrap();
        assert!(store.unprocessed_deliveries().await.unwrap().is_empty());
        let (delivery, payload) = store.delivery("p", "d1").await.unwrap().unwrap();
        assert_eq!(
            (delivery.outcome.unwrap()["message"].as_str(), payload.as_slice()),
            (Some("done"), b"payload".as_slice())
        );
    }

    #[tokio::test]
    async fn a_delivery_id_is_unique_per_project_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        // Another project's delivery (say, one an attacker with that project's secret sent first)
        // does not make this project's delivery with the same id a redelivery.
        assert!(store.record_delivery("d1", "evil", "push", "{}", b"evil", None).await.unwrap());
        assert!(store.record_delivery("d1", "p", "push", "{}", b"real", None).await.unwrap());
        assert!(!store.record_delivery("d1", "p", "push", "{}", b"again", None).await.unwrap());
        store.set_delivery_outcome("p", "d1", &serde_json::json!({"message": "built"})).await.unwrap();
        let (evil, payload) = store.delivery("evil", "d1").await.unwrap().unwrap();
        assert_eq!((evil.outcome, payload.as_slice()), (None, b"evil".as_slice()));
        assert_eq!(store.delivery("p", "d1").await.unwrap().unwrap().1, b"real");
        assert_eq!(store.projects_of_delivery("d1").await.unwrap(), vec!["evil", "p"]);
    }

    #[tokio::test]
    async fn stored_deliveries_follow_retention() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let done = serde_json::json!({"status": 200});
        for i in 0..5 {
            store.record_delivery(&format!("d{i}"), "p", "push", "{}", b"body", Some(&done)).await.unwrap();
        }
        store.record_delivery("waiting", "p", "push", "{}", b"body", None).await.unwrap();
        store.prune(None, Some(2)).await.unwrap();
        let kept: Vec<String> = store.deliveries(100).await.unwrap().into_iter().map(|d| d.id).collect();
        // The two newest are kept, and the one never acted on (it is acted on at the next start).
        assert_eq!(kept, vec!["waiting", "d4", "d3"]);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        store.prune(Some(1), None).await.unwrap();
        let kept: Vec<String> = store.deliveries(100).await.unwrap().into_iter().map(|d| d.id).collect();
        assert_eq!(kept, vec!["waiting"]);
    }
}
