//! Real git repositories on disk, served to the binary as `file://` URLs, and recipe text.

use std::path::Path;
use std::process::Command;

/// A directory of git repositories served as `file://<root>/{repo}`.
pub struct GitHost {
    pub root: tempfile::TempDir,
}

impl GitHost {
    pub fn new() -> Self {
        Self { root: tempfile::tempdir().unwrap() }
    }

    pub fn clone_url(&self) -> String {
        format!("file://{}/{{repo}}", self.root.path().display())
    }

    /// Creates (or reopens) the work tree of `repo` and commits `files` to `branch`; returns the sha.
    pub fn commit(&self, repo: &str, branch: &str, files: &[(&str, &str)]) -> String {
        let dir = self.root.path().join(repo);
        if !dir.join(".git").exists() {
            std::fs::create_dir_all(&dir).unwrap();
            git(&dir, &["init", "-q", "-b", branch]);
        }
        git(&dir, &["checkout", "-q", "-B", branch]);
        for (path, content) in files {
            let file = dir.join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, content).unwrap();
        }
        git(&dir, &["add", "-A"]);
        git(&dir, &["commit", "-q", "--allow-empty", "-m", &format!("update {repo}")]);
        git(&dir, &["rev-parse", "HEAD"]).trim().to_string()
    }

    /// Points `refs/pull/<number>/head` of `repo` at `sha`, as GitHub does for a pull request.
    pub fn pull_ref(&self, repo: &str, number: u64, sha: &str) {
        git(&self.root.path().join(repo), &["update-ref", &format!("refs/pull/{number}/head"), sha]);
    }

    /// Removes `path` from `repo` on `branch` in a new commit; returns the sha.
    pub fn remove(&self, repo: &str, branch: &str, path: &str) -> String {
        let dir = self.root.path().join(repo);
        git(&dir, &["checkout", "-q", branch]);
        git(&dir, &["rm", "-q", "-r", path]);
        git(&dir, &["commit", "-q", "-m", &format!("remove {path}")]);
        git(&dir, &["rev-parse", "HEAD"]).trim().to_string()
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.invalid")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.invalid")
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A recipe with one build script that writes `artifact` into /tmp/archives.
pub fn recipe(scripts: &[(&str, &str)]) -> String {
    let mut yaml = String::from("buildscripts:\n");
    for (script, _) in scripts {
        yaml.push_str(&format!("  - {script}\n"));
    }
    for (script, settings) in scripts {
        yaml.push_str(&format!("{script}:\n{settings}\n"));
    }
    yaml
}

/// A recipe of one script `build.sh` whose artifact is `out.tar.gz`.
pub const ONE_SCRIPT: &str = "buildscripts: [build.sh]\nbuild.sh: {artifact: out.tar.gz}\n";

/// A recipes repository tracking `org/app` master with [`ONE_SCRIPT`], and `org/app` at a commit
/// whose `build.sh` is `script`; the host and that commit.
pub fn one_script_app(script: &str) -> (GitHost, String) {
    let git = GitHost::new();
    git.commit("org/recipes", "master", &[("org/app/master.yaml", ONE_SCRIPT)]);
    let sha = git.commit("org/app", "master", &[("build.sh", script)]);
    (git, sha)
}
