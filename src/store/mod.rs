//! Build history in SQLite under `data_dir`: every build and recipes reload, the webhook
//! deliveries and the commit status outbox, surviving restarts. One file per table; this one
//! opens the database and holds what they share.

mod builds;
mod deliveries;
mod migrate;
mod statuses;

use std::path::Path;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::mpsc;

pub use builds::HistoryFilter;
pub use deliveries::Delivery;
pub use statuses::OutboxStatus;

use crate::model::BuildId;

/// Most entries one history request returns.
pub const MAX_HISTORY: i64 = 1000;

#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
    /// Delivery writes, committed in batches by one task (group commit): webhook intake waits
    /// for its own commit, and many concurrent deliveries share one.
    delivery_writes: mpsc::Sender<deliveries::QueuedWrite>,
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
        migrate::migrate(&pool).await?;
        let delivery_writes = deliveries::start_writer(pool.clone());
        Ok(Self { pool, delivery_writes })
    }

    /// Answers whether the database responds.
    pub async fn ping(&self) -> anyhow::Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Forgets finished entries older than `max_age_ms` (when set) and beyond the newest
    /// `max_count` (when set), and so the stored deliveries acted on (with their bodies); returns
    /// the ids of the builds, so that their logs go too.
    pub async fn prune(&self, max_age_ms: Option<i64>, max_count: Option<i64>) -> anyhow::Result<Vec<BuildId>> {
        let before = max_age_ms.map(|age| now_ms() - age);
        let ids = self.prune_builds(before, max_count).await?;
        self.prune_deliveries(before, max_count).await?;
        Ok(ids)
    }
}

/// Now, in milliseconds since the epoch (how times are stored).
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Branch, BuildKind, BuildStatus, CommitSha, NewBuild, Outcome, RepoName};

    fn new_build(repo: &str, branch: &str) -> NewBuild {
        NewBuild {
            kind: BuildKind::Build,
            project: "p".into(),
            repository: RepoName::parse(repo).unwrap(),
            branch: Branch::parse(branch).unwrap(),
            commit: Some(CommitSha::parse(&"a".repeat(40)).unwrap()),
            script: "build.sh".into(),
            baseimage: None,
            message: None,
            author: None,
        }
    }

    #[tokio::test]
    async fn history_survives_reopening_and_filters() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let a = store.insert(&new_build("o/a", "master"), None).await.unwrap().id;
        let b = store.insert(&new_build("o/b", "dev"), None).await.unwrap().id;
        store.mark_running(a).await.unwrap();
        store.finish(a, &Outcome::failed(BuildStatus::Failure, "script exited 1"), None).await.unwrap();
        drop(store);

        let store = Store::open(dir.path()).await.unwrap();
        let all = store.history(&HistoryFilter::default()).await.unwrap();
        assert_eq!(all.iter().map(|b| b.id).collect::<Vec<_>>(), vec![b, a]);
        let failed =
            store.history(&HistoryFilter { status: Some(BuildStatus::Failure), ..Default::default() }).await.unwrap();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].outcome.error.as_deref(), Some("script exited 1"));
        assert!(failed[0].started.is_some() && failed[0].ended.is_some());
        let dev = store
            .history(&HistoryFilter { branch: Some("dev".into()), limit: Some(5), ..Default::default() })
            .await
            .unwrap();
        assert_eq!(dev[0].id, b);

        assert_eq!(store.active().await.unwrap().iter().map(|b| b.id).collect::<Vec<_>>(), vec![b]);
        assert_eq!(store.count_by_status().await.unwrap().len(), 2);
        let pruned = store.prune(None, Some(1)).await.unwrap();
        assert_eq!(pruned, vec![a], "only finished entries beyond the newest one go");
    }

    #[tokio::test]
    async fn an_unknown_kind_in_the_database_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let id = store.insert(&new_build("o/a", "master"), None).await.unwrap().id;
        sqlx::query("UPDATE builds SET kind = 'mystery' WHERE id = ?").bind(id).execute(&store.pool).await.unwrap();
        let error = store.get(id).await.unwrap_err();
        assert!(format!("{error:#}").contains("kind"), "{error:#}");
    }
}
