//! The monitor pages, rendered with tera from `templates/`, styled from `static/` (both embedded in
//! the binary, so the pages work with no internet and from any working directory).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use tera::{Context, Tera};

use super::ApiError;
use super::api::find;
use super::session::Viewer;
use crate::app::App;

/// The files under `/static/`: name, content type, content.
const STATIC_FILES: [(&str, &str, &str); 7] = [
    ("style.css", "text/css", include_str!("../../static/style.css")),
    ("overview.css", "text/css", include_str!("../../static/overview.css")),
    ("build.css", "text/css", include_str!("../../static/build.css")),
    ("common.js", "text/javascript", include_str!("../../static/common.js")),
    ("overview.js", "text/javascript", include_str!("../../static/overview.js")),
    ("build.js", "text/javascript", include_str!("../../static/build.js")),
    ("actions.js", "text/javascript", include_str!("../../static/actions.js")),
];

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
            ("actions.html", include_str!("../../templates/actions.html")),
            ("not_found.html", include_str!("../../templates/not_found.html")),
        ])?;
        Ok(Self { tera: Arc::new(tera) })
    }

    pub fn router(self) -> Router<Arc<App>> {
        let (monitor_pages, build_pages) = (self.clone(), self);
        let mut router = Router::new()
            .route("/monitor", get(move |state, viewer| monitor(state, viewer, monitor_pages.clone())))
            .route(
                "/monitor/build/{id}",
                get(move |state, viewer, path| build(state, viewer, path, build_pages.clone())),
            );
        for (name, content_type, content) in STATIC_FILES {
            router = router.route(
                &format!("/static/{name}"),
                get(move || async move { ([(header::CONTENT_TYPE, content_type)], content) }),
            );
        }
        router
    }

    fn render(&self, name: &str, context: &Context) -> Result<Html<String>, ApiError> {
        self.tera.render(name, context).map(Html).map_err(|e| anyhow::anyhow!("template {name}: {e:?}").into())
    }

    /// A 404 page saying `what` does not exist, with a link back to the monitor.
    pub fn not_found(&self, what: &str) -> Response {
        let mut context = Context::new();
        context.insert("what", what);
        context.insert("ws_url", "");
        match self.render("not_found.html", &context) {
            Ok(page) => (StatusCode::NOT_FOUND, page).into_response(),
            Err(error) => error.into_response(),
        }
    }
}

async fn monitor(State(app): State<Arc<App>>, viewer: Viewer, pages: Pages) -> Result<impl IntoResponse, ApiError> {
    let mut context = Context::new();
    context.insert("ws_url", &app.config.live.public_url);
    context.insert("github_web_url", &app.config.github.web_url);
    context.insert("auth", &viewer.page(&app, None).await);
    pages.render("monitor.html", &context)
}

async fn build(
    State(app): State<Arc<App>>,
    viewer: Viewer,
    Path(id): Path<String>,
    pages: Pages,
) -> Result<Response, ApiError> {
    let build = match find(&app, &id).await {
        Ok(build) => build,
        Err(ApiError(StatusCode::NOT_FOUND, what)) => return Ok(pages.not_found(&what)),
        Err(error) => return Err(error),
    };
    let mut context = Context::new();
    context.insert("auth", &viewer.page(&app, Some(&build.new.repository)).await);
    context.insert("stopping", &app.active.stopping(build.id));
    context.insert("build", &build);
    context.insert("ws_url", &app.config.live.public_url);
    Ok(pages.render("build.html", &context)?.into_response())
}
