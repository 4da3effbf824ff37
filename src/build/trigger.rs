//! What a webhook delivery asks for, and carrying it out. The rules (which events build, pull
//! requests and forks, the recipes repository, commands) are decided by [`decide`] from the parsed
//! event, the project's settings and its loaded recipes alone, with no HTTP in sight: the edge
//! turns the one [`Answer`] into a status code.

use std::sync::Arc;

use serde::Serialize;

use super::order::{Lineage, newer_than};
use super::reload::reload;
use super::{Source, enqueue};
use crate::app::App;
use crate::config::ProjectConfig;
use crate::github::events::{Command, CommandKind, Event, PullRequest};
use crate::model::{Branch, BuildId, BuildStatus, CommitSha, RepoName};
use crate::recipes::{Recipe, RecipeSet};
use crate::store::{HistoryFilter, MAX_HISTORY};

/// How a delivery was taken, which the edge turns into an HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Understood, and nothing (more) to do.
    Done,
    /// Builds queued, a reload started, or an event acknowledged and ignored.
    Accepted,
    /// The payload is not what GitHub sends.
    Malformed,
    /// The project is not configured (a stored delivery replayed after a configuration change).
    UnknownProject,
    /// The project's recipes are not loaded.
    NotReady,
    /// GitHub, asked who may run a command, did not answer.
    Upstream,
    /// Something on autobuilder's side failed; the server log has the details.
    Failed,
}

/// The one answer to a delivery.
#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    #[serde(skip)]
    pub verdict: Verdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The builds the delivery started (or found already building).
    pub builds: Vec<BuildId>,
    /// Their pages.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
}

impl Answer {
    pub fn said(verdict: Verdict, message: impl Into<String>) -> Self {
        Self { verdict, message: Some(message.into()), error: None, builds: Vec::new(), urls: Vec::new() }
    }

    pub fn refused(verdict: Verdict, error: impl Into<String>) -> Self {
        Self { verdict, message: None, error: Some(error.into()), builds: Vec::new(), urls: Vec::new() }
    }

    /// The answer to a failure of autobuilder itself; the cause goes to the server log only.
    fn failed(error: anyhow::Error) -> Self {
        tracing::error!("acting on a delivery failed: {error:#}");
        Self::refused(Verdict::Failed, "internal error; the server log has the details")
    }
}

/// What a delivery asks for, decided without doing anything.
#[derive(Debug)]
pub enum Decision {
    /// Nothing to do but answer.
    Answer(Answer),
    /// Load the recipes (the push named this commit; a force push may move them back).
    Reload { commit: CommitSha, forced: bool },
    /// Build every script of a recipe at a commit.
    Build { recipe: Box<Recipe>, source: Source, lineage: Lineage },
    /// Cancel the builds of a closed pull request (its `pull/<n>` branch).
    Cancel { repository: RepoName, branch: Branch, reason: String },
    /// A pull request comment's command (it asks GitHub who may, so it is carried out).
    Command(Command),
}

/// The project a delivery is for: its name, settings and loaded recipes.
pub struct Project<'a> {
    pub name: &'a str,
    pub settings: Option<&'a ProjectConfig>,
    pub recipes: Option<&'a RecipeSet>,
}

