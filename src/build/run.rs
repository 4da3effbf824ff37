//! The life of one build: wait for a slot, check out, run the container, publish the artifact,
//! record and report the end, clean up. Cancellation is honoured at every step.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::log::BuildLog;
use super::queue::{Place, Slot};
use super::shipped_log::LogShipper;
use super::{ActiveBuild, BuildError, Cancel, Job, status_of};
use crate::app::App;
use crate::artifacts::{ArtifactNames, Published};
use crate::docker::{
    ContainerSpec, ExitState, ImageOwner, LABEL_BRANCH, LABEL_COMMIT, LABEL_PROJECT, LABEL_RECIPES, LABEL_REPOSITORY,
    RunError,
};
use crate::model::{BuildId, BuildStatus, Outcome, Output};
use crate::recipes::ArtifactFormat;
use crate::recipes::chains::{ImageSource, branch_tag, commit_tag, project_image, pulled_from};
use crate::store::{Backend, Claim, Holder, ImageRecord, Lease};

/// Runs a queued build to its end: waits for its turn (leaving the queue when cancelled first),
/// claims it, runs it.
pub(super) async fn run(app: &Arc<App>, id: BuildId, active: Arc<ActiveBuild>, mut place: Place) {
    let project = active.job.source.project.clone();
    let mut said = false;
    let (_slot, lease) = loop {
        let slot = tokio::select! {
            slot = app.queue.slot(place) => Some(slot),
            () = active.cancel.cancelled() => None,
        };
        let Some(slot) = slot else {
            let outcome = Outcome::failed(BuildStatus::Cancelled, active.cancel.reason());
            return finish(app, id, &active, outcome, None, None).await;
        };
        match claim(app, id, &project).await {
            Ok(Claim::Claimed(build, lease)) => {
                app.announce(&build);
                app.metrics.observe_start(&build);
                break (slot, lease);
            }
            Ok(Claim::NotQueued) => {
                tracing::info!(build = %id, "claimed by another worker, or ended, before its turn here");
                return app.active.remove(id, &active);
            }
            Ok(Claim::ProjectAtLimit) => {
                if !std::mem::replace(&mut said, true) {
                    tracing::info!(build = %id, "its project runs its limit of builds on other hosts: waiting");
                }
            }
            Err(e) => {
                let outcome = Outcome::failed(BuildStatus::Error, format!("history database failed: {e}"));
                return finish(app, id, &active, outcome, None, None).await;
            }
        }
        // Out of the queue meanwhile, so that other projects' builds take the slot; back in at
        // its turn (queue order is build order).
        drop(slot);
        tokio::time::sleep(LIMIT_POLL).await;
        place = app.queue.enter(id, &project);
    };
    run_claimed(app, id, active, lease).await;
}

/// How often a build whose project runs its limit on other hosts looks again.
const LIMIT_POLL: Duration = Duration::from_millis(500);

/// Claims build `id` for this process; with a PostgreSQL history, only while its project runs
/// fewer than its `concurrency` over every host (this process's queue keeps the limit among its
/// own builds, not among the workers').
async fn claim(app: &App, id: BuildId, project: &str) -> anyhow::Result<Claim> {
    let lease_for = app.config.worker.lease();
    let limit = app.config.projects.get(project).map_or(0, |p| p.concurrency);
    if app.store.backend() == Backend::Postgres && limit > 0 {
        return app.store.claim_within_limit(id, &app.worker, lease_for, project, limit).await;
    }
    Ok(match app.store.claim(id, &app.worker, lease_for).await? {
        Some((build, lease)) => Claim::Claimed(Box::new(build), lease),
        None => Claim::NotQueued,
    })
}

/// Runs a build this process claimed under `lease`, to its end.
pub(super) async fn run_claimed(app: &Arc<App>, id: BuildId, active: Arc<ActiveBuild>, lease: Lease) {
    active.lease.set(lease).expect("a build is claimed once per process");
    super::lease::hold(app, &active, lease);
    active.running.store(true, Ordering::Relaxed);
    let stopping = announce_stop(app, id, &active);

    let mut log = match BuildLog::create(&app.config.logs_dir(), id, app.bus.clone()).await {
        Ok(log) => log.masking(secrets_of(app, &active.job)).capped(app.config.builds.max_log_bytes),
        Err(e) => {
            let outcome = Outcome::failed(BuildStatus::Error, format!("cannot create the build log: {e}"));
            stopping.abort();
            return finish(app, id, &active, outcome, None, None).await;
        }
    };
    let shipper = ship_log(app, lease);
    let mut container = None;
    let workspace = new_workspace(app, id);
    let result = match &workspace {
        Ok(workspace) => execute(app, id, &active, workspace, &mut log, &mut container).await,
        Err(e) => Err(e.clone()),
    };
    let outcome = conclude(app, id, &active, result, log).await;
    stopping.abort();
    if let Some(shipper) = shipper {
        shipper.finish().await;
    }
    finish(app, id, &active, outcome, container, workspace.ok()).await;
}

