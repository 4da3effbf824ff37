//! `cargo bench --bench workers`: builds per minute of a 5-second build with 1, 2 and 3 workers,
//! each `autobuilder worker` on a Docker engine of its own (a host of its own: see
//! `common::Engine`), behind a `serve` that only queues, on one PostgreSQL history. Each worker
//! runs one build at a time, so the ideal is 12 builds per minute per worker. Prints figures;
//! asserts nothing about speed. `BENCH_BUILDS` sets the builds per round (default 12).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use autobuilder::config::Secret;
use common::*;

const BUILD_SECONDS: f64 = 5.0;

fn main() {
    tokio::runtime::Runtime::new().unwrap().block_on(run());
}

async fn run() {
    let builds: usize = std::env::var("BENCH_BUILDS").ok().and_then(|n| n.parse().ok()).unwrap_or(12);
    let git = GitHost::new();
    let files: Vec<(String, &str)> = (0..builds).map(|r| (format!("bench/r{r}/master.yaml"), ONE_SCRIPT)).collect();
    let refs: Vec<(&str, &str)> = files.iter().map(|(path, text)| (path.as_str(), *text)).collect();
    git.commit("org/recipes", "master", &refs);
    let script = format!("#!/bin/sh\nsleep {BUILD_SECONDS}\ntar -czf /tmp/archives/out.tar.gz build.sh\n");
    let shas: Vec<String> =
        (0..builds).map(|r| git.commit(&format!("bench/r{r}"), "master", &[("build.sh", &script)])).collect();
    let engines: Vec<Engine> = ["b1", "b2", "b3"].into_iter().map(Engine::start).collect();
    println!(
        "{builds} builds of `sleep {BUILD_SECONDS}` per round, each worker on its own engine, one build at a time"
    );
    let mut first = None;
    for workers in 1..=3 {
        let database = Postgres::shared().fresh_database();
        let server = Server::start(|dir| {
            test_config(dir, &git, None).with(|c| {
                c.database.url = Secret::new(database.as_str());
                c.worker.enabled = false;
            })
        });
        let running: Vec<Worker> = engines[..workers]
            .iter()
            .enumerate()
            .map(|(n, engine)| {
                Worker::start_on(&server, &format!("w{}", n + 1), Some(engine), |c| c.worker.concurrency = 1)
            })
            .collect();
        let start = Instant::now();
        let mut ids = Vec::new();
        for (r, sha) in shas.iter().enumerate() {
            ids.extend(server.push_builds(&format!("bench/r{r}"), "master", sha).await);
        }
        for id in &ids {
            let build = server.wait_build(*id).await;
            assert_eq!(build["status"], "success", "{build}");
        }
        let elapsed = start.elapsed().as_secs_f64();
        let per_minute = builds as f64 / elapsed * 60.0;
        let ideal = workers as f64 * 60.0 / BUILD_SECONDS;
        let speedup = first.map_or(1.0, |one: f64| per_minute / one);
        first.get_or_insert(per_minute);
        println!(
            "{workers} worker(s): {builds} builds in {elapsed:.1} s = {per_minute:.1} builds/min \
             ({:.0} % of the ideal {ideal:.0}/min; {speedup:.2}x one worker)",
            per_minute / ideal * 100.0
        );
        drop(running);
    }
}
