//! The GitHub REST calls behind pull request commands: a user's permission, a pull request, a
//! comment. Raw JSON through octocrab, so a fake GitHub can answer them in tests.

use std::time::Duration;

use anyhow::{Context, bail};
use octocrab::Octocrab;
use serde_json::{Value, json};

use crate::config::GithubConfig;
use crate::model::{Branch, CommitSha, RepoName};

/// How long one API call may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// The HTTP methods the calls use.
#[derive(Clone, Copy)]
enum Verb {
    Get,
    Post,
    Patch,
    Delete,
}

#[derive(Clone)]
pub struct GithubApi {
    client: Octocrab,
}

/// What a command needs of a pull request.
#[derive(Debug)]
pub struct PullRequestHead {
    pub base: Branch,
    pub head_sha: CommitSha,
    pub title: Option<String>,
    pub user: Option<String>,
}

impl GithubApi {
    /// A client, or None when neither a token nor an app is configured.
    pub fn new(config: &GithubConfig) -> anyhow::Result<Option<Self>> {
        Ok(super::client(config, true)?.map(|client| Self { client }))
    }

    /// Whether `user` may push to `repo` (permission admin, maintain or write).
    pub async fn can_write(&self, repo: &RepoName, user: &str) -> anyhow::Result<bool> {
        Ok(matches!(self.permission(repo, user).await?.as_str(), "admin" | "maintain" | "write"))
    }

    /// `user`'s permission on `repo` as GitHub names it: `admin`, `maintain`, `write`, `triage`,
    /// `read` or `none`.
    pub async fn permission(&self, repo: &RepoName, user: &str) -> anyhow::Result<String> {
        let answer = self.get(&format!("/repos/{repo}/collaborators/{user}/permission")).await?;
        Ok(answer["permission"].as_str().unwrap_or("none").to_string())
    }

    pub async fn pull_request(&self, repo: &RepoName, number: u64) -> anyhow::Result<PullRequestHead> {
        let pr = self.get(&format!("/repos/{repo}/pulls/{number}")).await?;
        Ok(PullRequestHead {
            base: Branch::parse(pr["base"]["ref"].as_str().context("pull request without a base")?)?,
            head_sha: CommitSha::parse(pr["head"]["sha"].as_str().context("pull request without a head")?)?,
            title: pr["title"].as_str().map(str::to_string),
            user: pr["user"]["login"].as_str().map(str::to_string),
        })
    }

    pub async fn comment(&self, repo: &RepoName, number: u64, body: &str) -> anyhow::Result<()> {
        let route = format!("/repos/{repo}/issues/{number}/comments");
        self.send(Verb::Post, &route, Some(&json!({ "body": body }))).await.map(drop)
    }

    /// The webhooks of `repo`.
    pub async fn hooks(&self, repo: &RepoName) -> anyhow::Result<Vec<Value>> {
        let hooks = self.get(&format!("/repos/{repo}/hooks?per_page=100")).await?;
        Ok(hooks.as_array().cloned().unwrap_or_default())
    }

    pub async fn create_hook(&self, repo: &RepoName, hook: &Value) -> anyhow::Result<()> {
        self.send(Verb::Post, &format!("/repos/{repo}/hooks"), Some(hook)).await.map(drop)
    }

    pub async fn update_hook(&self, repo: &RepoName, id: i64, hook: &Value) -> anyhow::Result<()> {
        self.send(Verb::Patch, &format!("/repos/{repo}/hooks/{id}"), Some(hook)).await.map(drop)
    }

    pub async fn delete_hook(&self, repo: &RepoName, id: i64) -> anyhow::Result<()> {
        self.send(Verb::Delete, &format!("/repos/{repo}/hooks/{id}"), None).await.map(drop)
    }

    async fn get(&self, route: &str) -> anyhow::Result<Value> {
        Ok(serde_json::from_str(&self.send(Verb::Get, route, None).await?)?)
    }

    /// Sends one request, waiting at most [`REQUEST_TIMEOUT`]; the body of the answer, or an
    /// error with GitHub's own words for any answer but a 2xx.
    async fn send(&self, verb: Verb, route: &str, body: Option<&Value>) -> anyhow::Result<String> {
        let call = async {
            match verb {
                Verb::Get => self.client._get(route).await,
                Verb::Post => self.client._post(route, body).await,
                Verb::Patch => self.client._patch(route, body).await,
                Verb::Delete => self.client._delete(route, body).await,
            }
        };
        let response = tokio::time::timeout(REQUEST_TIMEOUT, call).await.context("GitHub did not answer")??;
        let code = response.status();
        let text = self.client.body_to_string(response).await?;
        if !code.is_success() {
            bail!("GitHub answered {code} to {route}: {}", text.chars().take(200).collect::<String>());
        }
        Ok(text)
    }
}