/// Ships the build log to a PostgreSQL history as it grows, for the other hosts.
fn ship_log(app: &App, lease: Lease) -> Option<LogShipper> {
    (app.store.backend() == Backend::Postgres)
        .then(|| LogShipper::start(app.store.clone(), app.config.logs_dir(), lease))
}

/// Tells the live pages when the running build `id` is asked to stop, so that they say
/// "cancelling" during its stop grace period rather than "running".
fn announce_stop(app: &Arc<App>, id: BuildId, active: &Arc<ActiveBuild>) -> tokio::task::JoinHandle<()> {
    let (bus, active) = (app.bus.clone(), active.clone());
    tokio::spawn(async move {
        active.cancel.cancelled().await;
        bus.publish(crate::bus::Event::Stopping { id, reason: active.cancel.reason() });
    })
}

/// Continues a build whose container outlived a restart of autobuilder.
pub(super) async fn reattach(
    app: &Arc<App>,
    id: BuildId,
    active: Arc<ActiveBuild>,
    slot: Slot,
    container: String,
    workspace: PathBuf,
    lease: Lease,
) {
    let _slot = slot;
    active.lease.set(lease).expect("a build is claimed once per process");
    super::lease::hold(app, &active, lease);
    active.running.store(true, Ordering::Relaxed);
    let shipper = ship_log(app, lease);
    let result = async {
        let mut log = BuildLog::reopen(&app.config.logs_dir(), id, app.bus.clone())
            .await
            .map_err(BuildError::log)?
            .masking(secrets_of(app, &active.job))
            .capped(app.config.builds.max_log_bytes);
        log.note("re-attached after a restart of autobuilder: output printed while it was down is not in this log");
        let result = resume(app, id, &active, &container, &workspace, &mut log).await;
        Ok::<_, BuildError>((result, log))
    }
    .await;
    let outcome = match result {
        Ok((result, log)) => conclude(app, id, &active, result, log).await,
        Err(e) => Outcome::failed(e.status(), public(app, &e.to_string())),
    };
    if let Some(shipper) = shipper {
        shipper.finish().await;
    }
    finish(app, id, &active, outcome, Some(container), Some(workspace)).await;
}

/// Waits for a re-attached container within what is left of the time limit, counted from the
/// build's real start, then goes on as a normal build does.
async fn resume(
    app: &Arc<App>,
    id: BuildId,
    active: &ActiveBuild,
    container: &str,
    workspace: &Path,
    log: &mut BuildLog,
) -> Result<Results, BuildError> {
    let limits = super::limits::resolve(&app.config.builds, &active.job.script.limits).map_err(BuildError::Limits)?;
    let started = app.store.get(id).await.ok().flatten().and_then(|b| b.started);
    let elapsed = started.map(|t| (time::OffsetDateTime::now_utc() - t).unsigned_abs()).unwrap_or_default();
    let left = limits.timeout.saturating_sub(elapsed);
    let grace = Duration::from_secs(app.config.builds.cancel_grace_seconds);
    let run = app.docker.resume_wait(container, log, left, active.cancel.token(), grace).await;
    script_end(run, &active.cancel, limits.timeout)?;
    after_script(app, id, active, container, workspace, log).await
}

/// What a build's log masks: the project's secrets and every credential autobuilder holds (the
/// clone URL's token, the GitHub token, the hub token), should a build ever come across one.
fn secrets_of(app: &App, job: &Job) -> Vec<String> {
    let project = app.config.projects.get(&job.source.project);
    let mut secrets: Vec<String> =
        project.map(|p| p.secrets.values().map(|s| s.expose().to_string()).collect()).unwrap_or_default();
    secrets.extend(crate::git::url_secrets(&app.config.git.clone_url));
    for token in [&app.config.github.token, &app.config.artifacts.hub.token, &app.config.admin_token] {
        if !token.is_empty() {
            secrets.push(token.expose().to_string());
        }
    }
    secrets
}

