//! `cargo bench --bench intake`: durable webhook intake alone. Signed pushes of an untracked
//! repository (each stored before it is answered) from 8 concurrent clients on the same machine,
//! in rounds of `INTAKE_SECONDS` (default 2) seconds; prints each round's rate and p99 latency.
//! The server's pid is printed first, so that a profiler can attach for the rounds
//! (`perf record -g -p <pid>`). `TEST_DATABASE=postgres` measures the history on PostgreSQL.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;

const ROUNDS: usize = 3;
const CLIENTS: usize = 8;

fn main() {
    tokio::runtime::Runtime::new().unwrap().block_on(run());
}

async fn run() {
    let seconds: u64 = std::env::var("INTAKE_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    let git = GitHost::new();
    git.commit("org/recipes", "master", &[]);
    let server = Server::start(|dir| test_config(dir, &git, None));
    println!("server pid {}; {ROUNDS} rounds of {seconds} s, {CLIENTS} clients", server.pid());
    for round in 1..=ROUNDS {
        let (rate, p99) = intake(&server, Duration::from_secs(seconds)).await;
        println!("round {round}: webhook intake, durable {rate:>8.0} /s   p99 {:.2} ms", p99 * 1e3);
    }
}

/// Signed pushes of an untracked repository from [`CLIENTS`] concurrent clients for `length`.
async fn intake(server: &Server, length: Duration) -> (f64, f64) {
    let body = push_payload("nobody/untracked", "refs/heads/master", &"1".repeat(40)).to_string();
    let deadline = Instant::now() + length;
    let clients = (0..CLIENTS).map(|_| {
        let (body, url, http) = (body.clone(), server.url.clone(), server.http.clone());
        let signature = autobuilder::github::events::sign(SECRET.as_bytes(), body.as_bytes());
        async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let start = Instant::now();
                let response = http
                    .post(format!("{url}/build/demo/hook"))
                    .header("x-github-event", "push")
                    .header("x-hub-signature-256", &signature)
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                assert!(response.status().is_success());
                response.bytes().await.unwrap();
                latencies.push(start.elapsed());
            }
            latencies
        }
    });
    let mut all: Vec<Duration> = futures_util::future::join_all(clients).await.into_iter().flatten().collect();
    all.sort();
    (all.len() as f64 / length.as_secs_f64(), all[all.len() * 99 / 100].as_secs_f64())
}
