//! A real `redis-server` for the tests of `autobuilder live` and Redis outages.

use std::process::{Child, Command, Stdio};

use super::wait_until_blocking;

/// `[redis] url` for a server that uses `redis` when there is one (empty: the embedded bus).
pub fn redis_url(redis: &Option<RedisServer>) -> String {
    redis.as_ref().map(RedisServer::url).unwrap_or_default()
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
