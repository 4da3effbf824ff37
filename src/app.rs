//! The running service: every long-lived part, built once from the configuration and shared by the
//! HTTP handlers and the build tasks. Start-up also cleans up what a previous process left behind.

use std::sync::Arc;

use anyhow::Context;
use sha2::{Digest, Sha256};

use crate::artifacts::ArtifactStore;
use crate::build::ActiveBuilds;
use crate::build::kept::KeptCheckouts;
use crate::build::order::BranchHeads;
use crate::build::queue::Queue;
use crate::build::reload::Recipes;
use crate::build::shipped_log::RemoteLogs;
use crate::bus::{Bus, Event};
use crate::config::Config;
use crate::docker::DockerEngine;
use crate::github::api::GithubApi;
use crate::github::status::StatusReporter;
use crate::metrics::Metrics;
use crate::model::{Build, BuildId};
use crate::store::Store;

pub struct App {
    pub config: Config,
    pub store: Store,
    pub docker: DockerEngine,
    pub statuses: StatusReporter,
    /// GitHub's API for pull request commands (None without a token).
    pub github: Option<GithubApi>,
    pub artifacts: ArtifactStore,
    pub recipes: Recipes,
    /// Build events for the live websocket (in-process, or Redis when configured).
    pub bus: Bus,
    /// Queued builds waiting for a slot (`[builds] concurrency`, projects' `concurrency`).
    pub queue: Arc<Queue>,
    /// Builds queued or running in this process.
    pub active: ActiveBuilds,
    /// The newest commit seen per branch, to put deliveries that arrive out of order in order.
    pub heads: BranchHeads,
    pub metrics: Metrics,
    /// Working copies of finished builds, for the next build of their branch.
    pub kept: KeptCheckouts,
    /// Names this instance's containers and temp dirs, so that cleanup never touches another's.
    pub instance: String,
    /// The logs of builds other hosts ran, copied from the history when asked for.
    pub remote_logs: Arc<RemoteLogs>,
    /// What this process is, and the name its builds run under (`[worker] name`).
    pub role: Role,
    pub worker: String,
}

/// What a process does: `serve` (webhooks, pages, and builds unless `[worker] enabled = false`)
/// or `autobuilder worker` (builds only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Serve,
    Worker,
}

impl App {
    /// Opens the history and connects to Docker and the bus. What a previous process left
    /// unfinished is taken over by [`crate::build::resume`], once the recipes are loaded.
    pub async fn build(config: Config, role: Role) -> anyhow::Result<Arc<App>> {
        std::fs::create_dir_all(&config.tmp_directory)
            .with_context(|| format!("cannot create tmp_directory {}", config.tmp_directory.display()))?;
        std::fs::create_dir_all(config.logs_dir())
            .with_context(|| format!("cannot create {}", config.logs_dir().display()))?;
        let store = Store::connect(config.database.url.expose(), &config.data_dir).await?;
        let worker = config.worker.name_for(if role == Role::Serve { "serve" } else { "worker" });
        // Several serves may share a PostgreSQL history; each process that builds has a name of
        // its own, by which it finds its builds after a restart.
        if role == Role::Worker || config.worker.enabled {
            store.claim_worker_name(&worker).await?;
        }
        let data_dir = config.data_dir.canonicalize()?;
        let mut named = data_dir.to_string_lossy().into_owned();
        if role == Role::Worker {
            named.push_str("\0worker");
        }
        let instance = hex::encode(Sha256::digest(named.as_bytes()))[..12].to_string();
        let docker = DockerEngine::connect(instance.clone(), config.docker.clone()).await?;
        let statuses = StatusReporter::start(&config.github, store.clone(), role == Role::Serve)?;
        let github = GithubApi::new(&config.github)?;
        let artifacts = ArtifactStore::from_config(&config)?;
        let project_limits = config
            .projects
            .iter()
            .filter(|(_, p)| p.concurrency > 0)
            .map(|(name, p)| (name.clone(), p.concurrency))
            .collect();
        let queue = Queue::new(config.builds.concurrency, project_limits);
        let bus = match config.redis.url.as_str() {
            "" => Bus::in_process(),
            url => Bus::redis_publisher(url)?,
        };
        let recipes = Recipes::default();
        let kept_dir = config.tmp_directory.join(format!("build-{instance}-kept"));
        let kept = KeptCheckouts::new(kept_dir, config.git.keep_checkouts);
        let remote_logs = Arc::new(RemoteLogs::new(Some(store.clone()), config.logs_dir()));
        Ok(Arc::new(App {
            config,
            store,
            docker,
            statuses,
            github,
            artifacts,
            recipes,
            bus,
            queue,
            active: ActiveBuilds::default(),
            heads: BranchHeads::default(),
            metrics: Metrics::default(),
            kept,
            instance,
            remote_logs,
            role,
            worker,
        }))
    }

    /// Loads every project's recipes (at start-up); a project whose repository cannot be fetched
    /// is reported and starts with no recipes.
    pub async fn load_recipes(self: &Arc<Self>) {
        let reloads = self.config.projects.keys().map(|project| {
            let app = self.clone();
            async move {
                if let Err(e) = crate::build::reload::reload(&app, project, None, false).await {
                    tracing::error!(project, "cannot load recipes: {e:#}");
                }
            }
        });
        futures_util::future::join_all(reloads).await;
    }

    /// Publishes a build's record on the bus (queued, started, ended).
    pub fn announce(&self, build: &Build) {
        self.bus.publish(Event::Build { build: Box::new(build.clone()) });
    }

    /// The page of a build, as linked from commit statuses.
    pub fn build_url(&self, id: BuildId) -> String {
        format!("{}/monitor/build/{id}", self.config.public_url)
    }

    /// Whether this process runs builds.
    pub fn builds_here(&self) -> bool {
        self.role == Role::Worker || self.config.worker.enabled
    }

    /// Prefix of this instance's temp directories under `tmp_directory`.
    pub fn temp_prefix(&self) -> String {
        format!("build-{}-", self.instance)
    }
}
