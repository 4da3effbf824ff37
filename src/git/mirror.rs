//! A bare mirror of one repository under the data directory: a project's recipes, or a tracked
//! repository (the ancestry checks of `build::order`, and the objects every build checks out).
//! Only what is new is fetched into it; one fetch at a time per mirror; a damaged one is rebuilt.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

use anyhow::Context;
use git2::{Oid, Repository};

use super::{Fetched, fetch, redact_url, remote_ref};
use crate::model::{Branch, CommitSha};

/// Written into a mirror once a fetch into it succeeded: from then on builds may take their
/// objects from it (see `checkout`).
const FILLED: &str = "autobuilder-filled";

/// Each fetch adds a pack to a mirror; past this many they are merged into one, so that reading
/// an object, and sharing the objects with a checkout, stay cheap after thousands of pushes.
const MAX_PACKS: usize = 32;

/// A bare copy of a repository at `path`, fetched from `url` on demand.
pub struct Mirror<'a> {
    pub path: &'a Path,
    pub url: &'a str,
}

/// A mirror whose fetch lock is held (by [`Mirror::locked`]): fetched into, rebuilt or read from
/// by a checkout.
pub struct Locked<'a> {
    mirror: &'a Mirror<'a>,
}

impl Mirror<'_> {
    /// Fetches `branch` (and every tag) and returns the commit to read: `sha` when given, else the
    /// branch head.
    pub fn fetch(&self, branch: &Branch, sha: Option<&CommitSha>) -> anyhow::Result<CommitSha> {
        let (_, oid) = self.locked(true, |mirror| mirror.fetch(branch, sha)).expect("waited for the lock")?;
        CommitSha::parse(&oid.to_string())
    }

    /// Whether a fetch into this mirror succeeded once.
    pub fn is_filled(&self) -> bool {
        self.path.join(FILLED).exists()
    }

    /// Runs `work` with this mirror's fetch lock held (waiting for it), or returns `None` without
    /// running it when `wait` is false and the lock is taken.
    pub fn locked<T>(&self, wait: bool, work: impl FnOnce(&Locked<'_>) -> T) -> Option<T> {
        let lock = one_at_a_time(self.path);
        let _turn: MutexGuard<'_, ()> = match wait {
            true => lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner()),
            false => match lock.try_lock() {
                Ok(turn) => turn,
                Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return None,
            },
        };
        Some(work(&Locked { mirror: self }))
    }

    /// Whether `older` is an ancestor of `newer` (a commit is not its own ancestor); `None` when
    /// either is not in the mirror (force-pushed away, or never fetched).
    pub fn is_ancestor(&self, older: &CommitSha, newer: &CommitSha) -> anyhow::Result<Option<bool>> {
        let repo = Repository::open_bare(self.path)?;
        let (older, newer) = (Oid::from_str(older.as_str())?, Oid::from_str(newer.as_str())?);
        if repo.find_commit(older).is_err() || repo.find_commit(newer).is_err() {
            return Ok(None);
        }
        Ok(Some(repo.graph_descendant_of(newer, older)?))
    }

    /// The files of commit `sha` whose path (from the repository root) `wanted` accepts, as
    /// (path, content), each content cut after `max_bytes`.
    pub fn files(
        &self,
        sha: &CommitSha,
        wanted: impl Fn(&str) -> bool,
        max_bytes: usize,
    ) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        let repo = Repository::open_bare(self.path)?;
        let tree = repo.find_commit(Oid::from_str(sha.as_str())?)?.tree()?;
        let mut files = Vec::new();
        let mut failure = None;
        tree.walk(git2::TreeWalkMode::PreOrder, |root, entry| {
            if entry.kind() != Some(git2::ObjectType::Blob) {
                return git2::TreeWalkResult::Ok;
            }
            let path = format!("{root}{}", String::from_utf8_lossy(entry.name_bytes()));
            if !wanted(&path) {
                return git2::TreeWalkResult::Ok;
            }
            match entry.to_object(&repo).and_then(|o| o.peel_to_blob()) {
                Ok(blob) => {
                    let content = blob.content();
                    files.push((path, content[..content.len().min(max_bytes)].to_vec()));
                    git2::TreeWalkResult::Ok
                }
                Err(e) => {
                    failure = Some(e);
                    git2::TreeWalkResult::Abort
                }
            }
        })?;
        if let Some(e) = failure {
            return Err(e.into());
        }
        Ok(files)
    }
}

