//! `POST /build/<project>/hook`: verify the signature, store the delivery, act on it, answer at
//! once (builds and reloads run after the answer). A delivery seen before is not acted on again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Json;
use serde_json::{Value, json};

use super::ApiError;
use crate::app::App;
use crate::build::{Source, enqueue};
use crate::github::webhook::{Event, Push, parse_event, verify_signature};
use crate::metrics::EventLabel;
use crate::recipes::reload::reload;

/// Headers kept with a stored delivery.
const KEPT_HEADERS: &[&str] =
    &["x-github-event", "x-github-delivery", "x-github-hook-id", "user-agent", "content-type"];

pub async fn receive(
    State(app): State<Arc<App>>,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let settings = app
        .config
        .projects
        .get(&project)
        .ok_or_else(|| ApiError::not_found(format!("no project {project:?} is configured")))?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if !verify_signature(settings.webhook_secret.expose().as_bytes(), &body, header("x-hub-signature-256")) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong X-Hub-Signature-256: the webhook secret must equal the project's webhook_secret",
        ));
    }
    let event = header("x-github-event")
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "missing X-GitHub-Event header"))?
        .to_string();
    let delivery = match header("x-github-delivery") {
        Some(id) if !id.is_empty() && id.len() <= 100 => id.to_string(),
        _ => local_delivery_id(),
    };
    let kept: serde_json::Map<String, Value> =
        KEPT_HEADERS.iter().filter_map(|name| Some((name.to_string(), Value::from(header(name)?)))).collect();
    let new = app.store.record_delivery(&delivery, &project, &event, &Value::Object(kept).to_string(), &body).await?;
    if !new {
        let before = app.store.delivery(&delivery).await?.and_then(|(d, _)| d.outcome);
        let message = format!("delivery {delivery} was received before: not acted on again");
        return Ok((StatusCode::OK, Json(json!({ "message": message, "delivery": delivery, "before": before }))));
    }
    app.metrics.deliveries.get_or_create(&EventLabel { event: event.clone() }).inc();
    Ok(act_and_record(&app, &delivery, &project, &event, &body).await)
}

/// Acts on a stored delivery and records what was done; the answer for GitHub (or an admin).
pub async fn act_and_record(
    app: &Arc<App>,
    delivery: &str,
    project: &str,
    event: &str,
    body: &[u8],
) -> (StatusCode, Json<Value>) {
    let (code, mut answer) = match act(app, project, event, body).await {
        Ok(answer) => answer,
        Err(error) => (error.0, json!({ "error": error.1 })),
    };
    answer["delivery"] = Value::from(delivery);
    let outcome = json!({ "status": code.as_u16(), "answer": answer.clone() });
    if let Err(e) = app.store.set_delivery_outcome(delivery, &outcome).await {
        tracing::error!(delivery, "cannot record what was done with the delivery: {e:#}");
    }
    (code, Json(answer))
}

/// Acts on the deliveries a previous process stored but never acted on.
pub async fn act_on_unprocessed(app: &Arc<App>) -> anyhow::Result<()> {
    for id in app.store.unprocessed_deliveries().await? {
        if let Some((delivery, payload)) = app.store.delivery(&id).await? {
            tracing::info!(delivery = %id, "acting on a delivery stored before a restart");
            let _ = act_and_record(app, &id, &delivery.project, &delivery.event, &payload).await;
        }
    }
    Ok(())
}

async fn act(app: &Arc<App>, project: &str, event: &str, body: &[u8]) -> Result<(StatusCode, Value), ApiError> {
    if !app.config.projects.contains_key(project) {
        return Err(ApiError::not_found(format!("no project {project:?} is configured")));
    }
    let event = parse_event(event, body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("malformed {event} payload: {e}")))?;
    match event {
        Event::Ping => Ok((StatusCode::OK, json!({ "message": "pong" }))),
        Event::Other(name) => Ok(said(StatusCode::ACCEPTED, format!("event {name} ignored: only push is acted on"))),
        Event::Push(push) => on_push(app, project, push).await,
    }
}

async fn on_push(app: &Arc<App>, project: &str, push: Push) -> Result<(StatusCode, Value), ApiError> {
    let settings = &app.config.projects[project];
    let branch = match push.branch() {
        None => {
            let message = format!("{} is not a branch: tags and other refs start no build", push.git_ref);
            return Ok(said(StatusCode::OK, message));
        }
        Some(Err(e)) => {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("refused ref {:?}: {e}", push.git_ref)));
        }
        Some(Ok(branch)) => branch,
    };
    if push.deleted || push.after.is_zero() {
        let message = format!("branch {branch} of {} was deleted: nothing to build", push.repository);
        return Ok(said(StatusCode::OK, message));
    }

    if push.repository.as_str() == settings.recipes {
        if branch.as_str() != settings.branch {
            let message =
                format!("branch {branch} of the recipes repository is not loaded (project loads {})", settings.branch);
            return Ok(said(StatusCode::OK, message));
        }
        let (app, project, sha) = (app.clone(), project.to_string(), push.after.clone());
        tokio::spawn(async move {
            if let Err(e) = reload(&app, &project, Some(sha)).await {
                tracing::error!(project, "recipes reload failed: {e:#}");
            }
        });
        return Ok(said(StatusCode::ACCEPTED, format!("reloading recipes at {}", push.after.short())));
    }

    let Some(recipes) = app.recipes.get(project) else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the recipes of project {project} are not loaded: see the last reload in /build/history?repository={}",
                settings.recipes
            ),
        ));
    };
    let Some(recipe) = recipes.get(&push.repository, &branch).cloned() else {
        let message = format!("no recipe for {} branch {branch}: nothing to build", push.repository);
        return Ok(said(StatusCode::OK, message));
    };
    let source = Source {
        project: project.to_string(),
        repository: push.repository.clone(),
        branch: branch.clone(),
        commit: push.after.clone(),
        message: push.message,
        author: push.author,
    };
    let ids = enqueue(app, &recipe, source, true).await?;
    let urls: Vec<String> = ids.iter().map(|id| app.build_url(*id)).collect();
    let message = format!("{} builds queued for {} {branch} at {}", ids.len(), push.repository, push.after.short());
    Ok((StatusCode::ACCEPTED, json!({ "message": message, "builds": ids, "urls": urls })))
}

fn said(code: StatusCode, message: String) -> (StatusCode, Value) {
    (code, json!({ "message": message, "builds": [] }))
}

/// An id for a delivery that came without `X-GitHub-Delivery` (not from GitHub itself).
fn local_delivery_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("local-{nanos:x}-{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}
