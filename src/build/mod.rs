//! Builds: queued from a push, run one container per build script, artifact published, result
//! recorded and reported. Every path ends in a final status; containers and temp dirs always go.
//! Builds can be cancelled (by an admin, or superseded by a newer push) and survive a restart.

pub mod images;
pub mod kept;
mod lease;
pub mod limits;
pub mod log;
pub mod order;
pub mod queue;
mod recover;
pub mod reload;
mod run;
pub mod shipped_log;
pub mod trigger;
pub mod worker;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

pub use lease::sweep_lost;
pub use recover::resume;

use crate::app::{App, Role};
use crate::github::status::CommitStatus;
use crate::model::{Branch, Build, BuildId, BuildKind, BuildStatus, CommitSha, NewBuild, RepoName};
use crate::recipes::chains::{ImageSource, dependents};
use crate::recipes::{BuildScript, Recipe};
use crate::store::{Backend, Holder, Lease};

/// Why a build did not succeed. `status()` tells the commit's fault (`failure`) from the
/// infrastructure's (`error`); `Display` is the one-line reason users see.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    Checkout(String),
    #[error("image {image} is not available: {reason}")]
    ImagePull { image: String, reason: String },
    #[error("{0}")]
    Docker(String),
    #[error("script exited {}{}", .0, signal_note(*.0))]
    ScriptFailed(i64),
    #[error("script ran out of memory (limit {} MiB)", .0 >> 20)]
    OutOfMemory(i64),
    #[error("timed out after {0} min")]
    Timeout(u64),
    #[error("artifact {artifact} not found in {archives}")]
    ArtifactMissing { artifact: String, archives: String },
    #[error("artifact {0} is not readable by autobuilder: make it readable in the script (e.g. chmod a+r {0})")]
    ArtifactUnreadable(String),
    #[error("{0}")]
    Upload(String),
    #[error("{0}")]
    Limits(String),
    #[error("{0}")]
    Cancelled(String),
    #[error("{0}")]
    Internal(String),
}

fn signal_note(code: i64) -> String {
    match code {
        137 => " (killed: SIGKILL)".into(),
        143 => " (terminated: SIGTERM)".into(),
        _ => String::new(),
    }
}

impl BuildError {
    /// A stable name of the cause, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            BuildError::Checkout(_) => "Checkout",
            BuildError::ImagePull { .. } => "ImagePull",
            BuildError::Docker(_) => "Docker",
            BuildError::ScriptFailed(_) => "ScriptFailed",
            BuildError::OutOfMemory(_) => "OutOfMemory",
            BuildError::Timeout(_) => "Timeout",
            BuildError::ArtifactMissing { .. } => "ArtifactMissing",
            BuildError::ArtifactUnreadable(_) => "ArtifactUnreadable",
            BuildError::Upload(_) => "Upload",
            BuildError::Limits(_) => "Limits",
            BuildError::Cancelled(_) => "Cancelled",
            BuildError::Internal(_) => "Internal",
        }
    }

    /// `failure` when the commit is to blame (script, limits, missing artifact), `cancelled` when
    /// someone or something asked, `error` otherwise.
    pub fn status(&self) -> BuildStatus {
        match self {
            BuildError::ScriptFailed(_)
            | BuildError::OutOfMemory(_)
            | BuildError::Timeout(_)
            | BuildError::ArtifactMissing { .. }
            | BuildError::ArtifactUnreadable(_) => BuildStatus::Failure,
            BuildError::Cancelled(_) => BuildStatus::Cancelled,
            _ => BuildStatus::Error,
        }
    }

    pub fn log(error: std::io::Error) -> Self {
        BuildError::Internal(format!("cannot write the build log: {error}"))
    }
}

impl From<crate::docker::EngineError> for BuildError {
    fn from(error: crate::docker::EngineError) -> Self {
        BuildError::Docker(error.0)
    }
}

/// The pushed commit a build is for.
#[derive(Debug, Clone)]
pub struct Source {
    pub project: String,
    pub repository: RepoName,
    pub branch: Branch,
    pub commit: CommitSha,
    pub message: Option<String>,
    pub author: Option<String>,
}

