//! Test harness: the real `autobuilder` binary, the real Docker engine with a busybox image the
//! harness imports itself, real git repositories on disk, and a fake GitHub and hub over HTTP.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Multipart, Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Json;
use axum::routing::{get, post};
use serde_json::{Value, json};

/// The base image every test build runs in.
pub const TEST_IMAGE: &str = "autobuilder-test-busybox:latest";
/// Every wait in the harness gives up after this long.
pub const WAIT: Duration = Duration::from_secs(120);

/// Imports [`TEST_IMAGE`] from the host's static busybox (Debian's busybox-static) unless present.
/// Every test that touches Docker calls it first (`Server::start` does): it runs once per test
/// process, and a file lock makes concurrent test processes import the image once between them.
pub fn ensure_test_image() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let lock_path = std::env::temp_dir().join("autobuilder-test-image.lock");
        let lock = std::fs::File::create(&lock_path).expect("cannot create the test image lock file");
        lock.lock().expect("cannot lock the test image lock file");
        let present = Command::new("docker").args(["image", "inspect", TEST_IMAGE]).output().expect("docker CLI");
        if present.status.success() {
            return;
        }
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("busybox not found: apt-get install busybox-static (or run scripts/install-deps.sh)");
        let root = tempfile::tempdir().unwrap();
        let bin = root.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(root.path().join("tmp")).unwrap();
        std::fs::copy(busybox, bin.join("busybox")).unwrap();
        let list = Command::new(busybox).arg("--list").output().unwrap();
        for applet in String::from_utf8_lossy(&list.stdout).lines().filter(|a| *a != "busybox") {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
        let tar = format!("tar -C {} -c . | docker import - {TEST_IMAGE}", root.path().display());
        let status = Command::new("sh").args(["-c", &tar]).status().unwrap();
        assert!(status.success(), "docker import of the busybox image failed");
    });
}

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

/// A commit status as the fake GitHub received it.
#[derive(Debug, Clone)]
pub struct PostedStatus {
    pub repo: String,
    pub sha: String,
    pub state: String,
    pub context: String,
    pub description: String,
    pub target_url: String,
}

#[derive(Default)]
pub struct FakeGithubState {
    pub statuses: Mutex<Vec<PostedStatus>>,
    /// While true, every request fails with 500.
    pub down: std::sync::atomic::AtomicBool,
    /// This many next requests are answered 429 with `Retry-After: 1`.
    pub rate_limited: std::sync::atomic::AtomicU32,
    /// Permission per user (`admin`, `write`, `read`); others have `none`.
    pub permissions: Mutex<std::collections::HashMap<String, String>>,
    /// Pull requests by number, as GitHub returns them.
    pub pulls: Mutex<std::collections::HashMap<u64, Value>>,
    /// Comments posted: (pull request number, body).
    pub comments: Mutex<Vec<(u64, String)>>,
    /// Webhooks per repository (`org/name`), as stored (secrets in clear).
    pub hooks: Mutex<std::collections::HashMap<String, Vec<Value>>>,
    pub next_hook_id: std::sync::atomic::AtomicI64,
    /// Installation tokens minted for a GitHub App: (installation, the JWT's claims).
    pub app_tokens: Mutex<Vec<(u64, Value)>>,
}

/// A fake GitHub REST API that records commit statuses.
pub struct FakeGithub {
    pub url: String,
    pub state: Arc<FakeGithubState>,
}

impl FakeGithub {
    pub async fn start() -> Self {
        let state = Arc::new(FakeGithubState::default());
        let router = Router::new()
            .route("/repos/{owner}/{repo}/statuses/{sha}", post(post_status))
            .route("/repos/{owner}/{repo}/collaborators/{user}/permission", get(get_permission))
            .route("/repos/{owner}/{repo}/pulls/{number}", get(get_pull))
            .route("/repos/{owner}/{repo}/issues/{number}/comments", post(post_comment))
            .route("/repos/{owner}/{repo}/hooks", get(list_hooks).post(create_hook))
            .route("/app/installations/{id}/access_tokens", post(mint_installation_token))
            .route("/repos/{owner}/{repo}/hooks/{id}", axum::routing::patch(update_hook).delete(delete_hook))
            .with_state(state.clone());
        Self { url: serve(router).await, state }
    }

    pub fn statuses_for(&self, sha: &str) -> Vec<PostedStatus> {
        self.state.statuses.lock().unwrap().iter().filter(|s| s.sha == sha).cloned().collect()
    }

