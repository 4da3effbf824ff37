//! Several build hosts: `autobuilder worker`s, each on a Docker engine of its own (a `dockerd` in a
//! network namespace of its own, see `common::Engine`), behind a `serve` that only queues, on one
//! PostgreSQL history. 60 pushes across 20 repositories: each build runs once, on one of them,
//! within the project's limit. An image chain: the builds starting from a committed image run on
//! the engine that holds it.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;

const REPOS: usize = 20;
const ROUNDS: usize = 3;
/// Builds of the project at once, over every host.
const PROJECT_LIMIT: usize = 4;

#[tokio::test(flavor = "multi_thread")]
async fn sixty_pushes_run_once_each_spread_over_three_engines_within_the_limit() {
    let git = GitHost::new();
    let files: Vec<(String, &str)> = (0..REPOS).map(|r| (format!("hosts/r{r}/master.yaml"), ONE_SCRIPT)).collect();
    let refs: Vec<(&str, &str)> = files.iter().map(|(path, text)| (path.as_str(), *text)).collect();
    git.commit("org/recipes", "master", &refs);
    let mut pushes = Vec::new();
    for round in 0..ROUNDS {
        for r in 0..REPOS {
            let script =
                format!("#!/bin/sh\necho round {round}\nsleep 0.3\ntar -czf /tmp/archives/out.tar.gz build.sh\n");
            let repo = format!("hosts/r{r}");
            let sha = git.commit(&repo, "master", &[("build.sh", &script)]);
            pushes.push((repo, sha));
        }
    }
    let github = FakeGithub::start().await;
    let server = serve_for_workers(&git, &github, |c| c.demo().concurrency = PROJECT_LIMIT);
    let engines: Vec<Engine> = ["h1", "h2", "h3"].into_iter().map(Engine::start).collect();
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() - 1;
    let _workers: Vec<Worker> = engines
        .iter()
        .enumerate()
        .map(|(n, engine)| {
            Worker::start_on(&server, &format!("w{}", n + 1), Some(engine), |c| c.worker.concurrency = 2)
        })
        .collect();

    let mut ids = Vec::new();
    let mut most_running = 0;
    for (repo, sha) in &pushes {
        ids.extend(server.push_builds(repo, "master", sha).await);
        let (_, active) = server.get_json("/build/status").await;
        most_running = most_running.max(active.as_array().unwrap().iter().filter(|b| b["status"] == "running").count());
    }
    assert_eq!(ids.len(), REPOS * ROUNDS, "one build per push");
    let mut ran_on: BTreeMap<String, usize> = BTreeMap::new();
    let mut succeeded = BTreeSet::new();
    let mut newest: HashMap<String, i64> = HashMap::new();
    loop {
        let (_, active) = server.get_json("/build/status").await;
        let active = active.as_array().unwrap();
        most_running = most_running.max(active.iter().filter(|b| b["status"] == "running").count());
        if active.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in &ids {
        let build = server.wait_build(*id).await;
        match build["status"].as_str().unwrap() {
            "success" => {
                succeeded.insert(*id);
                *ran_on.entry(build["worker"].as_str().unwrap().to_string()).or_default() += 1;
            }
            "cancelled" => assert!(build["error"].as_str().unwrap().starts_with("superseded by"), "{build}"),
            _ => panic!("a build neither built nor superseded: {build}"),
        }
        newest.insert(build["repository"].as_str().unwrap().to_string(), *id);
    }
    for id in newest.values() {
        assert!(succeeded.contains(id), "the newest push of each repository is built: build {id}");
    }
    assert!(most_running <= PROJECT_LIMIT, "{most_running} builds ran at once, over the limit of {PROJECT_LIMIT}");

    // Each build ran in one container, on one engine, and none on the machine's own engine.
    let until = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 1;
    let mut containers: HashMap<i64, usize> = HashMap::new();
    let mut started_on = Vec::new();
    for engine in &engines {
        let events = engine.docker(&[
            "events",
            "--since",
            &since.to_string(),
            "--until",
            &until.to_string(),
            "--filter",
            "type=container",
            "--filter",
            "event=create",
            "--format",
            "{{index .Actor.Attributes \"autobuilder.build\"}}",
        ]);
        let ids: Vec<i64> =
            String::from_utf8_lossy(&events.stdout).split_whitespace().map(|id| id.parse().unwrap()).collect();
        started_on.push((engine.name.clone(), ids.len()));
        for id in ids {
            *containers.entry(id).or_default() += 1;
        }
    }
    assert!(started_on.iter().all(|(_, n)| *n > 0), "every host built: {started_on:?}");
    for id in &succeeded {
        assert_eq!(containers.get(id), Some(&1), "build {id} ran in exactly one container: {containers:?}");
        assert!(server.containers_of(*id).is_empty());
    }
    assert!(containers.values().all(|n| *n == 1), "no build ran twice: {containers:?}");
    eprintln!(
        "60 pushes: {} built, {} superseded, per worker {ran_on:?}, at most {most_running} at once",
        succeeded.len(),
        ids.len() - succeeded.len()
    );
}

/// The producer runs on the host labelled `base` only; the dependent may run anywhere.
const BASE: &str = "buildscripts: [b.sh]\nb.sh: {artifact: b.tar.gz, commit: true, runs_on: [base]}\n";
const APP: &str = "buildscripts: [a.sh]\na.sh: {artifact: a.tar.gz, from: org/base@master}\n";
const BASE_SH: &str = "#!/bin/sh\nset -e\nsleep 1\ncat version > /made-by-base\ntar -czf /tmp/archives/b.tar.gz b.sh\n";

#[tokio::test(flavor = "multi_thread")]
async fn builds_starting_from_an_image_run_on_the_engine_that_committed_it() {
    let git = GitHost::new();
    git.commit("org/recipes", "master", &[("org/base/master.yaml", BASE), ("org/app/master.yaml", APP)]);
    let github = FakeGithub::start().await;
    let server = serve_for_workers(&git, &github, |_| {});
    let engines: Vec<Engine> = ["c1", "c2"].into_iter().map(Engine::start).collect();
    let mut base_host =
        Worker::start_on(&server, "base-host", Some(&engines[0]), |c| c.worker.labels = vec!["base".into()]);
    let _other_host = Worker::start_on(&server, "other-host", Some(&engines[1]), |_| {});
    let app_push = async |n: usize| {
        let script = format!(
            "#!/bin/sh\nset -e\necho \"push {n} on $(cat /made-by-base)\"\ntar -czf /tmp/archives/a.tar.gz a.sh\n"
        );
        let sha = git.commit("org/app", "master", &[("a.sh", &script)]);
        server.push_builds("org/app", "master", &sha).await[0]
    };

    // No engine has the image and no build makes it: the build ends saying what to push.
    let build = server.wait_build(app_push(0).await).await;
    assert_eq!(build["status"], "error", "{build}");
    assert!(build["error"].as_str().unwrap().contains("no build of org/base@master has made it yet"), "{build}");

    // Queued while its producer builds: it waits in the queue, then runs where the image was made.
    let base = git.commit("org/base", "master", &[("b.sh", BASE_SH), ("version", "base v1")]);
    let producer = server.push_builds("org/base", "master", &base).await[0];
    let dependent = app_push(1).await;
    let built = server.wait_build(producer).await;
    assert_eq!((built["status"].as_str(), built["worker"].as_str()), (Some("success"), Some("base-host")), "{built}");
    let build = server.wait_build(dependent).await;
    assert_eq!((build["status"].as_str(), build["worker"].as_str()), (Some("success"), Some("base-host")), "{build}");
    let (_, log) = server.get_text(&format!("/build/{dependent}/log")).await;
    assert!(log.contains("push 1 on base v1"), "{log}");
    assert!(!log.contains("waiting for the build of"), "claimed only once the image was made, not to wait: {log}");

    // With both hosts idle, every build starting from the image goes to the one that has it.
    for n in 2..6 {
        let build = server.wait_build(app_push(n).await).await;
        assert_eq!(
            (build["status"].as_str(), build["worker"].as_str()),
            (Some("success"), Some("base-host")),
            "{build}"
        );
    }
    let images = engines[1].docker(&["images", "-q", "autobuilder/*/*"]);
    assert!(String::from_utf8_lossy(&images.stdout).trim().is_empty(), "the other engine never got the image");

    // Its host gone, the image is nowhere to run from: the build says where it was made.
    base_host.kill();
    let build = server.wait_build(app_push(6).await).await;
    assert_eq!((build["status"].as_str(), build["worker"].as_str()), (Some("error"), Some("other-host")), "{build}");
    let error = build["error"].as_str().unwrap();
    assert!(error.contains("made on the engine of worker base-host, which is not running"), "{error}");
}