/// `text` for the public (build record, commit status, build log) without the host's paths:
/// tmp_directory, data_dir, the artifact directory and Docker's own directories are named, not shown.
/// The details go to the server log.
fn public(app: &App, text: &str) -> String {
    let paths = [
        (app.config.tmp_directory.display().to_string(), "<tmp_directory>"),
        (app.config.data_dir.display().to_string(), "<data_dir>"),
        (app.config.artifacts.directory.display().to_string(), "<artifacts directory>"),
        (app.artifacts.directory().display().to_string(), "<artifacts directory>"),
    ];
    hide_paths(text, &paths)
}

/// `text` with every one of `paths` replaced by its name, and anything under /var/lib/docker too.
fn hide_paths(text: &str, paths: &[(String, &str)]) -> String {
    let mut paths: Vec<&(String, &str)> = paths.iter().filter(|(path, _)| path.len() > 1).collect();
    paths.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
    let mut text = text.to_string();
    for (path, name) in paths {
        text = text.replace(path.as_str(), name);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(at) = rest.find("/var/lib/docker/") {
        out.push_str(&rest[..at]);
        out.push_str("<docker data>");
        rest = &rest[at..];
        rest = &rest[rest.find(|c: char| c.is_whitespace() || "\"':,;)]".contains(c)).unwrap_or(rest.len())..];
    }
    out.push_str(rest);
    out
}

/// A fresh directory for one build under `tmp_directory`, named so that recovery finds it.
fn new_workspace(app: &App, id: BuildId) -> Result<PathBuf, BuildError> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("{}{id}-", app.temp_prefix()))
        .tempdir_in(&app.config.tmp_directory)
        .map_err(|e| in_tmp_directory(app, "cannot create a build directory", &e.to_string()))?;
    Ok(dir.keep())
}

/// A one-line reason for a failure writing under `tmp_directory`, saying so when it is full (the
/// path is in the server log only).
fn in_tmp_directory(app: &App, what: &str, error: &str) -> BuildError {
    tracing::warn!(tmp_directory = %app.config.tmp_directory.display(), "{what}: {error}");
    if error.contains("No space left on device") || error.contains("os error 28") {
        BuildError::Internal(format!("no space left in tmp_directory: {what}"))
    } else {
        BuildError::Internal(format!("{what} in tmp_directory: {}", public(app, error)))
    }
}

async fn execute(
    app: &Arc<App>,
    id: BuildId,
    active: &ActiveBuild,
    workspace: &Path,
    log: &mut BuildLog,
    container: &mut Option<String>,
) -> Result<Results, BuildError> {
    let job = &active.job;
    let limits = super::limits::resolve(&app.config.builds, &job.script.limits).map_err(BuildError::Limits)?;
    let (source, archives) = (workspace.join("src"), workspace.join("archives"));
    std::fs::create_dir_all(&archives)
        .map_err(|e| in_tmp_directory(app, "cannot create the archives", &e.to_string()))?;
    let reused = app.kept.take(&job.source.repository, &job.source.branch, &source);
    checkout(app, active, &source, reused, log).await?;
    let image = job.script.baseimage.as_deref().unwrap_or(&app.config.docker.default_image);
    if let Some(baseimage) = &job.script.baseimage {
        // Settings stored before a rebuild were checked by an older autobuilder: check again.
        crate::recipes::chains::check_baseimage(&app.config, &job.source.project, baseimage)
            .map_err(|reason| BuildError::ImagePull { image: baseimage.clone(), reason })?;
    }
    log.phase("image");
    match &job.script.from {
        // autobuilder's own images are never pulled: they come from the producer's build.
        Some(from) => wait_for_image(app, active, from, image, log).await?,
        None => tokio::select! {
            result = ensure_image(app, image, log) => result?,
            () = active.cancel.cancelled() => return Err(BuildError::Cancelled(active.cancel.reason())),
        },
    }
    let mount = format!("/{}", job.source.repository.name());
    log.phase("script");
    log.note(&format!("running {} in {image}", job.script.script));
    log.write_pending().await.map_err(BuildError::log)?;
    let mut env = vec![
        format!("AUTOBUILDER_BUILD_ID={id}"),
        format!("AUTOBUILDER_REPOSITORY={}", job.source.repository),
        format!("AUTOBUILDER_BRANCH={}", job.source.branch),
        format!("AUTOBUILDER_COMMIT={}", job.source.commit),
    ];
    if let Some(project) = app.config.projects.get(&job.source.project) {
        env.extend(project.secrets.iter().map(|(name, value)| format!("{name}={}", value.expose())));
    }
    let spec = ContainerSpec {
        build: id,
        image,
        source: (&source, mount.clone()),
        archives: (&archives, job.script.archives.clone()),
        script: format!("{mount}/{}", job.script.script),
        env,
        labels: HashMap::from([
            (LABEL_PROJECT.into(), job.source.project.clone()),
            (LABEL_REPOSITORY.into(), job.source.repository.to_string()),
            (LABEL_BRANCH.into(), job.source.branch.to_string()),
            (LABEL_COMMIT.into(), job.source.commit.to_string()),
        ]),
        limits: limits.container,
    };
    let id_of_container = app.docker.create(spec).await?;
    *container = Some(id_of_container.clone());
    let grace = Duration::from_secs(app.config.builds.cancel_grace_seconds);
    let cancel = active.cancel.token();
    let run = app.docker.attach_and_wait(&id_of_container, true, log, limits.timeout, cancel, grace).await;
    script_end(run, &active.cancel, limits.timeout)?;
    after_script(app, id, active, &id_of_container, workspace, log).await
}

