//! Real git repositories on disk, served to the binary as `file://` URLs or over git's smart HTTP
//! protocol (`git http-backend`), and recipe text.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tokio::io::AsyncWriteExt;

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

    /// Serves every repository of this host over smart HTTP; returns the clone URL
    /// (`http://127.0.0.1:<port>/{repo}`). Like GitHub, it serves any commit reachable from a ref.
    pub async fn serve_http(&self) -> String {
        serve_http(self.root.path().to_path_buf()).await
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

/// Serves the repositories under `root` over smart HTTP with `git http-backend` run as a CGI
/// program per request; returns the clone URL with `{repo}`.
pub async fn serve_http(root: PathBuf) -> String {
    let router = axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
        http_backend(root.clone(), method, uri, headers, body)
    });
    format!("{}/{{repo}}", super::serve(router).await)
}

async fn http_backend(root: PathBuf, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let mut child = tokio::process::Command::new("git")
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", &root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_CONFIG_COUNT", "1")
        .env("GIT_CONFIG_KEY_0", "uploadpack.allowReachableSHA1InWant")
        .env("GIT_CONFIG_VALUE_0", "true")
        .env("REQUEST_METHOD", method.as_str())
        .env("PATH_INFO", uri.path())
        .env("QUERY_STRING", uri.query().unwrap_or_default())
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("GIT_PROTOCOL", header("git-protocol"))
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("git http-backend");
    let mut stdin = child.stdin.take().unwrap();
    let feed = tokio::spawn(async move { stdin.write_all(&body).await });
    let output = child.wait_with_output().await.unwrap();
    let _ = feed.await;
    let out = output.stdout;
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").map(|at| (at, at + 4));
    let split = split.or_else(|| out.windows(2).position(|w| w == b"\n\n").map(|at| (at, at + 2)));
    let Some((end, start)) = split else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "git http-backend said nothing").into_response();
    };
    let mut response = Response::new(axum::body::Body::from(out[start..].to_vec()));
    for line in String::from_utf8_lossy(&out[..end]).lines() {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split(' ').next().and_then(|c| c.parse().ok()).unwrap_or(500);
            *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        } else if let (Ok(name), Ok(value)) =
            (name.parse::<axum::http::HeaderName>(), value.parse::<axum::http::HeaderValue>())
        {
            response.headers_mut().append(name, value);
        }
    }
    response
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
