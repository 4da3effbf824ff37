//! The real `autobuilder serve` in its own directory, on a typed test configuration, and the
//! requests tests make to it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use autobuilder::config::{Config, ProjectConfig, Secret};
use serde_json::{Value, json};

use super::{GitHost, Postgres, TEST_IMAGE, ensure_test_image, push_payload, wait_until, wait_until_blocking};

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

/// The webhook secret of the test project `demo`.
pub const SECRET: &str = "test-secret";
/// The admin token of test servers configured with [`admin`].
pub const ADMIN_TOKEN: &str = "admin-token";

/// `TEST_DATABASE=postgres` runs the test servers on PostgreSQL (a new database each,
/// see [`Postgres`]) instead of SQLite: the suite runs against both backends.
pub const TEST_DATABASE_ENV: &str = "TEST_DATABASE";

/// The configuration of a test server in `dir`: its data and temp directories there, repositories
/// from `git`, the test image, no network, the project `demo` (recipes `org/recipes`, secret
/// [`SECRET`]), GitHub at `github_url` with a token (without it, no token and nothing listens), and
/// its history in SQLite or, with [`TEST_DATABASE_ENV`], in a PostgreSQL database of its own.
/// A test sets its own fields on it: `test_config(dir, &git, None).with(|c| c.builds.concurrency = 4)`.
pub fn test_config(dir: &Path, git: &GitHost, github_url: Option<&str>) -> Config {
    let mut config = Config {
        listen: "127.0.0.1:0".into(),
        public_url: "http://autobuilder.test".into(),
        data_dir: dir.join("data"),
        tmp_directory: dir.join("tmp"),
        ..Config::default()
    };
    config.git.clone_url = git.clone_url();
    config.github.api_url = github_url.unwrap_or("http://127.0.0.1:9").into();
    config.github.token = Secret::new(if github_url.is_some() { "test-token" } else { "" });
    config.docker.default_image = TEST_IMAGE.into();
    config.docker.network = "none".into();
    config.builds.timeout_minutes = 5;
    config.builds.memory = "256m".into();
    config.projects.insert("demo".into(), project("org/recipes", SECRET));
    match std::env::var(TEST_DATABASE_ENV).as_deref() {
        Ok("postgres") => config.database.url = Secret::new(Postgres::shared().fresh_database()),
        Ok("sqlite") | Ok("") | Err(_) => {}
        Ok(other) => panic!("{TEST_DATABASE_ENV}={other}: say sqlite or postgres"),
    }
    config
}

/// A project whose recipes are in `recipes`, its webhooks signed with `secret`; the rest defaults.
pub fn project(recipes: &str, secret: &str) -> ProjectConfig {
    serde_json::from_value(json!({"recipes": recipes, "webhook_secret": secret})).expect("a valid project")
}

/// Enables the admin API with [`ADMIN_TOKEN`]: `test_config(..).with(admin)`.
pub fn admin(config: &mut Config) {
    config.admin_token = Secret::new(ADMIN_TOKEN);
}

/// A test's own settings on top of [`test_config`], set as typed fields.
pub trait ConfigExt: Sized {
    /// Returns the configuration after `change`.
    fn with(self, change: impl FnOnce(&mut Self)) -> Self;
    /// The project `demo` of [`test_config`].
    fn demo(&mut self) -> &mut ProjectConfig;
}

impl ConfigExt for Config {
    fn with(mut self, change: impl FnOnce(&mut Self)) -> Self {
        change(&mut self);
        self
    }

    fn demo(&mut self) -> &mut ProjectConfig {
        self.projects.get_mut("demo").expect("test_config configures the project demo")
    }
}

/// Writes `config` to `path` as TOML, as an operator would.
pub fn write_config(path: &Path, config: &Config) {
    std::fs::write(path, toml::to_string(config).expect("the configuration serialises")).unwrap();
}

/// Prints every line of a child's `output` (prefixed with `prefix`, captured with the test's
/// output) and gives it to `each`, until the child closes it.
pub(super) fn echo_lines(
    output: impl std::io::Read + Send + 'static,
    prefix: &'static str,
    mut each: impl FnMut(String) + Send + 'static,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines().map_while(Result::ok) {
            eprintln!("{prefix} {line}");
            each(line);
        }
    });
}

