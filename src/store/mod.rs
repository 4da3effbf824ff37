//! Build history in SQLite under `data_dir`: every build and recipes reload, surviving restarts.

use std::path::Path;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqliteConnection};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use crate::model::{Build, BuildId, BuildKind, BuildStatus};

/// Schema changes, applied in order; `PRAGMA user_version` counts the applied ones.
const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE builds (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        project TEXT NOT NULL,
        repository TEXT NOT NULL,
        branch TEXT NOT NULL,
        commit_sha TEXT NOT NULL,
        script TEXT NOT NULL,
        baseimage TEXT,
        status TEXT NOT NULL,
        message TEXT,
        author TEXT,
        created INTEGER NOT NULL,
        started INTEGER,
        ended INTEGER,
        error TEXT,
        artifact TEXT,
        artifact_url TEXT,
        artifact_sha256 TEXT
    );
    CREATE INDEX builds_by_status ON builds(status);
    CREATE INDEX builds_by_branch ON builds(repository, branch, id);
",
    "
    ALTER TABLE builds ADD COLUMN settings TEXT;
    CREATE TABLE deliveries (
        id TEXT PRIMARY KEY,
        project TEXT NOT NULL,
        event TEXT NOT NULL,
        received INTEGER NOT NULL,
        headers TEXT NOT NULL,
        payload BLOB NOT NULL,
        outcome TEXT
    );
    CREATE INDEX deliveries_by_time ON deliveries(received);
",
    "ALTER TABLE builds ADD COLUMN outputs TEXT;",
    "
    CREATE TABLE statuses (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        repository TEXT NOT NULL,
        commit_sha TEXT NOT NULL,
        state TEXT NOT NULL,
        context TEXT NOT NULL,
        description TEXT NOT NULL,
        target_url TEXT NOT NULL,
        created INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt INTEGER NOT NULL,
        delivered INTEGER,
        last_error TEXT
    );
    CREATE INDEX statuses_undelivered ON statuses(delivered, id);
",
    // A delivery id is unique per project: another project's delivery with the same id is its own.
    "
    CREATE TABLE deliveries_by_project (
        id TEXT NOT NULL,
        project TEXT NOT NULL,
        event TEXT NOT NULL,
        received INTEGER NOT NULL,
        headers TEXT NOT NULL,
        payload BLOB NOT NULL,
        outcome TEXT,
        PRIMARY KEY (project, id)
    );
    INSERT INTO deliveries_by_project (id, project, event, received, headers, payload, outcome)
        SELECT id, project, event, received, headers, payload, outcome FROM deliveries ORDER BY rowid;
    DROP TABLE deliveries;
    ALTER TABLE deliveries_by_project RENAME TO deliveries;
    CREATE INDEX deliveries_by_time ON deliveries(received);
",
];

/// A commit status in the outbox.
#[derive(Debug, Clone)]
pub struct OutboxStatus {
    pub id: i64,
    pub repository: String,
    pub commit: String,
    /// `pending`, `success`, `failure` or `error`, as GitHub names them.
    pub state: String,
    pub context: String,
    pub description: String,
    pub target_url: String,
    pub attempts: i64,
    /// When it may be tried (ms since the epoch).
    pub next_attempt: i64,
}

/// Most entries one history request returns.
pub const MAX_HISTORY: i64 = 1000;

/// What is known of a build when it is queued.
#[derive(Debug, Clone)]
pub struct NewBuild {
    pub kind: BuildKind,
    pub project: String,
    pub repository: String,
    pub branch: String,
    pub commit: String,
    pub script: String,
    pub baseimage: Option<String>,
    pub message: Option<String>,
    pub author: Option<String>,
    /// The build script's recipe settings (JSON), so the build can run after a restart.
    pub settings: Option<String>,
}

/// A webhook delivery as stored, without its payload.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Delivery {
    pub id: String,
    pub project: String,
    pub event: String,
    pub received: String,
    /// What was done with it (JSON: the answer's message and build ids); null until processed.
    pub outcome: Option<serde_json::Value>,
}

