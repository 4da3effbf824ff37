//! Load: 200 signed pushes within 10 s across 20 repositories, 4 builds at a time (loopback only,
//! bounded). Every push is accounted for, none is built twice, none is lost, nothing is stuck.
//! Prints its figures (`cargo test --test load -- --nocapture`); asserts no speed.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;

const REPOS: usize = 20;
const PUSHES_PER_REPO: usize = 10;

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_pushes_are_all_accounted_for() {
    let git = GitHost::new();
    let recipe = "buildscripts: [build.sh]\nbuild.sh: {artifact: out.tar.gz}\n";
    let files: Vec<(String, &str)> = (0..REPOS).map(|r| (format!("load/r{r}/master.yaml"), recipe)).collect();
    let refs: Vec<(&str, &str)> = files.iter().map(|(p, c)| (p.as_str(), *c)).collect();
    git.commit("org/recipes", "master", &refs);
    // Every push is a new commit: round after round, each repository moves on.
    let mut pushes = Vec::new();
    for round in 0..PUSHES_PER_REPO {
        for r in 0..REPOS {
            let body = format!("#!/bin/sh\necho round {round}\ntar -czf /tmp/archives/out.tar.gz /etc/hostname\n");
            pushes.push((format!("load/r{r}"), git.commit(&format!("load/r{r}"), "master", &[("build.sh", &body)])));
        }
    }
    let server = Server::start(|dir| test_config(dir, &git, None).with(admin).with(|c| c.builds.concurrency = 4));

    // 200 pushes, 20 at a time, one burst every 400 ms: within 10 s.
    let start = Instant::now();
    let mut latencies = Vec::new();
    let mut delivered: HashMap<String, Vec<i64>> = HashMap::new();
    let mut most_running = 0;
    for (round, burst) in pushes.chunks(REPOS).enumerate() {
        let sends = burst.iter().enumerate().map(|(i, (repo, sha))| {
            let delivery = format!("load-{round}-{i}");
            let server = &server;
            async move {
                let sent = Instant::now();
                let (code, body) = server.push_as(&delivery, repo, "master", sha).await;
                (delivery, code, body, sent.elapsed())
            }
        });
        for (delivery, code, body, took) in futures_util::future::join_all(sends).await {
            assert_eq!(code, 202, "{delivery}: {body}");
            latencies.push(took);
            delivered
                .insert(delivery, body["builds"].as_array().unwrap().iter().map(|b| b.as_i64().unwrap()).collect());
        }
        // A redelivery of one push of each burst: acknowledged, not built.
        let (repo, sha) = &burst[0];
        let (code, body) = server.push_as(&format!("load-{round}-0"), repo, "master", sha).await;
        assert_eq!(code, 200, "{body}");
        let (_, active) = server.get_json("/build/status").await;
        let running = active.as_array().unwrap().iter().filter(|b| b["status"] == "running").count();
        most_running = most_running.max(running);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let intake = start.elapsed();
    assert!(intake < Duration::from_secs(10) + Duration::from_secs(5), "the pushes themselves took {intake:?}");

    // Every build ends; count how.
    let ids: Vec<i64> = delivered.values().flatten().copied().collect();
    assert_eq!(ids.len(), REPOS * PUSHES_PER_REPO, "one build per push");
    let mut by_status: HashMap<String, usize> = HashMap::new();
    let mut commits: HashMap<String, usize> = HashMap::new();
    let mut last_of_repo: HashMap<String, (i64, String)> = HashMap::new();
    for id in &ids {
        let build = server.wait_build(*id).await;
        let status = build["status"].as_str().unwrap().to_string();
        if status == "cancelled" {
            assert!(build["error"].as_str().unwrap().starts_with("superseded by"), "{build}");
        } else {
            assert_eq!(status, "success", "{build}");
        }
        *by_status.entry(status.clone()).or_default() += 1;
        *commits.entry(build["commit"].as_str().unwrap().to_string()).or_default() += 1;
        let repo = build["repository"].as_str().unwrap().to_string();
        if last_of_repo.get(&repo).is_none_or(|(last, _)| last < id) {
            last_of_repo.insert(repo, (*id, status));
        }
    }
    let done = start.elapsed();
    assert!(commits.values().all(|&n| n == 1), "a commit was built twice");
    assert_eq!(commits.len(), REPOS * PUSHES_PER_REPO, "a push was lost");
    assert!(
        last_of_repo.values().all(|(_, s)| s == "success"),
        "the newest push of a repo did not build: {last_of_repo:?}"
    );
    assert!(most_running <= 4, "{most_running} builds ran at once");
    let (_, active) = server.get_json("/build/status").await;
    assert_eq!(active, serde_json::json!([]), "something is stuck");
    let (_, deliveries) = server.admin_get("/deliveries?limit=1000", ADMIN_TOKEN).await;
    assert_eq!(deliveries.as_array().unwrap().len(), REPOS * PUSHES_PER_REPO, "every delivery stored once");
    let (_, history) = server.get_json("/build/history?limit=1000").await;
    let builds = history.as_array().unwrap().iter().filter(|b| b["kind"] == "build").count();
    assert_eq!(builds, REPOS * PUSHES_PER_REPO, "history holds exactly one entry per push");

    latencies.sort();
    println!(
        "load: {} pushes over {:.1} s (webhook answer p50 {:.1} ms, p99 {:.1} ms), all ended after {:.1} s: \
         {} success, {} superseded, at most {most_running} running at once",
        ids.len(),
        intake.as_secs_f64(),
        latencies[latencies.len() / 2].as_secs_f64() * 1e3,
        latencies[latencies.len() * 99 / 100].as_secs_f64() * 1e3,
        done.as_secs_f64(),
        by_status.get("success").unwrap_or(&0),
        by_status.get("cancelled").unwrap_or(&0),
    );
}
