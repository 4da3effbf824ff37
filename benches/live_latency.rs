//! `cargo bench --bench live_latency`: how long a line takes from a build container's stdout to a
//! websocket client of `/live` (embedded; with `BENCH_REDIS=1`, over a real Redis to a separate
//! `autobuilder live`; with `BENCH_WORKER=1`, besides, the builds run on an `autobuilder worker`
//! beside a serve that only queues, on a PostgreSQL history), and a 1,000,000-line build watched by
//! a client: its time beside `docker run` and the server's peak memory. Prints figures; asserts no
//! speed.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Prints `stamp <sec> <usec>` from the kernel clock (busybox adjtimex: date has no %N), then
/// `filler` plain lines, then sleeps `pause_us`; `rounds` times.
fn stamping_script(rounds: u32, filler: u32, pause_us: u32) -> String {
    format!(
        r#"#!/bin/sh
i=0
while [ $i -lt {rounds} ]; do
  set -- $(adjtimex | sed -n 's/.*tv_sec: *//p;s/.*tv_usec: *//p')
  echo "stamp $1 $2"
  j=0; while [ $j -lt {filler} ]; do echo "filler $i $j"; j=$((j+1)); done
  usleep {pause_us}
  i=$((i+1))
done
tar -czf /tmp/archives/out.tar.gz /etc/hostname
"#
    )
}

const MILLION: &str = "#!/bin/sh\nseq 1 1000000\ntar -czf /tmp/archives/out.tar.gz /etc/hostname\n";

fn main() {
    tokio::runtime::Runtime::new().unwrap().block_on(run());
}

async fn run() {
    let git = GitHost::new();
    let cases = [
        ("slow", stamping_script(200, 0, 50_000)),
        ("fast", stamping_script(500, 9, 8_000)),
        ("million", MILLION.to_string()),
    ];
    let mut recipes = Vec::new();
    for (name, script) in &cases {
        git.commit(&format!("bench/{name}"), "master", &[("build.sh", script)]);
        recipes.push(format!("bench/{name}/master.yaml"));
    }
    let recipe = "buildscripts: [build.sh]\nbuild.sh: {artifact: out.tar.gz}\n";
    let files: Vec<(&str, &str)> = recipes.iter().map(|p| (p.as_str(), recipe)).collect();
    git.commit("org/recipes", "master", &files);
    // BENCH_REDIS=1: lines go over a real Redis to a separate `autobuilder live`. BENCH_WORKER=1:
    // and they come from a worker's build.
    let on_worker = std::env::var_os("BENCH_WORKER").is_some();
    let redis = (on_worker || std::env::var_os("BENCH_REDIS").is_some()).then(RedisServer::start);
    let database = on_worker.then(|| Postgres::shared().fresh_database());
    let server = Server::start(|dir| {
        test_config(dir, &git, None).with(|c| {
            c.redis.url = redis_url(&redis);
            if let Some(database) = &database {
                c.database.url = autobuilder::config::Secret::new(database.as_str());
                c.worker.enabled = false;
            }
        })
    });
    let _worker = on_worker.then(|| Worker::start(&server, "w1", |_| {}));
    let live = redis.as_ref().map(|_| LiveServer::start(&server));
    let ws = match &live {
        Some(live) => live.url.clone(),
        None => format!("{}/live", server.url.replace("http://", "ws://")),
    };
    let bus = match (on_worker, redis.is_some()) {
        (true, _) => "builds on an `autobuilder worker`, PostgreSQL, Redis and `autobuilder live`",
        (false, true) => "Redis and `autobuilder live`",
        (false, false) => "embedded bus",
    };
    println!("autobuilder live benchmark, {} cores, {bus}", std::thread::available_parallelism().unwrap());

    for (name, script) in &cases[..2] {
        let (rate, p50, p99, count) = latency(&server, &ws, &git, name).await;
        println!(
            "line latency, container stdout -> websocket, {rate:>5.0} lines/s: p50 {:.2} ms, p99 {:.2} ms ({count} stamped lines)",
            p50 * 1e3,
            p99 * 1e3
        );
        let script = script.clone();
        let (p50, p99) = tokio::task::spawn_blocking(move || floor_latency(&script)).await.unwrap();
        println!(
            "  the floor, the stdout of `docker run` of the same script:  p50 {:.2} ms, p99 {:.2} ms",
            p50 * 1e3,
            p99 * 1e3
        );
    }

    let peak_before = server.peak_rss_kib();
    let sha = git.commit("bench/million", "master", &[]);
    let (mut socket, _) = tokio_tungstenite::connect_async(&ws).await.unwrap();
    let start = Instant::now();
    let id = server.push_builds("bench/million", "master", &sha).await[0];
    socket.send(Message::text(json!({"type": "subscribe", "id": id, "tail": 1000}).to_string())).await.unwrap();
    let mut received = 0u64;
    loop {
        let Some(Ok(Message::Text(text))) = socket.next().await else { continue };
        let message: Value = serde_json::from_str(&text).unwrap();
        if message["type"] == "lines" {
            received += message["text"].as_str().unwrap().matches('\n').count() as u64;
        }
        if message["type"] == "build" && message["build"]["id"] == id && message["build"]["status"] == "success" {
            break;
        }
    }
    let ours = start.elapsed();
    let docker = docker_run("seq 1 1000000", "json-file");
    let docker_none = docker_run("seq 1 1000000", "none");
    println!(
        "1,000,000 lines watched over /live: webhook -> success {:.3} s (docker run {:.3} s json-file, {:.3} s log driver none); the client got {received} lines",
        ours.as_secs_f64(),
        docker.as_secs_f64(),
        docker_none.as_secs_f64()
    );
    println!(
        "server peak RSS: {:.1} MB before, {:.1} MB after the 1,000,000-line build (now {:.1} MB)",
        peak_before as f64 / 1024.0,
        server.peak_rss_kib() as f64 / 1024.0,
        server.rss_kib() as f64 / 1024.0
    );
}

