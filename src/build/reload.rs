//! Reloading a project's recipes from its recipes repository, at start-up and on every push to
//! it: a job like a build, recorded in the history with a log of what is tracked and every
//! problem, and given a commit status on the recipes commit. `hooks sync` shares its fetch of the
//! recipes and its set-up of webhooks.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::app::App;
use crate::config::Config;
use crate::git::Mirror;
use crate::github::api::GithubApi;
use crate::github::hook_setup::Change;
use crate::github::status::CommitStatus;
use crate::model::{Branch, BuildId, BuildKind, BuildStatus, CommitSha, NewBuild, Outcome, RepoName};
use crate::recipes::{MAX_RECIPE_BYTES, RecipeSet, is_recipe_path};
use crate::store::{Holder, RECIPES_CHANNEL};

/// Script name of reload entries in the history, and the suffix of their status context.
pub const RELOAD_SCRIPT: &str = "recipes";

/// The recipes currently loaded, per project, and the recipes commit each was loaded from.
#[derive(Default)]
pub struct Recipes {
    sets: RwLock<HashMap<String, Loaded>>,
    /// Reloads run one at a time, so an older fetch never overwrites a newer one.
    reloading: tokio::sync::Mutex<()>,
}

impl Recipes {
    /// The recipes of `project`, if any were ever loaded.
    pub fn get(&self, project: &str) -> Option<Arc<RecipeSet>> {
        self.sets.read().expect("not poisoned").get(project).map(|loaded| loaded.active.clone())
    }

    /// The recipes commit the loaded recipes of `project` come from.
    fn commit(&self, project: &str) -> Option<CommitSha> {
        self.sets.read().expect("not poisoned").get(project).map(|loaded| loaded.commit.clone())
    }

    /// Stores the recipes of `project` at `commit`, then refuses in every project the recipes whose
    /// artifact names a recipe of another project could also publish (they share the artifact
    /// store): both sides, whichever loaded first, so that no load order decides who owns a
    /// name. The recipes `project` had in use before, and has now.
    fn replace(&self, project: &str, set: RecipeSet, commit: &CommitSha) -> (Option<Arc<RecipeSet>>, Arc<RecipeSet>) {
        let mut sets = self.sets.write().expect("not poisoned");
        let set = Arc::new(set);
        let loaded = Loaded { parsed: set.clone(), active: set, commit: commit.clone() };
        let previous = sets.insert(project.to_string(), loaded).map(|previous| previous.active);
        let parsed: Vec<(String, Arc<RecipeSet>)> = sets.iter().map(|(n, l)| (n.clone(), l.parsed.clone())).collect();
        for (name, loaded) in sets.iter_mut() {
            let others: Vec<(&str, &RecipeSet)> =
                parsed.iter().filter(|(other, _)| other != name).map(|(n, s)| (n.as_str(), s.as_ref())).collect();
            let mut active = RecipeSet::clone(&loaded.parsed);
            crate::recipes::names::refuse_collisions(&mut active, &others);
            if name != project && active.recipes.len() != loaded.active.recipes.len() {
                tracing::warn!(
                    project = name.as_str(),
                    "after the reload of project {project}, {} of its recipes are in use: {:?}",
                    active.recipes.len(),
                    active.problems
                );
            }
            loaded.active = Arc::new(active);
        }
        let now = sets[project].active.clone();
        (previous, now)
    }
}

/// The recipes of one project and the recipes commit they come from: as parsed (within the
/// project's own rules), and in use (less those whose names another project could publish).
struct Loaded {
    parsed: Arc<RecipeSet>,
    active: Arc<RecipeSet>,
    commit: CommitSha,
}

/// What a fetch of the recipes repository found.
enum Fetched {
    /// The branch head, to load, with its recipe files.
    Head(CommitSha, Vec<(String, Vec<u8>)>),
    /// The branch head is what is loaded already, or older than it (a late delivery).
    NotNewer { head: CommitSha, loaded: CommitSha },
}

/// A project's recipes repository, fetched into a bare mirror under `data_dir/recipes/<project>.git`.
struct RecipesRepo {
    repository: RepoName,
    branch: Branch,
    mirror: PathBuf,
    url: String,
}

