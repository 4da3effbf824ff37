//! What a process claims in a PostgreSQL history for as long as it runs: a `serve` the history
//! itself (it takes over the builds it finds at start-up), a process that builds its worker name
//! (its builds are found by that name after a restart). Each claim is a PostgreSQL advisory lock,
//! held by one connection of its own and taken again when that connection is lost.

use std::time::Duration;

use anyhow::bail;
use sha2::{Digest, Sha256};
use sqlx::{AnyConnection, Connection};

use super::{Backend, Store};

/// The key of the advisory lock one `serve` holds ("autobuil" in ASCII).
const SERVE_LOCK: i64 = 0x6175_746f_6275_696c;

/// One thing a process holds in the history while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The one `serve` of this history.
    Serve,
    /// The builds run under this `[worker] name`.
    Worker(String),
}

impl Claim {
    fn key(&self) -> i64 {
        match self {
            Claim::Serve => SERVE_LOCK,
            Claim::Worker(name) => {
                let digest = Sha256::digest(format!("autobuilder worker {name}").as_bytes());
                i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
            }
        }
    }

    /// Why a claim held by another process is refused, and what to do.
    fn refused(&self) -> String {
        match self {
            Claim::Serve => "another autobuilder serve uses this history database: stop it first, or give this one a \
                             database of its own ([database] url)"
                .into(),
            Claim::Worker(name) => format!(
                "another autobuilder process runs builds as worker {name:?} on this history database: give this one \
                 a [worker] name of its own"
            ),
        }
    }
}

/// The claims of this process and the connection holding their locks.
#[derive(Default)]
pub(super) struct Held {
    claims: Vec<Claim>,
    connection: Option<AnyConnection>,
}

impl Store {
    /// Takes `claims` for as long as this process runs; refused when another process holds one
    /// of them. (A SQLite history is a file of this machine's `data_dir`: nothing to claim.)
    pub async fn take_claims(&self, claims: Vec<Claim>) -> anyhow::Result<()> {
        if self.backend != Backend::Postgres || claims.is_empty() {
            return Ok(());
        }
        let connection = match self.take_locks(&claims).await? {
            Ok(connection) => connection,
            Err(refused) => bail!("{}", refused.refused()),
        };
        // The locks live as long as this session: the connection is kept, never returned, and
        // kept alive by [`Store::hold_claims`].
        *self.claims.lock().expect("claims lock") = Held { claims, connection: Some(connection) };
        Ok(())
    }

    /// Makes this process the one `serve` of a PostgreSQL history ([`Claim::Serve`]).
    pub async fn claim_sole_use(&self) -> anyhow::Result<()> {
        self.take_claims(vec![Claim::Serve]).await
    }

    /// Keeps the claims of [`Store::claim`] while this process runs: every `every`, the
    /// connection holding the locks is pinged, and when it was lost (PostgreSQL restarted, or the
    /// network between), the locks are taken again on a new connection. Returns only when another
    /// process took one meanwhile: this one must then stop, since both would run the same builds.
    /// Never returns on SQLite, or before a claim.
    pub async fn hold_claims(&self, every: Duration) -> anyhow::Error {
        let claims = self.claims.lock().expect("claims lock").claims.clone();
        if self.backend != Backend::Postgres || claims.is_empty() {
            return std::future::pending().await;
        }
        loop {
            tokio::time::sleep(every).await;
            let mut held = self.claims.lock().expect("claims lock").connection.take();
            if let Some(connection) = held.as_mut()
                && let Err(e) = connection.ping().await
            {
                tracing::warn!("lost the connection that holds this process's claims on the history: {e}");
                held = None;
            }
            let connection = match held {
                Some(connection) => connection,
                None => match self.take_locks(&claims).await {
                    Ok(Ok(connection)) => {
                        tracing::info!("claimed the history database again after its connection was lost");
                        connection
                    }
                    Ok(Err(taken)) => {
                        let who = match taken {
                            Claim::Serve => "another autobuilder serve claimed this history database".to_string(),
                            Claim::Worker(name) => format!("another process took worker name {name:?}"),
                        };
                        return anyhow::anyhow!(
                            "{who} while this one's connection to it was lost: stopping, so that the two do not \
                             run the same builds"
                        );
                    }
                    Err(e) => {
                        tracing::warn!(
                            "cannot claim the history database again yet (trying again in {every:?}): {e:#}"
                        );
                        continue;
                    }
                },
            };
            self.claims.lock().expect("claims lock").connection = Some(connection);
        }
    }

    /// The advisory locks of `claims` on a connection of its own (taken out of the pool), or the
    /// first claim another session holds (none of them is kept then).
    async fn take_locks(&self, claims: &[Claim]) -> anyhow::Result<Result<AnyConnection, Claim>> {
        let mut connection = self.pool.acquire().await?.detach();
        for claim in claims {
            let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(claim.key())
                .fetch_one(&mut connection)
                .await?;
            if !taken {
                connection.close().await.ok();
                return Ok(Err(claim.clone()));
            }
        }
        Ok(Ok(connection))
    }
}