    /// Waits until `sha` has a status in `context` whose state is `state`.
    pub async fn wait_for(&self, sha: &str, context: &str, state: &str) -> Vec<PostedStatus> {
        wait_until(&format!("status {state} for {context} on {sha}"), || {
            let all = self.statuses_for(sha);
            all.iter().any(|s| s.context == context && s.state == state).then_some(all)
        })
        .await
    }
}

impl FakeGithub {
    /// Adds a hook to `repo` as if made by hand; returns its id.
    pub fn add_hook(&self, repo: &str, mut hook: Value) -> i64 {
        let id = self.state.next_hook_id.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        hook["id"] = json!(id);
        self.state.hooks.lock().unwrap().entry(repo.to_string()).or_default().push(hook);
        id
    }

    pub fn hooks_of(&self, repo: &str) -> Vec<Value> {
        self.state.hooks.lock().unwrap().get(repo).cloned().unwrap_or_default()
    }
}

/// As GitHub shows a hook: the secret hidden.
fn shown(hook: &Value) -> Value {
    let mut hook = hook.clone();
    if hook["config"]["secret"].is_string() {
        hook["config"]["secret"] = json!("********");
    }
    hook
}

async fn list_hooks(
    State(state): State<Arc<FakeGithubState>>,
    UrlPath((owner, repo)): UrlPath<(String, String)>,
) -> Json<Value> {
    let hooks = state.hooks.lock().unwrap().get(&format!("{owner}/{repo}")).cloned().unwrap_or_default();
    Json(Value::Array(hooks.iter().map(shown).collect()))
}

async fn create_hook(
    State(state): State<Arc<FakeGithubState>>,
    UrlPath((owner, repo)): UrlPath<(String, String)>,
    Json(mut hook): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let id = state.next_hook_id.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    hook["id"] = json!(id);
    state.hooks.lock().unwrap().entry(format!("{owner}/{repo}")).or_default().push(hook.clone());
    (StatusCode::CREATED, Json(shown(&hook)))
}

async fn update_hook(
    State(state): State<Arc<FakeGithubState>>,
    UrlPath((owner, repo, id)): UrlPath<(String, String, i64)>,
    Json(update): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let mut hooks = state.hooks.lock().unwrap();
    let Some(hook) = hooks.get_mut(&format!("{owner}/{repo}")).and_then(|h| h.iter_mut().find(|h| h["id"] == id))
    else {
        return (StatusCode::NOT_FOUND, Json(json!({"message": "Not Found"})));
    };
    for (key, value) in update.as_object().unwrap() {
        hook[key] = value.clone();
    }
    (StatusCode::OK, Json(shown(hook)))
}

async fn delete_hook(
    State(state): State<Arc<FakeGithubState>>,
    UrlPath((owner, repo, id)): UrlPath<(String, String, i64)>,
) -> StatusCode {
    let mut hooks = state.hooks.lock().unwrap();
    let list = hooks.entry(format!("{owner}/{repo}")).or_default();
    let before = list.len();
    list.retain(|h| h["id"] != id);
    if list.len() < before { StatusCode::NO_CONTENT } else { StatusCode::NOT_FOUND }
}

/// What GitHub does for an app: checks the app's JWT (here: its shape and claims, not the
/// signature) and answers an installation token.
async fn mint_installation_token(
    State(state): State<Arc<FakeGithubState>>,
    UrlPath(installation): UrlPath<u64>,
    headers: HeaderMap,
) -> (StatusCode, Json<Value>) {
    use base64::Engine;
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let claims = auth
        .strip_prefix("Bearer ")
        .and_then(|jwt| jwt.split('.').nth(1))
        .and_then(|payload| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok())
        .and_then(|json| serde_json::from_slice::<Value>(&json).ok());
    let Some(claims) = claims else {
        return (StatusCode::UNAUTHORIZED, Json(json!({"message": "A JSON web token could not be decoded"})));
    };
    state.app_tokens.lock().unwrap().push((installation, claims));
    let token = json!({"token": "ghs_installation-test-token", "expires_at": "2099-01-01T00:00:00Z",
        "permissions": {"statuses": "write", "pull_requests": "read", "administration": "write"}});
    (StatusCode::CREATED, Json(token))
}

