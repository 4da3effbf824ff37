//! The running service: every long-lived part, built once from the configuration and shared by the
//! HTTP handlers and the build tasks. Start-up also cleans up what a previous process left behind.

use std::sync::Arc;

use anyhow::Context;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::artifacts::ArtifactStore;
use crate::bus::{Bus, Event};
use crate::config::Config;
use crate::docker::DockerEngine;
use crate::github::status::{CommitStatus, StatusReporter};
use crate::model::{Build, BuildId, BuildKind, CommitSha, RepoName};
use crate::recipes::reload::{RELOAD_SCRIPT, Recipes};
use crate::store::Store;

/// Reason recorded for builds a previous process left unfinished.
pub const INTERRUPTED: &str = "interrupted by restart";

pub struct App {
    pub config: Config,
    pub store: Store,
    pub docker: DockerEngine,
    pub statuses: StatusReporter,
    pub artifacts: ArtifactStore,
    pub recipes: Recipes,
    /// Build events for the live websocket (in-process, or Redis when configured).
    pub bus: Bus,
    /// One permit per build allowed to run at once (`[builds] concurrency`).
    pub slots: Semaphore,
    /// Names this instance's containers and temp dirs, so that cleanup never touches another's.
    pub instance: String,
}

impl App {
    /// Opens the history, connects to Docker, and ends what a previous process left unfinished.
    pub async fn build(config: Config) -> anyhow::Result<Arc<App>> {
        std::fs::create_dir_all(&config.tmp_directory)
            .with_context(|| format!("cannot create tmp_directory {}", config.tmp_directory.display()))?;
        std::fs::create_dir_all(config.logs_dir())
            .with_context(|| format!("cannot create {}", config.logs_dir().display()))?;
        let store = Store::open(&config.data_dir).await?;
        let data_dir = config.data_dir.canonicalize()?;
        let instance = hex::encode(Sha256::digest(data_dir.to_string_lossy().as_bytes()))[..12].to_string();
        let docker =
            DockerEngine::connect(instance.clone(), config.docker.network.clone(), config.memory_bytes()).await?;
        let statuses = StatusReporter::start(&config.github)?;
        let artifacts = ArtifactStore::from_config(&config)?;
        let slots = Semaphore::new(config.builds.concurrency);
        let bus = match config.redis.url.as_str() {
            "" => Bus::in_process(),
            url => Bus::redis_publisher(url)?,
        };
        let recipes = Recipes::default();
        let app = Arc::new(App { config, store, docker, statuses, artifacts, recipes, bus, slots, instance });
        app.recover().await?;
        Ok(app)
    }

    /// Ends builds left `queued`/`running` as `error` (posting that status), and removes leftover
    /// containers and temp dirs of this instance.
    async fn recover(&self) -> anyhow::Result<()> {
        for build in self.store.interrupt_unfinished(INTERRUPTED).await? {
            tracing::warn!(build = %build.id, repo = %build.repository, "build was {INTERRUPTED}");
            if let Some(status) = self.final_status_of(&build) {
                self.statuses.report(status);
            }
        }
        let removed = self.docker.remove_leftovers().await?;
        if removed > 0 {
            tracing::info!("removed {removed} build containers left by a previous run");
        }
        let prefix = self.temp_prefix();
        for entry in std::fs::read_dir(&self.config.tmp_directory)?.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        Ok(())
    }

    fn final_status_of(&self, build: &Build) -> Option<CommitStatus> {
        let context = match build.kind {
            BuildKind::Build => format!("autobuilder/{}", build.script),
            BuildKind::Reload => format!("autobuilder/{RELOAD_SCRIPT}"),
        };
        Some(CommitStatus {
            repository: RepoName::parse(&build.repository).ok()?,
            commit: CommitSha::parse(&build.commit).ok()?,
            status: crate::model::BuildStatus::Error,
            context,
            description: INTERRUPTED.into(),
            target_url: self.build_url(build.id),
        })
    }

    /// Loads every project's recipes (at start-up); a project whose repository cannot be fetched
    /// is reported and starts with no recipes.
    pub async fn load_recipes(self: &Arc<Self>) {
        let reloads = self.config.projects.keys().map(|project| {
            let app = self.clone();
            async move {
                if let Err(e) = crate::recipes::reload::reload(&app, project, None).await {
                    tracing::error!(project, "cannot load recipes: {e:#}");
                }
            }
        });
        futures_util::future::join_all(reloads).await;
    }

    /// Publishes the current record of build `id` on the bus.
    pub async fn announce(&self, id: BuildId) {
        match self.store.get(id).await {
            Ok(Some(build)) => self.bus.publish(Event::Build { build: Box::new(build) }),
            Ok(None) => {}
            Err(e) => tracing::warn!(build = %id, "cannot read the build to announce it: {e:#}"),
        }
    }

    /// The page of a build, as linked from commit statuses.
    pub fn build_url(&self, id: BuildId) -> String {
        format!("{}/monitor/build/{id}", self.config.public_url)
    }

    /// Prefix of this instance's temp directories under `tmp_directory`.
    pub fn temp_prefix(&self) -> String {
        format!("build-{}-", self.instance)
    }
}
