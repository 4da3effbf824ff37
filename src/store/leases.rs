//! Leases: a running build is held by one worker under a lease it renews. Each claim gives the
//! build a new lease generation, the fencing token of every later write for it: the database
//! refuses a renewal or an end written with a stale one, so a worker that was frozen or cut off
//! past its lease cannot record over the build's new holder.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};

use super::statuses::{OutboxStatus, insert_status};
use super::{Backend, Store, now_ms};
use crate::model::{Build, BuildId, BuildKind, BuildStatus, Outcome};

/// The key of the transaction-scoped advisory lock under which workers claim queued builds one
/// at a time, so that per-project limits hold across hosts ("autoqueu" in ASCII).
const QUEUE_LOCK: i64 = 0x6175_746f_7175_6575;

/// How many queued builds one claim reads at a time, looking for one it may run.
const CLAIM_WINDOW: i64 = 200;

/// A worker's hold on a running build: the build and the generation of its lease (the fencing
/// token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub build: BuildId,
    pub generation: i64,
}

/// What renewing a lease found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// Still held; with the reason when another process asked the build to stop.
    Held { cancel: Option<String> },
    /// Ended, or taken over by another worker after it ran out: stop, and write nothing more.
    Lost,
}

/// What a claim of one build found.
#[derive(Debug)]
pub enum Claim {
    /// Claimed: it runs under this lease.
    Claimed(Box<Build>, Lease),
    /// No longer queued: another worker took it, or it ended.
    NotQueued,
    /// Its project runs its limit of builds (over every host): it stays queued.
    ProjectAtLimit,
}

/// Who writes a build's end, and so when the database takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// The worker holding this lease: taken only while the build runs under it.
    Lease(Lease),
    /// Any process, for a build whose worker was lost: taken only while it runs under this lease
    /// and the lease has run out.
    Expired(Lease),
    /// A build never claimed (cancelled or failed while queued): taken only while it is queued.
    Queue,
    /// Recipes reloads, which no worker runs: always taken.
    Anyone,
}

impl Store {
    /// Claims queued build `id` for `worker`: it is running from now, under a new lease that lasts
    /// `lease_for` unless renewed. None when it is no longer queued (another worker took it, or it
    /// was cancelled).
    pub async fn claim(
        &self,
        id: BuildId,
        worker: &str,
        lease_for: Duration,
    ) -> anyhow::Result<Option<(Build, Lease)>> {
        let mut connection = self.pool.acquire().await?;
        claim_one(&mut connection, id, worker, lease_for).await
    }

