//! The log endpoints of the build page: a window of lines with their times, a search of the whole
//! log, the log as plain text (escape sequences removed) or as a download, and why a queued build
//! waits.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Json, Response};
use serde::Deserialize;
use tokio::io::AsyncBufReadExt;

use super::ApiError;
use super::api::find;
use crate::app::App;
use crate::build::log::{self, Found, Window, WindowStart};
use crate::build::queue::Waiting;
use crate::model::BuildId;

/// Most lines in one window.
const MAX_WINDOW: u64 = 10_000;
/// Most line numbers a search answers with (all matches are counted).
const MAX_HITS: usize = 1_000;
/// Longest search text.
const MAX_QUERY: usize = 200;
/// Bytes of plain text sent at once.
const PLAIN_BLOCK: usize = 64 * 1024;

#[derive(Deserialize)]
pub struct WindowQuery {
    from: Option<u64>,
    count: Option<u64>,
    tail: Option<u64>,
}

/// `GET /build/<id>/log/lines?from=N&count=M` or `?tail=M`: lines with the time each arrived, and
/// the headers of the sections that enclose the first of them (`open`).
pub async fn lines(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    Query(query): Query<WindowQuery>,
) -> Result<Json<Window>, ApiError> {
    let bad = |what: &str| ApiError::new(StatusCode::BAD_REQUEST, what.to_string());
    let (start, count) = match (query.from, query.tail) {
        (Some(0), _) => return Err(bad("lines are numbered from 1: use ?from=1 or more")),
        (Some(from), None) => (WindowStart::Line(from), query.count.unwrap_or(1000)),
        (None, Some(tail)) => (WindowStart::Tail(tail), tail),
        _ => return Err(bad("say which lines: ?from=<first line>&count=<lines> or ?tail=<lines>")),
    };
    if count == 0 || count > MAX_WINDOW {
        return Err(bad(&format!("ask for 1 to {MAX_WINDOW} lines at once")));
    }
    let build = find(&app, &id).await?;
    let (file, logs_dir) = open(&app, build.id).await?;
    let marks = log::read_index(&logs_dir, build.id).await.map_err(anyhow::Error::from)?;
    let mut window = log::window(file, &marks, start, count).await.map_err(anyhow::Error::from)?;
    window.open =
        log::sections_open_at(&logs_dir, build.id, window.first, &marks).await.map_err(anyhow::Error::from)?;
    Ok(Json(window))
}

#[derive(Deserialize)]
pub struct SearchQuery {
    q: Option<String>,
}

/// `GET /build/<id>/log/search?q=text`: the lines whose text (without escape sequences) holds
/// `text`, ignoring case: `{"total": n, "lines": [first numbers]}`.
pub async fn search(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    Query(query): Query<SearchQuery>,
) -> Result<Json<Found>, ApiError> {
    let text = query.q.unwrap_or_default();
    if text.is_empty() || text.len() > MAX_QUERY {
        let what = format!("say what to look for: ?q=<text>, 1 to {MAX_QUERY} bytes");
        return Err(ApiError::new(StatusCode::BAD_REQUEST, what));
    }
    let build = find(&app, &id).await?;
    let (file, _) = open(&app, build.id).await?;
    Ok(Json(log::search(file, &text, MAX_HITS).await.map_err(anyhow::Error::from)?))
}

#[derive(Deserialize)]
pub struct PlainQuery {
    download: Option<String>,
}

/// `GET /build/<id>/log.txt`: the log as plain text, escape sequences removed and progress bars
/// shown at their last state; `?download=1` as a file.
pub async fn plain(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    Query(query): Query<PlainQuery>,
) -> Result<Response, ApiError> {
    let build = find(&app, &id).await?;
    let (file, _) = open(&app, build.id).await?;
    let reader = tokio::io::BufReader::with_capacity(PLAIN_BLOCK, file);
    let stream = futures_util::stream::try_unfold(reader, |mut reader| async move {
        let (mut text, mut line) = (String::new(), Vec::new());
        while text.len() < PLAIN_BLOCK {
            line.clear();
            if reader.read_until(b'\n', &mut line).await? == 0 {
                break;
            }
            let raw = String::from_utf8_lossy(&line);
            text.push_str(&log::plain_line(raw.strip_suffix('\n').unwrap_or(&raw)));
            text.push('\n');
        }
        Ok::<_, std::io::Error>((!text.is_empty()).then(|| (Bytes::from(text), reader)))
    });
    let mut response = Response::builder().header(header::CONTENT_TYPE, "text/plain; charset=utf-8");
    if query.download.is_some() {
        response = response.header(header::CONTENT_DISPOSITION, attachment(build.id, "txt"));
    }
    Ok(response.body(Body::from_stream(stream)).expect("valid response"))
}

/// `GET /build/<id>/log/download`: the raw log, escape sequences and all, as a file.
pub async fn download(State(app): State<Arc<App>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let build = find(&app, &id).await?;
    let (file, _) = open(&app, build.id).await?;
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CONTENT_DISPOSITION, attachment(build.id, "log"))
        .body(Body::from_stream(tokio_util::io::ReaderStream::new(file)))
        .expect("valid response"))
}

/// `GET /build/<id>/queue`: a queued build's place in the queue and what holds it back.
pub async fn queue(State(app): State<Arc<App>>, Path(id): Path<String>) -> Result<Json<Waiting>, ApiError> {
    let build = find(&app, &id).await?;
    app.queue.why_waiting(build.id).map(Json).ok_or_else(|| {
        ApiError::not_found(format!("build {} is not waiting in the queue: see /build/{}", build.id, build.id))
    })
}

fn attachment(id: BuildId, extension: &str) -> String {
    format!("attachment; filename=\"build-{id}.{extension}\"")
}

/// The log file of build `id` and the directory of its files (a copy from the history when
/// another host runs or ran it); 404 when it has not started.
pub(super) async fn open(app: &App, id: BuildId) -> Result<(tokio::fs::File, PathBuf), ApiError> {
    let logs_dir = app.remote_logs.fetch(id).await;
    match tokio::fs::File::open(log::log_path(&logs_dir, id)).await {
        Ok(file) => Ok((file, logs_dir)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(ApiError::not_found(format!("build {id} has no log yet: it has not started")))
        }
        Err(e) => Err(anyhow::Error::from(e).into()),
    }
}