/// The same latency read straight from the stdout of `docker run` of `script`: (p50 s, p99 s).
fn floor_latency(script: &str) -> (f64, f64) {
    use std::io::BufRead;
    ensure_test_image();
    let mut child = std::process::Command::new("docker")
        .args(["run", "--rm", "--network", "none", TEST_IMAGE, "sh", "-c"])
        .arg(format!("mkdir -p /tmp/archives; {script}"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut latencies = Vec::new();
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
        if let Some(stamp) = stamp_of(&line) {
            latencies.push(now - stamp);
        }
    }
    assert!(child.wait().unwrap().success());
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    (at(0.5), at(0.99))
}

/// The time a `stamp <sec> <usec>` line was printed, in seconds since the epoch.
fn stamp_of(line: &str) -> Option<f64> {
    let mut parts = line.split_whitespace();
    (parts.next()? == "stamp").then_some(())?;
    let sec: f64 = parts.next()?.parse().ok()?;
    let usec: f64 = parts.next()?.parse().ok()?;
    Some(sec + usec / 1e6)
}

/// Runs the `name` script once, watching it over the websocket; returns (lines/s, p50 s, p99 s, n).
async fn latency(server: &Server, ws: &str, git: &GitHost, name: &str) -> (f64, f64, f64, usize) {
    let sha = git.commit(&format!("bench/{name}"), "master", &[]);
    let (mut socket, _) = tokio_tungstenite::connect_async(ws).await.unwrap();
    let id = server.push_builds(&format!("bench/{name}"), "master", &sha).await[0];
    socket.send(Message::text(json!({"type": "subscribe", "id": id, "from": 1}).to_string())).await.unwrap();
    let mut latencies = Vec::new();
    let (mut first, mut last, mut lines) = (None, Instant::now(), 0u64);
    loop {
        let Some(Ok(Message::Text(text))) = socket.next().await else { continue };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
        let message: Value = serde_json::from_str(&text).unwrap();
        if message["type"] == "lines" {
            for line in message["text"].as_str().unwrap().lines() {
                lines += 1;
                first.get_or_insert_with(Instant::now);
                last = Instant::now();
                if let Some(stamp) = stamp_of(line) {
                    latencies.push(now - stamp);
                }
            }
        }
        if message["type"] == "build" && message["build"]["id"] == id && message["build"]["status"] == "success" {
            break;
        }
    }
    latencies.sort_by(f64::total_cmp);
    let rate = lines as f64 / (last - first.unwrap()).as_secs_f64().max(1e-9);
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    (rate, at(0.5), at(0.99), latencies.len())
}
