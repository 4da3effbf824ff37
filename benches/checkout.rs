//! `cargo bench --bench checkout`: how long a push of a repository with a real-sized history takes
//! from the webhook to its build's container starting, over `file://` and over git's smart HTTP
//! protocol, beside `git clone --depth 1` of the same commit (the floor). Prints figures; asserts
//! nothing about speed. Record the output in docs/benchmarks.md.
//!
//! The repository is generated (about 20,000 commits and 200 MB of incompressible history, a
//! 20 MB tree), or any local repository given as `CHECKOUT_BENCH_REPO=/path` (its `master` branch is
//! built; it gets one commit adding `build.sh`). `CHECKOUT_BENCH_TRANSPORT=http` (or `file`)
//! measures one transport only.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const RUNS: usize = 3;
const COMMITS: usize = 20_000;
const FILES: usize = 2_000;
const BLOB_BYTES: usize = 10 * 1024;
const BUILD_SH: &str = "#!/bin/sh\necho container started\n";
const RECIPE: &str = "buildscripts: [build.sh]\nbuild.sh: {artifact: out.tar.gz}\n";

fn main() {
    tokio::runtime::Runtime::new().unwrap().block_on(run());
}

async fn run() {
    ensure_test_image();
    let git = GitHost::new();
    git.commit("org/recipes", "master", &[("bench/big/master.yaml", RECIPE)]);
    let repo = git.root.path().join("bench/big");
    let started = Instant::now();
    match std::env::var("CHECKOUT_BENCH_REPO") {
        Ok(given) => run_git(git.root.path(), &["clone", "-q", &given, repo.to_str().unwrap()]),
        Err(_) => generate(&repo),
    }
    git.commit("bench/big", "master", &[("build.sh", BUILD_SH)]);
    let commits = output(&repo, &["rev-list", "--count", "HEAD"]);
    let size = output(&repo, &["count-objects", "-vH"]);
    let size = size.lines().find(|l| l.starts_with("size-pack")).unwrap_or_default().to_string();
    println!("checkout benchmark, {} cores, median of {RUNS} runs", std::thread::available_parallelism().unwrap());
    println!("repository: {commits} commits, {size} (made in {:.1} s)", started.elapsed().as_secs_f64());

    let http = git.serve_http().await;
    // CHECKOUT_BENCH_TRANSPORT=http (or file) measures only that one.
    let only = std::env::var("CHECKOUT_BENCH_TRANSPORT").unwrap_or_default();
    for (transport, url) in [("file", git.clone_url()), ("http", http)] {
        if !only.is_empty() && only != transport {
            continue;
        }
        let floor = median(RUNS, || async { clone_depth_1(&url.replace("{repo}", "bench/big")) }).await;
        let full = median(RUNS, || async { clone_full(&url.replace("{repo}", "bench/big")) }).await;
        println!("\n{transport}:");
        println!("  {:<52} {:>8.3} s", "git clone --depth 1 (the floor)", secs(floor));
        println!("  {:<52} {:>8.3} s", "git clone (full history)", secs(full));
        for depth in [0, 1] {
            let mut firsts = Vec::new();
            let mut seconds = Vec::new();
            for _ in 0..RUNS {
                let server = Server::start(|dir| {
                    test_config(dir, &git, None).with(|c| {
                        c.git.clone_url = url.clone();
                        c.git.depth = depth;
                    })
                });
                let before = output(&repo, &["rev-parse", "HEAD"]);
                let sha = git.commit("bench/big", "master", &[]);
                firsts.push(to_container_start(&server, &before, &sha).await.0);
                wait_filled(&server).await;
                let next =
                    git.commit("bench/big", "master", &[("build.sh", &format!("{BUILD_SH}# {}\n", seconds.len()))]);
                let (took, id) = to_container_start(&server, &sha, &next).await;
                seconds.push(took);
                if seconds.len() == RUNS {
                    print_timeline(&server, id).await;
                }
            }
            let (first, second) = (median_of(firsts), median_of(seconds));
            println!(
                "  depth = {depth}: first build, webhook -> container start {:>8.3} s ({:.2}x the floor)",
                secs(first),
                secs(first) / secs(floor)
            );
            println!("  depth = {depth}: next push (1 commit), webhook -> container start {:>5.3} s", secs(second));
        }
    }
}