/// Decides what the delivery of `event` (parsed as `parsed`) asks of `project`.
pub fn decide(project: &Project<'_>, event: &str, parsed: anyhow::Result<Event>) -> Decision {
    let answer = |verdict, message: String| Decision::Answer(Answer::said(verdict, message));
    let refuse = |verdict, error: String| Decision::Answer(Answer::refused(verdict, error));
    let name = project.name;
    let Some(settings) = project.settings else {
        return refuse(Verdict::UnknownProject, format!("no project {name:?} is configured"));
    };
    let push = match parsed {
        Err(e) => return refuse(Verdict::Malformed, format!("malformed {event} payload: {e}")),
        Ok(Event::Ping) => return answer(Verdict::Done, "pong".into()),
        Ok(Event::Other(name)) => {
            return answer(Verdict::Accepted, format!("event {name} ignored: only push and pull_request are acted on"));
        }
        Ok(Event::PullRequest(pr)) => return decide_pull_request(project, settings, pr),
        Ok(Event::Command(command)) => return Decision::Command(command),
        Ok(Event::Push(push)) => push,
    };
    let branch = match push.branch() {
        None => {
            let message = format!("{} is not a branch: tags and other refs start no build", push.git_ref);
            return answer(Verdict::Done, message);
        }
        Some(Err(e)) => return refuse(Verdict::Malformed, format!("refused ref {:?}: {e}", push.git_ref)),
        Some(Ok(branch)) => branch,
    };
    if push.deleted || push.after.is_zero() {
        return answer(Verdict::Done, format!("branch {branch} of {} was deleted: nothing to build", push.repository));
    }
    if push.repository.as_str() == settings.recipes {
        if branch.as_str() != settings.branch {
            let message =
                format!("branch {branch} of the recipes repository is not loaded (project loads {})", settings.branch);
            return answer(Verdict::Done, message);
        }
        return Decision::Reload { commit: push.after, forced: push.forced };
    }
    let Some(recipes) = project.recipes else {
        let error = format!(
            "the recipes of project {name} are not loaded: see the last reload in /build/history?repository={}",
            settings.recipes
        );
        return refuse(Verdict::NotReady, error);
    };
    let Some(recipe) = recipes.get(&push.repository, &branch).cloned() else {
        return answer(Verdict::Done, format!("no recipe for {} branch {branch}: nothing to build", push.repository));
    };
    let lineage = Lineage { before: push.before, forced: push.forced };
    let source = Source::new(name, push.repository, branch, push.after, push.message, push.author);
    Decision::Build { recipe: Box::new(recipe), source, lineage }
}

/// A pull request is built at its head with the recipe of the branch it targets (never one from
/// the pull request), as branch `pull/<n>`; from a fork only when the project allows it.
fn decide_pull_request(project: &Project<'_>, settings: &ProjectConfig, pr: PullRequest) -> Decision {
    let answer = |message: String| Decision::Answer(Answer::said(Verdict::Done, message));
    let branch = Branch::pull(pr.number);
    match pr.action.as_str() {
        "opened" | "synchronize" | "reopened" => {}
        "closed" => {
            let reason = format!("pull request #{} closed", pr.number);
            return Decision::Cancel { repository: pr.repository, branch, reason };
        }
        other => {
            return answer(format!("pull_request {other} ignored: only opened, synchronize, reopened and closed are"));
        }
    }
    if pr.from_fork() && !settings.allow_forks {
        return answer(format!(
            "pull request #{} comes from a fork ({}): not built, as allow_forks is off for project {}",
            pr.number,
            pr.head_repository.as_deref().unwrap_or("a deleted repository"),
            project.name
        ));
    }
    let Some(recipe) = project.recipes.and_then(|set| set.get(&pr.repository, &pr.base)).cloned() else {
        return answer(format!(
            "no recipe for {} branch {}, which pull request #{} targets",
            pr.repository, pr.base, pr.number
        ));
    };
    let lineage = Lineage { before: pr.before, forced: false };
    let source = Source::new(project.name, pr.repository, branch, pr.head_sha, pr.title, pr.user);
    Decision::Build { recipe: Box::new(recipe), source, lineage }
}

/// Carries a decision out; the answer.
pub async fn carry_out(app: &Arc<App>, project: &str, decision: Decision) -> Answer {
    match decision {
        Decision::Answer(answer) => answer,
        Decision::Reload { commit, forced } => {
            let message = format!("reloading recipes at {}", commit.short());
            let (app, project) = (app.clone(), project.to_string());
            tokio::spawn(async move {
                if let Err(e) = reload(&app, &project, Some(commit), forced).await {
                    tracing::error!(project, "recipes reload failed: {e:#}");
                }
            });
            Answer::said(Verdict::Accepted, message)
        }
        Decision::Command(command) => run_command(app, project, command).await,
        Decision::Cancel { repository, branch, reason } => {
            match super::cancel_branch(app, project, &repository, &branch, &reason).await {
                Ok(cancelled) => Answer::said(Verdict::Done, format!("{reason}: {cancelled} builds cancelled")),
                Err(e) => Answer::failed(e),
            }
        }
        Decision::Build { recipe, source, lineage } => {
            queue_builds(app, &recipe, source, &lineage).await.unwrap_or_else(Answer::failed)
        }
    }
}