impl Source {
    pub fn new(
        project: &str,
        repository: RepoName,
        branch: Branch,
        commit: CommitSha,
        message: Option<String>,
        author: Option<String>,
    ) -> Self {
        Self { project: project.to_string(), repository, branch, commit, message, author }
    }
}

/// What one build needs to run: the commit and one build script of its recipe.
#[derive(Debug, Clone)]
pub struct Job {
    pub source: Source,
    pub script: BuildScript,
}

impl Job {
    /// The job of a stored build, from its record and the recipe settings stored with it.
    fn of(build: &Build, settings: &str) -> anyhow::Result<Self> {
        let new = &build.new;
        Ok(Job {
            source: Source::new(
                &new.project,
                new.repository.clone(),
                new.branch.clone(),
                new.commit.clone().context("this entry has no commit (a recipes reload?)")?,
                new.message.clone(),
                new.author.clone(),
            ),
            script: serde_json::from_str(settings).context("unreadable recipe settings")?,
        })
    }
}

/// A request to stop a build, with the first reason given.
#[derive(Default)]
pub struct Cancel {
    token: CancellationToken,
    reason: Mutex<Option<String>>,
}

impl Cancel {
    /// Asks the build to stop; the first reason is the one recorded.
    pub fn cancel(&self, reason: &str) {
        self.reason.lock().expect("not poisoned").get_or_insert_with(|| reason.to_string());
        self.token.cancel();
    }
    pub async fn cancelled(&self) {
        self.token.cancelled().await
    }
    /// The token that fires on [`Cancel::cancel`] (after the reason is recorded).
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }
    pub fn reason(&self) -> String {
        self.reason.lock().expect("not poisoned").clone().unwrap_or_else(|| "cancelled".into())
    }
}

/// A build that is queued or running in this process.
pub struct ActiveBuild {
    pub job: Job,
    pub cancel: Cancel,
    running: AtomicBool,
    /// The lease it runs under, once claimed.
    lease: OnceLock<Lease>,
    /// The task renewing the lease, stopped once the build's end is recorded.
    renewal: Mutex<Option<tokio::task::AbortHandle>>,
}

/// The builds this process is responsible for, to cancel or supersede them.
#[derive(Default)]
pub struct ActiveBuilds {
    builds: Mutex<HashMap<BuildId, Arc<ActiveBuild>>>,
}

impl ActiveBuilds {
    fn insert(&self, id: BuildId, job: Job) -> Arc<ActiveBuild> {
        let active = Arc::new(ActiveBuild {
            job,
            cancel: Cancel::default(),
            running: AtomicBool::new(false),
            lease: OnceLock::new(),
            renewal: Mutex::new(None),
        });
        self.builds.lock().expect("not poisoned").insert(id, active.clone());
        active
    }

    /// Forgets `active`, unless build `id` was registered again since (queued again after its
    /// lease ran out while this process was frozen).
    fn remove(&self, id: BuildId, active: &Arc<ActiveBuild>) {
        let mut builds = self.builds.lock().expect("not poisoned");
        if builds.get(&id).is_some_and(|registered| Arc::ptr_eq(registered, active)) {
            builds.remove(&id);
        }
    }

    /// Asks build `id` to stop; false when it is not queued or running here.
    pub fn cancel(&self, id: BuildId, reason: &str) -> bool {
        let active = self.builds.lock().expect("not poisoned").get(&id).cloned();
        active.map(|a| a.cancel.cancel(reason)).is_some()
    }

    /// Why running build `id` was asked to stop, while it is in its stop grace period (None when it
    /// runs on, is queued, or is not active here).
    pub fn stopping(&self, id: BuildId) -> Option<String> {
        let active = self.builds.lock().expect("not poisoned").get(&id).cloned()?;
        (active.running.load(Ordering::Relaxed) && active.cancel.is_cancelled()).then(|| active.cancel.reason())
    }

