//! The `images` table: which worker's Docker engine holds the newest image each producer (a
//! `commit: true` script) committed, so that the builds starting `from` it run there (see
//! `build::images`).

use std::collections::HashMap;

use super::{Lease, Store};
use crate::model::{BuildKind, BuildStatus};

/// A producer's image, by project, repository and branch.
pub type ImageKey = (String, String, String);

/// Where the newest image of a producer is: the worker whose engine committed it, at which commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageHolder {
    pub worker: String,
    pub commit: String,
}

/// What recording a committed image found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageRecord {
    Recorded,
    /// A later build of the producer recorded its image already: that one stays the newest.
    LaterRecorded,
    /// The lease is stale: the build was taken over, nothing is recorded.
    LeaseLost,
}

impl Store {
    /// Records that `lease`'s build committed the image of `key` at `commit` on `worker`'s engine.
    pub async fn record_image(
        &self,
        lease: Lease,
        key: &ImageKey,
        worker: &str,
        commit: &str,
    ) -> anyhow::Result<ImageRecord> {
        let (project, repository, branch) = key;
        let recorded = sqlx::query(
            "INSERT INTO images (project, repository, branch, worker, build, commit_sha)
             SELECT $1, $2, $3, $4, $5, $6 WHERE EXISTS (SELECT 1 FROM builds WHERE id = $5 AND lease = $7)
             ON CONFLICT (project, repository, branch) DO UPDATE
             SET worker = excluded.worker, build = excluded.build, commit_sha = excluded.commit_sha
             WHERE images.build <= excluded.build",
        )
        .bind(project)
        .bind(repository)
        .bind(branch)
        .bind(worker)
        .bind(lease.build)
        .bind(commit)
        .bind(lease.generation)
        .execute(&self.pool)
        .await?;
        if recorded.rows_affected() > 0 {
            return Ok(ImageRecord::Recorded);
        }
        let held: Option<i64> = sqlx::query_scalar("SELECT id FROM builds WHERE id = $1 AND lease = $2")
            .bind(lease.build)
            .bind(lease.generation)
            .fetch_optional(&self.pool)
            .await?;
        Ok(if held.is_some() { ImageRecord::LaterRecorded } else { ImageRecord::LeaseLost })
    }

    /// Where the newest image of every producer is.
    pub async fn image_holders(&self) -> anyhow::Result<HashMap<ImageKey, ImageHolder>> {
        let rows: Vec<(String, String, String, String, String)> =
            sqlx::query_as("SELECT project, repository, branch, worker, commit_sha FROM images")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(project, repository, branch, worker, commit)| {
                ((project, repository, branch), ImageHolder { worker, commit })
            })
            .collect())
    }

    /// The recipe settings of every queued or running build, by project, repository and branch:
    /// what tells whether a producer is building.
    pub async fn active_settings(&self) -> anyhow::Result<Vec<(ImageKey, Option<String>)>> {
        let rows: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
            "SELECT project, repository, branch, settings FROM builds WHERE status IN ($1, $2) AND kind = $3",
        )
        .bind(BuildStatus::Queued)
        .bind(BuildStatus::Running)
        .bind(BuildKind::Build)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(project, repository, branch, settings)| ((project, repository, branch), settings))
            .collect())
    }
}
