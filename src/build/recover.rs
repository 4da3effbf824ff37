//! After a restart (a crash, `kill -9`, or a graceful hand-over): builds a previous process left
//! running are re-attached when their container still exists, and end as `error: interrupted by
//! restart` when it does not; queued builds run; stray containers and temp dirs are removed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::run::reattach;
use super::{Job, start};
use crate::app::{App, Role};
use crate::model::{BuildId, BuildKind, BuildStatus, Outcome};
use crate::store::{Backend, Holder};

/// Reason recorded for builds a previous process left and that cannot go on.
pub const INTERRUPTED: &str = "interrupted by restart";

/// Takes over what a previous process left unfinished. Call once, after the recipes are loaded.
pub async fn resume(app: &Arc<App>) -> anyhow::Result<()> {
    let mut containers: HashMap<BuildId, (String, bool)> = HashMap::new();
    for leftover in app.docker.leftovers().await? {
        match leftover.build {
            Some(build) => {
                containers.insert(build, (leftover.id, leftover.running));
            }
            None => app.docker.remove_later(leftover.id),
        }
    }
    let mut workspaces: HashMap<BuildId, PathBuf> = HashMap::new();
    let prefix = app.temp_prefix();
    for entry in std::fs::read_dir(&app.config.tmp_directory)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let id = name.strip_prefix(&prefix).and_then(|rest| rest.split('-').next()).and_then(|n| n.parse().ok());
        match id {
            Some(id) => {
                workspaces.insert(BuildId(id), entry.path());
            }
            None if name.starts_with(&prefix) => remove_left_dir(app, entry.path()),
            None => {}
        }
    }

    // A serve that does not build still ends what nobody else will: reloads a crash left, builds
    // without readable settings.
    let unfinished = if app.builds_here() || app.role == Role::Serve { app.store.active().await? } else { Vec::new() };
    // Running builds first, so that they take the slots before the queued ones. Only this
    // worker's own: another's are held under its lease (and taken over when that runs out).
    let lease_for = app.config.worker.lease();
    for build in unfinished.iter().filter(|b| b.outcome.status == BuildStatus::Running) {
        // Builds without a worker are the serve's: recipes reloads, and builds run before
        // workers were recorded.
        // With the SQLite history every build is this serve's, whatever name it ran under (the
        // host name, its default, may have changed with the restart).
        let owner = match (&build.worker, app.store.backend()) {
            (None, _) if app.role == Role::Serve => app.worker.clone(),
            (Some(worker), Backend::Sqlite) => worker.clone(),
            (Some(worker), Backend::Postgres) if *worker == app.worker => app.worker.clone(),
            _ => continue,
        };
        let Some(lease) = app.store.reclaim(build.id, &owner, lease_for).await? else { continue };
        let job = job_of(app, build).await;
        match (job, containers.remove(&build.id), workspaces.remove(&build.id)) {
            (Some(job), Some((container, running)), Some(workspace)) => {
                tracing::info!(build = %build.id, running, "re-attaching to the build container");
                let slot = app.queue.slot_now(&job.source.project);
                let active = app.active.insert(build.id, job);
                let (app, id) = (app.clone(), build.id);
                tokio::spawn(async move { reattach(&app, id, active, slot, container, workspace, lease).await });
            }
            (job, container, workspace) => {
                tracing::warn!(build = %build.id, "build was {INTERRUPTED}: its container is gone");
                interrupt(app, build, job, Holder::Lease(lease)).await;
                if let Some((container, _)) = container {
                    app.docker.remove_later(container);
                }
                if let Some(workspace) = workspace {
                    remove_left_dir(app, workspace);
                }
            }
        }
    }
    // A worker claims queued builds from the database as its slots free up.
    let queued = unfinished.iter().filter(|b| b.outcome.status == BuildStatus::Queued);
    for build in queued.filter(|_| app.role == Role::Serve) {
        match job_of(app, build).await {
            Some(job) if super::runs_here(app, &job) => start(app, build.id, job),
            Some(_) => {} // for a worker with the labels its recipe asks for
            None => interrupt(app, build, None, Holder::Queue).await,
        }
    }
    for (_, (container, _)) in containers {
        app.docker.remove_later(container);
    }
    for (_, workspace) in workspaces {
        remove_left_dir(app, workspace);
    }
    Ok(())
}

/// Removes a build directory a previous process left, in the background (as after a build).
fn remove_left_dir(app: &Arc<App>, dir: PathBuf) {
    let app = app.clone();
    tokio::spawn(async move { super::run::remove_workspace(&app, dir).await });
}

/// The job of a stored build, or None for a reload or a build without readable settings.
async fn job_of(app: &App, build: &crate::model::Build) -> Option<Job> {
    if build.new.kind != BuildKind::Build {
        return None;
    }
    let settings = app.store.settings(build.id).await.ok().flatten()?;
    Job::of(build, &settings).ok()
}

/// Ends a build as `error: interrupted by restart` and posts that status.
async fn interrupt(app: &Arc<App>, build: &crate::model::Build, job: Option<Job>, holder: Holder) {
    let status = job.and_then(|job| {
        app.statuses.outbox_row(super::status_of(app, &job, build.id, BuildStatus::Error, INTERRUPTED.into()))
    });
    match app.store.finish(build.id, &Outcome::failed(BuildStatus::Error, INTERRUPTED), status.as_ref(), holder).await {
        Ok(Some(ended)) => {
            app.statuses.wake();
            app.announce(&ended);
        }
        Ok(None) => tracing::info!(build = %build.id, "claimed by another worker meanwhile"),
        Err(e) => tracing::error!(build = %build.id, "cannot record the end of the build: {e:#}"),
    }
}