    /// [`Store::claim`] while fewer than `limit` builds of `project` run on every host together
    /// (under the claims' advisory lock on PostgreSQL, so that no worker claims one meanwhile).
    pub async fn claim_within_limit(
        &self,
        id: BuildId,
        worker: &str,
        lease_for: Duration,
        project: &str,
        limit: usize,
    ) -> anyhow::Result<Claim> {
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(QUEUE_LOCK).execute(&mut *tx).await?;
        }
        // Claimed elsewhere or ended first: not queued, whatever its project runs.
        let queued: Option<i64> = sqlx::query_scalar("SELECT id FROM builds WHERE id = $1 AND status = $2")
            .bind(id)
            .bind(BuildStatus::Queued)
            .fetch_optional(&mut *tx)
            .await?;
        if queued.is_none() {
            return Ok(Claim::NotQueued);
        }
        let running: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM builds WHERE status = $1 AND project = $2")
            .bind(BuildStatus::Running)
            .bind(project)
            .fetch_one(&mut *tx)
            .await?;
        if running as usize >= limit {
            return Ok(Claim::ProjectAtLimit);
        }
        let claimed = claim_one(&mut tx, id, worker, lease_for).await?;
        tx.commit().await?;
        Ok(claimed.map_or(Claim::NotQueued, |(build, lease)| Claim::Claimed(Box::new(build), lease)))
    }

    /// Claims the oldest queued build whose project is below its limit (`project_limits`, counted
    /// over every host) and that `runs_here` accepts (given its project and recipe settings) for
    /// `worker`.
    /// Claims are taken one at a time across every worker, in a transaction under an advisory
    /// lock; the rows are locked `FOR UPDATE SKIP LOCKED` besides, against a `serve` claiming one
    /// of them by id meanwhile.
    pub async fn claim_next(
        &self,
        worker: &str,
        lease_for: Duration,
        project_limits: &HashMap<String, usize>,
        runs_here: impl Fn(BuildId, &str, Option<&str>) -> bool,
    ) -> anyhow::Result<Option<(Build, Lease)>> {
        let mut tx = self.pool.begin().await?;
        let page = match self.backend {
            Backend::Postgres => {
                sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(QUEUE_LOCK).execute(&mut *tx).await?;
                "SELECT id, project, settings FROM builds WHERE status = $1 AND kind = $2 AND id > $3 ORDER BY id
                 LIMIT $4 FOR UPDATE SKIP LOCKED"
            }
            // One writer at a time already.
            Backend::Sqlite => {
                "SELECT id, project, settings FROM builds WHERE status = $1 AND kind = $2 AND id > $3 ORDER BY id
                 LIMIT $4"
            }
        };
        let running: HashMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
            "SELECT project, COUNT(*) FROM builds WHERE status = $1 GROUP BY project",
        )
        .bind(BuildStatus::Running)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
        let below_limit = |project: &str| {
            let limit = project_limits.get(project).copied().unwrap_or(usize::MAX);
            (running.get(project).copied().unwrap_or(0) as usize) < limit
        };
        // Page after page, so that builds this worker may not run (another's labels, a project at
        // its limit) never hide the ones behind them.
        let mut after = BuildId(0);
        let id = loop {
            let queued: Vec<(BuildId, String, Option<String>)> = sqlx::query_as(page)
                .bind(BuildStatus::Queued)
                .bind(BuildKind::Build)
                .bind(after)
                .bind(CLAIM_WINDOW)
                .fetch_all(&mut *tx)
                .await?;
            let Some((last, _, _)) = queued.last() else { return Ok(None) };
            after = *last;
            let next = queued
                .iter()
                .find(|(id, project, settings)| below_limit(project) && runs_here(*id, project, settings.as_deref()));
            if let Some((id, _, _)) = next {
                break *id;
            }
        };
        let claimed = claim_one(&mut tx, id, worker, lease_for).await?;
        tx.commit().await?;
        Ok(claimed)
    }

    /// Takes the lease of running build `id` again, for the worker it ran under after that
    /// worker restarted (or for this `serve`, when it ran before leases were recorded). The
    /// generation stays: no other process used it meanwhile, or the build would not be running
    /// under this worker's name. None when it is not running under `worker`.
    pub async fn reclaim(&self, id: BuildId, worker: &str, lease_for: Duration) -> anyhow::Result<Option<Lease>> {
        let generation: Option<i64> = sqlx::query_scalar(
            "UPDATE builds SET worker = $1, lease_expires = $2
             WHERE id = $3 AND status = $4 AND (worker = $1 OR worker IS NULL) RETURNING lease",
        )
        .bind(worker)
        .bind(now_ms() + lease_for.as_millis() as i64)
        .bind(id)
        .bind(BuildStatus::Running)
        .fetch_optional(&self.pool)
        .await?;
        Ok(generation.map(|generation| Lease { build: id, generation }))
    }

    /// Renews `lease` for `lease_for` from now.
    pub async fn renew(&self, lease: Lease, lease_for: Duration) -> anyhow::Result<Renewal> {
        let cancel: Option<Option<String>> = sqlx::query_scalar(
            "UPDATE builds SET lease_expires = $1 WHERE id = $2 AND status = $3 AND lease = $4 RETURNING cancel",
        )
        .bind(now_ms() + lease_for.as_millis() as i64)
        .bind(lease.build)
        .bind(BuildStatus::Running)
        .bind(lease.generation)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match cancel {
            Some(cancel) => Renewal::Held { cancel },
            None => Renewal::Lost,
        })
    }

    /// Asks running build `id`, wherever it runs, to stop: its worker sees `reason` at its next
    /// renewal. False when it is not running.
    pub async fn request_cancel(&self, id: BuildId, reason: &str) -> anyhow::Result<bool> {
        let asked = sqlx::query("UPDATE builds SET cancel = COALESCE(cancel, $1) WHERE id = $2 AND status = $3")
            .bind(reason)
            .bind(id)
            .bind(BuildStatus::Running)
            .execute(&self.pool)
            .await?;
        Ok(asked.rows_affected() > 0)
    }

    /// Running builds whose lease ran out (their worker stopped renewing it), with that lease and
    /// the reason of a stop asked of them meanwhile.
    pub async fn expired_leases(&self) -> anyhow::Result<Vec<(Build, Lease, Option<String>)>> {
        let rows: Vec<AnyRow> = sqlx::query(
            "SELECT * FROM builds WHERE status = $1 AND lease_expires IS NOT NULL AND lease_expires < $2 ORDER BY id",
        )
        .bind(BuildStatus::Running)
        .bind(now_ms())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let build = Build::from_row(row)?;
                let lease = Lease { build: build.id, generation: row.try_get("lease")? };
                Ok((build, lease, row.try_get("cancel")?))
            })
            .collect()
    }

    /// Puts the build of an expired `lease` back in the queue, for any worker to claim with a new
    /// generation. None when the lease is not the build's current one any more, or was renewed
    /// (its holder came back, or re-attached after a restart), or a stop was asked of the build.
    pub async fn requeue(&self, lease: Lease) -> anyhow::Result<Option<Build>> {
        Ok(sqlx::query_as(
            "UPDATE builds SET status = $1, worker = NULL, lease_expires = NULL, started = NULL
             WHERE id = $2 AND status = $3 AND lease = $4 AND lease_expires < $5 AND cancel IS NULL RETURNING *",
        )
        .bind(BuildStatus::Queued)
        .bind(lease.build)
        .bind(BuildStatus::Running)
        .bind(lease.generation)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?)
    }

    /// How many times build `id` was claimed (its lease generation).
    pub async fn claims_of(&self, id: BuildId) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar("SELECT lease FROM builds WHERE id = $1").bind(id).fetch_one(&self.pool).await?)
    }

    /// Records how a build ended and, in the same transaction, queues its final commit status (so
    /// a crash cannot keep the one without the other); returns its record. None when `holder` may
    /// not write it (see [`Holder`]): nothing is written then.
    pub async fn finish(
        &self,
        id: BuildId,
        outcome: &Outcome,
        status: Option<&OutboxStatus>,
        holder: Holder,
    ) -> anyhow::Result<Option<Build>> {
        let outputs = outcome.outputs.as_ref().map(serde_json::to_string).transpose()?;
        let (holder_kind, generation, expired_before) = match holder {
            Holder::Lease(lease) => ("lease", lease.generation, i64::MAX),
            Holder::Expired(lease) => ("lease", lease.generation, now_ms()),
            Holder::Queue => ("queue", 0, 0),
            Holder::Anyone => ("anyone", 0, 0),
        };
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "UPDATE builds SET status = $1, ended = $2, error = $3, artifact = $4, artifact_url = $5, artifact_sha256 = $6,
                               outputs = $7, started = COALESCE(started, $2), lease_expires = NULL
             WHERE id = $8
               AND ($9 = 'anyone' OR ($9 = 'queue' AND status = $10)
                    OR ($9 = 'lease' AND status = $11 AND lease = $12 AND COALESCE(lease_expires, 0) < $13))
             RETURNING *",
        )
        .bind(outcome.status)
        .bind(now_ms())
        .bind(&outcome.error)
        .bind(&outcome.artifact)
        .bind(&outcome.artifact_url)
        .bind(&outcome.artifact_sha256)
        .bind(outputs)
        .bind(id)
        .bind(holder_kind)
        .bind(BuildStatus::Queued)
        .bind(BuildStatus::Running)
        .bind(generation)
        .bind(expired_before)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(None) };
        if let Some(status) = status {
            insert_status(&mut tx, status).await?;
        }
        tx.commit().await?;
        Ok(Some(Build::from_row(&row)?))
    }
}

/// Claims queued build `id` on `connection` (see [`Store::claim`]).
async fn claim_one(
    connection: &mut sqlx::AnyConnection,
    id: BuildId,
    worker: &str,
    lease_for: Duration,
) -> anyhow::Result<Option<(Build, Lease)>> {
    let now = now_ms();
    let row: Option<AnyRow> = sqlx::query(
        "UPDATE builds SET status = $1, started = $2, worker = $3, lease = lease + 1, lease_expires = $4, cancel = NULL
         WHERE id = $5 AND status = $6 RETURNING *",
    )
    .bind(BuildStatus::Running)
    .bind(now)
    .bind(worker)
    .bind(now + lease_for.as_millis() as i64)
    .bind(id)
    .bind(BuildStatus::Queued)
    .fetch_optional(&mut *connection)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let lease = Lease { build: id, generation: row.try_get("lease")? };
    Ok(Some((Build::from_row(&row)?, lease)))
}
