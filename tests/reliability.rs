//! Never stuck, never lost: durable intake, the admin API, supersede, queue limits, restart
//! recovery (real SIGKILL and SIGTERM of the binary), faults, secrets, operations, bad input.

mod common;

use std::process::Command;

use autobuilder::config::{LogFormat, Secret};
use common::*;
use serde_json::json;

const RECIPE: &str = "buildscripts: [build.sh]\nbuild.sh: {artifact: out.tar.gz}\n";

fn script(body: &str) -> String {
    format!("#!/bin/sh\nset -e\n{body}\ntar -czf /tmp/archives/out.tar.gz /etc/hostname\n")
}

/// A recipes repo tracking `repos` (master), each with `build.sh` running `body`.
fn setup(repos: &[(&str, &str)]) -> (GitHost, Vec<String>) {
    let git = GitHost::new();
    let files: Vec<(String, &str)> = repos.iter().map(|(repo, _)| (format!("{repo}/master.yaml"), RECIPE)).collect();
    let refs: Vec<(&str, &str)> = files.iter().map(|(p, c)| (p.as_str(), *c)).collect();
    git.commit("org/recipes", "master", &refs);
    let shas = repos.iter().map(|(repo, body)| git.commit(repo, "master", &[("build.sh", &script(body))])).collect();
    (git, shas)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redelivery_is_not_built_twice_and_deliveries_can_be_replayed() {
    let (git, shas) = setup(&[("org/app", "echo hi")]);
    let server = Server::start(|dir| test_config(dir, &git, None).with(admin));

    let (code, first) = server.push_as("delivery-1", "org/app", "master", &shas[0]).await;
    assert_eq!(code, 202, "{first}");
    let (code, again) = server.push_as("delivery-1", "org/app", "master", &shas[0]).await;
    assert_eq!(code, 200, "{again}");
    assert!(again["message"].as_str().unwrap().contains("received before"), "{again}");
    assert_eq!(again["before"]["answer"]["builds"], first["builds"]);
    let id = first["builds"][0].as_i64().unwrap();
    assert_eq!(server.wait_build(id).await["status"], "success");
    let (_, history) = server.get_json("/build/history?repository=org/app").await;
    assert_eq!(history.as_array().unwrap().len(), 1, "built twice: {history}");

    // The admin API: disabled without a token, refused with a wrong one, nothing happens.
    let (code, _) = server.admin_get("/deliveries", "wrong").await;
    assert_eq!(code, 401);
    let (code, _) = server.admin_post("/deliveries/delivery-1/replay", None).await;
    assert_eq!(code, 401);
    let (code, deliveries) = server.admin_get("/deliveries", ADMIN_TOKEN).await;
    assert_eq!(code, 200);
    assert_eq!(deliveries[0]["id"], "delivery-1");
    assert_eq!(deliveries[0]["event"], "push");
    assert_eq!(deliveries[0]["outcome"]["status"], 202);

    let (code, replayed) = server.admin_post("/deliveries/delivery-1/replay", Some(ADMIN_TOKEN)).await;
    assert_eq!(code, 202, "{replayed}");
    let replay_id = replayed["builds"][0].as_i64().unwrap();
    assert_ne!(replay_id, id);
    assert_eq!(server.wait_build(replay_id).await["status"], "success");
    let (code, _) = server.admin_post("/deliveries/nope/replay", Some(ADMIN_TOKEN)).await;
    assert_eq!(code, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_an_admin_token_the_admin_api_is_off() {
    let (git, _) = setup(&[("org/app", "echo hi")]);
    let server = Server::start(|dir| test_config(dir, &git, None));
    let (code, body) = server.admin_post("/build/1/cancel", Some("anything")).await;
    assert_eq!(code, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("admin_token"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_newer_push_supersedes_the_branch_and_says_so() {
    let (git, shas) = setup(&[("org/app", "echo old; sleep 30")]);
    let newer = git.commit("org/app", "master", &[("build.sh", &script("echo new"))]);
    let github = FakeGithub::start().await;
    let server = Server::start(|dir| test_config(dir, &git, Some(&github.url)));

    let old = server.push_builds("org/app", "master", &shas[0]).await[0];
    server.wait_running(old).await;
    wait_until("the old build's container", async || (!server.containers_of(old).is_empty()).then_some(())).await;
    let new = server.push_builds("org/app", "master", &newer).await[0];

    let old_build = server.wait_build(old).await;
    assert_eq!(old_build["status"], "cancelled", "{old_build}");
    assert_eq!(old_build["error"], format!("superseded by {}", &newer[..10]).as_str());
    assert_eq!(server.wait_build(new).await["status"], "success");
    let statuses = github.wait_for(&shas[0], "autobuilder/build.sh", "error").await;
    assert!(statuses.last().unwrap().description.contains("superseded by"), "{statuses:?}");
    wait_until("the cancelled build's container to go", async || server.containers_of(old).is_empty().then_some(()))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_queue_runs_in_order_within_the_limit_and_admins_cancel_and_rebuild() {
    let (git, shas) = setup(&[("org/a", "sleep 30"), ("org/b", "echo b"), ("org/c", "echo c")]);
    let server = Server::start(|dir| {
        test_config(dir, &git, None).with(admin).with(|c| {
            c.builds.concurrency = 1;
            c.builds.cancel_grace_seconds = 1;
        })
    });
    let a = server.push_builds("org/a", "master", &shas[0]).await[0];
    let b = server.push_builds("org/b", "master", &shas[1]).await[0];
    let c = server.push_builds("org/c", "master", &shas[2]).await[0];
    server.wait_running(a).await;
    let (_, active) = server.get_json("/build/status").await;
    let states: Vec<_> = active.as_array().unwrap().iter().map(|b| b["status"].as_str().unwrap().to_string()).collect();
    assert_eq!(states, ["running", "queued", "queued"]);

    // Cancel the running one: SIGTERM, grace, SIGKILL; the queue moves on, in order.
    let (code, _) = server.admin_post(&format!("/build/{a}/cancel"), Some("wrong")).await;
    assert_eq!(code, 401);
    assert_eq!(server.get_json(&format!("/build/{a}")).await.1["status"], "running", "a wrong token changed nothing");
    let (code, body) = server.admin_post(&format!("/build/{a}/cancel"), Some(ADMIN_TOKEN)).await;
    assert_eq!(code, 200, "{body}");
    let cancelled = server.wait_build(a).await;
    assert_eq!(
        (cancelled["status"].as_str(), cancelled["error"].as_str()),
        (Some("cancelled"), Some("cancelled by an admin"))
    );
    let (b_build, c_build) = (server.wait_build(b).await, server.wait_build(c).await);
    assert_eq!((b_build["status"].as_str(), c_build["status"].as_str()), (Some("success"), Some("success")));
    assert!(b_build["ended"].as_str() <= c_build["started"].as_str(), "one at a time, in order");
    wait_until("the cancelled container to go", async || server.containers_of(a).is_empty().then_some(())).await;
    let (code, _) = server.admin_post(&format!("/build/{a}/cancel"), Some(ADMIN_TOKEN)).await;
    assert_eq!(code, 409, "an ended build cannot be cancelled");

    let (code, rebuilt) = server.admin_post(&format!("/build/{b}/rebuild"), Some(ADMIN_TOKEN)).await;
    assert_eq!(code, 202, "{rebuilt}");
    let again = server.wait_build(rebuilt["builds"][0].as_i64().unwrap()).await;
    assert_eq!((again["status"].as_str(), again["commit"].as_str()), (Some("success"), Some(shas[1].as_str())));
}

#[tokio::test(flavor = "multi_thread")]
async fn after_kill_9_running_builds_are_reattached_and_queued_ones_run() {
    let (git, shas) = setup(&[("org/slow", "echo before; sleep 8; echo after"), ("org/next", "echo next")]);
    let github = FakeGithub::start().await;
    let mut server = Server::start(|dir| test_config(dir, &git, Some(&github.url)).with(|c| c.builds.concurrency = 1));
    let slow = server.push_builds("org/slow", "master", &shas[0]).await[0];
    let next = server.push_builds("org/next", "master", &shas[1]).await[0];
    server.wait_running(slow).await;
    wait_until("the slow build's container", async || (!server.containers_of(slow).is_empty()).then_some(())).await;

    server.kill(); // SIGKILL, mid-build
    server.start_again();

    let build = server.wait_build(slow).await;
    let (_, log) = server.get_text(&format!("/build/{slow}/log")).await;
    assert_eq!(build["status"], "success", "{build}\n{log}");
    assert!(log.contains("re-attached after a restart") && log.contains("after"), "{log}");
    assert_eq!(server.wait_build(next).await["status"], "success");
    github.wait_for(&shas[0], "autobuilder/build.sh", "success").await;
    github.wait_for(&shas[1], "autobuilder/build.sh", "success").await;
    wait_until("containers to go", async || {
        (server.containers_of(slow).is_empty() && server.containers_of(next).is_empty()).then_some(())
    })
    .await;
    wait_until("temp dirs to go", async || server.build_dirs().is_empty().then_some(())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_hands_running_builds_over_to_the_next_start() {
    let (git, shas) = setup(&[("org/slow", "sleep 6; echo done")]);
    let mut server = Server::start(|dir| test_config(dir, &git, None));
    let id = server.push_builds("org/slow", "master", &shas[0]).await[0];
    server.wait_running(id).await;
    wait_until("the container", async || (!server.containers_of(id).is_empty()).then_some(())).await;
    server.terminate();
    server.start_again();
    assert_eq!(server.wait_build(id).await["status"], "success");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_container_ends_its_build_and_nothing_hangs() {
    let (git, shas) = setup(&[("org/app", "sleep 30")]);
    let server = Server::start(|dir| test_config(dir, &git, None));
    let id = server.push_builds("org/app", "master", &shas[0]).await[0];
    let container =
        wait_until("the container", async || Some(server.containers_of(id)).filter(|c| !c.is_empty())).await;
    server.wait_running(id).await;
    // The build is `running` from when it has its slot; its container starts a moment later.
    wait_until("the container to start", async || {
        let state = Command::new("docker").args(["inspect", "-f", "{{.State.Running}}", &container]).output().unwrap();
        (String::from_utf8_lossy(&state.stdout).trim() == "true").then_some(())
    })
    .await;
    assert!(Command::new("docker").args(["kill", &container]).status().unwrap().success());
    let build = server.wait_build(id).await;
    assert_eq!(build["status"], "failure");
    assert_eq!(build["error"], "script exited 137 (killed: SIGKILL)");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_build_out_of_memory_says_so_with_its_limit() {
    let git = GitHost::new();
    let recipe = "buildscripts: [build.sh]\nbuild.sh: {artifact: out.tar.gz, memory: 8m}\n";
    git.commit("org/recipes", "master", &[("org/app/master.yaml", recipe)]);
    // The shell holds 50 MB in a variable: the kernel kills it at the 8 MiB limit.
    let hog = script("x=$(head -c 50000000 /dev/zero | tr '\\0' a); echo ${#x}");
    let sha = git.commit("org/app", "master", &[("build.sh", &hog)]);
    let server = Server::start(|dir| test_config(dir, &git, None));
    let id = server.push_builds("org/app", "master", &sha).await[0];
    let build = server.wait_build(id).await;
    assert_eq!(build["status"], "failure", "{build}");
    assert_eq!(build["error"], "script ran out of memory (limit 8 MiB)");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flaky_git_remote_is_retried() {
    let (git, shas) = setup(&[("org/flaky", "echo fetched")]);
    let repo = git.root.path().join("org/flaky");
    let hidden = git.root.path().join("org/flaky.away");
    std::fs::rename(&repo, &hidden).unwrap();
    let server = Server::start(|dir| {
        test_config(dir, &git, None).with(|c| {
            c.git.retries = 3;
            c.git.retry_delay_seconds = 1;
        })
    });
    let id = server.push_builds("org/flaky", "master", &shas[0]).await[0];
    server.wait_log(id, "trying again").await;
    std::fs::rename(&hidden, &repo).unwrap();
    let build = server.wait_build(id).await;
    assert_eq!(build["status"], "success", "{build}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hub_that_is_down_is_retried_then_the_artifact_is_kept() {
    let (git, shas) = setup(&[("org/app", "echo hi")]);
    let hub = FakeHub::start().await;
    let server = Server::start(|dir| {
        test_config(dir, &git, None).with(|c| {
            hub.configure(c);
            c.artifacts.retries = 2;
            c.artifacts.retry_delay_seconds = 1;
        })
    });

    // Down at first, back before the retries run out: the build succeeds.
    hub.state.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let id = server.push_builds("org/app", "master", &shas[0]).await[0];
    server.wait_log(id, "trying again").await;
    hub.state.down.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(server.wait_build(id).await["status"], "success");

    // Down for good: error, and the artifact waits on disk.
    hub.state.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let id = server.push_builds("org/app", "master", &shas[0]).await[0];
    let build = server.wait_build(id).await;
    assert_eq!(build["status"], "error");
    let reason = build["error"].as_str().unwrap();
    assert!(
        reason.contains("hub in maintenance") && reason.contains("after 3 attempts") && reason.contains("kept in"),
        "{reason}"
    );
    let kept = server.dir.path().join(format!("data/unpublished/{id}/org-app-master-{}.tar.gz", &shas[0][..10]));
    assert!(kept.is_file(), "{} is missing", kept.display());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_tmp_directory_is_an_error_that_says_so() {
    let (git, shas) = setup(&[("org/app", "echo hi")]);
    let mount = tempfile::tempdir().unwrap();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"]).arg(mount.path()).status();
    assert!(mounted.is_ok_and(|s| s.success()), "this test mounts a small tmpfs: run it as root");
    let _unmount = Unmount(mount.path().to_path_buf());
    let server =
        Server::start(|dir| test_config(dir, &git, None).with(|c| c.tmp_directory = mount.path().to_path_buf()));
    // Fill it up.
    let _ = std::fs::write(mount.path().join("filler"), vec![0u8; 512 * 1024]);
    let id = server.push_builds("org/app", "master", &shas[0]).await[0];
    let build = server.wait_build(id).await;
    assert_eq!(build["status"], "error", "{build}");
    assert!(build["error"].as_str().unwrap().starts_with("no space left in tmp_directory"), "{build}");
    assert!(!build.to_string().contains(&mount.path().display().to_string()), "a host path in {build}");
}

struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_reach_the_build_and_never_its_log() {
    let (git, shas) =
        setup(&[("org/app", r#"[ "$DEPLOY_KEY" = "s3cr3t-v4lue" ] && echo "key is there: $DEPLOY_KEY""#)]);
    let server = Server::start(|dir| {
        test_config(dir, &git, None).with(|c| {
            c.demo().secrets.insert("DEPLOY_KEY".into(), Secret::new("s3cr3t-v4lue"));
        })
    });
    let id = server.push_builds("org/app", "master", &shas[0]).await[0];
    assert_eq!(server.wait_build(id).await["status"], "success");
    let (_, log) = server.get_text(&format!("/build/{id}/log")).await;
    assert!(log.contains("key is there: ***"), "{log}");
    assert!(!log.contains("s3cr3t"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn recipes_set_limits_within_the_operators_caps() {
    let git = GitHost::new();
    let limited = "buildscripts: [build.sh]\nbuild.sh: {artifact: out.tar.gz, memory: 128m, pids: 64, cpus: 0.5}\n";
    let greedy = "buildscripts: [build.sh]\nbuild.sh: {artifact: out.tar.gz, memory: 64g}\n";
    let reload = git.commit(
        "org/recipes",
        "master",
        &[("org/limited/master.yaml", limited), ("org/greedy/master.yaml", greedy)],
    );
    // Long enough for the container to be inspected while it exists, on a busy machine too.
    let sha = git.commit("org/limited", "master", &[("build.sh", &script("sleep 10"))]);
    let server = Server::start(|dir| test_config(dir, &git, None));

    let reload = server.wait_reload(&reload).await;
    assert!(reload["error"].as_str().unwrap().contains("max_memory"), "{reload}");
    let id = server.push_builds("org/limited", "master", &sha).await[0];
    // Inspected until docker answers: on a loaded machine the container may be listed before it
    // can be inspected.
    let limits = wait_until("the container's limits", async || {
        let container = server.containers_of(id);
        let format =
            "{{.HostConfig.Memory}} {{.HostConfig.PidsLimit}} {{.HostConfig.NanoCpus}} {{.HostConfig.Privileged}}";
        let inspect = Command::new("docker").args(["inspect", "-f", format, &container]).output().unwrap();
        let limits = String::from_utf8_lossy(&inspect.stdout).trim().to_string();
        (!container.is_empty() && inspect.status.success() && !limits.is_empty()).then_some(limits)
    })
    .await;
    assert_eq!(limits, "134217728 64 500000000 false");
    assert_eq!(server.wait_build(id).await["status"], "success");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_readiness_and_metrics() {
    let (git, shas) = setup(&[("org/app", "echo hi")]);
    let server = Server::start(|dir| test_config(dir, &git, None));
    let id = server.push_builds("org/app", "master", &shas[0]).await[0];
    server.wait_build(id).await;

    assert_eq!(server.get_text("/healthz").await, (200, "ok".to_string()));
    let (code, ready) = server.get_json("/readyz").await;
    assert_eq!((code, ready), (200, json!({"docker": "ok", "database": "ok", "redis": "ok"})));
    let (code, metrics) = server.get_text("/metrics").await;
    assert_eq!(code, 200);
    for expected in [
        "autobuilder_builds{status=\"success\"} 1",
        "autobuilder_queue_depth 0",
        "autobuilder_webhook_to_start_seconds_count 1",
        "autobuilder_build_duration_seconds_count 1",
        "autobuilder_deliveries_total{event=\"push\"} 1",
        "autobuilder_upload_failures_total 0",
    ] {
        assert!(metrics.contains(expected), "{expected} missing from\n{metrics}");
    }
    assert!(metrics.contains("autobuilder_log_lines_total"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_that_is_down_makes_the_server_not_ready() {
    let (git, _) = setup(&[("org/app", "echo hi")]);
    let server =
        Server::start(|dir| test_config(dir, &git, None).with(|c| c.redis.url = format!("redis://{}", free_addr())));
    let (code, ready) = server.get_json("/readyz").await;
    assert_eq!(code, 503, "{ready}");
    assert_eq!((ready["docker"].as_str(), ready["database"].as_str()), (Some("ok"), Some("ok")));
    assert_ne!(ready["redis"], "ok");
}

fn free_addr() -> String {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_forgets_old_builds_and_their_logs() {
    let (git, shas) = setup(&[("org/app", "echo hi")]);
    let mut server = Server::start(|dir| test_config(dir, &git, None));
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = server.push_builds("org/app", "master", &shas[0]).await[0];
        server.wait_build(id).await;
        ids.push(id);
    }
    server.kill();
    server.change_config(|c| c.retention.builds = 2);
    server.start_again();
    let (_, history) = server.get_json("/build/history").await;
    let kept: Vec<i64> = history.as_array().unwrap().iter().map(|b| b["id"].as_i64().unwrap()).collect();
    // The newest two entries: this start's recipes reload and the last build.
    assert_eq!(kept.len(), 2, "{history}");
    assert_eq!(kept[1], ids[2], "{history}");
    let (code, _) = server.get_text(&format!("/build/{}/log", ids[0])).await;
    assert_eq!(code, 404);
    assert!(!server.dir.path().join(format!("data/logs/{}.log", ids[0])).exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_deep_and_strange_deliveries_get_clear_errors() {
    let (git, _) = setup(&[("org/app", "echo hi")]);
    let server = Server::start(|dir| test_config(dir, &git, None));

    // Refused from its Content-Length, before the body is read: the client sees 413, or the
    // connection closed while it was still sending.
    let huge = vec![b' '; 27 * 1024 * 1024];
    let response = server
        .http
        .post(format!("{}/build/demo/hook", server.url))
        .header("x-github-event", "push")
        .header("x-hub-signature-256", autobuilder::github::events::sign(SECRET.as_bytes(), &huge))
        .body(huge)
        .send()
        .await;
    if let Ok(response) = response {
        assert_eq!(response.status().as_u16(), 413);
    }
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let (code, body) = server.deliver("demo", "push", deep.as_bytes(), Some(SECRET)).await;
    assert_eq!(code, 400, "{body}");
    for (repo, git_ref) in
        [("org/a\u{7}pp", "refs/heads/master"), ("org/app", "refs/heads/ma\nster"), ("../../etc", "refs/heads/x")]
    {
        let body = push_payload_raw(repo, git_ref);
        let (code, answer) = server.deliver("demo", "push", body.as_bytes(), Some(SECRET)).await;
        assert_eq!(code, 400, "{repo:?} {git_ref:?}: {answer}");
        assert!(answer["error"].is_string());
    }
    let (_, history) = server.get_json("/build/history?repository=org/app").await;
    assert_eq!(history, json!([]));
    assert_eq!(server.get_text("/healthz").await.0, 200, "still up");
}

fn push_payload_raw(repo: &str, git_ref: &str) -> String {
    json!({"ref": git_ref, "after": "1".repeat(40), "repository": {"full_name": repo}}).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_artifact_that_links_to_a_host_file_is_refused() {
    let git = GitHost::new();
    git.commit("org/recipes", "master", &[("org/app/master.yaml", RECIPE)]);
    let secret_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret_file.path(), "host secret").unwrap();
    let body = format!("#!/bin/sh\nln -s {} /tmp/archives/out.tar.gz\n", secret_file.path().display());
    let sha = git.commit("org/app", "master", &[("build.sh", &body)]);
    let server = Server::start(|dir| test_config(dir, &git, None));
    let id = server.push_builds("org/app", "master", &sha).await[0];
    let build = server.wait_build(id).await;
    assert_eq!(build["status"], "failure", "{build}");
    assert_eq!(build["error"], "artifact out.tar.gz not found in /tmp/archives");
    let stored: Vec<_> = std::fs::read_dir(server.artifacts_dir()).map(|d| d.flatten().collect()).unwrap_or_default();
    assert!(stored.is_empty(), "nothing was published");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_build_past_its_time_limit_is_stopped() {
    let git = GitHost::new();
    let recipe = "buildscripts: [build.sh]\nbuild.sh: {artifact: out.tar.gz, timeout_minutes: 1}\n";
    git.commit("org/recipes", "master", &[("org/app/master.yaml", recipe)]);
    let sha = git.commit("org/app", "master", &[("build.sh", &script("echo started; sleep 600"))]);
    let server = Server::start(|dir| test_config(dir, &git, None));
    let id = server.push_builds("org/app", "master", &sha).await[0];
    let build = server.wait_build(id).await;
    assert_eq!((build["status"].as_str(), build["error"].as_str()), (Some("failure"), Some("timed out after 1 min")));
    wait_until("the container to go", async || server.containers_of(id).is_empty().then_some(())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_can_be_json() {
    let (git, _) = setup(&[("org/app", "echo hi")]);
    let server = Server::start(|dir| test_config(dir, &git, None).with(|c| c.log_format = LogFormat::Json));
    // The harness found the address in a JSON line; the server is up and answers.
    assert_eq!(server.get_text("/healthz").await, (200, "ok".to_string()));
    let lines = server.output.lock().unwrap().clone();
    assert!(!lines.is_empty());
    for line in &lines {
        let entry: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}"));
        assert!(entry["level"].is_string() && entry["fields"]["message"].is_string(), "{entry}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn statuses_not_delivered_before_a_restart_are_delivered_after() {
    let (git, shas) = setup(&[("org/app", "echo hi")]);
    let github = FakeGithub::start().await;
    github.state.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut server = Server::start(|dir| test_config(dir, &git, Some(&github.url)));
    let id = server.push_builds("org/app", "master", &shas[0]).await[0];
    assert_eq!(server.wait_build(id).await["status"], "success");
    server.kill(); // SIGKILL with two statuses in the outbox
    github.state.down.store(false, std::sync::atomic::Ordering::SeqCst);
    server.start_again();
    let statuses = github.wait_for(&shas[0], "autobuilder/build.sh", "success").await;
    let states: Vec<&str> = statuses.iter().map(|s| s.state.as_str()).collect();
    assert_eq!(states, ["pending", "success"]);
}