/// How a build ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: BuildStatus,
    pub error: Option<String>,
    pub artifact: Option<String>,
    pub artifact_url: Option<String>,
    pub artifact_sha256: Option<String>,
    /// Extra outputs published (JSON list of name, url, sha256).
    pub outputs: Option<String>,
}

impl Outcome {
    pub fn failed(status: BuildStatus, error: impl Into<String>) -> Self {
        Self {
            status,
            error: Some(error.into()),
            artifact: None,
            artifact_url: None,
            artifact_sha256: None,
            outputs: None,
        }
    }
}

/// Filters of `GET /build/history`.
#[derive(Debug, Clone, Default)]
pub struct HistoryFilter {
    pub limit: Option<i64>,
    pub repository: Option<String>,
    pub branch: Option<String>,
    pub status: Option<BuildStatus>,
}

#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
    /// Delivery writes, committed in batches by one task (group commit): webhook intake waits
    /// for its own commit, and many concurrent deliveries share one.
    delivery_writes: mpsc::Sender<(DeliveryWrite, oneshot::Sender<anyhow::Result<bool>>)>,
}

/// Most delivery writes committed in one transaction.
const MAX_BATCH: usize = 256;

enum DeliveryWrite {
    Record { id: String, project: String, event: String, headers: String, payload: Vec<u8>, outcome: Option<String> },
    Outcome { project: String, id: String, outcome: String },
}

