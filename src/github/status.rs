//! Commit statuses through an outbox: a status is stored before anything else happens, then one
//! background task posts them in order, retrying through GitHub outages and rate limits (with
//! their retry headers) until delivered, across restarts. A failing GitHub never slows a build.

use std::sync::Arc;
use std::time::Duration;

use octocrab::Octocrab;
use serde_json::json;
use tokio::sync::Notify;

use crate::config::GithubConfig;
use crate::model::{BuildStatus, CommitSha, RepoName};
use crate::store::{Backend, OutboxStatus, Store, now_ms};

/// GitHub refuses descriptions longer than this.
const MAX_DESCRIPTION: usize = 140;
/// How long one status request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait between two attempts at one status.
const MAX_BACKOFF_MS: i64 = 5 * 60 * 1000;
/// How often an empty outbox of a PostgreSQL history is looked at again for statuses other
/// processes stored.
const OUTBOX_POLL: Duration = Duration::from_secs(1);
/// How often a `serve` whose turn it is not to post statuses asks again (another one posts).
const POSTER_TURN_WAIT: Duration = Duration::from_secs(2);
/// A status GitHub refuses outright (not an outage, not a rate limit) is tried this many times.
const REFUSALS_BEFORE_GIVING_UP: i64 = 3;

/// One commit status to post.
#[derive(Debug, Clone)]
pub struct CommitStatus {
    pub repository: RepoName,
    pub commit: CommitSha,
    pub status: BuildStatus,
    /// e.g. `autobuilder/build.sh`.
    pub context: String,
    pub description: String,
    pub target_url: String,
}

/// Puts statuses in the outbox and wakes the poster; does nothing when no token is configured.
#[derive(Clone)]
pub struct StatusReporter {
    outbox: Option<(Store, Arc<Notify>)>,
}

impl StatusReporter {
    /// Starts the poster task (which first delivers what a previous run left in the outbox), or a
    /// disabled reporter when `[github] token` is empty. Without `post` (an `autobuilder worker`),
    /// statuses are only stored: the `serve` of the same history posts them.
    pub fn start(config: &GithubConfig, store: Store, post: bool) -> anyhow::Result<Self> {
        // The outbox retries, with its own backoff: octocrab does not.
        let Some(client) = super::client(config, false)? else {
            tracing::info!("[github] token is empty and no app is configured: no commit statuses will be posted");
            return Ok(Self { outbox: None });
        };
        let wake = Arc::new(Notify::new());
        if post {
            tokio::spawn(deliver(client, store.clone(), wake.clone()));
        }
        Ok(Self { outbox: Some((store, wake)) })
    }

    /// Stores `status` in the outbox; it is posted after every status stored before it.
    pub async fn report(&self, status: CommitStatus) {
        let (Some((store, _)), Some(stored)) = (&self.outbox, self.outbox_row(status)) else { return };
        match store.queue_status(&stored).await {
            Ok(()) => self.wake(),
            Err(e) => {
                tracing::error!(repo = %stored.repository, commit = %stored.commit, "cannot store the commit status: {e:#}")
            }
        }
    }

    /// The outbox row of `status`, for a caller that stores it in its own transaction (then
    /// calls [`StatusReporter::wake`]); None when statuses are off.
    pub fn outbox_row(&self, status: CommitStatus) -> Option<OutboxStatus> {
        self.outbox.as_ref()?;
        Some(OutboxStatus {
            id: 0,
            state: status.status.into(),
            repository: status.repository,
            commit: status.commit,
            context: status.context,
            description: truncate(&status.description, MAX_DESCRIPTION),
            target_url: status.target_url,
            attempts: 0,
            next_attempt: 0,
        })
    }

    /// Tells the poster the outbox has something new.
    pub fn wake(&self) {
        if let Some((_, wake)) = &self.outbox {
            wake.notify_one();
        }
    }
}

/// What one attempt at posting came to.
enum Attempt {
    Delivered,
    /// Try again after this many milliseconds.
    Retry(i64, String),
    GiveUp(String),
}

