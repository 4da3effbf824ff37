//! The monitor pages, rendered with tera from `templates/`, styled from `static/` (both embedded in
//! the binary, so the pages work with no internet and from any working directory).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use tera::{Context, Tera};

use super::ApiError;
use super::api::find;
use crate::app::App;
use crate::build::log::log_path;
use crate::store::HistoryFilter;

/// A build page shows at most this much of the end of the log; the raw log has it all.
const LOG_TAIL_BYTES: u64 = 256 * 1024;

const STYLE: &str = include_str!("../../static/style.css");

#[derive(Clone)]
pub struct Pages {
    tera: Arc<Tera>,
}

impl Pages {
    pub fn new() -> anyhow::Result<Self> {
        let mut tera = Tera::default();
        tera.add_raw_templates([
            ("base.html", include_str!("../../templates/base.html")),
            ("monitor.html", include_str!("../../templates/monitor.html")),
            ("build.html", include_str!("../../templates/build.html")),
        ])?;
        Ok(Self {
            tera: Arc::new(tera),
        })
    }

    pub fn router(self) -> Router<Arc<App>> {
        let (monitor_pages, build_pages) = (self.clone(), self);
        Router::new()
            .route(
                "/monitor",
                get(move |state| monitor(state, monitor_pages.clone())),
            )
            .route(
                "/monitor/build/{id}",
                get(move |state, path| build(state, path, build_pages.clone())),
            )
            .route(
                "/static/style.css",
                get(|| async { ([(header::CONTENT_TYPE, "text/css")], STYLE) }),
            )
    }

    fn render(&self, name: &str, context: &Context) -> Result<Html<String>, ApiError> {
        self.tera
            .render(name, context)
            .map(Html)
            .map_err(|e| anyhow::anyhow!("template {name}: {e:?}").into())
    }
}

async fn monitor(State(app): State<Arc<App>>, pages: Pages) -> Result<impl IntoResponse, ApiError> {
    let mut context = Context::new();
    context.insert("active", &app.store.active().await?);
    context.insert(
        "history",
        &app.store
            .history(&HistoryFilter {
                limit: Some(50),
                ..Default::default()
            })
            .await?,
    );
    pages.render("monitor.html", &context)
}

async fn build(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    pages: Pages,
) -> Result<impl IntoResponse, ApiError> {
    let build = find(&app, &id).await?;
    let (log, cut) = read_tail(&log_path(&app.config.logs_dir(), build.id)).await;
    let mut context = Context::new();
    context.insert("build", &build);
    context.insert("finished", &build.status.is_final());
    context.insert("log", &log);
    context.insert("log_cut", &cut);
    pages.render("build.html", &context)
}

/// The end of a log (at most [`LOG_TAIL_BYTES`], starting on a line), and whether it was cut.
async fn read_tail(path: &std::path::Path) -> (String, bool) {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let Ok(mut file) = tokio::fs::File::open(path).await else {
        return (String::new(), false);
    };
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(LOG_TAIL_BYTES);
    let mut bytes = Vec::new();
    if file.seek(std::io::SeekFrom::Start(start)).await.is_err()
        || file.read_to_end(&mut bytes).await.is_err()
    {
        return (String::new(), false);
    }
    if start > 0
        && let Some(newline) = bytes.iter().position(|&b| b == b'\n')
    {
        bytes.drain(..=newline);
    }
    (String::from_utf8_lossy(&bytes).into_owned(), start > 0)
}
