//! The schema: `migrations/<backend>/*.sql` run by `sqlx::migrate!` (the same migrations, numbered
//! alike, in SQLite's and PostgreSQL's words), and the bridge from the hand-written runner that
//! counted its steps in `PRAGMA user_version` (releases before the sqlx migrations).

use anyhow::{Context, bail};
use sqlx::migrate::{Migrate, Migrator};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AnyPool, ConnectOptions, Connection, SqliteConnection};

use super::Backend;

/// The migrations of `migrations/sqlite/`, the first being the schema of the last hand-written step.
pub(super) static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

/// The same migrations for PostgreSQL.
pub(super) static POSTGRES_MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

/// Brings the schema up to date: every migration not applied yet runs (on PostgreSQL under
/// sqlx's advisory lock, so that several processes starting at once migrate once).
pub(super) async fn migrate(pool: &AnyPool, backend: Backend) -> anyhow::Result<()> {
    let migrator = match backend {
        Backend::Sqlite => &SQLITE_MIGRATOR,
        Backend::Postgres => &POSTGRES_MIGRATOR,
    };
    migrator.run(pool).await.context("database migration failed")?;
    Ok(())
}

/// A database of the hand-written runner takes its remaining steps and has the baseline recorded
/// as applied, on a connection of its own (PRAGMAs and sqlx's bookkeeping of SQLite itself).
pub(super) async fn bridge_legacy_sqlite(options: &SqliteConnectOptions) -> anyhow::Result<()> {
    let mut conn = options.connect().await.context("cannot open the history database")?;
    bridge(&mut conn).await?;
    conn.close().await?;
    Ok(())
}

/// Steps of the hand-written runner, applied in order; `PRAGMA user_version` counted the applied
/// ones. `migrations/0001_baseline.sql` is where they end. Never change them: a database of an
/// older release replays the ones it misses.
const LEGACY: &[&str] = &[
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
/// Makes a database of the hand-written runner (user_version 1 to 5, no sqlx table) one that
/// `SQLITE_MIGRATOR` knows: the missing steps, then the baseline recorded with sqlx's own checksum.
async fn bridge(conn: &mut SqliteConnection) -> anyhow::Result<()> {
    let applied: i64 = sqlx::query_scalar("PRAGMA user_version").fetch_one(&mut *conn).await?;
    let tracked: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?)")
            .bind(SQLITE_MIGRATOR.table_name.as_ref())
            .fetch_one(&mut *conn)
            .await?;
    if applied == 0 || tracked {
        return Ok(());
    }
    if applied as usize > LEGACY.len() {
        bail!(
            "the history database is at schema version {applied}, newer than this autobuilder knows \
             ({}): run a newer autobuilder, or move the database away to start a new history",
            LEGACY.len()
        );
    }
    legacy_steps(conn, applied as usize, LEGACY.len()).await?;
    let baseline = SQLITE_MIGRATOR.iter().next().expect("migrations/ holds the baseline");
    conn.ensure_migrations_table(&SQLITE_MIGRATOR.table_name).await?;
    conn.skip(&SQLITE_MIGRATOR.table_name, baseline).await.context("cannot record the baseline migration")?;
    Ok(())
}