/// Queues one build per script of `recipe` (superseding the branch's builds of other commits);
/// the answer. A commit older than one already seen on the branch starts and cancels nothing,
/// and a script already queued or running for this very commit is not started again.
async fn queue_builds(app: &Arc<App>, recipe: &Recipe, source: Source, lineage: &Lineage) -> anyhow::Result<Answer> {
    let _turn = app.heads.turn(&source).await;
    let (repository, branch, commit) = (source.repository.clone(), source.branch.clone(), source.commit.clone());
    if let Some(newer) = newer_than(app, &source, lineage).await {
        let message = format!(
            "{} is older than {}, already seen on {repository} {branch}: nothing started or cancelled",
            commit.short(),
            newer.short()
        );
        return Ok(Answer::said(Verdict::Done, message));
    }
    app.heads.saw(&source);
    let enqueued = enqueue(app, recipe, source, None).await?;
    let (verdict, message) = match (enqueued.queued.len(), enqueued.already.len()) {
        (0, _) => (Verdict::Done, format!("already building {} for {repository} {branch}", commit.short())),
        (queued, 0) => {
            (Verdict::Accepted, format!("{queued} builds queued for {repository} {branch} at {}", commit.short()))
        }
        (queued, already) => (
            Verdict::Accepted,
            format!(
                "{queued} builds queued for {repository} {branch} at {}; {already} already building",
                commit.short()
            ),
        ),
    };
    let builds: Vec<BuildId> = enqueued.queued.iter().chain(&enqueued.already).copied().collect();
    let urls = builds.iter().map(|id| app.build_url(*id)).collect();
    Ok(Answer { builds, urls, ..Answer::said(verdict, message) })
}