    /// Whether a build that commits the image of `producer` is queued or running.
    pub fn producing(&self, producer: &ImageSource) -> bool {
        self.builds.lock().expect("not poisoned").values().any(|b| {
            let s = &b.job.source;
            b.job.script.commit.is_some() && s.repository == producer.repository && s.branch == producer.branch
        })
    }

    /// Whether build `id` is queued or running in this process.
    pub fn contains(&self, id: BuildId) -> bool {
        self.builds.lock().expect("not poisoned").contains_key(&id)
    }

    fn of_branch(&self, project: &str, repository: &RepoName, branch: &Branch) -> Vec<(BuildId, Arc<ActiveBuild>)> {
        let builds = self.builds.lock().expect("not poisoned");
        builds
            .iter()
            .filter(|(_, b)| {
                let s = &b.job.source;
                s.project == project && &s.repository == repository && &s.branch == branch
            })
            .map(|(id, b)| (*id, b.clone()))
            .collect()
    }
}

/// The builds of one push: the ones queued now, and the ones of the same commit and script that
/// were queued or running already (not started again).
#[derive(Debug, Default)]
pub struct Enqueued {
    pub queued: Vec<BuildId>,
    pub already: Vec<BuildId>,
}

/// Records one queued build per build script of `recipe`, posts `pending`, and starts them; a
/// script already queued or running for this commit is left as it is, unless `restart` gives the
/// reason why a running one is out of date (it started before a new base image). The branch's
/// queued builds of other commits (and running ones, per project setting) end `cancelled`:
/// "superseded by <sha10>".
pub async fn enqueue(
    app: &Arc<App>,
    recipe: &Recipe,
    source: Source,
    restart: Option<&str>,
) -> anyhow::Result<Enqueued> {
    let building = app.active.of_branch(&source.project, &source.repository, &source.branch);
    let running_too = app.config.projects.get(&source.project).is_none_or(|p| p.supersede_running);
    for (id, active) in &building {
        let running = active.running.load(Ordering::Relaxed);
        if active.job.source.commit != source.commit {
            if running_too || !running {
                tracing::info!(build = %id, "superseded by {}", source.commit.short());
                active.cancel.cancel(&format!("superseded by {}", source.commit.short()));
            }
        } else if let Some(reason) = restart.filter(|_| running) {
            tracing::info!(build = %id, "{reason}");
            active.cancel.cancel(reason);
        }
    }
    // The branch's builds that other processes (workers) hold, which this one cannot see in
    // `app.active`: superseded alike, through the database.
    let mut elsewhere = Vec::new();
    for build in elsewhere_of_branch(app, &source.project, &source.repository, &source.branch).await? {
        let running = build.outcome.status == BuildStatus::Running;
        let reason = if build.new.commit.as_ref() != Some(&source.commit) {
            (running_too || !running).then(|| format!("superseded by {}", source.commit.short()))
        } else {
            restart.filter(|_| running).map(str::to_string)
        };
        match reason {
            Some(reason) => {
                tracing::info!(build = %build.id, worker = ?build.worker, "{reason}");
                cancel(app, build.id, &reason).await?;
            }
            None => elsewhere.push(build),
        }
    }
    let mut enqueued = Enqueued::default();
    for script in &recipe.scripts {
        let same = building.iter().find(|(_, active)| {
            active.job.source.commit == source.commit
                && active.job.script.script == script.script
                && !active.cancel.is_cancelled()
        });
        let same = same.map(|(id, _)| *id).or_else(|| {
            let same_elsewhere = elsewhere
                .iter()
                .find(|build| build.new.commit.as_ref() == Some(&source.commit) && build.new.script == script.script);
            same_elsewhere.map(|build| build.id)
        });
        match same {
            Some(id) => enqueued.already.push(id),
            None => enqueued.queued.push(queue(app, Job { source: source.clone(), script: script.clone() }).await?),
        }
    }
    Ok(enqueued)
}