/// Makes sure `image` is on the host, pulling it when absent and its registry is one of
/// `[docker] allowed_registries` (Docker Hub for names without a host).
async fn ensure_image(app: &App, image: &str, log: &mut BuildLog) -> Result<(), BuildError> {
    if app.docker.has_image(image).await? {
        return Ok(());
    }
    let registry = pulled_from(image);
    if !app.config.docker.allowed_registries.iter().any(|allowed| allowed == registry) {
        let reason = format!(
            "it is not on the Docker host, and autobuilder pulls only from [docker] allowed_registries: \
             `docker pull` or `docker load` it there, or add {registry} to allowed_registries"
        );
        return Err(BuildError::ImagePull { image: image.to_string(), reason });
    }
    log.note(&format!("image {image} is not on this host: pulling it"));
    app.docker.pull(image).await.map_err(|e| BuildError::ImagePull { image: image.to_string(), reason: e.0 })
}

/// How the script ended, as the build sees it: out of memory, a non-zero exit, the time limit
/// (`timeout`, the build's whole limit) and a cancel (with its reason) are its errors.
fn script_end(run: Result<ExitState, RunError>, cancel: &Cancel, timeout: Duration) -> Result<(), BuildError> {
    match run {
        Ok(ExitState { oom_killed: true, memory_limit, .. }) => Err(BuildError::OutOfMemory(memory_limit)),
        Ok(ExitState { code: 0, .. }) => Ok(()),
        Ok(ExitState { code, .. }) => Err(BuildError::ScriptFailed(code)),
        Err(RunError::TimedOut) => Err(BuildError::Timeout(timeout.as_secs().div_ceil(60))),
        Err(RunError::Cancelled) => Err(BuildError::Cancelled(cancel.reason())),
        Err(RunError::Output(e)) => Err(BuildError::log(e)),
        Err(RunError::Engine(e)) => Err(e.into()),
    }
}

/// What follows a script that exited 0, for a normal and a re-attached build alike: the image
/// commit, then publishing.
async fn after_script(
    app: &Arc<App>,
    id: BuildId,
    active: &ActiveBuild,
    container: &str,
    workspace: &Path,
    log: &mut BuildLog,
) -> Result<Results, BuildError> {
    let job = &active.job;
    if active.cancel.is_cancelled() {
        return Err(BuildError::Cancelled(active.cancel.reason()));
    }
    // Nothing is committed or published for a build another worker took over.
    super::lease::still_held(app, active).await?;
    log.phase("publish");
    if let Some(image) = &job.script.commit {
        commit_image(app, active, container, image, log).await?;
    }
    publish(app, id, job, workspace, log).await
}

