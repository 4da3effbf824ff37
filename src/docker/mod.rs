//! Docker engine (bollard): images, build containers, their output, and their removal.
//!
//! Build containers use the `none` log driver and are attached before they start, so no output is
//! lost and Docker's json-file logging never slows a chatty build. This module knows nothing of
//! builds: a container run takes an [`OutputSink`] and a cancellation token, and ends in an
//! [`ExitState`] or a [`RunError`]; the caller decides what that means.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerConfig, ContainerCreateBody, HostConfig, HostConfigLogConfig, ResourcesUlimits};
use bollard::query_parameters::{
    AttachContainerOptions, CommitContainerOptions, CreateContainerOptions, CreateImageOptions, KillContainerOptions,
    ListContainersOptions, ListImagesOptions, RemoveContainerOptions, RemoveImageOptions, StopContainerOptions,
    TagImageOptions,
};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::model::BuildId;

/// Label naming the autobuilder instance (its data directory) that made a container.
pub const LABEL_INSTANCE: &str = "autobuilder.instance";
/// Label naming the image repository of an image autobuilder committed (never set by others).
pub const LABEL_IMAGE: &str = "autobuilder.image";
/// Label holding the build id of a container.
pub const LABEL_BUILD: &str = "autobuilder.build";
/// Labels of build containers and committed images: whose build it is.
pub const LABEL_PROJECT: &str = "autobuilder.project";
pub const LABEL_REPOSITORY: &str = "autobuilder.repository";
pub const LABEL_BRANCH: &str = "autobuilder.branch";
pub const LABEL_COMMIT: &str = "autobuilder.commit";
/// Label of a committed image: the recipes commit its recipe was loaded from.
pub const LABEL_RECIPES: &str = "autobuilder.recipes";
/// How long an image pull may take.
const PULL_TIMEOUT: Duration = Duration::from_secs(600);

/// Which output of a container a chunk comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Where a container's output goes, chunk by chunk as Docker delivers it (the build log is one:
/// it splits the chunks into lines, masks and keeps them).
pub trait OutputSink: Send {
    /// A chunk of output on `stream`, not cut at line ends.
    fn output(&mut self, stream: Stream, chunk: &[u8]);
    /// The output ended: what is left of an unfinished line is complete.
    fn end_output(&mut self);
    /// Writes out what was taken so far; called after every chunk.
    fn flush(&mut self) -> impl Future<Output = std::io::Result<()>> + Send;
}

/// How a container ended (Docker's container state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitState {
    pub code: i64,
    /// Killed by the kernel for passing its memory limit. Like `memory_limit`, read only when
    /// `code` is not 0.
    pub oom_killed: bool,
    /// The container's memory limit in bytes (0 when unknown).
    pub memory_limit: i64,
}

/// Why a container run ended without an exit state.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Still running at the time limit: killed.
    #[error("timed out")]
    TimedOut,
    /// The cancellation token fired: stopped (SIGTERM, then SIGKILL after the grace time).
    #[error("cancelled")]
    Cancelled,
    /// The output sink failed to write.
    #[error("cannot write the output: {0}")]
    Output(std::io::Error),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// What the Docker engine failed to do (or what was refused before asking it), in one line.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct EngineError(pub String);

/// Resource limits of one build container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of memory (and of memory + swap: no swap beyond it).
    pub memory: i64,
    /// CPUs in billionths (Docker's NanoCpus); 0 is no limit.
    pub nano_cpus: i64,
    /// Most processes and threads at once; 0 is no limit.
    pub pids: i64,
    /// Largest file a process may write, in bytes (ulimit fsize).
    pub file_size: i64,
}