impl Locked<'_> {
    pub fn path(&self) -> &Path {
        self.mirror.path
    }

    /// Fetches `branch` and every tag into the mirror (creating it when it is missing or cannot
    /// be opened) and returns what came and the commit to read: `sha` when given, else the
    /// branch head. A `sha` the branch no longer leads to is asked for by itself, as GitHub serves
    /// any commit still reachable from some ref. A `sha` the mirror already holds (fetched by the
    /// ancestry check of the same push, or by another build) is read without asking the remote.
    pub fn fetch(&self, branch: &Branch, sha: Option<&CommitSha>) -> anyhow::Result<(Fetched, Oid)> {
        let path = self.mirror.path;
        let repo = match Repository::open_bare(path) {
            Ok(repo) => repo,
            Err(_) => {
                if path.exists() {
                    std::fs::remove_dir_all(path)?;
                }
                Repository::init_bare(path).with_context(|| format!("cannot create {}", path.display()))?
            }
        };
        if let Some(sha) = sha
            && self.mirror.is_filled()
            && let Ok(oid) = Oid::from_str(sha.as_str())
            && repo.find_commit(oid).is_ok()
        {
            return Ok((Fetched::default(), oid));
        }
        let tracking = format!("refs/remotes/origin/{branch}");
        let refspec = format!("+{}:{tracking}", remote_ref(branch));
        let mut fetched = fetch(&repo, self.mirror.url, &[refspec.as_str(), "+refs/tags/*:refs/tags/*"], 0)?;
        let oid = match sha {
            Some(sha) => Oid::from_str(sha.as_str())?,
            None => repo
                .refname_to_id(&tracking)
                .with_context(|| format!("branch {branch} not found in {}", redact_url(self.mirror.url)))?,
        };
        if repo.find_commit(oid).is_err()
            && sha.is_some()
            && let Ok(more) = fetch(&repo, self.mirror.url, &[&oid.to_string()], 0)
        {
            fetched += more;
        }
        if repo.find_commit(oid).is_err() {
            let head = repo.refname_to_id(&tracking).ok().and_then(|head| repo.find_commit(head).ok());
            let url = redact_url(self.mirror.url);
            return Err(match head {
                // The mirror reads its own branch head: the commit is truly not there.
                Some(_) => {
                    NotOnBranch(format!("commit {oid} is not on branch {branch} of {url} (force-pushed away?)")).into()
                }
                None => anyhow::anyhow!("the mirror {} lacks the head of {branch}: damaged", path.display()),
            });
        }
        if !self.mirror.is_filled() {
            std::fs::write(path.join(FILLED), b"")?;
        }
        merge_packs(&repo, &path.join("objects/pack"))?;
        Ok((fetched, oid))
    }

    /// Makes a new mirror beside this one, fetches into it and puts it in this one's place: for
    /// a mirror that is damaged. This one is left as it was when the new one cannot be fetched.
    pub fn rebuild(&self, branch: &Branch, sha: Option<&CommitSha>) -> anyhow::Result<(Fetched, Oid)> {
        let path = self.mirror.path;
        let (fresh, old) = (sibling(path, "new"), sibling(path, "old"));
        for leftover in [&fresh, &old] {
            if leftover.exists() {
                std::fs::remove_dir_all(leftover)?;
            }
        }
        // The new mirror's path is this one's with a suffix: this one's lock covers it.
        let result = Locked { mirror: &Mirror { path: &fresh, url: self.mirror.url } }.fetch(branch, sha);
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&fresh);
            return result;
        }
        if path.exists() {
            std::fs::rename(path, &old)?;
        }
        std::fs::rename(&fresh, path)?;
        let _ = std::fs::remove_dir_all(&old);
        result
    }
}

/// Writes every object reachable from a ref of `repo` into one new pack and removes the others,
/// once there are more than [`MAX_PACKS`]. Checkouts that shared the old packs keep their links.
fn merge_packs(repo: &Repository, pack_dir: &Path) -> anyhow::Result<()> {
    let packs = |dir: &Path| -> std::io::Result<Vec<PathBuf>> {
        let mut packs = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "pack") {
                packs.push(path);
            }
        }
        Ok(packs)
    };
    let old = packs(pack_dir)?;
    if old.len() <= MAX_PACKS {
        return Ok(());
    }
    let mut builder = repo.packbuilder()?;
    let mut walk = repo.revwalk()?;
    for reference in repo.references()? {
        let reference = reference?;
        let Some(target) = reference.target() else { continue };
        match repo.find_tag(target) {
            // An annotated tag: the tag object itself, then what it points at.
            Ok(tag) => {
                builder.insert_object(target, None)?;
                walk.push(tag.target_id())?;
            }
            Err(_) => walk.push(target)?,
        }
    }
    builder.insert_walk(&mut walk)?;
    builder.write(pack_dir, 0)?;
    let kept = builder.name()?.map(|name| format!("pack-{name}.pack")).unwrap_or_default();
    for pack in old.iter().filter(|pack| !pack.ends_with(&kept)) {
        for extension in ["idx", "rev", "keep", "pack"] {
            let _ = std::fs::remove_file(pack.with_extension(extension));
        }
    }
    tracing::debug!(merged = old.len(), "merged the packs of {}", pack_dir.display());
    Ok(())
}

