//! A running build's lease, from the side of the process that holds it (renewed while the build
//! runs, checked before anything is published) and from the side of every other process (a build
//! whose lease ran out is queued again, or ends `error: worker <name> lost`).

use std::sync::Arc;
use std::time::Duration;

use super::{ActiveBuild, BuildError, Job, status_of};
use crate::app::App;
use crate::model::{Build, BuildStatus, Outcome};
use crate::store::{Backend, Holder, Lease, Renewal};

/// Why a build stops when another worker took it over.
pub const TAKEN_OVER: &str = "taken over: this worker's lease on the build ran out";

/// Renews `lease` every third of `[worker] lease_seconds` while the build runs, until [`release`]d
/// once its end is recorded (so that a database slow to take the end does not cost the lease). A stop asked by another process (an admin, a newer push) cancels the build; a
/// lease found lost cancels it as [`TAKEN_OVER`]. A database that does not answer is tried again
/// at the next renewal: the build runs on, and what it then writes is fenced by the database.
pub(super) fn hold(app: &Arc<App>, active: &Arc<ActiveBuild>, lease: Lease) {
    let (app, held) = (app.clone(), active.clone());
    let renewal = tokio::spawn(async move {
        let active = held;
        let lease_for = app.config.worker.lease();
        loop {
            tokio::time::sleep(lease_for / 3).await;
            match app.store.renew(lease, lease_for).await {
                Ok(Renewal::Held { cancel: None }) => {}
                Ok(Renewal::Held { cancel: Some(reason) }) => active.cancel.cancel(&reason),
                Ok(Renewal::Lost) => {
                    tracing::warn!(build = %lease.build, "{TAKEN_OVER}: stopping it");
                    active.cancel.cancel(TAKEN_OVER);
                    return;
                }
                Err(e) => tracing::warn!(build = %lease.build, "cannot renew the build's lease: {e:#}"),
            }
        }
    });
    *active.renewal.lock().expect("not poisoned") = Some(renewal.abort_handle());
}

/// Stops renewing the build's lease: once its end is recorded (or refused).
pub(super) fn release(active: &ActiveBuild) {
    if let Some(renewal) = active.renewal.lock().expect("not poisoned").take() {
        renewal.abort();
    }
}

/// Checks, before a build publishes anything, that its lease is still this process's: the
/// database must say so (waited for while it does not answer), or the build stops as
/// [`TAKEN_OVER`].
pub(super) async fn still_held(app: &App, active: &ActiveBuild) -> Result<(), BuildError> {
    let Some(lease) = active.lease.get().copied() else { return Ok(()) };
    let mut delay = Duration::from_millis(500);
    loop {
        match app.store.renew(lease, app.config.worker.lease()).await {
            Ok(Renewal::Held { .. }) => return Ok(()),
            Ok(Renewal::Lost) => {
                active.cancel.cancel(TAKEN_OVER);
                return Err(BuildError::Cancelled(TAKEN_OVER.into()));
            }
            Err(e) => tracing::warn!(build = %lease.build, "cannot check the build's lease before publishing: {e:#}"),
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = active.cancel.cancelled() => return Err(BuildError::Cancelled(active.cancel.reason())),
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// Looks for builds whose lease ran out, every half lease, for as long as this process runs:
/// each is queued again while it was claimed at most `[worker] requeues` + 1 times, and ends
/// `error: worker <name> lost` (its status posted) after that. Any process may do this: the
/// database takes each change only against the lease that ran out.
pub async fn sweep_lost(app: Arc<App>) {
    // With the SQLite history, serve is the one process: its builds are never another's, and a
    // lease that ran out is a clock that jumped (a suspended machine), not a lost worker.
    if app.store.backend() != Backend::Postgres {
        return;
    }
    let every = app.config.worker.lease() / 2;
    loop {
        tokio::time::sleep(every).await;
        match app.store.expired_leases().await {
            Ok(lost) => {
                for (build, lease, cancel) in lost {
                    if let Err(e) = take_over(&app, &build, lease, cancel).await {
                        tracing::warn!(build = %build.id, "cannot take over the build of a lost worker: {e:#}");
                    }
                }
            }
            Err(e) => tracing::warn!("cannot look for builds of lost workers: {e:#}"),
        }
    }
}

/// Queues `build` again, or ends it, after its worker lost `lease`; a build asked to stop
/// meanwhile (`cancel`) ends `cancelled`.
async fn take_over(app: &Arc<App>, build: &Build, lease: Lease, cancel: Option<String>) -> anyhow::Result<()> {
    let worker = build.worker.clone().unwrap_or_else(|| "(unnamed)".into());
    let job = match app.store.settings(build.id).await? {
        Some(settings) => Job::of(build, &settings).ok(),
        None => None,
    };
    if cancel.is_none() && lease.generation <= app.config.worker.requeues && job.is_some() {
        let Some(queued) = app.store.requeue(lease).await? else { return Ok(()) };
        tracing::warn!(build = %build.id, %worker, "worker {worker} lost the build's lease: queued again");
        if let Some(job) = &job {
            let said = format!("queued again: worker {worker} lost");
            app.statuses.report(status_of(app, job, build.id, BuildStatus::Queued, said)).await;
        }
        app.announce(&queued);
        // A serve that builds queues it in its own queue too; workers claim it from the database.
        if let Some(job) = job.filter(|job| super::runs_here(app, job)) {
            super::start(app, build.id, job);
        }
        return Ok(());
    }
    let (ended_as, reason) = match cancel {
        Some(reason) => (BuildStatus::Cancelled, reason),
        None => (BuildStatus::Error, format!("worker {worker} lost")),
    };
    let status = job.and_then(|job| app.statuses.outbox_row(status_of(app, &job, build.id, ended_as, reason.clone())));
    let outcome = Outcome::failed(ended_as, &reason);
    if let Some(ended) = app.store.finish(build.id, &outcome, status.as_ref(), Holder::Expired(lease)).await? {
        tracing::warn!(build = %build.id, %worker, "the build ended: {reason}");
        app.statuses.wake();
        app.announce(&ended);
        app.metrics.observe_end(&ended);
    }
    Ok(())
}