/// Commits delivery writes in batches: whatever queued up while the previous batch committed.
async fn write_deliveries(
    pool: SqlitePool,
    mut writes: mpsc::Receiver<(DeliveryWrite, oneshot::Sender<anyhow::Result<bool>>)>,
) {
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
    /// Opens (creating when missing) `<data_dir>/autobuilder.sqlite` and brings its schema up to date.
    pub async fn open(data_dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create data_dir {}", data_dir.display()))?;
        let path = data_dir.join("autobuilder.sqlite");
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // With WAL, NORMAL survives a crash of the process (what a stored delivery needs);
            // only a power loss can take the last commits.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .with_context(|| format!("cannot open the history database {}", path.display()))?;
        let mut conn = pool.acquire().await?;
        migrate(&mut conn).await?;
        let (delivery_writes, queue) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(write_deliveries(pool.clone(), queue));
        Ok(Self { pool, delivery_writes })
    }

    /// Records a queued build; returns its record.
    pub async fn insert(&self, build: &NewBuild) -> anyhow::Result<Build> {
        let row = sqlx::query(
            "INSERT INTO builds (kind, project, repository, branch, commit_sha, script, baseimage, status,
                                 message, author, settings, created)
             VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?) RETURNING *",
        )
        .bind(build.kind.as_str())
        .bind(&build.project)
        .bind(&build.repository)
        .bind(&build.branch)
        .bind(&build.commit)
        .bind(&build.script)
        .bind(&build.baseimage)
        .bind(&build.message)
        .bind(&build.author)
        .bind(&build.settings)
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await?;
        to_build(&row)
    }

    /// Marks a build running; returns its record.
    pub async fn mark_running(&self, id: BuildId) -> anyhow::Result<Build> {
        let row = sqlx::query("UPDATE builds SET status = 'running', started = ? WHERE id = ? RETURNING *")
            .bind(now_ms())
            .bind(id.0)
            .fetch_one(&self.pool)
            .await?;
        to_build(&row)
    }

    /// Records how a build ended; returns its record.
    /// Records how a build ended and, in the same transaction, queues its final commit status (so
    /// a crash cannot keep the one without the other); returns its record.
    pub async fn finish(&self, id: BuildId, outcome: &Outcome, status: Option<&OutboxStatus>) -> anyhow::Result<Build> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "UPDATE builds SET status = ?, ended = ?, error = ?, artifact = ?, artifact_url = ?, artifact_sha256 = ?, outputs = ?,
                               started = COALESCE(started, ?)
             WHERE id = ? RETURNING *",
        )
        .bind(outcome.status.as_str())
        .bind(now_ms())
        .bind(&outcome.error)
        .bind(&outcome.artifact)
        .bind(&outcome.artifact_url)
        .bind(&outcome.artifact_sha256)
        .bind(&outcome.outputs)
        .bind(now_ms())
        .bind(id.0)
        .fetch_one(&mut *tx)
        .await?;
        if let Some(status) = status {
            insert_status(&mut tx, status).await?;
        }
        tx.commit().await?;
        to_build(&row)
    }

    pub async fn get(&self, id: BuildId) -> anyhow::Result<Option<Build>> {
        let row = sqlx::query("SELECT * FROM builds WHERE id = ?").bind(id.0).fetch_optional(&self.pool).await?;
        row.map(|r| to_build(&r)).transpose()
    }

    /// Builds queued or running, oldest first.
    pub async fn active(&self) -> anyhow::Result<Vec<Build>> {
        let rows = sqlx::query("SELECT * FROM builds WHERE status IN ('queued', 'running') ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(to_build).collect()
    }

    /// History entries, newest first.
    pub async fn history(&self, filter: &HistoryFilter) -> anyhow::Result<Vec<Build>> {
        let rows = sqlx::query(
            "SELECT * FROM builds
             WHERE (?1 IS NULL OR repository = ?1) AND (?2 IS NULL OR branch = ?2) AND (?3 IS NULL OR status = ?3)
             ORDER BY id DESC LIMIT ?4",
        )
        .bind(&filter.repository)
        .bind(&filter.branch)
        .bind(filter.status.map(BuildStatus::as_str))
        .bind(filter.limit.unwrap_or(25).clamp(1, MAX_HISTORY))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(to_build).collect()
    }

    /// The recipe settings (JSON) stored with a build when it was queued.
    pub async fn settings(&self, id: BuildId) -> anyhow::Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT settings FROM builds WHERE id = ?")
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?
            .flatten())
    }

    /// How many builds (not reloads) are in each status.
    pub async fn count_by_status(&self) -> anyhow::Result<Vec<(BuildStatus, i64)>> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, COUNT(*) FROM builds WHERE kind = 'build' GROUP BY status")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().filter_map(|(status, n)| Some((BuildStatus::parse(&status)?, n))).collect())
    }

    /// Forgets finished entries older than `max_age_ms` (when set) and beyond the newest
    /// `max_count` (when set), and so the stored deliveries acted on (with their bodies); returns
    /// the ids of the builds, so that their logs go too.
    pub async fn prune(&self, max_age_ms: Option<i64>, max_count: Option<i64>) -> anyhow::Result<Vec<BuildId>> {
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM builds WHERE status NOT IN ('queued', 'running')
               AND ((?1 IS NOT NULL AND created < ?1)
                 OR (?2 IS NOT NULL AND id NOT IN (SELECT id FROM builds ORDER BY id DESC LIMIT ?2)))",
        )
        .bind(max_age_ms.map(|age| now_ms() - age))
        .bind(max_count)
        .fetch_all(&self.pool)
        .await?;
        for chunk in ids.chunks(500) {
            let list = chunk.iter().map(|id| id.to_string()).collect::<Vec<_>>().join(",");
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DELETE FROM builds WHERE id IN ({list})")))
                .execute(&self.pool)
                .await?;
        }
        sqlx::query(
            "DELETE FROM deliveries WHERE outcome IS NOT NULL
               AND ((?1 IS NOT NULL AND received < ?1)
                 OR (?2 IS NOT NULL AND rowid NOT IN
                       (SELECT rowid FROM deliveries WHERE outcome IS NOT NULL
                        ORDER BY received DESC, rowid DESC LIMIT ?2)))",
        )
        .bind(max_age_ms.map(|age| now_ms() - age))
        .bind(max_count)
        .execute(&self.pool)
        .await?;
        Ok(ids.into_iter().map(BuildId).collect())
    }

    /// Puts a commit status in the outbox; it stays there until delivered.
    pub async fn queue_status(&self, status: &OutboxStatus) -> anyhow::Result<()> {
        let mut connection = self.pool.acquire().await?;
        insert_status(&mut connection, status).await
    }

    /// The oldest status not delivered yet (they go out in order).
    pub async fn next_status(&self) -> anyhow::Result<Option<OutboxStatus>> {
        let row = sqlx::query("SELECT * FROM statuses WHERE delivered IS NULL ORDER BY id LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            Ok(OutboxStatus {
                id: row.try_get("id")?,
                repository: row.try_get("repository")?,
                commit: row.try_get("commit_sha")?,
                state: row.try_get("state")?,
                context: row.try_get("context")?,
                description: row.try_get("description")?,
                target_url: row.try_get("target_url")?,
                attempts: row.try_get("attempts")?,
                next_attempt: row.try_get("next_attempt")?,
            })
        })
        .transpose()
    }

    /// Marks a status delivered, or (with `error`) given up on for good.
    pub async fn status_done(&self, id: i64, error: Option<&str>) -> anyhow::Result<()> {
        sqlx::query("UPDATE statuses SET delivered = ?, last_error = ? WHERE id = ?")
            .bind(now_ms())
            .bind(error)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records a failed attempt; the status is tried again after `delay_ms`.
    pub async fn status_retry(&self, id: i64, delay_ms: i64, error: &str) -> anyhow::Result<()> {
        sqlx::query("UPDATE statuses SET attempts = attempts + 1, next_attempt = ?, last_error = ? WHERE id = ?")
            .bind(now_ms() + delay_ms)
            .bind(error)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Answers whether the database responds.
    pub async fn ping(&self) -> anyhow::Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

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
}

fn to_delivery(row: &SqliteRow) -> anyhow::Result<Delivery> {
    let outcome: Option<String> = row.try_get("outcome")?;
    Ok(Delivery {
        id: row.try_get("id")?,
        project: row.try_get("project")?,
        event: row.try_get("event")?,
        received: format_ms(row.try_get("received")?),
        outcome: outcome.and_then(|o| serde_json::from_str(&o).ok()),
    })
}

async fn insert_status(connection: &mut SqliteConnection, status: &OutboxStatus) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO statuses (repository, commit_sha, state, context, description, target_url, created, next_attempt)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&status.repository)
    .bind(&status.commit)
    .bind(&status.state)
    .bind(&status.context)
    .bind(&status.description)
    .bind(&status.target_url)
    .bind(now_ms())
    .bind(now_ms())
    .execute(&mut *connection)
    .await?;
    Ok(())
}

