//! A real `redis-server` for the tests of `autobuilder live` and Redis outages.

use std::process::{Child, Command, Stdio};

use super::wait_until_blocking;

/// `[redis] url` for a server that uses `redis` when there is one (empty: the embedded bus).
/// `BENCH_REDIS=unix`: through its unix socket.
pub fn redis_url(redis: &Option<RedisServer>) -> String {
    let unix = std::env::var("BENCH_REDIS").is_ok_and(|how| how == "unix");
    redis.as_ref().map(|r| if unix { r.unix_url() } else { r.url() }).unwrap_or_default()
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

    /// The same server through its unix socket.
    pub fn unix_url(&self) -> String {
        format!("unix://{}", self.socket())
    }

    fn socket(&self) -> String {
        format!("/tmp/autobuilder-test-redis-{}.sock", self.port)
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub fn resume(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--unixsocket", &self.socket(), "--unixsocketperm", "700"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server not found: apt-get install redis-server");
        self.child = Some(child);
        wait_until_blocking("redis-server to accept connections", || {
            std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()
        });
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
