//! The Docker side of the tests: the busybox image every test build runs in, and a plain
//! `docker run` as the benchmarks' baseline.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The base image every test build runs in.
pub const TEST_IMAGE: &str = "autobuilder-test-busybox:latest";

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