/// Applies the hand-written steps `from + 1` to `to`, each with its number.
async fn legacy_steps(conn: &mut SqliteConnection, from: usize, to: usize) -> anyhow::Result<()> {
    for (index, step) in LEGACY.iter().enumerate().take(to).skip(from) {
        // One transaction per step: a step is applied whole, with its number, or not at all.
        let step =
            format!("BEGIN; {}; PRAGMA user_version = {}; COMMIT;", step.trim().trim_end_matches(';'), index + 1);
        if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(step)).execute(&mut *conn).await {
            let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
            return Err(anyhow::Error::from(e).context(format!("database migration {} failed", index + 1)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::str::FromStr;

    use sqlx::ConnectOptions;
    use sqlx::sqlite::SqliteConnectOptions;

    use super::*;
    use crate::model::{BuildId, BuildKind, BuildStatus};
    use crate::store::Store;

    /// A database as the hand-written runner of earlier releases wrote it, at `version`.
    async fn legacy_database(dir: &Path, version: usize) -> SqliteConnection {
        let options = SqliteConnectOptions::from_str("sqlite:")
            .unwrap()
            .filename(dir.join("autobuilder.sqlite"))
            .create_if_missing(true);
        let mut conn = options.connect().await.unwrap();
        legacy_steps(&mut conn, 0, version).await.unwrap();
        conn
    }

    /// Each table's columns (name, type, not null, default, key), to compare schemas.
    async fn columns(store: &Store) -> Vec<(String, String, String, i64, Option<String>, i64)> {
        sqlx::query_as(
            "SELECT m.name, c.name, c.type, c.\"notnull\", c.dflt_value, c.pk
             FROM sqlite_master m JOIN pragma_table_info(m.name) c
             WHERE m.type = 'table' AND m.name NOT LIKE '\\_sqlx%' ESCAPE '\\' AND m.name NOT LIKE 'sqlite%'
             ORDER BY m.name, c.name",
        )
        .fetch_all(&store.pool)
        .await
        .unwrap()
    }

    async fn recorded(store: &Store) -> Vec<(i64, Vec<u8>)> {
        sqlx::query_as("SELECT version, checksum FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&store.pool)
            .await
            .unwrap()
    }

    fn expected() -> Vec<(i64, Vec<u8>)> {
        SQLITE_MIGRATOR.iter().map(|m| (m.version, m.checksum.to_vec())).collect()
    }

    #[tokio::test]
    async fn a_database_of_the_hand_written_runner_keeps_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = legacy_database(dir.path(), LEGACY.len()).await;
        // Rows as the previous release stored them.
        sqlx::raw_sql(
            "INSERT INTO builds (kind, project, repository, branch, commit_sha, script, baseimage, status,
                                 message, author, settings, created, started, ended, artifact, outputs)
             VALUES ('build', 'p', 'org/repo', 'master', 'abcdef0123456789abcdef0123456789abcdef01', 'build.sh',
                     'ubuntu:24.04', 'success', 'a commit', 'me', '{}', 1700000000100, 1700000001000,
                     1700000002500, 'repo.tar.gz', '[{\"name\":\"x\",\"url\":null,\"sha256\":\"00\"}]');
             INSERT INTO builds (kind, project, repository, branch, commit_sha, script, status, created)
             VALUES ('reload', 'p', 'org/recipes', 'master', '', 'recipes', 'error', 1700000003000);
             INSERT INTO deliveries (id, project, event, received, headers, payload, outcome)
             VALUES ('old', 'p', 'push', 1, '{}', x'6f6c64', '{\"status\":202}');
             INSERT INTO statuses (repository, commit_sha, state, context, description, target_url, created, next_attempt)
             VALUES ('org/repo', 'abcdef0123456789abcdef0123456789abcdef01', 'pending', 'autobuilder/build.sh',
                     'queued', 'http://x/build/1', 1, 1);",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        drop(conn);

        for _ in 0..2 {
            // The second opening finds the bridge done and runs nothing again.
            let store = Store::open(dir.path()).await.unwrap();
            assert_eq!(recorded(&store).await, expected());
            let build = store.get(BuildId(1)).await.unwrap().unwrap();
            let served = serde_json::to_value(&build).unwrap();
            assert_eq!(served["commit"], "abcdef0123456789abcdef0123456789abcdef01");
            assert_eq!(served["created"], "2023-11-14T22:13:20.100Z");
            assert_eq!(served["ended"], "2023-11-14T22:13:22.500Z");
            assert_eq!(served["outputs"][0]["name"], "x");
            assert_eq!((build.new.kind, build.outcome.status), (BuildKind::Build, BuildStatus::Success));
            let reload = store.get(BuildId(2)).await.unwrap().unwrap();
            assert_eq!((reload.new.kind, reload.new.commit.is_none()), (BuildKind::Reload, true));
            assert_eq!(serde_json::to_value(&reload).unwrap()["commit"], "");
            assert_eq!(store.settings(BuildId(1)).await.unwrap().as_deref(), Some("{}"));
            let (old, payload) = store.delivery("p", "old").await.unwrap().unwrap();
            assert_eq!((old.event.as_str(), payload.as_slice()), ("push", b"old".as_slice()));
            assert_eq!(store.next_status().await.unwrap().unwrap().commit.short(), "abcdef0123");
            let next = store.insert(&build.new, None).await.unwrap();
            assert!(next.id > reload.id);
        }
    }

    #[tokio::test]
    async fn a_database_of_the_previous_version_opens() {
        let dir = tempfile::tempdir().unwrap();
        // The schema as the release before per-project deliveries left it (user_version 4).
        let mut conn = legacy_database(dir.path(), 4).await;
        sqlx::raw_sql(
            "INSERT INTO deliveries (id, project, event, received, headers, payload, outcome)
             VALUES ('old', 'p', 'push', 1, '{}', x'6f6c64', '{\"status\":202}')",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        drop(conn);
        let store = Store::open(dir.path()).await.unwrap();
        let (old, payload) = store.delivery("p", "old").await.unwrap().unwrap();
        assert_eq!((old.event.as_str(), payload.as_slice()), ("push", b"old".as_slice()));
        assert!(!store.record_delivery("old", "p", "push", "{}", b"x", None).await.unwrap(), "still a redelivery");
        assert!(store.record_delivery("old", "q", "push", "{}", b"x", None).await.unwrap(), "new for another project");
        let version: i64 = sqlx::query_scalar("PRAGMA user_version").fetch_one(&store.pool).await.unwrap();
        assert_eq!(version as usize, LEGACY.len());
        assert_eq!(recorded(&store).await, expected());
    }

    #[tokio::test]
    async fn a_fresh_database_has_the_schema_of_the_hand_written_runner() {
        let fresh = tempfile::tempdir().unwrap();
        let fresh = Store::open(fresh.path()).await.unwrap();
        assert_eq!(recorded(&fresh).await, expected());
        let old = tempfile::tempdir().unwrap();
        drop(legacy_database(old.path(), LEGACY.len()).await);
        let old = Store::open(old.path()).await.unwrap();
        let columns = columns(&fresh).await;
        assert_eq!(columns.iter().filter(|c| c.0 == "builds").count(), 24, "the baseline's 20 and 0002's leases");
        assert_eq!(columns, self::columns(&old).await);
    }

    #[test]
    fn both_backends_have_the_same_migrations() {
        let steps =
            |migrator: &Migrator| migrator.iter().map(|m| (m.version, m.description.to_string())).collect::<Vec<_>>();
        assert_eq!(
            steps(&SQLITE_MIGRATOR),
            steps(&POSTGRES_MIGRATOR),
            "add a migration to both folders, numbered alike"
        );
    }

    #[tokio::test]
    async fn a_database_newer_than_the_runner_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = legacy_database(dir.path(), LEGACY.len()).await;
        sqlx::raw_sql("PRAGMA user_version = 99").execute(&mut conn).await.unwrap();
        drop(conn);
        let error = Store::open(dir.path()).await.err().expect("refused");
        assert!(format!("{error:#}").contains("newer than this autobuilder knows"), "{error:#}");
    }
}
