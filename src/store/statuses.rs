//! The `statuses` table: the outbox of commit statuses, posted to GitHub in order until delivered.

use sqlx::{AnyConnection, Connection};

use super::{Backend, Store, now_ms};

/// The key of the advisory lock of the one process posting the outbox ("autopost" in ASCII).
const POSTER_LOCK: i64 = 0x6175_746f_706f_7374;

/// One process's turn to post the outbox, so that statuses go out once and in order when several
/// `serve`s share a PostgreSQL history: an advisory lock held by a connection of its own. On
/// SQLite, one process: always its turn.
pub struct PosterTurn(Option<AnyConnection>);

impl PosterTurn {
    /// Whether the turn is still this process's (the connection holding it answers).
    pub async fn held(&mut self) -> bool {
        match &mut self.0 {
            None => true,
            Some(connection) => connection.ping().await.is_ok(),
        }
    }
}
use crate::model::{CommitSha, CommitState, RepoName};

/// A commit status in the outbox.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxStatus {
    pub id: i64,
    pub repository: RepoName,
    #[sqlx(rename = "commit_sha")]
    pub commit: CommitSha,
    pub state: CommitState,
    pub context: String,
    pub description: String,
    pub target_url: String,
    pub attempts: i64,
    /// When it may be tried (ms since the epoch).
    pub next_attempt: i64,
}

impl Store {
    /// Takes the turn to post the outbox, or None while another process has it.
    pub async fn take_poster_turn(&self) -> anyhow::Result<Option<PosterTurn>> {
        if self.backend != Backend::Postgres {
            return Ok(Some(PosterTurn(None)));
        }
        Ok(self.session_lock(POSTER_LOCK).await?.map(|connection| PosterTurn(Some(connection))))
    }

    /// Puts a commit status in the outbox; it stays there until delivered.
    pub async fn queue_status(&self, status: &OutboxStatus) -> anyhow::Result<()> {
        let mut connection = self.pool.acquire().await?;
        insert_status(&mut connection, status).await
    }

    /// The oldest status not delivered yet (they go out in order).
    pub async fn next_status(&self) -> anyhow::Result<Option<OutboxStatus>> {
        Ok(sqlx::query_as("SELECT * FROM statuses WHERE delivered IS NULL ORDER BY id LIMIT 1")
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Marks a status delivered, or (with `error`) given up on for good.
    pub async fn status_done(&self, id: i64, error: Option<&str>) -> anyhow::Result<()> {
        sqlx::query("UPDATE statuses SET delivered = $1, last_error = $2 WHERE id = $3")
            .bind(now_ms())
            .bind(error)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records a failed attempt; the status is tried again after `delay_ms`.
    pub async fn status_retry(&self, id: i64, delay_ms: i64, error: &str) -> anyhow::Result<()> {
        sqlx::query("UPDATE statuses SET attempts = attempts + 1, next_attempt = $1, last_error = $2 WHERE id = $3")
            .bind(now_ms() + delay_ms)
            .bind(error)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

pub(super) async fn insert_status(connection: &mut AnyConnection, status: &OutboxStatus) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO statuses (repository, commit_sha, state, context, description, target_url, created, next_attempt)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&status.repository)
    .bind(&status.commit)
    .bind(status.state)
    .bind(&status.context)
    .bind(&status.description)
    .bind(&status.target_url)
    .bind(now_ms())
    .bind(now_ms())
    .execute(&mut *connection)
    .await?;
    Ok(())
}