impl RecipesRepo {
    /// The recipes repository and branch of `project` (a `[projects.*]` table).
    fn of(config: &Config, project: &str) -> anyhow::Result<Self> {
        let settings = config.projects.get(project).ok_or_else(|| anyhow::anyhow!("unknown project {project}"))?;
        let repository = RepoName::parse(&settings.recipes)?;
        Ok(Self {
            branch: Branch::parse(&settings.branch)?,
            mirror: config.data_dir.join("recipes").join(format!("{project}.git")),
            url: config.clone_url(&repository),
            repository,
        })
    }

    /// Fetches the branch into the mirror; returns its head.
    async fn fetch_head(&self) -> anyhow::Result<CommitSha> {
        let branch = self.branch.clone();
        self.with_mirror(move |mirror| mirror.fetch(&branch, None)).await
    }

    /// The recipe files of `commit` (fetched before), each cut one byte past the largest a recipe
    /// may be, so that the parser refuses an oversized one by name.
    async fn recipe_files(&self, commit: &CommitSha) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        let commit = commit.clone();
        self.with_mirror(move |mirror| mirror.files(&commit, is_recipe_path, MAX_RECIPE_BYTES + 1)).await
    }

    /// The head, with its recipe files, unless `loaded` is that head or newer.
    async fn fetch_newer(&self, loaded: Option<CommitSha>) -> anyhow::Result<Fetched> {
        let head = self.fetch_head().await?;
        if let Some(loaded) = loaded {
            let (older, newer) = (head.clone(), loaded.clone());
            if head == loaded || self.with_mirror(move |m| m.is_ancestor(&older, &newer)).await? == Some(true) {
                return Ok(Fetched::NotNewer { head, loaded });
            }
        }
        let files = self.recipe_files(&head).await?;
        Ok(Fetched::Head(head, files))
    }

    /// Runs `work` on the mirror, on a blocking thread (libgit2 blocks).
    async fn with_mirror<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Mirror<'_>) -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let (path, url) = (self.mirror.clone(), self.url.clone());
        tokio::task::spawn_blocking(move || work(&Mirror { path: &path, url: &url })).await?
    }
}

/// Fetches the project's recipes repository, parses its branch head, swaps the loaded recipes,
/// and records the reload. `pushed` is the commit a push delivery named: the head is loaded
/// whatever it names, as deliveries may arrive out of order, and recipes older than (or the same
/// as) those loaded are never loaded again, unless the push was `forced`. A failed fetch keeps
/// the recipes loaded before.
/// Returns the history entry of the reload, `None` when there was nothing newer to load.
/// On a PostgreSQL history, the other `serve`s are told to load them too ([`follow_other_serves`]).
pub async fn reload(
    app: &Arc<App>,
    project: &str,
    pushed: Option<CommitSha>,
    forced: bool,
) -> anyhow::Result<Option<BuildId>> {
    let reloaded = load(app, project, pushed, forced, true).await?;
    if reloaded.is_some()
        && let Err(e) = app.store.notify(RECIPES_CHANNEL, project).await
    {
        tracing::warn!(project, "cannot tell the other serves to reload the recipes: {e:#}");
    }
    Ok(reloaded)
}

/// How long a `serve` listening for other serves' reloads waits before it looks at the
/// recipes repositories itself (a notification sent while its connection was down is lost).
const FOLLOW_POLL: Duration = Duration::from_secs(300);

/// Loads every project's recipes as a `serve` loaded them, without recording a reload (a worker,
/// which needs them to queue the dependents of the images it makes).
pub async fn load_as_loaded(app: &Arc<App>) {
    for project in app.config.projects.keys() {
        if let Err(e) = load(app, project, None, false, false).await {
            tracing::warn!(project, "cannot load the recipes: {e:#}");
        }
    }
}

/// Loads the recipes another `serve` of the same PostgreSQL history loaded, when it says so (and
/// every few minutes besides), without recording a reload or posting its status again: that
/// serve did. Returns at once on SQLite.
pub async fn follow_other_serves(app: Arc<App>) {
    let Some(mut listener) = app.store.listener(RECIPES_CHANNEL) else { return };
    loop {
        let projects: Vec<String> = match listener.next(FOLLOW_POLL).await {
            Some(project) => vec![project],
            None => app.config.projects.keys().cloned().collect(),
        };
        for project in projects.iter().filter(|project| app.config.projects.contains_key(*project)) {
            if let Err(e) = load(&app, project, None, false, false).await {
                tracing::warn!(project, "cannot load the recipes another serve loaded: {e:#}");
            }
        }
    }
}

