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
    /// Only the builds starting from a committed image (a `serve` that builds: it runs the others
    /// it queues itself).
    Chained,
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
        Claims::Chained => "taking the queued builds that start from a committed image",
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
        // Never a build this process still runs (it lost the lease while frozen, the build was
        // queued again): another worker takes it.
        let runs_here = |id, project: &str, settings: Option<&str>| {
            if app.active.contains(id) {
                return false;
            }
            // Settings that cannot be read are claimed by a worker, and end with that error.
            let Some(script) = settings.and_then(|settings| serde_json::from_str::<BuildScript>(settings).ok()) else {
                return claims == Claims::Any;
            };
            match &script.from {
                None => claims == Claims::Any && script.runs_on_labels(labels),
                Some(from) => match chains.placement(project, from) {
                    // Where its image is, whatever its labels: without them, it ends saying so.
                    Placement::On(holder) => holder == app.worker,
                    Placement::AfterProducer => false,
                    Placement::Anywhere => script.runs_on_labels(labels),
                },
            }
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
                let job = job.and_then(|job| match &job.script.from {
                    Some(from) if !job.script.runs_on_labels(labels) => Err(format!(
                        "runs_on [{}]: the newest image of {from} is on the engine of worker {}, which lacks these \
                         labels ([worker] labels = [{}]): give it the labels, or push {} {} to make the image on \
                         a worker that has them",
                        job.script.runs_on.join(", "),
                        app.worker,
                        labels.join(", "),
                        from.repository,
                        from.branch
                    )),
                    _ => Ok(job),
                });
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
                        // Its queued status is followed by this end, as any build's.
                        let description = outcome.error.clone().unwrap_or_default();
                        let status = super::status_of_record(&app, &build, outcome.status, description)
                            .and_then(|status| app.statuses.outbox_row(status));
                        let ended = app.store.finish(build.id, &outcome, status.as_ref(), Holder::Lease(lease)).await;
                        if let Ok(Some(ended)) = ended {
                            app.statuses.wake();
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
