//! PostgreSQL's LISTEN/NOTIFY between the processes sharing a history: a build queued (the
//! `builds_queued` trigger) wakes idle workers, a recipes reload on one `serve` makes the others
//! reload. Notifications sent while a listener's connection is down are lost: listeners also look
//! on their own from time to time.

use std::time::Duration;

use sqlx::postgres::PgListener;

use super::{Backend, Store};

/// Notified with a build's id when it is queued (migrations/postgres/0002_workers.sql).
pub const QUEUE_CHANNEL: &str = "autobuilder_queue";
/// Notified with a project's name when a serve loaded newer recipes for it.
pub const RECIPES_CHANNEL: &str = "autobuilder_recipes";

/// Listens on one channel, (re)connecting when needed.
pub struct Listener {
    url: String,
    channel: &'static str,
    connection: Option<PgListener>,
}

impl Store {
    /// A listener on `channel`; None on SQLite, where one process does everything.
    pub fn listener(&self, channel: &'static str) -> Option<Listener> {
        let url = self.url.clone().filter(|_| self.backend == Backend::Postgres)?;
        Some(Listener { url, channel, connection: None })
    }

    /// Notifies the listeners of `channel` with `payload` (nothing on SQLite).
    pub async fn notify(&self, channel: &str, payload: &str) -> anyhow::Result<()> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_notify($1, $2)").bind(channel).bind(payload).execute(&self.pool).await?;
        }
        Ok(())
    }
}

impl Listener {
    /// The payload of the next notification, or None after `patience` (or a failure, logged: the
    /// connection is made again at the next call).
    pub async fn next(&mut self, patience: Duration) -> Option<String> {
        if self.connection.is_none() {
            match self.connect().await {
                Ok(connection) => self.connection = Some(connection),
                Err(e) => {
                    tracing::warn!(channel = self.channel, "cannot listen (looking every {patience:?} instead): {e}");
                    tokio::time::sleep(patience).await;
                    return None;
                }
            }
        }
        let connection = self.connection.as_mut().expect("connected above");
        match tokio::time::timeout(patience, connection.recv()).await {
            Ok(Ok(notification)) => Some(notification.payload().to_string()),
            Err(_) => None,
            Ok(Err(e)) => {
                tracing::warn!(channel = self.channel, "lost the connection that listens: {e}");
                self.connection = None;
                tokio::time::sleep(Duration::from_secs(1).min(patience)).await;
                None
            }
        }
    }

    async fn connect(&self) -> Result<PgListener, sqlx::Error> {
        let mut connection = PgListener::connect(&self.url).await?;
        connection.listen(self.channel).await?;
        Ok(connection)
    }
}
