//! `cargo bench --bench memory`: the server's memory idle and over 30 builds of `seq 1 100000`
//! (embedded defaults: no Redis). Prints VmRSS and VmHWM idle and after every 10 builds, the split
//! of the resident memory (anonymous, file-backed) and the thread count, so that "flat" (or
//! not) is visible. Asserts nothing. Record the output in docs/benchmarks.md.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::*;

const SEQ_100K: &str = "seq 1 100000; tar -czf /tmp/archives/out.tar.gz /etc/hostname";
const BUILDS: usize = 30;

fn main() {
    tokio::runtime::Runtime::new().unwrap().block_on(run());
}

async fn run() {
    let git = GitHost::new();
    git.commit("bench/seq100k", "master", &[("build.sh", &format!("#!/bin/sh\nset -e\n{SEQ_100K}\n"))]);
    git.commit(
        "org/recipes",
        "master",
        &[("bench/seq100k/master.yaml", "buildscripts: [build.sh]\nbuild.sh: {artifact: out.tar.gz}\n")],
    );
    let server = Server::start(|dir| test_config(dir, &git, None).with(|c| c.builds.concurrency = 20));
    // Let start-up finish (recipes loaded, first prune) before the idle figure.
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!("autobuilder memory benchmark: {BUILDS} builds of `seq 1 100000`, one after another");
    report(&server, "idle (after start-up)");
    for n in 1..=BUILDS {
        let sha = git.commit("bench/seq100k", "master", &[("n", &n.to_string())]);
        let id = server.push_builds("bench/seq100k", "master", &sha).await[0];
        let build = server.wait_build(id).await;
        assert_eq!(build["status"], "success", "benchmark build failed: {build}");
        if n % 10 == 0 {
            // The containers are removed and the last writes made after `success`.
            tokio::time::sleep(Duration::from_secs(1)).await;
            report(&server, &format!("after {n} builds"));
        }
    }
    // What stays once idle threads have exited (tokio's blocking pool keeps them 10 s).
    tokio::time::sleep(Duration::from_secs(12)).await;
    report(&server, &format!("after {BUILDS} builds + 12 s idle"));
}

fn report(server: &Server, when: &str) {
    let pid = server.pid();
    let field = |text: &str, name: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let mb = |kib: u64| kib as f64 / 1024.0;
    println!(
        "{when:<30} VmRSS {:>5.1} MB  VmHWM {:>5.1} MB  anon {:>4.1} MB  file {:>4.1} MB (binary {:>4.1})  threads {}",
        mb(server.rss_kib()),
        mb(server.peak_rss_kib()),
        mb(field(&status, "RssAnon:")),
        mb(field(&status, "RssFile:")),
        mb(binary_rss_kib(pid)),
        field(&status, "Threads:"),
    );
}

/// Resident KiB of the mappings of the server's own executable file (its code and read-only data,
/// shared with the page cache).
fn binary_rss_kib(pid: u32) -> u64 {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let (mut ours, mut total) = (false, 0);
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            ours = line.split_whitespace().nth(5).is_some_and(|path| std::path::Path::new(path) == exe);
        } else if ours && first == "Rss:" {
            total += line.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    total
}