/// Pushes `sha` (the branch was at `before`, as GitHub says) and times the webhook until the
/// build's script has printed its first line; returns that time and the build.
async fn to_container_start(server: &Server, before: &str, sha: &str) -> (Duration, i64) {
    let start = Instant::now();
    let id = server.push_builds_after("bench/big", "master", before, sha).await[0];
    loop {
        let (_, log) = server.get_text(&format!("/build/{id}/log")).await;
        if log.contains("container started") {
            let elapsed = start.elapsed();
            server.wait_build(id).await;
            return (elapsed, id);
        }
        let (_, build) = server.get_json(&format!("/build/{id}")).await;
        if !matches!(build["status"].as_str(), Some("queued" | "running")) {
            panic!("the build ended before its script started: {build}\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Where the time of build `id` went: its log lines up to the script's first, with the time each
/// arrived (the server's line index), from its first line.
async fn print_timeline(server: &Server, id: i64) {
    let timeline = server.log_timeline(id, 20).await;
    let first = timeline[0].0;
    println!("    where the last next push's time went (ms from its first log line):");
    for (time, line) in timeline {
        println!("    {:>8.0}  {line}", time - first);
        if line.contains("container started") {
            break;
        }
    }
}

/// Waits for the mirror to be complete (with `depth = N` it is filled behind the first build).
async fn wait_filled(server: &Server) {
    let marker = server.dir.path().join("data/mirrors/bench/big.git/autobuilder-filled");
    wait_until("the mirror to be filled", async || marker.exists().then_some(())).await;
    // The fill holds the mirror until its fetch is done; the marker comes at its end.
    tokio::time::sleep(Duration::from_millis(200)).await;
}

fn clone_depth_1(url: &str) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let start = Instant::now();
    run_git(dir.path(), &["clone", "-q", "--depth", "1", "--branch", "master", url, "c"]);
    start.elapsed()
}

fn clone_full(url: &str) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let start = Instant::now();
    run_git(dir.path(), &["clone", "-q", "--branch", "master", url, "c"]);
    start.elapsed()
}

/// A repository of `COMMITS` commits on master, each rewriting one of `FILES` files with
/// `BLOB_BYTES` of pseudo-random (incompressible) bytes, written with `git fast-import`.
fn generate(repo: &Path) {
    std::fs::create_dir_all(repo).unwrap();
    run_git(repo, &["init", "-q", "-b", "master"]);
    let mut import =
        Command::new("git").args(["fast-import", "--quiet"]).current_dir(repo).stdin(Stdio::piped()).spawn().unwrap();
    let mut input = std::io::BufWriter::new(import.stdin.take().unwrap());
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut blob = vec![0u8; BLOB_BYTES];
    for n in 0..COMMITS {
        for chunk in blob.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        let message = format!("change {n}");
        write!(
            input,
            "commit refs/heads/master\ncommitter Bench <bench@example.invalid> {} +0000\ndata {}\n{message}\n",
            1_600_000_000 + n,
            message.len()
        )
        .unwrap();
        write!(input, "M 100644 inline src/f{:04}.bin\ndata {}\n", n % FILES, blob.len()).unwrap();
        input.write_all(&blob).unwrap();
        input.write_all(b"\n").unwrap();
    }
    drop(input);
    assert!(import.wait().unwrap().success());
    run_git(repo, &["checkout", "-q", "-f", "master"]);
}

fn run_git(dir: &Path, args: &[&str]) {
    let status = Command::new("git").args(args).current_dir(dir).status().unwrap();
    assert!(status.success(), "git {args:?}");
}

fn output(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git").args(args).current_dir(dir).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

async fn median<F: std::future::Future<Output = Duration>>(runs: usize, mut f: impl FnMut() -> F) -> Duration {
    let mut times = Vec::new();
    for _ in 0..runs {
        times.push(f().await);
    }
    median_of(times)
}

fn median_of(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}