/// Commits the build container as `<image>:<branch>` and `<image>:<branch>-<sha10>`, then removes
/// this branch's images beyond `[docker] keep_images`. Only the project's own image name is ever
/// committed to, and never over an image made for another project, repository or branch.
/// Where it was committed is recorded, for the builds that start from it to run on this engine.
async fn commit_image(
    app: &App,
    active: &ActiveBuild,
    container: &str,
    image: &str,
    log: &mut BuildLog,
) -> Result<(), BuildError> {
    let job = &active.job;
    let own = project_image(&job.source.project, &job.source.repository);
    if image != own {
        return Err(BuildError::Docker(format!("refusing to commit to {image}: this build's image is {own}")));
    }
    let (branch_tag, sha_tag) = (branch_tag(&job.source.branch), commit_tag(&job.source.branch, &job.source.commit));
    log.note(&format!("committing the container as {image}:{branch_tag} and {image}:{sha_tag}"));
    let labels = HashMap::from([
        (LABEL_COMMIT.to_string(), job.source.commit.to_string()),
        (LABEL_RECIPES.to_string(), job.script.recipes_commit.clone().unwrap_or_default()),
    ]);
    let (repository, branch) = (job.source.repository.to_string(), job.source.branch.to_string());
    let owner = ImageOwner { project: &job.source.project, repository: &repository, branch: &branch };
    app.docker.commit(container, image, (&branch_tag, &sha_tag), &owner, labels).await?;
    if let Some(lease) = active.lease.get() {
        let key = (job.source.project.clone(), repository.clone(), branch.clone());
        match app.store.record_image(*lease, &key, &app.worker, job.source.commit.as_str()).await {
            Ok(ImageRecord::Recorded) => {}
            Ok(ImageRecord::LaterRecorded) => log.note(&format!(
                "a later build of this branch recorded its image first: it stays the newest in the history \
                 (here, {image}:{branch_tag} names this build's until the branch builds again)"
            )),
            Ok(ImageRecord::LeaseLost) => return Err(BuildError::Cancelled(super::lease::TAKEN_OVER.into())),
            Err(e) => {
                return Err(BuildError::Internal(format!(
                    "the image was committed, but the history cannot record on which engine: {e:#}"
                )));
            }
        }
    }
    match app.docker.prune_images(image, &owner, &branch_tag, app.config.docker.keep_images).await {
        Ok(0) => {}
        Ok(n) => log.note(&format!("removed {n} older images of {image}:{branch_tag}")),
        Err(e) => log.note(&format!("cannot remove older images of {image}: {e:#}")),
    }
    Ok(())
}

/// Waits for the image a `from` names: while its producer builds it, or fails saying who makes it.
async fn wait_for_image(
    app: &App,
    active: &ActiveBuild,
    from: &ImageSource,
    image: &str,
    log: &mut BuildLog,
) -> Result<(), BuildError> {
    let project = &active.job.source.project;
    let history = |e: anyhow::Error| BuildError::Internal(format!("cannot read where the image of {from} is: {e:#}"));
    let mut said = false;
    loop {
        let here = matches!(app.docker.has_image(image).await, Ok(true));
        let elsewhere = super::images::made_elsewhere(app, project, from).await.map_err(history)?;
        if here && elsewhere.is_none() {
            return Ok(());
        }
        // An image here older than the newest is never used.
        if here || !super::images::producing_anywhere(app, project, from).await.map_err(history)? {
            let reason = match elsewhere {
                Some(elsewhere) => elsewhere,
                None => format!("no build of {from} has made it yet: push {} {} first", from.repository, from.branch),
            };
            return Err(BuildError::ImagePull { image: image.to_string(), reason });
        }
        if !said {
            log.note(&format!("waiting for the build of {from} to make {image}"));
            log.write_pending().await.map_err(BuildError::log)?;
            said = true;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
            () = active.cancel.cancelled() => return Err(BuildError::Cancelled(active.cancel.reason())),
        }
    }
}

/// Checks out the pushed commit (see `git::check_out`), retrying a flaky remote (`[git] retries`,
/// doubling delays).
/// `reused`: `source` holds the working copy of an earlier build of the branch.
async fn checkout(
    app: &App,
    active: &ActiveBuild,
    source: &Path,
    reused: bool,
    log: &mut BuildLog,
) -> Result<(), BuildError> {
    let job = &active.job;
    let wanted = crate::git::Wanted {
        url: app.config.clone_url(&job.source.repository),
        branch: job.source.branch.clone(),
        commit: job.source.commit.clone(),
        mirror: app.config.mirror_dir(&job.source.repository),
        depth: app.config.git.depth,
    };
    let mut delay = Duration::from_secs(app.config.git.retry_delay_seconds);
    log.phase("fetch");
    for attempt in 0..=app.config.git.retries {
        log.note(&format!("fetching {} {} at {}", job.source.repository, job.source.branch, job.source.commit));
        log.write_pending().await.map_err(BuildError::log)?;
        let (wanted, dest) = (wanted.clone(), source.to_path_buf());
        let started = std::time::Instant::now();
        let result = tokio::task::spawn_blocking(move || {
            if attempt > 0 && dest.exists() {
                // What a failed attempt left (maybe files it could not write) goes with the
                // build's directory, removed at its end: a new one is made.
                std::fs::rename(&dest, dest.with_file_name(format!("failed-checkout-{attempt}")))?;
            }
            crate::git::check_out(&wanted, &dest)
        })
        .await
        .expect("checkout does not panic");
        let error = match result {
            Ok(via) => {
                let into = if reused && attempt == 0 { ", into the working copy of an earlier build" } else { "" };
                log.note(&format!("checked out {via}{into} in {:.2}s", started.elapsed().as_secs_f64()));
                return Ok(());
            }
            Err(e) => format!("{e:#}"),
        };
        if error.contains("No space left on device") {
            return Err(in_tmp_directory(app, "cannot check out the source", &error));
        }
        if attempt == app.config.git.retries {
            let tries = if attempt == 0 { String::new() } else { format!(" (after {} attempts)", attempt + 1) };
            return Err(BuildError::Checkout(format!("{error}{tries}")));
        }
        log.note(&format!("{}: trying again in {}s", public(app, &error), delay.as_secs()));
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = active.cancel.cancelled() => return Err(BuildError::Cancelled(active.cancel.reason())),
        }
        delay *= 2;
    }
    unreachable!("the last attempt returns")
}