async fn get_permission(
    State(state): State<Arc<FakeGithubState>>,
    UrlPath((_, _, user)): UrlPath<(String, String, String)>,
) -> Json<Value> {
    let permission = state.permissions.lock().unwrap().get(&user).cloned().unwrap_or_else(|| "none".into());
    Json(json!({ "permission": permission, "user": { "login": user } }))
}

async fn get_pull(
    State(state): State<Arc<FakeGithubState>>,
    UrlPath((_, _, number)): UrlPath<(String, String, u64)>,
) -> (StatusCode, Json<Value>) {
    match state.pulls.lock().unwrap().get(&number) {
        Some(pull) => (StatusCode::OK, Json(pull.clone())),
        None => (StatusCode::NOT_FOUND, Json(json!({ "message": "Not Found" }))),
    }
}

async fn post_comment(
    State(state): State<Arc<FakeGithubState>>,
    UrlPath((_, _, number)): UrlPath<(String, String, u64)>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let text = body["body"].as_str().unwrap_or_default().to_string();
    state.comments.lock().unwrap().push((number, text.clone()));
    (StatusCode::CREATED, Json(json!({ "id": 1, "body": text })))
}

async fn post_status(
    State(state): State<Arc<FakeGithubState>>,
    UrlPath((owner, repo, sha)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use std::sync::atomic::Ordering::SeqCst;
    if state.down.load(SeqCst) {
        return (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"message": "Server Error"}))).into_response();
    }
    if state.rate_limited.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)).is_ok() {
        let limited = Json(json!({"message": "You have exceeded a secondary rate limit"}));
        return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], limited).into_response();
    }
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !auth.ends_with("test-token") {
        return (StatusCode::UNAUTHORIZED, Json(json!({"message": "Bad credentials"}))).into_response();
    }
    let field = |name: &str| body.get(name).and_then(Value::as_str).unwrap_or_default().to_string();
    state.statuses.lock().unwrap().push(PostedStatus {
        repo: format!("{owner}/{repo}"),
        sha,
        state: field("state"),
        context: field("context"),
        description: field("description"),
        target_url: field("target_url"),
    });
    (StatusCode::CREATED, Json(body)).into_response()
}

#[derive(Default)]
pub struct FakeHubState {
    /// Uploaded files: (file name, bytes).
    pub uploads: Mutex<Vec<(String, Vec<u8>)>>,
    /// Links made: (link, target).
    pub links: Mutex<Vec<(String, String)>>,
    pub down: std::sync::atomic::AtomicBool,
}

/// A fake Zero-OS hub: `POST /api/flist/me/upload` and `GET /api/flist/me/<src>/link/<dst>`.
pub struct FakeHub {
    pub url: String,
    pub state: Arc<FakeHubState>,
}

pub const HUB_TOKEN: &str = "hub-token";

impl FakeHub {
    pub async fn start() -> Self {
        let state = Arc::new(FakeHubState::default());
        let router = Router::new()
            .route("/api/flist/me/upload", post(hub_upload).layer(axum::extract::DefaultBodyLimit::disable()))
            .route("/api/flist/me/{source}/link/{link}", get(hub_link))
            .with_state(state.clone());
        Self { url: serve(router).await, state }
    }
}

fn hub_refusal(state: &FakeHubState, headers: &HeaderMap) -> Option<(StatusCode, Json<Value>)> {
    if state.down.load(std::sync::atomic::Ordering::SeqCst) {
        return Some((
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "error", "message": "hub in maintenance"})),
        ));
    }
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !auth.eq_ignore_ascii_case(&format!("bearer {HUB_TOKEN}")) {
        return Some((
            StatusCode::UNAUTHORIZED,
            Json(json!({"status": "error", "message": "no authorization provided"})),
        ));
    }
    None
}

async fn hub_upload(
    State(state): State<Arc<FakeHubState>>,
    headers: HeaderMap,
    mut form: Multipart,
) -> (StatusCode, Json<Value>) {
    if let Some(refusal) = hub_refusal(&state, &headers) {
        return refusal;
    }
    while let Ok(Some(field)) = form.next_field().await {
        if field.name() == Some("file") {
            let name = field.file_name().unwrap_or_default().to_string();
            if !name.ends_with(".tar.gz") {
                return (
                    StatusCode::BAD_REQUEST,
                    Json(json!({"status": "error", "message": "invalid file extension"})),
                );
            }
            let bytes = field.bytes().await.unwrap().to_vec();
            let flist = format!("{}.flist", name.trim_end_matches(".tar.gz"));
            state.uploads.lock().unwrap().push((name, bytes));
            return (StatusCode::OK, Json(json!({"status": "success", "payload": {"name": flist}})));
        }
    }
    (StatusCode::BAD_REQUEST, Json(json!({"status": "error", "message": "file not found"})))
}

