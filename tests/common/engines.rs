//! Docker engines of their own, one per test build host: a `dockerd` in a network namespace of its
//! own (`ip netns add`, then `nsenter --net=/run/netns/NAME dockerd ...`; `ip netns exec` would hide
//! the cgroup mounts), with its own data-root, exec-root, socket and pidfile, an empty config file
//! (the machine's /etc/docker/daemon.json sets a data-root), no bridge and no iptables. Never with
//! `--bridge=none` in the host's own namespace: that deletes the main engine's `docker0`. The test
//! image is given to it with `docker save | docker load`: no registry is reachable.

use std::process::{Child, Command, Output, Stdio};

use super::{TEST_IMAGE, ensure_test_image, wait_until_blocking};

pub struct Engine {
    pub name: String,
    /// `unix:///...`: the engine's socket, for `DOCKER_HOST` and `docker -H`.
    pub host: String,
    netns: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Engine {
    /// Starts an engine named `name` and loads the test image into it.
    pub fn start(name: &str) -> Self {
        ensure_test_image();
        let netns = format!("autobuilder-test-{}-{name}", std::process::id());
        let added = Command::new("ip").args(["netns", "add", &netns]).status().expect("ip (iproute2) runs");
        assert!(added.success(), "ip netns add {netns} failed: the engines of the tests need root");
        // A short path: a unix socket's path is limited to 108 bytes.
        let dir = tempfile::Builder::new().prefix("ab-engine-").tempdir_in("/tmp").unwrap();
        let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
        std::fs::write(dir.path().join("daemon.json"), "{}").unwrap();
        let host = format!("unix://{}", path("docker.sock"));
        let driver = Command::new("docker").args(["info", "--format", "{{.Driver}}"]).output().unwrap();
        let driver = String::from_utf8_lossy(&driver.stdout).trim().to_string();
        let log = std::fs::File::create(dir.path().join("dockerd.log")).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{netns}"))
            .arg("dockerd")
            .args(["--data-root", &path("data"), "--exec-root", &path("exec"), "-H", &host])
            .args(["--pidfile", &path("docker.pid"), "--config-file", &path("daemon.json")])
            // The main engine's storage driver: the one that works on this machine.
            .args(["--storage-driver", &driver])
            .args(["--bridge=none", "--iptables=false", "--ip-masq=false"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("nsenter and dockerd run");
        let mut engine = Self { name: name.into(), host, netns, dir, child: Some(child) };
        wait_until_blocking(&format!("engine {name} to answer"), || {
            if let Some(status) = engine.child.as_mut().unwrap().try_wait().unwrap() {
                let log = std::fs::read_to_string(engine.dir.path().join("dockerd.log")).unwrap_or_default();
                panic!("dockerd of engine {name} exited ({status}): {log}");
            }
            engine.docker(&["info"]).status.success().then_some(())
        });
        let load = format!("docker save {TEST_IMAGE} | docker -H {} load", engine.host);
        assert!(Command::new("sh").args(["-c", &load]).status().unwrap().success(), "{load} failed");
        engine
    }

    /// Runs `docker -H <this engine> <args>`.
    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker").arg("-H").arg(&self.host).args(args).output().unwrap()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let containers = self.docker(&["ps", "-aq"]);
        let ids = String::from_utf8_lossy(&containers.stdout).split_whitespace().map(String::from).collect::<Vec<_>>();
        if !ids.is_empty() {
            let mut rm = vec!["rm", "-f"];
            rm.extend(ids.iter().map(String::as_str));
            let _ = self.docker(&rm);
        }
        if let Some(mut child) = self.child.take() {
            let pid = std::fs::read_to_string(self.dir.path().join("docker.pid")).unwrap_or_default();
            let _ = Command::new("kill").args(["-TERM", pid.trim()]).status();
            let _ = child.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).status();
    }
}
