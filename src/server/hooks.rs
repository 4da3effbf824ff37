//! `POST /build/<project>/hook`: the delivery, verified at the edge ([`SignedDelivery`]), is
//! stored, acted on, and answered at once (builds and reloads run after the answer). A delivery
//! seen before is not acted on again.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Json;
use serde_json::{Value, json};

use super::ApiError;
use super::intake::SignedDelivery;
use crate::app::App;
use crate::build::order::{Lineage, newer_than};
use crate::build::reload::reload;
use crate::build::{Source, enqueue};
use crate::github::webhook::{Command, CommandKind, Event, PullRequest, parse_event};
use crate::metrics::EventLabel;
use crate::model::BuildStatus;
use crate::model::{Branch, CommitSha, RepoName};
use crate::recipes::Recipe;
use crate::store::{HistoryFilter, MAX_HISTORY};

pub async fn receive(
    State(app): State<Arc<App>>,
    delivery: SignedDelivery,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let SignedDelivery { project, event, id, headers, payload } = delivery;
    app.metrics.deliveries.get_or_create(&EventLabel { event: event.clone() }).inc();
    // A delivery that starts nothing is stored with its answer in one write; one that starts a
    // build or a reload is stored first, then acted on, then its outcome recorded.
    let decision = decide(&app, &project, &event, &payload);
    if let Decision::Answer(code, answer) = &decision {
        let outcome = outcome_of(*code, answer, &id);
        let new = app.store.record_delivery(&id, &project, &event, &headers, &payload, Some(&outcome)).await?;
        if new {
            return Ok((*code, Json(outcome["answer"].clone())));
        }
        return Ok(seen_before(&app, &project, &id).await?);
    }
    if !app.store.record_delivery(&id, &project, &event, &headers, &payload, None).await? {
        return Ok(seen_before(&app, &project, &id).await?);
    }
    Ok(carry_out_and_record(&app, &id, &project, decision).await)
}

async fn seen_before(app: &App, project: &str, delivery: &str) -> anyhow::Result<(StatusCode, Json<Value>)> {
    let before = app.store.delivery(project, delivery).await?.and_then(|(d, _)| d.outcome);
    let message = format!("delivery {delivery} was received before: not acted on again");
    Ok((StatusCode::OK, Json(json!({ "message": message, "delivery": delivery, "before": before }))))
}

/// Acts on a stored delivery (again) and records what was done; the answer.
pub async fn act_and_record(
    app: &Arc<App>,
    delivery: &str,
    project: &str,
    event: &str,
    body: &[u8],
) -> (StatusCode, Json<Value>) {
    let decision = decide(app, project, event, body);
    carry_out_and_record(app, delivery, project, decision).await
}

async fn carry_out_and_record(
    app: &Arc<App>,
    delivery: &str,
    project: &str,
    decision: Decision,
) -> (StatusCode, Json<Value>) {
    let (code, answer) = match carry_out(app, project, decision).await {
        Ok(answer) => answer,
        Err(error) => (error.0, json!({ "error": error.1 })),
    };
    let outcome = outcome_of(code, &answer, delivery);
    if let Err(e) = app.store.set_delivery_outcome(project, delivery, &outcome).await {
        tracing::error!(delivery, "cannot record what was done with the delivery: {e:#}");
    }
    (code, Json(outcome["answer"].clone()))
}

fn outcome_of(code: StatusCode, answer: &Value, delivery: &str) -> Value {
    let mut answer = answer.clone();
    answer["delivery"] = Value::from(delivery);
    json!({ "status": code.as_u16(), "answer": answer })
}

/// Acts on the deliveries a previous process stored but never acted on.
pub async fn act_on_unprocessed(app: &Arc<App>) -> anyhow::Result<()> {
    for (project, id) in app.store.unprocessed_deliveries().await? {
        if let Some((delivery, payload)) = app.store.delivery(&project, &id).await? {
            tracing::info!(delivery = %id, "acting on a delivery stored before a restart");
            let _ = act_and_record(app, &id, &delivery.project, &delivery.event, &payload).await;
        }
    }
    Ok(())
}

/// What a delivery asks for, decided without doing anything.
enum Decision {
    /// Nothing to do but answer.
    Answer(StatusCode, Value),
    Reload(CommitSha),
    Build(Box<Recipe>, Source, Lineage),
    /// Cancel the builds of a closed pull request (its `pull/<n>` branch).
    Cancel(RepoName, Branch, String),
    /// A pull request comment's command (it asks GitHub who may, so it is carried out).
    Command(Command),
}