/// Waits until `child` has written the address it listens on to `file` (`--address-file`), and
/// returns it; panics at once when `child` exits first.
pub(super) fn read_address(child: &mut Child, file: &Path, what: &str) -> String {
    wait_until_blocking(&format!("{what} to listen"), || {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{what} exited before listening ({status}): see its log above");
        }
        std::fs::read_to_string(file).ok().map(|address| address.trim().to_string())
    })
}

impl Server {
    /// Starts the binary in a new directory, on the configuration `config` makes for that
    /// directory (see [`test_config`]), and waits until it listens.
    pub fn start(config: impl FnOnce(&Path) -> Config) -> Self {
        Self::start_with_env(config, &[])
    }

    /// [`Server::start`] with more environment variables (`AUTOBUILDER_*` overrides).
    pub fn start_with_env(config: impl FnOnce(&Path) -> Config, env: &[(&str, &str)]) -> Self {
        ensure_test_image();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("config.toml");
        write_config(&config_path, &config(dir.path()));
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
        let address_file = self.dir.path().join("address");
        let _ = std::fs::remove_file(&address_file); // the previous run's
        let mut child = Command::new(env!("CARGO_BIN_EXE_autobuilder"))
            .args(["serve", "--config"])
            .arg(&self.config_path)
            .arg("--address-file")
            .arg(&address_file)
            .current_dir(self.dir.path())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let output = self.output.clone();
        echo_lines(child.stdout.take().unwrap(), "[server]", move |line| output.lock().unwrap().push(line));
        self.url = format!("http://{}", read_address(&mut child, &address_file, "the server"));
        self.child = Some(child);
    }

    /// The server's configuration, as in its file.
    pub fn config(&self) -> Config {
        let text = std::fs::read_to_string(&self.config_path).unwrap();
        let mut config: Config = toml::from_str(&text).expect("the test configuration parses");
        if config.artifacts.directory.is_relative() {
            config.artifacts.directory = self.dir.path().join(&config.artifacts.directory);
        }
        config
    }

    /// Changes the configuration file; the server reads it at its next start.
    pub fn change_config(&self, change: impl FnOnce(&mut Config)) {
        let text = std::fs::read_to_string(&self.config_path).unwrap();
        let mut config: Config = toml::from_str(&text).expect("the test configuration parses");
        change(&mut config);
        write_config(&self.config_path, &config);
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

    /// Waits until build `id` is `running`; panics when it ends without running.
    pub async fn wait_running(&self, id: i64) {
        wait_until(&format!("build {id} to run"), async || {
            let (_, build) = self.get_json(&format!("/build/{id}")).await;
            if build["status"] == "running" {
                return Some(());
            }
            assert!(build["status"] == "queued", "build {id} is not running: {build}");
            None
        })
        .await
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

    /// What is under `tmp_directory` besides the working copies kept for the next builds: the
    /// directories of builds not yet removed.
    pub fn build_dirs(&self) -> Vec<String> {
        let tmp = std::fs::read_dir(self.dir.path().join("tmp")).unwrap().flatten();
        tmp.map(|e| e.file_name().to_string_lossy().into_owned()).filter(|name| !name.ends_with("-kept")).collect()
    }

    /// Resident memory of the server process, in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        self.proc_status_kib("VmRSS:")
    }

    /// The largest resident memory the server process has had, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.proc_status_kib("VmHWM:")
    }

