//! Test harness: the real `autobuilder` binary, the real Docker engine with a busybox image the
//! harness imports itself, real git repositories on disk, and a fake GitHub and hub over HTTP.
//! One module per thing a test talks to; everything is re-exported here (`use common::*;`).
#![allow(dead_code)]

mod browser;
mod docker;
mod engines;
mod git;
mod github;
mod hub;
mod live;
mod postgres;
mod redis_server;
mod server;
mod worker;

// Each test file uses some of it.
#[allow(unused_imports)]
pub use {
    browser::*, docker::*, engines::*, git::*, github::*, hub::*, live::*, postgres::*, redis_server::*, server::*,
    worker::*,
};

use std::time::{Duration, Instant};

/// Every wait in the harness gives up after this long.
pub const WAIT: Duration = Duration::from_secs(120);
/// How often a wait checks again.
const POLL: Duration = Duration::from_millis(25);

/// Runs `check` until it returns `Some`, and returns that; panics after [`WAIT`] naming `what`.
/// `check` may itself panic to fail early (e.g. a build that ended instead of starting).
pub async fn wait_until<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// [`wait_until`] for the harness's synchronous parts (starting processes), which cannot await.
pub fn wait_until_blocking<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(POLL);
    }
}

/// Serves `router` on a free loopback port (the fakes of GitHub and the hub); returns its base URL.
async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}
