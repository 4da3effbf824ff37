//! `cargo bench`: how long builds take from webhook to `success` in the history, beside plain
//! `docker run` of the same image and script, plus memory (intake: `--bench intake`). Prints
//! figures; asserts nothing about speed. Record the output in docs/benchmarks.md. `TEST_DATABASE=postgres` with
//! `TEST_POSTGRES_URL=<a durable server>` measures the history on PostgreSQL (see the harness);
//! `BENCH_REDIS=1` sends the log lines over a real Redis (`BENCH_REDIS=unix`: through its unix socket).

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
    // BENCH_REDIS=1: log lines go over a real Redis, as with a separate `autobuilder live`.
    let redis = std::env::var_os("BENCH_REDIS").map(|_| RedisServer::start());
    let server = Server::start(|dir| {
        test_config(dir, &git, None).with(|c| {
            c.builds.concurrency = 20;
            c.redis.url = redis_url(&redis);
        })
    });
    let idle_rss = server.rss_kib();

    let bus = if redis.is_some() { "Redis" } else { "embedded bus" };
    println!(
        "autobuilder benchmark, {} cores, {bus}, median of {RUNS} runs",
        std::thread::available_parallelism().unwrap()
    );
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

    print_trivial_timeline(&server, &git).await;

    let start = Instant::now();
    let pushes = parallel.iter().map(|(repo, sha)| server.push_builds(repo, "master", sha));
    let ids: Vec<i64> = futures_util::future::join_all(pushes).await.into_iter().flatten().collect();
    for id in ids {
        wait_success(&server, id).await;
    }
    println!("{:<44} {:>10.3} s", "20 simultaneous trivial pushes (20 repos), last done", secs(start.elapsed()));

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

/// Where one more trivial build's time went: each log line with the time it arrived, and the
/// answer to the webhook and the `success` the client saw, in ms from the webhook's send.
async fn print_trivial_timeline(server: &Server, git: &GitHost) {
    let since_epoch =
        || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64() * 1e3;
    let sha = git.commit("bench/trivial", "master", &[]);
    let sent = since_epoch();
    let id = server.push_builds("bench/trivial", "master", &sha).await[0];
    let answered = since_epoch();
    wait_success(server, id).await;
    let done = since_epoch();
    println!("    where a trivial build's time went (ms from the webhook's send):");
    println!("    {:>8.1}  (the webhook answered)", answered - sent);
    for (time, line) in server.log_timeline(id, 50).await {
        println!("    {:>8.1}  {line}", time - sent);
    }
    println!("    {:>8.1}  (success seen by the client)", done - sent);
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
