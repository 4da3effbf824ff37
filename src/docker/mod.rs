//! Docker engine (bollard): images, build containers, their output, and their removal.
//!
//! Build containers use the `none` log driver and are attached before they start, so no output is
//! lost and Docker's json-file logging never slows a chatty build.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, CreateImageOptions, KillContainerOptions, ListContainersOptions,
    RemoveContainerOptions,
};
use futures_util::StreamExt;

use crate::build::BuildError;
use crate::build::log::{BuildLog, LineSplitter};
use crate::model::BuildId;

/// Label naming the autobuilder instance (its data directory) that made a container.
pub const LABEL_INSTANCE: &str = "autobuilder.instance";
/// Label holding the build id of a container.
pub const LABEL_BUILD: &str = "autobuilder.build";
/// How long an image pull may take.
const PULL_TIMEOUT: Duration = Duration::from_secs(600);

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
}

/// A connection to the Docker engine with the settings of build containers.
#[derive(Clone)]
pub struct DockerEngine {
    docker: Docker,
    instance: String,
    network: String,
    memory: i64,
}

impl DockerEngine {
    /// Connects (honouring `DOCKER_HOST`) and checks that the engine answers.
    pub async fn connect(instance: String, network: String, memory: i64) -> anyhow::Result<Self> {
        let docker = Docker::connect_with_defaults()
            .context("cannot reach the Docker engine (is DOCKER_HOST or /var/run/docker.sock right?)")?
            .negotiate_version()
            .await
            .context("the Docker engine does not answer (is it running?)")?;
        Ok(Self { docker, instance, network, memory })
    }

    /// Makes sure `image` is on the host, pulling it when absent.
    pub async fn ensure_image(&self, image: &str, log: &mut BuildLog) -> Result<(), BuildError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(DockerError::DockerResponseServerError { status_code: 404, .. }) => {}
            Err(e) => {
                return Err(BuildError::Docker(format!("cannot inspect image {image}: {e}")));
            }
        }
        log.note(&format!("image {image} is not on this host: pulling it"));
        let options = CreateImageOptions { from_image: Some(image.to_string()), ..Default::default() };
        let pull = async {
            let mut progress = self.docker.create_image(Some(options), None, None);
            while let Some(step) = progress.next().await {
                step.map_err(|e| docker_message(&e))?;
            }
            Ok::<(), String>(())
        };
        match tokio::time::timeout(PULL_TIMEOUT, pull).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(BuildError::ImagePull { image: image.to_string(), reason }),
            Err(_) => Err(BuildError::ImagePull { image: image.to_string(), reason: "pull timed out".into() }),
        }
    }

    /// Runs a build container to its end, writing its output to `log`; returns the exit code.
    /// The container is removed in every case.
    pub async fn run(&self, spec: ContainerSpec<'_>, log: &mut BuildLog, timeout: Duration) -> Result<i64, BuildError> {
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
                memory: Some(self.memory),
                memory_swap: Some(self.memory),
                network_mode: Some(self.network.clone()),
                log_config: Some(HostConfigLogConfig { typ: Some("none".into()), config: None }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptions { name: Some(name.clone()), ..Default::default() };
        let created =
            self.docker.create_container(Some(options), body).await.map_err(|e| {
                BuildError::Docker(format!("cannot create the build container: {}", docker_message(&e)))
            })?;
        let outcome = self.attach_and_wait(&created.id, log, timeout).await;
        self.remove_later(created.id);
        outcome
    }

    async fn attach_and_wait(&self, id: &str, log: &mut BuildLog, timeout: Duration) -> Result<i64, BuildError> {
        let attach =
            AttachContainerOptions { stream: true, stdout: true, stderr: true, logs: false, ..Default::default() };
        let mut output = self
            .docker
            .attach_container(id, Some(attach))
            .await
            .map_err(|e| BuildError::Docker(format!("cannot attach to the build container: {}", docker_message(&e))))?
            .output;
        self.docker
            .start_container(id, None)
            .await
            .map_err(|e| BuildError::Docker(format!("cannot start the build container: {}", docker_message(&e))))?;

        let run = async {
            let (mut stdout, mut stderr) = (LineSplitter::default(), LineSplitter::default());
            while let Some(chunk) = output.next().await {
                match chunk {
                    Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                        stdout.feed(&message, |line| log.line(line))
                    }
                    Ok(LogOutput::StdErr { message }) => stderr.feed(&message, |line| log.line(line)),
                    Ok(LogOutput::StdIn { .. }) => {}
                    Err(e) => {
                        return Err(BuildError::Docker(format!("lost the build output: {}", docker_message(&e))));
                    }
                }
                log.write_pending().await.map_err(BuildError::log)?;
            }
            stdout.finish(|line| log.line(line));
            stderr.finish(|line| log.line(line));
            self.exit_code(id).await
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(result) => result,
            Err(_) => {
                let _ = self.docker.kill_container(id, None::<KillContainerOptions>).await;
                Err(BuildError::Timeout(timeout.as_secs().div_ceil(60)))
            }
        }
    }

    async fn exit_code(&self, id: &str) -> Result<i64, BuildError> {
        let code = match self.docker.wait_container(id, None).next().await {
            Some(Ok(response)) => response.status_code,
            Some(Err(DockerError::DockerContainerWaitError { code, .. })) => code,
            Some(Err(e)) => {
                return Err(BuildError::Docker(format!("lost the build container: {}", docker_message(&e))));
            }
            None => {
                return Err(BuildError::Docker("the Docker engine ended the wait without an exit code".into()));
            }
        };
        if code != 0 {
            let inspect = self.docker.inspect_container(id, None).await.ok();
            if inspect.and_then(|c| c.state).and_then(|s| s.oom_killed) == Some(true) {
                return Err(BuildError::OutOfMemory(self.memory));
            }
        }
        Ok(code)
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

    /// Removes every container this instance left behind (a previous process that died).
    pub async fn remove_leftovers(&self) -> anyhow::Result<usize> {
        let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_INSTANCE}={}", self.instance)])]);
        let options = ListContainersOptions { all: true, filters: Some(filters), ..Default::default() };
        let leftovers = self.docker.list_containers(Some(options)).await?;
        for container in &leftovers {
            if let Some(id) = &container.id {
                let options = RemoveContainerOptions { force: true, v: true, ..Default::default() };
                self.docker.remove_container(id, Some(options)).await?;
            }
        }
        Ok(leftovers.len())
    }
}

/// The engine's own message rather than bollard's wrapping of it.
fn docker_message(error: &DockerError) -> String {
    match error {
        DockerError::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}