/// The queued and running builds of `source`'s branch that this process does not hold: only in
/// a PostgreSQL history, where workers take builds too.
async fn elsewhere_of_branch(
    app: &App,
    project: &str,
    repository: &RepoName,
    branch: &Branch,
) -> anyhow::Result<Vec<Build>> {
    if app.store.backend() != Backend::Postgres {
        return Ok(Vec::new());
    }
    let builds = app.store.active_of_branch(project, repository, branch).await?;
    Ok(builds.into_iter().filter(|build| !app.active.contains(build.id)).collect())
}

/// Asks build `id` to stop, wherever it is: in this process; queued and held by none, where it
/// ends `cancelled` at once; or running on a worker, which sees the request when it next renews
/// its lease. False when it is neither queued nor running.
pub async fn cancel(app: &Arc<App>, id: BuildId, reason: &str) -> anyhow::Result<bool> {
    if app.active.cancel(id, reason) {
        return Ok(true);
    }
    if end_queued(app, id, BuildStatus::Cancelled, reason).await? {
        return Ok(true);
    }
    app.store.request_cancel(id, reason).await
}

/// Ends queued build `id` as `<status>: <reason>` (posting that status) when no worker has
/// claimed it; false when one has (or it ended).
async fn end_queued(app: &Arc<App>, id: BuildId, status: BuildStatus, reason: &str) -> anyhow::Result<bool> {
    let Some(build) = app.store.get(id).await? else { return Ok(false) };
    let job = match app.store.settings(id).await? {
        Some(settings) => Job::of(&build, &settings).ok(),
        None => None,
    };
    let outbox = job.and_then(|job| app.statuses.outbox_row(status_of(app, &job, id, status, reason.to_string())));
    let outcome = crate::model::Outcome::failed(status, reason);
    let Some(ended) = app.store.finish(id, &outcome, outbox.as_ref(), Holder::Queue).await? else { return Ok(false) };
    app.statuses.wake();
    app.announce(&ended);
    Ok(true)
}

/// Asks every queued or running build of `repository` at `branch` to stop, wherever it runs;
/// how many.
pub async fn cancel_branch(
    app: &Arc<App>,
    project: &str,
    repository: &RepoName,
    branch: &Branch,
    reason: &str,
) -> anyhow::Result<usize> {
    let mut cancelled = 0;
    for (_, active) in app.active.of_branch(project, repository, branch) {
        active.cancel.cancel(reason);
        cancelled += 1;
    }
    for build in elsewhere_of_branch(app, project, repository, branch).await? {
        cancelled += usize::from(cancel(app, build.id, reason).await?);
    }
    Ok(cancelled)
}

/// After a producer built a new image: queues the recipes that start `from` it, at their
/// branch's head.
pub async fn rebuild_dependents(app: &Arc<App>, job: &Job) {
    let producer = ImageSource { repository: job.source.repository.clone(), branch: job.source.branch.clone() };
    let Some(set) = app.recipes.get(&job.source.project) else { return };
    for recipe in dependents(&set, &producer) {
        let url = app.config.clone_url(&recipe.repository);
        let branch = recipe.branch.clone();
        let head = tokio::task::spawn_blocking(move || crate::git::branch_head(&url, &branch)).await;
        let commit = match head {
            Ok(Ok(commit)) => commit,
            Ok(Err(e)) => {
                tracing::warn!(%producer, dependent = %recipe.repository, "cannot rebuild the dependent: {e:#}");
                continue;
            }
            Err(e) => {
                tracing::warn!("{e}");
                continue;
            }
        };
        let message = format!("rebuilt: {producer} made a new image at {}", job.source.commit.short());
        let source = Source::new(
            &job.source.project,
            recipe.repository.clone(),
            recipe.branch.clone(),
            commit,
            Some(message.clone()),
            None,
        );
        // In turn with the branch's deliveries: a newer push seen meanwhile is not rolled back.
        let _turn = app.heads.turn(&source).await;
        if let Some(newer) = order::newer_than(app, &source, &order::Lineage::default()).await {
            tracing::info!(%producer, dependent = %recipe.repository, "not rebuilt at {}: {} is newer", source.commit.short(), newer.short());
            continue;
        }
        app.heads.saw(&source);
        match enqueue(app, recipe, source, Some(&message)).await {
            Ok(ids) => tracing::info!(%producer, dependent = %recipe.repository, ?ids, "dependents rebuilt"),
            Err(e) => tracing::warn!(%producer, dependent = %recipe.repository, "cannot rebuild the dependent: {e:#}"),
        }
    }
}

