//! Webhook setup: every tracked repository and the recipes repository get exactly one webhook to
//! `<public_url>/build/<project>/hook`, with the project's secret and the events autobuilder acts
//! on. Hooks of other services are never touched.

use serde_json::{Value, json};

use super::api::GithubApi;
use crate::model::RepoName;

/// The events autobuilder acts on.
pub const EVENTS: [&str; 3] = ["issue_comment", "pull_request", "push"];

/// What `sync` did (or, in a dry run, would do) to one repository.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    Unchanged,
    Created,
    /// Fixed the existing hook; what was wrong.
    Fixed(String),
    /// Removed duplicates of the hook (their ids).
    RemovedDuplicates(Vec<i64>),
}

/// Makes `repo` have exactly one hook to `url` with `secret` and [`EVENTS`]; with `dry_run`,
/// only says what it would change.
pub async fn sync(
    api: &GithubApi,
    repo: &RepoName,
    url: &str,
    secret: &str,
    dry_run: bool,
) -> anyhow::Result<Vec<Change>> {
    let hook = json!({
        "name": "web",
        "active": true,
        "events": EVENTS,
        "config": { "url": url, "content_type": "json", "secret": secret, "insecure_ssl": "0" },
    });
    let ours: Vec<Value> = api.hooks(repo).await?.into_iter().filter(|h| h["config"]["url"] == url).collect();
    let Some((first, duplicates)) = ours.split_first() else {
        if !dry_run {
            api.create_hook(repo, &hook).await?;
        }
        return Ok(vec![Change::Created]);
    };
    let mut changes = Vec::new();
    let id = first["id"].as_i64().unwrap_or_default();
    let wrong = what_is_wrong(first);
    if !wrong.is_empty() {
        if !dry_run {
            api.update_hook(repo, id, &hook).await?;
        }
        changes.push(Change::Fixed(wrong.join(", ")));
    }
    if !duplicates.is_empty() {
        let ids: Vec<i64> = duplicates.iter().filter_map(|h| h["id"].as_i64()).collect();
        if !dry_run {
            for duplicate in &ids {
                api.delete_hook(repo, *duplicate).await?;
            }
        }
        changes.push(Change::RemovedDuplicates(ids));
    }
    if changes.is_empty() {
        changes.push(Change::Unchanged);
    }
    Ok(changes)
}

/// What differs from the hook autobuilder needs (GitHub never shows a secret, only that one is set).
fn what_is_wrong(hook: &Value) -> Vec<String> {
    let mut wrong = Vec::new();
    let mut events: Vec<&str> = hook["events"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    events.sort_unstable();
    if events != EVENTS {
        wrong.push(format!("events were {events:?}"));
    }
    if hook["active"] != true {
        wrong.push("it was inactive".into());
    }
    if hook["config"]["content_type"] != "json" {
        wrong.push("content type was not json".into());
    }
    if hook["config"]["secret"].as_str().is_none_or(str::is_empty) {
        wrong.push("it had no secret".into());
    }
    wrong
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Unchanged => write!(f, "ok"),
            Change::Created => write!(f, "created the webhook"),
            Change::Fixed(what) => write!(f, "fixed the webhook ({what})"),
            Change::RemovedDuplicates(ids) => write!(f, "removed {} duplicate webhooks {ids:?}", ids.len()),
        }
    }
}
