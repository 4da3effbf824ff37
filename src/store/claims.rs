//! Worker names claimed in a PostgreSQL history for as long as a process runs: builds are found
//! by the name they run under after a restart, so two processes must never build under one name.
//! A claim is a PostgreSQL advisory lock, held by one connection of its own and taken again when
//! that connection is lost.

use std::time::Duration;

use anyhow::bail;
use sha2::{Digest, Sha256};
use sqlx::{AnyConnection, Connection};

use super::{Backend, Store};

/// The worker name this process claimed and the connection holding its lock.
#[derive(Default)]
pub(super) struct Held {
    name: Option<String>,
    connection: Option<AnyConnection>,
}

/// The advisory lock key of worker `name`.
fn key_of(name: &str) -> i64 {
    let digest = Sha256::digest(format!("autobuilder worker {name}").as_bytes());
    i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

impl Store {
    /// Runs builds under worker `name` for as long as this process runs; refused when another
    /// process holds the name. (A SQLite history is a file of this machine's `data_dir`: nothing
    /// to claim.)
    pub async fn claim_worker_name(&self, name: &str) -> anyhow::Result<()> {
        if self.backend != Backend::Postgres {
            return Ok(());
        }
        let Some(connection) = self.take_lock(name).await? else {
            bail!(
                "another autobuilder process runs builds as worker {name:?} on this history database: give this \
                 one a [worker] name of its own"
            );
        };
        // The lock lives as long as this session: the connection is kept, never returned, and
        // kept alive by [`Store::hold_claims`].
        *self.claims.lock().expect("claims lock") = Held { name: Some(name.to_string()), connection: Some(connection) };
        Ok(())
    }

    /// Keeps the claim of [`Store::claim_worker_name`] while this process runs: every `every`,
    /// the connection holding the lock is pinged, and when it was lost (PostgreSQL restarted, or
    /// the network between), the lock is taken again on a new connection. Returns only when
    /// another process took the name meanwhile: this one must then stop, since both would take
    /// the same builds for their own. Never returns on SQLite, or before a claim.
    pub async fn hold_claims(&self, every: Duration) -> anyhow::Error {
        let name = self.claims.lock().expect("claims lock").name.clone();
        let (Backend::Postgres, Some(name)) = (self.backend, name) else { return std::future::pending().await };
        loop {
            tokio::time::sleep(every).await;
            let mut held = self.claims.lock().expect("claims lock").connection.take();
            if let Some(connection) = held.as_mut()
                && let Err(e) = connection.ping().await
            {
                tracing::warn!("lost the connection that holds this process's worker name: {e}");
                held = None;
            }
            let connection = match held {
                Some(connection) => connection,
                None => match self.take_lock(&name).await {
                    Ok(Some(connection)) => {
                        tracing::info!(worker = name, "claimed the worker name again after its connection was lost");
                        connection
                    }
                    Ok(None) => {
                        return anyhow::anyhow!(
                            "another process took worker name {name:?} while this one's connection to the history \
                             was lost: stopping, so that the two do not run the same builds"
                        );
                    }
                    Err(e) => {
                        tracing::warn!("cannot claim the worker name again yet (trying again in {every:?}): {e:#}");
                        continue;
                    }
                },
            };
            self.claims.lock().expect("claims lock").connection = Some(connection);
        }
    }

    /// Whether a process runs builds as worker `name` now: it holds the name's claim. (With the
    /// SQLite history, serve is the one process that builds: true.)
    pub async fn worker_running(&self, name: &str) -> anyhow::Result<bool> {
        if self.backend != Backend::Postgres {
            return Ok(true);
        }
        // A bigint advisory lock shows in pg_locks as its high and low 32 bits, in this database.
        let key = key_of(name) as u64;
        let running: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1
             AND classid::bigint = $1 AND objid::bigint = $2
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))",
        )
        .bind((key >> 32) as i64)
        .bind((key & 0xffff_ffff) as i64)
        .fetch_one(&self.pool)
        .await?;
        Ok(running)
    }

    /// The advisory lock of worker `name` on a connection of its own, or None when another
    /// session holds it.
    async fn take_lock(&self, name: &str) -> anyhow::Result<Option<AnyConnection>> {
        self.session_lock(key_of(name)).await
    }

    /// The session advisory lock `key` on a connection of its own (taken out of the pool: the
    /// lock lasts as long as it), or None when another session holds it.
    pub(super) async fn session_lock(&self, key: i64) -> anyhow::Result<Option<AnyConnection>> {
        let mut connection = self.pool.acquire().await?.detach();
        let taken: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(key).fetch_one(&mut connection).await?;
        if !taken {
            connection.close().await.ok();
            return Ok(None);
        }
        Ok(Some(connection))
    }
}