/// Queues build `id` again: same commit and recipe settings, as a new build.
pub async fn rebuild(app: &Arc<App>, id: BuildId) -> anyhow::Result<Option<BuildId>> {
    let Some(build) = app.store.get(id).await? else { return Ok(None) };
    let settings = app.store.settings(id).await?.context("this entry has no recipe settings (a recipes reload?)")?;
    Ok(Some(queue(app, Job::of(&build, &settings)?).await?))
}

async fn queue(app: &Arc<App>, job: Job) -> anyhow::Result<BuildId> {
    let baseimage = job.script.baseimage.clone().unwrap_or_else(|| app.config.docker.default_image.clone());
    let source = &job.source;
    let new = NewBuild {
        kind: BuildKind::Build,
        project: source.project.clone(),
        repository: source.repository.clone(),
        branch: source.branch.clone(),
        commit: Some(source.commit.clone()),
        script: job.script.script.clone(),
        baseimage: Some(baseimage),
        message: source.message.clone(),
        author: source.author.clone(),
    };
    let build = app.store.insert(&new, Some(&serde_json::to_string(&job.script)?)).await?;
    let id = build.id;
    app.statuses.report(status_of(app, &job, id, BuildStatus::Queued, "queued".into())).await;
    app.announce(&build);
    if runs_here(app, &job) {
        start(app, id, job);
    } else if app.store.backend() == Backend::Sqlite {
        // No other process can ever take it: said now rather than queued for good.
        let reason = format!(
            "runs_on {}: no worker has these labels (with the SQLite history only serve builds, and its [worker] \
             labels are [{}])",
            job.script.runs_on.join(", "),
            app.config.worker.labels.join(", ")
        );
        end_queued(app, id, BuildStatus::Error, &reason).await?;
    }
    Ok(id)
}

/// Whether this process runs `job` itself: it builds (a `serve` with `[worker] enabled`), and
/// has the labels the recipe asks for. (An `autobuilder worker` claims builds from the database,
/// and so does a `serve` the builds starting from a committed image on a PostgreSQL history: they
/// run on the engine that holds it, see `images`.)
fn runs_here(app: &App, job: &Job) -> bool {
    let chained_elsewhere = job.script.from.is_some() && app.store.backend() == Backend::Postgres;
    app.role == Role::Serve
        && app.builds_here()
        && job.script.runs_on_labels(&app.config.worker.labels)
        && !chained_elsewhere
}

/// Registers a queued build, takes its place in the queue, and runs it when its turn comes.
fn start(app: &Arc<App>, id: BuildId, job: Job) {
    let place = app.queue.enter(id, &job.source.project);
    let active = app.active.insert(id, job);
    let app = app.clone();
    tokio::spawn(async move { run::run(&app, id, active, place).await });
}

fn status_of(app: &App, job: &Job, id: BuildId, status: BuildStatus, description: String) -> CommitStatus {
    CommitStatus {
        repository: job.source.repository.clone(),
        commit: job.source.commit.clone(),
        status,
        context: format!("autobuilder/{}", job.script.script),
        description,
        target_url: app.build_url(id),
    }
}

/// [`status_of`] from a build's record, for a build whose recipe settings cannot be read: none
/// when the record names no commit.
fn status_of_record(app: &App, build: &Build, status: BuildStatus, description: String) -> Option<CommitStatus> {
    Some(CommitStatus {
        repository: build.new.repository.clone(),
        commit: build.new.commit.clone()?,
        status,
        context: format!("autobuilder/{}", build.new.script),
        description,
        target_url: app.build_url(build.id),
    })
}
