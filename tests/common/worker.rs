//! The real `autobuilder worker` beside a test [`Server`]: the server's configuration (its
//! PostgreSQL history, projects and artifact directory), with data and temp directories of its own
//! and its own `[worker] name`, on the same Docker engine.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use autobuilder::config::{Config, Secret};

use super::{
    ConfigExt, Engine, FakeGithub, GitHost, Postgres, Server, echo_lines, test_config, wait_until_blocking,
    write_config,
};

/// A serve that leaves every build to workers (`[worker] enabled = false`), on a new database of
/// the shared PostgreSQL, with the changes `change` makes to its configuration.
pub fn serve_for_workers(git: &GitHost, github: &FakeGithub, change: impl FnOnce(&mut Config)) -> Server {
    let database = Postgres::shared().fresh_database();
    Server::start(|dir| {
        test_config(dir, git, Some(&github.url)).with(|c| {
            c.database.url = Secret::new(database.as_str());
            c.worker.enabled = false;
            change(c);
        })
    })
}

pub struct Worker {
    pub name: String,
    pub dir: tempfile::TempDir,
    /// The engine it builds on (`DOCKER_HOST`); None: the machine's own.
    pub docker_host: Option<String>,
    child: Option<Child>,
    /// Every line the worker printed (its own log).
    pub output: Arc<Mutex<Vec<String>>>,
}

impl Worker {
    /// Starts a worker named `name` for `server` (whose history must be PostgreSQL), with the
    /// changes `change` makes to its configuration, and waits until it takes builds.
    pub fn start(server: &Server, name: &str, change: impl FnOnce(&mut Config)) -> Self {
        Self::start_on(server, name, None, change)
    }

    /// [`Worker::start`] on `engine` (a host of its own) instead of the machine's engine.
    pub fn start_on(server: &Server, name: &str, engine: Option<&Engine>, change: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = server.config();
        assert!(!config.database.url.expose().is_empty(), "a worker needs the server's PostgreSQL history");
        config.data_dir = dir.path().join("data");
        config.tmp_directory = dir.path().join("tmp");
        config.artifacts.directory = server.artifacts_dir();
        config.worker.name = name.into();
        change(&mut config);
        let config_path = dir.path().join("config.toml");
        write_config(&config_path, &config);
        let mut child = Command::new(env!("CARGO_BIN_EXE_autobuilder"))
            .args(["worker", "--config"])
            .arg(&config_path)
            .current_dir(dir.path())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(engine.map(|engine| ("DOCKER_HOST", engine.host.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let output: Arc<Mutex<Vec<String>>> = Arc::default();
        let lines = output.clone();
        echo_lines(child.stdout.take().unwrap(), "[worker]", move |line| lines.lock().unwrap().push(line));
        let docker_host = engine.map(|engine| engine.host.clone());
        let mut worker = Self { name: name.into(), dir, docker_host, child: Some(child), output };
        wait_until_blocking(&format!("worker {name} to take builds"), || {
            if let Some(status) = worker.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("worker {name} exited before taking builds ({status}): see its log above");
            }
            worker.printed("taking builds from the queue").then_some(())
        });
        worker
    }

    /// Whether the worker printed a line containing `text`.
    pub fn printed(&self, text: &str) -> bool {
        self.output.lock().unwrap().iter().any(|line| line.contains(text))
    }

    /// Waits until the worker printed a line containing `text`.
    pub fn wait_printed(&self, text: &str) {
        wait_until_blocking(&format!("worker {} to print {text:?}", self.name), || self.printed(text).then_some(()));
    }

    /// Sends `signal` (`KILL`, `STOP`, `CONT`) to the worker process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        assert!(Command::new("kill").args([&format!("-{signal}"), &pid]).status().unwrap().success());
    }

    /// SIGKILL: the worker ends at once, its containers left running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `docker` aimed at this worker's engine.
    pub fn docker(&self) -> Command {
        let mut docker = Command::new("docker");
        if let Some(host) = &self.docker_host {
            docker.arg("-H").arg(host);
        }
        docker
    }

    /// The `autobuilder.instance` label of this worker's containers.
    pub fn instance(&self) -> String {
        use sha2::{Digest, Sha256};
        let data_dir = self.dir.path().join("data").canonicalize().unwrap();
        let named = format!("{}\0worker", data_dir.to_string_lossy());
        hex::encode(Sha256::digest(named.as_bytes()))[..12].to_string()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
        let filter = format!("label=autobuilder.instance={}", self.instance());
        if let Ok(out) = self.docker().args(["ps", "-aq", "--filter", &filter]).output() {
            let ids = String::from_utf8_lossy(&out.stdout);
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let _ = self.docker().args(["rm", "-f"]).args(&ids).output();
            }
        }
    }
}
