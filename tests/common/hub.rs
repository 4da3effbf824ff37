//! A fake Zero-OS hub over real HTTP: uploads and links, a token check, and an outage switch.

use std::sync::{Arc, Mutex};

use autobuilder::config::{ArtifactsKind, Config, Secret};
use axum::Router;
use axum::extract::{Multipart, Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Json;
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::serve;

#[derive(Default)]
pub struct FakeHubState {
    /// Uploaded files: (file name, bytes).
    pub uploads: Mutex<Vec<(String, Vec<u8>)>>,
    /// Links made: (link, target).
    pub links: Mutex<Vec<(String, String)>>,
    pub down: std::sync::atomic::AtomicBool,
}

/// A fake Zero-OS hub: `POST /api/flist/me/upload` and `GET /api/flist/me/<src>/link/<dst>`.
pub struct FakeHub {
    pub url: String,
    pub state: Arc<FakeHubState>,
}

pub const HUB_TOKEN: &str = "hub-token";

impl FakeHub {
    pub async fn start() -> Self {
        let state = Arc::new(FakeHubState::default());
        let router = Router::new()
            .route("/api/flist/me/upload", post(hub_upload).layer(axum::extract::DefaultBodyLimit::disable()))
            .route("/api/flist/me/{source}/link/{link}", get(hub_link))
            .with_state(state.clone());
        Self { url: serve(router).await, state }
    }

    /// Makes `config` publish artifacts to this hub with [`HUB_TOKEN`].
    pub fn configure(&self, config: &mut Config) {
        config.artifacts.kind = ArtifactsKind::Hub;
        config.artifacts.hub.url = self.url.clone();
        config.artifacts.hub.token = Secret::new(HUB_TOKEN);
    }
}

fn hub_refusal(state: &FakeHubState, headers: &HeaderMap) -> Option<(StatusCode, Json<Value>)> {
    if state.down.load(std::sync::atomic::Ordering::SeqCst) {
        return Some((
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "error", "message": "hub in maintenance"})),
        ));
    }
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !auth.eq_ignore_ascii_case(&format!("bearer {HUB_TOKEN}")) {
        return Some((
            StatusCode::UNAUTHORIZED,
            Json(json!({"status": "error", "message": "no authorization provided"})),
        ));
    }
    None
}

async fn hub_upload(
    State(state): State<Arc<FakeHubState>>,
    headers: HeaderMap,
    mut form: Multipart,
) -> (StatusCode, Json<Value>) {
    // The whole request is read before any answer, as the hub's front proxy does (nginx buffers
    // request bodies): a server that answers mid-upload and closes makes the client's send fail
    // instead of showing the hub's answer, a race that has nothing to do with the product.
    let mut file = None;
    while let Ok(Some(field)) = form.next_field().await {
        if field.name() == Some("file") && file.is_none() {
            let name = field.file_name().unwrap_or_default().to_string();
            file = Some((name, field.bytes().await.unwrap_or_default().to_vec()));
        }
    }
    if let Some(refusal) = hub_refusal(&state, &headers) {
        return refusal;
    }
    let Some((name, bytes)) = file else {
        return (StatusCode::BAD_REQUEST, Json(json!({"status": "error", "message": "file not found"})));
    };
    if !name.ends_with(".tar.gz") {
        return (StatusCode::BAD_REQUEST, Json(json!({"status": "error", "message": "invalid file extension"})));
    }
    let flist = format!("{}.flist", name.trim_end_matches(".tar.gz"));
    state.uploads.lock().unwrap().push((name, bytes));
    (StatusCode::OK, Json(json!({"status": "success", "payload": {"name": flist}})))
}

async fn hub_link(
    State(state): State<Arc<FakeHubState>>,
    UrlPath((source, link)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> (StatusCode, Json<Value>) {
    if let Some(refusal) = hub_refusal(&state, &headers) {
        return refusal;
    }
    state.links.lock().unwrap().push((link, source));
    (StatusCode::OK, Json(json!({"status": "success"})))
}