/// What a build container runs.
pub struct ContainerSpec<'a> {
    pub build: BuildId,
    pub image: &'a str,
    /// Host directory of the source checkout and where it appears in the container.
    pub source: (&'a Path, String),
    /// Host directory that receives the artifact and where it appears in the container.
    pub archives: (&'a Path, String),
    /// The script, as a path inside the container.
    pub script: String,
    pub env: Vec<String>,
    pub labels: HashMap<String, String>,
    pub limits: Limits,
}

/// A container left by a previous process of this instance.
pub struct Leftover {
    pub id: String,
    pub build: Option<BuildId>,
    pub running: bool,
}

/// Who a committed image belongs to: the labels checked before a tag is moved onto a new image.
pub struct ImageOwner<'a> {
    pub project: &'a str,
    pub repository: &'a str,
    pub branch: &'a str,
}

/// A connection to the Docker engine with the settings of build containers.
#[derive(Clone)]
pub struct DockerEngine {
    docker: Docker,
    instance: String,
    settings: crate::config::DockerConfig,
}

impl DockerEngine {
    /// Connects (honouring `DOCKER_HOST`) and checks that the engine answers.
    pub async fn connect(instance: String, settings: crate::config::DockerConfig) -> anyhow::Result<Self> {
        let docker = Docker::connect_with_defaults()
            .context("cannot reach the Docker engine (is DOCKER_HOST or /var/run/docker.sock right?)")?
            .negotiate_version()
            .await
            .context("the Docker engine does not answer (is it running?)")?;
        Ok(Self { docker, instance, settings })
    }

    /// Answers whether the engine responds.
    pub async fn ping(&self) -> anyhow::Result<()> {
        self.docker.ping().await?;
        Ok(())
    }

