//! `POST /build/<project>/hook`: verify the signature, parse the event, answer at once; builds and
//! reloads run after the answer.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Json;
use serde_json::{Value, json};

use super::ApiError;
use crate::app::App;
use crate::build::{Source, enqueue};
use crate::github::webhook::{Event, Push, parse_event, verify_signature};
use crate::recipes::reload::reload;

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
    let event_name = header("x-github-event")
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "missing X-GitHub-Event header"))?;
    let event = parse_event(event_name, &body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("malformed {event_name} payload: {e}")))?;
    match event {
        Event::Ping => Ok((StatusCode::OK, Json(json!({ "message": "pong" })))),
        Event::Other(name) => {
            Ok(accepted(StatusCode::ACCEPTED, format!("event {name} ignored: only push is acted on")))
        }
        Event::Push(push) => on_push(&app, &project, push).await,
    }
}

async fn on_push(app: &Arc<App>, project: &str, push: Push) -> Result<(StatusCode, Json<Value>), ApiError> {
    let settings = &app.config.projects[project];
    let branch = match push.branch() {
        None => {
            return Ok(accepted(
                StatusCode::OK,
                format!("{} is not a branch: tags and other refs start no build", push.git_ref),
            ));
        }
        Some(Err(e)) => {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("refused ref {:?}: {e}", push.git_ref)));
        }
        Some(Ok(branch)) => branch,
    };
    if push.deleted || push.after.is_zero() {
        return Ok(accepted(
            StatusCode::OK,
            format!("branch {branch} of {} was deleted: nothing to build", push.repository),
        ));
    }

    if push.repository.as_str() == settings.recipes {
        if branch.as_str() != settings.branch {
            return Ok(accepted(
                StatusCode::OK,
                format!("branch {branch} of the recipes repository is not loaded (project loads {})", settings.branch),
            ));
        }
        let (app, project, sha) = (app.clone(), project.to_string(), push.after.clone());
        tokio::spawn(async move {
            if let Err(e) = reload(&app, &project, Some(sha)).await {
                tracing::error!(project, "recipes reload failed: {e:#}");
            }
        });
        return Ok(accepted(StatusCode::ACCEPTED, format!("reloading recipes at {}", push.after.short())));
    }

    let Some(recipes) = app.recipes.get(project) else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the recipes of project {project} are not loaded: see the last reload in \
                 /build/history?repository={}",
                settings.recipes
            ),
        ));
    };
    let Some(recipe) = recipes.get(&push.repository, &branch).cloned() else {
        return Ok(accepted(
            StatusCode::OK,
            format!("no recipe for {} branch {branch}: nothing to build", push.repository),
        ));
    };
    let source = Source {
        project: project.to_string(),
        repository: push.repository.clone(),
        branch: branch.clone(),
        commit: push.after.clone(),
        message: push.message,
        author: push.author,
    };
    let ids = enqueue(app, &recipe, source).await?;
    let urls: Vec<String> = ids.iter().map(|id| app.build_url(*id)).collect();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "message": format!("{} builds queued for {} {branch} at {}", ids.len(), push.repository, push.after.short()),
            "builds": ids,
            "urls": urls,
        })),
    ))
}

fn accepted(code: StatusCode, message: String) -> (StatusCode, Json<Value>) {
    (code, Json(json!({ "message": message, "builds": [] })))
}