/// Posts the outbox in order, forever, while it is this process's turn (one `serve` at a time
/// posts the outbox of a PostgreSQL history; another takes over when it stops).
async fn deliver(client: Octocrab, store: Store, wake: Arc<Notify>) {
    loop {
        let mut turn = match store.take_poster_turn().await {
            Ok(Some(turn)) => turn,
            Ok(None) => {
                tokio::time::sleep(POSTER_TURN_WAIT).await;
                continue;
            }
            Err(e) => {
                tracing::error!("cannot take the turn to post commit statuses: {e:#}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while turn.held().await {
            post_next(&client, &store, &wake).await;
        }
        tracing::warn!("lost the turn to post commit statuses with the connection holding it: taking it again");
    }
}

/// Posts the oldest status of the outbox when it is due, or waits for one.
async fn post_next(client: &Octocrab, store: &Store, wake: &Notify) {
    let next = match store.next_status().await {
        Ok(next) => next,
        Err(e) => {
            tracing::error!("cannot read the status outbox: {e:#}");
            return tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    let Some(status) = next else {
        return match store.backend() {
            Backend::Sqlite => wake.notified().await,
            // Workers on other hosts store statuses too, without a way to wake this task.
            Backend::Postgres => drop(tokio::time::timeout(OUTBOX_POLL, wake.notified()).await),
        };
    };
    let wait = status.next_attempt - now_ms();
    if wait > 0 {
        return tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
    let recorded = match post(client, &status).await {
        Attempt::Delivered => {
            tracing::debug!(repo = %status.repository, commit = %status.commit, state = %status.state, "status posted");
            store.status_done(status.id, None).await
        }
        Attempt::Retry(delay, error) => {
            tracing::warn!(repo = %status.repository, commit = %status.commit, "status not delivered, retrying in {}s: {error}", delay / 1000);
            store.status_retry(status.id, delay, &error).await
        }
        Attempt::GiveUp(error) => {
            tracing::error!(repo = %status.repository, commit = %status.commit, "status given up: {error}");
            store.status_done(status.id, Some(&error)).await
        }
    };
    if let Err(e) = recorded {
        tracing::error!("cannot update the status outbox: {e:#}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn post(client: &Octocrab, status: &OutboxStatus) -> Attempt {
    let backoff = (1000i64 << status.attempts.min(20)).min(MAX_BACKOFF_MS);
    let route = format!("/repos/{}/statuses/{}", status.repository, status.commit);
    let body = json!({
        "state": status.state,
        "context": status.context,
        "description": status.description,
        "target_url": status.target_url,
    });
    let response = match tokio::time::timeout(REQUEST_TIMEOUT, client._post(route.as_str(), Some(&body))).await {
        Err(_) => return Attempt::Retry(backoff, "GitHub did not answer in time".into()),
        Ok(Err(e)) => return Attempt::Retry(backoff, format!("GitHub unreachable: {e}")),
        Ok(Ok(response)) => response,
    };
    let code = response.status();
    if code.is_success() {
        return Attempt::Delivered;
    }
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let retry_after = header("retry-after").and_then(|v| v.parse::<i64>().ok()).map(|s| s * 1000);
    let reset = header("x-ratelimit-reset")
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|_| header("x-ratelimit-remaining").as_deref() == Some("0"))
        .map(|reset_s| reset_s * 1000 - now_ms());
    let text = client.body_to_string(response).await.unwrap_or_default();
    let error = format!("GitHub answered {code}: {}", text.chars().take(200).collect::<String>());
    let rate_limited = code.as_u16() == 429 || (code.as_u16() == 403 && (retry_after.is_some() || reset.is_some()));
    if rate_limited {
        let delay = retry_after.or(reset).unwrap_or(60_000).clamp(1000, MAX_BACKOFF_MS.max(backoff));
        Attempt::Retry(delay, error)
    } else if code.is_server_error() || status.attempts + 1 < REFUSALS_BEFORE_GIVING_UP {
        Attempt::Retry(backoff, error)
    } else {
        Attempt::GiveUp(error)
    }
}

/// Cuts `text` to at most `max` characters, ending with `…` when cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    #[test]
    fn truncates_on_characters() {
        assert_eq!(super::truncate("short", 140), "short");
        let long = "é".repeat(200);
        let cut = super::truncate(&long, 140);
        assert_eq!(cut.chars().count(), 140);
        assert!(cut.ends_with('…'));
    }
}