/// The commit a build wants is not on its branch (nor anywhere the remote serves): rebuilding the
/// mirror would not help.
#[derive(Debug)]
pub struct NotOnBranch(pub String);

impl std::fmt::Display for NotOnBranch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotOnBranch {}

/// `<path>.<what>`: where a mirror is rebuilt, or the damaged one set aside.
fn sibling(path: &Path, what: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{what}"));
    path.with_file_name(name)
}

/// The lock of one mirror: libgit2 locks the refs it updates, but not the creation of a repository.
fn one_at_a_time(path: &Path) -> Arc<Mutex<()>> {
    static LOCKS: LazyLock<Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>> = LazyLock::new(Mutex::default);
    LOCKS.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).entry(path.to_path_buf()).or_default().clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mirror_fetched_after_many_pushes_keeps_few_packs_and_every_object() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path().join("src")).unwrap();
        let sig = git2::Signature::now("t", "t@example.com").unwrap();
        let url = format!("file://{}", dir.path().join("src").display());
        let mirror = Mirror { path: &dir.path().join("mirror.git"), url: &url };
        let master = Branch::parse("master").unwrap();
        let mut commits = Vec::new();
        for n in 0..MAX_PACKS + 8 {
            let blob = repo.blob(format!("version {n}").as_bytes()).unwrap();
            let mut tree = repo.treebuilder(None).unwrap();
            tree.insert("file", blob, 0o100644).unwrap();
            let tree = repo.find_tree(tree.write().unwrap()).unwrap();
            let parents: Vec<_> = commits.last().map(|oid| repo.find_commit(*oid).unwrap()).into_iter().collect();
            let parents: Vec<_> = parents.iter().collect();
            let oid = repo.commit(Some("refs/heads/master"), &sig, &sig, "c", &tree, &parents).unwrap();
            if n == 1 {
                let commit = repo.find_object(oid, None).unwrap();
                repo.tag("v1", &commit, &sig, "an annotated tag", false).unwrap();
            }
            commits.push(oid);
            mirror.fetch(&master, None).unwrap();
        }
        let packs = std::fs::read_dir(mirror.path.join("objects/pack"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|e| e == "pack"))
            .count();
        assert!(packs < 10, "merged once, then one pack per fetch: {packs} packs");
        let copy = Repository::open_bare(mirror.path).unwrap();
        for oid in &commits {
            let commit = copy.find_commit(*oid).unwrap();
            copy.find_blob(commit.tree().unwrap().get_name("file").unwrap().id()).unwrap();
        }
        let tag = copy.refname_to_id("refs/tags/v1").unwrap();
        assert_eq!(copy.find_tag(tag).unwrap().target_id(), commits[1]);
    }

    #[test]
    fn a_mirror_gives_the_files_the_caller_wants_cut_at_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path().join("src")).unwrap();
        let mut index = repo.index().unwrap();
        for (path, content) in [("o/r/master.yaml", "buildscripts: [a.sh]"), ("README.md", "hello"), ("x.yaml", "ab")] {
            let file = dir.path().join("src").join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, content).unwrap();
            index.add_path(Path::new(path)).unwrap();
        }
        let sig = git2::Signature::now("t", "t@example.com").unwrap();
        let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
        repo.commit(Some("refs/heads/master"), &sig, &sig, "c", &tree, &[]).unwrap();
        let url = format!("file://{}", dir.path().join("src").display());
        let mirror = Mirror { path: &dir.path().join("mirror.git"), url: &url };
        let head = mirror.fetch(&Branch::parse("master").unwrap(), None).unwrap();
        let files = mirror.files(&head, |path| path.ends_with(".yaml"), 5).unwrap();
        assert_eq!(files, [("o/r/master.yaml".to_string(), b"build".to_vec()), ("x.yaml".to_string(), b"ab".to_vec())]);
    }
}
