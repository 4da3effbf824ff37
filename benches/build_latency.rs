//! `cargo bench`: how long builds take from webhook to `success` in the history, beside plain
//! `docker run` of the same image and script, plus intake rate and memory. Prints figures; asserts
//! nothing about speed. Record the output in docs/benchmarks.md. `TEST_DATABASE=postgres` with
//! `TEST_POSTGRES_URL=<a durable server>` measures the history on PostgreSQL (see the harness).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;

/// Runs of each figure; the median is reported.
const RUNS: usize = 5;

const TRIVIAL: &str = "echo building; tar -czf /tmp/archives/out.tar.gz /etc/hostname";
const SEQ_100K: &str = "seq 1 100000; tar -czf /tmp/archives/out.tar.gz /etc/hostname";
const SEQ_1M: &str = "seq 1 1000000; tar -czf /tmp/archives/out.tar.gz /etc/hostname";

fn main() {
    tokio::runtime::Runtime::new().unwrap().block_on(run());
}

async fn run() {
    let git = GitHost::new();
    let scripts = [("trivial", TRIVIAL), ("seq100k", SEQ_100K), ("seq1m", SEQ_1M)];
    let mut recipes = Vec::new();
    for (name, body) in scripts {
        git.commit(&format!("bench/{name}"), "master", &[("build.sh", &format!("#!/bin/sh\nset -e\n{body}\n"))]);
        recipes.push((
            format!("bench/{name}/master.yaml"),
            "buildscripts: [build.sh]\nbuild.sh: {artifact: out.tar.gz}\n",
        ));
    }
    // 20 more repositories with the trivial script, pushed all at once.
    let mut parallel = Vec::new();
    for i in 0..20 {
        let repo = format!("bench/parallel{i}");
        parallel.push((
            repo.clone(),
            git.commit(&repo, "master", &[("build.sh", &format!("#!/bin/sh\nset -e\n{TRIVIAL}\n"))]),
        ));
        recipes.push((format!("{repo}/master.yaml"), "buildscripts: [build.sh]\nbuild.sh: {artifact: out.tar.gz}\n"));
    }
    let files: Vec<(&str, &str)> = recipes.iter().map(|(p, c)| (p.as_str(), *c)).collect();
    git.commit("org/recipes", "master", &files);
    let server = Server::start(|dir| test_config(dir, &git, None).with(|c| c.builds.concurrency = 20));
    let idle_rss = server.rss_kib();

    println!("autobuilder benchmark, {} cores, median of {RUNS} runs", std::thread::available_parallelism().unwrap());
    println!("{:<44} {:>12} {:>12} {:>8}", "figure", "autobuilder", "docker run", "ratio");
    for (name, body) in scripts {
        let sha = git.commit(&format!("bench/{name}"), "master", &[]);
        let ours = median(RUNS, || async {
            let start = Instant::now();
            let id = server.push_builds(&format!("bench/{name}"), "master", &sha).await[0];
            wait_success(&server, id).await;
            start.elapsed()
        })
        .await;
        let theirs = median(RUNS, || async { docker_run(body, "json-file") }).await;
        let no_log = median(RUNS, || async { docker_run(body, "none") }).await;
        println!(
            "{:<44} {:>10.3} s {:>10.3} s {:>7.2}x",
            format!("{name}: webhook -> success"),
            secs(ours),
            secs(theirs),
            secs(ours) / secs(theirs)
        );
        println!(
            "{:<44} {:>12} {:>10.3} s {:>7.2}x",
            format!("{name}: vs docker run --log-driver none"),
            "",
            secs(no_log),
            secs(ours) / secs(no_log)
        );
    }

    let start = Instant::now();
    let pushes = parallel.iter().map(|(repo, sha)| server.push_builds(repo, "master", sha));
    let ids: Vec<i64> = futures_util::future::join_all(pushes).await.into_iter().flatten().collect();
    for id in ids {
        wait_success(&server, id).await;
    }
    println!("{:<44} {:>10.3} s", "20 simultaneous trivial pushes (20 repos), last done", secs(start.elapsed()));

    let (rate, p99) = intake(&server).await;
    println!("{:<44} {:>8.0} /s   p99 {:.2} ms", "webhook intake, untracked repo, 8 clients", rate, p99 * 1e3);
    println!("{:<44} {:>8.1} MB", "server RSS idle (after start-up)", idle_rss as f64 / 1024.0);
    println!("{:<44} {:>8.1} MB", "server RSS after the builds above", server.rss_kib() as f64 / 1024.0);
}

async fn wait_success(server: &Server, id: i64) {
    loop {
        let (_, build) = server.get_json(&format!("/build/{id}")).await;
        match build["status"].as_str() {
            Some("success") => return,
            Some("queued" | "running") => tokio::time::sleep(Duration::from_millis(2)).await,
            _ => panic!("benchmark build failed: {build}"),
        }
    }
}

/// Signed pushes of an untracked repository from 8 concurrent clients for 2 s.
async fn intake(server: &Server) -> (f64, f64) {
    let body = push_payload("nobody/untracked", "refs/heads/master", &"1".repeat(40)).to_string();
    let deadline = Instant::now() + Duration::from_secs(2);
    let clients = (0..8).map(|_| {
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
    (all.len() as f64 / 2.0, secs(all[all.len() * 99 / 100]))
}

async fn median<F: std::future::Future<Output = Duration>>(runs: usize, mut f: impl FnMut() -> F) -> Duration {
    let mut times = Vec::new();
    for _ in 0..runs {
        times.push(f().await);
    }
    times.sort();
    times[runs / 2]
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}
