//! Image chains across hosts: a committed image exists on the one engine that committed it, so a
//! build starting `from` it runs on the worker whose engine holds the newest one (recorded in the
//! history at each commit), waits in the queue while its producer builds, and ends saying so when
//! that worker is gone. Never a pull of an image no registry has.

use std::collections::{HashMap, HashSet};

use crate::app::App;
use crate::recipes::BuildScript;
use crate::recipes::chains::ImageSource;
use crate::store::{Backend, ImageHolder, ImageKey};

/// Where a build may run, as far as its image goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// It starts from no committed image, or from one no running worker holds (it ends saying
    /// why wherever it runs).
    Anywhere,
    /// On this worker only: its engine holds the newest image the build starts from.
    On(String),
    /// Not yet: no engine holds the image, and its producer is queued or running.
    AfterProducer,
}

/// What the history says about every chain at one moment: where each newest image is, which
/// producers are building, which holders run.
pub struct Chains {
    holders: HashMap<ImageKey, ImageHolder>,
    producing: HashSet<ImageKey>,
    running: HashSet<String>,
}

impl Chains {
    /// Reads the state of every chain.
    pub async fn read(app: &App) -> anyhow::Result<Self> {
        // The producers first: one that records its image and ends between the two reads is then
        // seen building, or holding, never neither.
        let producing = app
            .store
            .active_settings()
            .await?
            .into_iter()
            .filter(|(_, settings)| commits_image(settings.as_deref()))
            .map(|(key, _)| key)
            .collect();
        let holders = app.store.image_holders().await?;
        let mut running = HashSet::new();
        for worker in holders.values().map(|holder| &holder.worker).collect::<HashSet<_>>() {
            if app.store.worker_running(worker).await? {
                running.insert(worker.clone());
            }
        }
        Ok(Self { holders, producing, running })
    }

    /// Where a build of `project` starting `from` may run.
    pub fn placement(&self, project: &str, from: &ImageSource) -> Placement {
        let key = image_key(project, from);
        match self.holders.get(&key) {
            Some(holder) if self.running.contains(&holder.worker) => Placement::On(holder.worker.clone()),
            _ if self.producing.contains(&key) => Placement::AfterProducer,
            _ => Placement::Anywhere,
        }
    }
}

/// The history's key of the image `from` names in `project`.
pub fn image_key(project: &str, from: &ImageSource) -> ImageKey {
    (project.to_string(), from.repository.to_string(), from.branch.to_string())
}

/// Why this engine's copy of the image `from` names must not be used, when the newest one was
/// committed on another worker's engine (PostgreSQL history only).
pub async fn made_elsewhere(app: &App, project: &str, from: &ImageSource) -> anyhow::Result<Option<String>> {
    if app.store.backend() != Backend::Postgres {
        return Ok(None);
    }
    let holders = app.store.image_holders().await?;
    let Some(holder) = holders.get(&image_key(project, from)) else { return Ok(None) };
    if holder.worker == app.worker {
        return Ok(None);
    }
    let advice = if app.store.worker_running(&holder.worker).await? {
        "which runs: rebuild this build, it will run there".to_string()
    } else {
        format!(
            "which is not running: start that worker, or push {} {} again to make the image on a running one",
            from.repository, from.branch
        )
    };
    let commit = &holder.commit[..holder.commit.len().min(10)];
    Ok(Some(format!("its newest image (commit {commit}) was made on the engine of worker {}, {advice}", holder.worker)))
}

/// Whether a build committing the image `from` names is queued or running in any process.
pub async fn producing_anywhere(app: &App, project: &str, from: &ImageSource) -> anyhow::Result<bool> {
    if app.active.producing(from) {
        return Ok(true);
    }
    if app.store.backend() != Backend::Postgres {
        return Ok(false);
    }
    let key = image_key(project, from);
    let active = app.store.active_settings().await?;
    Ok(active.into_iter().any(|(other, settings)| other == key && commits_image(settings.as_deref())))
}

/// Whether a build with these recipe settings commits an image.
fn commits_image(settings: Option<&str>) -> bool {
    let script = settings.and_then(|settings| serde_json::from_str::<BuildScript>(settings).ok());
    script.is_some_and(|script| script.commit.is_some())
}
