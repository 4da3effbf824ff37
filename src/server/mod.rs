//! HTTP: webhook intake, the build API, the monitor pages and the artifact downloads (served as
//! downloads), every answer with security headers (a Content-Security-Policy without inline script).

mod admin;
mod api;
mod badge;
pub mod intake;
mod logs;
mod ops;
mod pages;
mod session;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Json, Redirect, Response};
use axum::routing::{get, post};
use tower_http::services::ServeDir;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::app::App;
use crate::live::Live;

/// All routes of `serve`. Without Redis, the live websocket (`/live`) is served here too.
pub fn router(app: Arc<App>) -> anyhow::Result<Router> {
    let pages = pages::Pages::new()?;
    let auth = Arc::new(session::Auth::new(&app.config)?);
    let csp = page_policy(&app.config.live.public_url);
    // Artifacts are whatever a build wrote: downloads, never pages of this origin.
    let artifacts = Router::new()
        .nest_service("/artifacts", ServeDir::new(app.artifacts.directory()))
        .layer(overriding(header::CONTENT_DISPOSITION, "attachment"))
        .layer(overriding(header::CONTENT_SECURITY_POLICY, "sandbox"));
    let fallback_pages = pages.clone();
    let live = match app.config.redis.url.as_str() {
        "" => crate::live::router(Arc::new(Live::new(
            app.bus.clone(),
            app.config.logs_dir(),
            &app.config.live,
            Some(app.remote_logs.clone()),
        ))),
        _ => Router::new(),
    };
    Ok(Router::new()
        .route("/build/{project}/hook", post(intake::receive).layer(DefaultBodyLimit::disable()))
        .route("/build/status", get(api::status))
        .route("/build/history", get(api::history))
        .route("/build/logs/{*path}", get(api::branch_log))
        .route("/build/{id}", get(api::build))
        .route("/build/{id}/log", get(api::log))
        .route("/build/{id}/log.txt", get(logs::plain))
        .route("/build/{id}/log/lines", get(logs::lines))
        .route("/build/{id}/log/search", get(logs::search))
        .route("/build/{id}/log/download", get(logs::download))
        .route("/build/{id}/queue", get(logs::queue))
        .route("/build/{id}/cancel", post(admin::cancel))
        .route("/build/{id}/rebuild", post(admin::rebuild))
        .route("/deliveries", get(admin::deliveries))
        .route("/deliveries/{id}/replay", post(admin::replay))
        .route("/badge/{*path}", get(badge::badge))
        .route("/login", get(session::login))
        .route("/login/callback", get(session::callback))
        .route("/logout", post(session::logout))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .merge(pages.router())
        .route("/", get(|| async { Redirect::to("/monitor") }))
        .fallback(move |uri: Uri, headers: HeaderMap| not_found(uri, headers, fallback_pages.clone()))
        .with_state(app.clone())
        .merge(artifacts)
        .merge(live)
        .layer(axum::middleware::from_fn_with_state(app, session::gate))
        .layer(axum::Extension(auth))
        .layer(SetResponseHeaderLayer::if_not_present(header::CONTENT_SECURITY_POLICY, csp))
        .layer(overriding(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(overriding(header::REFERRER_POLICY, "same-origin"))
        .layer(overriding(header::X_FRAME_OPTIONS, "DENY")))
}

fn overriding(name: HeaderName, value: &'static str) -> SetResponseHeaderLayer<HeaderValue> {
    SetResponseHeaderLayer::overriding(name, HeaderValue::from_static(value))
}

/// The Content-Security-Policy of every page: scripts, styles and connections only from this
/// origin (`'self'` covers its websockets too) and the origin of `[live] public_url`, no inline
/// script, no framing.
fn page_policy(live_public_url: &str) -> HeaderValue {
    let live_origin = live_public_url
        .split_once("://")
        .map(|(scheme, rest)| format!(" {scheme}://{}", rest.split('/').next().unwrap_or_default()))
        .unwrap_or_default();
    let policy = format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'{live_origin}; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    );
    // The configuration check accepts only ws:// and wss:// URLs; anything unprintable falls back
    // to the policy without the origin.
    HeaderValue::from_str(&policy).unwrap_or_else(|_| page_policy(""))
}

/// Any other path: an HTML page for a browser, JSON for the API.
async fn not_found(uri: Uri, headers: HeaderMap, pages: pages::Pages) -> Response {
    let what = format!("there is no page {}", uri.path());
    let browser = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/html"));
    if browser { pages.not_found(&what) } else { ApiError::not_found(what).into_response() }
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
