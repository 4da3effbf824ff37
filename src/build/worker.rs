//! `autobuilder worker`: runs builds on this host's Docker engine, claiming them from the
//! PostgreSQL history's queue as its slots free up. It is woken by `LISTEN autobuilder_queue` (a
//! trigger notifies when a build is queued), and looks every few seconds besides, for a
//! notification lost while its connection was down.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::images::{Chains, Placement};
use super::{Job, run};
use crate::app::App;
use crate::model::{BuildStatus, Outcome};
use crate::recipes::BuildScript;
use crate::store::{Holder, QUEUE_CHANNEL};

/// The longest an idle worker waits before it looks at the queue again without a notification.
const POLL: Duration = Duration::from_secs(5);

/// Which queued builds a process claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claims {
    /// Every build it may run (`autobuilder worker`).
    Any,
    /// Only the builds starting from an image whose newest copy this process's engine holds (a
    /// `serve` that builds: it runs the others it queues itself).
    ImagesHere,
}

/// Claims and runs builds, `[worker] concurrency` at once, for as long as this process runs.
/// Returns only on a fault that stops the worker.
pub async fn work(app: Arc<App>, claims: Claims) -> anyhow::Error {
    let concurrency = match app.config.worker.concurrency {
        0 => app.config.builds.concurrency,
        n => n,
    };
    let slots = Arc::new(Semaphore::new(concurrency));
    let project_limits: HashMap<String, usize> = app
        .config
        .projects
        .iter()
        .filter(|(_, p)| p.concurrency > 0)
        .map(|(name, p)| (name.clone(), p.concurrency))
        .collect();
    let mut listener = app.store.listener(QUEUE_CHANNEL);
    let what = match claims {
        Claims::Any => "taking builds from the queue",
        Claims::ImagesHere => "taking the queued builds that start from an image of this engine",
    };
    tracing::info!(worker = %app.worker, concurrency, labels = ?app.config.worker.labels, "{what}");
    loop {
        let slot = match slots.clone().acquire_owned().await {
            Ok(slot) => slot,
            Err(e) => return e.into(),
        };
        let labels = &app.config.worker.labels;
        let chains = match Chains::read(&app).await {
            Ok(chains) => chains,
            Err(e) => {
                drop(slot);
                tracing::warn!("cannot read where the committed images are (trying again in 1 s): {e:#}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        // Settings that cannot be read are claimed, and end with that error rather than wait.
        // Never a build this process still runs (it lost the lease while frozen, the build was
        // queued again): another worker takes it.
        let runs_here = |id, project: &str, settings: Option<&str>| {
            let script = settings.and_then(|settings| serde_json::from_str::<BuildScript>(settings).ok());
            let wanted = match (&script, claims) {
                (_, Claims::Any) => true,
                (Some(script), Claims::ImagesHere) => script
                    .from
                    .as_ref()
                    .is_some_and(|from| chains.placement(project, from) == Placement::On(app.worker.clone())),
                (None, Claims::ImagesHere) => false,
            };
            wanted
                && !app.active.contains(id)
                && script
                    .is_none_or(|script| script.runs_on_labels(labels) && chains.may_run(&app.worker, project, &script))
        };
        match app.store.claim_next(&app.worker, app.config.worker.lease(), &project_limits, runs_here).await {
            Ok(Some((build, lease))) => {
                app.announce(&build);
                app.metrics.observe_start(&build);
                let job = match app.store.settings(build.id).await {
                    Ok(Some(settings)) => Job::of(&build, &settings).map_err(|e| format!("{e:#}")),
                    Ok(None) => Err("it has no recipe settings".into()),
                    Err(e) => Err(format!("cannot read its recipe settings: {e:#}")),
                };
                match job {
                    Ok(job) => {
                        let active = app.active.insert(build.id, job);
                        let app = app.clone();
                        tokio::spawn(async move {
                            run::run_claimed(&app, build.id, active, lease).await;
                            drop(slot);
                        });
                    }
                    Err(reason) => {
                        tracing::error!(build = %build.id, "cannot run the build: {reason}");
                        let outcome = Outcome::failed(BuildStatus::Error, format!("cannot run the build: {reason}"));
                        if let Ok(Some(ended)) = app.store.finish(build.id, &outcome, None, Holder::Lease(lease)).await
                        {
                            app.announce(&ended);
                        }
                    }
                }
            }
            Ok(None) => {
                drop(slot);
                match listener.as_mut() {
                    Some(listener) => drop(listener.next(POLL).await),
                    None => tokio::time::sleep(POLL).await,
                }
            }
            Err(e) => {
                drop(slot);
                tracing::warn!("cannot claim a build from the queue (trying again in 1 s): {e:#}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
