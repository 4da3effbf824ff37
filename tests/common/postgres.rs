//! A real PostgreSQL for the tests: Debian's `postgresql` server, a throwaway cluster made with
//! `initdb` on a free loopback port, one per test binary (or one of a test's own, to stop and
//! start), and a database of its own per test server.
//! `TEST_POSTGRES_URL` (a URL of a server whose user may create databases) uses a running
//! server instead.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::wait_until_blocking;

/// Names the server the tests use instead of a cluster of their own.
pub const POSTGRES_ENV: &str = "TEST_POSTGRES_URL";

/// A PostgreSQL server the tests may create databases on.
pub struct Postgres {
    /// `postgres://user@127.0.0.1:port`, without a database.
    server: String,
    psql: PathBuf,
    /// The cluster the harness made, when it did.
    cluster: Option<Cluster>,
}

/// A cluster made by `initdb` in /tmp, owned by the `postgres` user when the tests run as root
/// (PostgreSQL refuses to run as root), its server on a loopback port; a watchdog stops it and
/// removes its directory once this test process has exited.
struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    owner: Option<(u32, u32)>,
}

static SHARED: OnceLock<Postgres> = OnceLock::new();
static DATABASES: AtomicUsize = AtomicUsize::new(0);
static CLUSTERS: AtomicUsize = AtomicUsize::new(0);

impl Postgres {
    /// The server of this test binary: started on first use.
    pub fn shared() -> &'static Postgres {
        SHARED.get_or_init(|| match std::env::var(POSTGRES_ENV) {
            Ok(url) if !url.is_empty() => {
                Postgres { server: url.trim_end_matches('/').to_string(), psql: "psql".into(), cluster: None }
            }
            _ => Postgres::own(),
        })
    }

    /// A cluster of the calling test's own, which it may stop and start.
    pub fn own() -> Postgres {
        let cluster = Cluster::create();
        cluster.start();
        Self::of(cluster)
    }

    /// A cluster of the test's own that takes TLS connections only, with a self-signed certificate
    /// for 127.0.0.1 ([`Postgres::certificate`]).
    pub fn own_with_tls() -> Postgres {
        let cluster = Cluster::create();
        cluster.require_tls();
        cluster.start();
        Self::of(cluster)
    }

    /// The certificate of a cluster made by [`Postgres::own_with_tls`].
    pub fn certificate(&self) -> PathBuf {
        self.cluster.as_ref().expect("a cluster of the test's own").dir.join("ca.crt")
    }

    fn of(cluster: Cluster) -> Postgres {
        Postgres {
            server: format!("postgres://postgres@127.0.0.1:{}", cluster.port),
            psql: cluster.bin.join("psql"),
            cluster: Some(cluster),
        }
    }

    /// A new, empty database on the server; returns its URL.
    pub fn fresh_database(&self) -> String {
        let name = format!("autobuilder_test_{}_{}", std::process::id(), DATABASES.fetch_add(1, Ordering::SeqCst));
        let output = Command::new(&self.psql)
            .arg(format!("{}/postgres", self.server))
            .args(["-v", "ON_ERROR_STOP=1", "-qc", &format!("CREATE DATABASE {name}")])
            .output()
            .expect("psql: apt-get install postgresql-client");
        assert!(
            output.status.success(),
            "cannot create a database on the test PostgreSQL at {}: {}",
            self.server,
            String::from_utf8_lossy(&output.stderr)
        );
        format!("{}/{name}", self.server)
    }

    /// Stops the server (a fast shutdown: every connection breaks) until [`Postgres::start`].
    pub fn stop(&self) {
        self.cluster.as_ref().expect("a cluster of the test's own (Postgres::own)").pg_ctl(&["stop", "-m", "fast"]);
    }

    /// Starts the stopped server again, on the same port, and waits until it accepts connections.
    pub fn start(&self) {
        self.cluster.as_ref().expect("a cluster of the test's own (Postgres::own)").start();
    }
}

