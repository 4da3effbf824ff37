//! Git (libgit2): check out a pushed commit for a build, and read the files of a mirrored
//! repository (a project's recipes) at a commit.
//!
//! Every function here blocks; call them from `tokio::task::spawn_blocking`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use anyhow::Context;
use git2::{FetchOptions, Oid, Repository, build::CheckoutBuilder};

use crate::model::{Branch, CommitSha};

/// Fetches `branch` from `url` into a new repository at `dest` and checks out exactly `sha`,
/// whatever the branch head is by now. `dest` keeps its `.git`, so scripts may run git commands.
pub fn checkout_commit(url: &str, branch: &Branch, sha: &CommitSha, dest: &Path) -> anyhow::Result<()> {
    let repo = Repository::init(dest).with_context(|| format!("cannot create a repository in {}", dest.display()))?;
    let oid = Oid::from_str(sha.as_str())?;
    let refspec = format!("+{}:refs/remotes/origin/{branch}", remote_ref(branch));
    fetch(&repo, url, &[refspec.as_str()])?;
    if repo.find_commit(oid).is_err() {
        // The branch moved on without this commit (a force push): ask for the commit itself,
        // which GitHub serves while it is reachable from any ref.
        let _ = fetch(&repo, url, &[sha.as_str()]);
    }
    let commit = repo.find_commit(oid).map_err(|_| {
        anyhow::anyhow!("commit {sha} is not on branch {branch} of {} (force-pushed away?)", redact_url(url))
    })?;
    // The checkout is mounted into the build container: its origin never holds credentials.
    repo.remote("origin", &split_credentials(url).0)?;
    repo.set_head_detached(commit.id())?;
    repo.checkout_head(Some(CheckoutBuilder::new().force()))?;
    Ok(())
}

/// The commit `branch` points at on the remote (`git ls-remote`).
pub fn branch_head(url: &str, branch: &Branch) -> anyhow::Result<CommitSha> {
    let mut remote = git2::Remote::create_detached(url)?;
    remote.connect(git2::Direction::Fetch).with_context(|| format!("cannot reach {}", redact_url(url)))?;
    let wanted = format!("refs/heads/{branch}");
    let head = remote.list()?.iter().find(|head| head.name() == wanted).map(|head| head.oid().to_string());
    let head = head.with_context(|| format!("branch {branch} not found in {}", redact_url(url)))?;
    CommitSha::parse(&head)
}

/// Where a build's branch lives on the remote: `pull/<n>` is pull request n's head
/// (`refs/pull/<n>/head`, which GitHub keeps for forks too), anything else a branch.
pub fn remote_ref(branch: &Branch) -> String {
    match branch.pull_number() {
        Some(number) => format!("refs/pull/{number}/head"),
        None => format!("refs/heads/{branch}"),
    }
}

/// A bare copy of a repository under the data directory (a project's recipes, or a tracked
/// repository whose pushes are put in order), fetched on demand. One at a time per path.
pub struct Mirror<'a> {
    pub path: &'a Path,
    pub url: &'a str,
}

impl Mirror<'_> {
    /// Fetches `branch` and returns the commit to read: `sha` when given, else the branch head.
    pub fn fetch(&self, branch: &Branch, sha: Option<&CommitSha>) -> anyhow::Result<CommitSha> {
        let lock = one_at_a_time(self.path);
        let _fetching = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let repo = match Repository::open_bare(self.path) {
            Ok(repo) => repo,
            Err(_) => {
                if self.path.exists() {
                    std::fs::remove_dir_all(self.path)?;
                }
                Repository::init_bare(self.path).with_context(|| format!("cannot create {}", self.path.display()))?
            }
        };
        let tracking = format!("refs/remotes/origin/{branch}");
        let refspec = format!("+{}:{tracking}", remote_ref(branch));
        fetch(&repo, self.url, &[refspec.as_str()])?;
        let oid = match sha {
            Some(sha) => Oid::from_str(sha.as_str())?,
            None => repo
                .refname_to_id(&tracking)
                .with_context(|| format!("branch {branch} not found in {}", redact_url(self.url)))?,
        };
        repo.find_commit(oid)
            .with_context(|| format!("commit {oid} is not on branch {branch} of {}", redact_url(self.url)))?;
        CommitSha::parse(&oid.to_string())
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

/// The lock of one mirror: libgit2 locks the refs it updates, but not the creation of a repository.
fn one_at_a_time(path: &Path) -> Arc<Mutex<()>> {
    static LOCKS: LazyLock<Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>> = LazyLock::new(Mutex::default);
    LOCKS.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).entry(path.to_path_buf()).or_default().clone()
}