    /// Whether `image` is on this host.
    pub async fn has_image(&self, image: &str) -> Result<bool, EngineError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(DockerError::DockerResponseServerError { status_code: 404, .. }) => Ok(false),
            Err(e) => {
                tracing::warn!(image, "cannot inspect the image: {e}");
                Err(EngineError(format!("cannot inspect image {image}: the Docker engine failed")))
            }
        }
    }

    /// Pulls `image` from its registry; the error is the reason it failed.
    pub async fn pull(&self, image: &str) -> Result<(), EngineError> {
        let options = CreateImageOptions { from_image: Some(image.to_string()), ..Default::default() };
        let pull = async {
            let mut progress = self.docker.create_image(Some(options), None, None);
            while let Some(step) = progress.next().await {
                step.map_err(|e| EngineError(docker_message(&e)))?;
            }
            Ok(())
        };
        match tokio::time::timeout(PULL_TIMEOUT, pull).await {
            Ok(result) => result,
            Err(_) => Err(EngineError("pull timed out".into())),
        }
    }

    /// Creates (does not start) a build container; returns its id.
    pub async fn create(&self, spec: ContainerSpec<'_>) -> Result<String, EngineError> {
        let name = format!("autobuilder-{}-{}", self.instance, spec.build);
        let mut labels = spec.labels;
        labels.insert(LABEL_INSTANCE.into(), self.instance.clone());
        labels.insert(LABEL_BUILD.into(), spec.build.to_string());
        let body = ContainerCreateBody {
            image: Some(spec.image.to_string()),
            cmd: Some(vec![
                "/bin/sh".into(),
                "-c".into(),
                "chmod +x \"$1\" && exec \"$1\"".into(),
                "autobuilder".into(),
                spec.script,
            ]),
            working_dir: Some(spec.source.1.clone()),
            env: Some(spec.env),
            labels: Some(labels),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            host_config: Some(HostConfig {
                binds: Some(vec![
                    format!("{}:{}", spec.source.0.display(), spec.source.1),
                    format!("{}:{}", spec.archives.0.display(), spec.archives.1),
                ]),
                memory: Some(spec.limits.memory),
                memory_swap: Some(spec.limits.memory),
                nano_cpus: (spec.limits.nano_cpus > 0).then_some(spec.limits.nano_cpus),
                pids_limit: (spec.limits.pids > 0).then_some(spec.limits.pids),
                privileged: Some(false),
                security_opt: Some(vec!["no-new-privileges".into()]),
                cap_drop: Some(vec!["ALL".into()]),
                cap_add: Some(self.settings.capabilities.clone()),
                ulimits: Some(vec![ResourcesUlimits {
                    name: Some("fsize".into()),
                    soft: Some(spec.limits.file_size),
                    hard: Some(spec.limits.file_size),
                }]),
                network_mode: Some(self.settings.network.clone()),
                log_config: Some(HostConfigLogConfig { typ: Some("none".into()), config: None }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptions { name: Some(name), ..Default::default() };
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| EngineError(format!("cannot create the build container: {}", docker_message(&e))))?;
        Ok(created.id)
    }

    /// Attaches to container `id` (starting it when `start`), gives its output to `sink` until it
    /// ends, and returns how it ended. Past `timeout` it is killed; when `cancel` fires it is
    /// stopped (SIGTERM, then SIGKILL after `grace`).
    pub async fn attach_and_wait(
        &self,
        id: &str,
        start: bool,
        sink: &mut impl OutputSink,
        timeout: Duration,
        cancel: &CancellationToken,
        grace: Duration,
    ) -> Result<ExitState, RunError> {
        let attach =
            AttachContainerOptions { stream: true, stdout: true, stderr: true, logs: false, ..Default::default() };
        let mut output = self
            .docker
            .attach_container(id, Some(attach))
            .await
            .map_err(|e| EngineError(format!("cannot attach to the build container: {}", docker_message(&e))))?
            .output;
        if start {
            self.docker
                .start_container(id, None)
                .await
                .map_err(|e| EngineError(format!("cannot start the build container: {}", docker_message(&e))))?;
        }

        let run = async {
            while let Some(chunk) = output.next().await {
                match chunk {
                    Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                        sink.output(Stream::Stdout, &message)
                    }
                    Ok(LogOutput::StdErr { message }) => sink.output(Stream::Stderr, &message),
                    Ok(LogOutput::StdIn { .. }) => {}
                    Err(e) => {
                        return Err(EngineError(format!("lost the build output: {}", docker_message(&e))).into());
                    }
                }
                sink.flush().await.map_err(RunError::Output)?;
            }
            sink.end_output();
            Ok(self.wait_exit(id).await?)
        };
        tokio::select! {
            result = tokio::time::timeout(timeout, run) => match result {
                Ok(result) => result,
                Err(_) => {
                    let _ = self.docker.kill_container(id, None::<KillContainerOptions>).await;
                    Err(RunError::TimedOut)
                }
            },
            () = cancel.cancelled() => {
                let options = StopContainerOptions { t: Some(grace.as_secs() as i32), signal: None };
                let _ = self.docker.stop_container(id, Some(options)).await;
                Err(RunError::Cancelled)
            }
        }
    }

    /// Waits for a container started by a previous process: attaches when it still runs (or was
    /// never started), or takes the exit state of one that has ended.
    pub async fn resume_wait(
        &self,
        id: &str,
        sink: &mut impl OutputSink,
        timeout: Duration,
        cancel: &CancellationToken,
        grace: Duration,
    ) -> Result<ExitState, RunError> {
        let inspect = self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(|e| EngineError(format!("cannot inspect the build container: {}", docker_message(&e))))?;
        let state = inspect.state.unwrap_or_default();
        let never_started = state.status.is_some_and(|s| s.to_string() == "created");
        if state.running == Some(true) || never_started {
            self.attach_and_wait(id, never_started, sink, timeout, cancel, grace).await
        } else {
            Ok(self.wait_exit(id).await?)
        }
    }

    /// How an ended container ended. One inspect, only after a non-zero exit, tells whether the
    /// kernel killed it for memory and what its limit was.
    async fn wait_exit(&self, id: &str) -> Result<ExitState, EngineError> {
        let code = match self.docker.wait_container(id, None).next().await {
            Some(Ok(response)) => response.status_code,
            Some(Err(DockerError::DockerContainerWaitError { code, .. })) => code,
            Some(Err(e)) => return Err(EngineError(format!("lost the build container: {}", docker_message(&e)))),
            None => return Err(EngineError("the Docker engine ended the wait without an exit code".into())),
        };
        let mut state = ExitState { code, oom_killed: false, memory_limit: 0 };
        if code != 0
            && let Ok(container) = self.docker.inspect_container(id, None).await
        {
            state.oom_killed = container.state.and_then(|s| s.oom_killed) == Some(true);
            state.memory_limit = container.host_config.and_then(|h| h.memory).unwrap_or(0);
        }
        Ok(state)
    }

    /// Commits container `id` as `<image>:<branch_tag>` and `<image>:<sha_tag>`, labelled as made
    /// by autobuilder for `owner` (and with `labels`). Refuses when either tag is already on an
    /// image that does not carry autobuilder's labels of the same project, repository and branch.
    pub async fn commit(
        &self,
        id: &str,
        image: &str,
        (branch_tag, sha_tag): (&str, &str),
        owner: &ImageOwner<'_>,
        mut labels: HashMap<String, String>,
    ) -> Result<(), EngineError> {
        for tag in [branch_tag, sha_tag] {
            let name = format!("{image}:{tag}");
            let found = match self.docker.inspect_image(&name).await {
                Ok(found) => found,
                Err(DockerError::DockerResponseServerError { status_code: 404, .. }) => continue,
                Err(e) => {
                    tracing::warn!(image = name, "cannot inspect the image: {e}");
                    return Err(EngineError(format!("cannot inspect image {name}: the Docker engine failed")));
                }
            };
            let theirs = found.config.and_then(|c| c.labels).unwrap_or_default();
            let same = |label: &str, value: &str| theirs.get(label).map(String::as_str) == Some(value);
            if !(same(LABEL_IMAGE, image)
                && same(LABEL_PROJECT, owner.project)
                && same(LABEL_REPOSITORY, owner.repository)
                && same(LABEL_BRANCH, owner.branch))
            {
                return Err(EngineError(format!(
                    "refusing to commit over the image {name}: it was not made by autobuilder for {} {} of project {}",
                    owner.repository, owner.branch, owner.project
                )));
            }
        }
        labels.insert(LABEL_IMAGE.into(), image.to_string());
        labels.insert(LABEL_PROJECT.into(), owner.project.to_string());
        labels.insert(LABEL_REPOSITORY.into(), owner.repository.to_string());
        labels.insert(LABEL_BRANCH.into(), owner.branch.to_string());
        labels.insert(LABEL_INSTANCE.into(), self.instance.clone());
        let options = CommitContainerOptions {
            container: Some(id.to_string()),
            repo: Some(image.to_string()),
            tag: Some(sha_tag.to_string()),
            pause: true,
            ..Default::default()
        };
        let config = ContainerConfig { labels: Some(labels), ..Default::default() };
        let fail = |e: DockerError| EngineError(format!("cannot commit the image {image}: {}", docker_message(&e)));
        self.docker.commit_container(options, config).await.map_err(fail)?;
        let tag = TagImageOptions { repo: Some(image.to_string()), tag: Some(branch_tag.to_string()) };
        self.docker.tag_image(&format!("{image}:{sha_tag}"), Some(tag)).await.map_err(fail)?;
        Ok(())
    }

    /// Removes the images autobuilder committed for `image` and `owner`'s branch beyond the newest
    /// `keep` (`<image>:<branch_tag>` is always kept). Images autobuilder did not make are never touched.
    pub async fn prune_images(
        &self,
        image: &str,
        owner: &ImageOwner<'_>,
        branch_tag: &str,
        keep: usize,
    ) -> anyhow::Result<usize> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{LABEL_IMAGE}={image}"),
                format!("{LABEL_PROJECT}={}", owner.project),
                format!("{LABEL_REPOSITORY}={}", owner.repository),
                format!("{LABEL_BRANCH}={}", owner.branch),
            ],
        )]);
        let options = ListImagesOptions { filters: Some(filters), ..Default::default() };
        let mut images = self.docker.list_images(Some(options)).await?;
        images.sort_by_key(|i| std::cmp::Reverse(i.created));
        let mut removed = 0;
        for old in images.iter().skip(keep.max(1)) {
            let current = format!("{image}:{branch_tag}");
            if old.repo_tags.contains(&current) {
                continue;
            }
            for tag in &old.repo_tags {
                self.docker.remove_image(tag, None::<RemoveImageOptions>, None).await?;
            }
            removed += 1;
        }
        Ok(removed)
    }

    /// Empties `dir` (a build's directory, with files the build made as root) from a throwaway
    /// container of `image`, without network, that removes what is inside.
    pub async fn remove_as_root(&self, dir: &Path, image: &str) -> anyhow::Result<()> {
        // Only what removing files needs: reading and writing past their modes.
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            entrypoint: Some(vec!["rm".into()]),
            cmd: Some(["-rf", "/workspace/src", "/workspace/archives"].map(String::from).to_vec()),
            labels: Some(HashMap::from([(LABEL_INSTANCE.to_string(), self.instance.clone())])),
            host_config: Some(HostConfig {
                binds: Some(vec![format!("{}:/workspace", dir.display())]),
                network_mode: Some("none".into()),
                log_config: Some(HostConfigLogConfig { typ: Some("none".into()), config: None }),
                security_opt: Some(vec!["no-new-privileges".into()]),
                cap_drop: Some(vec!["ALL".into()]),
                cap_add: Some(vec!["DAC_OVERRIDE".into(), "FOWNER".into()]),
                memory: Some(64 << 20),
                pids_limit: Some(64),
                ..Default::default()
            }),
            ..Default::default()
        };
        let id = self.docker.create_container(None::<CreateContainerOptions>, body).await?.id;
        let run = async {
            self.docker.start_container(&id, None).await?;
            let exit = self.wait_exit(&id).await?;
            anyhow::ensure!(exit.code == 0, "rm exited {}", exit.code);
            Ok(())
        };
        let result = match tokio::time::timeout(Duration::from_secs(120), run).await {
            Ok(result) => result,
            Err(_) => Err(anyhow::anyhow!("rm did not end within 2 minutes")),
        };
        self.remove_later(id);
        result
    }

    /// Removes a container in the background (after the build's result is recorded).
    pub fn remove_later(&self, id: String) {
        let docker = self.docker.clone();
        tokio::spawn(async move {
            let options = RemoveContainerOptions { force: true, v: true, ..Default::default() };
            if let Err(e) = docker.remove_container(&id, Some(options)).await {
                tracing::warn!(container = %id, "cannot remove build container: {e}");
            }
        });
    }

    /// Every container this instance made that still exists (left by a previous process).
    pub async fn leftovers(&self) -> anyhow::Result<Vec<Leftover>> {
        let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_INSTANCE}={}", self.instance)])]);
        let options = ListContainersOptions { all: true, filters: Some(filters), ..Default::default() };
        let containers = self.docker.list_containers(Some(options)).await?;
        Ok(containers
            .into_iter()
            .filter_map(|c| {
                let build = c.labels.as_ref()?.get(LABEL_BUILD)?.parse().ok().map(BuildId);
                let running = c.state.as_ref().is_some_and(|s| s.to_string() == "running");
                Some(Leftover { id: c.id?, build, running })
            })
            .collect())
    }
}

/// The engine's own message rather than bollard's wrapping of it.
fn docker_message(error: &DockerError) -> String {
    match error {
        DockerError::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}
