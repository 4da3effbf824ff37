//! Build history: every build and recipes reload, the webhook deliveries and the commit status
//! outbox, surviving restarts. In SQLite under `data_dir` by default, or in PostgreSQL
//! (`[database] url`), through one query layer (sqlx's `Any`: the same SQL, `$N` placeholders, on
//! both). One file per table; this one opens the database and holds what they share.

mod builds;
mod claims;
mod deliveries;
mod images;
mod leases;
mod log_chunks;
mod migrate;
mod notify;
mod statuses;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use sqlx::any::AnyPoolOptions;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AnyPool, ConnectOptions, Executor};
use tokio::sync::mpsc;

pub use builds::HistoryFilter;
pub use deliveries::Delivery;
pub use images::{ImageHolder, ImageKey, ImageRecord};
pub use leases::{Claim, Holder, Lease, Renewal};
pub use log_chunks::LogPart;
pub use notify::{Listener, QUEUE_CHANNEL, RECIPES_CHANNEL};
pub use statuses::OutboxStatus;
pub use statuses::PosterTurn;

use crate::model::BuildId;

/// Most entries one history request returns.
pub const MAX_HISTORY: i64 = 1000;

/// Which database holds the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// The PostgreSQL URL, for the connections of [`Listener`]s.
    url: Option<String>,
    /// What this process claimed ([`Store::claim`]) and the connection holding those locks.
    claims: Arc<Mutex<claims::Held>>,
    /// Delivery writes, committed in batches by one task (group commit): webhook intake waits
    /// for its own commit, and many concurrent deliveries share one.
    delivery_writes: mpsc::Sender<deliveries::QueuedWrite>,
}

impl Store {
    /// Opens the history `[database] url` names: empty, SQLite in `<data_dir>/autobuilder.sqlite`;
    /// `postgres://...`, that PostgreSQL database.
    pub async fn connect(url: &str, data_dir: &Path) -> anyhow::Result<Self> {
        if url.is_empty() { Self::open(data_dir).await } else { Self::open_postgres(url).await }
    }

    /// Opens (creating when missing) `<data_dir>/autobuilder.sqlite` and brings its schema up to date.
    pub async fn open(data_dir: &Path) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create data_dir {}", data_dir.display()))?;
        let path = std::fs::canonicalize(data_dir)
            .with_context(|| format!("cannot open data_dir {}", data_dir.display()))?
            .join("autobuilder.sqlite");
        let options = SqliteConnectOptions::new().filename(&path).create_if_missing(true);
        // A database of the hand-written schema runner of older releases is brought up to the
        // baseline first, on a connection of its own.
        migrate::bridge_legacy_sqlite(&options).await?;
        let url = options.to_url_lossy();
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            // A file on this host needs no ping before each use: a round trip to the connection's
            // thread per query saved (docs/benchmarks.md, "Intake").
            .test_before_acquire(false)
            .after_connect(|connection, _| {
                Box::pin(async move {
                    // With WAL, NORMAL survives a crash of the process (what a stored delivery
                    // needs); only a power loss can take the last commits.
                    connection
                        .execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 10000;")
                        .await?;
                    Ok(())
                })
            })
            .connect(url.as_str())
            .await
            .with_context(|| format!("cannot open the history database {}", path.display()))?;
        Self::start(pool, Backend::Sqlite, None).await
    }

    /// Connects to the PostgreSQL database at `url` and brings its schema up to date.
    pub async fn open_postgres(url: &str) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            // Each use pings first (a round trip): after PostgreSQL restarts, a connection of the
            // pool is found dead before a query is lost on it. The delivery writer keeps its own
            // connection between batches instead (`deliveries::PING_AFTER_IDLE`).
            .test_before_acquire(true)
            // A query waits this long for a connection while PostgreSQL restarts, then fails
            // (a webhook is then refused in time for GitHub to deliver it again).
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .with_context(|| {
                format!("cannot connect to the history database {}: is PostgreSQL running there?", redact(url))
            })?;
        Self::start(pool, Backend::Postgres, Some(url.to_string())).await
    }

    async fn start(pool: AnyPool, backend: Backend, url: Option<String>) -> anyhow::Result<Self> {
        migrate::migrate(&pool, backend).await?;
        let delivery_writes = deliveries::start_writer(pool.clone());
        Ok(Self { pool, backend, url, claims: Arc::default(), delivery_writes })
    }

    /// Which database holds the history.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Answers whether the database responds, within 2 s (a readiness probe must not wait for
    /// the pool's own timeout).
    pub async fn ping(&self) -> anyhow::Result<()> {
        tokio::time::timeout(Duration::from_secs(2), sqlx::query("SELECT 1").execute(&self.pool))
            .await
            .map_err(|_| anyhow::anyhow!("the database did not answer within 2 s"))??;
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

/// A database URL without its password, for messages.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "(an unparsable URL)".into(),
    }
}

/// Now, in milliseconds since the epoch (how times are stored).
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Branch, BuildKind, CommitSha, NewBuild, RepoName};

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
    async fn an_unknown_kind_in_the_database_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let id = store.insert(&new_build("o/a", "master"), None).await.unwrap().id;
        sqlx::query("UPDATE builds SET kind = 'mystery' WHERE id = $1").bind(id).execute(&store.pool).await.unwrap();
        let error = store.get(id).await.unwrap_err();
        assert!(format!("{error:#}").contains("kind"), "{error:#}");
    }
}