/// What a successful build published.
pub(super) struct Results {
    artifact: Published,
    outputs: Vec<Published>,
}

/// Checks the artifact (and the extra outputs) and publishes them, retrying a failing store
/// (`[artifacts] retries`). When every attempt fails, the file is kept under
/// `data_dir/unpublished/<id>/`.
async fn publish(
    app: &App,
    id: BuildId,
    job: &Job,
    workspace: &Path,
    log: &mut BuildLog,
) -> Result<Results, BuildError> {
    let archives = workspace.join("archives");
    let artifact = readable_file(&archives, &job.script.artifact, &job.script.archives)?;
    let names = ArtifactNames::new(
        &job.source.repository,
        job.script.tag.as_deref(),
        &job.source.branch,
        &job.source.commit,
        &job.script.artifact,
    );
    let artifact = publish_one(app, id, &artifact, &names, job.script.format, log).await?;
    let mut outputs = Vec::new();
    for output in &job.script.outputs {
        let file = readable_file(&archives, &output.file, &job.script.archives)?;
        let name = output.name_for(&job.source.repository, &job.source.branch);
        let names = ArtifactNames::output(&name, &job.source.branch, &job.source.commit, &output.file);
        outputs.push(publish_one(app, id, &file, &names, ArtifactFormat::Binary, log).await?);
    }
    Ok(Results { artifact, outputs })
}

/// `archives/<name>` when it is a regular file that autobuilder can read. Not followed: a symlink
/// made in the container would point at a file of the host. A file readable by no one (mode
/// 000, or `umask 077` under a service that is not root) is the script's to fix.
fn readable_file(archives: &Path, name: &str, in_container: &str) -> Result<PathBuf, BuildError> {
    use std::os::unix::fs::PermissionsExt;
    let path = archives.join(name);
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if meta.is_file() => {
            let unreadable = meta.permissions().mode() & 0o444 == 0
                || std::fs::File::open(&path).is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied);
            if unreadable { Err(BuildError::ArtifactUnreadable(name.to_string())) } else { Ok(path) }
        }
        _ => Err(BuildError::ArtifactMissing { artifact: name.to_string(), archives: in_container.to_string() }),
    }
}