/// A pull request is built at its head with the recipe of the branch it targets (never one from
/// the pull request), as branch `pull/<n>`; from a fork only when the project allows it.
fn decide_pull_request(app: &App, project: &str, pr: PullRequest) -> Decision {
    let answer = |message: String| Decision::Answer(StatusCode::OK, json!({ "message": message, "builds": [] }));
    let branch = Branch::parse(&format!("pull/{}", pr.number)).expect("a valid branch name");
    match pr.action.as_str() {
        "opened" | "synchronize" | "reopened" => {}
        "closed" => {
            let reason = format!("pull request #{} closed", pr.number);
            return Decision::Cancel(pr.repository, branch, reason);
        }
        other => {
            return answer(format!("pull_request {other} ignored: only opened, synchronize, reopened and closed are"));
        }
    }
    if pr.from_fork() && !app.config.projects[project].allow_forks {
        return answer(format!(
            "pull request #{} comes from a fork ({}): not built, as allow_forks is off for project {project}",
            pr.number,
            pr.head_repository.as_deref().unwrap_or("a deleted repository")
        ));
    }
    let Some(recipe) = app.recipes.get(project).and_then(|set| set.get(&pr.repository, &pr.base).cloned()) else {
        return answer(format!(
            "no recipe for {} branch {}, which pull request #{} targets",
            pr.repository, pr.base, pr.number
        ));
    };
    let lineage = Lineage { before: pr.before, forced: false };
    let source = Source {
        project: project.to_string(),
        repository: pr.repository,
        branch,
        commit: pr.head_sha,
        message: pr.title,
        author: pr.user,
    };
    Decision::Build(Box::new(recipe), source, lineage)
}

fn decide(app: &App, project: &str, event: &str, body: &[u8]) -> Decision {
    let answer = |code, message: String| Decision::Answer(code, json!({ "message": message, "builds": [] }));
    let refuse = |code, error: String| Decision::Answer(code, json!({ "error": error }));
    let Some(settings) = app.config.projects.get(project) else {
        return refuse(StatusCode::NOT_FOUND, format!("no project {project:?} is configured"));
    };
    let push = match parse_event(event, body) {
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("malformed {event} payload: {e}")),
        Ok(Event::Ping) => return Decision::Answer(StatusCode::OK, json!({ "message": "pong" })),
        Ok(Event::Other(name)) => {
            let message = format!("event {name} ignored: only push and pull_request are acted on");
            return answer(StatusCode::ACCEPTED, message);
        }
        Ok(Event::PullRequest(pr)) => return decide_pull_request(app, project, pr),
        Ok(Event::Command(command)) => return Decision::Command(command),
        Ok(Event::Push(push)) => push,
    };
    let branch = match push.branch() {
        None => {
            return answer(
                StatusCode::OK,
                format!("{} is not a branch: tags and other refs start no build", push.git_ref),
            );
        }
        Some(Err(e)) => return refuse(StatusCode::BAD_REQUEST, format!("refused ref {:?}: {e}", push.git_ref)),
        Some(Ok(branch)) => branch,
    };
    if push.deleted || push.after.is_zero() {
        return answer(StatusCode::OK, format!("branch {branch} of {} was deleted: nothing to build", push.repository));
    }
    if push.repository.as_str() == settings.recipes {
        if branch.as_str() != settings.branch {
            let message =
                format!("branch {branch} of the recipes repository is not loaded (project loads {})", settings.branch);
            return answer(StatusCode::OK, message);
        }
        return Decision::Reload(push.after);
    }
    let Some(recipes) = app.recipes.get(project) else {
        let error = format!(
            "the recipes of project {project} are not loaded: see the last reload in /build/history?repository={}",
            settings.recipes
        );
        return refuse(StatusCode::SERVICE_UNAVAILABLE, error);
    };
    let Some(recipe) = recipes.get(&push.repository, &branch).cloned() else {
        return answer(StatusCode::OK, format!("no recipe for {} branch {branch}: nothing to build", push.repository));
    };
    let lineage = Lineage { before: push.before, forced: push.forced };
    let source = Source {
        project: project.to_string(),
        repository: push.repository,
        branch,
        commit: push.after,
        message: push.message,
        author: push.author,
    };
    Decision::Build(Box::new(recipe), source, lineage)
}

async fn carry_out(app: &Arc<App>, project: &str, decision: Decision) -> Result<(StatusCode, Value), ApiError> {
    match decision {
        Decision::Answer(code, answer) => Ok((code, answer)),
        Decision::Reload(sha) => {
            let message = format!("reloading recipes at {}", sha.short());
            let (app, project) = (app.clone(), project.to_string());
            tokio::spawn(async move {
                if let Err(e) = reload(&app, &project, Some(sha)).await {
                    tracing::error!(project, "recipes reload failed: {e:#}");
                }
            });
            Ok(said(StatusCode::ACCEPTED, message))
        }
        Decision::Command(command) => run_command(app, project, command).await,
        Decision::Cancel(repository, branch, reason) => {
            let cancelled = app.active.cancel_branch(project, &repository, &branch, &reason);
            Ok(said(StatusCode::OK, format!("{reason}: {cancelled} builds cancelled")))
        }
        Decision::Build(recipe, source, lineage) => queue_builds(app, &recipe, source, &lineage).await,
    }
}