    /// The server's process id (for /proc).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn proc_status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    pub fn artifacts_dir(&self) -> PathBuf {
        self.dir.path().join("artifacts")
    }

    /// Sends a webhook delivery signed with `secret`.
    pub async fn deliver(&self, project: &str, event: &str, body: &[u8], secret: Option<&str>) -> (u16, Value) {
        let id = format!("{:x}", rand_id());
        self.send_hook(project, event, Some(&id), Some("application/json"), body.to_vec(), secret).await
    }

    /// Delivers a push with a chosen `X-GitHub-Delivery` id.
    pub async fn push_as(&self, delivery: &str, repo: &str, branch: &str, sha: &str) -> (u16, Value) {
        let body = push_payload(repo, &format!("refs/heads/{branch}"), sha).to_string().into_bytes();
        self.send_hook("demo", "push", Some(delivery), None, body, Some(SECRET)).await
    }

    /// Sends `body` to the hook of `project`, every header the hook reads chosen: the delivery id
    /// and the content type (none when `None`), signed with `secret` (unsigned when `None`).
    pub async fn send_hook(
        &self,
        project: &str,
        event: &str,
        delivery: Option<&str>,
        content_type: Option<&str>,
        body: Vec<u8>,
        secret: Option<&str>,
    ) -> (u16, Value) {
        let mut request = self.http.post(format!("{}/build/{project}/hook", self.url)).header("x-github-event", event);
        if let Some(delivery) = delivery {
            request = request.header("x-github-delivery", delivery);
        }
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        if let Some(secret) = secret {
            request =
                request.header("x-hub-signature-256", autobuilder::github::events::sign(secret.as_bytes(), &body));
        }
        let response = request.body(body).send().await.unwrap();
        let code = response.status().as_u16();
        let text = response.text().await.unwrap();
        (code, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Delivers a signed push of `sha` to `repo` `branch`; returns the answer.
    pub async fn push(&self, repo: &str, branch: &str, sha: &str) -> (u16, Value) {
        let body = push_payload(repo, &format!("refs/heads/{branch}"), sha);
        self.deliver("demo", "push", body.to_string().as_bytes(), Some(SECRET)).await
    }

    /// Pushes and returns the ids of the builds it queued (expects at least one).
    pub async fn push_builds(&self, repo: &str, branch: &str, sha: &str) -> Vec<i64> {
        self.push_builds_after(repo, branch, &"0".repeat(40), sha).await
    }

    /// [`Server::push_builds`] of a push that moved `branch` from `before` to `sha`, as GitHub
    /// says it.
    pub async fn push_builds_after(&self, repo: &str, branch: &str, before: &str, sha: &str) -> Vec<i64> {
        let mut body = push_payload(repo, &format!("refs/heads/{branch}"), sha);
        body["before"] = before.into();
        let (code, body) = self.deliver("demo", "push", body.to_string().as_bytes(), Some(SECRET)).await;
        assert_eq!(code, 202, "{body}");
        let ids: Vec<i64> = body["builds"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        assert!(!ids.is_empty(), "{body}");
        ids
    }

    /// The first `count` lines of build `id`'s log, each with the time it arrived (milliseconds
    /// since the epoch, from the server's line index): where a build's time went.
    pub async fn log_timeline(&self, id: i64, count: usize) -> Vec<(f64, String)> {
        let (_, window) = self.get_json(&format!("/build/{id}/log/lines?from=1&count={count}")).await;
        let (lines, times) = (window["lines"].as_array().unwrap(), window["times"].as_array().unwrap());
        let text = |line: &Value| line.as_str().unwrap_or_default().to_string();
        times.iter().zip(lines).map(|(time, line)| (time.as_f64().unwrap_or_default(), text(line))).collect()
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
        wait_until(&format!("build {id} to finish"), async || {
            let (code, build) = self.get_json(&format!("/build/{id}")).await;
            assert_eq!(code, 200, "GET /build/{id}: {build}");
            (!matches!(build["status"].as_str(), Some("queued" | "running"))).then_some(build)
        })
        .await
    }

    /// Waits until the history holds a finished reload of the recipes at `sha`, and returns it.
    pub async fn wait_reload(&self, sha: &str) -> Value {
        // A reload is in the history from when it is recorded, `queued` until its end is.
        wait_until(&format!("a finished reload of the recipes at {sha}"), async || {
            let (_, history) = self.get_json("/build/history?repository=org/recipes&limit=50").await;
            let reload = history.as_array().unwrap().iter().find(|b| b["commit"] == sha).cloned()?;
            (!matches!(reload["status"].as_str(), Some("queued" | "running"))).then_some(reload)
        })
        .await
    }

    /// Waits until the history of `repo` holds a build newer than build `after`; returns its id.
    pub async fn wait_new_build(&self, repo: &str, after: i64) -> i64 {
        wait_until(&format!("a new build of {repo}"), async || {
            let (_, history) = self.get_json(&format!("/build/history?repository={repo}")).await;
            history.as_array().unwrap().iter().map(|b| b["id"].as_i64().unwrap()).find(|id| *id > after)
        })
        .await
    }

    /// Waits until the log of build `id` contains `text`.
    pub async fn wait_log(&self, id: i64, text: &str) {
        wait_until(&format!("build {id} to log {text:?}"), async || {
            let (code, log) = self.get_text(&format!("/build/{id}/log")).await;
            (code == 200 && log.contains(text)).then_some(())
        })
        .await
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

fn rand_id() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(Instant::now().elapsed().as_nanos());
    hasher.finish() as u128
}