async fn publish_one(
    app: &App,
    id: BuildId,
    file: &Path,
    names: &ArtifactNames,
    format: ArtifactFormat,
    log: &mut BuildLog,
) -> Result<Published, BuildError> {
    let mut delay = Duration::from_secs(app.config.artifacts.retry_delay_seconds);
    let mut attempt = 0;
    loop {
        match app.artifacts.publish(file, names, format).await {
            Ok(published) => return Ok(published),
            Err(reason) => {
                app.metrics.upload_failures.inc();
                if attempt == app.config.artifacts.retries {
                    let kept = app.config.data_dir.join("unpublished").join(id.to_string());
                    let keep = std::fs::create_dir_all(&kept)
                        .and_then(|()| std::fs::copy(file, kept.join(&names.versioned)).map(drop));
                    let where_kept = match keep {
                        Ok(()) => format!("; the artifact is kept in data_dir/unpublished/{id}"),
                        Err(e) => {
                            tracing::warn!(build = %id, "cannot keep the artifact in {}: {e}", kept.display());
                            "; the artifact could not be kept".to_string()
                        }
                    };
                    tracing::warn!(build = %id, "cannot publish {}: {reason}", names.versioned);
                    let reason = public(app, &reason);
                    let tries = if attempt == 0 { String::new() } else { format!(" (after {} attempts)", attempt + 1) };
                    return Err(BuildError::Upload(format!("{reason}{tries}{where_kept}")));
                }
                log.note(&format!("{}: trying again in {}s", public(app, &reason), delay.as_secs()));
                log.write_pending().await.map_err(BuildError::log)?;
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
        }
    }
}

/// Writes the end into the log and turns the result into the recorded outcome.
async fn conclude(
    app: &App,
    id: BuildId,
    active: &ActiveBuild,
    result: Result<Results, BuildError>,
    mut log: BuildLog,
) -> Outcome {
    let result = match result {
        Err(e) if active.cancel.is_cancelled() && !matches!(e, BuildError::Cancelled(_)) => {
            Err(BuildError::Cancelled(active.cancel.reason()))
        }
        other => other,
    };
    let outcome = match result {
        Ok(Results { artifact, outputs }) => {
            for published in std::iter::once(&artifact).chain(&outputs) {
                log.note(&format!("published {} (sha256 {})", published.name, published.sha256));
            }
            Outcome {
                status: BuildStatus::Success,
                error: None,
                artifact: Some(artifact.name),
                artifact_url: artifact.url,
                artifact_sha256: Some(artifact.sha256),
                outputs: (!outputs.is_empty()).then(|| {
                    outputs.into_iter().map(|p| Output { name: p.name, url: p.url, sha256: p.sha256 }).collect()
                }),
            }
        }
        Err(e) => {
            tracing::debug!(build = %id, kind = e.kind(), "build did not succeed: {e}");
            let said = public(app, &e.to_string());
            log.note(&format!("{}: {said}", e.status()));
            Outcome::failed(e.status(), said)
        }
    };
    app.metrics.log_lines.inc_by(log.lines());
    if let Err(e) = log.close().await {
        tracing::warn!(build = %id, "cannot finish the build log: {e}");
    }
    outcome
}

/// Records and reports the end, then removes the container and the workspace.
async fn finish(
    app: &Arc<App>,
    id: BuildId,
    active: &Arc<ActiveBuild>,
    outcome: Outcome,
    container: Option<String>,
    workspace: Option<PathBuf>,
) {
    let job = &active.job;
    let description = match outcome.status {
        BuildStatus::Success => format!("built {}", outcome.artifact.as_deref().unwrap_or("")),
        _ => outcome.error.clone().unwrap_or_default(),
    };
    tracing::info!(build = %id, repo = %job.source.repository, branch = %job.source.branch, status = %outcome.status, "{description}");
    // The working copy of a build whose script ran to its end (its container has stopped:
    // nothing writes to it any more) waits for the next build of its branch, from before that
    // build can be pushed.
    let ran = container.is_some() && matches!(outcome.status, BuildStatus::Success | BuildStatus::Failure);
    let mut removed: Vec<PathBuf> = workspace.iter().cloned().collect();
    if let Some(source) = workspace.as_ref().map(|w| w.join("src")).filter(|source| ran && source.is_dir()) {
        removed.extend(app.kept.keep(&job.source.repository, &job.source.branch, &source));
    }
    // No longer active before its end is seen: a push of the same commit from then on builds
    // it again rather than answering "already building" with a build that has ended.
    app.active.remove(id, active);
    // The end and its commit status are recorded together: a crash keeps both or neither.
    let status = app.statuses.outbox_row(status_of(app, job, id, outcome.status, description));
    // Written under the build's lease; a build never claimed only while it is still queued.
    let holder = active.lease.get().map_or(Holder::Queue, |lease| Holder::Lease(*lease));
    // Retried until the database takes it (a database restarting or unreachable for a while):
    // a build whose end is not recorded would stay `running` for good. Its container is kept
    // meanwhile, so that a restart of autobuilder re-attaches to it and records the end then.
    let mut delay = Duration::from_secs(1);
    let build = loop {
        match app.store.finish(id, &outcome, status.as_ref(), holder).await {
            Ok(Some(build)) => break Some(build),
            Ok(None) => break None,
            Err(e) => {
                tracing::error!(build = %id, "cannot record the end of the build (trying again in {delay:?}): {e:#}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    };
    super::lease::release(active);
    let recorded = build.is_some();
    match build {
        Some(build) => {
            app.statuses.wake();
            app.announce(&build);
            app.metrics.observe_end(&build);
        }
        None => refused(app, id, &outcome, holder).await,
    }
    if recorded
        && outcome.status == BuildStatus::Success
        && job.script.commit.is_some()
        && job.script.rebuild_dependents
    {
        let (app, job) = (app.clone(), job.clone());
        tokio::spawn(async move { super::rebuild_dependents(&app, &job).await });
    }
    if let Some(container) = container {
        app.docker.remove_later(container);
    }
    if !removed.is_empty() {
        let app = app.clone();
        tokio::spawn(async move {
            for dir in removed {
                remove_workspace(&app, dir).await;
            }
        });
    }
}

/// After the database refused a build's end: its lease is another worker's now (nothing of this
/// run is recorded), or it was claimed by a worker while this process was cancelling it in its
/// queue (the cancel is passed on to that worker).
async fn refused(app: &App, id: BuildId, outcome: &Outcome, holder: Holder) {
    match holder {
        Holder::Lease(_) => {
            tracing::warn!(build = %id, status = %outcome.status, "{}: this end is not recorded", super::lease::TAKEN_OVER)
        }
        _ if outcome.status == BuildStatus::Cancelled => {
            let reason = outcome.error.as_deref().unwrap_or("cancelled");
            match app.store.request_cancel(id, reason).await {
                Ok(true) => tracing::info!(build = %id, "claimed by another worker meanwhile: asked it to stop"),
                Ok(false) => tracing::info!(build = %id, "ended elsewhere meanwhile"),
                Err(e) => tracing::warn!(build = %id, "cannot pass the cancel on to the worker of the build: {e:#}"),
            }
        }
        _ => tracing::info!(build = %id, "claimed by another worker meanwhile: this end is not recorded"),
    }
}

/// Removes a build's directory (of this run, or left by a previous one). Build containers write
/// as root: what a service that is not root cannot remove is removed by a throwaway container of
/// the operator's `[docker] default_image` (never a build's own image), without network and with
/// only the capabilities removing needs. Every failure is logged.
pub(super) async fn remove_workspace(app: &App, workspace: PathBuf) {
    let dir = workspace.clone();
    let first = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&dir)).await.expect("does not panic");
    let Err(e) = first else { return };
    if !workspace.exists() {
        return;
    }
    tracing::info!("cannot remove {} ({e}): removing it with a container", workspace.display());
    if let Err(e) = app.docker.remove_as_root(&workspace, &app.config.docker.default_image).await {
        tracing::warn!("cannot remove {} with a container: {e:#}", workspace.display());
    }
    let dir = workspace.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&dir)).await.expect("does not panic") {
        tracing::warn!("build directory {} is left behind: {e}", workspace.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_errors_name_directories_instead_of_showing_them() {
        let paths = [("/srv/ab/tmp".to_string(), "<tmp_directory>"), ("/srv/ab".to_string(), "<data_dir>")];
        let text = "mkdir /srv/ab/tmp/7-x: denied; kept in /srv/ab/unpublished/7; \
                    error mounting \"/var/lib/docker/overlay2/abc/merged\": bad";
        assert_eq!(
            hide_paths(text, &paths),
            "mkdir <tmp_directory>/7-x: denied; kept in <data_dir>/unpublished/7; \
             error mounting \"<docker data>\": bad"
        );
    }

    #[test]
    fn how_a_container_ended_becomes_the_builds_error() {
        let (cancel, limit) = (Cancel::default(), Duration::from_secs(90));
        let exit = |code, oom_killed| Ok(ExitState { code, oom_killed, memory_limit: 8 << 20 });
        let said = |run| script_end(run, &cancel, limit).map_err(|e| (e.kind(), e.to_string()));
        assert_eq!(said(exit(0, false)), Ok(()));
        assert_eq!(said(exit(2, false)), Err(("ScriptFailed", "script exited 2".into())));
        assert_eq!(said(exit(137, true)), Err(("OutOfMemory", "script ran out of memory (limit 8 MiB)".into())));
        assert_eq!(said(Err(RunError::TimedOut)), Err(("Timeout", "timed out after 2 min".into())));
        let engine = Err(RunError::Engine(crate::docker::EngineError("lost the build output: gone".into())));
        assert_eq!(said(engine), Err(("Docker", "lost the build output: gone".into())));
        cancel.cancel("superseded by 0123456789");
        assert_eq!(said(Err(RunError::Cancelled)), Err(("Cancelled", "superseded by 0123456789".into())));
    }
}