/// Queues one build per script of `recipe` (superseding the branch's builds of other commits);
/// the answer. A commit older than one already seen on the branch starts and cancels nothing,
/// and a script already queued or running for this very commit is not started again.
async fn queue_builds(
    app: &Arc<App>,
    recipe: &Recipe,
    source: Source,
    lineage: &Lineage,
) -> Result<(StatusCode, Value), ApiError> {
    let _turn = app.heads.turn(&source).await;
    let (repository, branch, commit) = (source.repository.clone(), source.branch.clone(), source.commit.clone());
    if let Some(newer) = newer_than(app, &source, lineage).await {
        let message = format!(
            "{} is older than {}, already seen on {repository} {branch}: nothing started or cancelled",
            commit.short(),
            newer.short()
        );
        return Ok(said(StatusCode::OK, message));
    }
    app.heads.saw(&source);
    let enqueued = enqueue(app, recipe, source, true).await?;
    let (code, message) = match (enqueued.queued.len(), enqueued.already.len()) {
        (0, _) => (StatusCode::OK, format!("already building {} for {repository} {branch}", commit.short())),
        (queued, 0) => {
            (StatusCode::ACCEPTED, format!("{queued} builds queued for {repository} {branch} at {}", commit.short()))
        }
        (queued, already) => (
            StatusCode::ACCEPTED,
            format!(
                "{queued} builds queued for {repository} {branch} at {}; {already} already building",
                commit.short()
            ),
        ),
    };
    let ids: Vec<_> = enqueued.queued.iter().chain(&enqueued.already).copied().collect();
    let urls: Vec<String> = ids.iter().map(|id| app.build_url(*id)).collect();
    Ok((code, json!({ "message": message, "builds": ids, "urls": urls })))
}

/// `@autobuilder rebuild` builds the pull request's head (a fork too: someone with write access
/// asked); `@autobuilder status` answers with a comment listing each build script's last result
/// for the head commit. Only users with write access are heard.
async fn run_command(app: &Arc<App>, project: &str, command: Command) -> Result<(StatusCode, Value), ApiError> {
    let Some(github) = &app.github else {
        return Ok(said(StatusCode::OK, "pull request commands need a GitHub token or app in [github]".into()));
    };
    let unreachable = |e: anyhow::Error| ApiError::new(StatusCode::BAD_GATEWAY, format!("GitHub: {e:#}"));
    let (repo, number, user) = (&command.repository, command.number, &command.user);
    if !github.can_write(repo, user).await.map_err(unreachable)? {
        return Ok(said(StatusCode::OK, format!("{user} has no write access to {repo}: command ignored")));
    }
    let pr = github.pull_request(repo, number).await.map_err(unreachable)?;
    let Some(recipe) = app.recipes.get(project).and_then(|set| set.get(repo, &pr.base).cloned()) else {
        return Ok(said(StatusCode::OK, format!("no recipe for {repo} branch {}, which #{number} targets", pr.base)));
    };
    let branch = Branch::parse(&format!("pull/{number}")).expect("a valid branch name");
    match command.kind {
        CommandKind::Rebuild => {
            let source = Source {
                project: project.to_string(),
                repository: repo.clone(),
                branch,
                commit: pr.head_sha,
                message: pr.title,
                author: pr.user,
            };
            queue_builds(app, &recipe, source, &Lineage::default()).await
        }
        CommandKind::Status => {
            let filter = HistoryFilter {
                limit: Some(MAX_HISTORY),
                repository: Some(repo.to_string()),
                branch: Some(branch.to_string()),
                status: None,
            };
            let history = app.store.history(&filter).await?;
            let mut lines = Vec::new();
            let mut green = true;
            for script in &recipe.scripts {
                let last = history.iter().find(|b| b.commit == pr.head_sha.as_str() && b.script == script.script);
                let result = match last {
                    Some(b) => {
                        format!("{}{}", b.status, b.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default())
                    }
                    None => "not built".into(),
                };
                green &= last.is_some_and(|b| b.status == BuildStatus::Success);
                lines.push(format!("- `{}`: {result}", script.script));
            }
            let verdict =
                if green { "mergeable: every recipe is green" } else { "not mergeable yet: not every recipe is green" };
            let body = format!("autobuilder on {}:\n{}\n\n**{verdict}**", pr.head_sha.short(), lines.join("\n"));
            github.comment(repo, number, &body).await.map_err(unreachable)?;
            Ok(said(StatusCode::OK, format!("status of #{number} commented: {verdict}")))
        }
    }
}

fn said(code: StatusCode, message: String) -> (StatusCode, Value) {
    (code, json!({ "message": message, "builds": [] }))
}
