//! Builds on `autobuilder worker` processes beside a `serve` that only queues them, all on one
//! real PostgreSQL history: spread over the workers, superseded across them, and taken over when a
//! worker is killed or frozen past its lease, the lost worker's late result refused.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use autobuilder::config::{Config, Secret};
use common::*;
use serde_json::Value;

/// Builds for a few seconds, then makes its artifact.
const SLOW: &str = "#!/bin/sh\nset -e\necho started\nsleep 4\necho done\ntar -czf /tmp/archives/out.tar.gz build.sh\n";

/// A serve that leaves every build to workers, on a new database of the shared PostgreSQL, with
/// leases of 2 s so that a lost worker is noticed quickly.
fn serve_without_builds(git: &GitHost, github: &FakeGithub, change: impl FnOnce(&mut Config)) -> Server {
    serve_for_workers(git, github, |c| {
        c.worker.lease_seconds = 2;
        change(c);
    })
}

/// Waits until build `id` runs on `worker` with its container started there.
async fn running_on(server: &Server, id: i64, worker: &Worker) {
    wait_until(&format!("build {id} to run on {}", worker.name), async || {
        let (_, build) = server.get_json(&format!("/build/{id}")).await;
        assert!(matches!(build["status"].as_str(), Some("queued" | "running")), "the build ended: {build}");
        (build["status"] == "running" && build["worker"] == worker.name.as_str()).then_some(())
    })
    .await;
    let filters =
        [format!("label=autobuilder.build={id}"), format!("label=autobuilder.instance={}", worker.instance())];
    wait_until_blocking("the build's container to start", || {
        let out =
            worker.docker().args(["ps", "-q", "--filter", &filters[0], "--filter", &filters[1]]).output().unwrap();
        (!out.stdout.is_empty()).then_some(())
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn builds_are_spread_over_the_workers_and_serve_only_queues_them() {
    let git = GitHost::new();
    let repos = ["org/a", "org/b", "org/c", "org/d"];
    let recipes: Vec<(String, &str)> = repos.iter().map(|r| (format!("{r}/master.yaml"), ONE_SCRIPT)).collect();
    let recipes: Vec<(&str, &str)> = recipes.iter().map(|(path, text)| (path.as_str(), *text)).collect();
    git.commit("org/recipes", "master", &recipes);
    let quick = SLOW.replace("sleep 4", "sleep 1");
    let shas: Vec<String> = repos.iter().map(|repo| git.commit(repo, "master", &[("build.sh", &quick)])).collect();
    let github = FakeGithub::start().await;
    let server = serve_without_builds(&git, &github, |_| {});
    let workers = [
        Worker::start(&server, "w1", |c| c.worker.concurrency = 1),
        Worker::start(&server, "w2", |c| c.worker.concurrency = 1),
    ];

    let mut ids = Vec::new();
    for (repo, sha) in repos.iter().zip(&shas) {
        ids.push(server.push_builds(repo, "master", sha).await[0]);
    }
    let mut ran_on = BTreeSet::new();
    for (id, sha) in ids.iter().zip(&shas) {
        let build = server.wait_build(*id).await;
        assert_eq!(build["status"], "success", "{build}");
        ran_on.insert(build["worker"].as_str().expect("the worker is recorded").to_string());
        let artifact = server.artifacts_dir().join(build["artifact"].as_str().unwrap());
        assert!(artifact.is_file(), "the worker published into the shared artifact directory: {}", artifact.display());
        // Posted by serve, from the statuses the workers stored.
        github.wait_for(sha, "autobuilder/build.sh", "success").await;
        assert!(server.containers_of(*id).is_empty(), "serve ran no container");
        // The log, written on the worker's disk, is read through serve (from the history).
        let (code, log) = server.get_text(&format!("/build/{id}/log")).await;
        assert_eq!(code, 200, "{log}");
        for line in ["started", "done", "published"] {
            assert!(log.contains(line), "{line:?} is missing from the log of build {id}: {log}");
        }
        let (code, window) = server.get_json(&format!("/build/{id}/log/lines?tail=3")).await;
        assert_eq!(code, 200, "{window}");
        let lines = window["lines"].as_array().expect("a window of lines");
        assert_eq!(lines.len(), 3, "{window}");
        assert!(lines.last().unwrap().to_string().contains("published"), "{window}");
        let (_, found) = server.get_json(&format!("/build/{id}/log/search?q=DONE")).await;
        assert_eq!(found["total"], 1, "{found}");
    }
    let names: BTreeSet<String> = workers.iter().map(|w| w.name.clone()).collect();
    assert_eq!(ran_on, names, "both workers built");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_frozen_past_its_lease_cannot_record_the_build_taken_over() {
    let (git, sha) = one_script_app(SLOW);
    let github = FakeGithub::start().await;
    let server = serve_without_builds(&git, &github, |_| {});
    let first = Worker::start(&server, "w1", |_| {});
    let id = server.push_builds("org/app", "master", &sha).await[0];
    running_on(&server, id, &first).await;

    // w1 freezes mid-build (SIGSTOP): its lease runs out, the build is queued again, and w2 runs it.
    first.signal("STOP");
    let second = Worker::start(&server, "w2", |_| {});
    let build = server.wait_build(id).await;
    assert_eq!((build["status"].as_str(), build["worker"].as_str()), (Some("success"), Some("w2")), "{build}");
    let statuses = github.wait_for(&sha, "autobuilder/build.sh", "success").await;
    assert!(
        statuses.iter().any(|s| s.state == "pending" && s.description == "queued again: worker w1 lost"),
        "{statuses:?}"
    );

    // w1 wakes: its container ended meanwhile, and what it would record is refused.
    first.signal("CONT");
    first.wait_printed("this end is not recorded");
    let log = std::fs::read_to_string(first.dir.path().join(format!("data/logs/{id}.log"))).unwrap();
    assert!(log.contains("taken over"), "w1's log says why it stopped: {log}");
    assert!(!log.contains("published"), "w1 published nothing: {log}");
    tokio::time::sleep(std::time::Duration::from_secs(2)).await; // an outbox poll
    let (_, after) = server.get_json(&format!("/build/{id}")).await;
    assert_eq!((after["status"].as_str(), after["worker"].as_str()), (Some("success"), Some("w2")), "{after}");
    let (_, served) = server.get_text(&format!("/build/{id}/log")).await;
    assert!(served.contains("published") && !served.contains("taken over"), "serve shows w2's run: {served}");
    let statuses = github.statuses_for(&sha);
    assert_eq!(statuses.last().map(|s| s.state.as_str()), Some("success"), "nothing posted after: {statuses:?}");
    drop(second);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_workers_build_ends_as_lost_once_its_requeues_are_spent() {
    let (git, sha) = one_script_app(&SLOW.replace("sleep 4", "sleep 60"));
    let github = FakeGithub::start().await;
    let server = serve_without_builds(&git, &github, |c| c.worker.requeues = 0);
    let mut worker = Worker::start(&server, "w1", |_| {});
    let id = server.push_builds("org/app", "master", &sha).await[0];
    running_on(&server, id, &worker).await;
    worker.kill();

    let build = server.wait_build(id).await;
    assert_eq!((build["status"].as_str(), build["error"].as_str()), (Some("error"), Some("worker w1 lost")), "{build}");
    let statuses = github.wait_for(&sha, "autobuilder/build.sh", "error").await;
    assert_eq!(statuses.last().unwrap().description, "worker w1 lost");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_push_supersedes_the_branchs_build_on_a_worker() {
    let (git, first_sha) = one_script_app(&SLOW.replace("sleep 4", "sleep 60"));
    let github = FakeGithub::start().await;
    let server = serve_without_builds(&git, &github, |_| {});
    let worker = Worker::start(&server, "w1", |c| c.worker.concurrency = 2);
    let first = server.push_builds("org/app", "master", &first_sha).await[0];
    running_on(&server, first, &worker).await;

    let second_sha = git.commit("org/app", "master", &[("build.sh", SLOW)]);
    let second = server.push_builds_after("org/app", "master", &first_sha, &second_sha).await[0];
    let superseded: Value = server.wait_build(first).await;
    assert_eq!(superseded["status"], "cancelled", "{superseded}");
    let reason = format!("superseded by {}", &second_sha[..10]);
    assert_eq!(superseded["error"].as_str(), Some(reason.as_str()), "{superseded}");
    assert_eq!(server.wait_build(second).await["status"], "success");
    github.wait_for(&first_sha, "autobuilder/build.sh", "error").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_workers_build_is_live_through_redis_and_its_log_complete_on_a_live_server() {
    let (git, sha) = one_script_app(
        "#!/bin/sh\nfor i in $(seq 1 400); do echo line $i; sleep 0.005; done\ntar -czf /tmp/archives/out.tar.gz build.sh\n",
    );
    let github = FakeGithub::start().await;
    let redis = RedisServer::start();
    let server = serve_without_builds(&git, &github, |c| {
        c.redis.url = redis.url();
        c.live.listen = "127.0.0.1:0".into();
    });
    let live = LiveServer::start(&server);
    let _worker = Worker::start(&server, "w1", |_| {});
    let mut client = LiveClient::connect(&live.url).await;
    let id = server.push_builds("org/app", "master", &sha).await[0];
    client.subscribe(id).await;
    let build = client.until_finished(id).await;
    assert_eq!(build["status"], "success", "{build}");
    let (_, log) = server.get_text(&format!("/build/{id}/log")).await;
    client.until_lines(id, log.lines().count() as u64).await;
    assert_eq!(client.text(id), log, "every line once and in order, as in the log serve has");

    // A client that comes after the end gets the whole log from the live server's copy.
    let mut late = LiveClient::connect(&live.url).await;
    late.subscribe(id).await;
    late.until_lines(id, log.lines().count() as u64).await;
    assert_eq!(late.text(id), log);
}

/// A recipe for the build hosts labelled `gpu` only.
const ON_GPU: &str = "buildscripts: [build.sh]\nbuild.sh: {artifact: out.tar.gz, runs_on: [gpu]}\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_recipe_runs_only_on_a_worker_with_the_labels_it_asks_for() {
    let git = GitHost::new();
    git.commit("org/recipes", "master", &[("org/app/master.yaml", ON_GPU)]);
    let quick = SLOW.replace("sleep 4", "sleep 1");
    let sha = git.commit("org/app", "master", &[("build.sh", &quick)]);
    let github = FakeGithub::start().await;
    let server = serve_without_builds(&git, &github, |_| {});
    let _plain = Worker::start(&server, "plain", |_| {});
    let id = server.push_builds("org/app", "master", &sha).await[0];
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let (_, waiting) = server.get_json(&format!("/build/{id}")).await;
    assert_eq!(waiting["status"], "queued", "no worker with the label gpu yet: {waiting}");

    let _gpu = Worker::start(&server, "gpu-host", |c| c.worker.labels = vec!["gpu".into()]);
    let build = server.wait_build(id).await;
    assert_eq!((build["status"].as_str(), build["worker"].as_str()), (Some("success"), Some("gpu-host")), "{build}");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_sqlite_history_a_recipe_no_worker_can_run_ends_saying_why() {
    let git = GitHost::new();
    git.commit("org/recipes", "master", &[("org/app/master.yaml", ON_GPU)]);
    let sha = git.commit("org/app", "master", &[("build.sh", SLOW)]);
    let github = FakeGithub::start().await;
    let server =
        Server::start(|dir| test_config(dir, &git, Some(&github.url)).with(|c| c.database.url = Secret::new("")));
    let id = server.push_builds("org/app", "master", &sha).await[0];
    let build = server.wait_build(id).await;
    assert_eq!(build["status"], "error", "{build}");
    let error = build["error"].as_str().unwrap();
    assert!(error.contains("runs_on gpu: no worker has these labels"), "{error}");
    github.wait_for(&sha, "autobuilder/build.sh", "error").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_restart_under_a_workers_build_loses_nothing() {
    let postgres = Postgres::own();
    let database = postgres.fresh_database();
    let (git, sha) = one_script_app(SLOW);
    let github = FakeGithub::start().await;
    let server = Server::start(|dir| {
        test_config(dir, &git, Some(&github.url)).with(|c| {
            c.database.url = Secret::new(database.as_str());
            c.worker.enabled = false;
            c.worker.lease_seconds = 15;
        })
    });
    let worker = Worker::start(&server, "w1", |_| {});
    let id = server.push_builds("org/app", "master", &sha).await[0];
    running_on(&server, id, &worker).await;

    // The database goes away while the build runs, past its end.
    postgres.stop();
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    postgres.start();

    let build = server.wait_build(id).await;
    assert_eq!((build["status"].as_str(), build["worker"].as_str()), (Some("success"), Some("w1")), "{build}");
    github.wait_for(&sha, "autobuilder/build.sh", "success").await;
    let (_, log) = server.get_text(&format!("/build/{id}/log")).await;
    assert!(log.contains("done") && log.contains("published"), "the whole log reached serve: {log}");

    // The worker listens again: the next push is built as quickly.
    let next = git.commit("org/app", "master", &[("build.sh", &SLOW.replace("sleep 4", "true"))]);
    let second = server.push_builds_after("org/app", "master", &sha, &next).await[0];
    assert_eq!(server.wait_build(second).await["status"], "success");
}

/// Each (context, state, description) posted for `sha`, with how many times.
fn posted(github: &FakeGithub, sha: &str) -> BTreeMap<(String, String, String), usize> {
    let mut posted = BTreeMap::new();
    for status in github.statuses_for(sha) {
        *posted.entry((status.context, status.state, status.description)).or_default() += 1;
    }
    posted
}

#[tokio::test(flavor = "multi_thread")]
async fn two_serves_share_one_history_and_either_may_stop() {
    let (git, sha) = one_script_app(&SLOW.replace("sleep 4", "true"));
    let github = FakeGithub::start().await;
    let database = Postgres::shared().fresh_database();
    let serve = |git: &GitHost| {
        let (database, github_url) = (database.clone(), github.url.clone());
        Server::start(|dir| {
            test_config(dir, git, Some(&github_url)).with(|c| {
                c.database.url = Secret::new(database.as_str());
                c.worker.enabled = false;
            })
        })
    };
    let mut first = serve(&git);
    let second = serve(&git);
    let _worker = Worker::start(&first, "w1", |_| {});

    // A push to either: built once, each status posted once though both serves post statuses.
    let id = first.push_builds("org/app", "master", &sha).await[0];
    assert_eq!(second.wait_build(id).await["status"], "success", "either serve answers for any build");
    github.wait_for(&sha, "autobuilder/build.sh", "success").await;
    let (code, log) = second.get_text(&format!("/build/{id}/log")).await;
    assert!(code == 200 && log.contains("published"), "{code} {log}");

    // Recipes reloaded through the second serve are used by the first.
    let recipes = git.commit(
        "org/recipes",
        "master",
        &[("org/app/master.yaml", ONE_SCRIPT), ("org/other/master.yaml", ONE_SCRIPT)],
    );
    let other = git.commit("org/other", "master", &[("build.sh", &SLOW.replace("sleep 4", "true"))]);
    let (code, answer) = second.push("org/recipes", "master", &recipes).await;
    assert!(code < 300, "{answer}");
    second.wait_reload(&recipes).await;
    let built = wait_until("the first serve to build org/other", async || {
        let (code, answer) = first.push("org/other", "master", &other).await;
        assert!(code < 300, "{answer}");
        answer["builds"].as_array().and_then(|builds| builds.first()).and_then(Value::as_i64)
    })
    .await;
    assert_eq!(first.wait_build(built).await["status"], "success");
    let (_, history) = first.get_json("/build/history?repository=org/recipes").await;
    let reloads_at = history.as_array().unwrap().iter().filter(|b| b["commit"] == recipes.as_str()).count();
    assert_eq!(reloads_at, 1, "one reload recorded, by the serve that took the push: {history}");

    // The first serve stops: the second answers, builds are queued and their statuses posted.
    first.kill();
    let third = git.commit("org/app", "master", &[("build.sh", &SLOW.replace("sleep 4", "echo third"))]);
    let id = second.push_builds_after("org/app", "master", &sha, &third).await[0];
    assert_eq!(second.wait_build(id).await["status"], "success");
    github.wait_for(&third, "autobuilder/build.sh", "success").await;
    github.wait_for(&recipes, "autobuilder/recipes", "success").await;
    for commit in [&sha, &other, &third, &recipes] {
        let posted = posted(&github, commit);
        assert!(posted.values().all(|n| *n == 1), "a status posted twice for {commit}: {posted:?}");
    }
}

/// A producer that rebuilds its dependents, and one dependent.
const REBUILDING_BASE: &str =
    "buildscripts: [b.sh]\nb.sh: {artifact: b.tar.gz, commit: true, rebuild_dependents: true}\n";
const ON_BASE: &str = "buildscripts: [a.sh]\na.sh: {artifact: a.tar.gz, from: org/base@master}\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_new_image_made_on_a_worker_rebuilds_its_dependents_there() {
    let git = GitHost::new();
    git.commit("org/recipes", "master", &[("org/base/master.yaml", REBUILDING_BASE), ("org/app/master.yaml", ON_BASE)]);
    let app = git.commit(
        "org/app",
        "master",
        &[("a.sh", "#!/bin/sh\nset -e\necho \"on $(cat /made)\"\ntar -czf /tmp/archives/a.tar.gz a.sh\n")],
    );
    let base = git.commit(
        "org/base",
        "master",
        &[
            ("b.sh", "#!/bin/sh\nset -e\ncat version > /made\ntar -czf /tmp/archives/b.tar.gz b.sh\n"),
            ("version", "v1"),
        ],
    );
    let github = FakeGithub::start().await;
    let server = serve_without_builds(&git, &github, |_| {});
    // An engine of its own: the image it commits goes with it.
    let engine = Engine::start("rebuilds");
    let _worker = Worker::start_on(&server, "w1", Some(&engine), |_| {});

    let producer = server.push_builds("org/base", "master", &base).await[0];
    let built = server.wait_build(producer).await;
    assert_eq!((built["status"].as_str(), built["worker"].as_str()), (Some("success"), Some("w1")), "{built}");
    let dependent = server.wait_build(server.wait_new_build("org/app", 0).await).await;
    assert_eq!(
        (dependent["status"].as_str(), dependent["worker"].as_str()),
        (Some("success"), Some("w1")),
        "{dependent}"
    );
    assert_eq!(dependent["commit"], app.as_str(), "rebuilt at its branch's head");
    assert!(dependent["message"].as_str().unwrap().contains("org/base@master made a new image"), "{dependent}");
    let (_, log) = server.get_text(&format!("/build/{}/log", dependent["id"])).await;
    assert!(log.contains("on v1"), "{log}");
    github.wait_for(&app, "autobuilder/a.sh", "success").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_building_serve_keeps_the_project_limit_with_the_workers_builds() {
    let git = GitHost::new();
    let on_serve = "buildscripts: [build.sh]\nbuild.sh: {artifact: out.tar.gz, runs_on: [local]}\n";
    git.commit("org/recipes", "master", &[("org/gpu/master.yaml", ON_GPU), ("org/app/master.yaml", on_serve)]);
    let on_gpu = git.commit("org/gpu", "master", &[("build.sh", SLOW)]);
    let app = git.commit("org/app", "master", &[("build.sh", SLOW)]);
    let github = FakeGithub::start().await;
    let database = Postgres::shared().fresh_database();
    // serve builds too, what only it has the label for; the project runs one build at a time over
    // every host.
    let server = Server::start(|dir| {
        test_config(dir, &git, Some(&github.url)).with(|c| {
            c.database.url = Secret::new(database.as_str());
            c.worker.labels = vec!["local".into()];
            c.demo().concurrency = 1;
        })
    });
    let gpu = Worker::start(&server, "gpu-host", |c| c.worker.labels = vec!["gpu".into()]);
    let first = server.push_builds("org/gpu", "master", &on_gpu).await[0];
    running_on(&server, first, &gpu).await;
    let second = server.push_builds("org/app", "master", &app).await[0];

    let first = server.wait_build(first).await;
    let second = server.wait_build(second).await;
    assert_eq!(first["status"], "success", "{first}");
    assert_eq!(second["status"], "success", "{second}");
    assert_ne!(second["worker"], "gpu-host", "serve ran it: {second}");
    let (started, ended) = (second["started"].as_str().unwrap(), first["ended"].as_str().unwrap());
    assert!(started >= ended, "serve's build started at {started}, before the worker's ended at {ended}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_build_whose_image_is_on_a_worker_without_its_labels_ends_saying_so() {
    let git = GitHost::new();
    let base = "buildscripts: [b.sh]\nb.sh: {artifact: b.tar.gz, commit: true, runs_on: [base]}\n";
    let app = "buildscripts: [a.sh]\na.sh: {artifact: a.tar.gz, from: org/base@master, runs_on: [arm]}\n";
    git.commit("org/recipes", "master", &[("org/base/master.yaml", base), ("org/app/master.yaml", app)]);
    let base = git.commit("org/base", "master", &[("b.sh", "#!/bin/sh\ntar -czf /tmp/archives/b.tar.gz b.sh\n")]);
    let app = git.commit("org/app", "master", &[("a.sh", "#!/bin/sh\ntar -czf /tmp/archives/a.tar.gz a.sh\n")]);
    let github = FakeGithub::start().await;
    let server = serve_without_builds(&git, &github, |_| {});
    // One engine of its own for both workers: the committed image goes with it.
    let engine = Engine::start("labels");
    let _base_host = Worker::start_on(&server, "base-host", Some(&engine), |c| c.worker.labels = vec!["base".into()]);
    let _arm_host = Worker::start_on(&server, "arm-host", Some(&engine), |c| c.worker.labels = vec!["arm".into()]);

    let producer = server.wait_build(server.push_builds("org/base", "master", &base).await[0]).await;
    assert_eq!((producer["status"].as_str(), producer["worker"].as_str()), (Some("success"), Some("base-host")));
    // The image is base-host's, which lacks the label arm: the build is not left queued for good.
    let build = server.wait_build(server.push_builds("org/app", "master", &app).await[0]).await;
    assert_eq!((build["status"].as_str(), build["worker"].as_str()), (Some("error"), Some("base-host")), "{build}");
    let error = build["error"].as_str().unwrap();
    assert!(
        error.contains("runs_on [arm]: the newest image of org/base@master is on the engine of worker base-host, which lacks these labels"),
        "{error}"
    );
    github.wait_for(&app, "autobuilder/a.sh", "error").await;
}