impl Cluster {
    fn create() -> Cluster {
        let bin = postgres_bin_dir();
        let n = CLUSTERS.fetch_add(1, Ordering::SeqCst);
        let dir = PathBuf::from(format!("/tmp/autobuilder-test-postgres-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let owner = run_as();
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let cluster = Cluster { bin, dir, port, owner };
        let output = cluster
            .command("initdb")
            .args(["--auth=trust", "--username=postgres", "--encoding=UTF8", "--no-sync", "--no-instructions", "-D"])
            .arg(cluster.dir.join("data"))
            .output()
            .expect("initdb of the test cluster");
        assert!(output.status.success(), "initdb failed: {}", String::from_utf8_lossy(&output.stderr));
        // Durability settings off: these databases die with the test process anyway.
        let settings = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\nfsync = off\n\
             synchronous_commit = off\nfull_page_writes = off\nmax_connections = 200\n",
            cluster.dir.display()
        );
        let conf = cluster.dir.join("data/postgresql.auto.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap_or_default();
        text.push_str(&settings);
        std::fs::write(&conf, text).unwrap();
        watchdog(&cluster.dir);
        cluster
    }

    /// A certificate for 127.0.0.1 from a CA of the test's own (`ca.crt`), `ssl = on`, and TCP
    /// connections without TLS refused.
    fn require_tls(&self) {
        let data = self.dir.join("data");
        let openssl = |args: &[&str]| {
            let output = Command::new("openssl")
                .args(args)
                .current_dir(&self.dir)
                .output()
                .expect("openssl: apt-get install openssl");
            assert!(output.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        };
        let one_day = ["-days", "1"];
        openssl(
            &[
                &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=autobuilder test CA"][..],
                &one_day,
                &["-keyout", "ca.key", "-out", "ca.crt"],
            ]
            .concat(),
        );
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        std::fs::write(self.dir.join("server.ext"), "subjectAltName = IP:127.0.0.1\nbasicConstraints = CA:FALSE\n")
            .unwrap();
        openssl(
            &[
                &["x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial"][..],
                &one_day,
                &["-extfile", "server.ext", "-out", "server.crt"],
            ]
            .concat(),
        );
        for file in ["server.key", "server.crt"] {
            std::fs::rename(self.dir.join(file), data.join(file)).unwrap();
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(data.join("server.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
        if let Some((uid, gid)) = self.owner {
            for file in ["server.key", "server.crt"] {
                std::os::unix::fs::chown(data.join(file), Some(uid), Some(gid)).unwrap();
            }
        }
        let conf = data.join("postgresql.auto.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str("ssl = on\n");
        std::fs::write(&conf, text).unwrap();
        let hba = "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n";
        std::fs::write(data.join("pg_hba.conf"), hba).unwrap();
    }

    /// A program of the server's, run as the cluster's owner.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.owner {
            std::os::unix::process::CommandExt::uid(&mut command, uid);
            std::os::unix::process::CommandExt::gid(&mut command, gid);
        }
        command
    }

    fn pg_ctl(&self, args: &[&str]) {
        let output = self
            .command("pg_ctl")
            .args(args)
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-w", "-t", "60"])
            .stdin(Stdio::null())
            .output()
            .expect("pg_ctl of the test cluster");
        assert!(
            output.status.success(),
            "pg_ctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
        );
    }

    fn start(&self) {
        self.pg_ctl(&["start"]);
        let port = self.port.to_string();
        wait_until_blocking("the test PostgreSQL to accept connections", || {
            let ready = Command::new(self.bin.join("pg_isready")).args(["-h", "127.0.0.1", "-p", &port]).output();
            ready.ok().filter(|o| o.status.success())
        });
    }
}

impl Drop for Cluster {
    /// Stops the server at once when the test that owns it ends (the watchdog removes the rest).
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["stop", "-m", "immediate", "-D"])
            .arg(self.dir.join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Where the server's programs are: Debian's `/usr/lib/postgresql/<version>/bin` (the newest), or
/// the `PATH`.
fn postgres_bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| Some((entry.file_name().to_str()?.parse().ok()?, entry.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("postgres").exists())
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    let which = Command::new("sh").args(["-c", "command -v postgres"]).output().unwrap();
    let found = String::from_utf8_lossy(&which.stdout).trim().to_string();
    assert!(!found.is_empty(), "PostgreSQL not found: apt-get install postgresql (or set {POSTGRES_ENV})");
    Path::new(&found).parent().unwrap().to_path_buf()
}

/// The `postgres` user's ids when the tests run as root; none otherwise (the cluster is ours).
fn run_as() -> Option<(u32, u32)> {
    let me = Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&me.stdout).trim() != "0" {
        return None;
    }
    let id = |flag: &str| {
        let output = Command::new("id").args([flag, "postgres"]).output().unwrap();
        assert!(output.status.success(), "no postgres user: apt-get install postgresql");
        String::from_utf8_lossy(&output.stdout).trim().parse::<u32>().unwrap()
    };
    Some((id("-u"), id("-g")))
}

/// Stops the cluster's server (immediate shutdown) and removes `dir` once the test process is gone.
fn watchdog(dir: &Path) {
    let script = format!(
        "while kill -0 {test} 2>/dev/null; do sleep 1; done; \
         pid=$(head -n 1 '{dir}/data/postmaster.pid' 2>/dev/null) && kill -QUIT \"$pid\" 2>/dev/null; \
         while [ -n \"$pid\" ] && kill -0 \"$pid\" 2>/dev/null; do sleep 0.2; done; rm -rf '{dir}'",
        test = std::process::id(),
        dir = dir.display(),
    );
    // Never waited for: it outlives this process on purpose.
    #[allow(clippy::zombie_processes)]
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the test PostgreSQL's watchdog");
}
