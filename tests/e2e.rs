//! End to end: signed webhooks into the real binary, real git repositories, the real Docker engine,
//! a fake GitHub and a fake hub over HTTP.

mod common;

use std::process::Command;

use common::*;
use serde_json::json;
use sha2::{Digest, Sha256};

const BUILD_SH: &str = r#"#!/bin/sh
set -e
echo "building $(cat version.txt) on $AUTOBUILDER_BRANCH"
echo "a line on stderr" >&2
printf 'h\xc3\xa9llo w\xc3\xb6rld\n'
tar -czf /tmp/archives/result.tar.gz version.txt
"#;

const APP_RECIPE: &str = "buildscripts:\n  - autobuild/build.sh\nautobuild/build.sh:\n  archives: /tmp/archives\n  artifact: result.tar.gz\n";

fn app_files(version: &str) -> Vec<(&'static str, String)> {
    vec![("version.txt", version.to_string()), ("autobuild/build.sh", BUILD_SH.to_string())]
}

fn commit_app(git: &GitHost, version: &str) -> String {
    let files = app_files(version);
    let refs: Vec<(&str, &str)> = files.iter().map(|(p, c)| (*p, c.as_str())).collect();
    git.commit("org/app", "master", &refs)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_push_builds_the_pushed_commit_publishes_and_reports() {
    let git = GitHost::new();
    git.commit("org/recipes", "master", &[("org/app/master.yaml", APP_RECIPE)]);
    let pushed = commit_app(&git, "A");
    let _later = commit_app(&git, "B"); // the branch moves on before the build fetches
    let github = FakeGithub::start().await;
    let server = Server::start(|dir| test_config(dir, &git, Some(&github.url)));

    let ids = server.push_builds("org/app", "master", &pushed).await;
    assert_eq!(ids.len(), 1);
    let build = server.wait_build(ids[0]).await;
    assert_eq!(build["status"], "success", "{build}");
    assert_eq!(build["repository"], "org/app");
    assert_eq!(build["branch"], "master");
    assert_eq!(build["commit"], pushed.as_str());
    assert_eq!(build["script"], "autobuild/build.sh");
    assert_eq!(build["message"], "a change");
    assert_eq!(build["author"], "Ada");
    assert!(build["started"].is_string() && build["ended"].is_string(), "{build}");

    // The artifact: versioned name, moving link, recorded sha256, served for download.
    let name = format!("org-app-master-{}.tar.gz", &pushed[..10]);
    assert_eq!(build["artifact"], name.as_str());
    let stored = std::fs::read(server.artifacts_dir().join(&name)).unwrap();
    assert_eq!(build["artifact_sha256"], hex::encode(Sha256::digest(&stored)).as_str());
    assert_eq!(
        std::fs::read_link(server.artifacts_dir().join("org-app-master.tar.gz")).unwrap().to_str(),
        Some(name.as_str())
    );
    let download = server.http.get(format!("{}/artifacts/{name}", server.url)).send().await.unwrap();
    assert_eq!(download.bytes().await.unwrap().as_ref(), stored.as_slice());

    // The log: the pushed commit's content (not the later head), stdout and stderr, UTF-8 intact.
    let (code, log) = server.get_text(&format!("/build/{}/log", ids[0])).await;
    assert_eq!(code, 200);
    assert!(log.contains("building A on master"), "{log}");
    assert!(!log.contains("building B"), "{log}");
    assert!(log.contains("a line on stderr"), "{log}");
    assert!(log.contains("héllo wörld"), "{log}");
    let (_, branch_log) = server.get_text("/build/logs/org/app/master").await;
    assert_eq!(branch_log, log);

    // Statuses: pending at queue time, then success, linking to the build page.
    let statuses = github.wait_for(&pushed, "autobuilder/autobuild/build.sh", "success").await;
    let states: Vec<&str> = statuses.iter().map(|s| s.state.as_str()).collect();
    assert_eq!(states, ["pending", "success"]);
    assert!(statuses.iter().all(|s| s.repo == "org/app"));
    assert_eq!(statuses[1].target_url, format!("http://autobuilder.test/monitor/build/{}", ids[0]));
    assert!(statuses[1].description.contains(&name), "{:?}", statuses[1]);

    // History and status endpoints.
    let (_, active) = server.get_json("/build/status").await;
    assert_eq!(active, json!([]));
    let (_, history) = server.get_json("/build/history?repository=org/app&status=success").await;
    assert_eq!(history[0]["id"], ids[0]);
    let (code, _) = server.get_json("/build/history?status=bogus").await;
    assert_eq!(code, 400);
    let (code, page) = server.get_text(&format!("/monitor/build/{}", ids[0])).await;
    assert_eq!(code, 200);
    assert!(page.contains(&format!("data-build-id=\"{}\"", ids[0])), "{page}");
    let (code, page) = server.get_text("/monitor").await;
    assert_eq!(code, 200);
    assert!(page.contains("data-page=\"monitor\"") && page.contains("/static/overview.js"), "{page}");

    // Nothing left behind: container and temp directories.
    wait_until("the build container to be removed", async || server.containers_of(ids[0]).is_empty().then_some(()))
        .await;
    wait_until("temp dirs to be removed", async || server.build_dirs().is_empty().then_some(())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_script_missing_artifact_and_missing_image_each_end_with_a_reason() {
    let git = GitHost::new();
    let recipe = recipe(&[
        ("ok.sh", "  artifact: ok.tar.gz\n  tag: ok"),
        ("fail.sh", "  artifact: x.tar.gz\n  tag: fail"),
        ("none.sh", "  artifact: missing.tar.gz\n  tag: none"),
        ("image.sh", "  artifact: x.tar.gz\n  tag: image\n  baseimage: 127.0.0.1:9/missing:latest"),
    ]);
    git.commit("org/recipes", "master", &[("org/multi/master.yaml", &recipe)]);
    let sha = git.commit(
        "org/multi",
        "master",
        &[
            ("ok.sh", "#!/bin/sh\necho fine\ntar -czf /tmp/archives/ok.tar.gz ok.sh\n"),
            ("fail.sh", "#!/bin/sh\necho about to fail\nexit 3\n"),
            ("none.sh", "#!/bin/sh\necho forgot the artifact\n"),
            ("image.sh", "#!/bin/sh\necho never runs\n"),
        ],
    );
    let github = FakeGithub::start().await;
    // The registry must be allowed for a pull to be tried at all (nothing listens there).
    let server = Server::start(|dir| {
        test_config(dir, &git, Some(&github.url)).with(|c| c.docker.allowed_registries = vec!["127.0.0.1:9".into()])
    });

    let ids = server.push_builds("org/multi", "master", &sha).await;
    assert_eq!(ids.len(), 4, "one build per build script");
    let mut results = Vec::new();
    for id in &ids {
        results.push(server.wait_build(*id).await);
    }
    let by_script = |script: &str| results.iter().find(|b| b["script"] == script).unwrap().clone();

    assert_eq!(by_script("ok.sh")["status"], "success");
    assert_eq!(by_script("ok.sh")["artifact"], format!("org-multi-ok-master-{}.tar.gz", &sha[..10]).as_str());

    let failed = by_script("fail.sh");
    assert_eq!(failed["status"], "failure");
    assert_eq!(failed["error"], "script exited 3");
    assert!(failed["artifact"].is_null());
    let (_, log) = server.get_text(&format!("/build/{}/log", failed["id"])).await;
    assert!(log.contains("about to fail") && log.contains("script exited 3"), "{log}");

    let none = by_script("none.sh");
    assert_eq!(none["status"], "failure");
    assert_eq!(none["error"], "artifact missing.tar.gz not found in /tmp/archives");

    let image = by_script("image.sh");
    assert_eq!(image["status"], "error");
    let reason = image["error"].as_str().unwrap();
    assert!(reason.starts_with("image 127.0.0.1:9/missing:latest is not available"), "{reason}");

    for (script, state) in [("ok.sh", "success"), ("fail.sh", "failure"), ("none.sh", "failure"), ("image.sh", "error")]
    {
        let statuses = github.wait_for(&sha, &format!("autobuilder/{script}"), state).await;
        let last = statuses.iter().rfind(|s| s.context == format!("autobuilder/{script}")).unwrap();
        assert_eq!(last.state, state);
        assert!(!last.description.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_deliveries_are_refused_and_start_nothing() {
    let git = GitHost::new();
    git.commit("org/recipes", "master", &[("org/app/feature/x.yaml", APP_RECIPE)]);
    let sha = commit_app(&git, "A");
    let server = Server::start(|dir| test_config(dir, &git, None));
    let push = push_payload("org/app", "refs/heads/feature/x", &sha).to_string();

    let (code, body) = server.deliver("demo", "push", push.as_bytes(), None).await;
    assert_eq!(code, 401, "{body}");
    assert!(body["error"].as_str().unwrap().contains("X-Hub-Signature-256"));
    let (code, _) = server.deliver("demo", "push", push.as_bytes(), Some("wrong-secret")).await;
    assert_eq!(code, 401);
    let (code, body) = server.deliver("nope", "push", push.as_bytes(), Some(SECRET)).await;
    assert_eq!(code, 401, "an unknown project is answered like a wrong signature: {body}");
    let (code, body) = server.deliver("demo", "push", b"{not json", Some(SECRET)).await;
    assert_eq!(code, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("malformed push payload"));
    let (code, body) = server.deliver("demo", "ping", br#"{"zen":"hi"}"#, Some(SECRET)).await;
    assert_eq!((code, body["message"].as_str()), (200, Some("pong")));
    let (code, body) = server.deliver("demo", "issues", b"{}", Some(SECRET)).await;
    assert_eq!(code, 202);
    assert!(body["message"].as_str().unwrap().contains("ignored"));

    let tag = push_payload("org/app", "refs/tags/v1", &sha).to_string();
    let (_, body) = server.deliver("demo", "push", tag.as_bytes(), Some(SECRET)).await;
    assert!(body["message"].as_str().unwrap().contains("tags"), "{body}");
    let deleted = push_payload("org/app", "refs/heads/feature/x", &"0".repeat(40)).to_string();
    let (_, body) = server.deliver("demo", "push", deleted.as_bytes(), Some(SECRET)).await;
    assert!(body["message"].as_str().unwrap().contains("deleted"), "{body}");
    // Branches match exactly: `x` is not `feature/x`.
    let (_, body) = server.push("org/app", "x", &sha).await;
    assert!(body["message"].as_str().unwrap().contains("no recipe"), "{body}");
    let (_, body) = server.push("org/other", "feature/x", &sha).await;
    assert!(body["message"].as_str().unwrap().contains("no recipe"), "{body}");
    let traversal = push_payload("org/app", "refs/heads/../../etc", &sha).to_string();
    let (code, _) = server.deliver("demo", "push", traversal.as_bytes(), Some(SECRET)).await;
    assert_eq!(code, 400);

    // Nothing but the start-up reload is in the history.
    let (_, history) = server.get_json("/build/history").await;
    let kinds: Vec<&str> = history.as_array().unwrap().iter().map(|b| b["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["reload"]);

    // The right push builds.
    let ids = server.push_builds("org/app", "feature/x", &sha).await;
    let build = server.wait_build(ids[0]).await;
    assert_eq!(build["status"], "success", "{build}");
    assert_eq!(build["artifact"], format!("org-app-feature-x-{}.tar.gz", &sha[..10]).as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn recipes_reload_reports_broken_files_and_forgets_removed_repos() {
    let git = GitHost::new();
    let first = git.commit(
        "org/recipes",
        "master",
        &[
            ("org/app/master.yaml", APP_RECIPE),
            ("org/broken/master.yaml", "buildscripts: [\n"),
            ("org/typo/master.yaml", "buildscripts: [a.sh]\na.sh: {artefact: x.tar.gz}\n"),
            ("README.md", "not a recipe"),
        ],
    );
    let app_sha = commit_app(&git, "A");
    let github = FakeGithub::start().await;
    let server = Server::start(|dir| test_config(dir, &git, Some(&github.url)));

    // The start-up reload: the good file loads, the broken ones are named.
    let reload = server.wait_reload(&first).await;
    assert_eq!(reload["kind"], "reload");
    assert_eq!(reload["status"], "failure");
    assert!(reload["error"].as_str().unwrap().contains("2 broken files"), "{reload}");
    let (_, log) = server.get_text(&format!("/build/{}/log", reload["id"])).await;
    assert!(log.contains("tracking org/app master"), "{log}");
    assert!(log.contains("skipped org/broken/master.yaml"), "{log}");
    assert!(log.contains("skipped org/typo/master.yaml") && log.contains("artefact"), "{log}");
    github.wait_for(&first, "autobuilder/recipes", "failure").await;

    let ids = server.push_builds("org/app", "master", &app_sha).await;
    assert_eq!(server.wait_build(ids[0]).await["status"], "success");

    // A push to the recipes repo removing org/app and fixing the rest reloads them.
    git.commit(
        "org/recipes",
        "master",
        &[("org/broken/master.yaml", APP_RECIPE), ("org/typo/master.yaml", APP_RECIPE)],
    );
    let second = git.remove("org/recipes", "master", "org/app");
    let (code, body) = server.push("org/recipes", "master", &second).await;
    assert_eq!(code, 202, "{body}");
    let reload = server.wait_reload(&second).await;
    assert_eq!(reload["status"], "success", "{reload}");
    let (_, log) = server.get_text(&format!("/build/{}/log", reload["id"])).await;
    assert!(log.contains("org/app is no longer tracked"), "{log}");
    github.wait_for(&second, "autobuilder/recipes", "success").await;

    let (code, body) = server.push("org/app", "master", &app_sha).await;
    assert_eq!(code, 200);
    assert!(body["message"].as_str().unwrap().contains("no recipe"), "{body}");

    // Another branch of the recipes repo is not loaded.
    let (_, body) = server.push("org/recipes", "dev", &second).await;
    assert!(body["message"].as_str().unwrap().contains("not loaded"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_keeps_history_and_ends_builds_whose_container_is_gone() {
    let git = GitHost::new();
    let slow = "buildscripts: [slow.sh]\nslow.sh: {artifact: x.tar.gz}\n";
    git.commit("org/recipes", "master", &[("org/app/master.yaml", APP_RECIPE), ("org/slow/master.yaml", slow)]);
    let app_sha = commit_app(&git, "A");
    let slow_sha = git.commit("org/slow", "master", &[("slow.sh", "#!/bin/sh\necho started\nsleep 600\n")]);
    let github = FakeGithub::start().await;
    let mut server = Server::start(|dir| test_config(dir, &git, Some(&github.url)));

    let done = server.push_builds("org/app", "master", &app_sha).await[0];
    assert_eq!(server.wait_build(done).await["status"], "success");
    let (_, log_before) = server.get_text(&format!("/build/{done}/log")).await;

    let interrupted = server.push_builds("org/slow", "master", &slow_sha).await[0];
    wait_until("the slow build to start its container", async || {
        (!server.containers_of(interrupted).is_empty()).then_some(())
    })
    .await;
    server.kill(); // SIGKILL: nothing gets to clean up
    let removed = Command::new("docker").args(["rm", "-f", &server.containers_of(interrupted)]).output().unwrap();
    assert!(removed.status.success());
    server.restart(); // on the same data directory

    let build = server.wait_build(interrupted).await;
    assert_eq!(build["status"], "error");
    assert_eq!(build["error"], "interrupted by restart");
    github.wait_for(&slow_sha, "autobuilder/slow.sh", "error").await;
    wait_until("the orphaned container to be removed", async || {
        server.containers_of(interrupted).is_empty().then_some(())
    })
    .await;

    let (_, history) = server.get_json("/build/history?repository=org/app").await;
    assert_eq!(history[0]["id"], done);
    assert_eq!(history[0]["status"], "success");
    let (code, log_after) = server.get_text(&format!("/build/{done}/log")).await;
    assert_eq!((code, log_after), (200, log_before));
}

#[tokio::test(flavor = "multi_thread")]
async fn hub_store_uploads_flists_and_a_failing_hub_fails_the_build() {
    let git = GitHost::new();
    git.commit("org/recipes", "master", &[("org/app/master.yaml", APP_RECIPE)]);
    let sha = commit_app(&git, "A");
    let hub = FakeHub::start().await;
    let server = Server::start(|dir| {
        test_config(dir, &git, None).with(|c| {
            hub.configure(c);
            c.artifacts.retries = 0;
        })
    });

    let id = server.push_builds("org/app", "master", &sha).await[0];
    let build = server.wait_build(id).await;
    assert_eq!(build["status"], "success", "{build}");
    let flist = format!("org-app-master-{}.flist", &sha[..10]);
    assert_eq!(build["artifact"], flist.as_str());
    let uploads = hub.state.uploads.lock().unwrap().clone();
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].0, format!("org-app-master-{}.tar.gz", &sha[..10]));
    assert_eq!(build["artifact_sha256"], hex::encode(Sha256::digest(&uploads[0].1)).as_str());
    assert_eq!(hub.state.links.lock().unwrap().clone(), vec![("org-app-master.flist".to_string(), flist)]);

    hub.state.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let id = server.push_builds("org/app", "master", &sha).await[0];
    let build = server.wait_build(id).await;
    assert_eq!(build["status"], "error", "{build}");
    let reason = build["error"].as_str().unwrap();
    assert!(reason.contains("hub upload failed") && reason.contains("hub in maintenance"), "{reason}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_github_outage_fails_no_build_and_its_statuses_arrive_in_order_after() {
    let git = GitHost::new();
    git.commit("org/recipes", "master", &[("org/app/master.yaml", APP_RECIPE)]);
    let sha = commit_app(&git, "A");
    let github = FakeGithub::start().await;
    github.state.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let server = Server::start(|dir| test_config(dir, &git, Some(&github.url)));

    let id = server.push_builds("org/app", "master", &sha).await[0];
    assert_eq!(server.wait_build(id).await["status"], "success");
    assert!(github.statuses_for(&sha).is_empty());

    // GitHub comes back, rate-limiting at first: every status arrives, in order.
    github.state.rate_limited.store(2, std::sync::atomic::Ordering::SeqCst);
    github.state.down.store(false, std::sync::atomic::Ordering::SeqCst);
    let statuses = github.wait_for(&sha, "autobuilder/autobuild/build.sh", "success").await;
    let states: Vec<&str> = statuses.iter().map(|s| s.state.as_str()).collect();
    assert_eq!(states, ["pending", "success"]);
}

#[test]
fn check_command_prints_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let write = |path: &str, text: &str| {
        let file = dir.path().join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, text).unwrap();
    };
    write("org/app/master.yaml", APP_RECIPE);
    write(".git/config", "ignored");
    let run = || Command::new(env!("CARGO_BIN_EXE_autobuilder")).arg("check").arg(dir.path()).output().unwrap();

    let out = run();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 recipes, 0 problems"));

    write("org/bad/master.yaml", "buildscripts: [a.sh]\na.sh: {artifact: ../../etc/passwd}\n");
    write("org/empty/dev.yml", "");
    let out = run();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("org/bad/master.yaml") && text.contains("plain file name"), "{text}");
    assert!(text.contains("org/empty/dev.yml") && text.contains("empty"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_recipes_repository_is_reported_and_recovers_on_push() {
    let git = GitHost::new();
    let app_sha = commit_app(&git, "A");
    let server = Server::start(|dir| test_config(dir, &git, None));

    let (_, history) = server.get_json("/build/history?repository=org/recipes").await;
    assert_eq!(history[0]["kind"], "reload");
    assert_eq!(history[0]["status"], "error", "{history}");
    assert!(history[0]["error"].as_str().unwrap().contains("cannot fetch org/recipes"), "{history}");
    let (code, body) = server.push("org/app", "master", &app_sha).await;
    assert_eq!(code, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("not loaded"), "{body}");

    let sha = git.commit("org/recipes", "master", &[("org/app/master.yaml", APP_RECIPE)]);
    let (code, _) = server.push("org/recipes", "master", &sha).await;
    assert_eq!(code, 202);
    assert_eq!(server.wait_reload(&sha).await["status"], "success");
    let id = server.push_builds("org/app", "master", &app_sha).await[0];
    assert_eq!(server.wait_build(id).await["status"], "success");
}
