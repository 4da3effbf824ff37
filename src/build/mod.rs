//! Builds: queued from a push, run one container per build script, artifact published, result
//! recorded and reported. Every path ends in a final status; containers and temp dirs always go.

pub mod log;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::app::App;
use crate::artifacts::ArtifactNames;
use crate::docker::ContainerSpec;
use crate::github::status::CommitStatus;
use crate::model::{Branch, BuildId, BuildKind, BuildStatus, CommitSha, RepoName};
use crate::recipes::{BuildScript, Recipe};
use crate::store::{NewBuild, Outcome};
use log::BuildLog;

/// Why a build did not succeed. `status()` tells the commit's fault (`failure`) from the
/// infrastructure's (`error`); `Display` is the one-line reason users see.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    Checkout(String),
    #[error("image {image} is not available: {reason}")]
    ImagePull { image: String, reason: String },
    #[error("{0}")]
    Docker(String),
    #[error("script exited {0}")]
    ScriptFailed(i64),
    #[error("script ran out of memory (limit {} MiB)", .0 >> 20)]
    OutOfMemory(i64),
    #[error("timed out after {0} minutes")]
    Timeout(u64),
    #[error("artifact {artifact} not found in {archives}")]
    ArtifactMissing { artifact: String, archives: String },
    #[error("{0}")]
    Upload(String),
    #[error("{0}")]
    Internal(String),
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
            BuildError::Upload(_) => "Upload",
            BuildError::Internal(_) => "Internal",
        }
    }

    /// `failure` when the commit is to blame (script, limits, missing artifact), `error` otherwise.
    pub fn status(&self) -> BuildStatus {
        match self {
            BuildError::ScriptFailed(_)
            | BuildError::OutOfMemory(_)
            | BuildError::Timeout(_)
            | BuildError::ArtifactMissing { .. } => BuildStatus::Failure,
            _ => BuildStatus::Error,
        }
    }

    pub fn log(error: std::io::Error) -> Self {
        BuildError::Internal(format!("cannot write the build log: {error}"))
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

/// What one build needs to run: the commit and one build script of its recipe.
#[derive(Debug, Clone)]
pub struct Job {
    pub source: Source,
    pub script: BuildScript,
}

/// Records one queued build per build script of `recipe`, posts `pending`, and starts them.
pub async fn enqueue(app: &Arc<App>, recipe: &Recipe, source: Source) -> anyhow::Result<Vec<BuildId>> {
    let mut ids = Vec::new();
    for script in &recipe.scripts {
        let job = Job { source: source.clone(), script: script.clone() };
        let baseimage = script.baseimage.clone().unwrap_or_else(|| app.config.docker.default_image.clone());
        let id = app
            .store
            .insert(&NewBuild {
                kind: BuildKind::Build,
                project: job.source.project.clone(),
                repository: job.source.repository.to_string(),
                branch: job.source.branch.to_string(),
                commit: job.source.commit.to_string(),
                script: script.script.clone(),
                baseimage: Some(baseimage),
                message: job.source.message.clone(),
                author: job.source.author.clone(),
            })
            .await?;
        app.statuses.report(status_of(app, &job, id, BuildStatus::Queued, "queued".into()));
        app.announce(id).await;
        ids.push(id);
        let app = app.clone();
        tokio::spawn(async move { run(&app, id, job).await });
    }
    Ok(ids)
}

/// Waits for a build slot, runs the build, records and reports how it ended.
async fn run(app: &Arc<App>, id: BuildId, job: Job) {
    let _slot = app.slots.acquire().await.expect("the build slots are never closed");
    let outcome = match app.store.mark_running(id).await {
        Ok(()) => {
            app.announce(id).await;
            execute(app, id, &job).await
        }
        Err(e) => Outcome::failed(BuildStatus::Error, format!("history database failed: {e}")),
    };
    if let Err(e) = app.store.finish(id, &outcome).await {
        tracing::error!(build = %id, "cannot record the end of the build: {e:#}");
    }
    app.announce(id).await;
    let description = match outcome.status {
        BuildStatus::Success => format!("built {}", outcome.artifact.as_deref().unwrap_or("")),
        _ => outcome.error.clone().unwrap_or_default(),
    };
    tracing::info!(build = %id, repo = %job.source.repository, branch = %job.source.branch, status = %outcome.status, "{description}");
    app.statuses.report(status_of(app, &job, id, outcome.status, description));
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

/// Runs one build and returns how it ended; the log gets every step and the reason of the end.
async fn execute(app: &Arc<App>, id: BuildId, job: &Job) -> Outcome {
    let mut log = match BuildLog::create(&app.config.logs_dir(), id, app.bus.clone()).await {
        Ok(log) => log,
        Err(e) => {
            return Outcome::failed(BuildStatus::Error, format!("cannot create the build log: {e}"));
        }
    };
    let workspace =
        tempfile::Builder::new().prefix(&format!("{}{id}-", app.temp_prefix())).tempdir_in(&app.config.tmp_directory);
    let result = match workspace {
        Ok(workspace) => {
            let result = steps(app, id, job, workspace.path().to_path_buf(), &mut log).await;
            // Removed off the async threads: a source tree can be large.
            tokio::task::spawn_blocking(move || workspace.close());
            result
        }
        Err(e) => Err(BuildError::Internal(format!(
            "cannot create a directory in tmp_directory {}: {e}",
            app.config.tmp_directory.display()
        ))),
    };
    let outcome = match result {
        Ok(published) => {
            log.note(&format!("published {} (sha256 {})", published.name, published.sha256));
            Outcome {
                status: BuildStatus::Success,
                error: None,
                artifact: Some(published.name),
                artifact_url: published.url,
                artifact_sha256: Some(published.sha256),
            }
        }
        Err(e) => {
            log.note(&format!("{}: {e}", e.status()));
            tracing::debug!(build = %id, kind = e.kind(), "build did not succeed: {e}");
            Outcome::failed(e.status(), e.to_string())
        }
    };
    if let Err(e) = log.close().await {
        tracing::warn!(build = %id, "cannot finish the build log: {e}");
    }
    outcome
}

async fn steps(
    app: &Arc<App>,
    id: BuildId,
    job: &Job,
    workspace: PathBuf,
    log: &mut BuildLog,
) -> Result<crate::artifacts::Published, BuildError> {
    let (source, archives) = (workspace.join("src"), workspace.join("archives"));
    std::fs::create_dir_all(&archives)
        .map_err(|e| BuildError::Internal(format!("cannot create {}: {e}", archives.display())))?;

    log.note(&format!("fetching {} {} at {}", job.source.repository, job.source.branch, job.source.commit));
    log.write_pending().await.map_err(BuildError::log)?;
    let url = app.config.clone_url(&job.source.repository);
    let (branch, commit, checkout_dir) = (job.source.branch.clone(), job.source.commit.clone(), source.clone());
    tokio::task::spawn_blocking(move || crate::git::checkout_commit(&url, &branch, &commit, &checkout_dir))
        .await
        .expect("checkout does not panic")
        .map_err(|e| BuildError::Checkout(format!("{e:#}")))?;

    let image = job.script.baseimage.as_deref().unwrap_or(&app.config.docker.default_image);
    app.docker.ensure_image(image, log).await?;
    let mount = format!("/{}", job.source.repository.name());
    log.note(&format!("running {} in {image}", job.script.script));
    log.write_pending().await.map_err(BuildError::log)?;
    let spec = ContainerSpec {
        build: id,
        image,
        source: (&source, mount.clone()),
        archives: (&archives, job.script.archives.clone()),
        script: format!("{mount}/{}", job.script.script),
        env: vec![
            format!("AUTOBUILDER_BUILD_ID={id}"),
            format!("AUTOBUILDER_REPOSITORY={}", job.source.repository),
            format!("AUTOBUILDER_BRANCH={}", job.source.branch),
            format!("AUTOBUILDER_COMMIT={}", job.source.commit),
        ],
        labels: HashMap::from([
            ("autobuilder.project".into(), job.source.project.clone()),
            ("autobuilder.repository".into(), job.source.repository.to_string()),
            ("autobuilder.branch".into(), job.source.branch.to_string()),
            ("autobuilder.commit".into(), job.source.commit.to_string()),
        ]),
    };
    let timeout = Duration::from_secs(app.config.builds.timeout_minutes * 60);
    let code = app.docker.run(spec, log, timeout).await?;
    if code != 0 {
        return Err(BuildError::ScriptFailed(code));
    }

    let artifact = archives.join(&job.script.artifact);
    // Not followed: a symlink made in the container would point at a file of the host.
    if !std::fs::symlink_metadata(&artifact).is_ok_and(|m| m.is_file()) {
        return Err(BuildError::ArtifactMissing {
            artifact: job.script.artifact.clone(),
            archives: job.script.archives.clone(),
        });
    }
    let names = ArtifactNames::new(
        &job.source.repository,
        job.script.tag.as_deref(),
        &job.source.branch,
        &job.source.commit,
        &job.script.artifact,
    );
    app.artifacts.publish(&artifact, &names, job.script.format).await.map_err(BuildError::Upload)
}
