//! The admin API, behind `Authorization: Bearer <admin_token>`: cancel and rebuild builds, list and
//! replay webhook deliveries. With no `admin_token` configured it answers 403. Cancel and rebuild
//! also take a user signed in with GitHub who has write access to the build's repository (the
//! session cookie and its CSRF token, see `session`).

use std::sync::Arc;

use axum::Extension;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::Json;
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiError;
use super::api::find;
use super::session::{Access, Auth, SignedIn};
use crate::app::App;
use crate::model::Build;
use crate::store::Delivery;

/// Proof that the request carries the admin token.
pub struct Admin;

impl FromRequestParts<Arc<App>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let expected = app.config.admin_token.expose();
        if expected.is_empty() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "the admin API is disabled: set admin_token in the configuration",
            ));
        }
        let given = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .unwrap_or_default();
        if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong Authorization: Bearer <admin_token>",
            ));
        }
        Ok(Admin)
    }
}

/// Who asks to cancel or rebuild: a script with the admin token, or a signed-in user.
pub enum Actor {
    Admin,
    User(String),
}

impl FromRequestParts<Arc<App>> for Actor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        if parts.headers.contains_key("authorization") {
            return Admin::from_request_parts(parts, app).await.map(|_| Actor::Admin);
        }
        match SignedIn::from_request_parts(parts, app).await? {
            SignedIn(Some(session)) => Ok(Actor::User(session.login)),
            SignedIn(None) => {
                let signing_in = parts.extensions.get::<Arc<Auth>>().is_some_and(|auth| auth.enabled());
                if signing_in {
                    return Err(ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "sign in with GitHub at /login, or send Authorization: Bearer <admin_token>",
                    ));
                }
                Admin::from_request_parts(parts, app).await.map(|_| Actor::Admin)
            }
        }
    }
}

impl Actor {
    /// Refuses (403) a user without write access to `build`'s repository.
    async fn may_act_on(&self, app: &App, auth: &Auth, build: &Build) -> Result<(), ApiError> {
        let Actor::User(login) = self else { return Ok(()) };
        let repo = &build.new.repository;
        if auth.access(app, repo, login).await == Access::Write {
            return Ok(());
        }
        Err(ApiError::new(StatusCode::FORBIDDEN, format!("{login} has no write access to {repo} on GitHub")))
    }

    fn name(&self) -> String {
        match self {
            Actor::Admin => "an admin".into(),
            Actor::User(login) => login.clone(),
        }
    }
}

/// Compares without stopping at the first difference (only the length can leak).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `POST /build/<id>/cancel`: stops a queued or running build (SIGTERM, grace, SIGKILL).
pub async fn cancel(
    actor: Actor,
    Extension(auth): Extension<Arc<Auth>>,
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let build = find(&app, &id).await?;
    actor.may_act_on(&app, &auth, &build).await?;
    if build.outcome.status.is_final() {
        let status = build.outcome.status;
        return Err(ApiError::new(StatusCode::CONFLICT, format!("build {} already ended: {status}", build.id)));
    }
    let asked = crate::build::cancel(&app, build.id, &format!("cancelled by {}", actor.name())).await.map_err(|e| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("cannot cancel build {}: {e:#}", build.id))
    })?;
    if !asked {
        return Err(ApiError::new(StatusCode::CONFLICT, format!("build {} already ended", build.id)));
    }
    Ok(Json(json!({ "message": format!("cancelling build {}", build.id), "build": build.id })))
}

/// `POST /build/<id>/rebuild`: the same commit and recipe settings, as a new build.
pub async fn rebuild(
    actor: Actor,
    Extension(auth): Extension<Arc<Auth>>,
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let build = find(&app, &id).await?;
    actor.may_act_on(&app, &auth, &build).await?;
    let new = crate::build::rebuild(&app, build.id)
        .await
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, format!("cannot rebuild {}: {e:#}", build.id)))?
        .ok_or_else(|| ApiError::not_found(format!("no build {id}")))?;
    let message = format!("build {new} rebuilds {}", build.id);
    Ok((StatusCode::ACCEPTED, Json(json!({ "message": message, "builds": [new], "urls": [app.build_url(new)] }))))
}

#[derive(Deserialize)]
pub struct ListQuery {
    limit: Option<i64>,
}

/// `GET /deliveries`: stored webhook deliveries, newest first, with what was done with each.
pub async fn deliveries(
    _: Admin,
    State(app): State<Arc<App>>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Vec<Delivery>>, ApiError> {
    Ok(Json(app.store.deliveries(query.limit.unwrap_or(50)).await?))
}

#[derive(Deserialize)]
pub struct ReplayQuery {
    /// The project of the delivery, needed when several projects received one with this id.
    project: Option<String>,
}

/// `POST /deliveries/<id>/replay[?project=NAME]`: acts on a stored delivery again.
pub async fn replay(
    _: Admin,
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    Query(query): Query<ReplayQuery>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let project = match query.project {
        Some(project) => project,
        None => match app.store.projects_of_delivery(&id).await?.as_slice() {
            [] => return Err(ApiError::not_found(format!("no delivery {id}"))),
            [project] => project.clone(),
            projects => {
                let message = format!("projects {} have a delivery {id}: add ?project=NAME", projects.join(", "));
                return Err(ApiError::new(StatusCode::CONFLICT, message));
            }
        },
    };
    let (delivery, payload) = app
        .store
        .delivery(&project, &id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no delivery {id} of project {project}")))?;
    Ok(super::intake::act_and_record(&app, &delivery.id, &delivery.project, &delivery.event, &payload).await)
}
