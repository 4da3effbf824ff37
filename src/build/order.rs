//! Deliveries out of order: GitHub does not promise to deliver pushes in the order they happened.
//! The newest commit seen per branch is remembered; a pushed commit that is an ancestor of it is
//! old news, and starts and cancels nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OwnedMutexGuard;

use super::Source;
use crate::app::App;
use crate::git::Mirror;
use crate::model::{Branch, BuildKind, CommitSha, RepoName};
use crate::store::HistoryFilter;

/// How long the ancestry check (a fetch into the repository's mirror) may hold up a delivery;
/// past it the push is taken as new, as it was before this check existed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

type Key = (String, RepoName, Branch);

fn key_of(source: &Source) -> Key {
    (source.project.clone(), source.repository.clone(), source.branch.clone())
}

/// The newest commit seen per branch, and one turn at a time per branch for the deliveries that
/// start builds, so that two of them never decide on the same state.
#[derive(Default)]
pub struct BranchHeads {
    newest: Mutex<HashMap<Key, CommitSha>>,
    turns: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
}

impl BranchHeads {
    /// Waits for the turn of `source`'s branch; the turn lasts as long as the guard.
    pub async fn turn(&self, source: &Source) -> OwnedMutexGuard<()> {
        let turn = self.turns.lock().expect("not poisoned").entry(key_of(source)).or_default().clone();
        turn.lock_owned().await
    }

    /// Remembers `source.commit` as the newest commit of its branch.
    pub fn saw(&self, source: &Source) {
        self.newest.lock().expect("not poisoned").insert(key_of(source), source.commit.clone());
    }

    fn get(&self, source: &Source) -> Option<CommitSha> {
        self.newest.lock().expect("not poisoned").get(&key_of(source)).cloned()
    }
}

/// What a delivery says about the commit before the pushed one.
#[derive(Debug, Clone, Default)]
pub struct Lineage {
    /// The branch head before this push (`before` of a push or a pull request `synchronize`).
    pub before: Option<CommitSha>,
    /// A force push, which may move a branch back on purpose.
    pub forced: bool,
}

/// The newer commit already seen on `source`'s branch when `source.commit` is one of its
/// ancestors; `None` when the pushed commit is new (or its age cannot be told). Call it during
/// the branch's [`BranchHeads::turn`].
pub async fn newer_than(app: &App, source: &Source, lineage: &Lineage) -> Option<CommitSha> {
    let newest = match app.heads.get(source) {
        Some(newest) => newest,
        None => newest_in_history(app, source).await?,
    };
    if newest == source.commit || lineage.forced || lineage.before.as_ref() == Some(&newest) {
        return None;
    }
    let path = app.config.mirror_dir(&source.repository);
    let url = app.config.clone_url(&source.repository);
    let (branch, commit, newer) = (source.branch.clone(), source.commit.clone(), newest.clone());
    let check = tokio::task::spawn_blocking(move || {
        let mirror = Mirror { path: &path, url: &url };
        mirror.fetch(&branch, None)?;
        mirror.is_ancestor(&commit, &newer)
    });
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(Ok(Ok(Some(true)))) => Some(newest),
        Ok(Ok(Ok(_))) => None,
        Ok(Ok(Err(e))) => {
            tracing::warn!(repo = %source.repository, branch = %source.branch, "cannot tell whether {} is older than {}: {e:#}", source.commit.short(), newest.short());
            None
        }
        Ok(Err(e)) => {
            tracing::warn!("{e}");
            None
        }
        Err(_) => {
            tracing::warn!(repo = %source.repository, "the ancestry check of {} took too long: built as new", source.commit.short());
            None
        }
    }
}

/// The commit of the newest build of `source`'s branch in the history (after a restart).
async fn newest_in_history(app: &App, source: &Source) -> Option<CommitSha> {
    let filter = HistoryFilter {
        limit: Some(20),
        repository: Some(source.repository.to_string()),
        branch: Some(source.branch.to_string()),
        ..Default::default()
    };
    let history = app.store.history(&filter).await.ok()?;
    let newest = history.iter().find(|b| b.new.kind == BuildKind::Build && b.new.project == source.project)?;
    newest.new.commit.clone()
}
