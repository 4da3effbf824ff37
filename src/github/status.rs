//! Commit statuses: posted in order by one background task, so a slow or failing GitHub never
//! slows or fails a build.

use std::time::Duration;

use octocrab::Octocrab;
use octocrab::models::StatusState;
use tokio::sync::mpsc;

use crate::config::GithubConfig;
use crate::model::{BuildStatus, CommitSha, RepoName};

/// GitHub refuses descriptions longer than this.
const MAX_DESCRIPTION: usize = 140;
/// How long one status request may take before it is given up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

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

/// Queues statuses for the poster task; does nothing when no token is configured.
#[derive(Clone)]
pub struct StatusReporter {
    queue: Option<mpsc::UnboundedSender<CommitStatus>>,
}

impl StatusReporter {
    /// Starts the poster task, or a disabled reporter when `[github] token` is empty.
    pub fn start(config: &GithubConfig) -> anyhow::Result<Self> {
        if config.token.is_empty() {
            tracing::info!("[github] token is empty: no commit statuses will be posted");
            return Ok(Self { queue: None });
        }
        let client = Octocrab::builder()
            .base_uri(config.api_url.as_str())?
            .personal_token(config.token.expose().to_string())
            .build()?;
        let (queue, mut pending) = mpsc::unbounded_channel::<CommitStatus>();
        tokio::spawn(async move {
            while let Some(status) = pending.recv().await {
                post(&client, &status).await;
            }
        });
        Ok(Self { queue: Some(queue) })
    }

    pub fn report(&self, status: CommitStatus) {
        if let Some(queue) = &self.queue {
            let _ = queue.send(status);
        }
    }
}

async fn post(client: &Octocrab, status: &CommitStatus) {
    let state = match status.status {
        BuildStatus::Queued | BuildStatus::Running => StatusState::Pending,
        BuildStatus::Success => StatusState::Success,
        BuildStatus::Failure => StatusState::Failure,
        BuildStatus::Error | BuildStatus::Cancelled => StatusState::Error,
    };
    let repos = client.repos(status.repository.org(), status.repository.name());
    let request = repos
        .create_status(status.commit.to_string(), state)
        .context(status.context.clone())
        .description(truncate(&status.description, MAX_DESCRIPTION))
        .target(status.target_url.clone())
        .send();
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(Ok(_)) => {
            tracing::debug!(repo = %status.repository, commit = %status.commit, state = %status.status, "status posted")
        }
        Ok(Err(e)) => {
            tracing::warn!(repo = %status.repository, commit = %status.commit, "GitHub refused the commit status: {e}")
        }
        Err(_) => {
            tracing::warn!(repo = %status.repository, commit = %status.commit, "GitHub did not answer the commit status in time")
        }
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
