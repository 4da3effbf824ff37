//! Working copies kept from finished builds for the next build of the same repository and
//! branch: `git::check_out` into one writes only what changed, and removes what the build left.
//! Kept in memory only: after a restart the directories are removed as leftovers.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::model::{Branch, RepoName};

/// Most working copies kept per repository and branch (several scripts of one push run at once).
const PER_BRANCH: usize = 2;

/// The working copies of finished builds, oldest first.
pub struct KeptCheckouts {
    /// Where they wait: `tmp_directory/<instance prefix>kept`, beside the builds' directories
    /// (moving one in or out is a rename).
    dir: PathBuf,
    most: usize,
    kept: Mutex<VecDeque<((RepoName, Branch), PathBuf)>>,
    next: AtomicU64,
}

impl KeptCheckouts {
    /// Keeps at most `most` working copies under `dir` (0: none).
    pub fn new(dir: PathBuf, most: usize) -> Self {
        Self { dir, most, kept: Mutex::default(), next: AtomicU64::new(0) }
    }

    /// Moves the newest working copy kept for `repository` at `branch` to `dest` (which must not
    /// exist); whether there was one.
    pub fn take(&self, repository: &RepoName, branch: &Branch, dest: &Path) -> bool {
        let mut kept = self.kept.lock().expect("not poisoned");
        let Some(at) = kept.iter().rposition(|((r, b), _)| r == repository && b == branch) else { return false };
        let (_, path) = kept.remove(at).expect("found");
        drop(kept);
        match std::fs::rename(&path, dest) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("cannot reuse the working copy {}: {e}", path.display());
                false
            }
        }
    }

    /// Keeps `source`, the working copy of a build of `repository` at `branch` whose container has
    /// ended; returns the directories to remove instead: `source` when it is not kept, and the
    /// oldest kept ones beyond the limits.
    pub fn keep(&self, repository: &RepoName, branch: &Branch, source: &Path) -> Vec<PathBuf> {
        if self.most == 0 {
            return vec![source.to_path_buf()];
        }
        let path = self.dir.join(self.next.fetch_add(1, Ordering::Relaxed).to_string());
        if let Err(e) = std::fs::create_dir_all(&self.dir).and_then(|()| std::fs::rename(source, &path)) {
            tracing::warn!("cannot keep the working copy {}: {e}", source.display());
            return vec![source.to_path_buf()];
        }
        let mut kept = self.kept.lock().expect("not poisoned");
        let key = (repository.clone(), branch.clone());
        let mut evicted = Vec::new();
        if kept.iter().filter(|(k, _)| *k == key).count() >= PER_BRANCH {
            let oldest = kept.iter().position(|(k, _)| *k == key).expect("counted");
            evicted.extend(kept.remove(oldest).map(|(_, path)| path));
        }
        if kept.len() >= self.most {
            evicted.extend(kept.pop_front().map(|(_, path)| path));
        }
        kept.push_back((key, path));
        evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_copy_of_the_branch_is_reused_and_the_oldest_go_beyond_the_limits() {
        let dir = tempfile::tempdir().unwrap();
        let kept = KeptCheckouts::new(dir.path().join("kept"), 3);
        let (repo, other) = (RepoName::parse("o/r").unwrap(), RepoName::parse("o/other").unwrap());
        let (master, pr) = (Branch::parse("master").unwrap(), Branch::parse("pull/7").unwrap());
        let copy = |n: usize| {
            let path = dir.path().join(format!("build{n}"));
            std::fs::create_dir(&path).unwrap();
            std::fs::write(path.join("file"), n.to_string()).unwrap();
            path
        };
        assert!(kept.keep(&repo, &master, &copy(1)).is_empty());
        assert!(kept.keep(&repo, &master, &copy(2)).is_empty());
        let evicted = kept.keep(&repo, &master, &copy(3));
        assert_eq!(evicted.len(), 1, "two per branch");
        assert_eq!(std::fs::read_to_string(evicted[0].join("file")).unwrap(), "1");
        assert!(kept.keep(&other, &master, &copy(4)).is_empty());
        assert_eq!(kept.keep(&repo, &pr, &copy(5)).len(), 1, "three in all: the oldest goes");

        let dest = dir.path().join("next");
        assert!(!kept.take(&other, &pr, &dest), "nothing kept for another branch's pull request");
        assert!(kept.take(&repo, &master, &dest));
        assert_eq!(std::fs::read_to_string(dest.join("file")).unwrap(), "3", "the newest");
        assert!(!kept.take(&repo, &master, &dir.path().join("again")), "the older one was evicted");

        let none = KeptCheckouts::new(dir.path().join("none"), 0);
        assert_eq!(none.keep(&repo, &master, &copy(6)), [dir.path().join("build6")]);
    }
}