/// [`reload`], recording the reload (with its log and status) when `record`.
async fn load(
    app: &Arc<App>,
    project: &str,
    pushed: Option<CommitSha>,
    forced: bool,
    record: bool,
) -> anyhow::Result<Option<BuildId>> {
    let _one_at_a_time = app.recipes.reloading.lock().await;
    let recipes_repo = RecipesRepo::of(&app.config, project)?;
    let (repository, branch) = (recipes_repo.repository.clone(), recipes_repo.branch.clone());
    // A force push may move the recipes back on purpose: its head is loaded whatever is loaded.
    let loaded = if forced { None } else { app.recipes.commit(project) };
    let fetched = recipes_repo.fetch_newer(loaded).await;

    let mut lines = Vec::new();
    let not_the_head = match (&pushed, &fetched) {
        (Some(pushed), Ok(Fetched::Head(head, _))) if head != pushed => {
            Some(format!("the push named {}, the branch head is {}: the head is loaded", pushed.short(), head.short()))
        }
        _ => None,
    };
    let (commit, outcome) = match fetched {
        Ok(Fetched::NotNewer { head, loaded }) => {
            tracing::info!(
                project,
                "recipes at {} not loaded: {} is loaded, which is not older",
                head.short(),
                loaded.short()
            );
            return Ok(None);
        }
        Ok(Fetched::Head(commit, files)) => {
            let mut set =
                RecipeSet::parse(project, files.iter().map(|(path, content)| (path.clone(), content.as_slice())));
            apply_rules(&mut set, &app.config, project);
            for script in set.recipes.values_mut().flat_map(|r| r.scripts.iter_mut()) {
                script.recipes_commit = Some(commit.to_string());
            }
            let (previous, now) = app.recipes.replace(project, set, &commit);
            let outcome = describe(&now, &mut lines, &repository, &commit);
            lines.extend(not_the_head);
            let before: Vec<&RepoName> = previous.as_ref().map(|p| p.repositories()).unwrap_or_default();
            for repo in &before {
                if !now.repositories().contains(repo) {
                    lines.push(format!("{repo} is no longer tracked"));
                }
            }
            let added: Vec<RepoName> =
                now.repositories().into_iter().filter(|r| !before.contains(r)).cloned().collect();
            // Hooks are given by the serve that records the reload.
            if record && app.config.hooks.auto && !added.is_empty() {
                tokio::spawn(give_hooks(app.clone(), project.to_string(), added));
            }
            (Some(commit), outcome)
        }
        Err(e) => {
            let reason = format!("cannot fetch {repository} {branch}: {e:#}");
            lines.push(reason.clone());
            lines.push("the recipes loaded before stay in use".into());
            (pushed, Outcome::failed(BuildStatus::Error, reason))
        }
    };
    if !record {
        let at = commit.as_ref().map_or_else(String::new, |commit| format!(" at {}", commit.short()));
        tracing::info!(project, status = %outcome.status, "recipes loaded{at}, as another serve did: {}", outcome.error.as_deref().unwrap_or("all files loaded"));
        return Ok(None);
    }

    let new = NewBuild {
        kind: BuildKind::Reload,
        project: project.to_string(),
        repository: repository.clone(),
        branch: branch.clone(),
        commit: commit.clone(),
        script: RELOAD_SCRIPT.into(),
        baseimage: None,
        message: None,
        author: None,
    };
    let id = app.store.insert(&new, None).await?.id;
    let mut log = super::log::BuildLog::create(&app.config.logs_dir(), id, app.bus.clone()).await?;
    for line in &lines {
        log.line(line.as_bytes());
    }
    log.close().await?;
    let status = commit.map(|commit| {
        let description = match outcome.status {
            BuildStatus::Success => lines.first().cloned().unwrap_or_default(),
            _ => outcome.error.clone().unwrap_or_default(),
        };
        CommitStatus {
            repository,
            commit,
            status: outcome.status,
            context: format!("autobuilder/{RELOAD_SCRIPT}"),
            description,
            target_url: app.build_url(id),
        }
    });
    let status = status.and_then(|status| app.statuses.outbox_row(status));
    if let Some(ended) = app.store.finish(id, &outcome, status.as_ref(), Holder::Anyone).await? {
        app.announce(&ended);
    }
    app.statuses.wake();
    tracing::info!(project, status = %outcome.status, "recipes reloaded: {}", outcome.error.as_deref().unwrap_or("all files loaded"));
    Ok(Some(id))
}