async fn migrate(conn: &mut SqliteConnection) -> anyhow::Result<()> {
    let applied: i64 = sqlx::query_scalar("PRAGMA user_version").fetch_one(&mut *conn).await?;
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
        // One transaction per step: a step is applied whole, with its number, or not at all.
        let step =
            format!("BEGIN; {}; PRAGMA user_version = {}; COMMIT;", migration.trim().trim_end_matches(';'), index + 1);
        if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(step)).execute(&mut *conn).await {
            let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
            return Err(anyhow::Error::from(e).context(format!("database migration {} failed", index + 1)));
        }
    }
    Ok(())
}

fn to_build(row: &SqliteRow) -> anyhow::Result<Build> {
    let status: String = row.try_get("status")?;
    let kind: String = row.try_get("kind")?;
    Ok(Build {
        id: BuildId(row.try_get("id")?),
        kind: if kind == "reload" { BuildKind::Reload } else { BuildKind::Build },
        project: row.try_get("project")?,
        repository: row.try_get("repository")?,
        branch: row.try_get("branch")?,
        commit: row.try_get("commit_sha")?,
        script: row.try_get("script")?,
        baseimage: row.try_get("baseimage")?,
        status: BuildStatus::parse(&status).with_context(|| format!("unknown status {status:?} in the database"))?,
        message: row.try_get("message")?,
        author: row.try_get("author")?,
        created: format_ms(row.try_get("created")?),
        started: row.try_get::<Option<i64>, _>("started")?.map(format_ms),
        ended: row.try_get::<Option<i64>, _>("ended")?.map(format_ms),
        error: row.try_get("error")?,
        artifact: row.try_get("artifact")?,
        artifact_url: row.try_get("artifact_url")?,
        artifact_sha256: row.try_get("artifact_sha256")?,
        outputs: row.try_get::<Option<String>, _>("outputs")?.and_then(|o| serde_json::from_str(&o).ok()),
    })
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// RFC 3339 in UTC with exactly three fraction digits, so that times sort as text too.
fn format_ms(ms: i64) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| t.format(FORMAT).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_build(repo: &str, branch: &str) -> NewBuild {
        NewBuild {
            kind: BuildKind::Build,
            project: "p".into(),
            repository: repo.into(),
            branch: branch.into(),
            commit: "a".repeat(40),
            script: "build.sh".into(),
            baseimage: None,
            message: None,
            author: None,
            settings: None,
        }
    }

    #[tokio::test]
    async fn history_survives_reopening_and_filters() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let a = store.insert(&new_build("o/a", "master")).await.unwrap().id;
        let b = store.insert(&new_build("o/b", "dev")).await.unwrap().id;
        store.mark_running(a).await.unwrap();
        store.finish(a, &Outcome::failed(BuildStatus::Failure, "script exited 1"), None).await.unwrap();
        drop(store);

        let store = Store::open(dir.path()).await.unwrap();
        let all = store.history(&HistoryFilter::default()).await.unwrap();
        assert_eq!(all.iter().map(|b| b.id).collect::<Vec<_>>(), vec![b, a]);
        let failed =
            store.history(&HistoryFilter { status: Some(BuildStatus::Failure), ..Default::default() }).await.unwrap();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].error.as_deref(), Some("script exited 1"));
        assert!(failed[0].started.is_some() && failed[0].ended.is_some());
        let dev = store
            .history(&HistoryFilter { branch: Some("dev".into()), limit: Some(5), ..Default::default() })
            .await
            .unwrap();
        assert_eq!(dev[0].id, b);

        assert_eq!(store.active().await.unwrap().iter().map(|b| b.id).collect::<Vec<_>>(), vec![b]);
        let pruned = store.prune(None, Some(1)).await.unwrap();
        assert_eq!(pruned, vec![a], "only finished entries beyond the newest one go");
    }

    #[test]
    fn times_have_a_fixed_width() {
        assert_eq!(format_ms(1_700_000_000_100), "2023-11-14T22:13:20.100Z");
        assert_eq!(format_ms(1_700_000_000_000), "2023-11-14T22:13:20.000Z");
    }

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
    async fn a_database_of_the_previous_version_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("autobuilder.sqlite");
        {
            // The schema as the previous release left it (user_version 4), with a delivery.
            let options = SqliteConnectOptions::from_str("sqlite:").unwrap().filename(&path).create_if_missing(true);
            let mut conn = sqlx::ConnectOptions::connect(&options).await.unwrap();
            for migration in &MIGRATIONS[..4] {
                sqlx::raw_sql(sqlx::AssertSqlSafe(*migration)).execute(&mut conn).await.unwrap();
            }
            sqlx::raw_sql("PRAGMA user_version = 4").execute(&mut conn).await.unwrap();
            sqlx::raw_sql(
                "INSERT INTO deliveries (id, project, event, received, headers, payload, outcome)
                 VALUES ('old', 'p', 'push', 1, '{}', x'6f6c64', '{\"status\":202}')",
            )
            .execute(&mut conn)
            .await
            .unwrap();
        }
        let store = Store::open(dir.path()).await.unwrap();
        let (old, payload) = store.delivery("p", "old").await.unwrap().unwrap();
        assert_eq!((old.event.as_str(), payload.as_slice()), ("push", b"old".as_slice()));
        assert!(!store.record_delivery("old", "p", "push", "{}", b"x", None).await.unwrap(), "still a redelivery");
        assert!(store.record_delivery("old", "q", "push", "{}", b"x", None).await.unwrap(), "new for another project");
        let version: i64 = sqlx::query_scalar("PRAGMA user_version").fetch_one(&store.pool).await.unwrap();
        assert_eq!(version as usize, MIGRATIONS.len());
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
