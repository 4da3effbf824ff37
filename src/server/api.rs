//! The build API: `/build/status`, `/build/history`, `/build/<id>`, and the logs as text.

use std::io::SeekFrom;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Json, Response};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncSeekExt;

use super::ApiError;
use crate::app::App;
use crate::build::log::tail_offset;
use crate::model::{Build, BuildId, BuildKind, BuildStatus};
use crate::store::HistoryFilter;

/// Builds queued or running, oldest first.
pub async fn status(State(app): State<Arc<App>>) -> Result<Json<Vec<Build>>, ApiError> {
    Ok(Json(app.store.active().await?))
}

#[derive(Deserialize)]
pub struct HistoryQuery {
    limit: Option<i64>,
    repository: Option<String>,
    branch: Option<String>,
    status: Option<String>,
    /// The cursor of the next page: only entries older than this build id.
    before: Option<String>,
    /// `build` or `reload`: only that kind of entry.
    kind: Option<String>,
}

/// History, newest first: `?limit=` (default 25, at most 1000), `?repository=&branch=&status=&kind=`,
/// and `?before=<id>` for the next page (the id of the last entry of this one).
pub async fn history(
    State(app): State<Arc<App>>,
    Query(query): Query<HistoryQuery>,
) -> Result<Json<Vec<Build>>, ApiError> {
    let status = match query.status.as_deref() {
        None | Some("") => None,
        Some(text) => Some(BuildStatus::parse(text).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("unknown status {text:?}: use queued, running, success, failure, error or cancelled"),
            )
        })?),
    };
    let before = match query.before.as_deref() {
        None | Some("") => None,
        Some(text) => Some(text.parse().map(BuildId).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("before={text:?} is not a build id: use the id of the last entry of the previous page"),
            )
        })?),
    };
    let kind = match query.kind.as_deref() {
        None | Some("") => None,
        Some(text) => Some(BuildKind::parse(text).ok_or_else(|| {
            ApiError::new(StatusCode::BAD_REQUEST, format!("unknown kind {text:?}: use build or reload"))
        })?),
    };
    let filter = HistoryFilter {
        limit: query.limit,
        repository: query.repository.filter(|r| !r.is_empty()),
        branch: query.branch.filter(|b| !b.is_empty()),
        status,
        before,
        kind,
        ..Default::default()
    };
    Ok(Json(app.store.history(&filter).await?))
}

/// A build, and while a running one is in its stop grace period, why it was asked to stop.
#[derive(Serialize)]
pub struct BuildState {
    #[serde(flatten)]
    pub build: Build,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopping: Option<String>,
}

/// `GET /build/<id>`: the build, with `"stopping": "<reason>"` while it is being stopped.
pub async fn build(State(app): State<Arc<App>>, Path(id): Path<String>) -> Result<Json<BuildState>, ApiError> {
    let build = find(&app, &id).await?;
    let stopping = app.active.stopping(build.id);
    Ok(Json(BuildState { build, stopping }))
}

#[derive(Deserialize)]
pub struct LogQuery {
    /// Only the last this many lines.
    tail: Option<u64>,
}

/// The log of one build, as text: all of it, or `?tail=N` lines (found from the end of the file).
pub async fn log(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    Query(query): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let build = find(&app, &id).await?;
    text_log(&app, build.id, query.tail).await
}

/// `/build/logs/<org>/<repo>/<branch>`: the log of the newest build of that branch.
pub async fn branch_log(State(app): State<Arc<App>>, Path(path): Path<String>) -> Result<Response, ApiError> {
    let mut parts = path.splitn(3, '/');
    let (Some(org), Some(repo), Some(branch)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(ApiError::not_found("use /build/logs/<org>/<repo>/<branch>"));
    };
    let filter = HistoryFilter {
        limit: Some(1),
        repository: Some(format!("{org}/{repo}")),
        branch: Some(branch.to_string()),
        ..Default::default()
    };
    let build = app
        .store
        .history(&filter)
        .await?
        .pop()
        .ok_or_else(|| ApiError::not_found(format!("no build of {org}/{repo} branch {branch} yet")))?;
    text_log(&app, build.id, None).await
}

pub(super) async fn find(app: &App, id: &str) -> Result<Build, ApiError> {
    let id = id.parse().map(BuildId).map_err(|_| ApiError::not_found(format!("{id:?} is not a build id")))?;
    app.store.get(id).await?.ok_or_else(|| ApiError::not_found(format!("no build {id}")))
}

async fn text_log(app: &App, id: BuildId, tail: Option<u64>) -> Result<Response, ApiError> {
    let (mut file, _) = super::logs::open(app, id).await?;
    if let Some(lines) = tail {
        let offset = tail_offset(&mut file, lines, 64 * 1024).await.map_err(anyhow::Error::from)?;
        file.seek(SeekFrom::Start(offset)).await.map_err(anyhow::Error::from)?;
    }
    let stream = tokio_util::io::ReaderStream::new(file);
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header("x-accel-buffering", "no")
        .body(Body::from_stream(stream))
        .expect("valid response"))
}
