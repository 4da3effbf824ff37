//! The `builds` table: every build and recipes reload, from queued to its end.

use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};

use super::{MAX_HISTORY, Store, now_ms};
use crate::model::{Branch, Build, BuildId, BuildKind, BuildStatus, CommitSha, NewBuild, Outcome, RepoName, millis};

/// Filters of `GET /build/history`.
#[derive(Debug, Clone, Default)]
pub struct HistoryFilter {
    pub limit: Option<i64>,
    pub repository: Option<String>,
    pub branch: Option<String>,
    pub status: Option<BuildStatus>,
    /// Only entries older than this one (the cursor of the next page).
    pub before: Option<BuildId>,
    /// Only this kind of entry (builds or recipes reloads).
    pub kind: Option<BuildKind>,
    /// Only the builds of this script.
    pub script: Option<String>,
    /// Only entries that ended (success, failure, error, cancelled).
    pub finished: bool,
}

impl Store {
    /// Records a queued build with its recipe settings (JSON, so that it can run after a
    /// restart; none for a reload); returns its record.
    pub async fn insert(&self, build: &NewBuild, settings: Option<&str>) -> anyhow::Result<Build> {
        let row = sqlx::query(
            "INSERT INTO builds (kind, project, repository, branch, commit_sha, script, baseimage, status,
                                 message, author, settings, created)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING *",
        )
        .bind(build.kind)
        .bind(&build.project)
        .bind(&build.repository)
        .bind(&build.branch)
        .bind(build.commit.as_ref().map_or("", CommitSha::as_str))
        .bind(&build.script)
        .bind(&build.baseimage)
        .bind(BuildStatus::Queued)
        .bind(&build.message)
        .bind(&build.author)
        .bind(settings)
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await?;
        Ok(Build::from_row(&row)?)
    }

    pub async fn get(&self, id: BuildId) -> anyhow::Result<Option<Build>> {
        Ok(sqlx::query_as("SELECT * FROM builds WHERE id = $1").bind(id).fetch_optional(&self.pool).await?)
    }

    /// Builds queued or running, oldest first.
    pub async fn active(&self) -> anyhow::Result<Vec<Build>> {
        Ok(sqlx::query_as("SELECT * FROM builds WHERE status IN ($1, $2) ORDER BY id")
            .bind(BuildStatus::Queued)
            .bind(BuildStatus::Running)
            .fetch_all(&self.pool)
            .await?)
    }

    /// The queued and running builds (not reloads) of one branch, oldest first.
    pub async fn active_of_branch(
        &self,
        project: &str,
        repository: &RepoName,
        branch: &Branch,
    ) -> anyhow::Result<Vec<Build>> {
        Ok(sqlx::query_as(
            "SELECT * FROM builds WHERE status IN ($1, $2) AND kind = $3 AND project = $4 AND repository = $5
               AND branch = $6 ORDER BY id",
        )
        .bind(BuildStatus::Queued)
        .bind(BuildStatus::Running)
        .bind(BuildKind::Build)
        .bind(project)
        .bind(repository)
        .bind(branch)
        .fetch_all(&self.pool)
        .await?)
    }

    /// History entries, newest first.
    pub async fn history(&self, filter: &HistoryFilter) -> anyhow::Result<Vec<Build>> {
        Ok(sqlx::query_as(
            "SELECT * FROM builds
             WHERE ($1 IS NULL OR repository = $1) AND ($2 IS NULL OR branch = $2) AND ($3 IS NULL OR status = $3)
               AND ($5 IS NULL OR id < $5) AND ($6 IS NULL OR kind = $6) AND ($7 IS NULL OR script = $7)
               AND (NOT $8 OR status NOT IN ($9, $10))
             ORDER BY id DESC LIMIT $4",
        )
        .bind(&filter.repository)
        .bind(&filter.branch)
        .bind(filter.status)
        .bind(filter.limit.unwrap_or(25).clamp(1, MAX_HISTORY))
        .bind(filter.before)
        .bind(filter.kind)
        .bind(&filter.script)
        .bind(filter.finished)
        .bind(BuildStatus::Queued)
        .bind(BuildStatus::Running)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The recipe settings (JSON) stored with a build when it was queued.
    pub async fn settings(&self, id: BuildId) -> anyhow::Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT settings FROM builds WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .flatten())
    }

    /// How many builds (not reloads) are in each status.
    pub async fn count_by_status(&self) -> anyhow::Result<Vec<(BuildStatus, i64)>> {
        Ok(sqlx::query_as("SELECT status, COUNT(*) FROM builds WHERE kind = $1 GROUP BY status")
            .bind(BuildKind::Build)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Forgets the finished entries created before `before` (ms, when set) or beyond the newest
    /// `max_count` (when set); returns their ids.
    pub(super) async fn prune_builds(
        &self,
        before: Option<i64>,
        max_count: Option<i64>,
    ) -> anyhow::Result<Vec<BuildId>> {
        let ids: Vec<BuildId> = sqlx::query_scalar(
            "SELECT id FROM builds WHERE status NOT IN ($3, $4)
               AND (($1 IS NOT NULL AND created < $1)
                 OR ($2 IS NOT NULL AND id NOT IN (SELECT id FROM builds ORDER BY id DESC LIMIT $2)))",
        )
        .bind(before)
        .bind(max_count)
        .bind(BuildStatus::Queued)
        .bind(BuildStatus::Running)
        .fetch_all(&self.pool)
        .await?;
        for chunk in ids.chunks(500) {
            let list = chunk.iter().map(|id| id.to_string()).collect::<Vec<_>>().join(",");
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DELETE FROM log_chunks WHERE build IN ({list}); DELETE FROM builds WHERE id IN ({list})"
            )))
            .execute(&self.pool)
            .await?;
        }
        Ok(ids)
    }
}

/// A row of `builds`; an unknown kind or status, or a malformed name, is an error.
impl FromRow<'_, AnyRow> for Build {
    fn from_row(row: &AnyRow) -> sqlx::Result<Self> {
        let commit: String = row.try_get("commit_sha")?;
        let commit = match commit.as_str() {
            "" => None,
            text => Some(CommitSha::parse(text).map_err(|e| decode_error("commit_sha", e.into()))?),
        };
        let outputs: Option<String> = row.try_get("outputs")?;
        let outputs = outputs
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .map_err(|e| decode_error("outputs", e.into()))?;
        Ok(Build {
            id: row.try_get("id")?,
            new: NewBuild {
                kind: row.try_get("kind")?,
                project: row.try_get("project")?,
                repository: row.try_get("repository")?,
                branch: row.try_get("branch")?,
                commit,
                script: row.try_get("script")?,
                baseimage: row.try_get("baseimage")?,
                message: row.try_get("message")?,
                author: row.try_get("author")?,
            },
            outcome: Outcome {
                status: row.try_get("status")?,
                error: row.try_get("error")?,
                artifact: row.try_get("artifact")?,
                artifact_url: row.try_get("artifact_url")?,
                artifact_sha256: row.try_get("artifact_sha256")?,
                outputs,
            },
            created: millis::from_ms(row.try_get("created")?),
            started: row.try_get::<Option<i64>, _>("started")?.map(millis::from_ms),
            ended: row.try_get::<Option<i64>, _>("ended")?.map(millis::from_ms),
            worker: row.try_get("worker")?,
        })
    }
}

fn decode_error(column: &str, source: sqlx::error::BoxDynError) -> sqlx::Error {
    sqlx::Error::ColumnDecode { index: column.to_string(), source }
}