/// `@autobuilder rebuild` builds the pull request's head (a fork too: someone with write access
/// asked); `@autobuilder status` answers with a comment listing each build script's last result
/// for the head commit. Only users with write access are heard.
async fn run_command(app: &Arc<App>, project: &str, command: Command) -> Answer {
    let Some(github) = &app.github else {
        return Answer::said(Verdict::Done, "pull request commands need a GitHub token or app in [github]");
    };
    let unreachable = |e: anyhow::Error| Answer::refused(Verdict::Upstream, format!("GitHub: {e:#}"));
    let (repo, number, user) = (&command.repository, command.number, &command.user);
    match github.can_write(repo, user).await {
        Ok(true) => {}
        Ok(false) => {
            return Answer::said(Verdict::Done, format!("{user} has no write access to {repo}: command ignored"));
        }
        Err(e) => return unreachable(e),
    }
    let pr = match github.pull_request(repo, number).await {
        Ok(pr) => pr,
        Err(e) => return unreachable(e),
    };
    let Some(recipe) = app.recipes.get(project).and_then(|set| set.get(repo, &pr.base).cloned()) else {
        return Answer::said(
            Verdict::Done,
            format!("no recipe for {repo} branch {}, which #{number} targets", pr.base),
        );
    };
    let branch = Branch::pull(number);
    match command.kind {
        CommandKind::Rebuild => {
            let source = Source::new(project, repo.clone(), branch, pr.head_sha, pr.title, pr.user);
            queue_builds(app, &recipe, source, &Lineage::default()).await.unwrap_or_else(Answer::failed)
        }
        CommandKind::Status => {
            let filter = HistoryFilter {
                limit: Some(MAX_HISTORY),
                repository: Some(repo.to_string()),
                branch: Some(branch.to_string()),
                ..Default::default()
            };
            let history = match app.store.history(&filter).await {
                Ok(history) => history,
                Err(e) => return Answer::failed(e),
            };
            let mut lines = Vec::new();
            let mut green = true;
            for script in &recipe.scripts {
                let last = history
                    .iter()
                    .find(|b| b.new.commit.as_ref() == Some(&pr.head_sha) && b.new.script == script.script);
                let result = match last {
                    Some(b) => {
                        let error = b.outcome.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
                        format!("{}{error}", b.outcome.status)
                    }
                    None => "not built".into(),
                };
                green &= last.is_some_and(|b| b.outcome.status == BuildStatus::Success);
                lines.push(format!("- `{}`: {result}", script.script));
            }
            let verdict =
                if green { "mergeable: every recipe is green" } else { "not mergeable yet: not every recipe is green" };
            let body = format!("autobuilder on {}:\n{}\n\n**{verdict}**", pr.head_sha.short(), lines.join("\n"));
            if let Err(e) = github.comment(repo, number, &body).await {
                return unreachable(e);
            }
            Answer::said(Verdict::Done, format!("status of #{number} commented: {verdict}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::github::events::parse_event;

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
    const RECIPE: &str = "buildscripts: [b.sh]\nb.sh: {artifact: b.tar.gz}\n";

    fn settings(allow_forks: bool) -> ProjectConfig {
        toml::from_str(&format!("recipes = \"org/recipes\"\nwebhook_secret = \"s\"\nallow_forks = {allow_forks}"))
            .unwrap()
    }

    fn recipes() -> RecipeSet {
        let files = [
            ("org/app/master.yaml", RECIPE),
            ("org/app/feature.yaml", "buildscripts: [f.sh]\nf.sh: {artifact: f.tar.gz}\n"),
        ];
        RecipeSet::parse("demo", files.iter().map(|(path, text)| (path.to_string(), text.as_bytes())))
    }

    fn decide_on(
        settings: &ProjectConfig,
        recipes: Option<&RecipeSet>,
        event: &str,
        body: serde_json::Value,
    ) -> Decision {
        let project = Project { name: "demo", settings: Some(settings), recipes };
        decide(&project, event, parse_event(event, body.to_string().as_bytes()))
    }

    fn push(repo: &str, git_ref: &str, after: &str) -> serde_json::Value {
        json!({"ref": git_ref, "before": "1".repeat(40), "after": after, "forced": true,
               "repository": {"full_name": repo}, "head_commit": {"message": "m", "author": {"name": "Ada"}}})
    }

    fn pull_request(action: &str, head_repo: &str) -> serde_json::Value {
        json!({"action": action, "number": 7, "repository": {"full_name": "org/app"},
               "pull_request": {"title": "t", "user": {"login": "grace"},
                                "head": {"ref": "feature", "sha": SHA, "repo": {"full_name": head_repo}},
                                "base": {"ref": "master", "sha": "2".repeat(40), "repo": {"full_name": "org/app"}}}})
    }

    fn said(decision: Decision) -> (Verdict, String) {
        match decision {
            Decision::Answer(answer) => (answer.verdict, answer.message.or(answer.error).unwrap()),
            other => panic!("not an answer: {other:?}"),
        }
    }

    #[test]
    fn a_push_to_a_tracked_branch_builds_its_commit() {
        let (settings, recipes) = (settings(false), recipes());
        let Decision::Build { recipe, source, lineage } =
            decide_on(&settings, Some(&recipes), "push", push("org/app", "refs/heads/master", SHA))
        else {
            panic!("no build");
        };
        assert_eq!(
            (recipe.file.as_str(), source.branch.as_str(), source.commit.as_str()),
            ("org/app/master.yaml", "master", SHA)
        );
        assert_eq!((source.project.as_str(), source.author.as_deref()), ("demo", Some("Ada")));
        assert_eq!((lineage.before.unwrap().as_str(), lineage.forced), ("1".repeat(40).as_str(), true));
    }

    #[test]
    fn pushes_that_build_nothing_say_why() {
        let (settings, recipes) = (settings(false), recipes());
        let cases = [
            (push("org/app", "refs/tags/v1", SHA), Verdict::Done, "refs/tags/v1 is not a branch"),
            (push("org/app", "refs/heads/master", &"0".repeat(40)), Verdict::Done, "was deleted"),
            (push("org/app", "refs/heads/other", SHA), Verdict::Done, "no recipe for org/app branch other"),
            (push("org/recipes", "refs/heads/dev", SHA), Verdict::Done, "recipes repository is not loaded"),
            (push("org/app", "refs/heads/a..b", SHA), Verdict::Malformed, "refused ref"),
        ];
        for (body, verdict, text) in cases {
            let (got, message) = said(decide_on(&settings, Some(&recipes), "push", body));
            assert_eq!(got, verdict, "{message}");
            assert!(message.contains(text), "{message}");
        }
        let reload = decide_on(&settings, Some(&recipes), "push", push("org/recipes", "refs/heads/master", SHA));
        assert!(matches!(reload, Decision::Reload { commit, forced: true } if commit.as_str() == SHA));
        let (verdict, error) = said(decide_on(&settings, None, "push", push("org/app", "refs/heads/master", SHA)));
        assert_eq!(verdict, Verdict::NotReady, "{error}");
    }

    #[test]
    fn other_events_and_unknown_projects() {
        let (settings, recipes) = (settings(false), recipes());
        assert_eq!(
            said(decide_on(&settings, Some(&recipes), "ping", json!({"zen": "hi"}))),
            (Verdict::Done, "pong".into())
        );
        assert_eq!(said(decide_on(&settings, Some(&recipes), "issues", json!({}))).0, Verdict::Accepted);
        assert_eq!(said(decide_on(&settings, Some(&recipes), "push", json!({"ref": 1}))).0, Verdict::Malformed);
        let nobody = Project { name: "nope", settings: None, recipes: None };
        assert_eq!(said(decide(&nobody, "ping", Ok(Event::Ping))).0, Verdict::UnknownProject);
    }

    #[test]
    fn pull_requests_build_with_the_target_branch_recipe_and_forks_only_when_allowed() {
        let recipes = recipes();
        let Decision::Build { recipe, source, .. } =
            decide_on(&settings(false), Some(&recipes), "pull_request", pull_request("opened", "org/app"))
        else {
            panic!("no build");
        };
        assert_eq!((recipe.file.as_str(), source.branch.as_str()), ("org/app/master.yaml", "pull/7"));
        let (_, message) =
            said(decide_on(&settings(false), Some(&recipes), "pull_request", pull_request("synchronize", "ev/il")));
        assert!(message.contains("comes from a fork (ev/il)"), "{message}");
        let forked = decide_on(&settings(true), Some(&recipes), "pull_request", pull_request("reopened", "ev/il"));
        assert!(matches!(forked, Decision::Build { .. }));
        let closed = decide_on(&settings(false), Some(&recipes), "pull_request", pull_request("closed", "org/app"));
        assert!(matches!(closed, Decision::Cancel { branch, .. } if branch == Branch::pull(7)));
        let (verdict, message) =
            said(decide_on(&settings(false), Some(&recipes), "pull_request", pull_request("labeled", "org/app")));
        assert_eq!(verdict, Verdict::Done);
        assert!(message.contains("labeled ignored"), "{message}");
    }

    #[test]
    fn comments_with_a_command_are_commands() {
        let comment = |body: &str, on_pull_request: bool| {
            let issue = if on_pull_request { json!({"number": 7, "pull_request": {}}) } else { json!({"number": 7}) };
            json!({"action": "created", "issue": issue, "comment": {"body": body, "user": {"login": "grace"}},
                   "repository": {"full_name": "org/app"}})
        };
        let (settings, recipes) = (settings(false), recipes());
        let command = decide_on(&settings, Some(&recipes), "issue_comment", comment("@autobuilder rebuild", true));
        assert!(matches!(command, Decision::Command(c) if c.kind == CommandKind::Rebuild && c.user == "grace"));
        let on_issue = decide_on(&settings, Some(&recipes), "issue_comment", comment("@autobuilder rebuild", false));
        assert_eq!(said(on_issue).0, Verdict::Accepted);
    }
}
