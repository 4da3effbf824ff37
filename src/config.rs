//! Settings: one TOML file, overridable by `AUTOBUILDER_*` environment variables, validated at start-up.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::model::{MIN_CPUS, MemorySize, RepoName};

/// Prefix of the environment variables that override configuration keys.
/// `AUTOBUILDER_GITHUB_TOKEN` sets `[github] token`, `AUTOBUILDER_PROJECTS_DEMO_WEBHOOK_SECRET` sets
/// `[projects.demo] webhook_secret`.
pub const ENV_PREFIX: &str = "AUTOBUILDER_";

/// The whole configuration. Every field has a documented default in `config.sample.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the HTTP server: hooks, build API, monitor page.
    pub listen: String,
    /// Base URL of this service as GitHub users reach it; links in statuses start with it.
    pub public_url: String,
    /// Where the history database and the full build logs live.
    pub data_dir: PathBuf,
    /// Scratch space for sources and artifacts of running builds. Must be the same path on the
    /// Docker host, because it is bind-mounted into build containers.
    pub tmp_directory: PathBuf,
    /// Bearer token of the admin API (cancel, rebuild, deliveries). Empty: the admin API answers 403.
    pub admin_token: Secret,
    /// Format of autobuilder's own log lines: `text` or `json`.
    pub log_format: LogFormat,
    pub database: DatabaseConfig,
    pub git: GitConfig,
    pub github: GithubConfig,
    pub docker: DockerConfig,
    pub builds: BuildsConfig,
    pub artifacts: ArtifactsConfig,
    pub redis: RedisConfig,
    pub live: LiveConfig,
    pub retention: RetentionConfig,
    pub hooks: HooksConfig,
    pub monitor: MonitorConfig,
    pub worker: WorkerConfig,
    /// One table per `/build/<name>/hook`.
    pub projects: BTreeMap<String, ProjectConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GitConfig {
    /// Where repositories are fetched from; `{repo}` is replaced by `org/name`.
    pub clone_url: String,
    /// Further attempts after a failed fetch.
    pub retries: u32,
    /// Seconds before the first retry; doubled for each next one.
    pub retry_delay_seconds: u64,
    /// 0: every build gets the repository's full history, from its mirror under `data_dir`
    /// (the first build of a repository fetches it all, later ones only what is new). N: the
    /// first build fetches the pushed commit with N commits of history and the mirror is filled
    /// behind it; later builds get the full history from the mirror.
    pub depth: u32,
    /// Working copies of finished builds kept for the next build of the same repository and
    /// branch, which then writes only the files that changed (0: every build writes all of them).
    pub keep_checkouts: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GithubConfig {
    /// GitHub REST API base URL (GitHub Enterprise or a fake server in tests).
    pub api_url: String,
    /// Token used to post commit statuses; empty (and no app) disables statuses.
    pub token: Secret,
    /// A GitHub App instead of a token (for organisations): its id, its private key (PEM file)
    /// and the installation to act as; installation tokens are minted and refreshed as needed.
    pub app_id: u64,
    pub private_key_path: PathBuf,
    pub installation_id: u64,
    /// GitHub's web address (GitHub Enterprise, or a fake in tests): commit links on the monitor
    /// and the OAuth sign-in pages (`/login/oauth/authorize`, `/login/oauth/access_token`).
    pub web_url: String,
    /// The OAuth app people sign in with on the monitor (its callback URL is
    /// `<public_url>/login/callback`). Both empty: no sign-in, and no cancel or rebuild buttons.
    pub client_id: String,
    pub client_secret: Secret,
}

impl GithubConfig {
    /// Whether autobuilder may talk to GitHub (a token or an app).
    pub fn enabled(&self) -> bool {
        !self.token.is_empty() || self.app_id != 0
    }

    /// Whether people may sign in with GitHub (an OAuth app is configured).
    pub fn sign_in(&self) -> bool {
        !self.client_id.is_empty()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorConfig {
    /// Whether the monitor pages, the badges and the `/build/*` read endpoints are open to all.
    /// false: they need a user signed in with GitHub who may read the repository (see
    /// docs/security.md); needs `[github] client_id`.
    pub public: bool,
    /// Key of the HMAC that signs session cookies. Empty: a random key is made once and kept in
    /// `<data_dir>/session.key`. Changing it signs everybody out.
    pub session_secret: Secret,
    /// Hours a sign-in lasts.
    pub session_hours: u64,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self { public: true, session_secret: Secret::default(), session_hours: 12 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DockerConfig {
    /// Base image of a build script whose recipe names none.
    pub default_image: String,
    /// Network mode of build containers (`bridge`, `host`, `none`, or a network name).
    pub network: String,
    /// Images a `commit` recipe made, kept per image and branch (older ones are removed; images
    /// autobuilder did not make are never touched).
    pub keep_images: usize,
    /// Registry hosts images may be pulled from (e.g. `docker.io`, `ghcr.io`). Empty: never pull,
    /// build only from images already on the Docker host.
    pub allowed_registries: Vec<String>,
    /// Linux capabilities build containers keep; every other one is dropped (and
    /// `no-new-privileges` is always set).
    pub capabilities: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BuildsConfig {
    /// Builds running at once; the others wait as `queued`. 0 means the number of cores.
    pub concurrency: usize,
    /// A build still running after this many minutes is stopped and ends as `failure`.
    pub timeout_minutes: u64,
    /// Memory limit of a build container, e.g. `512m`, `4g`.
    pub memory: String,
    /// CPUs a build container may use (e.g. 1.5); 0 is no limit.
    pub cpus: f64,
    /// Most processes and threads in a build container; 0 is no limit.
    pub pids: i64,
    /// The most a recipe may ask for with its own `timeout_minutes`, `memory`, `cpus`, `pids`
    /// (0 for cpus and pids: no cap).
    pub max_timeout_minutes: u64,
    pub max_memory: String,
    pub max_cpus: f64,
    pub max_pids: i64,
    /// On cancel, seconds between SIGTERM and SIGKILL.
    pub cancel_grace_seconds: u64,
    /// Largest file a build may write (ulimit fsize), e.g. `10g`.
    pub max_file_size: String,
    /// Most bytes of one build's log; later output is drained but not kept. 0: no cap.
    pub max_log_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactsKind {
    /// Copy artifacts into `artifacts.directory`, served under `/artifacts/`.
    Directory,
    /// Upload artifacts to a Zero-OS hub as flists.
    Hub,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArtifactsConfig {
    pub kind: ArtifactsKind,
    /// Directory store location; also where `format: binary` artifacts go when `kind = "hub"`.
    pub directory: PathBuf,
    /// Further attempts after a failed upload.
    pub retries: u32,
    /// Seconds before the first retry; doubled for each next one.
    pub retry_delay_seconds: u64,
    pub hub: HubConfig,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HooksConfig {
    /// After a recipes reload adds repositories, give them their webhook (as `hooks sync` does).
    pub auto: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Forget finished builds (history and logs) and deliveries older than this many days; 0 keeps them.
    pub days: u64,
    /// Keep at most this many history entries (the newest); 0 keeps them all.
    pub builds: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HubConfig {
    /// Base URL of the Zero-OS hub.
    pub url: String,
    /// Bearer token of the hub account that receives the flists.
    pub token: Secret,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `postgres://user:password@host:port/database`: the history in PostgreSQL. Empty: in SQLite,
    /// `<data_dir>/autobuilder.sqlite`.
    pub url: Secret,
}

/// How this process runs builds: `serve` itself (`enabled`), or `autobuilder worker` on a host
/// of its own, both taking them from the PostgreSQL history's queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// The name builds are run under, unique per history database. Empty: `<hostname>/serve` for
    /// `serve`, `<hostname>/worker` for `autobuilder worker`.
    pub name: String,
    /// Whether `serve` runs builds itself. False: it takes webhooks and serves pages, and
    /// `autobuilder worker` processes run the builds (needs a PostgreSQL `[database] url`).
    pub enabled: bool,
    /// Builds `autobuilder worker` runs at once. 0: `[builds] concurrency`.
    pub concurrency: usize,
    /// What this build host offers (e.g. `["gpu", "arm64"]`): it runs only the builds whose recipe's
    /// `runs_on` lists none but these.
    pub labels: Vec<String>,
    /// A running build is held by its worker under a lease it renews every third of this. When a
    /// worker stops renewing (killed, frozen, its host or network lost), the build is taken over
    /// after this long.
    pub lease_seconds: u64,
    /// How many times a build whose worker was lost is queued again before it ends `error:
    /// worker <name> lost`.
    pub requeues: i64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self { name: String::new(), enabled: true, concurrency: 0, labels: Vec::new(), lease_seconds: 30, requeues: 1 }
    }
}

impl WorkerConfig {
    /// The name builds run under in a process of `role` (`serve` or `worker`).
    pub fn name_for(&self, role: &str) -> String {
        if !self.name.is_empty() {
            return self.name.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let host = host.trim();
        format!("{}/{role}", if host.is_empty() { "localhost" } else { host })
    }

    /// How long a lease lasts unless renewed.
    pub fn lease(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.lease_seconds)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// e.g. `redis://127.0.0.1:6379`. Empty: build events stay in-process and `serve` carries the
    /// live websocket itself; set: `serve` publishes them and `autobuilder live` serves browsers.
    pub url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LiveConfig {
    /// Where `autobuilder live` accepts websocket clients.
    pub listen: String,
    /// Websocket URL the monitor page connects to (e.g. `wss://ci.example/live`). Empty: the
    /// `/live` endpoint of the host that served the page.
    pub public_url: String,
    /// Websocket clients connected at once; more are answered 503. 0: no cap.
    pub max_clients: usize,
    /// Websocket clients connected at once from one address; more are answered 503. 0: no cap.
    pub max_clients_per_address: usize,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:3333".into(),
            public_url: String::new(),
            max_clients: 10_000,
            max_clients_per_address: 64,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectConfig {
    /// The recipes repository (`org/name`) holding `<org>/<repo>/<branch>.yaml` files.
    pub recipes: String,
    /// The branch of the recipes repository that is loaded.
    #[serde(default = "default_branch")]
    pub branch: String,
    /// Secret shared with the GitHub webhooks of this project (may come from the environment
    /// alone: `AUTOBUILDER_PROJECTS_<NAME>_WEBHOOK_SECRET`).
    #[serde(default)]
    pub webhook_secret: Secret,
    /// Builds of this project running at once (within `[builds] concurrency`); 0: no own limit.
    #[serde(default)]
    pub concurrency: usize,
    /// Whether a newer push to a branch also cancels that branch's running builds (queued ones
    /// always are).
    #[serde(default = "yes")]
    pub supersede_running: bool,
    /// Environment variables given to this project's builds; their values are masked in logs.
    #[serde(default)]
    pub secrets: BTreeMap<String, Secret>,
    /// Whether pull requests from forks are built (their scripts run with this project's secrets).
    #[serde(default)]
    pub allow_forks: bool,
    /// Other projects whose committed images (`autobuilder/<project>/...`) this project's recipes
    /// may name as `baseimage`. Empty: only its own.
    #[serde(default)]
    pub images_from: Vec<String>,
}

fn yes() -> bool {
    true
}

/// A string that never shows in logs or `Debug` output.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

/// A worker label (`[worker] labels`, and `runs_on` in a recipe): letters, digits, '-', '_' and
/// '.', 1 to 64 of them.
pub fn check_label(label: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
    if label.is_empty() || label.len() > 64 || !label.chars().all(allowed) {
        return Err(format!("label {label:?} may only hold letters, digits, '-', '_' and '.' (1 to 64)"));
    }
    Ok(())
}

fn default_branch() -> String {
    "master".into()
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:5560".into(),
            public_url: "http://127.0.0.1:5560".into(),
            data_dir: "./data".into(),
            tmp_directory: "/tmp/autobuilder".into(),
            admin_token: Secret::default(),
            log_format: LogFormat::Text,
            database: DatabaseConfig::default(),
            git: GitConfig::default(),
            github: GithubConfig::default(),
            docker: DockerConfig::default(),
            builds: BuildsConfig::default(),
            artifacts: ArtifactsConfig::default(),
            redis: RedisConfig::default(),
            live: LiveConfig::default(),
            retention: RetentionConfig::default(),
            hooks: HooksConfig::default(),
            monitor: MonitorConfig::default(),
            worker: WorkerConfig::default(),
            projects: BTreeMap::new(),
        }
    }
}

impl Default for GitConfig {
    fn default() -> Self {
        Self {
            clone_url: "https://github.com/{repo}.git".into(),
            retries: 2,
            retry_delay_seconds: 2,
            depth: 0,
            keep_checkouts: 8,
        }
    }
}

impl Default for GithubConfig {
    fn default() -> Self {
        Self {
            api_url: "https://api.github.com".into(),
            token: Secret::default(),
            app_id: 0,
            private_key_path: PathBuf::new(),
            installation_id: 0,
            web_url: "https://github.com".into(),
            client_id: String::new(),
            client_secret: Secret::default(),
        }
    }
}

impl Default for DockerConfig {
    fn default() -> Self {
        Self {
            default_image: "ubuntu:16.04".into(),
            network: "bridge".into(),
            keep_images: 3,
            allowed_registries: Vec::new(),
            capabilities: ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "SETUID", "SETGID", "KILL"]
                .map(String::from)
                .to_vec(),
        }
    }
}

impl Default for BuildsConfig {
    fn default() -> Self {
        Self {
            concurrency: 0,
            timeout_minutes: 60,
            memory: "4g".into(),
            cpus: 0.0,
            pids: 4096,
            max_timeout_minutes: 240,
            max_memory: "16g".into(),
            max_cpus: 0.0,
            max_pids: 32768,
            cancel_grace_seconds: 10,
            max_file_size: "10g".into(),
            max_log_bytes: 100_000_000,
        }
    }
}

impl Default for ArtifactsConfig {
    fn default() -> Self {
        Self {
            kind: ArtifactsKind::Directory,
            directory: "./artifacts".into(),
            retries: 3,
            retry_delay_seconds: 5,
            hub: HubConfig::default(),
        }
    }
}

impl Default for HubConfig {
    fn default() -> Self {
        Self { url: "https://hub.grid.tf".into(), token: Secret::default() }
    }
}

impl Config {
    /// Reads the file (when given), applies the environment overrides, and validates the result.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the configuration file {}", path.display()))?,
            None => String::new(),
        };
        let vars = std::env::vars().filter(|(k, _)| k.starts_with(ENV_PREFIX));
        let config = Self::from_toml_and_env(&text, vars).with_context(|| {
            format!("invalid configuration in {}", path.map_or("(defaults)".into(), |p| p.display().to_string()))
        })?;
        Ok(config)
    }

    /// Parses `text`, then applies `AUTOBUILDER_*` overrides from `vars`, then validates.
    pub fn from_toml_and_env(text: &str, vars: impl Iterator<Item = (String, String)>) -> anyhow::Result<Self> {
        let parsed: Config = toml::from_str(text)?;
        let mut tree = toml::Value::try_from(&parsed)?;
        for (name, value) in vars {
            let Some(key) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if !override_key(&mut tree, &key.to_ascii_lowercase(), &value) {
                bail!("environment variable {name} names no configuration key");
            }
        }
        let mut config: Config = tree.try_into()?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&mut self) -> anyhow::Result<()> {
        self.listen
            .parse::<SocketAddr>()
            .with_context(|| format!("listen = {:?} is not an address like 127.0.0.1:5560", self.listen))?;
        self.live
            .listen
            .parse::<SocketAddr>()
            .with_context(|| format!("[live] listen = {:?} is not an address like 127.0.0.1:3333", self.live.listen))?;
        let database = self.database.url.expose();
        if !(database.is_empty() || database.starts_with("postgres://") || database.starts_with("postgresql://")) {
            bail!(
                "[database] url must be empty (SQLite under data_dir) or a PostgreSQL URL like \
                 postgres://autobuilder:password@127.0.0.1:5432/autobuilder"
            );
        }
        if self.worker.lease_seconds < 2 {
            bail!(
                "[worker] lease_seconds = {} is too short: at least 2 (30 is the default)",
                self.worker.lease_seconds
            );
        }
        for label in &self.worker.labels {
            check_label(label).map_err(|why| anyhow::anyhow!("[worker] labels: {why}"))?;
        }
        if self.worker.requeues < 0 {
            bail!("[worker] requeues = {} must be 0 or more", self.worker.requeues);
        }
        if !self.worker.enabled && database.is_empty() {
            bail!(
                "[worker] enabled = false needs a PostgreSQL [database] url: with the SQLite history no other \
                 process can run the builds"
            );
        }
        if !self.redis.url.is_empty() {
            redis::Client::open(self.redis.url.as_str()).with_context(|| {
                format!("[redis] url = {:?} is not a Redis URL like redis://127.0.0.1:6379", self.redis.url)
            })?;
        }
        if !(self.live.public_url.is_empty()
            || self.live.public_url.starts_with("ws://")
            || self.live.public_url.starts_with("wss://"))
        {
            bail!("[live] public_url = {:?} must start with ws:// or wss:// (or be empty)", self.live.public_url);
        }
        if self.redis.url.is_empty()
            && !self.live.public_url.is_empty()
            && !self.live.public_url.trim_end_matches('/').ends_with("/live")
        {
            bail!(
                "[live] public_url = {:?}: without Redis, serve carries the websocket itself at /live, so the URL \
                 must end in /live (e.g. wss://ci.example.org/live), or be empty",
                self.live.public_url
            );
        }
        if !(self.public_url.starts_with("http://") || self.public_url.starts_with("https://")) {
            bail!("public_url = {:?} must start with http:// or https://", self.public_url);
        }
        self.public_url = self.public_url.trim_end_matches('/').to_string();
        if !self.tmp_directory.is_absolute() {
            bail!(
                "tmp_directory = {:?} must be an absolute path: it is bind-mounted into build containers",
                self.tmp_directory
            );
        }
        if !self.git.clone_url.contains("{repo}") {
            bail!("[git] clone_url = {:?} must contain {{repo}}", self.git.clone_url);
        }
        if self.builds.concurrency == 0 {
            self.builds.concurrency = std::thread::available_parallelism().map_or(2, |n| n.get());
        }
        if self.github.app_id != 0
            && (self.github.installation_id == 0 || self.github.private_key_path.as_os_str().is_empty())
        {
            bail!("[github] app_id needs installation_id and private_key_path (the app's PEM private key)");
        }
        if !(self.github.web_url.starts_with("http://") || self.github.web_url.starts_with("https://")) {
            bail!("[github] web_url = {:?} must start with http:// or https://", self.github.web_url);
        }
        self.github.web_url = self.github.web_url.trim_end_matches('/').to_string();
        if self.github.client_id.is_empty() != self.github.client_secret.is_empty() {
            bail!("[github] client_id and client_secret go together: set both (the OAuth app's) or neither");
        }
        if self.github.sign_in() && !self.github.enabled() {
            bail!(
                "[github] client_id needs a token or an app in [github]: write access is checked with it before \
                 a signed-in user may cancel or rebuild"
            );
        }
        if !self.monitor.public && !self.github.sign_in() {
            bail!("[monitor] public = false needs sign-in: set [github] client_id and client_secret (an OAuth app)");
        }
        if !self.monitor.public && !self.redis.url.is_empty() {
            bail!(
                "[monitor] public = false works with the embedded live websocket only: `autobuilder live` does not \
                 check sign-in, so leave [redis] url empty"
            );
        }
        if self.monitor.session_hours == 0 {
            bail!("[monitor] session_hours must be at least 1");
        }
        if self.builds.timeout_minutes == 0 {
            bail!("[builds] timeout_minutes must be at least 1");
        }
        MemorySize::parse(&self.builds.memory).context("[builds] memory")?;
        MemorySize::parse(&self.builds.max_memory).context("[builds] max_memory")?;
        MemorySize::parse(&self.builds.max_file_size).context("[builds] max_file_size")?;
        if self.builds.cpus < 0.0 || self.builds.max_cpus < 0.0 || self.builds.pids < 0 || self.builds.max_pids < 0 {
            bail!("[builds] cpus, max_cpus, pids and max_pids cannot be negative");
        }
        for (key, cpus) in [("cpus", self.builds.cpus), ("max_cpus", self.builds.max_cpus)] {
            if cpus != 0.0 && (cpus.is_nan() || cpus < MIN_CPUS) {
                bail!("[builds] {key} = {cpus} is below Docker's minimum of {MIN_CPUS} (0 means no limit)");
            }
        }
        if self.artifacts.kind == ArtifactsKind::Hub && self.artifacts.hub.token.is_empty() {
            bail!("[artifacts] kind = \"hub\" needs [artifacts.hub] token (or AUTOBUILDER_ARTIFACTS_HUB_TOKEN)");
        }
        let mut namespaces: BTreeMap<String, &str> = BTreeMap::new();
        for (name, project) in &self.projects {
            if let Some(other) = namespaces.insert(crate::recipes::chains::project_namespace(name), name) {
                bail!(
                    "projects {other:?} and {name:?} would share the image namespace of Docker (lower case): rename one"
                );
            }
            for other in &project.images_from {
                if !self.projects.contains_key(other) {
                    bail!("[projects.{name}] images_from names {other:?}, which is not a project");
                }
            }
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                bail!("project name {name:?} may only hold letters, digits, '-' and '_' (it is part of the hook URL)");
            }
            RepoName::parse(&project.recipes)
                .with_context(|| format!("[projects.{name}] recipes = {:?}", project.recipes))?;
            if project.webhook_secret.is_empty() {
                bail!(
                    "[projects.{name}] webhook_secret is empty: set it (or AUTOBUILDER_PROJECTS_{}_WEBHOOK_SECRET) \
                     to the secret of the GitHub webhook",
                    name.to_ascii_uppercase()
                );
            }
        }
        Ok(())
    }

    /// Directory of the full build logs.
    pub fn logs_dir(&self) -> PathBuf {
        self.data_dir.join("logs")
    }

    /// The URL GitHub delivers `project`'s webhooks to.
    pub fn hook_url(&self, project: &str) -> String {
        format!("{}/build/{project}/hook", self.public_url)
    }

    /// The clone URL of a repository.
    pub fn clone_url(&self, repo: &RepoName) -> String {
        self.git.clone_url.replace("{repo}", repo.as_str())
    }

    /// The bare mirror of a tracked repository: builds check out from it, pushes are put in order
    /// with it.
    pub fn mirror_dir(&self, repo: &RepoName) -> PathBuf {
        self.data_dir.join("mirrors").join(repo.org()).join(format!("{}.git", repo.name()))
    }
}

/// Sets the key named by `key` (lower case, `_`-joined path) in `tree`. Table keys may hold `_`
/// themselves, so each level tries every key that is a prefix of what is left.
fn override_key(tree: &mut toml::Value, key: &str, value: &str) -> bool {
    let toml::Value::Table(table) = tree else {
        return false;
    };
    let names: Vec<String> = table.keys().cloned().collect();
    for name in names {
        let lower = name.to_ascii_lowercase();
        if key == lower {
            let slot = table.get_mut(&name).expect("key listed");
            *slot = match slot {
                toml::Value::Integer(_) => match value.parse() {
                    Ok(n) => toml::Value::Integer(n),
                    Err(_) => return false,
                },
                toml::Value::Boolean(_) => match value.parse() {
                    Ok(b) => toml::Value::Boolean(b),
                    Err(_) => return false,
                },
                toml::Value::Table(_) => return false,
                _ => toml::Value::String(value.to_string()),
            };
            return true;
        }
        if let Some(rest) = key.strip_prefix(&lower).and_then(|r| r.strip_prefix('_'))
            && override_key(table.get_mut(&name).expect("key listed"), rest, value)
        {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
        [projects.demo]
        recipes = "org/recipes"
        webhook_secret = "s3cret"
    "#;

    fn env(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>().into_iter()
    }

    #[test]
    fn defaults_fill_every_key() {
        let config = Config::from_toml_and_env(SAMPLE, env(&[])).unwrap();
        assert_eq!(config.listen, "127.0.0.1:5560");
        assert_eq!(config.projects["demo"].branch, "master");
        assert_eq!(config.builds.timeout_minutes, 60);
        assert!(config.builds.concurrency >= 1);
    }

    #[test]
    fn environment_overrides_nested_keys_with_underscores() {
        let config = Config::from_toml_and_env(
            SAMPLE,
            env(&[
                ("AUTOBUILDER_GITHUB_TOKEN", "tok"),
                ("AUTOBUILDER_PUBLIC_URL", "https://ci.example/"),
                ("AUTOBUILDER_PROJECTS_DEMO_WEBHOOK_SECRET", "other"),
                ("AUTOBUILDER_BUILDS_TIMEOUT_MINUTES", "5"),
            ]),
        )
        .unwrap();
        assert_eq!(config.github.token.expose(), "tok");
        assert_eq!(config.public_url, "https://ci.example");
        assert_eq!(config.projects["demo"].webhook_secret.expose(), "other");
        assert_eq!(config.builds.timeout_minutes, 5);
    }

    #[test]
    fn a_webhook_secret_may_come_from_the_environment_alone() {
        let file = "[projects.demo]\nrecipes = \"org/recipes\"\n";
        let config =
            Config::from_toml_and_env(file, env(&[("AUTOBUILDER_PROJECTS_DEMO_WEBHOOK_SECRET", "from-env")])).unwrap();
        assert_eq!(config.projects["demo"].webhook_secret.expose(), "from-env");
        let err = Config::from_toml_and_env(file, env(&[])).unwrap_err();
        assert!(format!("{err:#}").contains("AUTOBUILDER_PROJECTS_DEMO_WEBHOOK_SECRET"), "{err:#}");
    }

    #[test]
    fn an_embedded_live_url_must_be_the_live_endpoint() {
        let with = |url: &str, redis: &str| {
            Config::from_toml_and_env(
                &format!("{SAMPLE}\n[live]\npublic_url = \"{url}\"\n[redis]\nurl = \"{redis}\"\n"),
                env(&[]),
            )
        };
        let err = with("ws://ci.example:5560", "").unwrap_err();
        assert!(format!("{err:#}").contains("must end in /live"), "{err:#}");
        assert!(with("wss://ci.example/live", "").is_ok());
        assert!(with("ws://ci.example:3333", "redis://127.0.0.1:6379").is_ok(), "autobuilder live answers at / too");
    }

    #[test]
    fn sign_in_settings_are_checked_together() {
        let with = |extra: &str| Config::from_toml_and_env(&format!("{extra}\n{SAMPLE}"), env(&[]));
        let err = with("[monitor]\npublic = false").unwrap_err();
        assert!(format!("{err:#}").contains("needs sign-in"), "{err:#}");
        let err = with("[monitor]\npublic = false\n[github]\nclient_id = \"x\"\nclient_secret = \"y\"\ntoken = \"t\"\n[redis]\nurl = \"redis://127.0.0.1:6379\"").unwrap_err();
        assert!(format!("{err:#}").contains("embedded live websocket only"), "{err:#}");
        let err = with("[github]\nclient_id = \"x\"").unwrap_err();
        assert!(format!("{err:#}").contains("client_id and client_secret go together"), "{err:#}");
        let err = with("[github]\nclient_id = \"x\"\nclient_secret = \"y\"").unwrap_err();
        assert!(format!("{err:#}").contains("needs a token or an app"), "{err:#}");
        let config = with("[github]\nclient_id = \"x\"\nclient_secret = \"y\"\ntoken = \"t\"\nweb_url = \"https://ghe.example/\"\n[monitor]\npublic = false").unwrap();
        assert_eq!(config.github.web_url, "https://ghe.example");
        assert!(config.github.sign_in() && !config.monitor.public);
    }

    #[test]
    fn unknown_environment_key_is_an_error() {
        let err = Config::from_toml_and_env(SAMPLE, env(&[("AUTOBUILDER_NOPE", "1")])).unwrap_err();
        assert!(err.to_string().contains("AUTOBUILDER_NOPE"), "{err}");
    }

    #[test]
    fn empty_secret_is_refused_and_named() {
        let err =
            Config::from_toml_and_env("[projects.demo]\nrecipes = \"org/recipes\"\nwebhook_secret = \"\"\n", env(&[]))
                .unwrap_err();
        assert!(format!("{err:#}").contains("AUTOBUILDER_PROJECTS_DEMO_WEBHOOK_SECRET"), "{err:#}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Config::from_toml_and_env("lisen = \"x\"", env(&[])).unwrap_err();
        assert!(format!("{err:#}").contains("lisen"), "{err:#}");
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let config = Config::from_toml_and_env(SAMPLE, env(&[])).unwrap();
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn the_sample_file_is_valid_and_shows_the_defaults() {
        let sample = include_str!("../config.sample.toml");
        let config = Config::from_toml_and_env(&format!("{sample}\n{SAMPLE}"), env(&[])).unwrap();
        let defaults = Config::from_toml_and_env(SAMPLE, env(&[])).unwrap();
        assert_eq!(toml::to_string(&config).unwrap(), toml::to_string(&defaults).unwrap());
    }
}