fn fetch(repo: &Repository, url: &str, refspecs: &[&str]) -> anyhow::Result<()> {
    let (clean, credentials) = split_credentials(url);
    let mut remote = repo.remote_anonymous(&clean)?;
    let mut options = FetchOptions::new();
    options.download_tags(git2::AutotagOption::None);
    options.update_fetchhead(false);
    if let Some((user, password)) = credentials {
        // Given to libgit2 when the server asks, so the URL it records (FETCH_HEAD) holds none.
        let mut asked = false;
        let mut callbacks = git2::RemoteCallbacks::new();
        callbacks.credentials(move |_, _, _| {
            if std::mem::replace(&mut asked, true) {
                return Err(git2::Error::from_str("the credentials of [git] clone_url were refused"));
            }
            git2::Cred::userpass_plaintext(&user, &password)
        });
        options.remote_callbacks(callbacks);
    }
    remote
        .fetch(refspecs, Some(&mut options), None)
        .with_context(|| format!("git fetch of {} failed", redact_url(url)))?;
    Ok(())
}

/// An `http(s)://` URL without its user info, and that user info as (user, password) when it has
/// one (`https://x-access-token:TOKEN@github.com/a/b.git`; a lone `https://TOKEN@host/...` is a
/// user with an empty password). Other URLs (`ssh://git@host/...`) are left as they are.
pub fn split_credentials(url: &str) -> (String, Option<(String, String)>) {
    let Some((scheme, rest)) = url.split_once("://").filter(|(s, _)| matches!(*s, "http" | "https")) else {
        return (url.to_string(), None);
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let Some(at) = authority.rfind('@') else {
        return (url.to_string(), None);
    };
    let (user, password) = authority[..at].split_once(':').unwrap_or((&authority[..at], ""));
    (format!("{scheme}://{}", &rest[at + 1..]), Some((user.to_string(), password.to_string())))
}

/// The values of a clone URL that are secret, to mask in build logs: the password, or the user
/// when it has none (a token given as the user).
pub fn url_secrets(url: &str) -> Vec<String> {
    match split_credentials(url).1 {
        Some((_, password)) if !password.is_empty() => vec![password],
        Some((user, _)) if !user.is_empty() => vec![user],
        _ => Vec::new(),
    }
}

/// The URL without credentials (`https://user:token@host/x` -> `https://***@host/x`).
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_show() {
        assert_eq!(redact_url("https://x:tok@github.com/a/b.git"), "https://***@github.com/a/b.git");
        assert_eq!(redact_url("file:///tmp/a/b.git"), "file:///tmp/a/b.git");
    }

    #[test]
    fn credentials_are_split_from_the_url() {
        let (clean, credentials) = split_credentials("https://x-access-token:tok@github.com/a/b.git");
        assert_eq!(clean, "https://github.com/a/b.git");
        assert_eq!(credentials, Some(("x-access-token".into(), "tok".into())));
        assert_eq!(url_secrets("https://x-access-token:tok@github.com/a/b.git"), ["tok"]);
        assert_eq!(url_secrets("https://ghp_abc@github.com/a/b.git"), ["ghp_abc"]);
        assert_eq!(split_credentials("https://github.com/a@b.git"), ("https://github.com/a@b.git".into(), None));
        assert_eq!(split_credentials("ssh://git@host/a/b.git").1, None);
        assert_eq!(split_credentials("file:///tmp/a/b.git").1, None);
        assert!(url_secrets("https://github.com/{repo}.git").is_empty());
    }

    #[test]
    fn the_checkout_origin_holds_no_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path().join("src")).unwrap();
        let sig = git2::Signature::now("t", "t@example.com").unwrap();
        let tree = repo.find_tree(repo.index().unwrap().write_tree().unwrap()).unwrap();
        let oid = repo.commit(Some("refs/heads/master"), &sig, &sig, "c", &tree, &[]).unwrap();
        // A file URL cannot carry credentials; the origin is what split_credentials leaves.
        let url = format!("file://{}", dir.path().join("src").display());
        let dest = dir.path().join("checkout");
        checkout_commit(&url, &Branch::parse("master").unwrap(), &CommitSha::parse(&oid.to_string()).unwrap(), &dest)
            .unwrap();
        let origin = Repository::open(&dest).unwrap().find_remote("origin").unwrap().url().unwrap().to_string();
        assert_eq!(origin, split_credentials(&url).0);
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