async fn hub_link(
    State(state): State<Arc<FakeHubState>>,
    UrlPath((source, link)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> (StatusCode, Json<Value>) {
    if let Some(refusal) = hub_refusal(&state, &headers) {
        return refusal;
    }
    state.links.lock().unwrap().push((link, source));
    (StatusCode::OK, Json(json!({"status": "success"})))
}

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

/// Polls `check` until it returns `Some`, or panics after [`WAIT`] naming `what`.
pub async fn wait_until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The real `autobuilder serve`, with its own data, temp and artifact directories.
pub struct Server {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub config_path: PathBuf,
    child: Option<Child>,
    pub http: reqwest::Client,
    /// Every line the server printed (its own log).
    pub output: Arc<Mutex<Vec<String>>>,
    /// Environment variables of the server process beyond the test's own.
    env: Vec<(String, String)>,
}

pub const SECRET: &str = "test-secret";
/// The admin token of test servers configured with [`ADMIN`].
pub const ADMIN_TOKEN: &str = "admin-token";
/// Configuration lines enabling the admin API.
pub const ADMIN: &str = "admin_token = \"admin-token\"\n";

/// The configuration of a test server: `extra` is appended (more tables, e.g. `[artifacts]`).
pub fn test_config(dir: &Path, git: &GitHost, github_url: Option<&str>, extra: &str) -> String {
    let tmp = dir.join("tmp");
    let token = if github_url.is_some() { "test-token" } else { "" };
    format!(
        r#"
{top}
listen = "127.0.0.1:0"
public_url = "http://autobuilder.test"
data_dir = "{data}"
tmp_directory = "{tmp}"
[git]
clone_url = "{clone}"
[github]
api_url = "{api}"
token = "{token}"
[docker]
default_image = "{TEST_IMAGE}"
network = "none"
[builds]
timeout_minutes = 5
memory = "256m"
[projects.demo]
recipes = "org/recipes"
branch = "master"
webhook_secret = "{SECRET}"
{extra}
"#,
        top = extra.lines().take_while(|l| !l.starts_with('[')).collect::<Vec<_>>().join("\n"),
        extra = extra.lines().skip_while(|l| !l.starts_with('[')).collect::<Vec<_>>().join("\n"),
        data = dir.join("data").display(),
        tmp = tmp.display(),
        clone = git.clone_url(),
        api = github_url.unwrap_or("http://127.0.0.1:9"),
    )
}

impl Server {
    /// Starts the binary in a new directory, on the configuration `config` makes for that
    /// directory (see [`test_config`]), and waits until it listens.
    pub fn start(config: impl FnOnce(&Path) -> String) -> Self {
        Self::start_with_env(config, &[])
    }

    /// [`Server::start`] with more environment variables (`AUTOBUILDER_*` overrides).
    pub fn start_with_env(config: impl FnOnce(&Path) -> String, env: &[(&str, &str)]) -> Self {
        ensure_test_image();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config(dir.path())).unwrap();
        let mut server = Self {
            dir,
            url: String::new(),
            config_path,
            child: None,
            http: reqwest::Client::new(),
            output: Arc::default(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_autobuilder"))
            .args(["serve", "--config"])
            .arg(&self.config_path)
            .current_dir(self.dir.path())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let output = self.output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                eprintln!("[server] {line}");
                output.lock().unwrap().push(line.clone());
                if let Some(at) = line.find("listening on http://") {
                    // The address ends where URL characters do (text and JSON logs alike).
                    let url: String = line[at + "listening on ".len()..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || ":/.[]".contains(*c))
                        .collect();
                    let _ = tx.send(url);
                }
            }
        });
        self.url = rx.recv_timeout(WAIT).expect("the server did not start listening");
        self.child = Some(child);
    }

    /// Stops the server (SIGKILL: nothing gets to clean up) and starts it again on the same data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Stops the server with SIGTERM (a graceful stop) and waits for it to exit.
    pub fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let _ = child.wait();
        }
    }

    /// Starts the server again after [`Server::kill`] or [`Server::terminate`].
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// POSTs to an admin endpoint with `token` (None: no Authorization header).
    pub async fn admin_post(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = self.http.post(format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
    }

    /// GETs an admin endpoint with `token`.
    pub async fn admin_get(&self, path: &str, token: &str) -> (u16, Value) {
        let response = self.http.get(format!("{}{path}", self.url)).bearer_auth(token).send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
    }

    /// Waits until build `id` is `running`.
    pub async fn wait_running(&self, id: i64) {
        let start = Instant::now();
        loop {
            let (_, build) = self.get_json(&format!("/build/{id}")).await;
            if build["status"] == "running" {
                return;
            }
            assert!(start.elapsed() < WAIT && build["status"] == "queued", "build {id} is not running: {build}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The `autobuilder.instance` label of this server's containers (a hash of its data_dir).
    pub fn instance(&self) -> String {
        use sha2::{Digest, Sha256};
        let data_dir = self.dir.path().join("data").canonicalize().unwrap();
        hex::encode(Sha256::digest(data_dir.to_string_lossy().as_bytes()))[..12].to_string()
    }

    /// Ids of this server's containers of build `id` (empty when there is none).
    pub fn containers_of(&self, id: i64) -> String {
        let (build, instance) =
            (format!("label=autobuilder.build={id}"), format!("label=autobuilder.instance={}", self.instance()));
        let out =
            Command::new("docker").args(["ps", "-aq", "--filter", &build, "--filter", &instance]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Resident memory of the server process, in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        self.proc_status_kib("VmRSS:")
    }

    /// The largest resident memory the server process has had, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.proc_status_kib("VmHWM:")
    }

    fn proc_status_kib(&self, field: &str) -> u64 {
        let pid = self.child.as_ref().expect("running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    pub fn artifacts_dir(&self) -> PathBuf {
        self.dir.path().join("artifacts")
    }

    /// Sends a webhook delivery signed with `secret`.
    pub async fn deliver(&self, project: &str, event: &str, body: &[u8], secret: Option<&str>) -> (u16, Value) {
        let mut request = self
            .http
            .post(format!("{}/build/{project}/hook", self.url))
            .header("x-github-event", event)
            .header("x-github-delivery", format!("{:x}", rand_id()))
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(secret) = secret {
            request = request.header("x-hub-signature-256", autobuilder::github::events::sign(secret.as_bytes(), body));
        }
        let response = request.send().await.unwrap();
        let code = response.status().as_u16();
        let text = response.text().await.unwrap();
        (code, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Delivers a push with a chosen `X-GitHub-Delivery` id.
    pub async fn push_as(&self, delivery: &str, repo: &str, branch: &str, sha: &str) -> (u16, Value) {
        let body = push_payload(repo, &format!("refs/heads/{branch}"), sha).to_string();
        let response = self
            .http
            .post(format!("{}/build/demo/hook", self.url))
            .header("x-github-event", "push")
            .header("x-github-delivery", delivery)
            .header("x-hub-signature-256", autobuilder::github::events::sign(SECRET.as_bytes(), body.as_bytes()))
            .body(body)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
    }

    /// Delivers a signed push of `sha` to `repo` `branch`; returns the answer.
    pub async fn push(&self, repo: &str, branch: &str, sha: &str) -> (u16, Value) {
        let body = push_payload(repo, &format!("refs/heads/{branch}"), sha);
        self.deliver("demo", "push", body.to_string().as_bytes(), Some(SECRET)).await
    }

    /// Pushes and returns the ids of the builds it queued (expects at least one).
    pub async fn push_builds(&self, repo: &str, branch: &str, sha: &str) -> Vec<i64> {
        let (code, body) = self.push(repo, branch, sha).await;
        assert_eq!(code, 202, "{body}");
        let ids: Vec<i64> = body["builds"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        assert!(!ids.is_empty(), "{body}");
        ids
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = self.http.get(format!("{}{path}", self.url)).send().await.unwrap();
        let code = response.status().as_u16();
        (code, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let response = self.http.get(format!("{}{path}", self.url)).send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// Waits until build `id` has a final status and returns it.
    pub async fn wait_build(&self, id: i64) -> Value {
        let start = Instant::now();
        loop {
            let (code, build) = self.get_json(&format!("/build/{id}")).await;
            assert_eq!(code, 200, "GET /build/{id}: {build}");
            if !matches!(build["status"].as_str(), Some("queued" | "running")) {
                return build;
            }
            assert!(start.elapsed() < WAIT, "build {id} did not finish: {build}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until the history holds a reload of the recipes at `sha`, and returns it.
    pub async fn wait_reload(&self, sha: &str) -> Value {
        let start = Instant::now();
        loop {
            let (_, history) = self.get_json("/build/history?repository=org/recipes&limit=50").await;
            if let Some(reload) = history.as_array().unwrap().iter().find(|b| b["commit"] == sha) {
                return reload.clone();
            }
            assert!(start.elapsed() < WAIT, "no reload of the recipes at {sha}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        // Leave no container or image of this server behind, whatever the test did.
        let filter = format!("label=autobuilder.instance={}", self.instance());
        for (list, remove) in [(["ps", "-aq"], ["rm", "-f"]), (["images", "-q"], ["rmi", "-f"])] {
            if let Ok(out) = Command::new("docker").args(list).args(["--filter", &filter]).output() {
                let ids = String::from_utf8_lossy(&out.stdout);
                let ids: Vec<&str> = ids.split_whitespace().collect();
                if !ids.is_empty() {
                    let _ = Command::new("docker").args(remove).args(&ids).output();
                }
            }
        }
    }
}

/// A `pull_request` event: pull request `number` of `repo` into `base`, its head `sha` in `head_repo`.
pub fn pull_request_payload(action: &str, repo: &str, number: u64, base: &str, sha: &str, head_repo: &str) -> Value {
    json!({
        "action": action,
        "number": number,
        "pull_request": {
            "title": "a pull request",
            "user": {"login": "grace"},
            "head": {"ref": "feature", "sha": sha, "repo": {"full_name": head_repo}},
            "base": {"ref": base, "sha": "1".repeat(40), "repo": {"full_name": repo}}
        },
        "repository": {"full_name": repo}
    })
}

pub fn push_payload(repo: &str, git_ref: &str, sha: &str) -> Value {
    json!({
        "ref": git_ref,
        "before": "0000000000000000000000000000000000000000",
        "after": sha,
        "deleted": sha.chars().all(|c| c == '0'),
        "repository": {"full_name": repo, "name": repo.split('/').nth(1).unwrap()},
        "head_commit": {"id": sha, "message": "a change", "author": {"name": "Ada"}},
        "pusher": {"name": "ada"}
    })
}

fn rand_id() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(Instant::now().elapsed().as_nanos());
    hasher.finish() as u128
}

/// A real `redis-server` on a free loopback port; can be stopped and started again on that port.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = Self { port, child: None };
        server.resume();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub fn resume(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server not found: apt-get install redis-server");
        self.child = Some(child);
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(start.elapsed() < WAIT, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server: every connection to it breaks.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The real `autobuilder live` on a test server's configuration.
pub struct LiveServer {
    pub url: String,
    child: Child,
}

impl LiveServer {
    pub fn start(server: &Server) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_autobuilder"))
            .args(["live", "--config"])
            .arg(&server.config_path)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                eprintln!("[live] {line}");
                if let Some(at) = line.find("listening on ws://") {
                    let _ = tx.send(line[at + "listening on ".len()..].trim().to_string());
                }
            }
        });
        let url = rx.recv_timeout(WAIT).expect("autobuilder live did not start listening");
        Self { url, child }
    }
}

impl Drop for LiveServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A websocket client of `/live` that checks every `lines` message continues exactly where the
/// previous one ended, and keeps the text.
pub struct LiveClient {
    socket: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    /// Next line number expected per build, and the text received so far.
    pub received: std::collections::HashMap<i64, (u64, String)>,
    pub resyncs: usize,
}

impl LiveClient {
    pub async fn connect(url: &str) -> Self {
        let (socket, _) = tokio_tungstenite::connect_async(url).await.expect("websocket connects");
        Self { socket, received: Default::default(), resyncs: 0 }
    }

    pub async fn send(&mut self, message: Value) {
        use futures_util::SinkExt;
        self.socket.send(tokio_tungstenite::tungstenite::Message::text(message.to_string())).await.unwrap();
    }

    /// Subscribes to build `id` from the next line this client lacks.
    pub async fn subscribe(&mut self, id: i64) {
        let from = self.received.entry(id).or_insert((1, String::new())).0;
        self.send(json!({"type": "subscribe", "id": id, "from": from})).await;
    }

    /// The next JSON message; `lines` are checked and recorded.
    pub async fn next(&mut self) -> Value {
        use futures_util::StreamExt;
        loop {
            let message = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .expect("no websocket message in time")
                .expect("websocket closed")
                .expect("websocket failed");
            let tokio_tungstenite::tungstenite::Message::Text(text) = message else { continue };
            let value: Value = serde_json::from_str(&text).unwrap();
            match value["type"].as_str() {
                Some("lines") => {
                    let id = value["id"].as_i64().unwrap();
                    let seq = value["seq"].as_u64().unwrap();
                    let text = value["text"].as_str().unwrap();
                    let entry = self.received.entry(id).or_insert((1, String::new()));
                    assert_eq!(seq, entry.0, "lines of build {id} out of order or repeated");
                    assert!(text.ends_with('\n'));
                    entry.0 += text.matches('\n').count() as u64;
                    entry.1.push_str(text);
                }
                Some("resync") => self.resyncs += 1,
                _ => {}
            }
            return value;
        }
    }

    /// Reads messages until build `id` is announced with a final status; returns that record.
    pub async fn until_finished(&mut self, id: i64) -> Value {
        loop {
            let message = self.next().await;
            if message["type"] == "build"
                && message["build"]["id"] == id
                && !matches!(message["build"]["status"].as_str(), Some("queued" | "running"))
            {
                return message["build"].clone();
            }
        }
    }

    /// Reads messages until build `id` has at least `lines` lines.
    pub async fn until_lines(&mut self, id: i64, lines: u64) {
        while self.received.get(&id).is_none_or(|(next, _)| *next <= lines) {
            self.next().await;
        }
    }

    pub fn text(&self, id: i64) -> &str {
        self.received.get(&id).map_or("", |(_, text)| text.as_str())
    }

    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}

/// Headless Chromium driven over WebDriver (Debian's chromium + chromium-driver).
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
}

impl Browser {
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .spawn()
            .expect("chromedriver not found: apt-get install chromium chromium-driver");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let start = Instant::now();
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(start.elapsed() < WAIT, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let binary = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].into_iter().find(|p| Path::new(p).exists());
        let capabilities = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": binary,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"]
        }}}});
        let response: Value =
            http.post(format!("{base}/session")).json(&capabilities).send().await.unwrap().json().await.unwrap();
        let session =
            response["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {response}")).to_string();
        Self { driver, base, session, http }
    }

    pub async fn goto(&self, url: &str) {
        self.command("url", json!({"url": url})).await;
    }

    /// Runs `script` (a function body) in the page and returns its result.
    pub async fn eval(&self, script: &str) -> Value {
        self.command("execute/sync", json!({"script": script, "args": []})).await
    }

    /// Waits until `script` returns something truthy; returns it.
    pub async fn wait_for(&self, what: &str, script: &str) -> Value {
        let start = Instant::now();
        loop {
            let value = self.eval(script).await;
            if !(value.is_null() || value == false || value == 0 || value == "") {
                return value;
            }
            assert!(start.elapsed() < WAIT, "timed out waiting in the browser for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Saves a PNG screenshot of the page.
    pub async fn screenshot(&self, path: &Path) {
        use base64::Engine;
        let url = format!("{}/session/{}/screenshot", self.base, self.session);
        let response: Value = self.http.get(url).send().await.unwrap().json().await.unwrap();
        let png = base64::engine::general_purpose::STANDARD.decode(response["value"].as_str().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    async fn command(&self, name: &str, body: Value) -> Value {
        let url = format!("{}/session/{}/{name}", self.base, self.session);
        let response: Value = self.http.post(url).json(&body).send().await.unwrap().json().await.unwrap();
        if let Some(error) = response["value"].get("error") {
            panic!("webdriver {name}: {error}: {}", response["value"]["message"]);
        }
        response["value"].clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// `docker run` of `script` in the test image with `log_driver`, its output read and dropped: the
/// baseline of the benchmarks.
pub fn docker_run(script: &str, log_driver: &str) -> Duration {
    ensure_test_image();
    let start = Instant::now();
    let status = Command::new("docker")
        .args(["run", "--rm", "--network", "none", "--log-driver", log_driver, TEST_IMAGE, "sh", "-c"])
        .arg(format!("mkdir -p /tmp/archives; {script}"))
        .stdout(Stdio::piped())
        .output()
        .unwrap()
        .status;
    assert!(status.success());
    start.elapsed()
}