/// What the operator and the project's other recipes rule out, applied to freshly parsed recipes
/// (by `serve` and by `autobuilder check`): limits within the caps, base images from allowed
/// registries and projects, image chains resolved, and no artifact name that another recipe of
/// the project could also publish (other projects' recipes are checked when they are put in use).
pub fn apply_rules(set: &mut RecipeSet, config: &Config, project: &str) {
    set.refuse(|script| {
        super::limits::resolve(&config.builds, &script.limits)?;
        match &script.baseimage {
            Some(image) => crate::recipes::chains::check_baseimage(config, project, image),
            None => Ok(()),
        }
    });
    crate::recipes::chains::resolve(set);
    crate::recipes::names::refuse_collisions(set, &[]);
}

/// `[hooks] auto`: gives newly tracked repositories their webhook.
async fn give_hooks(app: Arc<App>, project: String, repos: Vec<RepoName>) {
    let Some(api) = &app.github else { return };
    for (repo, result) in set_up_hooks(api, &app.config, &project, repos, false).await {
        match result {
            Ok(changes) => {
                for change in changes {
                    tracing::info!(project, %repo, "webhook: {change}");
                }
            }
            Err(e) => tracing::warn!(project, %repo, "cannot set up the webhook: {e:#}"),
        }
    }
}

/// The repositories of `project` that get its webhook: the recipes repository, and every
/// repository with a recipe at the head of its branch (fetched now).
pub async fn hooked_repositories(config: &Config, project: &str) -> anyhow::Result<Vec<RepoName>> {
    let recipes_repo = RecipesRepo::of(config, project)?;
    let head = recipes_repo.fetch_head().await?;
    let files = recipes_repo.recipe_files(&head).await?;
    let set = RecipeSet::parse(project, files.iter().map(|(path, content)| (path.clone(), content.as_slice())));
    let mut repos = vec![recipes_repo.repository.clone()];
    repos.extend(set.repositories().into_iter().cloned());
    Ok(repos)
}

/// Gives each of `repos` exactly one webhook to `project`'s hook URL with its secret (see
/// [`crate::github::hook_setup::sync`]); with `dry_run`, only finds what would change. The changes
/// (or the failure) per repository, in order.
pub async fn set_up_hooks(
    api: &GithubApi,
    config: &Config,
    project: &str,
    repos: Vec<RepoName>,
    dry_run: bool,
) -> Vec<(RepoName, anyhow::Result<Vec<Change>>)> {
    let (url, secret) = (config.hook_url(project), config.projects[project].webhook_secret.expose());
    let mut results = Vec::with_capacity(repos.len());
    for repo in repos {
        let result = crate::github::hook_setup::sync(api, &repo, &url, secret, dry_run).await;
        results.push((repo, result));
    }
    results
}

/// Writes what `set` tracks and every problem into `lines`; a broken file makes it a `failure`.
fn describe(set: &RecipeSet, lines: &mut Vec<String>, repository: &RepoName, commit: &CommitSha) -> Outcome {
    lines.push(format!(
        "{} recipes for {} repositories loaded from {repository} at {}",
        set.recipes.len(),
        set.repositories().len(),
        commit.short()
    ));
    for recipe in set.recipes.values() {
        let scripts: Vec<&str> = recipe.scripts.iter().map(|s| s.script.as_str()).collect();
        lines.push(format!(
            "tracking {} {} ({}): {}",
            recipe.repository,
            recipe.branch,
            recipe.file,
            scripts.join(", ")
        ));
    }
    for problem in &set.problems {
        lines.push(format!("skipped {}: {}", problem.file, problem.reason));
    }
    match set.problems.as_slice() {
        [] => Outcome::plain(BuildStatus::Success),
        [first, ..] => {
            let files: std::collections::BTreeSet<&str> = set.problems.iter().map(|p| p.file.as_str()).collect();
            let error = match files.len() {
                1 => format!("{}: {}", first.file, first.reason),
                n => format!("{n} broken files; {}: {}", first.file, first.reason),
            };
            Outcome::failed(BuildStatus::Failure, error)
        }
    }
}
