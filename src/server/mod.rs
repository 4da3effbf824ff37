//! HTTP: webhook intake, the build API, the monitor pages and the artifact downloads.

mod admin;
mod api;
pub mod hooks;
mod intake;
mod ops;
mod pages;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Redirect, Response};
use axum::routing::{get, post};
use tower_http::services::ServeDir;

use crate::app::App;
use crate::live::Live;

/// All routes of `serve`. Without Redis, the live websocket (`/live`) is served here too.
pub fn router(app: Arc<App>) -> anyhow::Result<Router> {
    let pages = pages::Pages::new()?;
    let artifacts = ServeDir::new(app.artifacts.directory());
    let live = match app.config.redis.url.as_str() {
        "" => crate::live::router(Arc::new(Live { bus: app.bus.clone(), logs_dir: app.config.logs_dir() })),
        _ => Router::new(),
    };
    Ok(Router::new()
        .route("/build/{project}/hook", post(hooks::receive).layer(DefaultBodyLimit::disable()))
        .route("/build/status", get(api::status))
        .route("/build/history", get(api::history))
        .route("/build/logs/{*path}", get(api::branch_log))
        .route("/build/{id}", get(api::build))
        .route("/build/{id}/log", get(api::log))
        .route("/build/{id}/cancel", post(admin::cancel))
        .route("/build/{id}/rebuild", post(admin::rebuild))
        .route("/deliveries", get(admin::deliveries))
        .route("/deliveries/{id}/replay", post(admin::replay))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .merge(pages.router())
        .route("/", get(|| async { Redirect::to("/monitor") }))
        .nest_service("/artifacts", artifacts)
        .with_state(app)
        .merge(live))
}

/// An error answer: a status code and a JSON body `{"error": "..."}` that says what to do.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    pub fn new(code: StatusCode, message: impl Into<String>) -> Self {
        Self(code, message.into())
    }
    pub fn not_found(what: impl Into<String>) -> Self {
        Self(StatusCode::NOT_FOUND, what.into())
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(error: anyhow::Error) -> Self {
        tracing::error!("request failed: {error:#}");
        Self(StatusCode::INTERNAL_SERVER_ERROR, "internal error; the server log has the details".into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}
